//! The send side: one long-lived connection per driver, publisher confirms on every publish,
//! exchange (and notification queue) declarations cached per connection, reconnect and retry.
//!
//! # Channels and confirms
//!
//! * Most publishes (calls, casts, notifications, replies) share **one channel** in confirm
//!   mode; fanout casts share a second one, because their auto-delete exchange can vanish and
//!   the broker then closes the channel with 404 (the exchange is redeclared and the cast sent
//!   again without other publishes being disturbed). Each publisher awaits its own `PublisherConfirm` with no lock held, so any
//!   number of confirms are outstanding at once (windowed, not serialized).
//! * lapin hands a `basic.return` to whichever pending confirm of the channel resolves first
//!   when one `basic.ack` with `multiple` covers several publishes, so on a shared channel a
//!   returned message can surface on *another* publisher's confirm. Every publisher therefore
//!   checks that a returned message is its own (same body and routing key); a foreign one is
//!   routed by its content ([`ReturnRouter`]): a returned call request fails its call with
//!   `MessageUndeliverable` (calls watch for that while they wait for the reply), a returned
//!   reply is retried like any reply to a missing queue.
//! * Publishes whose own outcome must be exact and that have nobody to route to later
//!   (`at_least_once` casts, call-monitor heartbeats) lease a confirm-mode channel from a small
//!   pool for one publish + confirm, so the returned message always lands on its own confirm.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ErrorKind};
use oslo_core::codec;
use oslo_core::{Error, Result, Retry};
use serde_json::Value;
use tokio::sync::{oneshot, Semaphore, SemaphorePermit};

use crate::connect::{amqp_code, codes, is_durable_mismatch, Connector};
use crate::topology::{ExchangeSpec, QueueSpec};

/// Index of the shared channel for everything but auto-delete exchanges.
const MAIN: usize = 0;
/// Index of the shared channel for auto-delete (fanout) exchanges.
const VOLATILE: usize = 1;

/// Most channels leased at once for mandatory publishes on one connection.
pub(crate) const MAX_LEASED_CHANNELS: usize = 128;

/// After this many channels closed by the broker (refused declarations, vanished exchanges)
/// a send connection is retired and replaced: lapin 4.12 never frees the id of a channel the
/// broker closed (`Channel::on_channel_close_ok_sent` kills the channel's switch before
/// `InternalRPC::RemoveChannel`, which then skips it), so each one uses up a slot of the
/// connection's table for good, and a full table makes every new channel fail with
/// `ChannelsLimitReached`. Half of the smallest `channel_max` brokers negotiate by default
/// (RabbitMQ: 2047) leaves room for the channels in use.
const RETIRE_AFTER_CLOSED_CHANNELS: usize = 1000;

/// Most publishes of one send connection's shared channels waiting for their confirm at once:
/// a sender past it waits (each cast returns after its confirm, so this bounds what many
/// concurrent senders keep in flight, in lapin's buffers and on the broker).
pub const MAX_UNCONFIRMED: usize = 1024;

/// Most body bytes of one send connection's shared channels waiting for their confirms (a
/// larger message still goes, alone): 1024 casts of 64 KiB would otherwise hold 64 MiB.
pub const MAX_UNCONFIRMED_BYTES: usize = 4 * 1024 * 1024;

/// How long a retired send connection stays open for the publishes still waiting on it.
const RETIRED_CONNECTION_GRACE: Duration = Duration::from_secs(30);

/// The AMQP properties of every oslo message (wire-format.md §0): `application/json`,
/// `utf-8`, persistent, priority 0, an empty header table; plus `expiration` (ms) on calls.
pub(crate) fn message_properties(expiration: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0);
    match expiration {
        Some(ms) => properties.with_expiration(ms.into()),
        None => properties,
    }
}

