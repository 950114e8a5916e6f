//! The driver: sending (calls, casts, notifications, replies), the client's reply link, and
//! the `Driver` trait implementation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{Outcome, Target as AmqpTarget};
use fe2o3_amqp::Sender;
use oslo_core::clip::clip;
use oslo_core::codec::new_id;
use oslo_core::reply::ReplyWaiters;
use oslo_core::{
    Capabilities, Driver, DriverRegistry, Error, JsonMap, Listener, Result, Retry, SendOptions, Target, TargetUse, TransportConfig,
    TransportUrl,
};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::address::{rabbit_direct_address, rabbit_queue_address, style_for, AddressStyle, Addresser, Peer};
use crate::config::{AddressingMode, Amqp1Config};
use crate::connect::{transport, Broker, Connector, Opened};
use crate::listener::{Amqp1Listener, LinkPlan, LinkSource, LinkSpec, Received, ReceiverSet};
use crate::rabbit_admin::RabbitAdmin;
use crate::{wire, DRIVER_NAME, SCHEMES};

/// The AMQP 1.0 driver (`amqp://`). See the crate documentation for addressing, settlement
/// and what each broker needs.
#[derive(Debug)]
pub struct Amqp1Driver {
    shared: Arc<Shared>,
}

/// State shared by the driver, its listeners and their incoming messages.
pub(crate) struct Shared {
    pub config: Arc<Amqp1Config>,
    pub connector: Arc<Connector>,
    pub admin: RabbitAdmin,
    control_exchange: String,
    /// `TransportConfig::max_message_size`: larger bodies are dropped before decoding.
    pub max_message_size: usize,
    peer: OnceLock<(Peer, Addresser)>,
    last_broker: Mutex<Option<Broker>>,
    sends: SendLinks,
    waiters: ReplyWaiters,
    reply: tokio::sync::Mutex<Option<ReplyLink>>,
    /// RabbitMQ notification queues already declared and bound by this driver.
    notification_queues: Mutex<std::collections::HashSet<String>>,
    /// Set by `cleanup()`: listeners cleaned up later close the 0-9-1 side connection again.
    pub closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp1Driver")
            .field("connector", &self.connector)
            .field("peer", &self.peer.get())
            .finish()
    }
}

/// The client's reply link: its receiver set and the address callers put in `reply_to`.
struct ReplyLink {
    set: ReceiverSet,
    address: String,
    queue: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Amqp1Driver {
    /// Build the driver for `url` with the `[oslo_messaging_amqp]` options in `config`
    /// (merged with the URL's query). Nothing connects until first use.
    pub fn new(url: &TransportUrl, config: &TransportConfig) -> Result<Self> {
        let options = Amqp1Config::from_options(&config.merged_driver_options(url))?;
        Self::with_config(url, config, options)
    }

    /// Build the driver with already parsed options.
    pub fn with_config(url: &TransportUrl, transport: &TransportConfig, config: Amqp1Config) -> Result<Self> {
        if config.trace {
            tracing::info!("trace=true: frame tracing comes from the `fe2o3_amqp` tracing target at TRACE level");
        }
        let config = Arc::new(config);
        let connector = Arc::new(Connector::new(url, config.clone())?);
        // The AMQP 0-9-1 side connection uses the real vhost only when it is not a pseudo vhost.
        let admin_vhost = if config.pseudo_vhost {
            None
        } else {
            connector.vhost().map(str::to_string)
        };
        let shared = Arc::new(Shared {
            admin: RabbitAdmin::new(admin_vhost.as_deref(), config.ssl),
            sends: SendLinks::default(),
            config,
            connector,
            control_exchange: transport.control_exchange.clone(),
            max_message_size: transport.max_message_size,
            peer: OnceLock::new(),
            last_broker: Mutex::new(None),
            waiters: ReplyWaiters::new(),
            reply: tokio::sync::Mutex::new(None),
            closed: false.into(),
            notification_queues: Mutex::default(),
        });
        Ok(Amqp1Driver { shared })
    }

    /// Register this driver in `registry` under every scheme in [`SCHEMES`].
    pub fn register(registry: &DriverRegistry) {
        for scheme in SCHEMES {
            registry.register(
                scheme,
                |url, config| Ok(Arc::new(Amqp1Driver::new(url, config)?) as Arc<dyn Driver>),
            );
        }
    }

    /// The peer kind and address style learned on the first connection (`None` before it).
    pub fn peer(&self) -> Option<(Peer, AddressStyle)> {
        self.shared.peer.get().map(|(peer, a)| (*peer, a.style()))
    }
}

impl Drop for Amqp1Driver {
    fn drop(&mut self) {
        // The reply link's task holds the shared state: stop it so that a transport dropped
        // without `cleanup()` does not keep its connections open (its private queue expires).
        if let Ok(mut reply) = self.shared.reply.try_lock() {
            if let Some(link) = reply.take() {
                link.task.abort();
                drop(link.set);
            }
        }
    }
}

impl Shared {
    /// Record the peer from a fresh connection (first one wins) and return it with its addresser.
    pub fn learn_peer(&self, opened: &Opened) -> (Peer, Addresser) {
        *self.last_broker.lock().expect("broker") = Some(opened.broker.clone());
        let (peer, addresser) = self.peer.get_or_init(|| {
            let peer = Peer::from_product(opened.product.as_deref());
            let style = style_for(self.config.addressing_mode, opened.product.as_deref());
            tracing::info!(product = ?opened.product, ?peer, ?style, "AMQP 1.0 peer");
            (
                peer,
                Addresser::new(style, &self.config, &self.control_exchange, self.connector.vhost()),
            )
        });
        (*peer, addresser.clone())
    }

