//! Differential tests against real Python: the bytes Python's `json` (and, when the interop
//! venv is there, oslo.messaging 18.3.1's own `serialize_msg` / `unpack_context`) produce for
//! the same values are the expected output, not hand-written strings.
//!
//! * Python writes thousands of values (big integers, `NaN`, the infinities, floats from random
//!   bit patterns, strings that contain "NaN"); we read each and write it again: the same bytes.
//! * Python builds oslo request and reply bodies around them; our codec decodes and re-encodes
//!   them byte for byte.
//! * We build bodies from Rust values (an `f64::INFINITY` result, `u128::MAX`, ...); Python
//!   reads and rewrites them: the same bytes.
//!
//! The Python is `interop/.venv/bin/python` when present (see `interop/setup-venv.sh`), else
//! `python3`, or `OSLO_INTEROP_PYTHON`. python3 is on every CI machine; without one these tests
//! fail rather than pass silently.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use oslo_core::codec::{self, CallFields, Reply};
use oslo_core::pyjson;
use oslo_core::{AccessPolicy, Endpoint, HandlerError, JsonMap, NoOpSerializer, RpcDispatcher};
use serde_json::{Number, Value};

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("OSLO_INTEROP_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Run `script` with `input` on stdin; its stdout, one entry per line.
fn run_python(script: &str, input: &str) -> Vec<String> {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (python3 is needed for these tests): {e}", python.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python runs");
    let written = writer.join().expect("writer");
    assert!(
        output.status.success(),
        "{} failed: {}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    written.expect("python reads all its input");
    String::from_utf8(output.stdout)
        .expect("python writes UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Python helpers shared by the scripts: oslo's own serializer when importable.
const PRELUDE: &str = r#"
import json, random, struct, sys
try:
    import logging; logging.disable(logging.CRITICAL)
    import warnings; warnings.simplefilter("ignore")
    from oslo_messaging._drivers import common as _common, amqp as _amqp
    def body(msg):
        # What impl_rabbit publishes: serialize_msg's dict, dumped by kombu (json.dumps).
        return json.dumps(_common.serialize_msg(msg))
    HAVE_OSLO = True
except ImportError:
    def body(msg):
        return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(msg)})
    HAVE_OSLO = False
"#;

/// The values Python writes: edge cases, then random ones (fixed seed).
const VALUES: &str = r#"
random.seed(20240518)
values = [
    2**64 + 1, -2**63 - 1, 2**63, -2**64, 2**64 - 1, 10**40, -(10**100), 0, 1, -1,
    0.0, -0.0, float("nan"), float("inf"), -float("inf"),
    1e16, 1e15, 1e-4, 1e-5, 1e22, 1e300, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
    0.1, 0.30000000000000004, 2.5, 123456.789, 1/3, -2.5e-7, 12345678901234567890.5,
    "NaN", "Infinity", "-Infinity", " NaN ", "[NaN]", "\"NaN\"", "\\NaN", "NaN\u00e9\U0001F600",
    [float("nan"), {"k": float("inf"), "NaN": -float("inf")}],
    {"nested": {"Infinity": [1, 2**70, [float("nan")]]}, "s": "Infinity"},
    [], {}, None, True, False,
]
for _ in range(3000):
    values.append(struct.unpack("<d", struct.pack("<Q", random.getrandbits(64)))[0])
for _ in range(500):
    values.append(random.uniform(-1e6, 1e6))
    values.append(random.random() * 10.0 ** random.randint(-30, 30))
for _ in range(300):
    values.append(random.getrandbits(random.randint(1, 400)) * random.choice([1, -1]))
"#;

#[test]
fn python_values_read_and_write_back_byte_for_byte() {
    let script = format!("{PRELUDE}{VALUES}\nfor v in values: print(json.dumps(v))");
    let lines = run_python(&script, "");
    assert!(lines.len() > 4000, "python wrote {} values", lines.len());
    let mut non_finite = 0;
    for line in &lines {
        let value = pyjson::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(&pyjson::to_string(&value).unwrap(), line, "read and written back");
        non_finite += usize::from(pyjson::as_float(&value).is_some_and(|f| !f.is_finite()));
        // And the value is the Python one: floats are the same f64, integers the same digits.
        if let Value::Number(number) = &value {
            if pyjson::is_float(&value) {
                let expected: f64 = line.parse().unwrap_or_else(|_| pyjson::as_float(&value).unwrap());
                let got = pyjson::as_float(&value).unwrap();
                assert!(got.to_bits() == expected.to_bits() || got.is_nan(), "{line}");
            } else {
                assert_eq!(number.as_str(), line.as_str());
            }
        }
    }
    assert!(non_finite > 3, "NaN and the infinities were among them");
}

#[test]
fn python_bodies_decode_and_reencode_byte_for_byte() {
    // Requests as amqpdriver._send builds them (method, args, _msg_id, _reply_q, _timeout,
    // _unique_id, _context_*), one per value, and the replies a server sends with the value.
    let script = format!(
        r#"{PRELUDE}{VALUES}
for i, v in enumerate(values[:400]):
    msg = {{"method": "echo", "args": {{"value": v}}, "_msg_id": "m%d" % i, "_reply_q": "reply_q",
           "_timeout": [None, 2, 1.5][i % 3], "_unique_id": "u%d" % i}}
    if HAVE_OSLO:
        _amqp.pack_context(msg, {{"user_id": "u", "x": v}})
    else:
        msg.update({{"_context_user_id": "u", "_context_x": v}})
    print(body(msg))
    print(body({{"result": v, "failure": None, "ending": True, "_msg_id": "m%d" % i, "_unique_id": "r%d" % i}}))
"#
    );
    let lines = run_python(&script, "");
    assert_eq!(lines.len(), 800);
    for pair in lines.chunks(2) {
        let (request_body, reply_body) = (&pair[0], &pair[1]);
        let request = codec::decode_request(codec::decode_body(request_body.as_bytes()).unwrap_or_else(|e| panic!("{request_body}: {e}")));
        let call = CallFields {
            msg_id: request.msg_id.as_deref().unwrap(),
            reply_q: request.reply_q.as_deref().unwrap(),
            call_monitor_timeout: request.client_timeout,
        };
        let ours = codec::encode_request_body(
            &request.message,
            &request.context,
            Some(&call),
            request.unique_id.as_deref().unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(&String::from_utf8(ours).unwrap(), request_body);

        let reply = Reply::from_map(codec::decode_body(reply_body.as_bytes()).unwrap()).unwrap();
        assert_eq!(&String::from_utf8(reply.encode().unwrap()).unwrap(), reply_body);
        assert_eq!(reply.result, request.message["args"]["value"], "the same value at both levels");
    }
}

/// Values built in Rust, as handlers and clients produce them.
fn rust_values() -> Vec<Value> {
    let mut values = vec![
        pyjson::float_value(f64::NAN),
        pyjson::float_value(f64::INFINITY),
        pyjson::float_value(f64::NEG_INFINITY),
        pyjson::to_value(&u128::MAX).unwrap(),
        pyjson::to_value(&i128::MIN).unwrap(),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1e16),
        Value::from(-0.0),
        Value::from(f64::MIN_POSITIVE),
        Value::from(f64::MAX),
        Value::from(5e-324),
        pyjson::to_value(&(f64::NAN, [f64::INFINITY], "NaN")).unwrap(),
        pyjson::to_value(&0.1f32).unwrap(),
    ];
    // Floats from a fixed sequence of bit patterns (every exponent, NaN payloads included).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        values.push(pyjson::float_value(f64::from_bits(state)));
    }
    values.push(Value::Number(Number::from_string_unchecked("9".repeat(300))));
    values
}

