//! The client side: one DEALER socket per server address, connected on first use and cached
//! (oslo's "static" direct connections), with a task per socket that routes replies and
//! heartbeats to the waiting calls, and credits to the connection's window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use oslo_core::clip::clip;
use oslo_core::reply::ReplyWaiters;
use oslo_core::{Error, Result};
use tokio::sync::{watch, Mutex as AsyncMutex, Semaphore, SemaphorePermit};
use tokio::time::Instant;
use zeromq::{DealerSendHalf, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::frames::{self, Response};

/// How long a server address that could not be reached is tried last.
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// Flow-control counters of a driver's connections (see `zmq_hwm`, `zmq_hwm_bytes` and
/// [`ZmqDriver::flow_stats`](crate::ZmqDriver::flow_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Requests sent on the open connections and not yet taken by their servers.
    pub in_flight: usize,
    /// Their bytes (each request's frames, capped at `zmq_hwm_bytes`).
    pub in_flight_bytes: usize,
    /// The most requests that were ever in flight on one connection of this driver.
    pub peak_in_flight: usize,
    /// The most bytes that were ever in flight on one connection of this driver.
    pub peak_in_flight_bytes: usize,
    /// Sends waiting for room right now.
    pub waiting: usize,
}

/// The driver-wide counters behind [`FlowStats`] (in flight is summed over the live links).
#[derive(Debug, Default)]
struct FlowCounters {
    peak_in_flight: AtomicUsize,
    peak_in_flight_bytes: AtomicUsize,
    waiting: AtomicUsize,
}

/// The high-water marks of one connection: a permit per request and per byte (each `None`
/// when not limited), taken by every request sent and given back by the server's credits.
struct Window {
    limits: frames::Limits,
    messages: Option<Semaphore>,
    bytes: Option<Semaphore>,
    in_flight: AtomicUsize,
    in_flight_bytes: AtomicUsize,
    counters: Arc<FlowCounters>,
}

impl Window {
    fn new(limits: frames::Limits, counters: Arc<FlowCounters>) -> Self {
        Window {
            limits,
            messages: (limits.messages > 0).then(|| Semaphore::new(limits.messages)),
            bytes: (limits.bytes > 0).then(|| Semaphore::new(limits.bytes)),
            in_flight: AtomicUsize::new(0),
            in_flight_bytes: AtomicUsize::new(0),
            counters,
        }
    }

    /// Take room for a request of `size` bytes, waiting for it until `deadline`. The room is
    /// given back when the returned [`Reserved`] is dropped before [`Reserved::sent`] (the send
    /// failed or was cancelled).
    async fn reserve(&self, endpoint: &str, size: usize, deadline: Option<Instant>) -> Result<Reserved<'_>> {
        let weight = self.limits.weight(size);
        let message = match &self.messages {
            Some(room) => Some(self.acquire(room, 1, endpoint, deadline).await?),
            None => None,
        };
        let bytes = match &self.bytes {
            // The weight is at most the limit, which is at most u32::MAX (zmq_hwm_bytes).
            Some(room) => Some(self.acquire(room, weight as u32, endpoint, deadline).await?),
            None => None,
        };
        // Given back by a credit, not by a drop.
        message.into_iter().chain(bytes).for_each(SemaphorePermit::forget);
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let in_flight_bytes = self.in_flight_bytes.fetch_add(weight, Ordering::AcqRel) + weight;
        self.counters.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        self.counters.peak_in_flight_bytes.fetch_max(in_flight_bytes, Ordering::Relaxed);
        Ok(Reserved {
            window: Some(self),
            weight,
        })
    }

    async fn acquire<'a>(
        &self,
        room: &'a Semaphore,
        permits: u32,
        endpoint: &str,
        deadline: Option<Instant>,
    ) -> Result<SemaphorePermit<'a>> {
        if let Ok(permit) = room.try_acquire_many(permits) {
            return Ok(permit);
        }
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Decrement(&self.counters.waiting);
        let acquire = room.acquire_many(permits);
        let acquired = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire).await.map_err(|_| {
                Error::timeout(format!(
                    "timed out waiting for room to send to {endpoint}: the server has not taken the requests already sent (zmq_hwm, zmq_hwm_bytes)"
                ))
            })?,
            None => acquire.await,
        };
        Ok(acquired.expect("window semaphore never closed"))
    }

    /// The server took `messages` more requests weighing `bytes`: give their room back (never
    /// more than is in flight, whatever a peer claims).
    fn credit(&self, messages: usize, bytes: usize) {
        if let Some(room) = &self.messages {
            room.add_permits(take_at_most(&self.in_flight, messages));
        } else {
            take_at_most(&self.in_flight, messages);
        }
        if let Some(room) = &self.bytes {
            room.add_permits(take_at_most(&self.in_flight_bytes, bytes));
        } else {
            take_at_most(&self.in_flight_bytes, bytes);
        }
    }
}

