#!/usr/bin/env python3
"""Python oslo.messaging side of the side-by-side benchmark (driven by `oslo-bench run`).

Run it with the interop virtualenv (``bash interop/setup-venv.sh`` creates it):

    interop/.venv/bin/python bench/py_bench.py serve TOPIC NAME [--url URL]
    interop/.venv/bin/python bench/py_bench.py client SCENARIO --topic T [options]

``serve`` starts a real oslo.messaging RPC server (rabbit driver, threading executor, default
pool of 64) listening on TOPIC as NAME with one endpoint:

* ``echo(value)``  -> value
* ``incr(value)``  -> increments an in-process counter (used by casts; the payload is ignored)
* ``counter()``    -> the counter's value

It prints ``READY`` (flushed) once it consumes, and stops cleanly on EOF on stdin, SIGTERM or
SIGINT (stop + wait + transport cleanup, which deletes its fanout queue), then prints
``STOPPED``.

``client`` runs one scenario against such servers and prints exactly one JSON object on stdout:

* ``seq``:     ``--warmup`` untimed then ``--n`` timed sequential ``echo`` calls
               -> median / p99 latency, calls/s
* ``inflight``: ``--threads`` threads sharing one RPC client call ``echo`` in a loop;
               ``--warmup-secs`` untimed, then ``--duration`` timed -> calls/s, latency
* ``cast``:    ``--count`` casts of ``incr(value=<payload>)`` to the topic (shared by the servers in
               ``--servers``), one after another (oslo waits for
               the publisher confirm of each), timed from the first send until the servers'
               ``counter()`` values (server-targeted calls, polled every ``--poll-ms``) have grown
               by ``--count`` in total  -> casts/s (end to end) and the send-only rate
* ``fanout``:  the same with fanout casts, until every server in ``--servers`` has counted them
* ``notify``:  a notification listener (``get_notification_listener``, threading executor) on
               ``--topic`` is started in this process; then ``--count`` ``info`` notifications
               are sent one after another by a ``messagingv2`` Notifier (on its own transport),
               timed from the first send until the listener has counted them all -> notifications/s
               (end to end) and the send-only rate. The ``<topic>.info`` queue is left for the
               caller to delete.

Every JSON result also carries ``reply_q`` (the client's reply queue, which oslo does not delete:
the caller deletes it) and ``client_vmhwm_kb`` (peak RSS of this client process).
"""

import argparse
import json
import math
import os
import signal
import stat
import sys
import threading
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="(?s).*eventlet is deprecated")

from oslo_config import cfg  # noqa: E402
import oslo_messaging  # noqa: E402

DEFAULT_URL = os.environ.get("OSLO_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")


def vmhwm_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an already sorted list (same rule as the Rust runner)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s):
    values = sorted(latencies_s)
    return {
        "median_ms": percentile(values, 50) * 1e3 if values else None,
        "p99_ms": percentile(values, 99) * 1e3 if values else None,
        "max_ms": values[-1] * 1e3 if values else None,
    }


def setup_conf():
    # The global CONF, as services use: oslo.messaging 18.3.1 registers its tracing options on
    # cfg.CONF only.
    conf = cfg.CONF
    conf([], project="oslo-bench", default_config_files=[], default_config_dirs=[])
    return conf


class BenchEndpoint:
    target = oslo_messaging.Target(version="1.0")

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    def echo(self, ctxt, value):
        return value

    def incr(self, ctxt, value=None):
        with self._lock:
            self._count += 1

    def counter(self, ctxt):
        with self._lock:
            return self._count


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


def serve(opts):
    conf = setup_conf()
    transport = oslo_messaging.get_rpc_transport(conf, url=opts.url)
    target = oslo_messaging.Target(topic=opts.topic, server=opts.name)
    server = oslo_messaging.get_rpc_server(transport, target, [BenchEndpoint()], executor="threading")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not stdin_is_devnull():
        def watch_stdin():
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
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


