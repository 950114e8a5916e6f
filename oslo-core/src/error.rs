//! The one public error type, mapped to oslo.messaging's exceptions.

use std::fmt;

use crate::remote::RemoteError;

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the library reports, mapped to oslo.messaging's exception classes.
///
/// Each variant names the oslo exception it corresponds to. [`Error::is_retryable`] tells
/// whether trying the same operation again may succeed (a broker connection problem) or not
/// (a bad target, a remote exception, a timeout the caller chose).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// oslo `MessagingTimeout`: no reply (or no call-monitor heartbeat) arrived in time.
    #[error("MessagingTimeout: {message}")]
    MessagingTimeout {
        /// Human readable detail, e.g. which reply queue and message id timed out.
        message: String,
    },

    /// oslo `MessageDeliveryFailure`: the message could not be handed to the broker
    /// (retries exhausted, publisher confirm nacked, connection lost mid-publish).
    #[error("MessageDeliveryFailure: {message}")]
    MessageDeliveryFailure {
        /// What went wrong.
        message: String,
        /// Whether a later attempt may succeed (e.g. the broker was unreachable).
        retryable: bool,
    },

    /// oslo `MessageUndeliverable`: the broker had no queue to route the message to
    /// (a mandatory publish was returned), i.e. nobody is listening on the target.
    #[error("MessageUndeliverable: no route for exchange {exchange:?} routing key {routing_key:?}")]
    MessageUndeliverable {
        /// Exchange the message was published to.
        exchange: String,
        /// Routing key that matched no queue.
        routing_key: String,
    },

    /// oslo `InvalidTarget`: the target lacks a field the operation needs.
    #[error("InvalidTarget: {reason} (target: {target})")]
    InvalidTarget {
        /// Why the target is not valid for this operation.
        reason: String,
        /// The offending target, formatted.
        target: String,
    },

    /// oslo `InvalidTransportURL`: the transport URL could not be parsed or is not usable.
    #[error("InvalidTransportURL: {reason} (url: {url})")]
    InvalidTransportUrl {
        /// What is wrong with it.
        reason: String,
        /// The URL with every password redacted.
        url: String,
    },

    /// oslo `DriverLoadFailure`: no driver is compiled in for the URL's scheme, or the driver
    /// refused its configuration.
    #[error("DriverLoadFailure: {}", driver_load_message(.driver, .reason, .available, .hint))]
    DriverLoadFailure {
        /// The driver name taken from the URL scheme (`rabbit` for `rabbit://`, `zmq` for `zmq+redis://`).
        driver: String,
        /// Why it could not be loaded.
        reason: String,
        /// The driver names compiled into this binary.
        available: Vec<String>,
        /// How to get the missing driver, e.g. "enable the `zmq` feature of the `oslo-messaging` crate".
        hint: Option<String>,
    },

    /// oslo `RemoteError` (or a rebuilt remote exception): the server's endpoint failed.
    #[error("RemoteError: {0}")]
    Remote(Box<RemoteError>),

    /// oslo `NoSuchMethod`: no endpoint exposes the requested method
    /// (raised by the dispatcher; arrives at a client with the class name kept).
    #[error("NoSuchMethod: Endpoint does not support RPC method {method}")]
    NoSuchMethod {
        /// The method that was asked for.
        method: String,
    },

    /// oslo `UnsupportedVersion`: no endpoint in the namespace supports the requested version.
    #[error("UnsupportedVersion: Endpoint does not support RPC version {version}. Attempted method: {method}")]
    UnsupportedVersion {
        /// The version the client asked for.
        version: String,
        /// The method that was asked for.
        method: String,
    },

    /// oslo `RPCVersionCapError`: the client tried to send a version above its `version_cap`.
    #[error("RPCVersionCapError: Requested message version, {version} is incompatible. It needs to be equal in major version and less than or equal in minor version as the specified version cap {version_cap}.")]
    RpcVersionCap {
        /// The version of the message.
        version: String,
        /// The client's cap.
        version_cap: String,
    },

    /// oslo `ConfigurationError` / `NoSuchOptError`: an option has a bad value or does not exist.
    #[error("ConfigurationError: {option}: {reason}")]
    Configuration {
        /// The option name, as oslo spells it.
        option: String,
        /// What is wrong.
        reason: String,
    },

    /// A message on the wire could not be decoded (not JSON, wrong envelope version, missing keys).
    #[error("InvalidMessage: {reason}")]
    InvalidMessage {
        /// What is malformed.
        reason: String,
    },

    /// A value could not be serialized to JSON (oslo's fake driver raises on this too).
    #[error("SerializationError: {0}")]
    Serialization(String),

    /// oslo `TransportDriverError` / `MessagingServerError`: a driver-specific failure that
    /// fits no other variant.
    #[error("TransportDriverError ({driver}): {message}")]
    Transport {
        /// Driver name, e.g. `rabbit`.
        driver: &'static str,
        /// What went wrong.
        message: String,
        /// Whether a later attempt may succeed.
        retryable: bool,
    },

    /// The server or listener was used after `stop()`/`cleanup()`.
    #[error("MessagingServerError: {0}")]
    Server(String),
}