    /// Declare and bind the default notification queue `name` once (RabbitMQ).
    async fn ensure_notification_queue(&self, name: &str) -> Result<()> {
        if self.notification_queues.lock().expect("queue set").contains(name) {
            return Ok(());
        }
        self.admin.declare_shared_queue(&self.admin_broker(), name, name).await?;
        self.notification_queues.lock().expect("queue set").insert(name.to_string());
        Ok(())
    }

    /// Where the AMQP 0-9-1 housekeeping goes: the broker of the most recent connection, else
    /// the URL's first.
    pub fn admin_broker(&self) -> Broker {
        let last = self.last_broker.lock().expect("broker").clone();
        last.unwrap_or_else(|| self.connector.brokers()[0].clone())
    }

    /// The peer and its addresser, connecting first if no connection was made yet.
    async fn peer(&self, retry: Retry) -> Result<(Peer, &Addresser)> {
        if self.peer.get().is_none() {
            self.sends.ensure_connected(self, retry).await?;
        }
        let (peer, addresser) = self.peer.get().expect("peer learned on connect");
        Ok((*peer, addresser))
    }

    /// The link address a send to `target` uses.
    fn send_address(peer: Peer, addresser: &Addresser, target: &Target) -> String {
        let address = addresser.for_send(target);
        match peer {
            Peer::RabbitMq if target.fanout => rabbit_direct_address(&address),
            Peer::RabbitMq => rabbit_queue_address(&address),
            Peer::Generic => address,
        }
    }

    /// Send a reply (or, with no body, a heartbeat) to `reply_to`.
    pub async fn send_reply(&self, reply_to: &str, msg_id: &str, body: Option<String>) -> Result<()> {
        let message = wire::build(reply_to, body, Some(&new_id()), Some(msg_id), None, None);
        let deadline = Instant::now() + Amqp1Config::secs(self.config.default_reply_timeout);
        let retry = Retry::from_oslo(self.config.default_reply_retry);
        self.sends
            .send(
                self,
                reply_to,
                message,
                self.config.is_pre_settled("rpc-reply"),
                deadline,
                retry,
                false,
            )
            .await
    }

    /// A call-monitor heartbeat: no body, pre-settled, no retry, TTL = the caller's monitor timeout.
    pub async fn send_heartbeat(&self, reply_to: &str, msg_id: &str, ttl: Option<Duration>) -> Result<()> {
        let message = wire::build(reply_to, None, Some(&new_id()), Some(msg_id), None, ttl);
        let deadline = Instant::now() + Amqp1Config::secs(self.config.default_reply_timeout);
        self.sends
            .send(self, reply_to, message, true, deadline, Retry::Limited(0), false)
            .await
    }

