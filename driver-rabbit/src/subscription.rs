//! A supervised consuming connection: declares a [`Topology`], consumes its queues with manual
//! acks, hands every delivery to a [`DeliveryHandler`], and on connection loss reconnects
//! (failover, backoff) and restores the same queues, bindings and consumers by itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Event};
use oslo_core::{Error, Result, Retry};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::connect::{amqp_code, codes, is_durable_mismatch, Connector};
use crate::topology::{consumer_arguments, BindingSpec, ExchangeSpec, QueueSpec, Topology};

/// A confirm-mode channel on a subscription's own connection, for publishing (an RPC server's
/// replies, a client's requests) without handing each message to a second connection's I/O
/// thread (opened when [`Topology::publish_channel`] is set).
#[derive(Debug, Clone)]
pub(crate) struct PublishChannel {
    channel: Channel,
    /// Set while the broker has announced `connection.blocked` (a resource alarm).
    blocked: Arc<AtomicBool>,
}

impl PublishChannel {
    /// The channel, unless the connection is blocked or the channel closed. While an alarm
    /// blocks publishers, a connection that publishes is no longer read by the broker, so its
    /// acks would wait too: messages then go through the driver's send connection.
    pub(crate) fn usable(&self) -> Option<&Channel> {
        (!self.blocked.load(Ordering::Acquire) && self.channel.status().connected()).then_some(&self.channel)
    }
}

/// Receives the deliveries of a subscription in [`Consumers::Forward`] mode, on the consuming
/// task (keep it short: decode, route). The subscription acks them itself.
pub(crate) trait DeliveryHandler: Send + Sync + 'static {
    /// One delivery from `queue`.
    fn handle(&self, queue: &str, delivery: Delivery);
}

/// How a subscription hands out its deliveries.
#[derive(Clone)]
pub(crate) enum Consumers {
    /// A task per consumer passes each delivery to the handler and acks every burst with one
    /// `basic.ack` (`multiple`): only for a topology with one consumer, whose deliveries need no
    /// settling of their own (reply queues), since a multiple ack covers the whole channel.
    Forward(Arc<dyn DeliveryHandler>),
    /// Each session's consumers go to a listener that polls them itself, so a delivery reaches
    /// the task that takes it with no hop through another task.
    Feed(mpsc::UnboundedSender<Feed>),
}

/// One session's consumers, for a listener that polls them itself ([`Consumers::Feed`]).
pub(crate) struct Feed {
    /// The consuming channel (settle deliveries there).
    pub(crate) channel: Channel,
    pub(crate) publish_channel: Option<PublishChannel>,
    /// `(queue, consumer)` in the topology's order.
    pub(crate) consumers: Vec<(String, Consumer)>,
    /// Report here why a consumer ended (failed, or cancelled by the broker): the subscription
    /// then reconnects and sends a new feed.
    pub(crate) ended: mpsc::UnboundedSender<String>,
}

enum Command {
    Stop(oneshot::Sender<()>),
    Cleanup(oneshot::Sender<()>),
}

/// Handle on a supervised consuming connection.
#[derive(Debug)]
pub(crate) struct Subscription {
    commands: mpsc::UnboundedSender<Command>,
    /// The current session's publish channel, when the topology asked for one.
    publish_channel: Arc<std::sync::Mutex<Option<PublishChannel>>>,
}

/// Why setting up a session failed.
enum SetupError {
    /// Retrying cannot help (authentication, a declaration the broker refuses).
    Fatal(Error),
    /// The connection failed; try again.
    Retryable(Error),
}

impl SetupError {
    fn into_error(self) -> Error {
        match self {
            SetupError::Fatal(e) | SetupError::Retryable(e) => e,
        }
    }
}

