//! [`RabbitDriver`]: the [`oslo_core::Driver`] implementation.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use oslo_core::codec::{self, CallFields, JsonMap};
use oslo_core::reply::ReplyWaiters;
use oslo_core::{Capabilities, Driver, DriverRegistry, Error, Listener, Result, Retry, SendOptions, Target, TransportConfig, TransportUrl};
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::RabbitConfig;
use crate::connect::Connector;
use crate::hosts::BrokerAddress;
use crate::listener::{Kind, RabbitListener, Replier, ReplyHandler};
use crate::publisher::{publish_direct, DirectOutcome, Outgoing, Publisher, ReturnedReplies};
use crate::subscription::{Consumers, Subscription};
use crate::topology::{self, Topology};
use crate::{DRIVER_NAME, SCHEMES};

/// The RabbitMQ driver (oslo `impl_rabbit.RabbitDriver`), wire-compatible with Python
/// oslo.messaging 18.3.1.
///
/// Creating it does not connect: the send connection opens on the first send, the reply
/// queue (`reply_<uuid4 hex>`, one per driver) on the first call, and each listener opens its
/// own connection. Every connection fails over across the URL's hosts and restores its
/// queues, bindings and consumers after a connection loss.
///
/// ```no_run
/// # async fn demo() -> oslo_core::Result<()> {
/// use std::sync::{Arc, Weak};
/// use driver_rabbit::RabbitDriver;
/// use oslo_core::{Transport, TransportConfig, TransportUrl};
/// let url = TransportUrl::parse("rabbit://guest:guest@127.0.0.1:5672/")?;
/// let config = TransportConfig::default();
/// let driver = RabbitDriver::new(&url, &config)?;
/// let transport = Transport::from_driver(Arc::new(driver), url, config);
/// # let _ = transport; Ok(()) }
/// ```
pub struct RabbitDriver {
    inner: Arc<Inner>,
}

struct Inner {
    url: TransportUrl,
    control_exchange: String,
    /// `TransportConfig::max_message_size`: larger deliveries are dropped before decoding.
    max_message_size: usize,
    /// `TransportConfig::start_timeout`: how long a listener's start may wait for the broker.
    start_timeout: Option<Duration>,
    config: Arc<RabbitConfig>,
    connector: Arc<Connector>,
    publisher: Arc<Publisher>,
    replier: Arc<Replier>,
    waiters: ReplyWaiters,
    reply_queue: OnceCell<ReplyQueue>,
    closed: AtomicBool,
}

struct ReplyQueue {
    name: String,
    subscription: Subscription,
}

impl fmt::Debug for RabbitDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitDriver")
            .field("url", &self.inner.url.to_string())
            .field("control_exchange", &self.inner.control_exchange)
            .field("reply_queue", &self.reply_queue_name())
            .finish()
    }
}

impl RabbitDriver {
    /// A driver for `url`, with `[oslo_messaging_rabbit]` options taken from
    /// `config.driver_options` overridden by the URL's query (oslo's rule).
    ///
    /// Errors: [`Error::Configuration`] for unknown options or bad values. Does not connect.
    pub fn new(url: &TransportUrl, config: &TransportConfig) -> Result<Self> {
        let rabbit = RabbitConfig::from_options(&config.merged_driver_options(url))?;
        Self::with_config(url, config, rabbit)
    }