/// Subtract up to `wanted` from `counter` (not below 0); returns what was subtracted.
fn take_at_most(counter: &AtomicUsize, wanted: usize) -> usize {
    let mut taken = 0;
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |value| {
        taken = wanted.min(value);
        Some(value - taken)
    });
    taken
}

/// Room taken in a [`Window`] for a request about to be sent.
struct Reserved<'a> {
    window: Option<&'a Window>,
    weight: usize,
}

impl Reserved<'_> {
    /// The request is queued on the socket: its room comes back with the server's credit.
    fn sent(mut self) {
        self.window = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        // Not sent (failed, or the sending future was dropped): give the room back. Should
        // the crate have queued it after all, the server's credit for it is ignored (credits
        // never exceed what is in flight).
        if let Some(window) = self.window.take() {
            window.credit(1, self.weight);
        }
    }
}

/// Decrements a counter when dropped (also when the waiting future is cancelled).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connected DEALER.
pub(crate) struct Link {
    endpoint: String,
    sender: AsyncMutex<DealerSendHalf>,
    alive: AtomicBool,
    /// Becomes true when the connection is lost: calls waiting on it fail at once.
    closed: watch::Receiver<bool>,
    /// `Some` when the server sends credits (and `zmq_hwm` or `zmq_hwm_bytes` is not 0).
    window: Option<Arc<Window>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("endpoint", &self.endpoint)
            .field("usable", &self.usable())
            .finish()
    }
}

impl Link {
    /// Queue `frames` on this connection, first waiting (until `deadline`) for room under the
    /// connection's high-water mark. A timeout is a `MessagingTimeout` (the connection stays
    /// usable); a connection lost meanwhile is a `MessageDeliveryFailure`.
    pub(crate) async fn send(&self, frames: ZmqMessage, deadline: Option<Instant>) -> Result<()> {
        let reserved = match &self.window {
            Some(window) => tokio::select! {
                biased;
                reserved = window.reserve(&self.endpoint, frames::request_size(&frames), deadline) => Some(reserved?),
                _ = self.lost() => {
                    self.alive.store(false, Ordering::SeqCst);
                    return Err(Error::MessageDeliveryFailure {
                        message: format!("connection to {} lost while waiting for room to send", self.endpoint),
                        retryable: true,
                    });
                }
            },
            None => None,
        };
        let result = self.sender.lock().await.send(frames).await;
        match result {
            Ok(()) => {
                if let Some(reserved) = reserved {
                    reserved.sent();
                }
                Ok(())
            }
            Err(err) => {
                self.alive.store(false, Ordering::SeqCst);
                Err(Error::MessageDeliveryFailure {
                    message: format!("send to {} failed: {err}", self.endpoint),
                    retryable: true,
                })
            }
        }
    }

    /// Requests and bytes in flight on this connection (0 without a window).
    fn in_flight(&self) -> (usize, usize) {
        self.window.as_ref().map_or((0, 0), |window| {
            (
                window.in_flight.load(Ordering::Acquire),
                window.in_flight_bytes.load(Ordering::Acquire),
            )
        })
    }

