//! The driver contract every backend implements (oslo `_drivers/base.py::BaseDriver`).
//!
//! The RPC client, server, notifier and listener are written once, in this crate, against
//! [`Driver`]; a driver crate holds only what is specific to its broker. Each "MUST" below is
//! checked by the conformance suite (`oslo_core::conformance`, feature `conformance`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::codec::JsonMap;
use crate::error::Result;
use crate::remote::RemoteError;
use crate::target::Target;

/// How often a send is retried when the broker connection fails (oslo `retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retry {
    /// Retry until it works (oslo `None` / `-1`).
    #[default]
    Forever,
    /// Retry at most this many times; `Limited(0)` means a single attempt.
    Limited(u32),
}

impl Retry {
    /// oslo's integer form: negative means forever.
    pub fn from_oslo(value: i64) -> Self {
        if value < 0 {
            Retry::Forever
        } else {
            Retry::Limited(value.min(u32::MAX as i64) as u32)
        }
    }

    /// Whether attempt number `attempt` (0-based: the first retry is 1) is still allowed.
    pub fn allows(&self, attempt: u32) -> bool {
        match self {
            Retry::Forever => true,
            Retry::Limited(max) => attempt <= *max,
        }
    }
}

/// Options of one [`Driver::send`].
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Wait for the server's reply (a call) instead of returning once sent (a cast).
    pub wait_for_reply: bool,
    /// How long to wait for the reply; also the message's broker TTL for calls.
    pub timeout: Option<Duration>,
    /// Ask the server to heartbeat every half of this; fail early when heartbeats stop.
    pub call_monitor_timeout: Option<Duration>,
    /// Connection retries for the publish.
    pub retry: Retry,
    /// oslo `TransportOptions(at_least_once=True)`: fail with `MessageUndeliverable`
    /// when no queue takes the message (the rabbit `mandatory` flag).
    pub at_least_once: bool,
}

/// What a driver supports, so tests and applications can ask instead of failing at run time
/// (OpenDAL's `Capability`, oslo's `require_features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Fanout casts reach every server of a topic.
    pub fanout: bool,
    /// Messages can be addressed to one server of a topic.
    pub server_targeting: bool,
    /// Notifications can be sent and received.
    pub notifications: bool,
    /// Notification listeners can share work in pools.
    pub notification_pools: bool,
    /// A listener can requeue a message for redelivery.
    pub requeue: bool,
    /// Notifications sent before any listener exists are kept and delivered later.
    pub store_and_forward: bool,
    /// Call-monitor heartbeats reach the caller (`call_monitor_timeout` works).
    pub call_monitor: bool,
    /// A call or `at_least_once` send to a topic nobody listens on fails fast with
    /// `MessageUndeliverable` instead of waiting for the timeout.
    pub detects_no_listener: bool,
    /// Messages survive a broker restart when durable options are set.
    pub durable: bool,
}

impl Capabilities {
    /// Every capability on (for in-memory and broker drivers that support it all).
    pub fn all() -> Self {
        Capabilities {
            fanout: true,
            server_targeting: true,
            notifications: true,
            notification_pools: true,
            requeue: true,
            store_and_forward: true,
            call_monitor: true,
            detects_no_listener: true,
            durable: true,
        }
    }
}

/// A message received by a listener (oslo `IncomingMessage` / `RpcIncomingMessage`).
#[async_trait]
pub trait IncomingMessage: Send + Sync + fmt::Debug {
    /// The message dict: `method`, `args`, `namespace`, `version` for RPC; the notification
    /// fields (`publisher_id`, `event_type`, `priority`, `payload`, `message_id`, `timestamp`)
    /// for notifications.
    fn message(&self) -> &JsonMap;

    /// The request context, with the `_context_` prefix already stripped.
    fn context(&self) -> &JsonMap;

    /// The caller's call-monitor timeout (`_timeout`), if it asked for heartbeats.
    fn client_timeout(&self) -> Option<Duration>;