    /// A driver with an already built [`RabbitConfig`] (the URL query is not applied).
    pub fn with_config(url: &TransportUrl, transport_config: &TransportConfig, rabbit_config: RabbitConfig) -> Result<Self> {
        rabbit_config.validate()?;
        if !SCHEMES.contains(&url.driver()) {
            return Err(Error::InvalidTransportUrl {
                reason: format!("the rabbit driver serves {SCHEMES:?}, not {:?}", url.driver()),
                url: url.to_string(),
            });
        }
        let config = Arc::new(rabbit_config);
        let connector = Arc::new(Connector::new(url, config.clone()));
        let publisher = Arc::new(Publisher::new(connector.clone()));
        let replier = Arc::new(Replier::new(publisher.clone(), config.clone()));
        let reply_handler: Weak<dyn ReturnedReplies> = Arc::downgrade(&replier) as Weak<dyn ReturnedReplies>;
        publisher.returns().set_reply_handler(reply_handler);
        Ok(RabbitDriver {
            inner: Arc::new(Inner {
                url: url.clone(),
                control_exchange: transport_config.control_exchange.clone(),
                max_message_size: transport_config.max_message_size,
                start_timeout: transport_config.start_timeout,
                config,
                connector,
                publisher,
                replier,
                waiters: ReplyWaiters::new(),
                reply_queue: OnceCell::new(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Register a factory for this driver under every name in [`SCHEMES`].
    pub fn register(registry: &DriverRegistry) {
        for scheme in SCHEMES {
            registry.register(scheme, |url, config| {
                Ok(Arc::new(RabbitDriver::new(url, config)?) as Arc<dyn Driver>)
            });
        }
    }

    /// The options in effect.
    pub fn config(&self) -> &RabbitConfig {
        &self.inner.config
    }

    /// The brokers this driver connects to, in URL order.
    pub fn brokers(&self) -> &[BrokerAddress] {
        self.inner.connector.brokers()
    }

    /// The name of this driver's reply queue, once the first call has declared it.
    pub fn reply_queue_name(&self) -> Option<&str> {
        self.inner.reply_queue.get().map(|q| q.name.as_str())
    }

    fn exchange_for(&self, target: &Target) -> String {
        target
            .exchange
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| self.inner.control_exchange.clone())
    }

    /// Declare and consume `topology` (bounded by `start_timeout`), for a listener of `kind`.
    async fn start_listener(&self, topology: Topology, kind: Kind, purpose: &'static str) -> Result<Box<dyn Listener>> {
        let (feeds, feed) = RabbitListener::feed_channel();
        let subscription = Subscription::start(
            self.inner.connector.clone(),
            topology,
            Consumers::Feed(feeds),
            self.start_deadline(),
            Retry::Forever,
            purpose,
        )
        .await?;
        Ok(Box::new(RabbitListener::new(kind, feed, subscription, self.inner.max_message_size)))
    }

    /// When a listener's start gives up waiting for the broker.
    fn start_deadline(&self) -> Option<Instant> {
        self.inner.start_timeout.map(|t| Instant::now() + t)
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::MessageDeliveryFailure {
                message: "the transport was cleaned up".into(),
                retryable: false,
            });
        }
        Ok(())
    }

    /// The reply queue, declared and consumed on first use; connecting for it is retried as
    /// the first caller's `retry` allows (callers bound the wait).
    async fn reply_queue(&self, retry: Retry) -> Result<&ReplyQueue> {
        let inner = &self.inner;
        let queue = inner
            .reply_queue
            .get_or_try_init(|| async {
                let name = topology::new_reply_queue_name();
                let topology = Topology {
                    queues: vec![topology::reply_queue(&inner.config, &name)],
                    consume: vec![name.clone()],
                    // oslo leaves reply queues to expire through x-expires (30 min); nobody can
                    // use ours after cleanup, so it is deleted then (a late reply to it is
                    // handled by the server like any reply to a vanished caller).
                    delete_on_cleanup: vec![name.clone()],
                    // The driver's calls go out on this connection.
                    publish_channel: true,
                    ..Topology::default()
                };
                let handler = Arc::new(ReplyHandler {
                    waiters: inner.waiters.clone(),
                    max_message_size: inner.max_message_size,
                });
                let subscription =
                    Subscription::start(inner.connector.clone(), topology, Consumers::Forward(handler), None, retry, "reply").await?;
                tracing::debug!(reply_queue = %name, "reply queue declared");
                Ok::<_, Error>(ReplyQueue { name, subscription })
            })
            .await?;
        Ok(queue)
    }

    async fn call(&self, target: &Target, topic: &str, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Value> {
        let started = Instant::now();
        let deadline = options.timeout.map(|t| started + t);
        // Time that ran out while the broker could not be reached is a (retryable) connection
        // failure: a timeout is a timeout only once the broker took the request.
        let timed_out = |what: String| {
            let waited = options.timeout.unwrap_or_default();
            self.inner
                .connector
                .unreachable_within(waited)
                .unwrap_or_else(|| Error::timeout(format!("Timed out {what} after {waited:?}.")))
        };
        let reply_queue = match deadline {
            // The deadline cancels the setup from outside.
            Some(deadline) => tokio::time::timeout_at(deadline, self.reply_queue(options.retry))
                .await
                .map_err(|_| timed_out("declaring the reply queue".into()))??,
            None => self.reply_queue(options.retry).await?,
        };
        let reply_q = reply_queue.name.clone();
        let msg_id = codec::new_id();
        let unique_id = codec::new_id();
        let fields = CallFields {
            msg_id: &msg_id,
            reply_q: &reply_q,
            call_monitor_timeout: options.call_monitor_timeout,
        };
        let body = codec::encode_envelope(&codec::encode_request(message, context, Some(&fields), &unique_id))?;
        let exchange = topology::topic_exchange(&self.inner.config, &self.exchange_for(target));
        let routing_key = routing_key(topic, target.server.as_deref());
        // Register before publishing: the reply may arrive before the publish returns, and a
        // returned request may surface on another publisher's confirm.
        let pending = self.inner.waiters.register(msg_id.clone());
        let mut returned = self.inner.publisher.returns().watch_call(&msg_id);
        let out = Outgoing {
            exchange: Some(&exchange),
            queue: None,
            routing_key: &routing_key,
            body: &body,
            expiration: options.timeout.map(|t| t.as_millis().max(1).to_string()),
            // Mandatory so that a call nobody can receive fails at once (MessageUndeliverable).
            mandatory: true,
            isolated: false,
        };
        let published = self.publish_call(&out, &reply_queue.subscription, options.retry);
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, published)
                .await
                .map_err(|_| timed_out(format!("sending message ID {msg_id} (reply queue {reply_q})")))??,
            None => published.await?,
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            reply = pending.wait(remaining, options.call_monitor_timeout, &reply_q) => reply,
            _ = returned.returned() => Err(Error::MessageUndeliverable {
                exchange: exchange.name.clone(),
                routing_key,
            }),
        }
    }
}

impl RabbitDriver {
    /// Publish a call request: on the reply queue's connection when its publish channel is
    /// usable and the send connection has declared the exchange (this saves a hand-off to a
    /// second I/O thread per call), else, or when that attempt is not confirmed, through the
    /// send connection with its declarations and retries. A request sent twice that way carries
    /// the same `_unique_id`, so servers handle it once.
    async fn publish_call(&self, out: &Outgoing<'_>, replies: &Subscription, retry: Retry) -> Result<()> {
        let publisher = &self.inner.publisher;
        let exchange = out.exchange.map_or("", |e| e.name.as_str());
        if let Some(channel) = replies.publish_channel().filter(|_| publisher.has_declared(exchange)) {
            match publish_direct(&channel, out, publisher.returns()).await {
                DirectOutcome::Confirmed => return Ok(()),
                DirectOutcome::Undeliverable => {
                    return Err(Error::MessageUndeliverable {
                        exchange: exchange.to_string(),
                        routing_key: out.routing_key.to_string(),
                    })
                }
                DirectOutcome::Failed(reason) => {
                    tracing::debug!(reason = %reason, "call not sent on the reply connection; using the send connection");
                }
            }
        }
        publisher.publish(out, retry).await
    }
}

fn routing_key(topic: &str, server: Option<&str>) -> String {
    match server.filter(|s| !s.is_empty()) {
        Some(server) => format!("{topic}.{server}"),
        None => topic.to_string(),
    }
}

fn require_topic(target: &Target) -> Result<&str> {
    target
        .topic
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::InvalidTarget {
            reason: "A topic is required to send or notify".into(),
            target: target.to_string(),
        })
}

#[async_trait]
impl Driver for RabbitDriver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn send(&self, target: &Target, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Option<Value>> {
        self.ensure_open()?;
        let topic = require_topic(target)?;
        if options.wait_for_reply {
            if target.fanout {
                return Err(Error::InvalidTarget {
                    reason: "A call cannot be used with fanout".into(),
                    target: target.to_string(),
                });
            }
            return self.call(target, topic, context, message, options).await.map(Some);
        }
        let body = codec::encode_envelope(&codec::encode_request(message, context, None, &codec::new_id()))?;
        let (exchange, routing_key) = if target.fanout {
            (topology::fanout_exchange(&self.inner.config, topic), String::new())
        } else {
            (
                topology::topic_exchange(&self.inner.config, &self.exchange_for(target)),
                routing_key(topic, target.server.as_deref()),
            )
        };
        let out = Outgoing {
            exchange: Some(&exchange),
            queue: None,
            routing_key: &routing_key,
            body: &body,
            expiration: None,
            mandatory: options.at_least_once,
            // A returned at_least_once cast must fail its own send: no one to route it to later.
            // (Fanout casts use a shared channel of their own: see `publisher`.)
            isolated: options.at_least_once,
        };
        self.inner.publisher.publish(&out, options.retry).await?;
        Ok(None)
    }

    async fn send_notification(&self, target: &Target, context: &JsonMap, message: &JsonMap, envelope: bool, retry: Retry) -> Result<()> {
        self.ensure_open()?;
        let routing_key = require_topic(target)?;
        let inner = codec::encode_request(message, context, None, &codec::new_id());
        let body = if envelope {
            codec::encode_envelope(&inner)?
        } else {
            codec::encode_plain(&inner)?
        };
        let exchange = topology::topic_exchange(&self.inner.config, &self.exchange_for(target));
        // The notifier declares and binds `<topic>.<priority>` so notifications are kept until
        // someone consumes them (oslo `_publish_and_creates_default_queue`).
        let queue = topology::notification_queue(&self.inner.config, routing_key);
        let out = Outgoing {
            exchange: Some(&exchange),
            queue: Some(&queue),
            routing_key,
            body: &body,
            expiration: None,
            mandatory: false,
            isolated: false,
        };
        self.inner.publisher.publish(&out, retry).await
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        self.ensure_open()?;
        let topic = require_topic(target)?;
        let server = target
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::InvalidTarget {
                reason: "A server's target must have topic and server names specified".into(),
                target: target.to_string(),
            })?;
        let exchange = self.exchange_for(target);
        let fanout_queue = topology::new_fanout_queue_name(topic);
        let topology = topology::rpc_server(&self.inner.config, &exchange, topic, server, &fanout_queue);
        let kind = Kind::Rpc {
            replier: self.inner.replier.clone(),
        };
        self.start_listener(topology, kind, "rpc listener").await
    }

    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>> {
        self.ensure_open()?;
        let mut bindings = Vec::new();
        for (target, priority) in targets_and_priorities {
            let topic = require_topic(target)?;
            bindings.push((self.exchange_for(target), format!("{topic}.{}", priority.to_lowercase())));
        }
        if bindings.is_empty() {
            return Err(Error::InvalidTarget {
                reason: "no notification targets".into(),
                target: "[]".into(),
            });
        }
        let topology = topology::notification_listener(&self.inner.config, &bindings, pool.filter(|p| !p.is_empty()));
        self.start_listener(topology, Kind::notification(), "notification listener").await
    }

    async fn cleanup(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(reply_queue) = self.inner.reply_queue.get() {
            reply_queue.subscription.cleanup().await;
        }
        self.inner.waiters.clear();
        self.inner.publisher.close().await;
    }
}