/// One message to publish.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    /// Exchange to declare (cached per connection unless auto-delete) and publish to;
    /// `None` publishes to the default exchange `""` without declaring it.
    pub exchange: Option<&'a ExchangeSpec>,
    /// A queue to declare and bind to `exchange` with `routing_key` first (notifications).
    pub queue: Option<&'a QueueSpec>,
    /// Routing key.
    pub routing_key: &'a str,
    /// The encoded body.
    pub body: &'a [u8],
    /// `expiration` property in milliseconds (calls only).
    pub expiration: Option<String>,
    /// Ask the broker to return the message when no queue takes it.
    pub mandatory: bool,
    /// Publish on a leased channel of its own, so that a return is always reported to this
    /// publish (for mandatory messages nobody else could act on when returned).
    pub isolated: bool,
}

impl Outgoing<'_> {
    fn exchange_name(&self) -> &str {
        self.exchange.map_or("", |e| e.name.as_str())
    }
}

/// Why one publish attempt failed.
#[derive(Debug)]
enum Failure {
    /// `basic.return`: no queue for the routing key.
    Undeliverable,
    /// `basic.nack`.
    Nacked,
    /// Retrying will not help.
    Fatal(Error),
    /// The broker closed the channel with 404 NOT_FOUND (the exchange does not exist).
    NotFound,
    /// The cached auto-delete exchange was gone (404); redeclare it and try again at once.
    ExchangeVanished,
    /// The connection (or only the channel) failed; try again.
    Retryable { reason: String, connection_lost: bool },
}

fn classify(connection: &Connection, error: lapin::Error) -> Failure {
    match amqp_code(&error) {
        Some(codes::ACCESS_REFUSED) => {
            return Failure::Fatal(Error::transport(
                crate::DRIVER_NAME,
                format!("access refused by the broker: {error}"),
                false,
            ))
        }
        Some(codes::PRECONDITION_FAILED) => {
            return Failure::Fatal(Error::transport(
                crate::DRIVER_NAME,
                format!("declaration refused by the broker: {error}"),
                false,
            ))
        }
        _ => {}
    }
    let connection_lost = !connection.status().connected()
        || error.is_io_error()
        || error.is_amqp_hard_error()
        || matches!(
            error.kind(),
            // A connection out of channels cannot recover: only a new connection helps.
            ErrorKind::MissingHeartbeatError | ErrorKind::InvalidConnectionState(_) | ErrorKind::ChannelsLimitReached
        );
    Failure::Retryable {
        reason: error.to_string(),
        connection_lost,
    }
}

/// The driver's sending side.
#[derive(Debug)]
pub(crate) struct Publisher {
    connector: Arc<Connector>,
    current: RwLock<Option<Arc<SendConnection>>>,
    connecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    returns: Arc<ReturnRouter>,
}

impl Publisher {
    pub(crate) fn new(connector: Arc<Connector>) -> Self {
        Publisher {
            connector,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            returns: Arc::default(),
        }
    }

    /// Where returned messages found on other publishers' confirms go.
    pub(crate) fn returns(&self) -> &Arc<ReturnRouter> {
        &self.returns
    }

