//! Fault injection: a wrapper driver that delays, drops, duplicates and disconnects, so that
//! applications can test how they cope with a misbehaving broker without one (over `fake://`).
//!
//! Modelled on object_store's `ThrottledStore` and OpenDAL's chaos layer:
//! [`FaultInjectingDriver`] wraps any `Arc<dyn Driver>` and injects, per [`FaultConfig`]:
//!
//! * **delay** (fixed plus uniform jitter) before each send, each delivery to a listener and
//!   each reply;
//! * **drop**: a delivered request or notification is acknowledged and thrown away, as if the
//!   broker lost it (a call then ends in `MessagingTimeout`); replies can be dropped too;
//! * **duplicate**: a delivery is handed to the listener twice, as a broker redelivers after a
//!   reconnect (the RPC server drops the copy by its `_unique_id`);
//! * **disconnect**: after N sends, for a window, or on demand ([`FaultInjectingDriver::disconnect`]),
//!   sends fail with a retryable [`Error::Transport`] once their `retry` budget is spent
//!   (sends with retries left wait and retry, as a real driver does) and listeners deliver
//!   nothing until the link is back.
//!
//! Every random choice comes from one generator seeded by [`FaultConfig::seed`], so a failing
//! test can be replayed: the seed in use is logged and returned by [`FaultInjectingDriver::seed`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oslo_core::Result<()> {
//! use std::time::Duration;
//! use oslo_core::fault::{FaultConfig, FaultInjectingDriver};
//! use oslo_core::{context, DriverRegistry, Endpoint, Error, HandlerError, Retry, RpcClient, RpcServer, Target};
//! use serde_json::{json, Value};
//!
//! let registry = DriverRegistry::new();
//! driver_fake::register(&registry);
//! let transport = registry.get_transport("fake://fault-doc-example")?;
//!
//! // The server sees every request twice and answers slowly; it still handles each once.
//! let server_faults = FaultInjectingDriver::new(
//!     transport.driver().clone(),
//!     FaultConfig::new().seed(7).duplicate_probability(1.0).reply_delay(Duration::from_millis(20)),
//! );
//! let server = RpcServer::builder(server_faults.transport(&transport), Target::new("demo").with_server("s1"))
//!     .endpoint(Endpoint::new().method("echo", |_ctxt, args: Value| async move { Ok::<_, HandlerError>(args) }))
//!     .start()
//!     .await?;
//!
//! // The client loses its connection after one send.
//! let client_faults = FaultInjectingDriver::new(transport.driver().clone(), FaultConfig::new().disconnect_after(1));
//! let client = RpcClient::new(client_faults.transport(&transport), Target::new("demo"))
//!     .timeout(Duration::from_secs(5))
//!     .retry(Retry::Limited(0));
//! let ctxt = context(json!({}));
//! assert_eq!(client.call(&ctxt, "echo", json!({"x": 1})).await?, json!({"x": 1}));
//! let err = client.call(&ctxt, "echo", json!({"x": 2})).await.unwrap_err();
//! assert!(matches!(err, Error::Transport { retryable: true, .. }));
//! client_faults.reconnect();
//! assert_eq!(client.call(&ctxt, "echo", json!({"x": 3})).await?, json!({"x": 3}));
//!
//! assert_eq!(server_faults.stats().duplicated, 2);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The same faults can be selected from a URL once [`register`] has added the `fault` scheme:
//! `fault+fake://bus?fault_seed=7&fault_drop=0.1&fault_delay_ms=20` wraps `fake://bus`
//! (see [`FaultConfig::from_query`] for every option).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use crate::codec::JsonMap;
use crate::driver::{Capabilities, Driver, IncomingMessage, Listener, Retry, SendOptions};
use crate::error::{Error, Result};
use crate::remote::RemoteError;
use crate::target::Target;
use crate::transport::{DriverRegistry, Transport};
use crate::url::TransportUrl;