struct Session {
    connection: Connection,
    channel: Channel,
    /// Mirrors `connection.blocked` / `connection.unblocked` for the publish channel.
    blocked: Arc<AtomicBool>,
    tags: Vec<String>,
    forwarders: JoinSet<String>,
    /// Consumer ends reported by a feed's listener; the sender is kept so this never closes.
    ended: mpsc::UnboundedReceiver<String>,
    _ended_sender: mpsc::UnboundedSender<String>,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl Subscription {
    /// Connect, declare and start consuming before returning, so the queues exist once this
    /// returns. Connection failures are retried as `retry` allows, until `deadline` (without
    /// one, only `retry` bounds it); authentication failures and refused declarations are
    /// returned at once. After the start, lost connections are always restored.
    pub(crate) async fn start(
        connector: Arc<Connector>,
        topology: Topology,
        consumers: Consumers,
        deadline: Option<Instant>,
        retry: Retry,
        purpose: &'static str,
    ) -> Result<Subscription> {
        let topology = Arc::new(topology);
        let publish_channel = Arc::new(std::sync::Mutex::new(None));
        let session = loop {
            match establish(&connector, &topology, &consumers, &publish_channel, deadline, retry, purpose).await {
                Ok(session) => break session,
                Err(SetupError::Fatal(error)) => return Err(error),
                Err(SetupError::Retryable(error)) => {
                    // A limited budget was spent by the connection attempts themselves.
                    if deadline.is_some_and(|d| Instant::now() >= d) || matches!(retry, Retry::Limited(_)) {
                        return Err(error);
                    }
                    tracing::warn!(purpose, error = %error, "setting up the consumer failed; retrying");
                    tokio::time::sleep(connector.config().retry_interval(1)).await;
                }
            }
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(supervise(
            session,
            receiver,
            connector,
            topology,
            consumers,
            publish_channel.clone(),
            purpose,
        ));
        Ok(Subscription { commands, publish_channel })
    }

    /// The live session's publish channel, if the topology asked for one and it is usable now.
    pub(crate) fn publish_channel(&self) -> Option<Channel> {
        let current = self.publish_channel.lock().expect("publish channel slot poisoned");
        current.as_ref().and_then(PublishChannel::usable).cloned()
    }

    /// Cancel the consumers (no new deliveries); the connection stays for acks and cleanup.
    pub(crate) async fn stop(&self) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(Command::Stop(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Delete the topology's private queues and close the connection.
    pub(crate) async fn cleanup(&self) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(Command::Cleanup(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

async fn supervise(
    session: Session,
    mut commands: mpsc::UnboundedReceiver<Command>,
    connector: Arc<Connector>,
    topology: Arc<Topology>,
    consumers: Consumers,
    publish_channel: Arc<std::sync::Mutex<Option<PublishChannel>>>,
    purpose: &'static str,
) {
    let mut session = Some(session);
    let mut stopped = false;
    loop {
        match session.as_mut() {
            Some(live) => {
                let lost = tokio::select! {
                    command = commands.recv() => match command {
                        Some(Command::Stop(ack)) => {
                            if !stopped {
                                live.cancel_consumers().await;
                                stopped = true;
                            }
                            let _ = ack.send(());
                            None
                        }
                        Some(Command::Cleanup(ack)) => {
                            if !stopped {
                                live.cancel_consumers().await;
                            }
                            live.cleanup(&topology.delete_on_cleanup).await;
                            let _ = ack.send(());
                            return;
                        }
                        None => {
                            // Every handle dropped without cleanup: release the connection.
                            live.close().await;
                            return;
                        }
                    },
                    reason = live.broken(), if !stopped => Some(reason),
                };
                if let Some(reason) = lost {
                    tracing::warn!(purpose, reason = %reason, "AMQP connection or consumer lost; reconnecting and restoring the consumers");
                    if let Some(old) = session.take() {
                        old.abandon();
                    }
                }
            }
            None if stopped => match commands.recv().await {
                Some(Command::Stop(ack)) => {
                    let _ = ack.send(());
                }
                Some(Command::Cleanup(ack)) => {
                    let _ = ack.send(());
                    return;
                }
                None => return,
            },
            None => {
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(Command::Stop(ack)) => {
                            stopped = true;
                            let _ = ack.send(());
                        }
                        Some(Command::Cleanup(ack)) => {
                            let _ = ack.send(());
                            return;
                        }
                        None => return,
                    },
                    restored = restore(&connector, &topology, &consumers, &publish_channel, purpose) => {
                        tracing::info!(purpose, "consumers restored after reconnect");
                        session = Some(restored);
                    }
                }
            }
        }
    }
}

/// Reconnect until the topology is back (same queue names), waiting `kombu_reconnect_delay`
/// first and backing off between failed setups.
async fn restore(
    connector: &Arc<Connector>,
    topology: &Arc<Topology>,
    consumers: &Consumers,
    publish_channel: &std::sync::Mutex<Option<PublishChannel>>,
    purpose: &'static str,
) -> Session {
    tokio::time::sleep(connector.config().reconnect_delay()).await;
    let mut failures: u32 = 0;
    loop {
        match establish(connector, topology, consumers, publish_channel, None, Retry::Forever, purpose).await {
            Ok(session) => return session,
            Err(setup) => {
                failures += 1;
                let fatal = matches!(setup, SetupError::Fatal(_));
                let error = setup.into_error();
                // A refused login or declaration will not fix itself quickly: back off to the
                // maximum interval at once instead of storming the broker.
                let wait = if fatal {
                    Duration::from_secs(connector.config().rabbit_interval_max.max(1) as u64)
                } else {
                    connector.config().retry_interval(failures)
                };
                tracing::error!(purpose, error = %error, retry_in = wait.as_secs(), "restoring the consumers failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn setup_error(connection: &Connection, error: lapin::Error, what: &str) -> SetupError {
    let message = format!("{what}: {error}");
    if connection.status().connected() && amqp_code(&error).is_some() && !error.is_amqp_hard_error() {
        // A channel-level refusal (PRECONDITION_FAILED, ACCESS_REFUSED, NOT_FOUND...).
        SetupError::Fatal(Error::transport(crate::DRIVER_NAME, message, false))
    } else {
        SetupError::Retryable(Error::transport(crate::DRIVER_NAME, message, true))
    }
}

async fn open_channel(connection: &Connection, prefetch: u16) -> std::result::Result<Channel, SetupError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| setup_error(connection, e, "opening a channel"))?;
    if prefetch > 0 {
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| setup_error(connection, e, "basic.qos"))?;
    }
    Ok(channel)
}

/// How many times a bind that found its exchange gone redeclares it and tries again.
const REBIND_ATTEMPTS: u32 = 5;

/// Declare `exchange` on `channel`; an exchange that exists with the other `durable` flag is
/// declared non durable on a new channel (oslo's retry), which replaces `channel`.
async fn declare_exchange(
    connection: &Connection,
    channel: &mut Channel,
    exchange: &ExchangeSpec,
    prefetch: u16,
) -> std::result::Result<(), SetupError> {
    let options = ExchangeDeclareOptions {
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        ..ExchangeDeclareOptions::default()
    };
    let what = || format!("declaring exchange {:?}", exchange.name);
    let declared = channel
        .exchange_declare(exchange.name.as_str().into(), exchange.kind.clone(), options, FieldTable::default())
        .await;
    match declared {
        Ok(()) => Ok(()),
        Err(error) if exchange.durable && is_durable_mismatch(&error) => {
            tracing::info!(exchange = %exchange.name, "Retrying to declare the exchange as non durable");
            *channel = open_channel(connection, prefetch).await?;
            let options = ExchangeDeclareOptions { durable: false, ..options };
            channel
                .exchange_declare(exchange.name.as_str().into(), exchange.kind.clone(), options, FieldTable::default())
                .await
                .map_err(|e| setup_error(connection, e, &what()))
        }
        Err(error) => Err(setup_error(connection, error, &what())),
    }
}

/// Declare `queue` on `channel`, with the same non-durable retry as [`declare_exchange`].
async fn declare_queue(
    connection: &Connection,
    channel: &mut Channel,
    queue: &QueueSpec,
    prefetch: u16,
) -> std::result::Result<(), SetupError> {
    let options = QueueDeclareOptions {
        durable: queue.durable,
        auto_delete: queue.auto_delete,
        ..QueueDeclareOptions::default()
    };
    let what = || format!("declaring queue {:?}", queue.name);
    let declared = channel
        .queue_declare(queue.name.as_str().into(), options, queue.arguments.clone())
        .await;
    match declared {
        Ok(_) => Ok(()),
        Err(error) if queue.durable && is_durable_mismatch(&error) => {
            tracing::warn!(queue = %queue.name, error = %error, "Queue could not be declared probably because of conflicting configurations; retrying non durable");
            *channel = open_channel(connection, prefetch).await?;
            let options = QueueDeclareOptions { durable: false, ..options };
            channel
                .queue_declare(queue.name.as_str().into(), options, queue.arguments.clone())
                .await
                .map(|_| ())
                .map_err(|e| setup_error(connection, e, &what()))
        }
        Err(error) => Err(setup_error(connection, error, &what())),
    }
}

/// Bind as `binding` says. The auto-delete `<topic>_fanout` exchange vanishes when the last
/// other server of the topic deletes its fanout queue, possibly between our declare and this
/// bind: the broker then closes the channel with NOT_FOUND, and the exchange (and the queue,
/// for good measure) is declared again on a new channel before the bind is tried again.
async fn bind(
    connection: &Connection,
    channel: &mut Channel,
    topology: &Topology,
    binding: &BindingSpec,
    prefetch: u16,
) -> std::result::Result<(), SetupError> {
    let mut attempts = 0;
    loop {
        let bound = channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        match bound {
            Ok(()) => return Ok(()),
            Err(error) if amqp_code(&error) == Some(codes::NOT_FOUND) && attempts < REBIND_ATTEMPTS => {
                attempts += 1;
                tracing::debug!(exchange = %binding.exchange, queue = %binding.queue, attempts, "binding found the exchange gone; declaring it again");
                *channel = open_channel(connection, prefetch).await?;
                if let Some(exchange) = topology.exchanges.iter().find(|e| e.name == binding.exchange) {
                    declare_exchange(connection, channel, exchange, prefetch).await?;
                }
                if let Some(queue) = topology.queues.iter().find(|q| q.name == binding.queue) {
                    declare_queue(connection, channel, queue, prefetch).await?;
                }
            }
            Err(error) => {
                return Err(setup_error(
                    connection,
                    error,
                    &format!("binding queue {:?} to {:?}", binding.queue, binding.exchange),
                ))
            }
        }
    }
}

async fn establish(
    connector: &Arc<Connector>,
    topology: &Arc<Topology>,
    consumers: &Consumers,
    publish_slot: &std::sync::Mutex<Option<PublishChannel>>,
    deadline: Option<Instant>,
    retry: Retry,
    purpose: &'static str,
) -> std::result::Result<Session, SetupError> {
    let connection = connector.connect(retry, deadline, purpose).await.map_err(|error| match error {
        Error::MessageDeliveryFailure { .. } => SetupError::Retryable(error),
        other => SetupError::Fatal(other),
    })?;
    let events = Box::pin(connection.events_listener());
    let prefetch = match consumers {
        // Listeners hold at most a bounded number of unacknowledged deliveries (see
        // `RabbitConfig::listener_prefetch`); reply queues are bounded by the calls in flight.
        Consumers::Feed(_) => connector.config().listener_prefetch(),
        Consumers::Forward(_) => connector.config().rabbit_qos_prefetch_count,
    };
    let mut channel = open_channel(&connection, prefetch).await?;

    for exchange in &topology.exchanges {
        declare_exchange(&connection, &mut channel, exchange, prefetch).await?;
    }
    for queue in &topology.queues {
        declare_queue(&connection, &mut channel, queue, prefetch).await?;
    }
    for binding in &topology.bindings {
        bind(&connection, &mut channel, topology, binding, prefetch).await?;
    }

    let blocked = Arc::new(AtomicBool::new(false));
    let publish_channel = if topology.publish_channel {
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| setup_error(&connection, e, "opening the publish channel"))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| setup_error(&connection, e, "confirm.select"))?;
        Some(PublishChannel {
            channel: publish,
            blocked: blocked.clone(),
        })
    } else {
        None
    };
    let arguments = consumer_arguments(connector.config());
    let mut started = Vec::new();
    let mut tags = Vec::new();
    for (index, queue) in topology.consume.iter().enumerate() {
        // oslo numbers its consumer tags per connection: "1", "2", "3".
        let tag = (index + 1).to_string();
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                arguments.clone(),
            )
            .await
            .map_err(|e| setup_error(&connection, e, &format!("consuming from queue {queue:?}")))?;
        started.push((queue.clone(), consumer));
        tags.push(tag);
    }
    *publish_slot.lock().expect("publish channel slot poisoned") = publish_channel.clone();
    let (ended_sender, ended) = mpsc::unbounded_channel();
    let mut forwarders = JoinSet::new();
    match consumers {
        Consumers::Forward(handler) => {
            for (queue, consumer) in started {
                forwarders.spawn(forward(consumer, channel.clone(), queue, handler.clone()));
            }
        }
        Consumers::Feed(feeds) => {
            let feed = Feed {
                channel: channel.clone(),
                publish_channel,
                consumers: started,
                ended: ended_sender.clone(),
            };
            // Err: the listener is gone (dropped without cleanup); the connection closes when
            // the subscription handle goes too.
            let _ = feeds.send(feed);
        }
    }
    Ok(Session {
        connection,
        channel,
        blocked,
        tags,
        forwarders,
        ended,
        _ended_sender: ended_sender,
        events,
    })
}

/// Pump one consumer's deliveries into the handler, acking each burst with one frame; returns
/// why it ended.
async fn forward(mut consumer: Consumer, channel: Channel, queue: String, handler: Arc<dyn DeliveryHandler>) -> String {
    use futures::FutureExt;
    while let Some(item) = consumer.next().await {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => return format!("consumer on queue {queue:?} failed: {error}"),
        };
        // Take the whole burst that is already here, then ack it with one frame.
        let mut last_tag = delivery.delivery_tag;
        handler.handle(&queue, delivery);
        let mut ended = None;
        loop {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => {
                    last_tag = delivery.delivery_tag;
                    handler.handle(&queue, delivery);
                }
                Some(Some(Err(error))) => {
                    ended = Some(format!("consumer on queue {queue:?} failed: {error}"));
                    break;
                }
                Some(None) => {
                    ended = Some(format!("consumer on queue {queue:?} was cancelled"));
                    break;
                }
                None => break,
            }
        }
        // The first poll queues the frame; not waiting keeps lapin's I/O thread off the path.
        let _ = channel.basic_ack(last_tag, BasicAckOptions { multiple: true }).now_or_never();
        if let Some(reason) = ended {
            return reason;
        }
    }
    format!("consumer on queue {queue:?} was cancelled")
}

impl Session {
    /// Resolves when the connection or one of the consumers is gone.
    async fn broken(&mut self) -> String {
        loop {
            tokio::select! {
                event = self.events.next() => match event {
                    // lapin reports channel-level (soft) errors here too, such as the declare
                    // channel closed by a durable mismatch that `establish` already retried on a
                    // new channel. The connection is fine; a consumer's own channel closing ends
                    // its forwarder, which is noticed below.
                    Some(Event::Error(error)) if error.is_amqp_soft_error() && self.connection.status().connected() => {
                        tracing::debug!(error = %error, "a channel of the consuming connection was closed");
                    }
                    Some(Event::Error(error)) => return format!("connection error: {error}"),
                    Some(Event::ConnectionBlocked(reason)) => {
                        self.blocked.store(true, Ordering::Release);
                        tracing::warn!(reason = %reason, "The broker has blocked the connection");
                    }
                    Some(Event::ConnectionUnblocked) => {
                        self.blocked.store(false, Ordering::Release);
                        tracing::info!("The broker has unblocked the connection");
                    }
                    Some(_) => {}
                    None => return "connection closed".into(),
                },
                Some(ended) = self.forwarders.join_next() => {
                    return match ended {
                        Ok(reason) => reason,
                        Err(error) => format!("consumer task failed: {error}"),
                    };
                }
                Some(reason) = self.ended.recv() => return reason,
            }
        }
    }

