//! # driver-fake: an in-memory oslo.messaging driver for unit tests
//!
//! `fake://<bus-name>` gives an isolated in-memory bus per name: `fake://test-a` and
//! `fake://test-b` never see each other, so tests can run in parallel (oslo's fake driver
//! shares one global set of exchanges). Transports opened with the same URL share the bus.
//! `fake:`, `fake:/` and `fake://` all name the default bus.
//!
//! Semantics follow RabbitMQ (and oslo's `impl_fake.py` where RabbitMQ has no say):
//! * every request, reply and notification is encoded with the real oslo codec and decoded
//!   on the other side, so what would fail on the wire fails here too;
//! * a topic queue is shared by the servers of a topic (each request goes to one of them),
//!   `<topic>.<server>` reaches that server, fanout reaches every listening server once;
//! * a call (or an `at_least_once` cast) to a topic nobody has ever listened on fails at
//!   once with `MessageUndeliverable`; a plain cast to it is dropped, as on RabbitMQ;
//! * a notification queue is created by the first notification, so notifications sent
//!   before a listener starts are kept (store and forward); each pool gets its own copy;
//! * `requeue` puts a notification back at the head of its queue;
//! * call-monitor heartbeats are delivered, so `call_monitor_timeout` works;
//! * every queue is bounded (see [below](#bounded-queues)): a send waits for room;
//! * all waiting uses tokio primitives, so tests under `tokio::time::pause()` are instant.
//!
//! # Bounded queues
//!
//! A queue holds at most `fake_max_queue_length` messages (default
//! [`DEFAULT_MAX_QUEUE_LENGTH`], 1000) and `fake_max_queue_bytes` bytes of encoded messages
//! (default [`DEFAULT_MAX_QUEUE_BYTES`], 4 MiB; a bigger message waits for an empty queue and
//! goes alone); `0` = no bound. Set them in the URL's query
//! (`fake://bus?fake_max_queue_length=10`) or in
//! [`TransportConfig::driver_options`](oslo_core::TransportConfig::driver_options) (the query
//! wins). A send (call, cast, fanout, notification) to a full queue **waits** until a listener
//! takes messages from it: backpressure, not an error, so a fast caster cannot run ahead of
//! its servers without bound. The wait counts against the send's timeout (a call's timeout, or
//! [`SendOptions::timeout`] given to [`Driver::send`]) and fails with `MessagingTimeout` when it
//! passes; casts from [`oslo_core::RpcClient`] and notifications have no timeout and wait as
//! long as it takes. A message goes to all of its queues (fanout, notification pools) or, when
//! the timeout passes first, to none.
//!
//! * A queue's bounds are the smallest among the transports that listen on it or send to it.
//! * Listeners hold nothing beyond the queue: servers take a message only when an executor
//!   slot is free, so at most the queue's bounds plus the executor pool are in memory.
//! * Requeued messages and [`inject_raw`] never wait (they may exceed the bounds briefly).
//! * A notification queue nobody consumes fills up to its bounds, then notifiers wait: a test
//!   that sends more notifications than that before its listener starts needs larger bounds
//!   (or `0`). The same holds for a handler that casts to its own full queue.
//! * [`queue_stats`] tells a test how full a queue is, the most it ever held, and how many
//!   sends wait for room.
//!
//! Options this driver does not know are ignored, so the options of another driver's
//! configuration can be passed unchanged when a test swaps its URL for `fake://`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oslo_core::Result<()> {
//! use oslo_core::{context, DriverRegistry, Endpoint, HandlerError, RpcClient, RpcServer, Target};
//! use serde_json::{json, Value};
//!
//! let registry = DriverRegistry::new();
//! driver_fake::register(&registry);
//! let transport = registry.get_transport("fake://doc-example")?;
//! let server = RpcServer::builder(transport.clone(), Target::new("demo").with_server("s1"))
//!     .endpoint(Endpoint::new().method("echo", |_ctxt, args: Value| async move { Ok::<_, HandlerError>(args) }))
//!     .start()
//!     .await?;
//! let client = RpcClient::new(transport, Target::new("demo"));
//! let reply = client.call(&context(json!({})), "echo", json!({"x": 1})).await?;
//! assert_eq!(reply, json!({"x": 1}));
//! server.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use oslo_core::codec::{self, CallFields, JsonMap, Reply};
use oslo_core::reply::ReplyWaiters;
use oslo_core::{
    Capabilities, Driver, DriverRegistry, Error, IncomingMessage, Listener, RemoteError, Result, Retry, SendOptions, Target,
    TransportConfig, TransportUrl,
};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// URL schemes this driver serves.
pub const SCHEMES: &[&str] = &["fake"];