    /// Resolves once the connection is lost.
    pub(crate) async fn lost(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    fn usable(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !*self.closed.borrow()
    }
}

/// The DEALER connections of one driver.
#[derive(Debug)]
pub(crate) struct Connections {
    /// The live connections, for the lock-free (read-locked) common case.
    live: RwLock<HashMap<String, Arc<Link>>>,
    /// One connect at a time per address.
    slots: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    unreachable: Mutex<HashMap<String, std::time::Instant>>,
    waiters: ReplyWaiters,
    connect_timeout: Duration,
    /// `Some((own host, ipc dir))` when same-host servers are reached over `ipc://`.
    ipc: Option<(String, PathBuf)>,
    /// The reader tasks (aborted on cleanup).
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `zmq_hwm` and `zmq_hwm_bytes`: what may be in flight per connection.
    limits: frames::Limits,
    /// Replies over this many bytes are dropped before decoding (0 = no limit).
    max_message_size: usize,
    counters: Arc<FlowCounters>,
}

impl Connections {
    pub(crate) fn new(
        waiters: ReplyWaiters,
        connect_timeout: Duration,
        ipc: Option<(String, PathBuf)>,
        limits: frames::Limits,
        max_message_size: usize,
    ) -> Self {
        Connections {
            live: RwLock::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            waiters,
            connect_timeout,
            ipc,
            readers: Mutex::new(Vec::new()),
            limits,
            counters: Arc::default(),
            max_message_size,
        }
    }

    /// The flow-control counters of the live connections.
    pub(crate) fn flow_stats(&self) -> FlowStats {
        let (in_flight, in_flight_bytes) = self
            .live
            .read()
            .expect("live table poisoned")
            .values()
            .map(|link| link.in_flight())
            .fold((0, 0), |(messages, bytes), (m, b)| (messages + m, bytes + b));
        FlowStats {
            in_flight,
            in_flight_bytes,
            peak_in_flight: self.counters.peak_in_flight.load(Ordering::Relaxed),
            peak_in_flight_bytes: self.counters.peak_in_flight_bytes.load(Ordering::Relaxed),
            waiting: self.counters.waiting.load(Ordering::Relaxed),
        }
    }

    /// Whether `host` failed to connect recently (it is then tried after the others).
    pub(crate) fn recently_unreachable(&self, host: &str) -> bool {
        let mut unreachable = self.unreachable.lock().expect("unreachable table poisoned");
        match unreachable.get(host) {
            Some(at) if at.elapsed() < UNREACHABLE_FOR => true,
            Some(_) => {
                unreachable.remove(host);
                false
            }
            None => false,
        }
    }

    /// The connection to the server registered as `host` (`host:port`), connecting first if
    /// needed, no later than `deadline`.
    pub(crate) async fn link(&self, host: &str, deadline: Option<Instant>) -> Result<Arc<Link>> {
        // Fast path: a live connection, without waiting on the slot's lock.
        if let Some(link) = self.live_link(host) {
            return Ok(link);
        }
        let slot = {
            let mut slots = self.slots.lock().expect("connection table poisoned");
            slots.entry(host.to_string()).or_default().clone()
        };
        let _connecting = slot.lock().await;
        // Another task may have connected while this one waited.
        if let Some(link) = self.live_link(host) {
            return Ok(link);
        }
        match self.connect(host, deadline).await {
            Ok(fresh) => {
                self.unreachable.lock().expect("unreachable table poisoned").remove(host);
                let mut live = self.live.write().expect("live table poisoned");
                // Connections to servers that went away are not kept.
                live.retain(|_, link| link.usable());
                live.insert(host.to_string(), fresh.clone());
                self.slots
                    .lock()
                    .expect("connection table poisoned")
                    .retain(|slot_host, _| slot_host == host || live.contains_key(slot_host));
                Ok(fresh)
            }
            Err(err) => {
                self.live.write().expect("live table poisoned").remove(host);
                self.mark_unreachable(host);
                Err(err)
            }
        }
    }

