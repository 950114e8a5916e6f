//! oslo's ZeroMQ frame layout (8.1.4 `client/zmq_senders.py`,
//! `server/consumers/zmq_router_consumer.py`) with JSON payloads.
//!
//! * request, DEALER → ROUTER: `[b"", b"1.0", <type>, <message id>, json([context, message])]`
//!   (the ROUTER sees the sender's identity as an extra first frame);
//! * reply, ROUTER → DEALER: `[b"", b"1.0", b"5", <message id>, json([result, failure])]`;
//! * call-monitor heartbeat, ROUTER → DEALER: `[b"", b"1.0", b"6", <message id>]` (oslo's ACK
//!   type, "the server has the message": here it restarts the caller's monitor timer).
//!
//! * flow-control credit, ROUTER → DEALER: `[b"", b"1.0", b"7", <messages>, <bytes>]` (this
//!   driver's own type, not oslo's): the server has taken `<messages>` more requests from this
//!   connection, of `<bytes>` bytes of frames (decimal; see [`Limits::weight`]). Sent only to
//!   DEALERs whose identity says they count credits (see [`client_identity`]), so DEALERs that
//!   do not (older versions of this driver, raw clients) never see one.
//!
//! `message` is the oslo message dict (`method`, `args`, `namespace`, `version`, or a
//! notification's fields) plus `_unique_id` and, for calls with a call-monitor timeout,
//! `_timeout`. `failure` is `null` or oslo's serialized remote exception (a JSON string).

use std::time::Duration;

use bytes::Bytes;
use oslo_core::codec::{seconds_value, JsonMap, MAX_CLIENT_TIMEOUT};
use oslo_core::pyjson;
use oslo_core::{Error, Result};
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;
use zeromq::ZmqMessage;

/// The protocol version frame.
pub const VERSION: &[u8] = b"1.0";

/// oslo's message types (`zmq_names.py`), sent as their decimal digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A request that waits for a reply.
    Call,
    /// A one-way request to one server.
    Cast,
    /// A one-way request sent to every server of a topic.
    CastFanout,
    /// A notification.
    Notify,
    /// A reply to a call.
    Reply,
    /// oslo's acknowledgement; here the call-monitor heartbeat.
    Ack,
    /// Flow-control credit (this driver's own type `7`): requests taken by the server.
    Credit,
}

impl MessageType {
    /// The type frame.
    pub fn frame(self) -> &'static [u8] {
        match self {
            MessageType::Call => b"1",
            MessageType::Cast => b"2",
            MessageType::CastFanout => b"3",
            MessageType::Notify => b"4",
            MessageType::Reply => b"5",
            MessageType::Ack => b"6",
            MessageType::Credit => b"7",
        }
    }

    fn parse(frame: &[u8]) -> Option<Self> {
        Some(match frame {
            b"1" => MessageType::Call,
            b"2" => MessageType::Cast,
            b"3" => MessageType::CastFanout,
            b"4" => MessageType::Notify,
            b"5" => MessageType::Reply,
            b"6" => MessageType::Ack,
            b"7" => MessageType::Credit,
            _ => return None,
        })
    }
}

/// The message dict with the routing fields appended, serialized without copying it.
struct RequestPayload<'a> {
    context: &'a JsonMap,
    message: &'a JsonMap,
    unique_id: &'a str,
    client_timeout: Option<Duration>,
}

struct MessageWithFields<'a>(&'a RequestPayload<'a>);

impl serde::Serialize for MessageWithFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let payload = self.0;
        let extra = 1 + usize::from(payload.client_timeout.is_some());
        let mut map = serializer.serialize_map(Some(payload.message.len() + extra))?;
        for (key, value) in payload.message {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("_unique_id", payload.unique_id)?;
        if let Some(timeout) = payload.client_timeout {
            map.serialize_entry("_timeout", &seconds_value(timeout))?;
        }
        map.end()
    }
}

impl serde::Serialize for RequestPayload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(2))?;
        seq.serialize_element(self.context)?;
        seq.serialize_element(&MessageWithFields(self))?;
        seq.end()
    }
}

/// Encode a request's payload frame.
pub fn encode_request_payload(context: &JsonMap, message: &JsonMap, unique_id: &str, client_timeout: Option<Duration>) -> Result<Bytes> {
    let payload = RequestPayload {
        context,
        message,
        unique_id,
        client_timeout,
    };
    Ok(Bytes::from(serde_json::to_vec(&payload)?))
}

