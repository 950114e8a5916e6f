//! # driver-rabbit
//!
//! The RabbitMQ (AMQP 0-9-1) driver of the Rust oslo.messaging, on [`lapin`], wire-compatible
//! with Python oslo.messaging 18.3.1: Python and Rust clients and servers can share a broker.
//!
//! * Bodies are oslo envelope 2.0 JSON (Python `json.dumps` style) with the captured AMQP
//!   properties: `content_type=application/json`, `content_encoding=utf-8`, `delivery_mode=2`,
//!   `priority=0`, an empty header table, and `expiration` (ms) on calls.
//! * Topology is oslo's: topic exchange `control_exchange` (or the target's exchange),
//!   `<topic>` and `<topic>.<server>` queues, a `<topic>_fanout` exchange with one private
//!   `<topic>_fanout_<uuid hex>` queue per server, one `reply_<uuid hex>` queue per driver, and
//!   `<topic>.<priority>` notification queues; quorum, HA, durable and TTL options apply as in
//!   oslo (`rabbit_*` and `amqp_*` options, see [`RabbitConfig`]).
//! * Every publish waits for its publisher confirm; calls are published `mandatory`, so a call
//!   to a topic nobody listens on fails at once with `MessageUndeliverable`.
//! * Connections are lazy, fail over across the URL's hosts (`kombu_failover_strategy`) with
//!   oslo's backoff, and restore the reply queue and every listener's queues, bindings and
//!   consumers (same names) after a connection loss.
//! * TLS (`ssl=true`) uses rustls with the *ring* provider: `ssl_ca_file` (PEM) replaces the
//!   bundled webpki roots, `ssl_cert_file` + `ssl_key_file` (PEM, PKCS#8 key) give a client
//!   certificate. TLS is covered by configuration unit tests only; no TLS broker was available
//!   to test against.
//!
//! # Connections, channels and acknowledgements
//!
//! * **Sending**: one connection per driver, opened on the first send. Casts, notifications,
//!   heartbeats and the first call to each exchange (which declares it) share one confirm-mode
//!   channel; every publisher awaits its own confirm without holding a lock, so confirms are
//!   windowed. `at_least_once` casts and call-monitor heartbeats lease a confirm-mode channel of
//!   their own for one publish (see the `publisher` module notes on why returned messages need
//!   this care with lapin).
//! * **Replies** (client side): one connection, one `reply_<uuid hex>` queue per driver,
//!   declared on the first call; replies are acked on arrival without waiting for lapin's I/O
//!   thread and routed with [`oslo_core::reply::ReplyWaiters`]. Calls are published on a
//!   confirm-mode channel of this connection once the send connection has declared their
//!   exchange.
//! * **Listeners**: one connection per `listen` / `listen_for_notifications`.
//!   [`oslo_core::Listener::next`] polls the session's lapin consumers itself (no task or
//!   channel in between), decodes on the server's task and stays cancel safe; after a
//!   reconnect the listener takes over the new session's consumers. Malformed messages (no `application/json`
//!   content type, not JSON, bad envelope) are logged and rejected without requeue; the RPC
//!   server drops repeated `_unique_id`s (see [`oslo_core::codec::DuplicateFilter`]). RPC
//!   requests are acked when the server takes them (before dispatch), notifications when the
//!   listener says so. An RPC listener's replies go out on a confirm-mode channel of its own
//!   connection.
//! * **Why calls and replies ride the consuming connections**: lapin drives each connection
//!   from an OS thread of its own, so every message published on a second connection costs
//!   another thread hand-off (the benchmark measured about a third of an RPC server's CPU per
//!   call). oslo uses separate connections because py-amqp connections are not thread safe;
//!   nothing on the wire depends on it. RabbitMQ's advice to keep publishers and consumers
//!   apart is about resource alarms: a connection that publishes while an alarm is raised is
//!   no longer read, so its acks would wait too. So while the broker reports the connection
//!   `blocked`, and whenever that channel cannot be used or a publish there is not confirmed,
//!   messages go through the send connection instead (a request resent that way keeps its
//!   `_unique_id`, so it is handled once).
//! * `rabbit_qos_prefetch_count` bounds what a listener holds unacknowledged. oslo's default 0
//!   (unlimited) becomes [`DEFAULT_LISTENER_PREFETCH`] (128) for listeners, so that a server
//!   that falls behind leaves the backlog on the broker instead of in its memory (see
//!   [`RabbitConfig::listener_prefetch`]).
//!
//! # Tests
//!
//! Broker tests are gated on `OSLO_TEST_RABBIT_URL` and skip (saying so) without it:
//!
//! ```sh
//! OSLO_TEST_RABBIT_URL=rabbit://guest:guest@127.0.0.1:5672/ cargo test -p driver-rabbit
//! ```
//!
//! The topology and reconnect tests also use `rabbitmqctl` (run as root) when it is available.
//! The workspace's `bench` crate measures latency and throughput against raw lapin and Python
//! (see `BENCHMARKS.md`).
//!
//! ```no_run
//! # async fn demo() -> oslo_core::Result<()> {
//! let registry = oslo_core::DriverRegistry::new();
//! driver_rabbit::RabbitDriver::register(&registry);
//! let transport = registry.get_transport("rabbit://guest:guest@127.0.0.1:5672/")?;
//! # let _ = transport; Ok(()) }
//! ```

#![deny(missing_docs)]

mod config;
mod connect;
mod driver;
mod hosts;
mod listener;
mod publisher;
mod subscription;
mod topology;
mod util;

pub use config::{FailoverStrategy, LoginMethod, RabbitConfig, DEFAULT_LISTENER_PREFETCH, GROUP, OPTION_NAMES};
pub use driver::RabbitDriver;
pub use hosts::{BrokerAddress, DEFAULT_PORT};
pub use publisher::{MAX_UNCONFIRMED, MAX_UNCONFIRMED_BYTES};

/// The transport URL schemes this driver serves (`kombu` is oslo's historical alias).
pub const SCHEMES: &[&str] = &["rabbit", "kombu"];

/// The driver's name, as reported by [`oslo_core::Driver::name`].
pub const DRIVER_NAME: &str = "rabbit";

/// Register [`RabbitDriver`] in `registry` under every name in [`SCHEMES`]
/// (same as [`RabbitDriver::register`]).
pub fn register(registry: &oslo_core::DriverRegistry) {
    RabbitDriver::register(registry);
}
