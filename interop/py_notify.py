#!/usr/bin/env python3
"""Real Python oslo.messaging 18.3.1 notification peer for the Rust interop tests.

  py_notify.py send   --url URL --topic T [--driver messagingv2|messaging] [--publisher P]
                      [--event E] [--priority info] [--payload JSON] [--context JSON] [--count N]
  py_notify.py listen --url URL --topic T [--pool P] [--count N] [--timeout SEC]

`send` publishes with oslo_messaging.Notifier; the context is an oslo.context RequestContext
built from --context (a plain dict would be dropped by oslo 18.x). `listen` runs a real
notification listener (every priority), prints READY once subscribed, then one JSON line per
notification: {"ctxt", "publisher_id", "event_type", "priority", "payload", "metadata"}.
"""
import argparse
import json
import sys
import threading
import time

import oslo_messaging
from oslo_config import cfg
from oslo_context import context as oslo_context


OUTPUT_LOCK = threading.Lock()


def transport(url):
    return oslo_messaging.get_notification_transport(cfg.CONF, url=url)


def cmd_send(args):
    ctxt_fields = json.loads(args.context)
    ctxt = oslo_context.RequestContext(**ctxt_fields)
    notifier = oslo_messaging.Notifier(transport(args.url), publisher_id=args.publisher,
                                       driver=args.driver, topics=[args.topic])
    payload = json.loads(args.payload)
    send = getattr(notifier, args.priority)
    for i in range(args.count):
        body = dict(payload, seq=i) if isinstance(payload, dict) and args.count > 1 else payload
        send(ctxt, args.event, body)
    print(json.dumps({"sent": args.count}), flush=True)


class Endpoint(object):
    def __init__(self, out, done):
        self.out = out
        self.done = done

    def _record(self, ctxt, publisher_id, event_type, payload, metadata, priority):
        line = json.dumps({"ctxt": ctxt, "publisher_id": publisher_id, "event_type": event_type,
                           "priority": priority, "payload": payload, "metadata": metadata})
        # The threading executor calls endpoints concurrently: one whole line at a time.
        with OUTPUT_LOCK:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            self.out.append(1)
            if len(self.out) >= self.done[0]:
                self.done[1].set()

    def audit(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "AUDIT")

    def debug(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "DEBUG")

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "INFO")

    def warn(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "WARN")

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "ERROR")

    def critical(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "CRITICAL")

    def sample(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record(ctxt, publisher_id, event_type, payload, metadata, "SAMPLE")


def cmd_listen(args):
    received = []
    finished = threading.Event()
    endpoint = Endpoint(received, (args.count, finished))
    listener = oslo_messaging.get_notification_listener(
        transport(args.url), [oslo_messaging.Target(topic=args.topic)], [endpoint],
        executor='threading', pool=args.pool)
    listener.start()
    print("READY", flush=True)
    # Stop after --count notifications, at --timeout, or when stdin closes.
    stdin_closed = threading.Event()

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            stdin_closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not finished.is_set() and not stdin_closed.is_set():
        time.sleep(0.05)
    listener.stop()
    listener.wait()
    print(json.dumps({"done": len(received)}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    send = sub.add_parser("send")
    send.add_argument("--url", required=True)
    send.add_argument("--topic", required=True)
    send.add_argument("--driver", default="messagingv2")
    send.add_argument("--publisher", default="python.host1")
    send.add_argument("--event", default="interop.event")
    send.add_argument("--priority", default="info")
    send.add_argument("--payload", default="{}")
    send.add_argument("--context", default="{}")
    send.add_argument("--count", type=int, default=1)
    listen = sub.add_parser("listen")
    listen.add_argument("--url", required=True)
    listen.add_argument("--topic", required=True)
    listen.add_argument("--pool", default=None)
    listen.add_argument("--count", type=int, default=1)
    listen.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    {"send": cmd_send, "listen": cmd_listen}[args.cmd](args)


if __name__ == "__main__":
    main()
