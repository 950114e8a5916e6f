//! The oslo wire codec shared by every driver: envelope 2.0, RPC requests with flattened
//! `_context_*` keys, replies with `result` / `failure` / `ending`.
//!
//! Output is byte-identical to oslo.messaging 18.3.1 for the same input and ids (Python
//! `json.dumps` style, see [`crate::pyjson`]); input is anything Python's `json.loads` reads,
//! including the bare `NaN` / `Infinity` / `-Infinity` that `json.dumps` writes for non-finite
//! floats, and integers of any size come back digit for digit.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::pyjson;
use crate::remote::RemoteError;

/// A JSON object: oslo's `dict`.
pub type JsonMap = Map<String, Value>;

/// The envelope version this codec writes and accepts (major 2, minor 0).
pub const ENVELOPE_VERSION: &str = "2.0";
/// Envelope key holding the version.
pub const VERSION_KEY: &str = "oslo.version";
/// Envelope key holding the inner message as a JSON string.
pub const MESSAGE_KEY: &str = "oslo.message";
/// The longest call-monitor timeout taken from a request (a day); larger values are clamped.
pub const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Prefix of flattened context keys.
pub const CONTEXT_PREFIX: &str = "_context_";

/// A new message id / unique id: a uuid4 as 32 lowercase hex digits (Python `uuid4().hex`).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An RPC request as the client builds it (oslo `_make_message`), before routing keys are added.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RpcMessage {
    /// Endpoint method name.
    pub method: String,
    /// Keyword arguments.
    pub args: JsonMap,
    /// Namespace, sent only when set.
    pub namespace: Option<String>,
    /// Version, sent only when set.
    pub version: Option<String>,
}

impl RpcMessage {
    /// The message as oslo's dict: `method`, `args`, then `namespace` / `version` when set.
    pub fn to_map(&self) -> JsonMap {
        let mut map = JsonMap::new();
        map.insert("method".into(), Value::String(self.method.clone()));
        map.insert("args".into(), Value::Object(self.args.clone()));
        if let Some(ns) = &self.namespace {
            map.insert("namespace".into(), Value::String(ns.clone()));
        }
        if let Some(v) = &self.version {
            map.insert("version".into(), Value::String(v.clone()));
        }
        map
    }
}

/// Routing fields a call adds to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFields<'a> {
    /// `_msg_id`: correlates the reply.
    pub msg_id: &'a str,
    /// `_reply_q`: where the server sends the reply.
    pub reply_q: &'a str,
    /// `_timeout`: the client's call-monitor timeout (not the call timeout).
    pub call_monitor_timeout: Option<Duration>,
}

/// Seconds as oslo writes them: an integer when whole, else a float.
pub fn seconds_value(duration: Duration) -> Value {
    if duration.subsec_nanos() == 0 {
        Value::from(duration.as_secs())
    } else {
        Value::from(duration.as_secs_f64())
    }
}

/// Build the inner request dict in Python's key order:
/// `method, args, [namespace], [version], [_msg_id, _reply_q, _timeout], _unique_id, _context_*`.
pub fn encode_request(message: &JsonMap, context: &JsonMap, call: Option<&CallFields<'_>>, unique_id: &str) -> JsonMap {
    let mut map = message.clone();
    if let Some(call) = call {
        map.insert("_msg_id".into(), Value::String(call.msg_id.to_string()));
        map.insert("_reply_q".into(), Value::String(call.reply_q.to_string()));
        map.insert("_timeout".into(), call.call_monitor_timeout.map_or(Value::Null, seconds_value));
    }
    map.insert("_unique_id".into(), Value::String(unique_id.to_string()));
    flatten_context(&mut map, context);
    map
}

/// Encode a request (or notification) body straight from its parts, without building the
/// flattened dict first: the same bytes as `encode_envelope(&encode_request(..))` (or
/// `encode_plain` when `envelope` is false), with no copy of the arguments.
pub fn encode_request_body(
    message: &JsonMap,
    context: &JsonMap,
    call: Option<&CallFields<'_>>,
    unique_id: &str,
    envelope: bool,
) -> Result<Vec<u8>> {
    let view = RequestView {
        message,
        context,
        call,
        unique_id,
    };
    if !envelope {
        return Ok(pyjson::to_vec(&view)?);
    }
    let inner_text = pyjson::to_string(&view)?;
    Ok(pyjson::to_vec(&Envelope { message: &inner_text })?)
}

