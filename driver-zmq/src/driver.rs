//! [`ZmqDriver`]: oslo's direct mode. Clients look the target up in the matchmaker and send
//! on a DEALER connected to the chosen server's ROUTER.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use oslo_core::codec::{new_id, JsonMap};
use oslo_core::reply::ReplyWaiters;
use oslo_core::{Capabilities, Driver, Error, Listener, Result, Retry, SendOptions, Target, TransportConfig, TransportUrl};
use serde_json::Value;
use tokio::time::Instant;
use zeromq::ZmqMessage;

use crate::client::{Connections, FlowStats, Link};
use crate::config::ZmqConfig;
use crate::frames::{self, MessageType};
use crate::matchmaker::{self, Matchmaker, POOL, ROUTER};
use crate::server::ZmqListener;

/// The ZeroMQ driver (`zmq://`, `zmq+redis://`, `zmq+dummy://`).
pub struct ZmqDriver {
    config: ZmqConfig,
    control_exchange: String,
    matchmaker: Arc<dyn Matchmaker>,
    waiters: ReplyWaiters,
    connections: Connections,
    round_robin: AtomicUsize,
    url: String,
}

impl std::fmt::Debug for ZmqDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqDriver")
            .field("url", &self.url)
            .field("matchmaker", &self.matchmaker)
            .finish()
    }
}

impl ZmqDriver {
    /// Build the driver for `url`; nothing connects until the first send or listen.
    pub fn new(url: &TransportUrl, transport: &TransportConfig) -> Result<Self> {
        let mut config = ZmqConfig::from_url(url, &transport.driver_options)?;
        config.max_message_size = transport.max_message_size;
        let matchmaker = matchmaker::for_config(url, &config)?;
        let waiters = ReplyWaiters::new();
        let ipc = config
            .zmq_use_ipc
            .then(|| (config.rpc_zmq_host.clone(), config.rpc_zmq_ipc_dir.clone()));
        let limits = frames::Limits {
            messages: config.zmq_hwm,
            bytes: config.zmq_hwm_bytes,
        };
        let connections = Connections::new(waiters.clone(), config.zmq_connect_timeout, ipc, limits, config.max_message_size);
        Ok(ZmqDriver {
            config,
            control_exchange: transport.control_exchange.clone(),
            matchmaker,
            waiters,
            connections,
            round_robin: AtomicUsize::new(0),
            url: url.to_string(),
        })
    }

    /// Register the driver under the `zmq` scheme (which covers `zmq+redis` and `zmq+dummy`).
    pub fn register(registry: &oslo_core::DriverRegistry) {
        for scheme in crate::SCHEMES {
            registry.register(scheme, |url, config| Ok(Arc::new(ZmqDriver::new(url, config)?) as Arc<dyn Driver>));
        }
    }

    /// The options in effect.
    pub fn config(&self) -> &ZmqConfig {
        &self.config
    }

    /// The flow-control counters of this driver's connections: requests (and their bytes) in
    /// flight, i.e. sent and not yet taken by their servers; the most ever in flight on one
    /// connection (never above `zmq_hwm` / `zmq_hwm_bytes` when the servers send credits);
    /// and the sends waiting for room.
    pub fn flow_stats(&self) -> FlowStats {
        self.connections.flow_stats()
    }

    /// The topic as keyed in the matchmaker: exchanges other than `control_exchange` qualify it.
    fn keyed_topic(&self, target: &Target, topic: &str) -> String {
        match target.exchange.as_deref() {
            Some(exchange) if !exchange.is_empty() && exchange != self.control_exchange => format!("{exchange}:{topic}"),
            _ => topic.to_string(),
        }
    }