    async fn cancel_consumers(&mut self) {
        for tag in &self.tags {
            match bounded(self.channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())).await {
                Some(Ok(())) => {}
                Some(Err(error)) => tracing::debug!(tag = %tag, error = %error, "basic.cancel failed"),
                None => tracing::debug!(tag = %tag, "basic.cancel got no answer in time"),
            }
        }
        // The consumer streams end after cancel-ok; do not wait long for stragglers.
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while self.forwarders.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.forwarders.abort_all();
        }
    }

    async fn cleanup(&mut self, delete: &[String]) {
        if self.connection.status().connected() {
            for queue in delete {
                match bounded(self.channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())).await {
                    Some(Ok(_)) => tracing::debug!(queue = %queue, "deleted queue"),
                    Some(Err(error)) => tracing::debug!(queue = %queue, error = %error, "deleting queue failed"),
                    None => tracing::debug!(queue = %queue, "queue.delete got no answer in time"),
                }
            }
        }
        self.close().await;
    }

    async fn close(&mut self) {
        self.forwarders.abort_all();
        if self.connection.status().connected() {
            if let Some(Err(error)) = bounded(self.connection.close(200, "OK".into())).await {
                tracing::debug!(error = %error, "closing the consumer connection failed");
            }
        }
    }

    fn abandon(mut self) {
        self.forwarders.abort_all();
        tokio::spawn(async move {
            if self.connection.status().connected() {
                let _ = self.connection.close(200, "OK".into()).await;
            }
        });
    }
}

/// How long a shutdown step waits for the broker: a half-open connection (no heartbeat) must
/// not make `stop()` / `cleanup()` hang.
const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// `future`, or `None` when the broker did not answer within [`SHUTDOWN_STEP_TIMEOUT`].
async fn bounded<F: std::future::Future>(future: F) -> Option<F::Output> {
    tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, future).await.ok()
}