    /// Publish with publisher confirms, reconnecting and retrying on connection failures as
    /// `retry` allows.
    ///
    /// Errors: [`Error::MessageUndeliverable`] when a mandatory message was returned,
    /// [`Error::MessageDeliveryFailure`] when the broker nacked it or the retries ran out
    /// (`retryable: true`), the fatal error for refused declarations or permissions.
    pub(crate) async fn publish(&self, out: &Outgoing<'_>, retry: Retry) -> Result<()> {
        let mut attempt: u32 = 0;
        let mut redeclared = false;
        // Retryable failures in a row that did not lose the connection: a second one replaces
        // the connection too, so that no channel-level fault can make a send retry forever
        // on a connection that keeps failing it.
        let mut soft_failures: u32 = 0;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::MessageDeliveryFailure {
                    message: "the transport was cleaned up".into(),
                    retryable: false,
                });
            }
            let connection = self.connection(retry).await?;
            let failure = match connection.publish(out, &self.returns).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            match failure {
                Failure::Undeliverable => {
                    return Err(Error::MessageUndeliverable {
                        exchange: out.exchange_name().to_string(),
                        routing_key: out.routing_key.to_string(),
                    })
                }
                Failure::Nacked => {
                    return Err(Error::MessageDeliveryFailure {
                        message: format!(
                            "the broker nacked the message to exchange {:?} with routing key {:?}",
                            out.exchange_name(),
                            out.routing_key
                        ),
                        retryable: true,
                    })
                }
                Failure::Fatal(error) => return Err(error),
                Failure::NotFound | Failure::ExchangeVanished if !redeclared => {
                    // Not a connection problem: redeclare once without counting a retry.
                    redeclared = true;
                    tracing::debug!(exchange = out.exchange_name(), "exchange vanished; redeclaring it");
                }
                Failure::NotFound | Failure::ExchangeVanished => {
                    return Err(Error::MessageDeliveryFailure {
                        message: format!("exchange {:?} vanished again right after it was redeclared", out.exchange_name()),
                        retryable: true,
                    })
                }
                Failure::Retryable { reason, connection_lost } => {
                    soft_failures = if connection_lost { 0 } else { soft_failures + 1 };
                    if connection_lost || soft_failures > 1 {
                        self.invalidate(&connection);
                    } else {
                        connection.forget_declarations();
                    }
                    attempt += 1;
                    if !retry.allows(attempt) {
                        tracing::error!(exchange = out.exchange_name(), error = %reason, "Failed to publish message");
                        return Err(Error::MessageDeliveryFailure {
                            message: format!("Failed to publish message to topic '{}': {reason}", out.exchange_name()),
                            retryable: true,
                        });
                    }
                    tracing::warn!(exchange = out.exchange_name(), routing_key = out.routing_key, attempt, error = %reason, "publish failed; retrying");
                    if attempt > 1 {
                        tokio::time::sleep(self.connector.config().retry_interval(attempt - 1)).await;
                    }
                }
            }
        }
    }

    /// The current send connection, connecting (once, for all waiting senders) if needed.
    ///
    /// The connect lock is held for one round over the hosts at most; the backoff between
    /// rounds happens outside it, and each sender counts its own `retry`. So a
    /// `Retry::Limited(0)` send is never stuck behind another sender's retry-forever
    /// reconnect, and a cleaned-up transport stops trying.
    async fn connection(&self, retry: Retry) -> Result<Arc<SendConnection>> {
        let hosts = u32::try_from(self.connector.brokers().len().max(1)).unwrap_or(u32::MAX);
        let mut attempts: u32 = 0;
        let mut rounds: u32 = 0;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::MessageDeliveryFailure {
                    message: "the transport was cleaned up".into(),
                    retryable: false,
                });
            }
            if let Some(connection) = self.usable() {
                return Ok(connection);
            }
            // Host attempts this sender may still make in this round (`allows(n)`: n-th retry).
            let left = match retry {
                Retry::Forever => hosts,
                Retry::Limited(max) => (max + 1).saturating_sub(attempts).min(hosts),
            };
            let failure = {
                let _connecting = self.connecting.lock().await;
                if let Some(connection) = self.usable() {
                    return Ok(connection);
                }
                if let Some(old) = self.current.write().expect("publisher lock poisoned").take() {
                    old.close_in_background();
                }
                match self.connector.connect(Retry::Limited(left.saturating_sub(1)), None, "send").await {
                    Ok(connection) => {
                        let connection = Arc::new(SendConnection::new(connection));
                        if self.closed.load(Ordering::Acquire) {
                            connection.close_in_background();
                            continue;
                        }
                        *self.current.write().expect("publisher lock poisoned") = Some(connection.clone());
                        return Ok(connection);
                    }
                    Err(error) if !error.is_retryable() => return Err(error),
                    Err(error) => error,
                }
            };
            attempts += left;
            rounds += 1;
            if !retry.allows(attempts) {
                // Report every attempt this sender made, not just the last round's.
                let text = failure.to_string();
                let last_error = text.split_once("tries: ").map_or(text.as_str(), |(_, last)| last);
                return Err(self.connector.exhausted(attempts, last_error));
            }
            tokio::time::sleep(self.connector.config().retry_interval(rounds)).await;
        }
    }

    /// Whether the live send connection has declared `exchange` (declarations are broker-wide,
    /// so a publish on another connection may rely on it).
    pub(crate) fn has_declared(&self, exchange: &str) -> bool {
        self.usable()
            .is_some_and(|c| c.exchanges.lock().expect("declare cache poisoned").contains(exchange))
    }

    fn usable(&self) -> Option<Arc<SendConnection>> {
        let current = self.current.read().expect("publisher lock poisoned");
        current
            .as_ref()
            .filter(|c| c.connection.status().connected() && !c.worn_out())
            .cloned()
    }

    fn invalidate(&self, connection: &Arc<SendConnection>) {
        let mut current = self.current.write().expect("publisher lock poisoned");
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            current.take();
        }
        drop(current);
        connection.close_in_background();
    }

    /// Close the send connection; later publishes fail.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let current = self.current.write().expect("publisher lock poisoned").take();
        if let Some(connection) = current {
            connection.close().await;
        }
    }
}