#[test]
fn rust_bodies_read_by_python_come_back_identical() {
    let mut bodies = Vec::new();
    for (i, value) in rust_values().into_iter().enumerate() {
        let mut args = JsonMap::new();
        args.insert("value".into(), value.clone());
        let mut message = JsonMap::new();
        message.insert("method".into(), Value::String("echo".into()));
        message.insert("args".into(), Value::Object(args));
        let mut context = JsonMap::new();
        context.insert("x".into(), value.clone());
        let call = CallFields {
            msg_id: "m",
            reply_q: "reply_q",
            call_monitor_timeout: None,
        };
        let request = codec::encode_request_body(&message, &context, Some(&call), &format!("u{i}"), true).unwrap();
        bodies.push(String::from_utf8(request).unwrap());
        let mut reply = Reply::final_reply("m", Ok(value));
        reply.unique_id = Some(format!("r{i}"));
        bodies.push(String::from_utf8(reply.encode().unwrap()).unwrap());
    }
    // Python reads each body at both levels (deserialize_msg) and writes it again.
    let script = format!(
        r#"{PRELUDE}
for line in sys.stdin:
    outer = json.loads(line)
    inner = json.loads(outer["oslo.message"])
    print(body(inner))
"#
    );
    let back = run_python(&script, &(bodies.join("\n") + "\n"));
    assert_eq!(back.len(), bodies.len());
    for (ours, python) in bodies.iter().zip(&back) {
        assert_eq!(python, ours, "Python rewrote our body differently");
    }
}