/// What to inject, built with chained setters. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    seed: Option<u64>,
    send_delay: Duration,
    delivery_delay: Duration,
    reply_delay: Duration,
    jitter: Duration,
    drop_probability: f64,
    drop_reply_probability: f64,
    duplicate_probability: f64,
    disconnect_after: Option<u64>,
    disconnect_for: Option<Duration>,
    retry_interval: Option<Duration>,
}

/// How often a send with retries left checks whether the link is back, unless configured.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(50);

fn probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

impl FaultConfig {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seed the random generator, to replay a run exactly (default: a random seed, logged).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The same fixed delay before every send, delivery and reply.
    pub fn delay(self, delay: Duration) -> Self {
        self.send_delay(delay).delivery_delay(delay).reply_delay(delay)
    }

    /// Delay each send (call, cast, notification) before it reaches the inner driver.
    pub fn send_delay(mut self, delay: Duration) -> Self {
        self.send_delay = delay;
        self
    }

    /// Delay each message a listener takes before handing it over.
    pub fn delivery_delay(mut self, delay: Duration) -> Self {
        self.delivery_delay = delay;
        self
    }

    /// Delay each reply (and heartbeat) a server sends.
    pub fn reply_delay(mut self, delay: Duration) -> Self {
        self.reply_delay = delay;
        self
    }

    /// Add a uniformly random extra delay in `[0, jitter)` to every delay above that is set.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Probability (0 to 1) that a delivered request or notification is lost: acknowledged
    /// and never handed to the listener.
    pub fn drop_probability(mut self, p: f64) -> Self {
        self.drop_probability = probability(p);
        self
    }

    /// Probability (0 to 1) that a server's final reply is lost on its way to the caller.
    pub fn drop_reply_probability(mut self, p: f64) -> Self {
        self.drop_reply_probability = probability(p);
        self
    }

    /// Probability (0 to 1) that a delivery is handed to the listener a second time, as a
    /// broker redelivers after a lost acknowledgement.
    pub fn duplicate_probability(mut self, p: f64) -> Self {
        self.duplicate_probability = probability(p);
        self
    }

    /// Lose the connection once `sends` sends (calls, casts, notifications) went through.
    pub fn disconnect_after(mut self, sends: u64) -> Self {
        self.disconnect_after = Some(sends);
        self
    }

    /// How long an automatic disconnect ([`FaultConfig::disconnect_after`]) lasts
    /// (default: until [`FaultInjectingDriver::reconnect`]).
    pub fn disconnect_for(mut self, window: Duration) -> Self {
        self.disconnect_for = Some(window);
        self
    }

    /// How often a send with retries left tries again while disconnected (default 50 ms).
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = Some(interval);
        self
    }

    /// Read faults from `fault_*` URL query options, leaving the others alone:
    /// `fault_seed`, `fault_delay_ms` (all three delays), `fault_send_delay_ms`,
    /// `fault_delivery_delay_ms`, `fault_reply_delay_ms`, `fault_jitter_ms`, `fault_drop`,
    /// `fault_drop_reply`, `fault_duplicate` (probabilities), `fault_disconnect_after`,
    /// `fault_disconnect_for_ms`, `fault_retry_interval_ms`. An unknown `fault_*` option or a
    /// bad value is a [`Error::Configuration`].
    pub fn from_query(query: &BTreeMap<String, String>) -> Result<Self> {
        let mut config = FaultConfig::new();
        for (key, value) in query.iter().filter(|(key, _)| key.starts_with("fault_")) {
            let number = || -> Result<u64> {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| Error::configuration(key.as_str(), format!("expected a whole number, got {value:?}")))
            };
            let millis = || number().map(Duration::from_millis);
            let chance = || -> Result<f64> {
                match value.trim().parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(Error::configuration(
                        key.as_str(),
                        format!("expected a probability between 0 and 1, got {value:?}"),
                    )),
                }
            };
            config = match key.as_str() {
                "fault_seed" => config.seed(number()?),
                "fault_delay_ms" => config.delay(millis()?),
                "fault_send_delay_ms" => config.send_delay(millis()?),
                "fault_delivery_delay_ms" => config.delivery_delay(millis()?),
                "fault_reply_delay_ms" => config.reply_delay(millis()?),
                "fault_jitter_ms" => config.jitter(millis()?),
                "fault_drop" => config.drop_probability(chance()?),
                "fault_drop_reply" => config.drop_reply_probability(chance()?),
                "fault_duplicate" => config.duplicate_probability(chance()?),
                "fault_disconnect_after" => config.disconnect_after(number()?),
                "fault_disconnect_for_ms" => config.disconnect_for(millis()?),
                "fault_retry_interval_ms" => config.retry_interval(millis()?),
                other => return Err(Error::configuration(other, "unknown fault injection option")),
            };
        }
        Ok(config)
    }
}