/// One send connection with its channels and declaration caches.
#[derive(Debug)]
struct SendConnection {
    connection: Connection,
    /// Two long-lived confirm channels: [`MAIN`] for everything, [`VOLATILE`] for publishes
    /// to auto-delete (fanout) exchanges, whose 404 when such an exchange vanished closes
    /// that channel only.
    shared: [Mutex<Option<Channel>>; 2],
    shared_creating: [tokio::sync::Mutex<()>; 2],
    pool: Mutex<Vec<Channel>>,
    slots: Semaphore,
    exchanges: Mutex<HashSet<String>>,
    queues: Mutex<HashSet<(String, String)>>,
    /// Channels of this connection the broker closed (see [`RETIRE_AFTER_CLOSED_CHANNELS`]).
    closed_channels: AtomicUsize,
    /// Publishes on the shared channels waiting for their confirm, at most
    /// [`MAX_UNCONFIRMED`] (leased channels are bounded by their own pool).
    unconfirmed: Semaphore,
    /// Their bodies' bytes, at most [`MAX_UNCONFIRMED_BYTES`].
    unconfirmed_bytes: Semaphore,
}

/// A pooled channel used by one mandatory publish (or a declaration) at a time.
struct Lease<'a> {
    owner: &'a SendConnection,
    channel: Option<Channel>,
    /// Set once the operation finished cleanly; an unfinished lease (cancelled or failed)
    /// drops its channel instead of returning it, so no stale confirm can leak into the next use.
    done: bool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn channel(&self) -> &Channel {
        self.channel.as_ref().expect("lease holds a channel")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            if self.done && channel.status().connected() {
                self.owner.pool.lock().expect("channel pool poisoned").push(channel);
            }
        }
    }
}

impl SendConnection {
    fn new(connection: Connection) -> Self {
        SendConnection {
            connection,
            shared: [Mutex::new(None), Mutex::new(None)],
            shared_creating: [tokio::sync::Mutex::new(()), tokio::sync::Mutex::new(())],
            pool: Mutex::new(Vec::new()),
            slots: Semaphore::new(MAX_LEASED_CHANNELS),
            exchanges: Mutex::new(HashSet::new()),
            queues: Mutex::new(HashSet::new()),
            closed_channels: AtomicUsize::new(0),
            unconfirmed: Semaphore::new(MAX_UNCONFIRMED),
            unconfirmed_bytes: Semaphore::new(MAX_UNCONFIRMED_BYTES),
        }
    }

    /// [`classify`], counting the channels the broker closed on this connection.
    fn classify(&self, error: lapin::Error) -> Failure {
        self.count_closed_channel(&error);
        classify(&self.connection, error)
    }