    fn topic_of(target: &Target) -> Result<&str> {
        target
            .topic
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::InvalidTarget {
                reason: "a topic is required".into(),
                target: format!("{target:?}"),
            })
    }

    /// Send `frames` to one of `hosts`, round robin, trying up to `zmq_failover_connections`
    /// more when one cannot be reached. Returns the connection used.
    async fn send_to_one(&self, key: &str, hosts: &[String], frames: &ZmqMessage, deadline: Option<Instant>) -> Result<Arc<Link>> {
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&String> = (0..hosts.len()).map(|i| &hosts[(start + i) % hosts.len()]).collect();
        if order.len() > 1 {
            // Servers that failed to connect recently go last (stable: round robin kept otherwise);
            // cached: one look-up (and lock) per server, not two per comparison.
            order.sort_by_cached_key(|host| self.connections.recently_unreachable(host));
        }
        let mut last_error = None;
        for host in order.into_iter().take(self.config.zmq_failover_connections + 1) {
            match self.send_to(host, frames, deadline).await {
                Ok(link) => return Ok(link),
                Err(err @ Error::MessagingTimeout { .. }) => return Err(err),
                Err(err) => {
                    tracing::warn!(host, error = %err, "server unreachable; trying the next one");
                    self.matchmaker.forget(key);
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::MessageDeliveryFailure {
            message: "no server to send to".into(),
            retryable: true,
        }))
    }

    /// Send `frames` to `host`, reconnecting once if the cached connection turns out dead.
    /// Waits for room under the connection's `zmq_hwm` until `deadline`.
    async fn send_to(&self, host: &str, frames: &ZmqMessage, deadline: Option<Instant>) -> Result<Arc<Link>> {
        let mut attempt = 0;
        loop {
            let link = self.connections.link(host, deadline).await?;
            match link.send(frames.clone(), deadline).await {
                Ok(()) => return Ok(link),
                // The server is there but slow: not a reason to reconnect or fail over.
                Err(err @ Error::MessagingTimeout { .. }) => return Err(err),
                Err(err) if attempt == 0 => {
                    tracing::debug!(host, error = %err, "connection lost; reconnecting");
                    attempt += 1;
                }
                Err(err) => {
                    self.connections.mark_unreachable(host);
                    return Err(err);
                }
            }
        }
    }

    /// Send one copy to each of `hosts` at once (each waiting for room until `deadline`);
    /// returns how many got it, and the first timeout if a copy found no room in time.
    async fn send_to_each(&self, key: &str, hosts: &[String], frames: &ZmqMessage, deadline: Option<Instant>) -> (usize, Option<Error>) {
        let sends = hosts.iter().map(|host| async move {
            let sent = self.send_to(host, frames, deadline).await;
            if let Err(err) = &sent {
                if matches!(err, Error::MessagingTimeout { .. }) {
                    tracing::warn!(host, error = %err, "server too slow; its copy is dropped");
                } else {
                    tracing::warn!(host, error = %err, "server unreachable; its copy is dropped");
                    self.matchmaker.forget(key);
                }
            }
            sent
        });
        let mut delivered = 0;
        let mut timeout = None;
        for sent in futures::future::join_all(sends).await {
            match sent {
                Ok(_) => delivered += 1,
                Err(err @ Error::MessagingTimeout { .. }) => timeout = timeout.or(Some(err)),
                Err(_) => {}
            }
        }
        (delivered, timeout)
    }
}

/// The key of the servers of `topic` named `server`: oslo's Cinder workaround, only the part
/// before '@' names the server (clients and servers must agree on it).
fn server_key(topic: &str, server: &str) -> String {
    let name = server.split('@').next().unwrap_or(server);
    format!("{ROUTER}/{topic}/{name}")
}

