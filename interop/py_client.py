#!/usr/bin/env python3
"""A real Python oslo.messaging RPC client for the Rust wire-interop tests.

One operation from the command line:

    py_client.py --url URL --topic T [--exchange E] [--server S] [--namespace N] [--version V]
                 [--timeout SEC] [--call-monitor-timeout SEC] [--fanout] [--cast]
                 --method M [--args JSON] [--context JSON]

or several in one process (one transport, one reply queue, no Python start-up per call):

    py_client.py --url URL --topic T --batch FILE        # FILE "-" = stdin

FILE is a JSON list of operation objects with the keys
``method`` (required), ``args``, ``context``, ``topic``, ``exchange``, ``server``, ``namespace``,
``version``, ``timeout``, ``call_monitor_timeout``, ``fanout``, ``cast``, ``id`` and
``delay_before`` (seconds to sleep before the operation). Missing keys default to the command
line options.

For every operation exactly one JSON line is printed on stdout:

    {"ok": true, "result": <value>, "id": ..., "elapsed": <s>}
    {"ok": false, "exc_class": "ValueError", "exc_module": "builtins", "message": str(e),
     "args": [...] (not for RemoteError), "remote_exc_type": <RemoteError.exc_type or null>,
     "remote_value": <RemoteError.value or null>,
     "remote_traceback": <RemoteError.traceback, a list of str, or null>,
     "id": ..., "elapsed": <s>}

A rebuilt builtin exception (e.g. a remote ValueError) has message = the remote message,
a newline and the remote traceback. Casts print {"ok": true, "result": null} once oslo has handed the message to the broker.
The exit status is 0 when every operation ran (whatever its outcome), 2 on bad usage and 3
when the transport could not be set up.
"""

import argparse
import json
import logging
import os
import sys
import time
import warnings

# oslo.service warns that eventlet is deprecated, oslo.messaging that the `executor` argument
# is: noise on stderr for the interop tests.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="(?s).*eventlet is deprecated")

from oslo_config import cfg
import oslo_messaging

DEFAULT_URL = os.environ.get("OSLO_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")

OP_KEYS = {
    "method", "args", "context", "topic", "exchange", "server", "namespace", "version",
    "timeout", "call_monitor_timeout", "fanout", "cast", "id", "delay_before",
}


def json_safe(value):
    """A JSON-encodable copy of `value` (exception args may hold anything)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, (list, tuple)):
            return [json_safe(v) for v in value]
        if isinstance(value, dict):
            return {str(k): json_safe(v) for k, v in value.items()}
        return repr(value)


def describe_exception(exc):
    out = {
        "ok": False,
        "exc_class": type(exc).__name__,
        "exc_module": type(exc).__module__,
        "message": str(exc),
        "args": json_safe(list(getattr(exc, "args", ()))),
        "remote_exc_type": None,
        "remote_value": None,
        "remote_traceback": None,
    }
    if isinstance(exc, oslo_messaging.RemoteError):
        del out["args"]  # (str(exc),): the message again
        out["remote_exc_type"] = exc.exc_type
        out["remote_value"] = exc.value
        out["remote_traceback"] = exc.traceback
    return out


def run_op(transport, op, defaults):
    op = dict(defaults, **{k: v for k, v in op.items() if v is not None})
    unknown = set(op) - OP_KEYS
    if unknown:
        raise SystemExit("py_client: unknown operation keys: %s" % sorted(unknown))
    if not op.get("method"):
        raise SystemExit("py_client: an operation needs a method")
    if not op.get("topic"):
        raise SystemExit("py_client: an operation needs a topic")
    if op.get("delay_before"):
        time.sleep(float(op["delay_before"]))

    target = oslo_messaging.Target(topic=op["topic"], exchange=op.get("exchange"))
    client = oslo_messaging.get_rpc_client(transport, target)
    prepare = {}
    for key in ("server", "namespace", "version", "timeout", "call_monitor_timeout"):
        if op.get(key) is not None:
            prepare[key] = op[key]
    if op.get("fanout"):
        prepare["fanout"] = True
    if prepare:
        client = client.prepare(**prepare)

    ctxt = op.get("context") or {}
    args = op.get("args") or {}
    if not isinstance(args, dict):
        raise SystemExit("py_client: args must be a JSON object of keyword arguments")

    started = time.monotonic()
    try:
        if op.get("cast") or op.get("fanout"):
            client.cast(ctxt, op["method"], **args)
            out = {"ok": True, "result": None}
        else:
            out = {"ok": True, "result": client.call(ctxt, op["method"], **args)}
    except Exception as exc:  # noqa: BLE001 - every failure is reported as a JSON line
        out = describe_exception(exc)
    out["id"] = op.get("id")
    out["elapsed"] = round(time.monotonic() - started, 3)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--topic")
    parser.add_argument("--exchange")
    parser.add_argument("--server")
    parser.add_argument("--namespace")
    parser.add_argument("--version")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--call-monitor-timeout", type=float, dest="call_monitor_timeout")
    parser.add_argument("--fanout", action="store_true")
    parser.add_argument("--cast", action="store_true")
    parser.add_argument("--method")
    parser.add_argument("--args", default="{}", help="JSON object of keyword arguments")
    parser.add_argument("--context", default="{}", help="JSON object: the request context")
    parser.add_argument("--batch", help="JSON file with a list of operations ('-' = stdin)")
    parser.add_argument("--allowed-remote-exmods", default="",
                        help="comma-separated modules whose exceptions are rebuilt")
    parser.add_argument("--debug", action="store_true", help="DEBUG logging to stderr")
    opts = parser.parse_args()

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if opts.debug else logging.WARNING,
        format="py_client[%(process)d] %(levelname)s %(name)s: %(message)s",
    )

    try:
        defaults = {
            "topic": opts.topic,
            "exchange": opts.exchange,
            "server": opts.server,
            "namespace": opts.namespace,
            "version": opts.version,
            "timeout": opts.timeout,
            "call_monitor_timeout": opts.call_monitor_timeout,
            "fanout": opts.fanout,
            "cast": opts.cast,
            "method": opts.method,
            "args": json.loads(opts.args),
            "context": json.loads(opts.context),
        }
        if opts.batch:
            if opts.batch == "-":
                ops = json.load(sys.stdin)
            else:
                with open(opts.batch, encoding="utf-8") as f:
                    ops = json.load(f)
            if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
                raise ValueError("--batch must hold a JSON list of objects")
        else:
            ops = [{}]
    except ValueError as exc:
        print("py_client: bad JSON input: %s" % exc, file=sys.stderr)
        return 2

    exmods = [m for m in opts.allowed_remote_exmods.split(",") if m]
    # The global CONF, as services use: oslo.messaging 18.3.1 registers its tracing options
    # on cfg.CONF only, and a private ConfigOpts makes every send fail with NoSuchOptError.
    conf = cfg.CONF
    conf([], project="oslo-interop", default_config_files=[], default_config_dirs=[])
    try:
        transport = oslo_messaging.get_rpc_transport(conf, url=opts.url, allowed_remote_exmods=exmods)
    except Exception as exc:  # noqa: BLE001
        out = describe_exception(exc)
        out["fatal"] = True
        print(json.dumps(out), flush=True)
        return 3

    try:
        for op in ops:
            print(json.dumps(run_op(transport, op, defaults)), flush=True)
    finally:
        transport.cleanup()
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leftover oslo/kombu threads (e.g. a reply poller after a timed-out call) must not keep
    # the process alive once every result is printed.
    os._exit(status)