fn driver_load_message(driver: &str, reason: &str, available: &[String], hint: &Option<String>) -> String {
    let mut out = format!("driver {driver:?}: {reason}; compiled-in drivers: [{}]", available.join(", "));
    if let Some(hint) = hint {
        out.push_str("; ");
        out.push_str(hint);
    }
    out
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    ///
    /// True for connection-level failures (broker unreachable, publish not confirmed because
    /// the connection dropped) and for `MessageUndeliverable` (a server may come up);
    /// false for bad input, remote exceptions and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::MessageDeliveryFailure { retryable, .. } => *retryable,
            Error::Transport { retryable, .. } => *retryable,
            Error::MessageUndeliverable { .. } => true,
            _ => false,
        }
    }

    /// The oslo.messaging exception class this error corresponds to (e.g. `"MessagingTimeout"`).
    /// For remote errors this is the remote class name.
    pub fn oslo_class(&self) -> &str {
        match self {
            Error::MessagingTimeout { .. } => "MessagingTimeout",
            Error::MessageDeliveryFailure { .. } => "MessageDeliveryFailure",
            Error::MessageUndeliverable { .. } => "MessageUndeliverable",
            Error::InvalidTarget { .. } => "InvalidTarget",
            Error::InvalidTransportUrl { .. } => "InvalidTransportURL",
            Error::DriverLoadFailure { .. } => "DriverLoadFailure",
            Error::Remote(remote) => &remote.exc_type,
            Error::NoSuchMethod { .. } => "NoSuchMethod",
            Error::UnsupportedVersion { .. } => "UnsupportedVersion",
            Error::RpcVersionCap { .. } => "RPCVersionCapError",
            Error::Configuration { .. } => "ConfigurationError",
            Error::InvalidMessage { .. } => "InvalidMessage",
            Error::Serialization(_) => "SerializationError",
            Error::Transport { .. } => "TransportDriverError",
            Error::Server(_) => "MessagingServerError",
        }
    }

    /// The remote error, if this error came back from a server.
    pub fn as_remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(remote) => Some(remote),
            _ => None,
        }
    }

    /// Shorthand for a [`Error::MessagingTimeout`].
    pub fn timeout(message: impl fmt::Display) -> Self {
        Error::MessagingTimeout {
            message: message.to_string(),
        }
    }

    /// Shorthand for an [`Error::InvalidMessage`].
    pub fn invalid_message(reason: impl fmt::Display) -> Self {
        Error::InvalidMessage {
            reason: reason.to_string(),
        }
    }

    /// Shorthand for an [`Error::Transport`].
    pub fn transport(driver: &'static str, message: impl fmt::Display, retryable: bool) -> Self {
        Error::Transport {
            driver,
            message: message.to_string(),
            retryable,
        }
    }

    /// Shorthand for a [`Error::Configuration`].
    pub fn configuration(option: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Configuration {
            option: option.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<RemoteError> for Error {
    fn from(remote: RemoteError) -> Self {
        Error::Remote(Box::new(remote))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Serialization(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_bit_follows_the_variant() {
        assert!(!Error::timeout("x").is_retryable());
        assert!(Error::transport("rabbit", "conn reset", true).is_retryable());
        assert!(!Error::transport("rabbit", "access refused", false).is_retryable());
        assert!(Error::MessageUndeliverable {
            exchange: "openstack".into(),
            routing_key: "t".into()
        }
        .is_retryable());
        assert!(!Error::NoSuchMethod { method: "m".into() }.is_retryable());
    }

    #[test]
    fn driver_load_failure_lists_drivers_and_hint() {
        let err = Error::DriverLoadFailure {
            driver: "zmq".into(),
            reason: "no driver registered for this scheme".into(),
            available: vec!["fake".into(), "rabbit".into()],
            hint: Some("enable the `zmq` feature of the `oslo-messaging` crate".into()),
        };
        let text = err.to_string();
        assert!(text.contains("\"zmq\""), "{text}");
        assert!(text.contains("[fake, rabbit]"), "{text}");
        assert!(text.contains("`zmq` feature"), "{text}");
        assert_eq!(err.oslo_class(), "DriverLoadFailure");
    }
}