    /// Count `error` when it is the broker closing a channel (a channel-level AMQP error).
    fn count_closed_channel(&self, error: &lapin::Error) {
        if amqp_code(error).is_some() && !error.is_amqp_hard_error() {
            let closed = self.closed_channels.fetch_add(1, Ordering::Relaxed) + 1;
            if closed == self.retire_after() {
                tracing::info!(closed, "the broker closed many channels of the send connection; replacing it");
            }
        }
    }

    /// How many broker-closed channels retire this connection.
    fn retire_after(&self) -> usize {
        let channel_max = usize::from(self.connection.configuration().channel_max());
        match channel_max {
            0 => RETIRE_AFTER_CLOSED_CHANNELS,
            max => RETIRE_AFTER_CLOSED_CHANNELS.min(max / 2).max(1),
        }
    }

    /// Whether so many channels were closed that this connection must be replaced.
    fn worn_out(&self) -> bool {
        self.closed_channels.load(Ordering::Relaxed) >= self.retire_after()
    }

    async fn new_confirm_channel(&self) -> std::result::Result<Channel, Failure> {
        let channel = self.connection.create_channel().await.map_err(|e| self.classify(e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.classify(e))?;
        Ok(channel)
    }

    async fn lease(&self) -> std::result::Result<Lease<'_>, Failure> {
        let permit = self.slots.acquire().await.expect("semaphore never closed");
        loop {
            let candidate = self.pool.lock().expect("channel pool poisoned").pop();
            match candidate {
                Some(channel) if channel.status().connected() => {
                    return Ok(Lease {
                        owner: self,
                        channel: Some(channel),
                        done: false,
                        _permit: permit,
                    })
                }
                Some(_) => continue,
                None => break,
            }
        }
        let channel = self.new_confirm_channel().await?;
        Ok(Lease {
            owner: self,
            channel: Some(channel),
            done: false,
            _permit: permit,
        })
    }

    async fn shared_channel(&self, which: usize) -> std::result::Result<Channel, Failure> {
        if let Some(channel) = self.live_shared(which) {
            return Ok(channel);
        }
        let _creating = self.shared_creating[which].lock().await;
        if let Some(channel) = self.live_shared(which) {
            return Ok(channel);
        }
        let channel = self.new_confirm_channel().await?;
        *self.shared[which].lock().expect("shared channel poisoned") = Some(channel.clone());
        Ok(channel)
    }

    fn live_shared(&self, which: usize) -> Option<Channel> {
        let shared = self.shared[which].lock().expect("shared channel poisoned");
        shared.as_ref().filter(|c| c.status().connected()).cloned()
    }

    fn forget_declarations(&self) {
        self.exchanges.lock().expect("declare cache poisoned").clear();
        self.queues.lock().expect("declare cache poisoned").clear();
    }

    async fn publish(&self, out: &Outgoing<'_>, returns: &Arc<ReturnRouter>) -> std::result::Result<(), Failure> {
        if let Some(exchange) = out.exchange {
            self.ensure_exchange(exchange).await?;
            if let Some(queue) = out.queue {
                self.ensure_queue(queue, &exchange.name, out.routing_key).await?;
            }
        }
        let properties = message_properties(out.expiration.as_deref());
        let outcome = if out.isolated {
            let mut lease = self.lease().await?;
            let outcome = publish_on(lease.channel(), out, properties, returns, |e| self.classify(e)).await;
            lease.done = outcome.is_ok() || matches!(outcome, Err(Failure::Undeliverable) | Err(Failure::Nacked));
            outcome
        } else {
            let which = if out.exchange.is_some_and(|e| e.auto_delete) {
                VOLATILE
            } else {
                MAIN
            };
            let channel = self.shared_channel(which).await?;
            // Backpressure, not an error: past either bound a publish waits for confirms.
            let _in_flight = self.unconfirmed.acquire().await.expect("semaphore never closed");
            let bytes = u32::try_from(out.body.len().clamp(1, MAX_UNCONFIRMED_BYTES)).unwrap_or(u32::MAX);
            let _bytes_in_flight = self.unconfirmed_bytes.acquire_many(bytes).await.expect("semaphore never closed");
            publish_on(&channel, out, properties, returns, |e| self.classify(e)).await
        };
        match outcome {
            // An auto-delete (fanout) exchange is declared once and cached, as oslo does; when
            // its last queue went away the broker deleted it and the publish fails with 404.
            Err(Failure::NotFound) => match out.exchange.filter(|e| e.auto_delete) {
                Some(exchange) => {
                    self.exchanges.lock().expect("declare cache poisoned").remove(&exchange.name);
                    Err(Failure::ExchangeVanished)
                }
                None => Err(Failure::Retryable {
                    reason: format!("exchange {:?} not found", out.exchange_name()),
                    connection_lost: false,
                }),
            },
            other => other,
        }
    }