/// How many faults were injected so far (to check a test really exercised them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultStats {
    /// Sends that reached the inner driver.
    pub sends: u64,
    /// Sends failed with an injected disconnect error.
    pub sends_failed: u64,
    /// Messages handed to listeners (duplicates included).
    pub deliveries: u64,
    /// Deliveries dropped.
    pub dropped: u64,
    /// Deliveries handed over a second time.
    pub duplicated: u64,
    /// Replies dropped.
    pub replies_dropped: u64,
    /// Sends, deliveries and replies that were delayed.
    pub delayed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sends: AtomicU64,
    sends_failed: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    replies_dropped: AtomicU64,
    delayed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// SplitMix64: a tiny, well-distributed generator; enough for fault decisions and
/// reproducible from its seed without pulling in a random-number crate.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The connection as the wrapper pretends it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Down until this instant.
    DownUntil(Instant),
    /// Down until `reconnect()`.
    Down,
}

/// State shared by the driver, its listeners and their messages.
struct Faults {
    config: FaultConfig,
    seed: u64,
    rng: Mutex<SplitMix64>,
    link: Mutex<Link>,
    sends_attempted: AtomicU64,
    auto_disconnect_fired: AtomicBool,
    counters: Counters,
}

impl Faults {
    fn chance(&self, p: f64) -> bool {
        // Draw only for real probabilities, so that enabling one fault does not shift the
        // sequence of another.
        p >= 1.0 || (p > 0.0 && self.rng.lock().expect("fault rng poisoned").next_f64() < p)
    }

    fn delay_of(&self, base: Duration) -> Duration {
        if base.is_zero() {
            return base;
        }
        let jitter = self.config.jitter;
        if jitter.is_zero() {
            return base;
        }
        let fraction = self.rng.lock().expect("fault rng poisoned").next_f64();
        base + jitter.mul_f64(fraction)
    }

    async fn delay(&self, base: Duration) {
        let delay = self.delay_of(base);
        if !delay.is_zero() {
            bump(&self.counters.delayed);
            tokio::time::sleep(delay).await;
        }
    }

    fn link_is_up(&self) -> bool {
        let mut link = self.link.lock().expect("fault link poisoned");
        match *link {
            Link::Up => true,
            Link::DownUntil(until) if Instant::now() >= until => {
                *link = Link::Up;
                true
            }
            _ => false,
        }
    }

    fn set_link(&self, state: Link) {
        *self.link.lock().expect("fault link poisoned") = state;
    }

    /// Count a send attempt and fire the automatic disconnect once its threshold is passed.
    fn note_send_attempt(&self) {
        let Some(after) = self.config.disconnect_after else { return };
        let attempt = self.sends_attempted.fetch_add(1, Ordering::SeqCst);
        if attempt >= after && !self.auto_disconnect_fired.swap(true, Ordering::SeqCst) {
            let link = match self.config.disconnect_for {
                Some(window) => Link::DownUntil(Instant::now() + window),
                None => Link::Down,
            };
            tracing::info!(after_sends = after, ?link, "fault injection: connection lost");
            self.set_link(link);
        }
    }

