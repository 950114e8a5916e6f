//! oslo's AMQP 1.0 message encoding (`impl_amqp1.py::marshal_request` / `marshal_response`).
//!
//! * The body is an AMQP value section holding a **string of JSON** (proton's `inferred=True`).
//! * Request: `{"request": <message>, "context": <ctxt>, "call_monitor_timeout": <s>?}`; the
//!   context is a separate dict (no `_context_` prefix, no `_unique_id`, no `_msg_id`).
//!   Notifications put oslo's 2.0 envelope into `request` for `messagingv2`.
//! * Reply: `{"response": <result>}` or `{"failure": "<oslo failure JSON>"}`, with
//!   `correlation_id` = the request's `message_id`.
//! * Call-monitor heartbeat: a message with **no body** and the `correlation_id`.

use std::time::Duration;

use fe2o3_amqp::types::messaging::{Body, Header, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::Value;
use oslo_core::codec::{seconds_value, Reply, MAX_CLIENT_TIMEOUT};
use oslo_core::{pyjson, Error, JsonMap, RemoteError, Result};
use serde_json::Value as Json;

/// An AMQP message as this driver sends and receives it.
pub(crate) type AmqpMessage = Message<Body<Value>>;

fn serialization(e: serde_json::Error) -> Error {
    Error::Serialization(e.to_string())
}

/// The request body JSON text.
pub(crate) fn request_body(message: &JsonMap, context: &JsonMap, call_monitor_timeout: Option<Duration>) -> Result<String> {
    let mut body = JsonMap::new();
    body.insert("request".into(), Json::Object(message.clone()));
    body.insert("context".into(), Json::Object(context.clone()));
    if let Some(t) = call_monitor_timeout {
        body.insert("call_monitor_timeout".into(), seconds_value(t));
    }
    pyjson::to_string(&body).map_err(serialization)
}

/// The notification body JSON text; `envelope` wraps the message in oslo's 2.0 envelope.
pub(crate) fn notification_body(message: &JsonMap, context: &JsonMap, envelope: bool) -> Result<String> {
    let request = if envelope {
        let inner = pyjson::to_string(message).map_err(serialization)?;
        let mut env = JsonMap::new();
        env.insert(
            oslo_core::codec::VERSION_KEY.into(),
            Json::String(oslo_core::codec::ENVELOPE_VERSION.into()),
        );
        env.insert(oslo_core::codec::MESSAGE_KEY.into(), Json::String(inner));
        env
    } else {
        message.clone()
    };
    let mut body = JsonMap::new();
    body.insert("request".into(), Json::Object(request));
    body.insert("context".into(), Json::Object(context.clone()));
    pyjson::to_string(&body).map_err(serialization)
}

/// The reply body JSON text.
pub(crate) fn reply_body(outcome: &std::result::Result<Json, RemoteError>) -> Result<String> {
    let mut body = JsonMap::new();
    match outcome {
        Ok(result) => body.insert("response".into(), result.clone()),
        Err(failure) => body.insert("failure".into(), Json::String(failure.to_failure_json())),
    };
    pyjson::to_string(&body).map_err(serialization)
}

/// Build an AMQP message: `to` = the link address, optional ids, TTL and reply address.
pub(crate) fn build(
    to: &str,
    body: Option<String>,
    message_id: Option<&str>,
    correlation_id: Option<&str>,
    reply_to: Option<&str>,
    ttl: Option<Duration>,
) -> AmqpMessage {
    let mut properties = Properties::builder().to(to.to_string());
    if let Some(id) = message_id {
        properties = properties.message_id(MessageId::String(id.to_string()));
    }
    if let Some(id) = correlation_id {
        properties = properties.correlation_id(MessageId::String(id.to_string()));
    }
    if let Some(reply_to) = reply_to {
        properties = properties.reply_to(reply_to.to_string());
    }
    let mut builder = Message::builder().properties(properties.build());
    if let Some(ttl) = ttl {
        let ms = ttl.as_millis().clamp(1, u32::MAX as u128) as u32;
        builder = builder.header(Header::builder().ttl(ms).build());
    }
    let body = match body {
        Some(text) => Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(text))),
        None => Body::Empty,
    };
    builder.body(body).build()
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => format!("{u:?}"),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// The message's `message_id` as text.
pub(crate) fn message_id(message: &AmqpMessage) -> Option<String> {
    message.properties.as_ref()?.message_id.as_ref().map(id_text)
}

/// The message's `correlation_id` as text.
pub(crate) fn correlation_id(message: &AmqpMessage) -> Option<String> {
    message.properties.as_ref()?.correlation_id.as_ref().map(id_text)
}

/// The message's `reply_to`.
pub(crate) fn reply_to(message: &AmqpMessage) -> Option<String> {
    message.properties.as_ref()?.reply_to.clone()
}

