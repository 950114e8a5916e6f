//! oslo's AMQP 1.0 message encoding (`impl_amqp1.py::marshal_request` / `marshal_response`).
//!
//! * The body is an AMQP value section holding a **string of JSON** (proton's `inferred=True`).
//! * Request: `{"request": <message>, "context": <ctxt>, "call_monitor_timeout": <s>?}`; the
//!   context is a separate dict (no `_context_` prefix, no `_unique_id`, no `_msg_id`).
//!   Notifications put oslo's 2.0 envelope into `request` for `messagingv2`.
//! * Reply: `{"response": <result>}` or `{"failure": "<oslo failure JSON>"}`, with
//!   `correlation_id` = the request's `message_id`.
//! * Call-monitor heartbeat: a message with **no body** and the `correlation_id`.

use std::borrow::Cow;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{Body, Header, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::Value;
use oslo_core::codec::{seconds_value, Reply, MAX_CLIENT_TIMEOUT};
use oslo_core::{pyjson, Error, JsonMap, RemoteError, Result};
use serde_json::Value as Json;

/// An AMQP message as this driver sends and receives it.
pub(crate) type AmqpMessage = Message<Body<Value>>;

/// `{"request": ..., "context": ..., "call_monitor_timeout": s?}`, serialized from borrowed
/// parts so that a send does not copy its arguments and context.
#[derive(serde::Serialize)]
struct RequestBody<'a> {
    request: &'a JsonMap,
    context: &'a JsonMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_monitor_timeout: Option<Json>,
}

/// The request body JSON text.
pub(crate) fn request_body(message: &JsonMap, context: &JsonMap, call_monitor_timeout: Option<Duration>) -> Result<String> {
    Ok(pyjson::to_string(&RequestBody {
        request: message,
        context,
        call_monitor_timeout: call_monitor_timeout.map(seconds_value),
    })?)
}

/// The notification body JSON text; `envelope` wraps the message in oslo's 2.0 envelope.
pub(crate) fn notification_body(message: &JsonMap, context: &JsonMap, envelope: bool) -> Result<String> {
    if !envelope {
        return request_body(message, context, None);
    }
    let mut env = JsonMap::new();
    env.insert(
        oslo_core::codec::VERSION_KEY.into(),
        Json::String(oslo_core::codec::ENVELOPE_VERSION.into()),
    );
    env.insert(oslo_core::codec::MESSAGE_KEY.into(), Json::String(pyjson::to_string(message)?));
    request_body(&env, context, None)
}

/// `{"response": <result>}` or `{"failure": "<oslo failure JSON>"}`, the result borrowed.
#[derive(serde::Serialize)]
enum ReplyBody<'a> {
    #[serde(rename = "response")]
    Response(&'a Json),
    #[serde(rename = "failure")]
    Failure(String),
}

/// The reply body JSON text.
pub(crate) fn reply_body(outcome: &std::result::Result<Json, RemoteError>) -> Result<String> {
    let body = match outcome {
        Ok(result) => ReplyBody::Response(result),
        Err(failure) => ReplyBody::Failure(failure.to_failure_json()),
    };
    Ok(pyjson::to_string(&body)?)
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
/// The JSON object of an oslo message body; a body over `max_message_size` bytes is refused
/// before it is copied or decoded.
pub(crate) fn body_json(message: &AmqpMessage, max_message_size: usize) -> Result<Option<JsonMap>> {
    let len = match &message.body {
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.len(),
            Value::Binary(b) => b.len(),
            _ => 0,
        },
        Body::Data(batch) => batch.iter().map(|d| d.0.len()).sum(),
        _ => 0,
    };
    oslo_core::codec::check_message_size(len, max_message_size)?;
    let text: Cow<'_, [u8]> = match &message.body {
        Body::Empty => return Ok(None),
        Body::Value(v) => match &v.0 {
            Value::Null => return Ok(None),
            Value::String(s) => Cow::Borrowed(s.as_bytes()),
            Value::Binary(b) => Cow::Borrowed(&b[..]),
            other => return Err(Error::invalid_message(format!("AMQP value body is not a string: {other:?}"))),
        },
        Body::Data(batch) => Cow::Owned(batch.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Sequence(_) => return Err(Error::invalid_message("AMQP sequence bodies are not oslo messages")),
    };
    // Read as Python's json.loads reads it: NaN, Infinity and big integers included.
    match pyjson::from_slice(&text) {
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
                let text = pyjson::to_vec(&request)?;
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

/// Read a reply (or heartbeat) for the call `msg_id`. The failure is read by core's
/// [`Reply::from_map`], so an unreadable one fails the call as with every other driver.
pub(crate) fn parse_reply(msg_id: String, body: Option<JsonMap>) -> Reply {
    let Some(mut body) = body else {
        return Reply::heartbeat(msg_id);
    };
    let failure = body.remove("failure").unwrap_or(Json::Null);
    let result = if failure.is_null() {
        body.remove("response").unwrap_or(Json::Null)
    } else {
        Json::Null
    };
    let mut reply = JsonMap::new();
    reply.insert("_msg_id".into(), Json::String(msg_id));
    reply.insert("result".into(), result);
    reply.insert("failure".into(), failure);
    reply.insert("ending".into(), Json::Bool(true));
    Reply::from_map(reply).expect("the reply has a _msg_id")
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
        let request = parse_request(body_json(&amqp, 0).unwrap().unwrap()).unwrap();
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
        assert_eq!(ok, r#"{"response": [1, 2]}"#);
        let reply = parse_reply("m".into(), Some(serde_json::from_str(&ok).unwrap()));
        assert_eq!(reply.result, json!([1, 2]));
        assert!(reply.ending);
        let failure = reply_body(&Err(RemoteError::new("ValueError", "builtins", "bad"))).unwrap();
        assert!(failure.starts_with(r#"{"failure": ""#), "{failure}");
        let reply = parse_reply("m".into(), Some(serde_json::from_str(&failure).unwrap()));
        assert_eq!(reply.failure.unwrap().exc_type, "ValueError");
        assert!(parse_reply("m".into(), None).is_heartbeat());
        let hb = build("a", None, None, Some("m"), None, None);
        assert!(body_json(&hb, 0).unwrap().is_none());
        assert_eq!(correlation_id(&hb).as_deref(), Some("m"));
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        let m = build("a", Some("not json".into()), None, None, None, None);
        assert!(matches!(body_json(&m, 0), Err(Error::InvalidMessage { .. })));
        let body = r#"{"k": "0123456789"}"#;
        let big = build("a", Some(body.into()), None, None, None, None);
        assert!(body_json(&big, body.len()).unwrap().is_some());
        let err = body_json(&big, body.len() - 1).unwrap_err();
        assert!(err.to_string().contains("max_message_size"), "{err}");
        assert!(matches!(parse_request(map(json!({"x": 1}))), Err(Error::InvalidMessage { .. })));
    }
}