    async fn ensure_exchange(&self, spec: &ExchangeSpec) -> std::result::Result<(), Failure> {
        // Declared once per connection, like oslo's `_declared_exchanges`; an auto-delete
        // (fanout) exchange that vanished is forgotten on the 404 and declared again.
        if self.exchanges.lock().expect("declare cache poisoned").contains(&spec.name) {
            return Ok(());
        }
        let options = ExchangeDeclareOptions {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            ..ExchangeDeclareOptions::default()
        };
        let mut lease = self.lease().await?;
        match lease
            .channel()
            .exchange_declare(spec.name.as_str().into(), spec.kind.clone(), options, FieldTable::default())
            .await
        {
            Ok(()) => lease.done = true,
            Err(error) if spec.durable && is_durable_mismatch(&error) => {
                self.count_closed_channel(&error);
                drop(lease);
                tracing::warn!(exchange = %spec.name, "Force creating a non durable exchange.");
                let mut lease = self.lease().await?;
                let options = ExchangeDeclareOptions { durable: false, ..options };
                lease
                    .channel()
                    .exchange_declare(spec.name.as_str().into(), spec.kind.clone(), options, FieldTable::default())
                    .await
                    .map_err(|e| self.classify(e))?;
                lease.done = true;
            }
            Err(error) => return Err(self.classify(error)),
        }
        self.exchanges.lock().expect("declare cache poisoned").insert(spec.name.clone());
        Ok(())
    }

    async fn ensure_queue(&self, spec: &QueueSpec, exchange: &str, routing_key: &str) -> std::result::Result<(), Failure> {
        let key = (exchange.to_string(), routing_key.to_string());
        if self.queues.lock().expect("declare cache poisoned").contains(&key) {
            return Ok(());
        }
        let options = QueueDeclareOptions {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            ..QueueDeclareOptions::default()
        };
        let mut lease = self.lease().await?;
        if let Err(error) = lease
            .channel()
            .queue_declare(spec.name.as_str().into(), options, spec.arguments.clone())
            .await
        {
            if !(spec.durable && is_durable_mismatch(&error)) {
                return Err(self.classify(error));
            }
            self.count_closed_channel(&error);
            drop(lease);
            tracing::warn!(queue = %spec.name, "queue exists with another durable flag; declaring it non durable");
            lease = self.lease().await?;
            let options = QueueDeclareOptions { durable: false, ..options };
            lease
                .channel()
                .queue_declare(spec.name.as_str().into(), options, spec.arguments.clone())
                .await
                .map_err(|e| self.classify(e))?;
        }
        lease
            .channel()
            .queue_bind(
                spec.name.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.classify(e))?;
        lease.done = true;
        self.queues.lock().expect("declare cache poisoned").insert(key);
        Ok(())
    }

    /// Close in a task of its own; a connection retired while still working first gives the
    /// publishes waiting on it [`RETIRED_CONNECTION_GRACE`] to finish.
    fn close_in_background(self: &Arc<Self>) {
        let this = self.clone();
        let grace = (self.worn_out() && self.connection.status().connected()).then_some(RETIRED_CONNECTION_GRACE);
        tokio::spawn(async move {
            if let Some(grace) = grace {
                tokio::time::sleep(grace).await;
            }
            this.close().await
        });
    }

