//! `RpcClient` (oslo `rpc/client.py`).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::codec::JsonMap;
use crate::driver::{Retry, SendOptions};
use crate::error::{Error, Result};
use crate::serializer::{NoOpSerializer, Serializer};
use crate::target::{version_is_compatible, Target, TargetUse, Version};
use crate::transport::Transport;

/// Invokes methods on remote servers: `call` waits for the result, `cast` does not.
///
/// Every setter returns a modified copy, so `client.prepare().server("h1").timeout(..)` is
/// oslo's `client.prepare(server='h1', timeout=..)`; the client itself is cheap to clone.
///
/// ```
/// # async fn demo(transport: oslo_core::Transport) -> oslo_core::Result<()> {
/// use oslo_core::{RpcClient, Target};
/// use serde_json::json;
/// let client = RpcClient::new(transport, Target::new("compute").with_version("1.2"));
/// let ctxt = json!({"request_id": "req-1"}).as_object().unwrap().clone();
/// let sum = client.call(&ctxt, "add", json!({"a": 1, "b": 2})).await?;
/// client.prepare().fanout(true).cast(&ctxt, "refresh", json!({})).await?;
/// # let _ = sum; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RpcClient {
    transport: Transport,
    target: Target,
    timeout: Option<Duration>,
    version_cap: Option<String>,
    retry: Retry,
    call_monitor_timeout: Option<Duration>,
    at_least_once: bool,
    serializer: Arc<dyn Serializer>,
}

impl RpcClient {
    /// A client sending to `target` (its topic is required) over `transport`.
    pub fn new(transport: Transport, target: Target) -> Self {
        RpcClient {
            transport,
            target,
            timeout: None,
            version_cap: None,
            retry: Retry::Forever,
            call_monitor_timeout: None,
            at_least_once: false,
            serializer: Arc::new(NoOpSerializer),
        }
    }