    /// Wait for the link as a driver retrying its publish would: up to `retry` retries,
    /// `retry_interval` apart, never past `deadline` (a call's timeout).
    async fn await_link(&self, driver: &'static str, retry: Retry, deadline: Option<Instant>) -> Result<()> {
        let interval = self.config.retry_interval.unwrap_or(DEFAULT_RETRY_INTERVAL);
        let mut attempt = 0u32;
        loop {
            if self.link_is_up() {
                return Ok(());
            }
            attempt = attempt.saturating_add(1);
            if !retry.allows(attempt) {
                bump(&self.counters.sends_failed);
                return Err(Error::transport(
                    driver,
                    format!(
                        "injected fault: connection to the broker lost (gave up after {} retries)",
                        attempt - 1
                    ),
                    true,
                ));
            }
            let wake = Instant::now() + interval;
            match deadline {
                Some(deadline) if deadline <= wake => {
                    tokio::time::sleep_until(deadline).await;
                    if self.link_is_up() {
                        return Ok(());
                    }
                    bump(&self.counters.sends_failed);
                    return Err(Error::timeout(
                        "injected fault: the connection stayed down for the whole call timeout",
                    ));
                }
                _ => tokio::time::sleep_until(wake).await,
            }
        }
    }

    /// Wait until the link is up (listeners stall while disconnected).
    async fn link_up(&self) {
        let interval = self.config.retry_interval.unwrap_or(DEFAULT_RETRY_INTERVAL);
        while !self.link_is_up() {
            tokio::time::sleep(interval).await;
        }
    }
}

/// A driver wrapper that injects faults (see the [module documentation](self)).
///
/// Cheap to clone; clones share the fault state, so a test can keep one to call
/// [`disconnect`](FaultInjectingDriver::disconnect) / [`reconnect`](FaultInjectingDriver::reconnect)
/// and read [`stats`](FaultInjectingDriver::stats) while a transport uses another.
#[derive(Clone)]
pub struct FaultInjectingDriver {
    inner: Arc<dyn Driver>,
    faults: Arc<Faults>,
}

impl fmt::Debug for FaultInjectingDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjectingDriver")
            .field("inner", &self.inner)
            .field("seed", &self.faults.seed)
            .field("config", &self.faults.config)
            .finish()
    }
}

impl FaultInjectingDriver {
    /// Wrap `inner` with the faults of `config`.
    pub fn new(inner: Arc<dyn Driver>, config: FaultConfig) -> Self {
        let seed = config.seed.unwrap_or_else(|| {
            let random = uuid::Uuid::new_v4().as_u128();
            (random >> 64) as u64 ^ random as u64
        });
        tracing::info!(
            seed,
            driver = inner.name(),
            "fault injection enabled (replay with FaultConfig::seed)"
        );
        FaultInjectingDriver {
            inner,
            faults: Arc::new(Faults {
                seed,
                rng: Mutex::new(SplitMix64(seed)),
                link: Mutex::new(Link::Up),
                sends_attempted: AtomicU64::new(0),
                auto_disconnect_fired: AtomicBool::new(false),
                counters: Counters::default(),
                config,
            }),
        }
    }

    /// A transport over this wrapper with `base`'s URL and configuration (usually `base` is
    /// the transport whose driver was wrapped).
    pub fn transport(&self, base: &Transport) -> Transport {
        Transport::from_driver(Arc::new(self.clone()), base.url().clone(), base.config().clone())
    }

    /// The wrapped driver.
    pub fn inner(&self) -> &Arc<dyn Driver> {
        &self.inner
    }

    /// The seed of the fault decisions (to replay a run with [`FaultConfig::seed`]).
    pub fn seed(&self) -> u64 {
        self.faults.seed
    }

    /// Lose the connection until [`FaultInjectingDriver::reconnect`].
    pub fn disconnect(&self) {
        tracing::info!("fault injection: connection lost until reconnect()");
        self.faults.set_link(Link::Down);
    }

    /// Lose the connection for `window`.
    pub fn disconnect_for(&self, window: Duration) {
        tracing::info!(?window, "fault injection: connection lost");
        self.faults.set_link(Link::DownUntil(Instant::now() + window));
    }