/// The flattened request dict, serialized in Python's key order without being built.
struct RequestView<'a> {
    message: &'a JsonMap,
    context: &'a JsonMap,
    call: Option<&'a CallFields<'a>>,
    unique_id: &'a str,
}

impl serde::Serialize for RequestView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let extra = if self.call.is_some() { 4 } else { 1 };
        let mut map = serializer.serialize_map(Some(self.message.len() + extra + self.context.len()))?;
        for (key, value) in self.message {
            map.serialize_entry(key, value)?;
        }
        if let Some(call) = self.call {
            map.serialize_entry("_msg_id", call.msg_id)?;
            map.serialize_entry("_reply_q", call.reply_q)?;
            map.serialize_entry("_timeout", &call.call_monitor_timeout.map_or(Value::Null, seconds_value))?;
        }
        map.serialize_entry("_unique_id", self.unique_id)?;
        let mut key = String::with_capacity(32);
        for (name, value) in self.context {
            key.clear();
            key.push_str(CONTEXT_PREFIX);
            key.push_str(name);
            map.serialize_entry(&key, value)?;
        }
        map.end()
    }
}

/// `{"oslo.version": "2.0", "oslo.message": <inner>}`.
struct Envelope<'a> {
    message: &'a str,
}

impl serde::Serialize for Envelope<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(VERSION_KEY, ENVELOPE_VERSION)?;
        map.serialize_entry(MESSAGE_KEY, self.message)?;
        map.end()
    }
}

/// Append `_context_<key>` entries (oslo `pack_context`).
pub fn flatten_context(map: &mut JsonMap, context: &JsonMap) {
    for (key, value) in context {
        map.insert(format!("{CONTEXT_PREFIX}{key}"), value.clone());
    }
}

/// Wrap an inner message in envelope 2.0 and encode it: `{"oslo.version": "2.0", "oslo.message": "<json>"}`.
pub fn encode_envelope(inner: &JsonMap) -> Result<Vec<u8>> {
    let inner_text = pyjson::to_string(inner)?;
    Ok(pyjson::to_vec(&Envelope { message: &inner_text })?)
}

/// Encode a dict without envelope (oslo's v1 `messaging` notification driver).
pub fn encode_plain(inner: &JsonMap) -> Result<Vec<u8>> {
    Ok(pyjson::to_vec(inner)?)
}

/// Refuse a body of `len` bytes when it is larger than `limit` (`0`: no limit), before
/// anything decodes it ([`crate::TransportConfig::max_message_size`]).
///
/// ```
/// use oslo_core::codec::check_message_size;
/// assert!(check_message_size(10, 10).is_ok());
/// assert!(check_message_size(10, 0).is_ok());
/// let err = check_message_size(11, 10).unwrap_err();
/// assert_eq!(err.to_string().contains("11 bytes"), true);
/// ```
pub fn check_message_size(len: usize, limit: usize) -> Result<()> {
    if limit != 0 && len > limit {
        return Err(Error::invalid_message(format!(
            "a message of {len} bytes is larger than max_message_size ({limit} bytes)"
        )));
    }
    Ok(())
}

/// Decode a body (oslo `deserialize_msg`): an enveloped message is unwrapped after checking
/// its version; a dict without both envelope keys is returned as is (a "1.0" message).
///
/// Both levels are read as `jsonutils.loads` reads them ([`pyjson::from_slice`]): oslo's
/// `_drivers/common.py::deserialize_msg` loads the envelope, then `oslo.message`, each with
/// `json.loads`, so `NaN` and `Infinity` may appear in either.
pub fn decode_body(body: &[u8]) -> Result<JsonMap> {
    let value: Value = pyjson::from_slice(body).map_err(|e| Error::invalid_message(format!("body is not JSON: {e}")))?;
    let Value::Object(mut outer) = value else {
        return Err(Error::invalid_message("body is not a JSON object"));
    };
    if !(outer.contains_key(VERSION_KEY) && outer.contains_key(MESSAGE_KEY)) {
        return Ok(outer);
    }
    let version = outer.get(VERSION_KEY).and_then(Value::as_str).unwrap_or_default();
    if !crate::target::version_is_compatible(ENVELOPE_VERSION, version) {
        return Err(Error::invalid_message(format!("unsupported envelope version {version:?}")));
    }
    let Some(Value::String(inner)) = outer.remove(MESSAGE_KEY) else {
        return Err(Error::invalid_message("oslo.message is not a string"));
    };
    match pyjson::from_str(&inner) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::invalid_message("oslo.message is not a JSON object")),
        Err(e) => Err(Error::invalid_message(format!("oslo.message is not JSON: {e}"))),
    }
}