    async fn close(&self) {
        if self.connection.status().connected() {
            if let Err(error) = self.connection.close(200, "OK".into()).await {
                tracing::debug!(error = %error, "closing the send connection failed");
            }
        }
    }
}

/// Publish on `channel` (in confirm mode) and wait for the broker's confirm; `classify` maps a
/// channel or connection error to its [`Failure`].
async fn publish_on(
    channel: &Channel,
    out: &Outgoing<'_>,
    properties: BasicProperties,
    returns: &Arc<ReturnRouter>,
    classify: impl Fn(lapin::Error) -> Failure,
) -> std::result::Result<(), Failure> {
    let options = BasicPublishOptions {
        mandatory: out.mandatory,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(out.exchange_name().into(), out.routing_key.into(), options, out.body, properties)
        .await
        .map_err(&classify)?;
    // If this future is dropped (a caller's timeout), the guard keeps waiting for the
    // confirm in the background: lapin would otherwise keep the dropped confirm forever,
    // with any other publisher's returned message it carries.
    let mut guard = ConfirmGuard {
        confirm: Some(confirm),
        returns: returns.clone(),
    };
    let outcome = guard.confirm.as_mut().expect("confirm present").await;
    guard.confirm = None;
    let (acked, returned) = match outcome {
        Ok(Confirmation::Ack(returned)) => (true, returned),
        Ok(Confirmation::Nack(returned)) => (false, returned),
        Ok(Confirmation::NotRequested) => (true, None),
        Err(error) => {
            let not_found = amqp_code(&error) == Some(codes::NOT_FOUND);
            let failure = classify(error);
            return Err(if not_found { Failure::NotFound } else { failure });
        }
    };
    if let Some(returned) = returned {
        let mine = returned.delivery.routing_key.as_str() == out.routing_key && returned.delivery.data == out.body;
        if mine && out.mandatory {
            tracing::debug!(
                exchange = out.exchange_name(),
                routing_key = out.routing_key,
                reply_code = returned.reply_code,
                "message returned by the broker"
            );
            return Err(Failure::Undeliverable);
        }
        if mine {
            tracing::warn!(
                reply_code = returned.reply_code,
                "unexpected basic.return on a non-mandatory publish"
            );
        } else {
            // Another publisher's message, surfaced on this confirm (multiple ack).
            returns.route(returned);
        }
    }
    if acked {
        Ok(())
    } else {
        Err(Failure::Nacked)
    }
}

/// How a single publish on a [`crate::subscription::PublishChannel`] ended.
#[derive(Debug)]
pub(crate) enum DirectOutcome {
    /// The broker confirmed it.
    Confirmed,
    /// It was returned: no queue for the routing key.
    Undeliverable,
    /// It may not have been sent (channel closed, nack...): send it through the send connection.
    Failed(String),
}

/// Publish once on `channel` (confirm mode), without declarations or retries.
pub(crate) async fn publish_direct(channel: &Channel, out: &Outgoing<'_>, returns: &Arc<ReturnRouter>) -> DirectOutcome {
    let properties = message_properties(out.expiration.as_deref());
    let outcome = publish_on(channel, out, properties, returns, |error| Failure::Retryable {
        reason: error.to_string(),
        connection_lost: false,
    })
    .await;
    match outcome {
        Ok(()) => DirectOutcome::Confirmed,
        Err(Failure::Undeliverable) => DirectOutcome::Undeliverable,
        Err(failure) => DirectOutcome::Failed(format!("{failure:?}")),
    }
}

/// Receives final replies that were returned (their queue is missing) but surfaced on another
/// publisher's confirm, to retry them as oslo retries replies to missing queues.
pub(crate) trait ReturnedReplies: Send + Sync + 'static {
    /// `body` is the encoded reply to `msg_id`, published to `reply_q`.
    fn retry_returned_reply(self: Arc<Self>, reply_q: String, msg_id: String, body: Vec<u8>);
}