/// The option bounding every queue's length (URL query or driver option): messages, `0` = no
/// bound.
pub const MAX_QUEUE_LENGTH_OPTION: &str = "fake_max_queue_length";

/// The default of `fake_max_queue_length`.
pub const DEFAULT_MAX_QUEUE_LENGTH: usize = 1000;

/// The option bounding every queue's size (URL query or driver option): bytes of encoded
/// messages, `0` = no bound.
pub const MAX_QUEUE_BYTES_OPTION: &str = "fake_max_queue_bytes";

/// The default of `fake_max_queue_bytes` (4 MiB).
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// "No bound" on a queue's length: as many messages as a semaphore can count.
const UNBOUNDED: usize = Semaphore::MAX_PERMITS;

/// "No bound" on a queue's size: as many bytes as one semaphore acquisition can take (4 GiB).
const UNBOUNDED_BYTES: usize = u32::MAX as usize;

/// A queue's bounds (`UNBOUNDED`, `UNBOUNDED_BYTES`: none).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    messages: usize,
    bytes: usize,
}

impl Bounds {
    const NONE: Bounds = Bounds {
        messages: UNBOUNDED,
        bytes: UNBOUNDED_BYTES,
    };
}

/// Register the fake driver in `registry` under every name in [`SCHEMES`].
pub fn register(registry: &DriverRegistry) {
    for scheme in SCHEMES {
        registry.register(scheme, |url, config| Ok(Arc::new(FakeDriver::new(url, config)?) as Arc<dyn Driver>));
    }
}

/// Put raw `body` bytes on queue `queue` of `exchange` on bus `bus` (the host of a
/// `fake://<bus>` URL), as a misbehaving publisher would: for testing how servers and
/// listeners cope with malformed messages. RPC servers listen on queues `<topic>` and
/// `<topic>.<server>`; the default exchange is `openstack`. Never waits, whatever the bound.
pub fn inject_raw(bus: &str, exchange: &str, queue: &str, body: Vec<u8>) {
    Bus::named(bus).queue(exchange, queue, Bounds::NONE).push_unreserved(body, false);
}

/// How full a queue is (see [`queue_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in the queue now.
    pub len: usize,
    /// Their bytes (encoded).
    pub bytes: usize,
    /// The most messages the queue ever held.
    pub peak: usize,
    /// The most bytes the queue ever held.
    pub peak_bytes: usize,
    /// Its bound on messages (`None`: unbounded).
    pub bound: Option<usize>,
    /// Its bound on bytes (`None`: unbounded).
    pub bytes_bound: Option<usize>,
    /// Sends waiting for room now.
    pub waiting: usize,
}

/// How full queue `queue` of `exchange` on bus `bus` is, if it exists (queue names as in
/// [`inject_raw`]; a server's fanout queue is private and not listed).
pub fn queue_stats(bus: &str, exchange: &str, queue: &str) -> Option<QueueStats> {
    Bus::named(bus).existing_queue(exchange, queue).map(|queue| queue.stats())
}

/// The in-memory driver. Drivers built for the same bus name share messages.
#[derive(Debug)]
pub struct FakeDriver {
    bus: Arc<Bus>,
    control_exchange: String,
    reply_queue: String,
    /// `fake_max_queue_length` and `fake_max_queue_bytes`.
    bounds: Bounds,
    /// `TransportConfig::max_message_size`: its listeners drop larger messages undecoded.
    max_message_size: usize,
}