    /// A copy to override settings on (oslo `prepare`).
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// The target messages are sent to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The transport this client sends over.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Send to this exchange instead of the transport's control exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.target.exchange = Some(exchange.into());
        self
    }

    /// Send to this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.target.topic = Some(topic.into());
        self
    }

    /// Address this endpoint namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.target.namespace = Some(namespace.into());
        self
    }

    /// Ask for this interface version (`"major.minor"`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.target.version = Some(version.into());
        self
    }

    /// Send to one server of the topic.
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.target.server = Some(server.into());
        self
    }

    /// Cast to every server of the topic.
    pub fn fanout(mut self, fanout: bool) -> Self {
        self.target.fanout = fanout;
        self
    }

    /// How long `call` waits (default: the transport's `rpc_response_timeout`, 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Refuse to send versions above this cap (`RPCVersionCapError`).
    pub fn version_cap(mut self, cap: impl Into<String>) -> Self {
        self.version_cap = Some(cap.into());
        self
    }

    /// Connection retries per send (default: forever).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Ask the server for heartbeats every half of this; fail a call whose server went
    /// silent this long, well before the overall timeout.
    pub fn call_monitor_timeout(mut self, timeout: Duration) -> Self {
        self.call_monitor_timeout = Some(timeout);
        self
    }

    /// Fail with `MessageUndeliverable` when no server queue takes a cast
    /// (oslo `TransportOptions(at_least_once=True)`).
    pub fn at_least_once(mut self, at_least_once: bool) -> Self {
        self.at_least_once = at_least_once;
        self
    }

    /// Use this serializer for context, arguments and results.
    pub fn serializer(mut self, serializer: Arc<dyn Serializer>) -> Self {
        self.serializer = serializer;
        self
    }

    /// Whether `version` (default: the target's) may be sent under the version cap.
    pub fn can_send_version(&self, version: Option<&str>) -> bool {
        match (&self.version_cap, version.or(self.target.version.as_deref())) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(cap), Some(version)) => version_is_compatible(cap, version),
        }
    }

    /// Invoke `method` and wait for its result.
    ///
    /// Errors: `MessagingTimeout` when no reply comes in time, the remote failure
    /// (`Error::Remote`, `NoSuchMethod`, `UnsupportedVersion`), `InvalidTarget` for a fanout
    /// target, `MessageUndeliverable` when the driver knows nobody listens.
    pub async fn call(&self, context: &JsonMap, method: &str, args: impl Serialize) -> Result<Value> {
        self.target.validate(TargetUse::Call)?;
        let (context, message) = self.build(context, method, args)?;
        let options = SendOptions {
            wait_for_reply: true,
            timeout: Some(self.timeout.unwrap_or(self.transport.config().rpc_response_timeout)),
            call_monitor_timeout: self.call_monitor_timeout,
            retry: self.retry,
            at_least_once: self.at_least_once,
        };
        let span = tracing::debug_span!(
            "rpc.call",
            topic = self.target.topic.as_deref(),
            server = self.target.server.as_deref(),
            method
        );
        let result = self
            .transport
            .driver()
            .send(&self.target, &context, &message, &options)
            .instrument(span)
            .await?
            .unwrap_or(Value::Null);
        self.serializer.deserialize_entity(&context, result)
    }

    /// [`RpcClient::call`] and deserialize the result into `R`.
    ///
    /// `R = Value` or `JsonMap` takes the result as it is; an `f64` reads `NaN` and `Infinity`
    /// (see [`crate::pyjson::from_value`]).
    pub async fn call_as<R: DeserializeOwned + 'static>(&self, context: &JsonMap, method: &str, args: impl Serialize) -> Result<R> {
        let value = self.call(context, method, args).await?;
        crate::pyjson::from_value(value).map_err(|e| Error::Serialization(format!("cannot decode the result of {method}: {e}")))
    }

    /// Invoke `method` without waiting for a result; returns once the driver has handed the
    /// message to the broker (for rabbit: after the publisher confirm).
    pub async fn cast(&self, context: &JsonMap, method: &str, args: impl Serialize) -> Result<()> {
        self.target.validate(TargetUse::Cast)?;
        let (context, message) = self.build(context, method, args)?;
        let options = SendOptions {
            wait_for_reply: false,
            timeout: None,
            call_monitor_timeout: None,
            retry: self.retry,
            at_least_once: self.at_least_once,
        };
        let span = tracing::debug_span!(
            "rpc.cast",
            topic = self.target.topic.as_deref(),
            fanout = self.target.fanout,
            method
        );
        self.transport
            .driver()
            .send(&self.target, &context, &message, &options)
            .instrument(span)
            .await?;
        Ok(())
    }

    fn build(&self, context: &JsonMap, method: &str, args: impl Serialize) -> Result<(JsonMap, JsonMap)> {
        if let Some(version) = &self.target.version {
            Version::parse(version)?;
        }
        if self.version_cap.is_some() && !self.can_send_version(None) {
            return Err(Error::RpcVersionCap {
                version: self.target.version.clone().unwrap_or_else(|| "None".into()),
                version_cap: self.version_cap.clone().unwrap_or_default(),
            });
        }
        // Every number exactly, non-finite floats included (serde_json's to_value makes them null).
        let args = match crate::pyjson::to_value(&args)? {
            Value::Object(map) => map,
            Value::Null => JsonMap::new(),
            other => {
                return Err(Error::Serialization(format!(
                    "RPC arguments must serialize to a JSON object of keyword arguments, got {other}"
                )))
            }
        };
        let mut serialized_args = JsonMap::new();
        for (key, value) in args {
            serialized_args.insert(key, self.serializer.serialize_entity(context, value)?);
        }
        let context = self.serializer.serialize_context(context)?;
        // oslo's `_make_message` dict, built once with the arguments moved in.
        let mut message = JsonMap::with_capacity(4);
        message.insert("method".into(), Value::String(method.to_string()));
        message.insert("args".into(), Value::Object(serialized_args));
        if let Some(namespace) = &self.target.namespace {
            message.insert("namespace".into(), Value::String(namespace.clone()));
        }
        if let Some(version) = &self.target.version {
            message.insert("version".into(), Value::String(version.clone()));
        }
        Ok((context, message))
    }
}
