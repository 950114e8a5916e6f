#!/usr/bin/env python3
"""Broker housekeeping for the interop tests, over plain AMQP (kombu / py-amqp from the venv).

    py_admin.py [--url URL] delete-queues NAME...      # missing queues are fine
    py_admin.py [--url URL] queues-exist NAME...       # prints {"NAME": true|false, ...}
    py_admin.py [--url URL] delete-exchanges NAME...   # missing exchanges are fine

oslo.messaging never deletes topic queues (``<topic>``, ``<topic>.<server>``); the tests
delete their uniquely named ones with this so that repeated local runs leave nothing behind.
``URL`` is an oslo transport URL (``rabbit://user:pass@host:port/vhost``).
"""

import argparse
import json
import os
import sys
import urllib.parse

import amqp

DEFAULT_URL = os.environ.get("OSLO_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")


def connect(url):
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("rabbit", "kombu", "amqp"):
        raise SystemExit("py_admin: unsupported URL scheme %r" % parsed.scheme)
    # First host of an oslo multi-host URL.
    netloc = parsed.netloc.split(",")[0]
    userinfo, _, hostport = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
    vhost = urllib.parse.unquote(parsed.path[1:]) if parsed.path.startswith("/") else ""
    conn = amqp.Connection(
        host="%s:%s" % (host or "localhost", port or "5672"),
        userid=urllib.parse.unquote(user) or "guest",
        password=urllib.parse.unquote(password) or "guest",
        virtual_host=vhost or "/",
        connect_timeout=10,
    )
    conn.connect()
    return conn


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("command", choices=["delete-queues", "queues-exist", "delete-exchanges"])
    parser.add_argument("names", nargs="+")
    opts = parser.parse_args()

    conn = connect(opts.url)
    out = {}
    try:
        for name in opts.names:
            # A 404 closes the channel: one channel per queue.
            channel = conn.channel()
            try:
                if opts.command == "delete-queues":
                    channel.queue_delete(name)
                    out[name] = True
                elif opts.command == "delete-exchanges":
                    channel.exchange_delete(name)
                    out[name] = True
                else:
                    channel.queue_declare(name, passive=True)
                    out[name] = True
            except amqp.exceptions.NotFound:
                out[name] = False
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - already closed by the broker
                    pass
    finally:
        conn.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
