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

REPLIES_EXTRA = [
    b'{"oslo.version": "2.0", "oslo.message": "{\\"result\\": null, \\"failure\\": \\"not json\\", \\"ending\\": true, \\"_msg_id\\": \\"x\\"}"}',
    b'{"result": 1, "failure": {"class": "KeyError", "module": "builtins", "message": "k", "tb": [], "args": [], "kwargs": {}}, "_msg_id": "x"}',
    b'{"class": "ValueError", "module": "builtins", "message": "m", "tb": ["t"], "args": ["a"], "kwargs": {"k": 1}}',
]

TARGETS = {
    "transport_url": [u.encode() for u in URLS],
    "request_body": list(bodies("captures")) + MALFORMED,
    "reply_body": list(bodies("replies")) + MALFORMED[:3] + REPLIES_EXTRA,
}

for target, inputs in TARGETS.items():
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    for data in inputs:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{target}: {len(inputs)} seeds in {directory.relative_to(HERE.parent)}")
