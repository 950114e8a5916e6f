#!/usr/bin/env python3
"""A real Python oslo.messaging RPC server for the Rust wire-interop tests.

    py_server.py TOPIC SERVER_NAME [--url URL] [--exchange E] [--debug] [--no-stdin]

Listens on TOPIC as SERVER_NAME (so on the queues ``TOPIC``, ``TOPIC.SERVER_NAME`` and its
private ``TOPIC_fanout_<uuid>`` queue) with two endpoints:

* the default endpoint: null namespace, version 1.3, methods
  echo(value), whoami(), context(), fail(message), fail_custom(message), sleep(seconds),
  record(value), recorded(), add(a, b), describe(value);
* a ``control`` namespace endpoint at version 1.1: ping() -> "pong-<SERVER_NAME>".

Prints ``READY`` on stdout (flushed) once its queues exist and it consumes. Stops cleanly
(stop + wait + transport cleanup, which deletes its fanout queue) on SIGTERM, SIGINT or EOF on
stdin (stdin is not watched when it is /dev/null or with --no-stdin), then prints ``STOPPED``.
Logs go to stderr.
"""

import argparse
import logging
import os
import signal
import stat
import sys
import threading
import time
import warnings

# oslo.service warns that eventlet is deprecated, oslo.messaging that the `executor` argument
# is: noise on stderr for the interop tests.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="(?s).*eventlet is deprecated")

from oslo_config import cfg
import oslo_messaging

DEFAULT_URL = os.environ.get("OSLO_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")


class QuotaExceeded(Exception):
    """A non-builtin exception class: Rust must see it as a RemoteError with module __main__."""


def describe(value):
    """The Python type tree of a decoded JSON value (checks int/float fidelity across languages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    return type(value).__name__


class DefaultEndpoint:
    target = oslo_messaging.Target(version="1.3")

    def __init__(self, name):
        self.name = name
        self._records = []
        self._lock = threading.Lock()

    def echo(self, ctxt, value):
        return value

    def whoami(self, ctxt):
        return self.name

    def context(self, ctxt):
        return {k: v for k, v in dict(ctxt).items() if k != "client_timeout"}

    def client_timeout(self, ctxt):
        return dict(ctxt).get("client_timeout")

    def fail(self, ctxt, message):
        raise ValueError(message)

    def fail_custom(self, ctxt, message):
        raise QuotaExceeded(message)

    def sleep(self, ctxt, seconds):
        time.sleep(seconds)
        return seconds

    def record(self, ctxt, value):
        with self._lock:
            self._records.append(value)
        return None

    def recorded(self, ctxt):
        with self._lock:
            return list(self._records)

    def add(self, ctxt, a, b):
        return a + b

    def describe(self, ctxt, value):
        return describe(value)


class ControlEndpoint:
    target = oslo_messaging.Target(namespace="control", version="1.1")

    def __init__(self, name):
        self.name = name

    def ping(self, ctxt):
        return "pong-%s" % self.name


def stdin_is_devnull():
    try:
        st = os.fstat(0)
    except OSError:
        return True
    if not stat.S_ISCHR(st.st_mode):
        return False
    try:
        return st.st_rdev == os.stat(os.devnull).st_rdev
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topic")
    parser.add_argument("server_name")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--exchange", default=None, help="target exchange (default: control_exchange 'openstack')")
    parser.add_argument("--debug", action="store_true", help="DEBUG logging to stderr")
    parser.add_argument("--no-stdin", action="store_true", help="do not stop on EOF on stdin")
    opts = parser.parse_args()

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if opts.debug else logging.WARNING,
        format="py_server[%(process)d] %(levelname)s %(name)s: %(message)s",
    )

    # The global CONF, as services use: oslo.messaging 18.3.1 registers its tracing options
    # on cfg.CONF only, and a private ConfigOpts makes every send fail with NoSuchOptError.
    conf = cfg.CONF
    conf([], project="oslo-interop", default_config_files=[], default_config_dirs=[])
    transport = oslo_messaging.get_rpc_transport(conf, url=opts.url)
    target = oslo_messaging.Target(topic=opts.topic, server=opts.server_name, exchange=opts.exchange)
    endpoints = [DefaultEndpoint(opts.server_name), ControlEndpoint(opts.server_name)]
    server = oslo_messaging.get_rpc_server(transport, target, endpoints, executor="threading")

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not opts.no_stdin and not stdin_is_devnull():
        def watch_stdin():
            try:
                while os.read(0, 4096):
                    pass
            except OSError:  # any read failure means the parent is gone
                pass
            stop.set()

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    server.start()
    print("READY", flush=True)

    while not stop.wait(0.5):
        pass

    try:
        server.stop()
        server.wait()
    finally:
        transport.cleanup()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