def wait_counters(client, servers, targets, timeout_s, poll_s, total=None):
    """Poll each server's counter() until it reaches its target (or, with ``total``, until the
    counters' sum reaches it: casts to a topic served by several servers are shared among them);
    returns the final values."""
    deadline = time.monotonic() + timeout_s
    values = {}
    pending = list(servers)
    while total is not None:
        values = {name: client.prepare(server=name).call({}, "counter") for name in servers}
        if sum(values.values()) >= total:
            return values
        if time.monotonic() > deadline:
            raise TimeoutError("counters %r did not reach a sum of %r within %ss" % (values, total, timeout_s))
        time.sleep(poll_s)
    while pending:
        for name in list(pending):
            values[name] = client.prepare(server=name).call({}, "counter")
            if values[name] >= targets[name]:
                pending.remove(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("counters %r did not reach %r within %ss" % (values, targets, timeout_s))
        time.sleep(poll_s)
    return values


class CountingNotificationEndpoint:
    def __init__(self, expected):
        self.expected = expected
        self.count = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.count += 1
            if self.count >= self.expected:
                self.done.set()


def run_notify(opts, conf, out):
    listen_transport = oslo_messaging.get_notification_transport(conf, url=opts.url)
    send_transport = oslo_messaging.get_notification_transport(conf, url=opts.url)
    endpoint = CountingNotificationEndpoint(opts.count)
    listener = oslo_messaging.get_notification_listener(
        listen_transport, [oslo_messaging.Target(topic=opts.topic)], [endpoint], executor="threading"
    )
    listener.start()
    try:
        notifier = oslo_messaging.Notifier(
            send_transport, publisher_id="bench", driver="messagingv2", topics=[opts.topic]
        )
        payload = {"value": "x" * opts.payload}
        cpu_start = time.process_time()
        start = time.perf_counter()
        for _ in range(opts.count):
            notifier.info({}, "bench.event", payload)
        sent = time.perf_counter()
        if not endpoint.done.wait(opts.timeout + opts.count * 0.05):
            raise TimeoutError("listener counted only %d of %d" % (endpoint.count, opts.count))
        done = time.perf_counter()
        out.update({
            "notifications": opts.count, "secs": done - start, "per_s": opts.count / (done - start),
            "send_secs": sent - start, "send_per_s": opts.count / (sent - start),
            "received": endpoint.count, "ops_total": opts.count,
            "cpu_s": time.process_time() - cpu_start,
        })
    finally:
        listener.stop()
        listener.wait()
        send_transport.cleanup()
        listen_transport.cleanup()
        out["client_vmhwm_kb"] = vmhwm_kb()
        try:
            from importlib.metadata import version
            out["oslo_messaging_version"] = version("oslo.messaging")
        except Exception:  # informational only
            pass
    print(json.dumps(out), flush=True)


def run_client(opts):
    conf = setup_conf()
    if opts.scenario == "notify":
        run_notify(opts, conf, {"impl": "python", "scenario": opts.scenario})
        return
    transport = oslo_messaging.get_rpc_transport(conf, url=opts.url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic=opts.topic), timeout=opts.timeout
    )
    payload = "x" * opts.payload
    out = {"impl": "python", "scenario": opts.scenario}
    cpu_start = time.process_time()
    try:
        if opts.scenario == "seq":
            for _ in range(opts.warmup):
                client.call({}, "echo", value=payload)
            latencies = []
            start = time.perf_counter()
            for _ in range(opts.n):
                t = time.perf_counter()
                result = client.call({}, "echo", value=payload)
                latencies.append(time.perf_counter() - t)
                if result != payload:
                    raise AssertionError("echo returned a different value")
            elapsed = time.perf_counter() - start
            out.update(latency_summary(latencies))
            out.update({"calls": opts.n, "secs": elapsed, "per_s": opts.n / elapsed, "ops_total": opts.n + opts.warmup})
        elif opts.scenario == "inflight":
            stop = threading.Event()
            window = {}
            errors = [0]
            per_thread = [[] for _ in range(opts.threads)]

            def worker(i):
                mine = per_thread[i]
                while not stop.is_set():
                    t = time.perf_counter()
                    try:
                        client.call({}, "echo", value=payload)
                    except Exception:  # counted, the run goes on
                        errors[0] += 1
                        continue
                    end = time.perf_counter()
                    mine.append((end, end - t))

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(opts.threads)]
            for th in threads:
                th.start()
            time.sleep(opts.warmup_secs)
            window["t0"] = time.perf_counter()
            time.sleep(opts.duration)
            window["t1"] = time.perf_counter()
            stop.set()
            for th in threads:
                th.join(opts.timeout + 5)
            t0, t1 = window["t0"], window["t1"]
            lat = [l for rows in per_thread for (end, l) in rows if t0 <= end < t1]
            out.update(latency_summary(lat))
            out.update({
                "calls": len(lat), "secs": t1 - t0, "per_s": len(lat) / (t1 - t0),
                "threads": opts.threads, "errors": errors[0],
                "ops_total": sum(len(rows) for rows in per_thread),
            })
        elif opts.scenario in ("cast", "fanout"):
            servers = opts.servers.split(",")
            fanout = opts.scenario == "fanout"
            before = {name: client.prepare(server=name).call({}, "counter") for name in servers}
            targets = {name: before[name] + opts.count for name in servers}
            # A cast reaches one of the topic's servers; a fanout cast reaches every one.
            total = None if fanout else sum(before.values()) + opts.count
            sender = client.prepare(fanout=True) if fanout else client
            start = time.perf_counter()
            for _ in range(opts.count):
                sender.cast({}, "incr", value=payload)
            sent = time.perf_counter()
            final = wait_counters(client, servers, targets, opts.timeout, opts.poll_ms / 1e3, total)
            done = time.perf_counter()
            out.update({
                "count": opts.count, "secs": done - start, "per_s": opts.count / (done - start),
                "send_secs": sent - start, "send_per_s": opts.count / (sent - start),
                "processed": {name: final[name] - before[name] for name in servers},
                "ops_total": opts.count,
            })
        else:
            raise SystemExit("unknown scenario %r" % opts.scenario)
        out["cpu_s"] = time.process_time() - cpu_start
    finally:
        driver = getattr(transport, "_driver", None)
        out["reply_q"] = getattr(driver, "_reply_q", None)
        out["client_vmhwm_kb"] = vmhwm_kb()
        try:
            from importlib.metadata import version
            out["oslo_messaging_version"] = version("oslo.messaging")
        except Exception:  # informational only
            pass
        transport.cleanup()
    print(json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("topic")
    s.add_argument("name")
    s.add_argument("--url", default=DEFAULT_URL)
    c = sub.add_parser("client")
    c.add_argument("scenario", choices=["seq", "inflight", "cast", "fanout", "notify"])
    c.add_argument("--topic", required=True)
    c.add_argument("--url", default=DEFAULT_URL)
    c.add_argument("--servers", default="a", help="comma-separated server names (cast: the first)")
    c.add_argument("--payload", type=int, default=100, help="length of the echo string")
    c.add_argument("--n", type=int, default=2000)
    c.add_argument("--warmup", type=int, default=200)
    c.add_argument("--threads", type=int, default=16)
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--warmup-secs", type=float, default=1.0)
    c.add_argument("--count", type=int, default=3000)
    c.add_argument("--poll-ms", type=float, default=2.0)
    c.add_argument("--timeout", type=float, default=30.0, help="call timeout and counter wait bound (s)")
    opts = parser.parse_args()
    if opts.mode == "serve":
        serve(opts)
    else:
        run_client(opts)


if __name__ == "__main__":
    main()