    /// Bring the connection back.
    pub fn reconnect(&self) {
        tracing::info!("fault injection: connection back");
        self.faults.set_link(Link::Up);
    }

    /// Whether the injected connection is currently up.
    pub fn is_connected(&self) -> bool {
        self.faults.link_is_up()
    }

    /// The faults injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.faults.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FaultStats {
            sends: read(&c.sends),
            sends_failed: read(&c.sends_failed),
            deliveries: read(&c.deliveries),
            dropped: read(&c.dropped),
            duplicated: read(&c.duplicated),
            replies_dropped: read(&c.replies_dropped),
            delayed: read(&c.delayed),
        }
    }

    fn wrap_listener(&self, inner: Box<dyn Listener>) -> Box<dyn Listener> {
        Box::new(FaultyListener {
            inner,
            faults: self.faults.clone(),
            held: None,
            copies: VecDeque::new(),
        })
    }

    fn check_listen(&self) -> Result<()> {
        if self.faults.link_is_up() {
            Ok(())
        } else {
            Err(Error::transport(
                self.inner.name(),
                "injected fault: connection to the broker lost; cannot subscribe",
                true,
            ))
        }
    }
}

#[async_trait]
impl Driver for FaultInjectingDriver {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn send(&self, target: &Target, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Option<Value>> {
        let started = Instant::now();
        let deadline = options.timeout.filter(|_| options.wait_for_reply).map(|t| started + t);
        self.faults.note_send_attempt();
        self.faults.await_link(self.inner.name(), options.retry, deadline).await?;
        self.faults.delay(self.faults.config.send_delay).await;
        bump(&self.faults.counters.sends);
        // Time spent here comes off the call's timeout: faults never make a call fail later.
        let mut options = options.clone();
        if let Some(deadline) = deadline {
            options.timeout = Some(deadline.saturating_duration_since(Instant::now()));
        }
        self.inner.send(target, context, message, &options).await
    }

    async fn send_notification(&self, target: &Target, context: &JsonMap, message: &JsonMap, envelope: bool, retry: Retry) -> Result<()> {
        self.faults.note_send_attempt();
        self.faults.await_link(self.inner.name(), retry, None).await?;
        self.faults.delay(self.faults.config.send_delay).await;
        bump(&self.faults.counters.sends);
        self.inner.send_notification(target, context, message, envelope, retry).await
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        self.check_listen()?;
        Ok(self.wrap_listener(self.inner.listen(target).await?))
    }

    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>> {
        self.check_listen()?;
        Ok(self.wrap_listener(self.inner.listen_for_notifications(targets_and_priorities, pool).await?))
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// A message taken from the inner listener, held until its delay has passed (kept in the
/// listener, not the future, so that `next` stays cancel safe).
struct Held {
    message: Box<dyn IncomingMessage>,
    ready_at: Instant,
}

struct FaultyListener {
    inner: Box<dyn Listener>,
    faults: Arc<Faults>,
    held: Option<Held>,
    /// Second copies of duplicated deliveries, handed out before anything new.
    copies: VecDeque<Box<dyn IncomingMessage>>,
}

#[async_trait]
impl Listener for FaultyListener {
    async fn next(&mut self) -> Option<Box<dyn IncomingMessage>> {
        loop {
            if self.held.is_none() {
                if let Some(copy) = self.copies.pop_front() {
                    self.faults.link_up().await;
                    bump(&self.faults.counters.deliveries);
                    return Some(copy);
                }
                let message = self.inner.next().await?;
                if self.faults.chance(self.faults.config.drop_probability) {
                    bump(&self.faults.counters.dropped);
                    tracing::info!("fault injection: delivery dropped");
                    if let Err(err) = message.acknowledge().await {
                        tracing::debug!(error = %err, "fault injection: acknowledging a dropped delivery failed");
                    }
                    continue;
                }
                let shared = Arc::new(SharedDelivery {
                    message,
                    settled: AtomicBool::new(false),
                    replied: AtomicBool::new(false),
                });
                let message: Box<dyn IncomingMessage> = Box::new(FaultyIncoming {
                    shared: shared.clone(),
                    faults: self.faults.clone(),
                });
                if self.faults.chance(self.faults.config.duplicate_probability) {
                    bump(&self.faults.counters.duplicated);
                    tracing::info!("fault injection: delivery duplicated");
                    self.copies.push_back(Box::new(FaultyIncoming {
                        shared,
                        faults: self.faults.clone(),
                    }));
                }
                let delay = self.faults.delay_of(self.faults.config.delivery_delay);
                if !delay.is_zero() {
                    bump(&self.faults.counters.delayed);
                }
                self.held = Some(Held {
                    message,
                    ready_at: Instant::now() + delay,
                });
            }
            let ready_at = self.held.as_ref().map(|held| held.ready_at).expect("held message");
            tokio::time::sleep_until(ready_at).await;
            self.faults.link_up().await;
            bump(&self.faults.counters.deliveries);
            return self.held.take().map(|held| held.message);
        }
    }

    async fn stop(&mut self) {
        self.inner.stop().await;
    }

    async fn cleanup(&mut self) {
        self.inner.cleanup().await;
    }
}

/// One delivery of the inner driver, shared by its duplicate copies: only the first
/// acknowledgement (or requeue) and the first reply reach the inner driver, as a broker
/// would accept only one of them.
#[derive(Debug)]
struct SharedDelivery {
    message: Box<dyn IncomingMessage>,
    settled: AtomicBool,
    replied: AtomicBool,
}

struct FaultyIncoming {
    shared: Arc<SharedDelivery>,
    faults: Arc<Faults>,
}

impl fmt::Debug for FaultyIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyIncoming").field("message", &self.shared.message).finish()
    }
}

#[async_trait]
impl IncomingMessage for FaultyIncoming {
    fn message(&self) -> &JsonMap {
        self.shared.message.message()
    }