/// The frames of a request, as a DEALER sends them.
pub fn request(kind: MessageType, message_id: &str, payload: Bytes) -> ZmqMessage {
    let mut frames = ZmqMessage::from(Bytes::new());
    frames.push_back(Bytes::from_static(VERSION));
    frames.push_back(Bytes::from_static(kind.frame()));
    frames.push_back(Bytes::copy_from_slice(message_id.as_bytes()));
    frames.push_back(payload);
    frames
}

/// The frames of a reply (or heartbeat when `payload` is `None`), as a ROUTER sends them to
/// the DEALER whose identity is `peer`.
pub fn reply(peer: Bytes, message_id: &Bytes, payload: Option<Bytes>) -> ZmqMessage {
    let mut frames = ZmqMessage::from(peer);
    frames.push_back(Bytes::new());
    frames.push_back(Bytes::from_static(VERSION));
    match payload {
        Some(payload) => {
            frames.push_back(Bytes::from_static(MessageType::Reply.frame()));
            frames.push_back(message_id.clone());
            frames.push_back(payload);
        }
        None => {
            frames.push_back(Bytes::from_static(MessageType::Ack.frame()));
            frames.push_back(message_id.clone());
        }
    }
    frames
}

/// What a client may have in flight on one connection (sent and not yet taken by the
/// server): `messages` requests and `bytes` bytes of request frames; 0 = no limit on that count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Requests (`zmq_hwm`).
    pub messages: usize,
    /// Bytes of request frames (`zmq_hwm_bytes`).
    pub bytes: usize,
}

impl Limits {
    /// Whether anything is limited (then the client counts credits).
    pub fn any(&self) -> bool {
        self.messages > 0 || self.bytes > 0
    }

    /// What a request of `size` bytes counts for in the byte window, on both ends: its size,
    /// capped at the byte limit (a bigger request waits for an empty window and goes alone).
    pub fn weight(&self, size: usize) -> usize {
        match self.bytes {
            0 => size,
            limit => size.min(limit),
        }
    }
}

/// The size of a request as counted for flow control: the bytes of its frames, as the DEALER
/// sends them (the ROUTER's identity frame excluded).
pub fn request_size(frames: &ZmqMessage) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// The frames of a flow-control credit, as a ROUTER sends them to the DEALER whose identity is
/// `peer`: `messages` more requests taken, weighing `bytes` (see [`Limits::weight`]).
pub fn credit(peer: Bytes, messages: usize, bytes: usize) -> ZmqMessage {
    let mut frames = ZmqMessage::from(peer);
    frames.push_back(Bytes::new());
    frames.push_back(Bytes::from_static(VERSION));
    frames.push_back(Bytes::from_static(MessageType::Credit.frame()));
    frames.push_back(Bytes::from(messages.to_string()));
    frames.push_back(Bytes::from(bytes.to_string()));
    frames
}

/// How peers of this driver tell each other, in their ZMTP identity (exchanged in the
/// handshake, invisible to the messages), that they use flow-control credits.
pub const FLOW_CONTROL_MARK: &[u8] = b"oslo-hwm1/";

/// The identity of a DEALER that keeps its requests in flight within `limits` and counts the
/// server's credits: `oslo-hwm1/<messages>/<bytes>/<random>`. It tells the server how much it
/// may take before crediting (a quarter of either limit at the latest).
pub fn client_identity(limits: Limits) -> Bytes {
    let mut identity = FLOW_CONTROL_MARK.to_vec();
    identity.extend_from_slice(format!("{}/{}/{}", limits.messages, limits.bytes, uuid::Uuid::new_v4().simple()).as_bytes());
    Bytes::from(identity)
}

/// The identity of a ROUTER that sends credits: `oslo-hwm1/<random>`.
pub fn server_identity() -> Bytes {
    let mut identity = FLOW_CONTROL_MARK.to_vec();
    identity.extend_from_slice(uuid::Uuid::new_v4().simple().to_string().as_bytes());
    Bytes::from(identity)
}

/// The limits a DEALER announced in its identity, if it counts credits.
pub fn client_limits(identity: &[u8]) -> Option<Limits> {
    let mut parts = identity.strip_prefix(FLOW_CONTROL_MARK)?.split(|b| *b == b'/');
    let mut number = || -> Option<usize> { std::str::from_utf8(parts.next()?).ok()?.parse().ok() };
    let limits = Limits {
        messages: number()?,
        bytes: number()?,
    };
    limits.any().then_some(limits)
}

/// Whether a ROUTER's identity says that it sends credits.
pub fn sends_credits(identity: &[u8]) -> bool {
    identity.starts_with(FLOW_CONTROL_MARK)
}

