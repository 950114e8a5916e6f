#!/usr/bin/env python3
"""Write the seed corpus of each fuzz target into corpus/<target>/ (one file per input, named
by its SHA-1 as cargo fuzz does): real bodies captured from Python oslo.messaging 18.3.1
(oslo-core/tests/fixtures/wire-capture.json), a few malformed ones, and transport URL examples
from the README and oslo's test_urls.py. Run from anywhere; rerun after changing the lists."""

import hashlib
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
CAPTURE = json.loads((HERE.parent / "oslo-core/tests/fixtures/wire-capture.json").read_text())


def bodies(section):
    for messages in CAPTURE[section].values():
        for message in messages:
            yield message["body"].encode()


URLS = [
    "rabbit://guest:guest@127.0.0.1:5672/",
    "rabbit://u1:p1@h1:5672,u2:p2@h2:5673/nova?rabbit_qos_prefetch_count=10&ssl=1",
    "rabbit://user:p%40ss@h1/",
    "kombu://u:p@[::1]:5672,h2/vh%2Fx?a=1&a=2;b=3#frag",
    "zmq+redis://127.0.0.1:6379/",
    "amqp://:p@h/",
    "fake://", "fake:", "fake:/", "fake://bus", "fault+fake://bus?fault_drop=0.5",
    "rabbit://h1//", "rabbit://u@/", "rabbit://h:notaport/", "rabbit://[::1/", "no-scheme",
    # Found by fuzzing: host `[` printed as a URL that did not parse again.
    "u://[[]",
]

MALFORMED = [
    b"",
    b"not json",
    b"[1, 2, 3]",
    b'{"oslo.version": "3.0", "oslo.message": "{}"}',
    b'{"oslo.version": "2.0", "oslo.message": {"method": "m"}}',
    b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": 42, \\"args\\": [1], \\"_timeout\\": 1e300}"}',
    b'{"oslo.version": "2.0", "oslo.message": "\xff\xfe"}',
    b'{"method": "v1", "args": {}, "_context_user": "u", "_msg_id": 7, "_timeout": -1}',
    # Found by fuzzing: a float that came back one bit off after decode + encode.
    b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": 42222222222222222222222222222222222222222222222222222222222222}"}',
]

def envelope(msg):
    """A body as oslo writes it (_drivers/common.py::serialize_msg, then kombu's json.dumps)."""
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(msg)}).encode()


NAN, INF = float("nan"), float("inf")

# Values that must survive exactly ("Reliability II"): integers of any size, the bare NaN /
# Infinity / -Infinity that json.dumps writes for non-finite floats (outside strings, at both
# JSON levels), strings containing those words, and number spellings json.loads accepts.
VALUES = [
    b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": \\"echo\\", \\"args\\": {\\"value\\": NaN}}"}',
    envelope({"method": "echo", "args": {"value": 2**64 + 1}, "_msg_id": "m", "_reply_q": "q",
              "_timeout": None, "_unique_id": "u", "_context_user_id": "u1"}),
    envelope({"method": "echo", "args": {"value": -2**63 - 1, "big": 10**60, "f": [NAN, INF, -INF]},
              "_unique_id": "u", "_context_x": NAN}),
    envelope({"method": "echo", "args": {"s": "NaN Infinity -Infinity", "k": {"NaN": -INF}},
              "_timeout": INF, "_unique_id": "u"}),
    json.dumps({"event_type": "e", "payload": {"v": NAN, "w": [INF, -INF, 2**70]}, "priority": "INFO"}).encode(),
    b'{"method": "m", "args": {"a": -0, "b": 1.50, "c": 1E5, "d": 1e400, "e": -1e400, "f": 1e-400, "g": -0.0}}',
    b'{"method": "m", "args": {"a": [NaN,Infinity,-Infinity], "b": nan, "c": -NaN}}',
    b'{"method": "m", "args": {"a": "\\ud800"}}',
    b'{"method": "m", "args": {"a": "NaN\\"NaN\\\\", "b": Infinityx}}',
]

REPLY_VALUES = [
    envelope({"result": NAN, "failure": None, "ending": True, "_msg_id": "m", "_unique_id": "u"}),
    envelope({"result": [2**64 + 1, -INF, "NaN"], "failure": None, "ending": True, "_msg_id": "m"}),
    envelope({"result": None, "ending": True, "_msg_id": "m", "failure": json.dumps(
        {"class": "ValueError", "module": "builtins", "message": "nan", "tb": [],
         "args": [NAN, 2**64 + 1], "kwargs": {"x": INF}})}),
]

REPLIES_EXTRA = [
    b'{"oslo.version": "2.0", "oslo.message": "{\\"result\\": null, \\"failure\\": \\"not json\\", \\"ending\\": true, \\"_msg_id\\": \\"x\\"}"}',
    b'{"result": 1, "failure": {"class": "KeyError", "module": "builtins", "message": "k", "tb": [], "args": [], "kwargs": {}}, "_msg_id": "x"}',
    b'{"class": "ValueError", "module": "builtins", "message": "m", "tb": ["t"], "args": ["a"], "kwargs": {"k": 1}}',
]

TARGETS = {
    "transport_url": [u.encode() for u in URLS],
    "request_body": list(bodies("captures")) + MALFORMED + VALUES,
    "reply_body": list(bodies("replies")) + MALFORMED[:3] + REPLIES_EXTRA + REPLY_VALUES,
}

for target, inputs in TARGETS.items():
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    for data in inputs:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{target}: {len(inputs)} seeds in {directory.relative_to(HERE.parent)}")