    /// The cached connection to `host`, if it is still usable.
    fn live_link(&self, host: &str) -> Option<Arc<Link>> {
        self.live
            .read()
            .expect("live table poisoned")
            .get(host)
            .filter(|link| link.usable())
            .cloned()
    }

    /// Try `host` after the others for a while (connecting or sending to it failed).
    pub(crate) fn mark_unreachable(&self, host: &str) {
        self.unreachable
            .lock()
            .expect("unreachable table poisoned")
            .insert(host.to_string(), std::time::Instant::now());
    }

    /// The ZeroMQ endpoint for a record: `ipc://` for this host when its socket file exists.
    async fn endpoint(&self, host: &str) -> Result<String> {
        let (name, port) = host
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .ok_or_else(|| Error::MessageDeliveryFailure {
                message: format!("matchmaker record {host:?} is not host:port"),
                retryable: false,
            })?;
        if let Some((own_host, dir)) = &self.ipc {
            if name == own_host {
                let path = crate::server::ipc_path(dir, port);
                if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    return Ok(format!("ipc://{}", path.display()));
                }
            }
        }
        Ok(format!("tcp://{host}"))
    }

    async fn connect(&self, host: &str, deadline: Option<Instant>) -> Result<Arc<Link>> {
        let endpoint = self.endpoint(host).await?;
        let now = Instant::now();
        let mut limit = self.connect_timeout;
        if let Some(deadline) = deadline {
            limit = limit.min(deadline.saturating_duration_since(now));
        }
        let mut options = SocketOptions::default();
        // Bounded again below; the crate's own limit is a backstop.
        options.connect_timeout(limit + Duration::from_millis(100));
        if self.limits.any() {
            // Tells the server to send credits, and the limits it credits against.
            let identity = frames::client_identity(self.limits).try_into().expect("identity below 255 bytes");
            options.peer_identity(identity);
        }
        let mut socket = zeromq::DealerSocket::with_options(options);
        // The handshake's outcome, with the server's identity: does it send credits?
        let mut monitor = socket.monitor();
        let connected = tokio::time::timeout(limit, socket.connect(&endpoint)).await;
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Err(Error::MessageDeliveryFailure {
                    message: format!("cannot connect to {endpoint}: {err}"),
                    retryable: true,
                })
            }
            Err(_) => {
                return Err(if deadline.is_some_and(|d| Instant::now() >= d) {
                    Error::timeout(format!("timed out connecting to {endpoint}"))
                } else {
                    Error::MessageDeliveryFailure {
                        message: format!("cannot connect to {endpoint} within {limit:?}"),
                        retryable: true,
                    }
                })
            }
        }
        let server_sends_credits = std::iter::from_fn(|| monitor.try_recv().ok())
            .find_map(|event| match event {
                SocketEvent::Connected(_, server) => Some(frames::sends_credits(&server)),
                _ => None,
            })
            .unwrap_or(false);
        drop(monitor);
        let window = (self.limits.any() && server_sends_credits).then(|| Arc::new(Window::new(self.limits, self.counters.clone())));
        if self.limits.any() && window.is_none() {
            tracing::info!(%endpoint, "the server sends no flow-control credits (an older version?): no high-water mark on this connection");
        }
        tracing::debug!(%endpoint, flow_control = window.is_some(), "connected");
        let (sender, mut receiver) = socket.split();
        let (closed_sender, closed) = watch::channel(false);
        let link = Arc::new(Link {
            endpoint: endpoint.clone(),
            sender: AsyncMutex::new(sender),
            alive: AtomicBool::new(true),
            closed,
            window: window.clone(),
        });
        let waiters = self.waiters.clone();
        let max_message_size = self.max_message_size;
        let reader = tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(frames) => match frames::check_size(&frames, max_message_size).and_then(|()| frames::decode_response(frames)) {
                        Ok(Response::Reply(reply)) => {
                            waiters.deliver(*reply);
                        }
                        Ok(Response::Heartbeat(message_id)) => {
                            waiters.deliver(oslo_core::codec::Reply::heartbeat(message_id));
                        }
                        Ok(Response::Credit { messages, bytes }) => match &window {
                            Some(window) => window.credit(messages, bytes),
                            None => tracing::debug!(%endpoint, messages, "credit on a connection without a window; ignored"),
                        },
                        Err(err) => tracing::warn!(%endpoint, error = %clip(&err.to_string()), "dropping a malformed reply"),
                    },
                    Err(err) => {
                        tracing::debug!(%endpoint, error = %err, "connection lost");
                        break;
                    }
                }
            }
            let _ = closed_sender.send(true);
        });
        let mut readers = self.readers.lock().expect("reader list poisoned");
        readers.retain(|task| !task.is_finished());
        readers.push(reader);
        Ok(link)
    }

    /// Close every connection.
    pub(crate) fn close_all(&self) {
        self.live.write().expect("live table poisoned").clear();
        self.slots.lock().expect("connection table poisoned").clear();
        for reader in self.readers.lock().expect("reader list poisoned").drain(..) {
            reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(messages: usize, bytes: usize) -> Window {
        Window::new(frames::Limits { messages, bytes }, Arc::default())
    }

    fn in_flight(window: &Window) -> (usize, usize) {
        (
            window.in_flight.load(Ordering::SeqCst),
            window.in_flight_bytes.load(Ordering::SeqCst),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn room_comes_back_by_credit_or_when_not_sent() {
        let window = window(2, 0);
        let first = window.reserve("e", 10, None).await.unwrap();
        let second = window.reserve("e", 10, None).await.unwrap();
        assert_eq!(in_flight(&window), (2, 20));
        let deadline = Some(Instant::now() + Duration::from_secs(1));
        assert!(
            matches!(window.reserve("e", 10, deadline).await, Err(Error::MessagingTimeout { .. })),
            "full"
        );
        assert_eq!(
            window.counters.waiting.load(Ordering::SeqCst),
            0,
            "the timed-out wait is not counted"
        );
        // Dropped before it was sent (failed, or the sender cancelled): its room comes back.
        drop(second);
        assert_eq!(in_flight(&window), (1, 10));
        assert_eq!(window.messages.as_ref().unwrap().available_permits(), 1);
        // Sent: its room comes back with the server's credit, and never more than in flight.
        first.sent();
        assert_eq!(in_flight(&window), (1, 10));
        window.credit(5, 500);
        assert_eq!(in_flight(&window), (0, 0));
        assert_eq!(window.messages.as_ref().unwrap().available_permits(), 2);
        assert_eq!(window.counters.peak_in_flight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_limited_too_and_a_big_request_goes_alone() {
        let window = window(0, 100);
        let small = window.reserve("e", 60, None).await.unwrap();
        small.sent();
        let deadline = Some(Instant::now() + Duration::from_secs(1));
        assert!(
            matches!(window.reserve("e", 60, deadline).await, Err(Error::MessagingTimeout { .. })),
            "60 + 60 bytes > 100"
        );
        window.reserve("e", 40, None).await.unwrap().sent();
        assert_eq!(in_flight(&window), (2, 100));
        window.credit(2, 100);
        // Bigger than the limit: counts as the whole limit, so it goes when nothing else is out.
        window.reserve("e", 1_000_000, None).await.unwrap().sent();
        assert_eq!(in_flight(&window), (1, 100));
        assert_eq!(window.counters.peak_in_flight_bytes.load(Ordering::SeqCst), 100);
        assert!(window.reserve("e", 1, deadline).await.is_err(), "full");
        window.credit(1, 100);
        assert_eq!(window.bytes.as_ref().unwrap().available_permits(), 100);
    }
}