/// Encode a reply's payload frame: `[result, failure]`.
pub fn encode_reply_payload(outcome: &std::result::Result<Value, oslo_core::RemoteError>) -> Result<Bytes> {
    let (result, failure) = match outcome {
        Ok(value) => (value, None),
        Err(remote) => (&Value::Null, Some(remote.to_failure_json())),
    };
    Ok(Bytes::from(serde_json::to_vec(&(result, failure))?))
}

/// A request as a ROUTER received it.
#[derive(Debug)]
pub struct Request {
    /// The sender's identity (routes the reply).
    pub peer: Bytes,
    /// CALL, CAST, CAST_FANOUT or NOTIFY.
    pub kind: MessageType,
    /// The message id frame (correlates the reply).
    pub message_id: Bytes,
    /// The context dict.
    pub context: JsonMap,
    /// The message dict, routing fields removed.
    pub message: JsonMap,
    /// `_unique_id`.
    pub unique_id: Option<String>,
    /// `_timeout`: the caller's call-monitor timeout.
    pub client_timeout: Option<Duration>,
    /// `_timeout` as sent (null when absent): the endpoint context's `client_timeout`.
    pub raw_timeout: Value,
}

/// Refuse a message whose frames hold more than `limit` bytes (`0`: no limit), before decoding.
pub fn check_size(frames: &ZmqMessage, limit: usize) -> Result<()> {
    oslo_core::codec::check_message_size(frames.iter().map(|frame| frame.len()).sum(), limit)
}

/// Decode what a ROUTER received: `[identity, b"", b"1.0", type, message id, payload]`.
pub fn decode_request(frames: ZmqMessage) -> Result<Request> {
    let [peer, empty, version, kind_frame, message_id, payload]: [Bytes; 6] = frames
        .into_vec()
        .try_into()
        .map_err(|frames: Vec<Bytes>| Error::invalid_message(format!("request has {} frames, expected 6", frames.len())))?;
    if !empty.is_empty() {
        return Err(Error::invalid_message("request lacks the empty delimiter frame"));
    }
    if version.as_ref() != VERSION {
        return Err(Error::invalid_message(format!(
            "unsupported zmq protocol version {:?}",
            String::from_utf8_lossy(&version)
        )));
    }
    let kind = match MessageType::parse(&kind_frame) {
        Some(kind @ (MessageType::Call | MessageType::Cast | MessageType::CastFanout | MessageType::Notify)) => kind,
        _ => {
            return Err(Error::invalid_message(format!(
                "not a request type: {:?}",
                String::from_utf8_lossy(&kind_frame)
            )))
        }
    };
    let (context, mut message): (JsonMap, JsonMap) =
        split_payload(&payload).map_err(|e| Error::invalid_message(format!("payload is not [context, message] JSON: {e}")))?;
    let unique_id = match message.remove("_unique_id") {
        Some(Value::String(id)) => Some(id),
        _ => None,
    };
    let raw_timeout = message.remove("_timeout").unwrap_or(Value::Null);
    // Off the wire: anything absurd (negative, NaN, 1e20) must not panic.
    let client_timeout = raw_timeout.as_f64().filter(|s| *s > 0.0).map(|s| {
        if s >= MAX_CLIENT_TIMEOUT.as_secs_f64() {
            MAX_CLIENT_TIMEOUT
        } else {
            Duration::from_secs_f64(s)
        }
    });
    Ok(Request {
        peer,
        kind,
        message_id,
        context,
        message,
        unique_id,
        client_timeout,
        raw_timeout,
    })
}

/// A two-element JSON list, read as Python's `json.loads` reads it (`NaN`, `Infinity` and
/// integers of any size included: see `oslo_core::pyjson`).
fn pair(bytes: &[u8]) -> std::result::Result<(Value, Value), String> {
    match pyjson::from_slice(bytes).map_err(|e| e.to_string())? {
        Value::Array(items) if items.len() == 2 => {
            let mut items = items.into_iter();
            Ok((items.next().expect("two items"), items.next().expect("two items")))
        }
        _ => Err("not a list of two values".into()),
    }
}

/// A request payload: `[context, message]`, both objects.
fn split_payload(bytes: &[u8]) -> std::result::Result<(JsonMap, JsonMap), String> {
    match pair(bytes)? {
        (Value::Object(context), Value::Object(message)) => Ok((context, message)),
        _ => Err("context and message must be objects".into()),
    }
}

/// A reply as a DEALER received it.
#[derive(Debug)]
pub enum Response {
    /// The final reply to `message_id`.
    Reply(Box<oslo_core::codec::Reply>),
    /// A heartbeat for `message_id`.
    Heartbeat(String),
    /// A flow-control credit: the server took this many more requests, of this weight.
    Credit {
        /// Requests taken.
        messages: usize,
        /// Their weight in bytes ([`Limits::weight`]).
        bytes: usize,
    },
}