/// The JSON body: an AMQP value string (oslo), or data sections (a peer that converted it);
/// `None` for a message without a body (a heartbeat).
pub(crate) fn body_json(message: &AmqpMessage) -> Result<Option<JsonMap>> {
    let text: Vec<u8> = match &message.body {
        Body::Empty => return Ok(None),
        Body::Value(v) => match &v.0 {
            Value::Null => return Ok(None),
            Value::String(s) => s.clone().into_bytes(),
            Value::Binary(b) => b.to_vec(),
            other => return Err(Error::invalid_message(format!("AMQP value body is not a string: {other:?}"))),
        },
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Sequence(_) => return Err(Error::invalid_message("AMQP sequence bodies are not oslo messages")),
    };
    match serde_json::from_slice::<Json>(&text) {
        Ok(Json::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(Error::invalid_message("body is not a JSON object")),
        Err(e) => Err(Error::invalid_message(format!("body is not JSON: {e}"))),
    }
}

/// A request or notification as a server sees it.
#[derive(Debug)]
pub(crate) struct Request {
    pub message: JsonMap,
    pub context: JsonMap,
    pub call_monitor_timeout: Option<Duration>,
}

/// Split a request body; an enveloped `request` (a messagingv2 notification) is unwrapped.
pub(crate) fn parse_request(mut body: JsonMap) -> Result<Request> {
    let message = match body.remove("request") {
        Some(Json::Object(request)) => {
            if request.contains_key(oslo_core::codec::VERSION_KEY) && request.contains_key(oslo_core::codec::MESSAGE_KEY) {
                let text = serde_json::to_vec(&request).map_err(serialization)?;
                oslo_core::codec::decode_body(&text)?
            } else {
                request
            }
        }
        _ => return Err(Error::invalid_message("no \"request\" object in the body")),
    };
    let context = match body.remove("context") {
        Some(Json::Object(context)) => context,
        None | Some(Json::Null) => JsonMap::new(),
        Some(_) => return Err(Error::invalid_message("\"context\" is not an object")),
    };
    let call_monitor_timeout = body
        .get("call_monitor_timeout")
        .and_then(Json::as_f64)
        .filter(|s| *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_CLIENT_TIMEOUT.as_secs_f64())));
    Ok(Request {
        message,
        context,
        call_monitor_timeout,
    })
}

/// Read a reply (or heartbeat) for the call `msg_id`.
pub(crate) fn parse_reply(msg_id: String, body: Option<JsonMap>) -> Reply {
    let Some(mut body) = body else {
        return Reply::heartbeat(msg_id);
    };
    if let Some(failure) = body.remove("failure").filter(|f| !f.is_null()) {
        let remote = match &failure {
            Json::String(text) => RemoteError::from_failure_json(text).unwrap_or_else(|_| {
                RemoteError::new(
                    "InvalidRemoteFailure",
                    "oslo_messaging",
                    format!("unreadable failure in reply: {text}"),
                )
            }),
            other => serde_json::from_value(other.clone()).unwrap_or_else(|_| {
                RemoteError::new(
                    "InvalidRemoteFailure",
                    "oslo_messaging",
                    format!("unreadable failure in reply: {other}"),
                )
            }),
        };
        return Reply::final_reply(msg_id, Err(remote));
    }
    Reply::final_reply(msg_id, Ok(body.remove("response").unwrap_or(Json::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Json) -> JsonMap {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn request_round_trip() {
        let message = map(json!({"method": "echo", "args": {"x": 1}}));
        let context = map(json!({"user": "u"}));
        let text = request_body(&message, &context, Some(Duration::from_secs(10))).unwrap();
        assert_eq!(
            text,
            r#"{"request": {"method": "echo", "args": {"x": 1}}, "context": {"user": "u"}, "call_monitor_timeout": 10}"#
        );
        let amqp = build(
            "addr",
            Some(text),
            Some("id1"),
            None,
            Some("reply"),
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(message_id(&amqp).as_deref(), Some("id1"));
        assert_eq!(reply_to(&amqp).as_deref(), Some("reply"));
        assert_eq!(amqp.header.as_ref().unwrap().ttl, Some(1500));
        let request = parse_request(body_json(&amqp).unwrap().unwrap()).unwrap();
        assert_eq!(request.message, message);
        assert_eq!(request.context, context);
        assert_eq!(request.call_monitor_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn notification_envelope_is_unwrapped() {
        let message = map(json!({"event_type": "e", "payload": {"n": 1}}));
        let text = notification_body(&message, &JsonMap::new(), true).unwrap();
        assert!(text.contains("oslo.version"), "{text}");
        let request = parse_request(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(request.message, message);
    }

    #[test]
    fn replies_and_heartbeats() {
        let ok = reply_body(&Ok(json!([1, 2]))).unwrap();
        let reply = parse_reply("m".into(), Some(serde_json::from_str(&ok).unwrap()));
        assert_eq!(reply.result, json!([1, 2]));
        assert!(reply.ending);
        let failure = reply_body(&Err(RemoteError::new("ValueError", "builtins", "bad"))).unwrap();
        let reply = parse_reply("m".into(), Some(serde_json::from_str(&failure).unwrap()));
        assert_eq!(reply.failure.unwrap().exc_type, "ValueError");
        assert!(parse_reply("m".into(), None).is_heartbeat());
        let hb = build("a", None, None, Some("m"), None, None);
        assert!(body_json(&hb).unwrap().is_none());
        assert_eq!(correlation_id(&hb).as_deref(), Some("m"));
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        let m = build("a", Some("not json".into()), None, None, None, None);
        assert!(matches!(body_json(&m), Err(Error::InvalidMessage { .. })));
        assert!(matches!(parse_request(map(json!({"x": 1}))), Err(Error::InvalidMessage { .. })));
    }
}