    /// Start the reply link if needed; returns the `reply_to` address.
    async fn reply_address(self: &Arc<Self>, retry: Retry) -> Result<String> {
        let mut reply = self.reply.lock().await;
        if let Some(link) = reply.as_ref() {
            if link.queue.is_some() {
                return Ok(link.address.clone());
            }
            // A dynamic source gets a new address from the peer after each reconnect.
            let current = link.set.addresses.borrow().as_ref().and_then(|a| a.first().cloned());
            return Ok(current.unwrap_or_else(|| link.address.clone()));
        }
        let (peer, _) = self.peer(retry).await?;
        let credit = self.config.reply_link_credit;
        let (queue, address, source) = match peer {
            Peer::RabbitMq => {
                let queue = format!("amqp1_reply_{}", new_id());
                (
                    Some(queue.clone()),
                    Some(rabbit_direct_address(&queue)),
                    LinkSource::RabbitPrivate(queue.clone(), queue),
                )
            }
            Peer::Generic => (None, None, LinkSource::Dynamic),
        };
        let plan: LinkPlan = Arc::new(move |_, _| {
            vec![LinkSpec {
                source: source.clone(),
                credit,
                presettled: true,
            }]
        });
        let (sink, mut incoming) = mpsc::channel::<Received>(1024);
        let mut set = ReceiverSet::start(self.clone(), plan, sink, "reply link");
        let attached = set
            .attached()
            .await
            .ok_or_else(|| transport("the reply link could not be attached"))?;
        let address = match address {
            Some(address) => address,
            None => attached.into_iter().next().ok_or_else(|| transport("no reply address"))?,
        };
        let waiters = self.waiters.clone();
        let max_message_size = self.max_message_size;
        let task = tokio::spawn(async move {
            while let Some(received) = incoming.recv().await {
                let Some(msg_id) = wire::correlation_id(&received.message) else {
                    tracing::warn!("dropping a reply without correlation_id");
                    continue;
                };
                match wire::body_json(&received.message, max_message_size) {
                    Ok(body) => {
                        waiters.deliver(wire::parse_reply(msg_id, body));
                    }
                    Err(err) => tracing::error!(msg_id = %clip(&msg_id), error = %clip(&err.to_string()), "dropping a malformed reply"),
                }
            }
        });
        *reply = Some(ReplyLink {
            set,
            address: address.clone(),
            queue,
            task,
        });
        Ok(address)
    }
}

/// Sender links on one connection, one per target address (there is no anonymous relay on
/// RabbitMQ), closed after `default_sender_link_timeout` without use.
#[derive(Default)]
struct SendLinks {
    state: tokio::sync::Mutex<Option<LiveSend>>,
    generation: std::sync::atomic::AtomicU64,
}

struct LiveSend {
    opened: Opened,
    senders: HashMap<String, (Sender, Instant)>,
    generation: u64,
    last_purge: Instant,
}

enum Attempt {
    Done,
    /// Released, or modified without failure: send again after `link_retry_delay`.
    Again,
    /// Connection, session or link failure: reconnect and retry if allowed.
    Broken(String),
}

impl SendLinks {
    async fn ensure_connected(&self, shared: &Shared, retry: Retry) -> Result<()> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(self.connect(shared, retry).await?);
        }
        Ok(())
    }

    async fn connect(&self, shared: &Shared, retry: Retry) -> Result<LiveSend> {
        let opened = shared.connector.connect(retry).await?;
        shared.learn_peer(&opened);
        Ok(LiveSend {
            opened,
            senders: HashMap::new(),
            generation: self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
            last_purge: Instant::now(),
        })
    }

    /// Send `message` to `address`, pre-settled or waiting for `accepted`, reconnecting as
    /// `retry` allows, giving up at `deadline` (`MessagingTimeout` when `timeout_is_messaging`).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        shared: &Shared,
        address: &str,
        message: wire::AmqpMessage,
        settled: bool,
        deadline: Instant,
        retry: Retry,
        timeout_is_messaging: bool,
    ) -> Result<()> {
        let sendable = Sendable::builder().message(message).settled(settled).build();
        let attempts = async {
            let mut failures: u32 = 0;
            loop {
                match self.attempt(shared, address, &sendable, retry).await? {
                    Attempt::Done => return Ok(()),
                    Attempt::Again => {
                        tokio::time::sleep(Amqp1Config::secs(shared.config.link_retry_delay)).await;
                    }
                    Attempt::Broken(reason) => {
                        failures += 1;
                        if !retry.allows(failures) {
                            return Err(Error::MessageDeliveryFailure {
                                message: format!("sending to {address:?} failed: {reason}"),
                                retryable: true,
                            });
                        }
                        tracing::warn!(address, reason, "send failed; reconnecting");
                        tokio::time::sleep(shared.connector.backoff(failures)).await;
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, attempts).await {
            Ok(result) => result,
            Err(_) if timeout_is_messaging => Err(Error::timeout(format!("sending to {address:?} did not complete in time"))),
            Err(_) => Err(Error::MessageDeliveryFailure {
                message: format!("sending to {address:?} did not complete in time"),
                retryable: true,
            }),
        }
    }

    async fn attempt(
        &self,
        shared: &Shared,
        address: &str,
        sendable: &Sendable<fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>>,
        retry: Retry,
    ) -> Result<Attempt> {
        let (outcome, generation) = {
            let mut state = self.state.lock().await;
            if state.as_ref().is_some_and(LiveSend::is_dead) {
                discard(&mut state);
            }
            if state.is_none() {
                *state = Some(self.connect(shared, retry).await?);
            }
            let live = state.as_mut().expect("connected");
            live.purge_idle(Amqp1Config::secs(shared.config.default_sender_link_timeout));
            if !live.senders.contains_key(address) {
                match attach_sender(&mut live.opened, address).await {
                    Ok(sender) => {
                        live.senders.insert(address.to_string(), (sender, Instant::now()));
                    }
                    Err(err) => {
                        // An attach error ends the whole session on RabbitMQ: start afresh.
                        discard(&mut state);
                        return Ok(Attempt::Broken(err.to_string()));
                    }
                }
            }
            let generation = live.generation;
            let (sender, used) = live.senders.get_mut(address).expect("attached");
            *used = Instant::now();
            match sender.send_batchable_ref(sendable).await {
                Ok(outcome) => (outcome, generation),
                Err(err) => {
                    discard(&mut state);
                    return Ok(Attempt::Broken(err.to_string()));
                }
            }
        };
        // Wait for the disposition without holding the lock: sends are windowed. A connection
        // that dies meanwhile does not always fail the pending delivery, so look at it now and then.
        let outcome = {
            tokio::pin!(outcome);
            loop {
                tokio::select! {
                    outcome = &mut outcome => break outcome,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        let mut state = self.state.lock().await;
                        let dead = match state.as_ref() {
                            Some(live) if live.generation == generation => live.is_dead(),
                            _ => true,
                        };
                        if dead {
                            discard_generation(&mut state, generation);
                            return Ok(Attempt::Broken("connection lost while waiting for the disposition".into()));
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(Outcome::Accepted(_)) => Ok(Attempt::Done),
            Ok(Outcome::Released(_)) => Ok(Attempt::Again),
            Ok(Outcome::Modified(m)) if !m.delivery_failed.unwrap_or(false) && !m.undeliverable_here.unwrap_or(false) => Ok(Attempt::Again),
            Ok(Outcome::Modified(_)) => Err(Error::MessageDeliveryFailure {
                message: format!("{address:?} refused the message (modified: delivery failed)"),
                retryable: false,
            }),
            Ok(Outcome::Rejected(r)) => Err(Error::MessageDeliveryFailure {
                message: format!("{address:?} rejected the message: {:?}", r.error),
                retryable: false,
            }),
            #[allow(unreachable_patterns)]
            Ok(other) => Err(Error::MessageDeliveryFailure {
                message: format!("unexpected outcome {other:?}"),
                retryable: false,
            }),
            Err(err) => {
                discard_generation(&mut *self.state.lock().await, generation);
                Ok(Attempt::Broken(err.to_string()))
            }
        }
    }

    async fn close(&self) {
        if let Some(live) = self.state.lock().await.take() {
            for (_, (sender, _)) in live.senders {
                let _ = tokio::time::timeout(Duration::from_secs(2), sender.close()).await;
            }
            live.opened.close().await;
        }
    }
}

/// Forget the send connection and close it in the background: the next attempt reconnects.
fn discard(state: &mut Option<LiveSend>) {
    if let Some(live) = state.take() {
        tokio::spawn(live.opened.close());
    }
}

/// [`discard`], unless the connection was already replaced since `generation` was used.
fn discard_generation(state: &mut Option<LiveSend>, generation: u64) {
    if state.as_ref().is_some_and(|live| live.generation == generation) {
        discard(state);
    }
}

impl LiveSend {
    fn is_dead(&self) -> bool {
        self.opened.connection.is_closed() || self.opened.session.is_ended()
    }

    fn purge_idle(&mut self, idle: Duration) {
        let now = Instant::now();
        if now.duration_since(self.last_purge) < idle / 2 {
            return;
        }
        self.last_purge = now;
        let stale: Vec<String> = self
            .senders
            .iter()
            .filter(|(_, (_, used))| now.duration_since(*used) >= idle)
            .map(|(address, _)| address.clone())
            .collect();
        for address in stale {
            if let Some((sender, _)) = self.senders.remove(&address) {
                tracing::debug!(address, "closing an idle sender link");
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), sender.close()).await;
                });
            }
        }
    }
}

async fn attach_sender(opened: &mut Opened, address: &str) -> Result<Sender> {
    let name = format!("openstack.org/om/sender/[{address}]/{}", uuid::Uuid::new_v4().simple());
    let attach = Sender::builder()
        .name(name)
        .source(fe2o3_amqp::types::messaging::Source::builder().address(address.to_string()).build())
        .target(AmqpTarget::builder().address(address.to_string()).build())
        .sender_settle_mode(SenderSettleMode::Mixed)
        .attach(&mut opened.session);
    tokio::time::timeout(Duration::from_secs(30), attach)
        .await
        .map_err(|_| transport(format!("attaching a sender to {address:?} timed out")))?
        .map_err(|e| transport(format!("attaching a sender to {address:?}: {e}")))
}

#[async_trait]
impl Driver for Amqp1Driver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        // A broker (RabbitMQ, qpidd) keeps notifications until a listener comes; a router
        // (qpid-dispatch-router, reached with routable addresses) drops them.
        let broker = match self.shared.peer.get() {
            Some((Peer::RabbitMq, _)) => true,
            Some((_, addresser)) => addresser.style() == AddressStyle::Legacy,
            None => self.shared.config.addressing_mode != AddressingMode::Routable,
        };
        let mut caps = Capabilities::all();
        // Pools are a RabbitMQ extension here (a queue per pool bound to `amq.direct`).
        caps.notification_pools = broker && !matches!(self.shared.peer.get(), Some((Peer::Generic, _)));
        caps.detects_no_listener = false;
        caps.durable = false;
        caps.store_and_forward = broker;
        caps
    }

    async fn send(&self, target: &Target, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Option<Json>> {
        let usage = if options.wait_for_reply { TargetUse::Call } else { TargetUse::Cast };
        target.validate(usage)?;
        if options.at_least_once && !options.wait_for_reply {
            tracing::debug!("at_least_once: AMQP 1.0 casts cannot detect a missing listener on this broker");
        }
        let body = wire::request_body(
            message,
            context,
            if options.wait_for_reply {
                options.call_monitor_timeout
            } else {
                None
            },
        )?;
        let shared = &self.shared;
        shared.closed.store(false, std::sync::atomic::Ordering::SeqCst);
        let (peer, addresser) = shared.peer(options.retry).await?;
        let address = Shared::send_address(peer, addresser, target);
        if !options.wait_for_reply {
            let deadline = Instant::now() + options.timeout.unwrap_or(Amqp1Config::secs(shared.config.default_send_timeout));
            let message = wire::build(&address, Some(body), Some(&new_id()), None, None, options.timeout);
            let settled = shared.config.is_pre_settled("rpc-cast");
            shared
                .sends
                .send(
                    shared,
                    &address,
                    message,
                    settled,
                    deadline,
                    options.retry,
                    options.timeout.is_some(),
                )
                .await?;
            return Ok(None);
        }
        let started = Instant::now();
        let timeout = options.timeout;
        let reply_to = shared.reply_address(options.retry).await?;
        let msg_id = new_id();
        let pending = shared.waiters.register(msg_id.clone());
        let message = wire::build(&address, Some(body), Some(&msg_id), None, Some(&reply_to), timeout);
        let deadline = started + timeout.unwrap_or(Amqp1Config::secs(shared.config.default_send_timeout));
        let settled = shared.config.is_pre_settled("rpc-call");
        shared
            .sends
            .send(shared, &address, message, settled, deadline, options.retry, timeout.is_some())
            .await?;
        let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
        pending.wait(remaining, options.call_monitor_timeout, &reply_to).await.map(Some)
    }

    async fn send_notification(&self, target: &Target, context: &JsonMap, message: &JsonMap, envelope: bool, retry: Retry) -> Result<()> {
        target.validate(TargetUse::Notify)?;
        let body = wire::notification_body(message, context, envelope)?;
        let shared = &self.shared;
        let (peer, addresser) = shared.peer(retry).await?;
        let name = addresser.notify(target);
        let address = match peer {
            Peer::RabbitMq => {
                // Through `amq.direct`, so that pool queues get their copy too; the default
                // queue is declared (and bound) first, so notifications wait for a listener.
                shared.ensure_notification_queue(&name).await?;
                rabbit_direct_address(&name)
            }
            Peer::Generic => name,
        };
        let deadline = Instant::now() + Amqp1Config::secs(shared.config.default_notify_timeout);
        let message = wire::build(&address, Some(body), Some(&new_id()), None, None, None);
        let settled = shared.config.is_pre_settled("notify");
        shared.sends.send(shared, &address, message, settled, deadline, retry, false).await
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        target.validate(TargetUse::Listen)?;
        let target = target.clone();
        let credit = self.shared.config.rpc_server_credit;
        let fanout_suffix = new_id();
        let plan: LinkPlan = Arc::new(move |addresser: &Addresser, peer: Peer| {
            let spec = |source| LinkSpec {
                source,
                credit,
                presettled: false,
            };
            match peer {
                Peer::RabbitMq => vec![
                    spec(LinkSource::Address(rabbit_queue_address(&addresser.unicast(&target)))),
                    {
                        let key = addresser.multicast(&target);
                        spec(LinkSource::RabbitPrivate(format!("{key}.{fanout_suffix}"), key))
                    },
                    spec(LinkSource::Address(rabbit_queue_address(&addresser.anycast(&target)))),
                ],
                Peer::Generic => vec![
                    spec(LinkSource::Address(addresser.unicast(&target))),
                    spec(LinkSource::Address(addresser.multicast(&target))),
                    spec(LinkSource::Address(addresser.anycast(&target))),
                ],
            }
        });
        Ok(Box::new(Amqp1Listener::start(self.shared.clone(), plan, "RPC server").await?))
    }

    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>> {
        let mut topics = Vec::new();
        for (target, priority) in targets_and_priorities {
            target.validate(TargetUse::Notify)?;
            // As oslo: the target's exchange is not used for notification subscriptions.
            topics.push(Target::new(format!("{}.{}", target.topic.as_deref().unwrap_or_default(), priority)));
        }
        let credit = self.shared.config.notify_server_credit;
        let pool = pool.map(str::to_string);
        let wants_pool = pool.is_some();
        let plan: LinkPlan = Arc::new(move |addresser: &Addresser, peer: Peer| {
            let spec = |source| LinkSpec {
                source,
                credit,
                presettled: false,
            };
            match (peer, &pool) {
                // One queue named after the pool, bound to every topic.priority (as oslo's
                // rabbit driver): its listeners share the messages, other pools get copies.
                (Peer::RabbitMq, Some(pool)) => vec![spec(LinkSource::RabbitShared(
                    pool.clone(),
                    topics.iter().map(|t| addresser.notify(t)).collect(),
                ))],
                (Peer::RabbitMq, None) => topics
                    .iter()
                    .map(|t| {
                        let name = addresser.notify(t);
                        spec(LinkSource::RabbitShared(name.clone(), vec![name]))
                    })
                    .collect(),
                (Peer::Generic, _) => topics.iter().map(|t| spec(LinkSource::Address(addresser.notify(t)))).collect(),
            }
        });
        let mut listener = Amqp1Listener::start(self.shared.clone(), plan, "notification listener").await?;
        if wants_pool && self.shared.peer.get().is_some_and(|(peer, _)| *peer == Peer::Generic) {
            listener.cleanup().await;
            return Err(Error::transport(
                DRIVER_NAME,
                "notification pools need RabbitMQ; on qpid peers oslo's AMQP 1.0 driver did not support them either (NotImplementedError)",
                false,
            ));
        }
        Ok(Box::new(listener))
    }

    async fn cleanup(&self) {
        let shared = &self.shared;
        shared.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let reply = shared.reply.lock().await.take();
        if let Some(mut link) = reply {
            link.set.cleanup().await;
            link.task.abort();
            if let Some(queue) = link.queue {
                tracing::debug!(queue, "reply queue deleted");
            }
        }
        shared.waiters.clear();
        shared.sends.close().await;
        shared.admin.close().await;
    }
}