/// A request or notification as a server sees it, after oslo's `unpack_context`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IncomingRequest {
    /// The message proper (`method`, `args`, `namespace`, `version`; or a notification's fields).
    pub message: JsonMap,
    /// The context, with the `_context_` prefix stripped.
    pub context: JsonMap,
    /// `_msg_id` (calls only).
    pub msg_id: Option<String>,
    /// `_reply_q` (calls only).
    pub reply_q: Option<String>,
    /// `_timeout`: the client's call-monitor timeout.
    pub client_timeout: Option<Duration>,
    /// `_timeout` exactly as sent (null when absent), which oslo hands endpoints as the
    /// context's `client_timeout` (see [`endpoint_context`]).
    pub raw_timeout: Value,
    /// `_unique_id`, for duplicate detection.
    pub unique_id: Option<String>,
}

/// Split a decoded dict into message, context and routing fields.
pub fn decode_request(map: JsonMap) -> IncomingRequest {
    let mut request = IncomingRequest::default();
    for (key, value) in map {
        if let Some(ctx_key) = key.strip_prefix(CONTEXT_PREFIX) {
            request.context.insert(ctx_key.to_string(), value);
            continue;
        }
        match key.as_str() {
            "_msg_id" => request.msg_id = value.as_str().map(str::to_string),
            "_reply_q" => request.reply_q = value.as_str().map(str::to_string),
            "_unique_id" => request.unique_id = value.as_str().map(str::to_string),
            "_timeout" => {
                // Off the wire: anything absurd (negative, NaN, 1e20) must not panic.
                request.client_timeout = value.as_f64().filter(|s| *s > 0.0).map(|s| {
                    if s >= MAX_CLIENT_TIMEOUT.as_secs_f64() {
                        MAX_CLIENT_TIMEOUT
                    } else {
                        Duration::from_secs_f64(s)
                    }
                });
                request.raw_timeout = value;
            }
            _ => {
                request.message.insert(key, value);
            }
        }
    }
    request
}

/// The context an RPC endpoint is called with, as oslo's rabbit driver builds it
/// (`_drivers/amqp.py::unpack_context` and `RpcContext.__init__`, then
/// `amqpdriver.py::AMQPListener.__call__` passes `ctxt.to_dict()` to the dispatcher): the
/// request's `_context_*` keys, plus `client_timeout` set to the request's `_timeout` as sent
/// (`msg.pop('_timeout', None)`: null for casts and for calls without a call-monitor timeout),
/// minus `msg_id` and `reply_q` (`unpack_context` sets them from `_msg_id` / `_reply_q`, over any
/// context keys of those names, and `RpcContext` pops them). A `client_timeout` context key
/// keeps its place and takes the `_timeout` value, as the Python dict assignment does.
pub fn endpoint_context(context: &JsonMap, raw_timeout: Value) -> JsonMap {
    let mut context = context.clone();
    // `shift_remove` keeps the other keys in order (Python dicts keep insertion order).
    context.shift_remove("msg_id");
    context.shift_remove("reply_q");
    context.insert("client_timeout".into(), raw_timeout);
    context
}

/// An RPC reply (or call-monitor heartbeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The endpoint's return value (null for failures and heartbeats).
    pub result: Value,
    /// The remote failure, if the endpoint failed.
    pub failure: Option<RemoteError>,
    /// `true` on the final reply; `false` on heartbeats.
    pub ending: bool,
    /// The request's `_msg_id`.
    pub msg_id: String,
    /// A fresh unique id.
    pub unique_id: Option<String>,
}