#[test]
fn endpoint_context_matches_unpack_context() {
    let requests = [
        r#"{"method": "m", "_msg_id": "i", "_reply_q": "q", "_timeout": 2, "_unique_id": "u", "_context_user": "u1"}"#,
        r#"{"method": "m", "_msg_id": "i", "_reply_q": "q", "_timeout": 1.5, "_unique_id": "u", "_context_user": "u1"}"#,
        r#"{"method": "m", "_msg_id": "i", "_reply_q": "q", "_timeout": null, "_unique_id": "u", "_context_user": "u1"}"#,
        r#"{"method": "m", "_unique_id": "u", "_context_user": "u1", "_context_roles": ["a"]}"#,
        r#"{"method": "m", "_timeout": 4, "_context_msg_id": "x", "_context_client_timeout": 9, "_context_user": "u", "_context_reply_q": "y"}"#,
    ];
    let script = format!(
        r#"{PRELUDE}
if not HAVE_OSLO:
    print("SKIP")
    sys.exit(0)
for line in sys.stdin:
    print(json.dumps(_amqp.unpack_context(json.loads(line)).to_dict()))
"#
    );
    let back = run_python(&script, &(requests.join("\n") + "\n"));
    if back == ["SKIP"] {
        eprintln!("SKIPPED endpoint_context_matches_unpack_context: oslo.messaging is not importable (run interop/setup-venv.sh)");
        return;
    }
    for (request, python) in requests.iter().zip(&back) {
        let decoded = codec::decode_request(codec::decode_body(request.as_bytes()).unwrap());
        let ours = codec::endpoint_context(&decoded.context, decoded.raw_timeout.clone());
        assert_eq!(&pyjson::to_string(&ours).unwrap(), python, "{request}");
    }
}

#[tokio::test]
async fn unexpected_keyword_argument_reads_like_python() {
    let expected = run_python(
        r#"
def echo(ctxt):
    pass
try:
    echo({}, **{"x": 1, "y": 2})
except TypeError as e:
    print(e)
"#,
        "",
    );
    let dispatcher = RpcDispatcher::new(
        vec![Endpoint::new().method("echo", |_ctxt, _args: ()| async { Ok::<_, HandlerError>(()) })],
        AccessPolicy::Default,
        std::sync::Arc::new(NoOpSerializer),
    );
    let request = pyjson::from_str(r#"{"method": "echo", "args": {"x": 1, "y": 2}}"#).unwrap();
    let error = dispatcher.dispatch(JsonMap::new(), request.as_object().unwrap()).await.unwrap_err();
    assert_eq!((error.exc_type.as_str(), vec![error.message]), ("TypeError", expected));
}

#[test]
fn parser_accepts_and_rejects_what_json_loads_does() {
    // Python mutates small documents (JSON-significant characters inserted, deleted, replaced)
    // and says for each what json.loads makes of it: json.dumps of the value, or null when it
    // raises. We must agree on every one, error or not, and on the value.
    let script = r#"
import json, random
random.seed(7)
seeds = [
    '{"a": [1, -2.5e+3, NaN, Infinity, -Infinity, "N\\u00e9\\"x", true, false, null], "b": {"c": 18446744073709551617}}',
    '[0, -0, 0.0, 1E5, 1e-7, "\\ud83d\\ude00", "\\/\\b\\f\\n\\r\\t", {}, [], [[]], {"": ""}]',
    ' { "k" : "NaN" , "Infinity" : -1 } ',
    '"plain string with some length to it"',
]
alphabet = list('{}[]:,"\\ \t\n-+.eE0123456789NaIfinitytruefalsnul') + ['\u00e9', '\x00', '\x1f']
out = []
for _ in range(20000):
    s = list(random.choice(seeds))
    for _ in range(random.randint(1, 3)):
        op = random.random()
        i = random.randrange(len(s) + 1)
        if op < 0.4:
            s.insert(i, random.choice(alphabet))
        elif op < 0.7 and s:
            del s[min(i, len(s) - 1)]
        elif s:
            s[min(i, len(s) - 1)] = random.choice(alphabet)
    text = ''.join(s)
    try:
        value = json.loads(text)
        verdict = json.dumps(value)
    except ValueError:
        verdict = None
    # Lone surrogates are valid in a Python str but not in a Rust String: not comparable.
    if verdict is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False)):
        continue
    print(json.dumps([text, verdict]))
"#;
    let lines = run_python(script, "");
    assert!(lines.len() > 19_000, "{} cases", lines.len());
    let (mut accepted, mut rejected) = (0, 0);
    for line in &lines {
        let case = pyjson::from_str(line).expect("python's line");
        let text = case[0].as_str().expect("input");
        match (&case[1], pyjson::from_str(text)) {
            (Value::String(python), Ok(ours)) => {
                accepted += 1;
                assert_eq!(&pyjson::to_string(&ours).unwrap(), python, "input {text:?}");
            }
            (Value::String(python), Err(e)) => panic!("json.loads reads {text:?} (as {python}) but we fail: {e}"),
            (_, Err(_)) => rejected += 1,
            (_, Ok(ours)) => panic!("json.loads rejects {text:?} but we read {ours}"),
        }
    }
    assert!(
        accepted > 1000 && rejected > 1000,
        "both kinds covered: {accepted} read, {rejected} rejected"
    );
}