    fn context(&self) -> &JsonMap {
        self.shared.message.context()
    }

    fn client_timeout(&self) -> Option<Duration> {
        self.shared.message.client_timeout()
    }

    fn client_timeout_value(&self) -> Value {
        self.shared.message.client_timeout_value()
    }

    fn expects_reply(&self) -> bool {
        self.shared.message.expects_reply()
    }

    fn unique_id(&self) -> Option<&str> {
        self.shared.message.unique_id()
    }

    async fn reply(&self, outcome: std::result::Result<Value, RemoteError>) -> Result<()> {
        self.faults.delay(self.faults.config.reply_delay).await;
        if self.faults.chance(self.faults.config.drop_reply_probability) {
            bump(&self.faults.counters.replies_dropped);
            tracing::info!("fault injection: reply dropped");
            return Ok(());
        }
        if self.shared.replied.swap(true, Ordering::SeqCst) {
            // The caller already has its answer from the first copy; a second one is dropped
            // as the caller's driver would ("no calling threads waiting").
            return Ok(());
        }
        self.shared.message.reply(outcome).await
    }

    async fn heartbeat(&self) -> Result<()> {
        self.faults.delay(self.faults.config.reply_delay).await;
        self.shared.message.heartbeat().await
    }

    async fn acknowledge(&self) -> Result<()> {
        if self.shared.settled.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.message.acknowledge().await
    }