/// Decode what a DEALER received: `[b"", b"1.0", b"5", id, payload]`, `[b"", b"1.0", b"6", id]`
/// or `[b"", b"1.0", b"7", messages, bytes]`.
pub fn decode_response(frames: ZmqMessage) -> Result<Response> {
    let frames = frames.into_vec();
    if frames.len() < 4 || !frames[0].is_empty() || frames[1].as_ref() != VERSION {
        return Err(Error::invalid_message("reply does not start with [\"\", \"1.0\"]"));
    }
    if frames.len() == 5 && MessageType::parse(&frames[2]) == Some(MessageType::Credit) {
        let number = |frame: &Bytes| std::str::from_utf8(frame).ok().and_then(|n| n.parse().ok());
        return match (number(&frames[3]), number(&frames[4])) {
            (Some(messages), Some(bytes)) => Ok(Response::Credit { messages, bytes }),
            _ => Err(Error::invalid_message("credit counts are not decimal numbers")),
        };
    }
    let message_id = std::str::from_utf8(&frames[3])
        .map_err(|_| Error::invalid_message("message id is not UTF-8"))?
        .to_string();
    match (MessageType::parse(&frames[2]), frames.len()) {
        (Some(MessageType::Ack), 4) => Ok(Response::Heartbeat(message_id)),
        (Some(MessageType::Reply), 5) => {
            let (result, failure) =
                pair(&frames[4]).map_err(|e| Error::invalid_message(format!("reply payload is not [result, failure] JSON: {e}")))?;
            let mut map = JsonMap::new();
            map.insert("result".into(), result);
            map.insert("failure".into(), failure);
            map.insert("ending".into(), Value::Bool(true));
            map.insert("_msg_id".into(), Value::String(message_id));
            Ok(Response::Reply(Box::new(oslo_core::codec::Reply::from_map(map)?)))
        }
        _ => Err(Error::invalid_message(format!(
            "unexpected reply type {:?} with {} frames",
            String::from_utf8_lossy(&frames[2]),
            frames.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> JsonMap {
        oslo_core::context(value)
    }

    #[test]
    fn request_frames_are_oslos_layout() {
        let payload = encode_request_payload(
            &map(json!({"user_id": "u1"})),
            &map(json!({"method": "echo", "args": {"x": 1}})),
            "uid",
            Some(Duration::from_secs(4)),
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            r#"[{"user_id":"u1"},{"method":"echo","args":{"x":1},"_unique_id":"uid","_timeout":4}]"#
        );
        let frames = request(MessageType::Call, "mid", payload);
        let parts: Vec<Bytes> = frames.clone().into_vec();
        assert_eq!(&parts[0][..], b"");
        assert_eq!(&parts[1][..], b"1.0");
        assert_eq!(&parts[2][..], b"1");
        assert_eq!(&parts[3][..], b"mid");
        // What the ROUTER sees: the identity first.
        let mut routed = frames;
        routed.push_front(Bytes::from_static(b"peer"));
        let decoded = decode_request(routed).unwrap();
        assert_eq!(decoded.kind, MessageType::Call);
        assert_eq!(&decoded.peer[..], b"peer");
        assert_eq!(decoded.message, map(json!({"method": "echo", "args": {"x": 1}})));
        assert_eq!(decoded.context["user_id"], "u1");
        assert_eq!(decoded.unique_id.as_deref(), Some("uid"));
        assert_eq!(decoded.client_timeout, Some(Duration::from_secs(4)));
    }

    fn strip_peer(frames: ZmqMessage) -> (Bytes, ZmqMessage) {
        let mut frames = frames.into_vecdeque();
        let peer = frames.pop_front().unwrap();
        (peer, ZmqMessage::try_from(frames).unwrap())
    }

    #[test]
    fn replies_and_heartbeats_round_trip() {
        let id = Bytes::from_static(b"mid");
        let payload = encode_reply_payload(&Ok(json!({"a": 1}))).unwrap();
        assert_eq!(&payload[..], br#"[{"a":1},null]"#);
        let (peer, frames) = strip_peer(reply(Bytes::from_static(b"peer"), &id, Some(payload)));
        assert_eq!(&peer[..], b"peer");
        match decode_response(frames).unwrap() {
            Response::Reply(reply) => {
                assert_eq!(reply.msg_id, "mid");
                assert_eq!(reply.result, json!({"a": 1}));
                assert!(reply.ending && reply.failure.is_none());
            }
            other => panic!("{other:?}"),
        }
        let failure = oslo_core::RemoteError::new("ValueError", "builtins", "boom");
        let (_, frames) = strip_peer(reply(
            Bytes::from_static(b"peer"),
            &id,
            Some(encode_reply_payload(&Err(failure)).unwrap()),
        ));
        match decode_response(frames).unwrap() {
            Response::Reply(reply) => assert_eq!(reply.failure.unwrap().message, "boom"),
            other => panic!("{other:?}"),
        }
        let (_, frames) = strip_peer(reply(Bytes::from_static(b"peer"), &id, None));
        assert!(matches!(decode_response(frames).unwrap(), Response::Heartbeat(id) if id == "mid"));
    }

    #[test]
    fn credits_and_flow_control_identities() {
        let (peer, frames) = strip_peer(credit(Bytes::from_static(b"peer"), 250, 65536));
        assert_eq!(&peer[..], b"peer");
        let parts = frames.clone().into_vec();
        let expected: Vec<&[u8]> = vec![b"", b"1.0", b"7", b"250", b"65536"];
        assert_eq!(parts, expected.into_iter().map(Bytes::from_static).collect::<Vec<_>>());
        assert!(matches!(
            decode_response(frames).unwrap(),
            Response::Credit {
                messages: 250,
                bytes: 65536
            }
        ));
        let bad = ZmqMessage::try_from(
            [&b""[..], b"1.0", b"7", b"-1", b"0"]
                .into_iter()
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(matches!(decode_response(bad), Err(Error::InvalidMessage { .. })));

        let limits = Limits {
            messages: 1000,
            bytes: 4096,
        };
        let client = client_identity(limits);
        assert!(client.starts_with(b"oslo-hwm1/1000/4096/"), "{client:?}");
        assert!(client.len() <= 255, "a ZMTP identity is at most 255 bytes");
        assert_ne!(client, client_identity(limits), "unique per connection");
        assert_eq!(client_limits(&client), Some(limits));
        assert_eq!(
            client_limits(&client_identity(Limits { messages: 0, bytes: 10 })),
            Some(Limits { messages: 0, bytes: 10 })
        );
        assert_eq!(client_limits(&client_identity(Limits::default())), None, "nothing limited");
        assert_eq!(client_limits(uuid::Uuid::new_v4().as_bytes()), None, "the crate's random identity");
        assert_eq!(client_limits(b"oslo-hwm1/x/1/y"), None);
        assert_eq!(client_limits(b"oslo-hwm1/5"), None);
        assert!(sends_credits(&server_identity()));
        assert!(!sends_credits(uuid::Uuid::new_v4().as_bytes()));

        assert_eq!((limits.weight(100), limits.weight(10_000)), (100, 4096), "capped at the byte limit");
        assert_eq!(Limits { messages: 5, bytes: 0 }.weight(10_000), 10_000);
        let request = request(MessageType::Cast, "mid", Bytes::from_static(b"[{},{}]"));
        assert_eq!(
            request_size(&request),
            3 + 1 + 3 + 7,
            "every frame the DEALER sends: \"\", 1.0, 2, mid, payload"
        );
    }

    #[test]
    fn malformed_frames_are_invalid_messages() {
        let bad: Vec<Vec<&[u8]>> = vec![
            vec![b"peer", b"", b"1.0", b"1", b"id"],
            vec![b"peer", b"x", b"1.0", b"1", b"id", b"[{},{}]"],
            vec![b"peer", b"", b"2.0", b"1", b"id", b"[{},{}]"],
            vec![b"peer", b"", b"1.0", b"5", b"id", b"[{},{}]"],
            vec![b"peer", b"", b"1.0", b"1", b"id", b"not json"],
            vec![b"peer", b"", b"1.0", b"1", b"id", b"[1,2]"],
            vec![b"peer", b"", b"1.0", b"1", b"id", br#"[{},{"_timeout":-1e300}]"#],
        ];
        for frames in bad.iter().take(6) {
            let message = ZmqMessage::try_from(frames.iter().map(|f| Bytes::copy_from_slice(f)).collect::<Vec<_>>()).unwrap();
            assert!(matches!(decode_request(message), Err(Error::InvalidMessage { .. })), "{frames:?}");
        }
        let message = ZmqMessage::try_from(bad[6].iter().map(|f| Bytes::copy_from_slice(f)).collect::<Vec<_>>()).unwrap();
        assert_eq!(decode_request(message).unwrap().client_timeout, None, "absurd _timeout ignored");
    }
}