/// Finishes waiting for a publisher confirm whose publish future was dropped.
struct ConfirmGuard {
    confirm: Option<lapin::PublisherConfirm>,
    returns: Arc<ReturnRouter>,
}

impl Drop for ConfirmGuard {
    fn drop(&mut self) {
        let Some(confirm) = self.confirm.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let returns = self.returns.clone();
        runtime.spawn(async move {
            if let Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) = confirm.await {
                returns.route(returned);
            }
        });
    }
}

/// Routes returned messages that surfaced on another publisher's confirm to their owner.
#[derive(Default)]
pub(crate) struct ReturnRouter {
    calls: Mutex<HashMap<String, oneshot::Sender<()>>>,
    replies: OnceLock<Weak<dyn ReturnedReplies>>,
}

impl std::fmt::Debug for ReturnRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnRouter")
            .field("calls", &self.calls.lock().map(|c| c.len()).unwrap_or(0))
            .finish()
    }
}

impl ReturnRouter {
    /// Where returned replies go (set once by the driver).
    pub(crate) fn set_reply_handler(&self, handler: Weak<dyn ReturnedReplies>) {
        let _ = self.replies.set(handler);
    }

    /// Watch for the request of call `msg_id` being returned; register before publishing.
    pub(crate) fn watch_call(&self, msg_id: &str) -> CallWatch<'_> {
        let (sender, receiver) = oneshot::channel();
        self.calls
            .lock()
            .expect("return router poisoned")
            .insert(msg_id.to_string(), sender);
        CallWatch {
            router: self,
            msg_id: msg_id.to_string(),
            receiver,
        }
    }

    fn route(&self, returned: BasicReturnMessage) {
        let delivery = returned.delivery;
        let fields = codec::decode_body(&delivery.data).ok();
        let msg_id = fields
            .as_ref()
            .and_then(|f| f.get("_msg_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if delivery.exchange.as_str().is_empty() {
            // A reply or heartbeat to a missing reply queue.
            let ending = fields
                .as_ref()
                .and_then(|f| f.get("ending"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match (ending, msg_id, self.replies.get().and_then(Weak::upgrade)) {
                (true, Some(msg_id), Some(handler)) => {
                    tracing::debug!(routing_key = %delivery.routing_key, "returned reply routed to the reply retrier");
                    handler.retry_returned_reply(delivery.routing_key.to_string(), msg_id, delivery.data);
                }
                _ => tracing::debug!(routing_key = %delivery.routing_key, "dropping a returned heartbeat"),
            }
            return;
        }
        let waiter = msg_id.and_then(|id| self.calls.lock().expect("return router poisoned").remove(&id));
        match waiter {
            Some(waiter) => {
                tracing::debug!(routing_key = %delivery.routing_key, "returned request routed to its call");
                let _ = waiter.send(());
            }
            None => tracing::warn!(
                exchange = %delivery.exchange,
                routing_key = %delivery.routing_key,
                "a returned message could not be attributed to its sender"
            ),
        }
    }
}

/// A call's registration for returned-request notifications; unregisters on drop.
pub(crate) struct CallWatch<'a> {
    router: &'a ReturnRouter,
    msg_id: String,
    receiver: oneshot::Receiver<()>,
}

impl CallWatch<'_> {
    /// Resolves if the call's request was returned by the broker (never otherwise).
    pub(crate) async fn returned(&mut self) {
        if (&mut self.receiver).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for CallWatch<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.router.calls.lock() {
            calls.remove(&self.msg_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_match_the_capture() {
        let p = message_properties(None);
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(p.content_encoding().as_ref().map(|s| s.as_str()), Some("utf-8"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.priority(), Some(0));
        assert_eq!(p.headers().as_ref().map(|h| h.inner().len()), Some(0));
        assert_eq!(*p.expiration(), None);
        let p = message_properties(Some("10000"));
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("10000"));
    }
}
