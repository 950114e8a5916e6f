//! `RpcServer` (oslo `rpc/server.py`, `server.py`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tracing::Instrument;

use crate::clip::clip;
use crate::codec::{self, DuplicateFilter};
use crate::driver::IncomingMessage;
use crate::error::Result;
use crate::remote::HandlerError;
use crate::rpc::dispatcher::{AccessPolicy, Endpoint, RpcDispatcher, PING_METHOD};
use crate::serializer::{NoOpSerializer, Serializer};
use crate::serving::{ServeOptions, ServerHandle};
use crate::target::{Target, TargetUse};
use crate::transport::Transport;

/// Configures and starts an [`RpcServer`].
#[derive(Debug)]
pub struct RpcServerBuilder {
    transport: Transport,
    target: Target,
    endpoints: Vec<Endpoint>,
    access_policy: AccessPolicy,
    serializer: Arc<dyn Serializer>,
    executor_pool_size: usize,
    ping_enabled: bool,
}

impl RpcServerBuilder {
    /// Add an endpoint (endpoints are tried in the order added).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Which methods clients may call (default: no `_private` methods).
    pub fn access_policy(mut self, policy: AccessPolicy) -> Self {
        self.access_policy = policy;
        self
    }

    /// Serializer for context, arguments and results.
    pub fn serializer(mut self, serializer: Arc<dyn Serializer>) -> Self {
        self.serializer = serializer;
        self
    }

    /// How many requests run at once (oslo `executor_thread_pool_size`, default 64). Further
    /// requests stay with the driver until a slot frees up.
    pub fn executor_pool_size(mut self, size: usize) -> Self {
        self.executor_pool_size = size.max(1);
        self
    }

    /// Answer `oslo_rpc_server_ping` with `"pong"` (oslo `rpc_ping_enabled`).
    pub fn ping_enabled(mut self, enabled: bool) -> Self {
        self.ping_enabled = enabled;
        self
    }

    /// Start listening (oslo `start()`): the listener's queues exist once this returns.
    pub async fn start(self) -> Result<RpcServer> {
        self.target.validate(TargetUse::Listen)?;
        let mut endpoints = self.endpoints;
        if self.ping_enabled {
            endpoints.push(Endpoint::new().method(PING_METHOD, |_ctxt, _args: Value| async { Ok::<_, HandlerError>("pong") }));
        }
        let dispatcher = Arc::new(RpcDispatcher::new(endpoints, self.access_policy, self.serializer));
        let recent = Arc::new(Mutex::new(DuplicateFilter::default()));
        let listener = self
            .transport
            .start_listening("an RPC server", self.transport.driver().listen(&self.target))
            .await?;
        let span = tracing::info_span!(
            "rpc.server",
            topic = self.target.topic.as_deref(),
            server = self.target.server.as_deref()
        );
        let options = ServeOptions {
            pool_size: self.executor_pool_size,
            batch: None,
        };
        let handle = ServerHandle::spawn(
            listener,
            options,
            span,
            Arc::new(move |messages| {
                let dispatcher = dispatcher.clone();
                let recent = recent.clone();
                async move {
                    for message in messages {
                        handle(message, &dispatcher, &recent).await;
                    }
                }
                .boxed()
            }),
        );
        Ok(RpcServer {
            target: self.target,
            handle,
        })
    }
}

/// A running RPC server: takes requests from its listener and dispatches them to endpoints.
///
/// ```
/// # async fn demo(transport: oslo_core::Transport) -> oslo_core::Result<()> {
/// use oslo_core::{Endpoint, HandlerError, RpcServer, Target};
/// let server = RpcServer::builder(transport, Target::new("compute").with_server("host1"))
///     .endpoint(Endpoint::new().method("ping", |_ctxt, _args: serde_json::Value| async {
///         Ok::<_, HandlerError>("pong")
///     }))
///     .start()
///     .await?;
/// // ... later: stop taking requests, finish the ones in flight, release the queues.
/// server.stop().await;
/// server.wait().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping an RpcServer stops it: keep it, and call shutdown() to stop it cleanly"]
pub struct RpcServer {
    target: Target,
    handle: ServerHandle,
}