#[async_trait]
impl Driver for ZmqDriver {
    fn name(&self) -> &'static str {
        crate::DRIVER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::all();
        capabilities.requeue = false;
        capabilities.store_and_forward = false;
        capabilities.durable = false;
        capabilities
    }

    async fn send(&self, target: &Target, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Option<Value>> {
        let topic = self.keyed_topic(target, Self::topic_of(target)?);
        let kind = if target.fanout {
            MessageType::CastFanout
        } else if options.wait_for_reply {
            MessageType::Call
        } else {
            MessageType::Cast
        };
        let key = match target.server.as_deref().filter(|s| !s.is_empty() && !target.fanout) {
            Some(server) => server_key(&topic, server),
            None => format!("{ROUTER}/{topic}"),
        };
        let deadline = options.timeout.map(|timeout| Instant::now() + timeout);
        let hosts = match deadline {
            // The lookup counts against the call's timeout too (Redis may be slow or away).
            Some(deadline) => tokio::time::timeout_at(deadline, self.matchmaker.get_hosts(&key))
                .await
                .map_err(|_| Error::timeout(format!("timed out looking up {key} in the matchmaker")))??,
            None => self.matchmaker.get_hosts(&key).await?,
        };
        if hosts.is_empty() {
            if kind == MessageType::Call || (options.at_least_once && kind == MessageType::Cast) {
                return Err(Error::MessageUndeliverable {
                    exchange: target.exchange.clone().unwrap_or_else(|| self.control_exchange.clone()),
                    routing_key: key,
                });
            }
            tracing::debug!(key, "no server registered; cast dropped");
            return Ok(None);
        }
        let unique_id = new_id();
        let message_id = new_id();
        let call_monitor = options.call_monitor_timeout.filter(|_| kind == MessageType::Call);
        let payload = frames::encode_request_payload(context, message, &unique_id, call_monitor)?;
        let frames = frames::request(kind, &message_id, payload);
        match kind {
            MessageType::CastFanout => {
                // A copy that found no room within the cast's timeout fails it (the others
                // were sent); copies to unreachable servers are dropped, as in oslo.
                match self.send_to_each(&key, &hosts, &frames, deadline).await {
                    (_, Some(timeout)) => Err(timeout),
                    _ => Ok(None),
                }
            }
            MessageType::Call => {
                // Registered before sending, so that no reply can come first.
                let pending = self.waiters.register(message_id);
                let link = self.send_to_one(&key, &hosts, &frames, deadline).await?;
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let wait = pending.wait(remaining, options.call_monitor_timeout, &key);
                tokio::select! {
                    biased;
                    result = wait => result.map(Some),
                    _ = link.lost() => Err(Error::MessageDeliveryFailure {
                        message: format!("connection to the server of {key} lost before its reply"),
                        retryable: true,
                    }),
                }
            }
            _ => {
                self.send_to_one(&key, &hosts, &frames, deadline).await?;
                Ok(None)
            }
        }
    }

    async fn send_notification(&self, target: &Target, context: &JsonMap, message: &JsonMap, _envelope: bool, _retry: Retry) -> Result<()> {
        let topic = self.keyed_topic(target, Self::topic_of(target)?);
        let everyone_key = format!("{ROUTER}/{topic}");
        let everyone = self.matchmaker.get_hosts(&everyone_key).await?;
        let pools = self.matchmaker.get_hosts(&format!("{POOL}/{topic}")).await?;
        let payload = frames::encode_request_payload(context, message, &new_id(), None)?;
        let frames = frames::request(MessageType::Notify, &new_id(), payload);
        let mut expected = everyone.len();
        let (mut delivered, _) = self.send_to_each(&everyone_key, &everyone, &frames, None).await;
        for pool in pools {
            let members_key = format!("{POOL}/{topic}/{pool}");
            let members = self.matchmaker.get_hosts(&members_key).await?;
            if members.is_empty() {
                continue;
            }
            expected += 1;
            match self.send_to_one(&members_key, &members, &frames, None).await {
                Ok(_) => delivered += 1,
                Err(err) => tracing::warn!(pool, error = %err, "no listener of the pool reachable; its copy is dropped"),
            }
        }
        if expected > 0 && delivered == 0 {
            return Err(Error::MessageDeliveryFailure {
                message: format!("no listener of {topic} could be reached"),
                retryable: true,
            });
        }
        if expected == 0 {
            tracing::debug!(topic, "no listener registered; notification dropped (no store-and-forward)");
        }
        Ok(())
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        let topic = self.keyed_topic(target, Self::topic_of(target)?);
        let mut keys = vec![format!("{ROUTER}/{topic}")];
        if let Some(server) = target.server.as_deref().filter(|s| !s.is_empty()) {
            keys.push(server_key(&topic, server));
        }
        Ok(Box::new(
            ZmqListener::start(&self.config, self.matchmaker.clone(), keys, Vec::new()).await?,
        ))
    }

    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>> {
        let mut keys = Vec::new();
        let mut pools = Vec::new();
        for (target, priority) in targets_and_priorities {
            let topic = self.keyed_topic(target, &format!("{}.{priority}", Self::topic_of(target)?));
            match pool {
                None => keys.push(format!("{ROUTER}/{topic}")),
                Some(pool) => {
                    keys.push(format!("{POOL}/{topic}/{pool}"));
                    pools.push((format!("{POOL}/{topic}"), pool.to_string()));
                }
            }
        }
        Ok(Box::new(
            ZmqListener::start(&self.config, self.matchmaker.clone(), keys, pools).await?,
        ))
    }

    async fn cleanup(&self) {
        self.connections.close_all();
        self.waiters.clear();
    }
}
