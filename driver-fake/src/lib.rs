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
//! * all waiting uses tokio primitives, so tests under `tokio::time::pause()` are instant.
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
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use oslo_core::codec::{self, CallFields, JsonMap, Reply};
use oslo_core::reply::ReplyWaiters;
use oslo_core::{
    Capabilities, Driver, DriverRegistry, Error, IncomingMessage, Listener, RemoteError, Result, Retry, SendOptions, Target,
    TransportConfig, TransportUrl,
};
use serde_json::Value;
use tokio::sync::Notify;

/// URL schemes this driver serves.
pub const SCHEMES: &[&str] = &["fake"];

/// Register the fake driver in `registry` under every name in [`SCHEMES`].
pub fn register(registry: &DriverRegistry) {
    for scheme in SCHEMES {
        registry.register(scheme, |url, config| Ok(Arc::new(FakeDriver::new(url, config)) as Arc<dyn Driver>));
    }
}

/// Put raw `body` bytes on queue `queue` of `exchange` on bus `bus` (the host of a
/// `fake://<bus>` URL), as a misbehaving publisher would: for testing how servers and
/// listeners cope with malformed messages. RPC servers listen on queues `<topic>` and
/// `<topic>.<server>`; the default exchange is `openstack`.
pub fn inject_raw(bus: &str, exchange: &str, queue: &str, body: Vec<u8>) {
    Bus::named(bus).queue(exchange, queue).push(body);
}

/// The in-memory driver. Drivers built for the same bus name share messages.
#[derive(Debug)]
pub struct FakeDriver {
    bus: Arc<Bus>,
    control_exchange: String,
    reply_queue: String,
}

impl FakeDriver {
    /// Open (or join) the bus named by `url`: its host, or its virtual host if it has no host.
    pub fn new(url: &TransportUrl, config: &TransportConfig) -> Self {
        FakeDriver {
            bus: Bus::named(&bus_name(url)),
            control_exchange: config.control_exchange.clone(),
            reply_queue: format!("reply_{}", codec::new_id()),
        }
    }

    /// The bus name this driver is attached to.
    pub fn bus_name(&self) -> &str {
        &self.bus.name
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

    fn queue(&self, exchange: &str, name: &str) -> Arc<Queue> {
        let mut state = self.state.lock().expect("bus poisoned");
        state.queues.entry((exchange.to_string(), name.to_string())).or_default().clone()
    }

    fn existing_queue(&self, exchange: &str, name: &str) -> Option<Arc<Queue>> {
        self.state
            .lock()
            .expect("bus poisoned")
            .queues
            .get(&(exchange.to_string(), name.to_string()))
            .cloned()
    }

    fn bind(&self, exchange: &str, routing_key: &str, queue_name: &str) -> Arc<Queue> {
        let queue = self.queue(exchange, queue_name);
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

/// A FIFO queue with competing consumers.
#[derive(Debug, Default)]
struct Queue {
    messages: Mutex<VecDeque<Vec<u8>>>,
    consumers: Mutex<Vec<Weak<Notify>>>,
}

impl Queue {
    fn push(&self, body: Vec<u8>) {
        self.messages.lock().expect("queue poisoned").push_back(body);
        self.wake();
    }

    fn push_front(&self, body: Vec<u8>) {
        self.messages.lock().expect("queue poisoned").push_front(body);
        self.wake();
    }

    fn pop(&self) -> Option<Vec<u8>> {
        self.messages.lock().expect("queue poisoned").pop_front()
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
        let pending = msg_id.as_ref().map(|id| self.bus.replies.register(id.clone()));
        for queue in &queues {
            queue.push(body.clone());
        }
        match pending {
            Some(pending) => pending
                .wait(options.timeout, options.call_monitor_timeout, &self.reply_queue)
                .await
                .map(Some),
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
        self.bus.bind(&exchange, routing_key, routing_key);
        for queue in self.bus.bound_queues(&exchange, routing_key) {
            queue.push(body.clone());
        }
        Ok(())
    }

    async fn listen(&self, target: &Target) -> Result<Box<dyn Listener>> {
        let topic = target.topic.clone().unwrap_or_default();
        let server = target.server.clone().unwrap_or_default();
        let exchange = self.exchange_of(target);
        let fanout = Arc::new(Queue::default());
        {
            let mut state = self.bus.state.lock().expect("bus poisoned");
            state.fanout.entry(topic.clone()).or_default().push(Arc::downgrade(&fanout));
        }
        let queues = vec![
            self.bus.queue(&exchange, &format!("{topic}.{server}")),
            self.bus.queue(&exchange, &topic),
            fanout,
        ];
        Ok(Box::new(FakeListener::new(self.bus.clone(), queues)))
    }

    async fn listen_for_notifications(&self, targets_and_priorities: &[(Target, String)], pool: Option<&str>) -> Result<Box<dyn Listener>> {
        let mut queues = Vec::new();
        for (target, priority) in targets_and_priorities {
            let exchange = self.exchange_of(target);
            let routing_key = format!("{}.{}", target.topic.as_deref().unwrap_or_default(), priority.to_lowercase());
            let queue = self.bus.bind(&exchange, &routing_key, pool.unwrap_or(&routing_key));
            if !queues.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                queues.push(queue);
            }
        }
        Ok(Box::new(FakeListener::new(self.bus.clone(), queues)))
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
}

impl FakeListener {
    fn new(bus: Arc<Bus>, queues: Vec<Arc<Queue>>) -> Self {
        let notify = Arc::new(Notify::new());
        for queue in &queues {
            queue.subscribe(&notify);
        }
        FakeListener {
            bus,
            queues,
            notify,
            stopped: false,
        }
    }

    fn try_take(&mut self) -> Option<Box<dyn IncomingMessage>> {
        for queue in &self.queues {
            while let Some(body) = queue.pop() {
                let decoded = match codec::decode_body(&body) {
                    Ok(map) => codec::decode_request(map),
                    Err(err) => {
                        tracing::warn!(error = %err, "dropping malformed message");
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
        self.queue.push_front(self.body.clone());
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