impl FakeDriver {
    /// Open (or join) the bus named by `url`: its host, or its virtual host if it has no host.
    /// Fails with `ConfigurationError` when `fake_max_queue_length` or `fake_max_queue_bytes`
    /// is not a number.
    pub fn new(url: &TransportUrl, config: &TransportConfig) -> Result<Self> {
        let options = config.merged_driver_options(url);
        let bound = |option: &str, default: usize, none: usize, what: &str| -> Result<usize> {
            match options.get(option).map(|v| v.trim()) {
                None => Ok(default),
                Some(value) => match value.parse::<usize>() {
                    Ok(0) => Ok(none),
                    Ok(bound) => Ok(bound.min(none)),
                    Err(_) => Err(Error::configuration(
                        option,
                        format!("{value:?} is not a number of {what} (0 = no bound)"),
                    )),
                },
            }
        };
        let bounds = Bounds {
            messages: bound(MAX_QUEUE_LENGTH_OPTION, DEFAULT_MAX_QUEUE_LENGTH, UNBOUNDED, "messages")?,
            bytes: bound(MAX_QUEUE_BYTES_OPTION, DEFAULT_MAX_QUEUE_BYTES, UNBOUNDED_BYTES, "bytes")?,
        };
        Ok(FakeDriver {
            bus: Bus::named(&bus_name(url)),
            control_exchange: config.control_exchange.clone(),
            reply_queue: format!("reply_{}", codec::new_id()),
            bounds,
            max_message_size: config.max_message_size,
        })
    }

    /// The bus name this driver is attached to.
    pub fn bus_name(&self) -> &str {
        &self.bus.name
    }

    /// The bound on the length of the queues this driver uses (`None`: unbounded).
    pub fn max_queue_length(&self) -> Option<usize> {
        (self.bounds.messages < UNBOUNDED).then_some(self.bounds.messages)
    }

    /// The bound on the size in bytes of the queues this driver uses (`None`: unbounded).
    pub fn max_queue_bytes(&self) -> Option<usize> {
        (self.bounds.bytes < UNBOUNDED_BYTES).then_some(self.bounds.bytes)
    }

    fn exchange_of(&self, target: &Target) -> String {
        target.exchange.clone().unwrap_or_else(|| self.control_exchange.clone())
    }
}

/// `fake://name` and `fake:///name` both name bus `name`; everything else is the default bus.
fn bus_name(url: &TransportUrl) -> String {
    url.hosts
        .iter()
        .find_map(|h| h.hostname.clone())
        .or_else(|| url.virtual_host.clone())
        .unwrap_or_default()
}

/// One isolated message bus.
#[derive(Debug, Default)]
struct Bus {
    name: String,
    state: Mutex<BusState>,
    replies: ReplyWaiters,
}

#[derive(Debug, Default)]
struct BusState {
    /// (exchange, queue name) -> queue. Queue names follow RabbitMQ: `<topic>`,
    /// `<topic>.<server>`, `<topic>.<priority>`, or a pool name.
    queues: HashMap<(String, String), Arc<Queue>>,
    /// Notification routing: (exchange, routing key `<topic>.<priority>`) -> queue names bound.
    bindings: HashMap<(String, String), Vec<String>>,
    /// Fanout: topic -> one private queue per listening server (like `<topic>_fanout_<id>`).
    fanout: HashMap<String, Vec<Weak<Queue>>>,
}