    async fn requeue(&self) -> Result<()> {
        if self.shared.settled.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.message.requeue().await
    }
}

/// The URL scheme [`register`] adds: `fault+<inner scheme>://...`.
pub const SCHEME: &str = "fault";

/// Register the `fault` scheme in `registry`: `fault+fake://bus?fault_drop=0.1` builds the
/// `fake://bus` transport from the same registry (without the `fault_*` options) and wraps
/// its driver with [`FaultConfig::from_query`]. The inner driver must be registered too.
pub fn register(registry: &'static DriverRegistry) {
    registry.register(SCHEME, move |url, config| {
        let Some(inner_scheme) = url.transport_variant() else {
            return Err(Error::InvalidTransportUrl {
                reason: "the fault scheme wraps another driver: use fault+<driver>://, e.g. fault+fake://bus".into(),
                url: url.to_string(),
            });
        };
        let faults = FaultConfig::from_query(&url.query)?;
        let inner_url = TransportUrl {
            transport: inner_scheme.to_string(),
            query: url
                .query
                .iter()
                .filter(|(k, _)| !k.starts_with("fault_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..url.clone()
        };
        let inner = registry.build(inner_url, config.clone())?;
        Ok(Arc::new(FaultInjectingDriver::new(inner.driver().clone(), faults)) as Arc<dyn Driver>)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn same_seed_same_decisions() {
        let draws = |seed| {
            let mut rng = SplitMix64(seed);
            (0..64).map(|_| rng.next_f64()).collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        assert!(draws(1).iter().all(|x| (0.0..1.0).contains(x)));
        // Roughly uniform: a fair coin over 10 000 draws lands near half.
        let mut rng = SplitMix64(9);
        let heads = (0..10_000).filter(|_| rng.next_f64() < 0.5).count();
        assert!((4_700..5_300).contains(&heads), "{heads}");
    }

    #[test]
    fn probabilities_are_clamped() {
        let config = FaultConfig::new()
            .drop_probability(7.0)
            .duplicate_probability(-1.0)
            .drop_reply_probability(f64::NAN);
        assert_eq!(config.drop_probability, 1.0);
        assert_eq!(config.duplicate_probability, 0.0);
        assert_eq!(config.drop_reply_probability, 0.0);
    }

    #[test]
    fn query_options() {
        let config = FaultConfig::from_query(&query(&[
            ("fault_seed", "5"),
            ("fault_delay_ms", "20"),
            ("fault_reply_delay_ms", "30"),
            ("fault_jitter_ms", "4"),
            ("fault_drop", "0.25"),
            ("fault_duplicate", "1"),
            ("fault_disconnect_after", "3"),
            ("fault_disconnect_for_ms", "100"),
            ("rabbit_qos_prefetch_count", "10"),
        ]))
        .unwrap();
        assert_eq!(
            config,
            FaultConfig::new()
                .seed(5)
                .delay(Duration::from_millis(20))
                .reply_delay(Duration::from_millis(30))
                .jitter(Duration::from_millis(4))
                .drop_probability(0.25)
                .duplicate_probability(1.0)
                .disconnect_after(3)
                .disconnect_for(Duration::from_millis(100))
        );
        for bad in [("fault_drop", "2"), ("fault_drop", "x"), ("fault_seed", "-1"), ("fault_typo", "1")] {
            let err = FaultConfig::from_query(&query(&[bad])).unwrap_err();
            assert!(matches!(err, Error::Configuration { .. }), "{bad:?}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn link_waits_follow_the_retry_budget() {
        let faults = Faults {
            config: FaultConfig::new().retry_interval(Duration::from_millis(100)),
            seed: 1,
            rng: Mutex::new(SplitMix64(1)),
            link: Mutex::new(Link::DownUntil(Instant::now() + Duration::from_millis(250))),
            sends_attempted: AtomicU64::new(0),
            auto_disconnect_fired: AtomicBool::new(false),
            counters: Counters::default(),
        };
        // No retries: fails at once, retryable.
        let err = faults.await_link("fake", Retry::Limited(0), None).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        // Two retries (200 ms) are not enough for a 250 ms outage ...
        let started = Instant::now();
        assert!(faults.await_link("fake", Retry::Limited(2), None).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        // ... a third one is.
        assert!(faults.await_link("fake", Retry::Limited(1), None).await.is_ok());
        assert_eq!(faults.counters.sends_failed.load(Ordering::Relaxed), 2);
        // A call's deadline bounds the wait with a MessagingTimeout.
        faults.set_link(Link::Down);
        let started = Instant::now();
        let err = faults
            .await_link("fake", Retry::Forever, Some(started + Duration::from_millis(330)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(330));
    }
}
