#!/usr/bin/env python3
"""Capture raw AMQP messages for wire comparisons (plain py-amqp, no oslo.messaging).

listen: copy what clients publish.

    py_capture.py [--url URL] listen --bind EXCHANGE:TYPE:ROUTING_KEY [--bind ...]
                  [--count N] [--timeout SEC]

  Declares an exclusive server-named queue, declares each EXCHANGE exactly as oslo.messaging
  does (type ``topic``: durable=False, auto_delete=False; type ``fanout``: durable=False,
  auto_delete=True), binds the queue with ROUTING_KEY, prints ``READY`` and then one JSON line
  per message until N messages arrived or SEC seconds passed.

request: send one oslo RPC request and record the replies.

    py_capture.py [--url URL] request --routing-key KEY --message JSON [--exchange openstack]
                  [--timeout SEC] [--expiration MS]

  Declares its own ``reply_<uuid4 hex>`` queue, publishes the oslo request ``JSON`` (the inner
  message: method, args, _context_* ...; ``_msg_id``, ``_reply_q`` and ``_unique_id`` are
  added, ``_timeout`` defaults to null) enveloped and with the AMQP properties oslo uses, to
  EXCHANGE with KEY, then prints one JSON line per reply until one has ``ending: true`` or
  SEC seconds passed.

Each printed message is
``{"exchange", "routing_key", "properties": {...}, "body": "<raw body text>", "body_is_ascii"}``.
"""

import argparse
import json
import os
import socket
import sys
import time
import uuid

import amqp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_admin import connect  # noqa: E402

DEFAULT_URL = os.environ.get("OSLO_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")


def jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe(msg):
    body = msg.body
    raw = body if isinstance(body, bytes) else body.encode("utf-8")
    return {
        "exchange": msg.delivery_info.get("exchange"),
        "routing_key": msg.delivery_info.get("routing_key"),
        "properties": jsonable(dict(msg.properties)),
        "body": raw.decode("utf-8", "replace"),
        "body_is_ascii": all(b < 128 for b in raw),
    }


def drain(conn, done, deadline):
    while not done() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        except socket.timeout:
            pass


def cmd_listen(conn, opts):
    # auto_decode=False: keep the body bytes exactly as published.
    ch = conn.channel()
    ch.auto_decode = False
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=True)
    for spec in opts.bind:
        exchange, kind, routing_key = spec.split(":", 2)
        if exchange:
            ch.exchange_declare(exchange, kind, durable=False, auto_delete=(kind == "fanout"))
        ch.queue_bind(queue, exchange, routing_key)
    got = []

    def on_message(msg):
        got.append(msg)
        print(json.dumps(describe(msg)), flush=True)

    ch.basic_consume(queue, callback=on_message, no_ack=True)
    print("READY", flush=True)
    drain(conn, lambda: len(got) >= opts.count, time.monotonic() + opts.timeout)


def cmd_request(conn, opts):
    ch = conn.channel()
    ch.auto_decode = False
    reply_q = "reply_" + uuid.uuid4().hex
    ch.queue_declare(reply_q, exclusive=True, auto_delete=True)
    inner = json.loads(opts.message)
    inner.setdefault("_msg_id", uuid.uuid4().hex)
    inner.setdefault("_reply_q", reply_q)
    inner.setdefault("_timeout", None)
    inner.setdefault("_unique_id", uuid.uuid4().hex)
    body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)})
    replies = []

    def on_message(msg):
        replies.append(msg)
        print(json.dumps(describe(msg)), flush=True)

    ch.basic_consume(reply_q, callback=on_message, no_ack=True)
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": {},
        "delivery_mode": 2,
        "priority": 0,
    }
    if opts.expiration:
        props["expiration"] = str(opts.expiration)
    ch.basic_publish(amqp.Message(body, **props), exchange=opts.exchange, routing_key=opts.routing_key)

    def ended():
        for msg in replies:
            raw = msg.body if isinstance(msg.body, bytes) else msg.body.encode("utf-8")
            try:
                if json.loads(json.loads(raw)["oslo.message"]).get("ending"):
                    return True
            except (ValueError, KeyError, TypeError):
                pass
        return False

    drain(conn, ended, time.monotonic() + opts.timeout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL)
    sub = parser.add_subparsers(dest="command", required=True)
    listen = sub.add_parser("listen")
    listen.add_argument("--bind", action="append", required=True)
    listen.add_argument("--count", type=int, default=1)
    listen.add_argument("--timeout", type=float, default=30.0)
    request = sub.add_parser("request")
    request.add_argument("--routing-key", required=True)
    request.add_argument("--message", required=True)
    request.add_argument("--exchange", default="openstack")
    request.add_argument("--timeout", type=float, default=30.0)
    request.add_argument("--expiration", type=int, default=None)
    opts = parser.parse_args()

    conn = connect(opts.url)
    try:
        if opts.command == "listen":
            cmd_listen(conn, opts)
        else:
            cmd_request(conn, opts)
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