impl Bus {
    fn named(name: &str) -> Arc<Bus> {
        static BUSES: OnceLock<Mutex<HashMap<String, Arc<Bus>>>> = OnceLock::new();
        let mut buses = BUSES.get_or_init(Default::default).lock().expect("bus table poisoned");
        buses
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Bus {
                    name: name.to_string(),
                    ..Bus::default()
                })
            })
            .clone()
    }

    /// Queue `name` of `exchange`, created if needed; its bounds lowered to `bounds` if higher.
    fn queue(&self, exchange: &str, name: &str, bounds: Bounds) -> Arc<Queue> {
        let queue = {
            let mut state = self.state.lock().expect("bus poisoned");
            state
                .queues
                .entry((exchange.to_string(), name.to_string()))
                .or_insert_with(|| Arc::new(Queue::new(name, bounds)))
                .clone()
        };
        queue.limit(bounds);
        queue
    }

    fn existing_queue(&self, exchange: &str, name: &str) -> Option<Arc<Queue>> {
        self.state
            .lock()
            .expect("bus poisoned")
            .queues
            .get(&(exchange.to_string(), name.to_string()))
            .cloned()
    }

    fn bind(&self, exchange: &str, routing_key: &str, queue_name: &str, bounds: Bounds) -> Arc<Queue> {
        let queue = self.queue(exchange, queue_name, bounds);
        let mut state = self.state.lock().expect("bus poisoned");
        let bound = state.bindings.entry((exchange.to_string(), routing_key.to_string())).or_default();
        if !bound.iter().any(|q| q == queue_name) {
            bound.push(queue_name.to_string());
        }
        queue
    }

    fn bound_queues(&self, exchange: &str, routing_key: &str) -> Vec<Arc<Queue>> {
        let state = self.state.lock().expect("bus poisoned");
        state
            .bindings
            .get(&(exchange.to_string(), routing_key.to_string()))
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| state.queues.get(&(exchange.to_string(), n.clone())).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn fanout_queues(&self, topic: &str) -> Vec<Arc<Queue>> {
        let mut state = self.state.lock().expect("bus poisoned");
        let Some(list) = state.fanout.get_mut(topic) else {
            return Vec::new();
        };
        list.retain(|q| q.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A FIFO queue with competing consumers and bounds on its length and size.
///
/// `room` has a permit per free place and `bytes_room` one per free byte: a send takes one
/// place and its weight in bytes (its size, capped at the byte bound), waiting when there are
/// not enough, before it pushes; the pop that takes the message gives them back. Pushes that do
/// not wait (requeue, [`inject_raw`]) take nothing and give nothing back. Lowering a bound
/// below what is already taken leaves a debt that the next pops pay first.
#[derive(Debug)]
struct Queue {
    name: String,
    state: Mutex<QueueState>,
    room: Semaphore,
    bytes_room: Semaphore,
    waiting: AtomicUsize,
    consumers: Mutex<Vec<Weak<Notify>>>,
}

#[derive(Debug)]
struct QueueState {
    messages: VecDeque<Queued>,
    bytes: usize,
    bounds: Bounds,
    /// Places and bytes that pops keep instead of giving back (bounds lowered).
    debt: (usize, usize),
    peak: usize,
    peak_bytes: usize,
}

/// A queued message and the room it holds.
#[derive(Debug)]
struct Queued {
    body: Vec<u8>,
    /// (places, bytes) taken from the semaphores; (0, 0) for pushes that did not wait.
    holds: (usize, usize),
}

/// Room taken in a queue, given back if dropped before it is pushed into.
struct Place<'a> {
    permits: (SemaphorePermit<'a>, Option<SemaphorePermit<'a>>),
    holds: (usize, usize),
}

impl Queue {
    fn new(name: &str, bounds: Bounds) -> Self {
        Queue {
            name: name.to_string(),
            state: Mutex::new(QueueState {
                messages: VecDeque::new(),
                bytes: 0,
                bounds,
                debt: (0, 0),
                peak: 0,
                peak_bytes: 0,
            }),
            room: Semaphore::new(bounds.messages),
            bytes_room: Semaphore::new(bounds.bytes),
            waiting: AtomicUsize::new(0),
            consumers: Mutex::new(Vec::new()),
        }
    }

    /// Lower the bounds to `bounds` (a queue's bounds are the smallest of its users').
    fn limit(&self, bounds: Bounds) {
        let mut state = self.state.lock().expect("queue poisoned");
        if bounds.messages < state.bounds.messages {
            let lower = state.bounds.messages - bounds.messages;
            state.debt.0 += lower - self.room.forget_permits(lower);
            state.bounds.messages = bounds.messages;
        }
        if bounds.bytes < state.bounds.bytes {
            let lower = state.bounds.bytes - bounds.bytes;
            state.debt.1 += lower - self.bytes_room.forget_permits(lower);
            state.bounds.bytes = bounds.bytes;
        }
    }

    /// Room for a message of `size` bytes, waiting for it until `deadline`.
    async fn reserve(&self, size: usize, deadline: Option<Instant>) -> Result<Place<'_>> {
        let weight = size.min(self.state.lock().expect("queue poisoned").bounds.bytes);
        let place = self.acquire(&self.room, 1, deadline).await?;
        // The weight is at most the byte bound, which is at most u32::MAX.
        let bytes = match weight {
            0 => None,
            weight => Some(self.acquire(&self.bytes_room, weight as u32, deadline).await?),
        };
        Ok(Place {
            permits: (place, bytes),
            holds: (1, weight),
        })
    }

    async fn acquire<'a>(&self, room: &'a Semaphore, permits: u32, deadline: Option<Instant>) -> Result<SemaphorePermit<'a>> {
        if let Ok(permit) = room.try_acquire_many(permits) {
            return Ok(permit);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Decrement(&self.waiting);
        let acquired = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, room.acquire_many(permits)).await.map_err(|_| {
                Error::timeout(format!(
                    "timed out waiting for room in queue {:?}: its listeners have not taken the messages already there \
                     ({MAX_QUEUE_LENGTH_OPTION}, {MAX_QUEUE_BYTES_OPTION})",
                    self.name
                ))
            })?,
            None => room.acquire_many(permits).await,
        };
        Ok(acquired.expect("queue semaphore never closed"))
    }

    /// Push `body` into the room taken with [`Queue::reserve`].
    fn push_reserved(&self, body: Vec<u8>, place: Place<'_>) {
        let (place_permit, bytes_permit) = place.permits;
        // The pop that takes the message gives the room back.
        place_permit.forget();
        bytes_permit.into_iter().for_each(SemaphorePermit::forget);
        self.push(Queued { body, holds: place.holds }, false);
    }

    /// Push without waiting for room: at the head (a requeue) or the tail.
    fn push_unreserved(&self, body: Vec<u8>, front: bool) {
        self.push(Queued { body, holds: (0, 0) }, front);
    }

    fn push(&self, queued: Queued, front: bool) {
        {
            let mut state = self.state.lock().expect("queue poisoned");
            state.bytes += queued.body.len();
            if front {
                state.messages.push_front(queued);
            } else {
                state.messages.push_back(queued);
            }
            state.peak = state.peak.max(state.messages.len());
            state.peak_bytes = state.peak_bytes.max(state.bytes);
        }
        self.wake();
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let mut state = self.state.lock().expect("queue poisoned");
        let Queued { body, holds } = state.messages.pop_front()?;
        state.bytes -= body.len();
        let paid = (holds.0.min(state.debt.0), holds.1.min(state.debt.1));
        state.debt = (state.debt.0 - paid.0, state.debt.1 - paid.1);
        self.room.add_permits(holds.0 - paid.0);
        self.bytes_room.add_permits(holds.1 - paid.1);
        Some(body)
    }

    fn stats(&self) -> QueueStats {
        let state = self.state.lock().expect("queue poisoned");
        QueueStats {
            len: state.messages.len(),
            bytes: state.bytes,
            peak: state.peak,
            peak_bytes: state.peak_bytes,
            bound: (state.bounds.messages < UNBOUNDED).then_some(state.bounds.messages),
            bytes_bound: (state.bounds.bytes < UNBOUNDED_BYTES).then_some(state.bounds.bytes),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    fn wake(&self) {
        let mut consumers = self.consumers.lock().expect("queue poisoned");
        consumers.retain(|c| c.strong_count() > 0);
        // Wake every consumer; whoever pops first wins (competing consumers).
        for consumer in consumers.iter().filter_map(Weak::upgrade) {
            consumer.notify_one();
        }
    }

    fn subscribe(&self, notify: &Arc<Notify>) {
        self.consumers.lock().expect("queue poisoned").push(Arc::downgrade(notify));
    }

    fn unsubscribe(&self, notify: &Arc<Notify>) {
        self.consumers
            .lock()
            .expect("queue poisoned")
            .retain(|c| !std::ptr::eq(c.as_ptr(), Arc::as_ptr(notify)));
    }
}

/// Decrements a counter when dropped (also when the waiting future is cancelled).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Put `body` on every queue of `queues`, first waiting (until `deadline`) for a place in each:
/// all of them get it, or, when the deadline passes first, none.
async fn push_all(queues: &[Arc<Queue>], body: Vec<u8>, deadline: Option<Instant>) -> Result<()> {
    let mut places = Vec::with_capacity(queues.len());
    for queue in queues {
        places.push(queue.reserve(body.len(), deadline).await?);
    }
    for (queue, place) in queues.iter().zip(places) {
        queue.push_reserved(body.clone(), place);
    }
    Ok(())
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::all();
        capabilities.durable = false;
        capabilities
    }

    async fn send(&self, target: &Target, context: &JsonMap, message: &JsonMap, options: &SendOptions) -> Result<Option<Value>> {
        // Waiting for room counts against the timeout too.
        let deadline = options.timeout.map(|timeout| Instant::now() + timeout);
        let topic = target.topic.as_deref().unwrap_or_default();
        let exchange = self.exchange_of(target);
        let unique_id = codec::new_id();
        let msg_id = options.wait_for_reply.then(codec::new_id);
        let call = msg_id.as_deref().map(|msg_id| CallFields {
            msg_id,
            reply_q: &self.reply_queue,
            call_monitor_timeout: options.call_monitor_timeout,
        });
        let body = codec::encode_envelope(&codec::encode_request(message, context, call.as_ref(), &unique_id))?;

        let queues = if target.fanout {
            self.bus.fanout_queues(topic)
        } else {
            let name = match &target.server {
                Some(server) => format!("{topic}.{server}"),
                None => topic.to_string(),
            };
            self.bus.existing_queue(&exchange, &name).into_iter().collect()
        };
        if queues.is_empty() {
            if options.wait_for_reply || options.at_least_once {
                return Err(Error::MessageUndeliverable {
                    exchange: if target.fanout { format!("{topic}_fanout") } else { exchange },
                    routing_key: target.server.as_ref().map_or_else(|| topic.to_string(), |s| format!("{topic}.{s}")),
                });
            }
            tracing::debug!(%topic, "no queue bound for cast; dropped as RabbitMQ would");
            return Ok(None);
        }
        for queue in &queues {
            queue.limit(self.bounds);
        }
        let pending = msg_id.as_ref().map(|id| self.bus.replies.register(id.clone()));
        push_all(&queues, body, deadline).await?;
        match pending {
            Some(pending) => {
                let remaining = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
                pending
                    .wait(remaining, options.call_monitor_timeout, &self.reply_queue)
                    .await
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    async fn send_notification(&self, target: &Target, context: &JsonMap, message: &JsonMap, envelope: bool, _retry: Retry) -> Result<()> {
        let routing_key = target.topic.as_deref().unwrap_or_default();
        let exchange = self.exchange_of(target);
        let inner = codec::encode_request(message, context, None, &codec::new_id());
        let body = if envelope {
            codec::encode_envelope(&inner)?
        } else {
            codec::encode_plain(&inner)?
        };
        // Like oslo's rabbit notifier: the default queue exists once someone published.
        self.bus.bind(&exchange, routing_key, routing_key, self.bounds);
        let queues = self.bus.bound_queues(&exchange, routing_key);
        for queue in &queues {
            queue.limit(self.bounds);
        }
        // No timeout: a notification waits for room as long as it takes.
        push_all(&queues, body, None).await
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        let topic = target.topic.clone().unwrap_or_default();
        let server = target.server.clone().unwrap_or_default();
        let exchange = self.exchange_of(target);
        let fanout = Arc::new(Queue::new(&format!("{topic}_fanout"), self.bounds));
        {
            let mut state = self.bus.state.lock().expect("bus poisoned");
            state.fanout.entry(topic.clone()).or_default().push(Arc::downgrade(&fanout));
        }
        let queues = vec![
            self.bus.queue(&exchange, &format!("{topic}.{server}"), self.bounds),
            self.bus.queue(&exchange, &topic, self.bounds),
            fanout,
        ];
        Ok(Box::new(FakeListener::new(self.bus.clone(), queues, self.max_message_size)))
    }

    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>> {
        let mut queues = Vec::new();
        for (target, priority) in targets_and_priorities {
            let exchange = self.exchange_of(target);
            let routing_key = format!("{}.{}", target.topic.as_deref().unwrap_or_default(), priority.to_lowercase());
            let queue = self.bus.bind(&exchange, &routing_key, pool.unwrap_or(&routing_key), self.bounds);
            if !queues.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                queues.push(queue);
            }
        }
        Ok(Box::new(FakeListener::new(self.bus.clone(), queues, self.max_message_size)))
    }

    async fn cleanup(&self) {}
}

/// Consumes from a set of queues, first queue first.
#[derive(Debug)]
struct FakeListener {
    bus: Arc<Bus>,
    queues: Vec<Arc<Queue>>,
    notify: Arc<Notify>,
    stopped: bool,
    /// `TransportConfig::max_message_size` of the listening transport.
    max_message_size: usize,
}

impl FakeListener {
    fn new(bus: Arc<Bus>, queues: Vec<Arc<Queue>>, max_message_size: usize) -> Self {
        let notify = Arc::new(Notify::new());
        for queue in &queues {
            queue.subscribe(&notify);
        }
        FakeListener {
            bus,
            queues,
            notify,
            stopped: false,
            max_message_size,
        }
    }

    fn try_take(&mut self) -> Option<Box<dyn IncomingMessage>> {
        for queue in &self.queues {
            while let Some(body) = queue.pop() {
                let checked = codec::check_message_size(body.len(), self.max_message_size);
                let decoded = match checked.and_then(|()| codec::decode_body(&body)) {
                    Ok(map) => codec::decode_request(map),
                    Err(err) => {
                        tracing::warn!(error = %oslo_core::clip::clip(&err.to_string()), "dropping malformed message");
                        continue;
                    }
                };
                return Some(Box::new(FakeIncoming {
                    bus: self.bus.clone(),
                    queue: queue.clone(),
                    body,
                    request: decoded,
                }));
            }
        }
        None
    }
}

#[async_trait]
impl Listener for FakeListener {
    async fn next(&mut self) -> Option<Box<dyn IncomingMessage>> {
        loop {
            if self.stopped {
                return None;
            }
            if let Some(message) = self.try_take() {
                return Some(message);
            }
            self.notify.notified().await;
        }
    }

    async fn stop(&mut self) {
        self.stopped = true;
        for queue in &self.queues {
            queue.unsubscribe(&self.notify);
        }
    }

    async fn cleanup(&mut self) {
        self.stop().await;
        // Dropping the private fanout queue (held only here) removes it from the bus.
        self.queues.clear();
    }
}

/// A message taken from a fake queue.
#[derive(Debug)]
struct FakeIncoming {
    bus: Arc<Bus>,
    queue: Arc<Queue>,
    body: Vec<u8>,
    request: codec::IncomingRequest,
}

impl FakeIncoming {
    fn send_reply(&self, reply: Reply) -> Result<()> {
        // Round-trip through the codec exactly as a broker hop would.
        let body = reply.encode()?;
        let reply = Reply::from_map(codec::decode_body(&body)?)?;
        self.bus.replies.deliver(reply);
        Ok(())
    }
}

#[async_trait]
impl IncomingMessage for FakeIncoming {
    fn message(&self) -> &JsonMap {
        &self.request.message
    }

    fn context(&self) -> &JsonMap {
        &self.request.context
    }

    fn client_timeout(&self) -> Option<std::time::Duration> {
        self.request.client_timeout
    }

    fn client_timeout_value(&self) -> Value {
        self.request.raw_timeout.clone()
    }

    fn expects_reply(&self) -> bool {
        self.request.msg_id.is_some()
    }

    // The RPC server drops repeated ids itself (one window per server, core's DuplicateFilter).
    fn unique_id(&self) -> Option<&str> {
        self.request.unique_id.as_deref()
    }

    async fn reply(&self, outcome: std::result::Result<Value, RemoteError>) -> Result<()> {
        match &self.request.msg_id {
            Some(msg_id) => self.send_reply(Reply::final_reply(msg_id.clone(), outcome)),
            None => Ok(()),
        }
    }

    async fn heartbeat(&self) -> Result<()> {
        match &self.request.msg_id {
            Some(msg_id) => self.send_reply(Reply::heartbeat(msg_id.clone())),
            None => Ok(()),
        }
    }

    async fn acknowledge(&self) -> Result<()> {
        Ok(())
    }

    async fn requeue(&self) -> Result<()> {
        self.queue.push_unreserved(self.body.clone(), true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oslo_core::{context, Endpoint, HandlerError, RpcClient, RpcServer};
    use serde_json::json;
    use std::time::Duration;

    fn transport(name: &str) -> oslo_core::Transport {
        let registry = DriverRegistry::new();
        register(&registry);
        registry.get_transport(&format!("fake://{name}")).unwrap()
    }

    #[tokio::test]
    async fn buses_are_isolated_by_name() {
        let a = transport("iso-a");
        let b = transport("iso-b");
        let server = RpcServer::builder(a.clone(), Target::new("t").with_server("s"))
            .endpoint(Endpoint::new().method("echo", |_c, v: Value| async move { Ok::<_, HandlerError>(v) }))
            .start()
            .await
            .unwrap();
        let ctxt = context(json!({}));
        assert!(RpcClient::new(a, Target::new("t")).call(&ctxt, "echo", json!({})).await.is_ok());
        let err = RpcClient::new(b, Target::new("t"))
            .call(&ctxt, "echo", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::MessageUndeliverable { .. }), "{err}");
        server.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_are_instant_under_paused_time() {
        let t = transport("paused");
        let server = RpcServer::builder(t.clone(), Target::new("slow").with_server("s"))
            .endpoint(Endpoint::new().method("sleep", |_c, _v: Value| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, HandlerError>(())
            }))
            .start()
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let err = RpcClient::new(t, Target::new("slow"))
            .timeout(Duration::from_secs(30))
            .call(&context(json!({})), "sleep", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        server.stop().await;
    }

    #[tokio::test]
    async fn notifications_store_and_forward_pools_and_requeue() {
        let t = transport("notify");
        let target = Target::new("notifications.info");
        let message = context(json!({"event_type": "e", "priority": "INFO", "payload": {"n": 1}}));
        t.driver()
            .send_notification(&target, &context(json!({"user": "u"})), &message, true, Retry::Forever)
            .await
            .unwrap();
        // Started after the send: still gets it.
        let mut plain = t
            .driver()
            .listen_for_notifications(&[(Target::new("notifications"), "info".into())], None)
            .await
            .unwrap();
        let got = plain.next().await.unwrap();
        assert_eq!(got.message()["payload"], json!({"n": 1}));
        assert_eq!(got.context()["user"], json!("u"));
        // Requeue puts it back.
        got.requeue().await.unwrap();
        let again = plain.next().await.unwrap();
        assert_eq!(again.message()["payload"], json!({"n": 1}));
        // Pools: each pool gets a copy, listeners within a pool share.
        let mut pool_a1 = t
            .driver()
            .listen_for_notifications(&[(Target::new("notifications"), "info".into())], Some("a"))
            .await
            .unwrap();
        let mut pool_b = t
            .driver()
            .listen_for_notifications(&[(Target::new("notifications"), "info".into())], Some("b"))
            .await
            .unwrap();
        t.driver()
            .send_notification(&target, &JsonMap::new(), &message, false, Retry::Forever)
            .await
            .unwrap();
        assert!(pool_a1.next().await.is_some());
        assert!(pool_b.next().await.is_some());
        assert!(plain.next().await.is_some());
    }
}