impl RpcServer {
    /// Start configuring a server for `target` (topic and server required).
    pub fn builder(transport: Transport, target: Target) -> RpcServerBuilder {
        RpcServerBuilder {
            transport,
            target,
            endpoints: Vec::new(),
            access_policy: AccessPolicy::Default,
            serializer: Arc::new(NoOpSerializer),
            executor_pool_size: 64,
            ping_enabled: false,
        }
    }

    /// The target this server listens on.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Stop taking new requests (oslo `stop()`); requests already taken keep running.
    /// Returns once the listener has stopped consuming.
    pub async fn stop(&self) {
        self.handle.stop().await;
    }

    /// Wait until every request taken has finished and been replied to, then release the
    /// listener's resources (oslo `wait()`). Call after [`RpcServer::stop`].
    pub async fn wait(&self) {
        self.handle.wait().await;
    }

    /// [`RpcServer::stop`] then [`RpcServer::wait`].
    pub async fn shutdown(&self) {
        self.stop().await;
        self.wait().await;
    }
}

async fn handle(message: Box<dyn IncomingMessage>, dispatcher: &RpcDispatcher, recent: &Mutex<DuplicateFilter>) {
    // A second delivery of a `_unique_id` already taken is acknowledged and dropped (oslo
    // `_MsgIdCache`), for drivers that report the id instead of filtering themselves.
    let unique_id = message.unique_id().map(str::to_string);
    if let Some(unique_id) = &unique_id {
        if !recent.lock().expect("duplicate window poisoned").check_and_add(unique_id) {
            tracing::info!(unique_id = %clip(unique_id), "ignoring duplicate message");
            if let Err(err) = message.acknowledge().await {
                tracing::debug!(error = %err, "failed to acknowledge a duplicate");
            }
            return;
        }
    }
    // RPC requests are acknowledged before dispatch (at-most-once, as oslo).
    if let Err(err) = message.acknowledge().await {
        tracing::warn!(error = %err, "failed to acknowledge an RPC request; dropping it");
        if let Some(unique_id) = &unique_id {
            // The broker redelivers it: that delivery must run, not be taken for a duplicate.
            recent.lock().expect("duplicate window poisoned").forget(unique_id);
        }
        return;
    }
    let method = message
        .message()
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("None")
        .to_string();
    let heartbeat = start_call_monitor(&*message);
    // The endpoint sees `client_timeout` in its context, as with oslo's rabbit driver.
    let context = codec::endpoint_context(message.context(), message.client_timeout_value());
    let outcome = async {
        let span = tracing::debug_span!("rpc.dispatch", method = %clip(&method));
        dispatcher.dispatch(context, message.message()).instrument(span).await
    };
    let outcome = match heartbeat {
        Some(interval) => run_with_heartbeats(&*message, interval, outcome).await,
        None => outcome.await,
    };
    if let Err(failure) = &outcome {
        if failure.module == "oslo_messaging.rpc.dispatcher" {
            tracing::warn!(method = %clip(&method), error = %clip(&failure.message), "RPC dispatch failed");
        } else {
            tracing::error!(method = %clip(&method), class = %clip(&failure.exc_type), error = %clip(&failure.message), "RPC endpoint raised");
        }
    }
    if message.expects_reply() {
        if let Err(err) = message.reply(outcome).await {
            tracing::error!(method = %clip(&method), error = %clip(&err.to_string()), "failed to send the reply");
        }
    }
}

/// oslo sends heartbeats every `int(client_timeout) / 2` seconds; under one second it sends none.
fn start_call_monitor(message: &dyn IncomingMessage) -> Option<Duration> {
    if !message.expects_reply() {
        return None;
    }
    let timeout = message.client_timeout()?;
    let interval = Duration::from_secs(timeout.as_secs()) / 2;
    if interval < Duration::from_secs(1) {
        tracing::warn!(?timeout, "call monitor timeout too short to heartbeat");
        return None;
    }
    Some(interval)
}

async fn run_with_heartbeats<F, T>(message: &dyn IncomingMessage, interval: Duration, work: F) -> T
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(work);
    // Most handlers finish without waiting on anything: they need no timer.
    if let Some(output) = (&mut work).now_or_never() {
        return output;
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                // Unlike oslo (bug: the watchdog outlives failed dispatches), heartbeats stop
                // with the work, on every path.
                if let Err(err) = message.heartbeat().await {
                    tracing::warn!(error = %err, "heartbeat send failed; no more heartbeats for this call");
                    return work.await;
                }
            }
        }
    }
}
