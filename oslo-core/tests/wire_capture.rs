//! Byte-for-byte checks of the codec against real oslo.messaging 18.3.1 traffic captured on
//! RabbitMQ (`tests/fixtures/wire-capture.json`, a copy of the project's reference capture).
//!
//! For every captured request, notification and reply we decode the body with our codec and
//! encode it again from the decoded parts (with the captured ids): the bytes must be identical.

use std::time::Duration;

use oslo_core::codec::{self, CallFields, Reply};
use serde_json::Value;

fn capture() -> Value {
    let text = include_str!("fixtures/wire-capture.json");
    serde_json::from_str(text).expect("capture is JSON")
}

fn messages(section: &str) -> Vec<(String, Value)> {
    let capture = capture();
    let mut out = Vec::new();
    for (label, entries) in capture[section].as_object().expect("section") {
        for entry in entries.as_array().expect("list") {
            out.push((label.clone(), entry.clone()));
        }
    }
    out
}

#[test]
fn requests_and_notifications_reencode_byte_for_byte() {
    let captures = messages("captures");
    assert!(captures.len() >= 9, "capture has every request kind");
    for (label, entry) in captures {
        let body = entry["body"].as_str().expect("body");
        let map = codec::decode_body(body.as_bytes()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let enveloped = body.starts_with("{\"oslo.version\"");
        let decoded = codec::decode_request(map);
        let timeout = decoded.client_timeout;
        let call = decoded.msg_id.as_deref().map(|msg_id| CallFields {
            msg_id,
            reply_q: decoded.reply_q.as_deref().expect("reply_q with msg_id"),
            call_monitor_timeout: timeout,
        });
        let inner = codec::encode_request(
            &decoded.message,
            &decoded.context,
            call.as_ref(),
            decoded.unique_id.as_deref().expect("unique id"),
        );
        let ours = if enveloped {
            codec::encode_envelope(&inner)
        } else {
            codec::encode_plain(&inner)
        }
        .unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), body, "{label}");
        assert_eq!(entry["properties"]["content_type"], "application/json", "{label}");
    }
}

#[test]
fn replies_reencode_byte_for_byte() {
    let replies = messages("replies");
    assert!(replies.len() >= 6);
    let mut heartbeats = 0;
    let mut failures = 0;
    for (label, entry) in replies {
        let body = entry["body"].as_str().expect("body");
        let reply = Reply::from_map(codec::decode_body(body.as_bytes()).unwrap()).unwrap_or_else(|e| panic!("{label}: {e}"));
        heartbeats += usize::from(reply.is_heartbeat());
        failures += usize::from(reply.failure.is_some());
        let ours = codec::encode_envelope(&reply.to_map()).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), body, "{label}");
    }
    assert_eq!(heartbeats, 2, "two call-monitor heartbeats captured");
    assert_eq!(failures, 3, "ValueError, NoSuchMethod, UnsupportedVersion");
}

#[test]
fn captured_failures_become_typed_errors() {
    let replies = capture()["replies"].clone();
    let failure_of = |label: &str| {
        let body = replies[label][0]["body"].as_str().unwrap();
        Reply::from_map(codec::decode_body(body.as_bytes()).unwrap())
            .unwrap()
            .failure
            .expect("failure")
    };
    let value_error = failure_of("reply to fail (ValueError failure)");
    assert_eq!(
        (
            value_error.exc_type.as_str(),
            value_error.module.as_str(),
            value_error.message.as_str()
        ),
        ("ValueError", "builtins", "boom")
    );
    assert!(value_error.traceback().contains("raise ValueError(message)"));
    assert!(matches!(
        failure_of("reply to nonexistent method (NoSuchMethod failure)").into_error(),
        oslo_core::Error::NoSuchMethod { method } if method == "nope"
    ));
    assert!(matches!(
        failure_of("reply to control ping version 2.0 (UnsupportedVersion)").into_error(),
        oslo_core::Error::UnsupportedVersion { version, method } if version == "2.0" && method == "ping"
    ));
}

#[test]
fn our_call_request_matches_python_for_the_same_input() {
    // Build the "call echo (topic)" request from scratch, as RpcClient + a driver would.
    let capture = capture();
    let entry = &capture["captures"]["call echo (topic)"][0];
    let decoded = &entry["oslo.message(decoded)"];
    let message = oslo_core::codec::RpcMessage {
        method: "echo".into(),
        args: oslo_core::context(serde_json::json!({"value": {"s": "hi", "zh": "中文", "n": 1, "f": 1.5, "l": [true, null]}})),
        namespace: None,
        version: None,
    };
    let context = oslo_core::context(serde_json::json!({
        "user_id": "u-wire", "project_id": "p-wire", "request_id": "req-00000000-0000-0000-0000-000000000001"
    }));
    let call = CallFields {
        msg_id: decoded["_msg_id"].as_str().unwrap(),
        reply_q: decoded["_reply_q"].as_str().unwrap(),
        call_monitor_timeout: None,
    };
    let inner = codec::encode_request(&message.to_map(), &context, Some(&call), decoded["_unique_id"].as_str().unwrap());
    assert_eq!(
        String::from_utf8(codec::encode_envelope(&inner).unwrap()).unwrap(),
        entry["body"].as_str().unwrap()
    );

    // And the call-monitor variant carries `_timeout: 2` as an integer.
    let sleep = &capture["captures"]["call sleep with call_monitor_timeout=2"][0];
    let decoded = codec::decode_request(codec::decode_body(sleep["body"].as_str().unwrap().as_bytes()).unwrap());
    assert_eq!(decoded.client_timeout, Some(Duration::from_secs(2)));
}