impl Reply {
    /// The final reply for a call's outcome.
    pub fn final_reply(msg_id: impl Into<String>, outcome: std::result::Result<Value, RemoteError>) -> Self {
        let (result, failure) = match outcome {
            Ok(value) => (value, None),
            Err(remote) => (Value::Null, Some(remote)),
        };
        Reply {
            result,
            failure,
            ending: true,
            msg_id: msg_id.into(),
            unique_id: Some(new_id()),
        }
    }

    /// A call-monitor heartbeat: `result: null, failure: null, ending: false`.
    pub fn heartbeat(msg_id: impl Into<String>) -> Self {
        Reply {
            result: Value::Null,
            failure: None,
            ending: false,
            msg_id: msg_id.into(),
            unique_id: Some(new_id()),
        }
    }

    /// Whether this is a heartbeat rather than an answer.
    pub fn is_heartbeat(&self) -> bool {
        !self.ending && self.result.is_null() && self.failure.is_none()
    }

    /// The inner dict in Python's key order: `result, failure, ending, _msg_id, _unique_id`.
    pub fn to_map(&self) -> JsonMap {
        let mut map = JsonMap::new();
        map.insert("result".into(), self.result.clone());
        map.insert(
            "failure".into(),
            self.failure.as_ref().map_or(Value::Null, |f| Value::String(f.to_failure_json())),
        );
        map.insert("ending".into(), Value::Bool(self.ending));
        map.insert("_msg_id".into(), Value::String(self.msg_id.clone()));
        if let Some(unique_id) = &self.unique_id {
            map.insert("_unique_id".into(), Value::String(unique_id.clone()));
        }
        map
    }

    /// The enveloped wire body: the same bytes as `encode_envelope(&self.to_map())`, without
    /// copying the result.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let inner_text = pyjson::to_string(self)?;
        Ok(pyjson::to_vec(&Envelope { message: &inner_text })?)
    }

    /// Read a decoded reply dict; `_msg_id` is required, `ending` defaults to false.
    pub fn from_map(mut map: JsonMap) -> Result<Self> {
        let msg_id = match map.remove("_msg_id") {
            Some(Value::String(id)) => id,
            _ => return Err(Error::invalid_message("reply without _msg_id")),
        };
        // Once the caller is known, a failure that cannot be read still fails its call at once
        // (as an `InvalidRemoteFailure` remote error) instead of leaving it to time out.
        let unreadable = |detail: String| {
            RemoteError::new(
                "InvalidRemoteFailure",
                "oslo_messaging",
                format!("unreadable failure in reply: {detail}"),
            )
        };
        let failure = match map.remove("failure") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(RemoteError::from_failure_json(&text).unwrap_or_else(|_| unreadable(text))),
            // Tolerate a failure sent as an object rather than a JSON string.
            Some(object @ Value::Object(_)) => {
                Some(RemoteError::from_value(object.clone()).unwrap_or_else(|_| unreadable(object.to_string())))
            }
            Some(other) => Some(unreadable(other.to_string())),
        };
        Ok(Reply {
            result: map.remove("result").unwrap_or(Value::Null),
            failure,
            ending: map.remove("ending").and_then(|v| v.as_bool()).unwrap_or(false),
            msg_id,
            unique_id: map.remove("_unique_id").and_then(|v| v.as_str().map(str::to_string)),
        })
    }
}

impl serde::Serialize for Reply {
    /// The inner reply dict, in Python's key order.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(if self.unique_id.is_some() { 5 } else { 4 }))?;
        map.serialize_entry("result", &self.result)?;
        map.serialize_entry("failure", &self.failure.as_ref().map(RemoteError::to_failure_json))?;
        map.serialize_entry("ending", &self.ending)?;
        map.serialize_entry("_msg_id", &self.msg_id)?;
        if let Some(unique_id) = &self.unique_id {
            map.serialize_entry("_unique_id", unique_id)?;
        }
        map.end()
    }
}

/// How many recent `_unique_id`s a listener remembers by default.
///
/// oslo's `_MsgIdCache` keeps 16. That is too few after a connection break under load: every
/// request handled but not yet acknowledged comes back, and with no prefetch limit (oslo's
/// default) that can be hundreds, so most were handled twice. A few thousand 32-character ids
/// cost about half a megabyte per listener and catch them.
pub const DEFAULT_DUPLICATE_WINDOW: usize = 4096;

