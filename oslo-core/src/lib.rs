//! # oslo-core
//!
//! The driver-independent heart of the Rust oslo.messaging: [`Target`], [`TransportUrl`],
//! the oslo wire [`codec`], the [`Driver`] contract, the [`DriverRegistry`] behind
//! [`get_transport`], and the RPC [`RpcClient`] / [`RpcServer`] / [`RpcDispatcher`].
//!
//! Applications normally depend on the `oslo-messaging` facade crate, which re-exports this
//! crate and registers the drivers chosen with Cargo features. Driver authors implement
//! [`Driver`], [`Listener`] and [`IncomingMessage`] and run the conformance suite
//! (`conformance` feature) against their driver.

pub mod clip;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod driver;
pub mod error;
pub mod fault;
pub mod notify;
pub mod pyjson;
pub mod remote;
pub mod reply;
pub mod rpc;
pub mod serializer;
mod serving;
pub mod target;
pub mod transport;
pub mod url;

pub use codec::JsonMap;
pub use driver::{Capabilities, Driver, IncomingMessage, Listener, Retry, SendOptions};
pub use error::{Error, Result};
pub use notify::{
    Notification, NotificationEndpoint, NotificationFilter, NotificationListener, NotificationResult, Notifier, NotifierDriver, Priority,
};
pub use remote::{HandlerError, RemoteError};
pub use rpc::{AccessPolicy, Endpoint, RpcClient, RpcDispatcher, RpcServer, RpcServerBuilder, PING_METHOD};
pub use serializer::{NoOpSerializer, Serializer};
pub use target::{version_is_compatible, Target, TargetUse, Version};
pub use transport::{
    get_transport, DriverFactory, DriverRegistry, Transport, TransportConfig, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_START_TIMEOUT,
    KNOWN_DRIVERS,
};
pub use url::{Secret, TransportHost, TransportUrl};

/// Build a [`JsonMap`] (an oslo context or argument dict) from a `serde_json::json!` object
/// literal. Anything but an object gives an empty map.
///
/// ```
/// let ctxt = oslo_core::context(serde_json::json!({"user_id": "u1"}));
/// assert_eq!(ctxt["user_id"], "u1");
/// ```
pub fn context(value: serde_json::Value) -> JsonMap {
    match value {
        serde_json::Value::Object(map) => map,
        _ => JsonMap::new(),
    }
}