    /// `_timeout` exactly as the request carried it (null when absent), which the RPC server
    /// hands endpoints as the context's `client_timeout` (oslo's `unpack_context`, see
    /// [`crate::codec::endpoint_context`]). Drivers that keep the decoded request return
    /// [`crate::codec::IncomingRequest::raw_timeout`]; the default rebuilds it from
    /// [`IncomingMessage::client_timeout`] (whole seconds as an integer, as oslo sends them).
    fn client_timeout_value(&self) -> Value {
        self.client_timeout().map_or(Value::Null, crate::codec::seconds_value)
    }

    /// Whether the sender waits for a reply (a call).
    fn expects_reply(&self) -> bool;

    /// The sender's `_unique_id`, when the driver reports it: the RPC server then drops a
    /// second delivery of the same id (a redelivery after a lost acknowledgement, or an
    /// injected duplicate). Drivers that filter duplicates themselves may leave it `None`.
    fn unique_id(&self) -> Option<&str> {
        None
    }

    /// Send the final reply to the caller. MUST be called at most once; does nothing for casts.
    /// MUST NOT fail the server when the caller is gone: the driver logs and drops the reply.
    async fn reply(&self, outcome: std::result::Result<Value, RemoteError>) -> Result<()>;

    /// Tell the caller the call is still being processed (call-monitor heartbeat).
    async fn heartbeat(&self) -> Result<()>;

    /// Acknowledge the message: it MUST NOT be delivered again.
    async fn acknowledge(&self) -> Result<()>;

    /// Give the message back to the broker so that it is delivered again (notifications with
    /// `allow_requeue`). Drivers without requeue support return an error.
    async fn requeue(&self) -> Result<()>;
}

/// A stream of incoming messages for one `listen` / `listen_for_notifications`.
#[async_trait]
pub trait Listener: Send {
    /// The next message; `None` once the listener is stopped and drained.
    ///
    /// MUST be cancel safe (it is polled inside `select!`): dropping the future loses nothing.
    /// Malformed messages MUST be logged and dropped here, never returned and never fatal.
    async fn next(&mut self) -> Option<Box<dyn IncomingMessage>>;

    /// Stop taking new messages from the broker. Messages already returned by
    /// [`Listener::next`] can still be replied to.
    async fn stop(&mut self);

    /// Release what the listener holds (its consumer, its private fanout queue). After a
    /// failover the driver MUST have restored the subscriptions by itself before this.
    async fn cleanup(&mut self);
}

/// A messaging backend (oslo `BaseDriver`).
///
/// # Behaviour every driver MUST have (each is a conformance test)
/// * `send` to a topic delivers to exactly one server listening on it; with `server` set to
///   that server only; with `fanout` to every server once.
/// * `send` with `wait_for_reply` returns the reply's result or the remote failure, and fails
///   with `MessagingTimeout` once `timeout` passes (or `call_monitor_timeout` passes without a
///   heartbeat) — never later, never hanging.
/// * Casts from one sender to one server arrive in the order sent.
/// * A retry MUST NOT duplicate the message for the receiving endpoint.
/// * After a failover the driver restores its subscriptions (`listen`) and reply queue itself.
/// * Payloads round-trip through the oslo codec: what cannot be encoded fails at send time.
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// The driver's name, e.g. `rabbit`.
    fn name(&self) -> &'static str;

    /// What this driver supports.
    fn capabilities(&self) -> Capabilities;

    /// Send an RPC request (`message` = `method`, `args`, optional `namespace` / `version`).
    /// Returns `Some(result)` for calls, `None` for casts.
    async fn send(&self, target: &Target, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Option<Value>>;

    /// Send a notification dict to `target` (whose topic is `<topic>.<priority>`).
    /// `envelope` selects oslo's 2.0 envelope (`messagingv2`) or none (`messaging`).
    async fn send_notification(&self, target: &Target, context: &JsonMap, message: &JsonMap, envelope: bool, retry: Retry) -> Result<()>;

    /// Listen for RPC requests on `target` (topic and server set): the topic queue, the
    /// server's own queue and the fanout queue.
    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>>;

    /// Listen for notifications on each `(target, priority)`; listeners with the same `pool`
    /// share the messages, each pool (and the pool-less listeners) gets every message.
    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>>;

    /// Close connections and release resources (oslo `cleanup`).
    async fn cleanup(&self);
}