/// Window of recently seen `_unique_id`s (oslo `_MsgIdCache`): redelivered duplicates are
/// detected and dropped. Lookups are hashed, so a large window costs no more per message.
#[derive(Debug)]
pub struct DuplicateFilter {
    order: VecDeque<String>,
    seen: HashSet<String>,
    capacity: usize,
}

impl Default for DuplicateFilter {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_DUPLICATE_WINDOW)
    }
}

impl DuplicateFilter {
    /// A window remembering the last `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        DuplicateFilter {
            order: VecDeque::new(),
            seen: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Record `unique_id`; returns `false` if it was already in the window (a duplicate).
    pub fn check_and_add(&mut self, unique_id: &str) -> bool {
        if self.seen.contains(unique_id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(unique_id.to_string());
        self.seen.insert(unique_id.to_string());
        true
    }

    /// Whether `unique_id` is in the window.
    pub fn contains(&self, unique_id: &str) -> bool {
        self.seen.contains(unique_id)
    }

    /// Forget `unique_id`, so that a redelivery of it is taken again (its ack failed).
    pub fn forget(&mut self, unique_id: &str) {
        if self.seen.remove(unique_id) {
            self.order.retain(|seen| seen != unique_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> JsonMap {
        match value {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn request_roundtrip_keeps_context_and_fields() {
        let message = RpcMessage {
            method: "echo".into(),
            args: map(json!({"x": 1})),
            namespace: Some("ns".into()),
            version: Some("1.2".into()),
        };
        let ctx = map(json!({"user": "u1", "roles": ["admin"]}));
        let call = CallFields {
            msg_id: "m1",
            reply_q: "reply_q1",
            call_monitor_timeout: Some(Duration::from_secs(4)),
        };
        let inner = encode_request(&message.to_map(), &ctx, Some(&call), "u1d");
        let keys: Vec<&str> = inner.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "method",
                "args",
                "namespace",
                "version",
                "_msg_id",
                "_reply_q",
                "_timeout",
                "_unique_id",
                "_context_user",
                "_context_roles"
            ]
        );
        let body = encode_envelope(&inner).unwrap();
        let decoded = decode_request(decode_body(&body).unwrap());
        assert_eq!(decoded.message, message.to_map());
        assert_eq!(decoded.context, ctx);
        assert_eq!(decoded.msg_id.as_deref(), Some("m1"));
        assert_eq!(decoded.reply_q.as_deref(), Some("reply_q1"));
        assert_eq!(decoded.client_timeout, Some(Duration::from_secs(4)));
        assert_eq!(decoded.unique_id.as_deref(), Some("u1d"));
    }

    #[test]
    fn direct_body_encoding_matches_the_dict_path() {
        let message = map(json!({"method": "m", "args": {"big": "x", "ü": [1.5, null]}, "version": "1.1"}));
        let context = map(json!({"user": "u", "roles": ["a"]}));
        let call = CallFields {
            msg_id: "id",
            reply_q: "reply_x",
            call_monitor_timeout: Some(Duration::from_millis(1500)),
        };
        for call in [None, Some(&call)] {
            let dict = encode_request(&message, &context, call, "uid");
            assert_eq!(
                encode_request_body(&message, &context, call, "uid", true).unwrap(),
                encode_envelope(&dict).unwrap()
            );
            assert_eq!(
                encode_request_body(&message, &context, call, "uid", false).unwrap(),
                encode_plain(&dict).unwrap()
            );
        }
    }

    #[test]
    fn body_errors_are_typed() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"oslo.version\": \"3.0\", \"oslo.message\": \"{}\"}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": {}}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"[1]\"}",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(decode_body(bad), Err(Error::InvalidMessage { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A plain dict is a v1 message and accepted.
        assert_eq!(decode_body(br#"{"method": "m"}"#).unwrap(), map(json!({"method": "m"})));
        // 2.x minor versions above 0 are rejected, like oslo's version_is_compatible("2.0", v).
        assert!(decode_body(br#"{"oslo.version": "2.1", "oslo.message": "{}"}"#).is_err());
    }

    #[test]
    fn reply_roundtrip_and_heartbeat() {
        let reply = Reply::final_reply("m", Err(RemoteError::new("ValueError", "builtins", "boom")));
        let back = Reply::from_map(decode_body(&encode_envelope(&reply.to_map()).unwrap()).unwrap()).unwrap();
        assert_eq!(back, reply);
        assert_eq!(reply.encode().unwrap(), encode_envelope(&reply.to_map()).unwrap());
        let ok = Reply::final_reply("m", Ok(json!({"a": [1, "ü"]})));
        assert_eq!(ok.encode().unwrap(), encode_envelope(&ok.to_map()).unwrap());
        assert!(Reply::heartbeat("m").is_heartbeat());
        assert!(!reply.is_heartbeat());
        assert!(Reply::from_map(map(json!({"result": 1}))).is_err());
        // An unreadable failure still fails the call at once.
        for bad in [json!("not json"), json!(42), json!({"no": "class"})] {
            let reply = Reply::from_map(map(json!({"_msg_id": "x", "failure": bad, "ending": true}))).unwrap();
            assert_eq!(reply.failure.unwrap().exc_type, "InvalidRemoteFailure");
        }
        // `ending` defaults to false (pre-Mitaka servers).
        assert!(
            !Reply::from_map(map(json!({"_msg_id": "x", "result": 1, "failure": null})))
                .unwrap()
                .ending
        );
    }

    #[test]
    fn duplicate_window() {
        let mut filter = DuplicateFilter::with_capacity(2);
        assert!(filter.check_and_add("a"));
        assert!(!filter.check_and_add("a"));
        assert!(filter.check_and_add("b"));
        assert!(filter.check_and_add("c"));
        assert!(filter.check_and_add("a"), "a fell out of the window");
        assert!(filter.contains("a"));
        filter.forget("a");
        assert!(!filter.contains("a"));
        assert!(filter.check_and_add("a"), "forgotten ids are taken again");
    }

    #[test]
    fn default_window_catches_a_burst_of_redeliveries() {
        // After a break, every handled-but-unacked request comes back at once.
        let mut filter = DuplicateFilter::default();
        let ids: Vec<String> = (0..DEFAULT_DUPLICATE_WINDOW).map(|i| format!("{i:032x}")).collect();
        assert!(ids.iter().all(|id| filter.check_and_add(id)));
        assert!(ids.iter().all(|id| !filter.check_and_add(id)), "every redelivery is a duplicate");
        assert!(filter.check_and_add("new"));
        assert!(!filter.contains(&ids[0]), "the oldest id left the window");
        assert!(filter.contains(&ids[1]));
    }

    #[test]
    fn absurd_timeouts_do_not_panic() {
        for (value, expected) in [
            (json!(1e20), Some(MAX_CLIENT_TIMEOUT)),
            (json!(-5), None),
            (json!("soon"), None),
            (json!(0), None),
            (json!(2.5), Some(Duration::from_millis(2500))),
            (json!(u64::MAX), Some(MAX_CLIENT_TIMEOUT)),
        ] {
            let decoded = decode_request(map(json!({"method": "m", "_timeout": value})));
            assert_eq!(decoded.client_timeout, expected, "{value}");
        }
    }

    #[test]
    fn floats_survive_a_decode_encode_round_trip_exactly() {
        // Found by fuzzing: without serde_json's `float_roundtrip` this integer decoded to a
        // float whose printed shortest form parsed back one bit off.
        let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": 42222222222222222222222222222222222222222222222222222222222222, \"f\": 0.30000000000000004}"}"#;
        let map = decode_body(body).unwrap();
        assert_eq!(decode_body(&encode_envelope(&map).unwrap()).unwrap(), map);
    }

    #[test]
    fn big_integers_and_non_finite_floats_survive_byte_for_byte() {
        // As Python 18.3.1 writes them (`serialize_msg` = json.dumps twice): echo(2**64+1),
        // echo(-2**63-1) and echo([nan, inf, -inf]), with "NaN" in a string left alone.
        let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\", \"args\": {\"big\": 18446744073709551617, \"neg\": -9223372036854775809, \"f\": [NaN, Infinity, -Infinity], \"s\": \"NaN Infinity\"}, \"_msg_id\": \"m\", \"_reply_q\": \"r\", \"_timeout\": null, \"_unique_id\": \"u\", \"_context_x\": NaN}"}"#;
        let request = decode_request(decode_body(body).unwrap());
        let args = request.message["args"].as_object().unwrap();
        assert_eq!(args["big"].to_string(), "18446744073709551617");
        assert_eq!(args["neg"].to_string(), "-9223372036854775809");
        let floats: Vec<f64> = args["f"].as_array().unwrap().iter().map(|v| pyjson::as_float(v).unwrap()).collect();
        assert!(floats[0].is_nan());
        assert_eq!(floats[1..], [f64::INFINITY, f64::NEG_INFINITY]);
        assert_eq!(args["s"], json!("NaN Infinity"));
        assert!(pyjson::as_float(&request.context["x"]).unwrap().is_nan());
        let call = CallFields {
            msg_id: "m",
            reply_q: "r",
            call_monitor_timeout: None,
        };
        let again = encode_request_body(&request.message, &request.context, Some(&call), "u", true).unwrap();
        assert_eq!(String::from_utf8(again).unwrap(), String::from_utf8(body.to_vec()).unwrap());

        // The reply a Python server sends for echo(nan), and a v1 (unenveloped) body with the
        // tokens in the outer document.
        let reply = br#"{"oslo.version": "2.0", "oslo.message": "{\"result\": NaN, \"failure\": null, \"ending\": true, \"_msg_id\": \"m\", \"_unique_id\": \"u\"}"}"#;
        let decoded = Reply::from_map(decode_body(reply).unwrap()).unwrap();
        assert!(pyjson::as_float(&decoded.result).unwrap().is_nan());
        assert_eq!(decoded.encode().unwrap(), reply.to_vec());
        let plain = br#"{"event_type": "e", "payload": {"v": -Infinity, "n": 340282366920938463463374607431768211457}}"#;
        assert_eq!(encode_plain(&decode_body(plain).unwrap()).unwrap(), plain.to_vec());
    }

    #[test]
    fn a_failure_keeps_non_finite_args() {
        let failure = r#"{"class": "ValueError", "module": "builtins", "message": "nan", "tb": [], "args": [NaN, 18446744073709551617], "kwargs": {"x": Infinity}}"#;
        let remote = RemoteError::from_failure_json(failure).unwrap();
        assert_eq!(remote.exc_type, "ValueError");
        assert_eq!(remote.to_failure_json(), failure);
        let object = pyjson::from_str(failure).unwrap();
        let mut reply = map(json!({"_msg_id": "x", "ending": true}));
        reply.insert("failure".into(), object); // (json! would reject the NaN inside)
        let reply = Reply::from_map(reply).unwrap();
        assert_eq!(reply.failure.unwrap(), remote, "a failure sent as an object reads the same");
    }

    #[test]
    fn endpoint_context_is_unpack_context() {
        // `_timeout` as sent: an integer stays an integer, a float a float, absent is null.
        for (timeout, expected) in [
            (Some(json!(2)), "2"),
            (Some(json!(2.5)), "2.5"),
            (Some(Value::Null), "null"),
            (None, "null"),
        ] {
            let mut wire = map(json!({"method": "m", "_msg_id": "id", "_reply_q": "q", "_context_user": "u"}));
            if let Some(timeout) = timeout {
                wire.insert("_timeout".into(), timeout);
            }
            let request = decode_request(wire);
            let context = endpoint_context(&request.context, request.raw_timeout.clone());
            assert_eq!(
                pyjson::to_string(&context).unwrap(),
                format!(r#"{{"user": "u", "client_timeout": {expected}}}"#)
            );
        }
        // Context keys named like the routing fields are overwritten by them and popped
        // (RpcContext.__init__); a `client_timeout` key keeps its place, as in the Python dict.
        let request = decode_request(map(json!({
            "method": "m", "_timeout": 4, "_context_msg_id": "x", "_context_client_timeout": 9,
            "_context_user": "u", "_context_reply_q": "y", "_context_roles": ["r"]
        })));
        let context = endpoint_context(&request.context, request.raw_timeout.clone());
        assert_eq!(
            pyjson::to_string(&context).unwrap(),
            r#"{"client_timeout": 4, "user": "u", "roles": ["r"]}"#
        );
    }

    #[test]
    fn whole_and_fractional_seconds() {
        assert_eq!(seconds_value(Duration::from_secs(2)), json!(2));
        assert_eq!(seconds_value(Duration::from_millis(2500)), json!(2.5));
    }
}
