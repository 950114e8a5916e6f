//! # driver-zmq
//!
//! The brokerless ZeroMQ driver of the Rust oslo.messaging: oslo's `zmq://` driver (8.1.4,
//! removed from Python oslo.messaging in Stein) in its default *direct* mode, on the pure-Rust
//! [`zeromq`] crate. Services talk to each other directly and find each other through a
//! *matchmaker*.
//!
//! ```no_run
//! # async fn demo() -> oslo_core::Result<()> {
//! let registry = oslo_core::DriverRegistry::new();
//! driver_zmq::register(&registry);
//! let transport = registry.get_transport("zmq+redis://127.0.0.1:6379")?;
//! # let _ = transport; Ok(()) }
//! ```
//!
//! # URLs
//!
//! * `zmq+redis://[:password@]host:6379[/db]` — the Redis matchmaker: servers and clients in
//!   any process on any host that reach the Redis find each other.
//! * `zmq+dummy://[name]` — the in-process matchmaker (oslo's `MatchmakerDummy`): records live
//!   in this process's memory, shared by every transport built from the same URL. **Single
//!   process only**: a server in another process cannot be found through it.
//! * `zmq://` — the matchmaker named by `rpc_zmq_matchmaker` (`redis`, as oslo), with the Redis
//!   at `[matchmaker_redis] host`/`port` (`127.0.0.1:6379`) when the URL names none.
//!
//! Options come from the URL's query or [`oslo_core::TransportConfig::driver_options`] (the
//! query wins), with oslo's names and defaults; an unknown option is a `ConfigurationError`.
//! See [`ZmqConfig`].
//!
//! # How it works (oslo's direct mode)
//!
//! * Every `listen` / `listen_for_notifications` binds one **ROUTER** socket on a random port
//!   in `[rpc_zmq_min_port, rpc_zmq_max_port)` (`49153..65536`) on `rpc_zmq_bind_address`
//!   (`*`), trying `rpc_zmq_bind_port_retries` (100) ports, and also on
//!   `ipc://<rpc_zmq_ipc_dir>/oslo-zmq-<port>.sock` for clients on the same host (a stale
//!   socket file left by a killed process is removed first; a live one is left alone).
//! * It registers `<rpc_zmq_host>:<port>` under `ROUTER/<topic>` and
//!   `ROUTER/<topic>/<server>` (oslo's keys, see [`matchmaker`]), each record expiring
//!   `zmq_target_expire` (300 s) after its last refresh; records are refreshed every
//!   `zmq_target_update` (180 s) and removed when the listener stops. Expired records are
//!   never returned, so a server that died without unregistering stops being used once its
//!   records expire.
//! * Clients keep one **DEALER** per server address (connected on first use; over `ipc://`
//!   when the record's host is this host's `rpc_zmq_host` and the socket file exists, else
//!   `tcp://`). A call or cast goes to one server of the topic, round robin; with `server` set
//!   to a server of that name; a fanout cast sends one copy to every registered server.
//!   A server that cannot be reached is skipped for the next `zmq_failover_connections` (2)
//!   ones and tried last for 5 s.
//! * Notifications: listeners register `<topic>.<priority>` like RPC servers and every
//!   pool-less listener gets every notification; listeners of a pool register under
//!   `POOL/<topic>.<priority>/<pool>` and each pool gets one copy (round robin among its
//!   listeners) — oslo ignored pools; this driver honours them.
//! * Calls and casts to a topic nobody registered fail at once with `MessageUndeliverable`
//!   (calls and `at_least_once` casts) or are dropped (plain casts, fanout, notifications).
//!   A call whose server cannot be reached fails with `MessagingTimeout` (its timeout passed
//!   while connecting) or `MessageDeliveryFailure` (every tried server refused), never later
//!   than its timeout; a call whose connection is lost before the reply fails at once with
//!   `MessageDeliveryFailure`.
//! * Call-monitor heartbeats are oslo's ACK frames (see [`frames`]).
//! * Every connection has high-water marks, `zmq_hwm` and `zmq_hwm_bytes` (see
//!   [Flow control](#flow-control)).
//!
//! # Flow control
//!
//! The zeromq crate has no configurable high-water mark, so the driver keeps its own, per
//! connection (one client DEALER to one server ROUTER):
//!
//! * A client has at most `zmq_hwm` (1000) requests — calls, casts, fanout copies,
//!   notifications — and `zmq_hwm_bytes` (4 MiB) bytes of request frames sent to one server and
//!   not yet *taken* by it (`0` = no limit on that count; a request bigger than
//!   `zmq_hwm_bytes` waits until nothing else is in flight, then goes alone). A further send to
//!   that server **waits for room**: backpressure, not an error. The wait counts against the
//!   send's timeout (a call's timeout, or `SendOptions::timeout` given to a cast) and fails
//!   with `MessagingTimeout` when it passes, without reconnecting or failing over (the server
//!   is slow, not gone); casts from `RpcClient` and notifications carry no timeout and wait
//!   as long as it takes. A connection lost while waiting is reconnected as for any send. A
//!   fanout waits for each server's room; a copy that finds none before the cast's timeout
//!   fails the cast with `MessagingTimeout` (the other copies are sent).
//! * A server takes a request only when the RPC server or notification listener has a free
//!   executor slot, and reads nothing ahead: what it holds is bounded by its executor pool,
//!   what waits for it by its clients' marks (in their memory and the sockets' buffers).
//! * The server gives room back with **credits** (`["", "1.0", "7", <requests>, <bytes>]`,
//!   this driver's own frame, see [`frames`]) for the requests it took — malformed and
//!   duplicate ones too — once a quarter of either of the client's limits is owed, and for
//!   everything owed whenever it has nothing left to read.
//! * Both ends announce that they use credits in their ZMTP identity (exchanged in the
//!   handshake, see [`frames::client_identity`]), so requests, replies and heartbeats are
//!   unchanged on the wire: a client of an older version (or a raw DEALER) gets no credits,
//!   and a server of an older version (or a raw ROUTER) gets no mark from a client of this
//!   one (logged at `info`), as before.
//! * [`ZmqDriver::flow_stats`] reports the requests and bytes in flight, the most ever in
//!   flight on one connection and the sends waiting for room.
//!
//! A client's memory for requests not yet taken is then at most `zmq_hwm_bytes` (or one
//! bigger request) per server it sends to. oslo 8.1.4 had no high-water-mark option; both are
//! this driver's own (`rpc_zmq_topic_backlog`, oslo's limit of a server-side buffer, is
//! accepted with no effect: servers buffer nothing of their own).
//!
//! # Wire format
//!
//! oslo's frames, version `1.0`, JSON payloads (see [`frames`]):
//!
//! ```text
//! DEALER -> ROUTER  ["", "1.0", <type>, <message id>, json([context, message])]
//! ROUTER -> DEALER  ["", "1.0", "5", <message id>, json([result, failure])]   reply
//! ROUTER -> DEALER  ["", "1.0", "6", <message id>]                            heartbeat
//! ROUTER -> DEALER  ["", "1.0", "7", <requests>, <bytes>]                     credit (ours)
//! types: CALL=1 CAST=2 CAST_FANOUT=3 NOTIFY=4 REPLY=5 ACK=6, and this driver's CREDIT=7
//! ZMTP identities: DEALER "oslo-hwm1/<zmq_hwm>/<zmq_hwm_bytes>/<random>",
//!                  ROUTER "oslo-hwm1/<random>"
//! ```
//!
//! `message` is oslo's message dict plus `_unique_id` (and `_timeout` for calls with a
//! call-monitor timeout); `failure` is `null` or oslo's serialized remote exception. Credits
//! go only to DEALERs whose identity asks for them (see [Flow control](#flow-control)). Python
//! oslo.messaging no longer ships a ZeroMQ driver, so nothing outside this project speaks it.
//!
//! # Capabilities and what is not there
//!
//! * **No store-and-forward**, as in oslo: a notification or cast sent while nobody listens
//!   is dropped, and what a server had not read when it stopped is lost.
//!   `Capabilities::store_and_forward`, `requeue` and `durable` are false; the conformance
//!   suite skips exactly those cases.
//! * No authentication or encryption (oslo had none either; the crate has only ZeroMQ's NULL
//!   mechanism, no CURVE or PLAIN): use it on trusted networks only.
//! * Not supported, refused with a `ConfigurationError`: the proxy modes (`use_router_proxy`,
//!   `use_pub_sub`), `use_dynamic_connections`, `rpc_use_acks`, `rpc_zmq_serialization=msgpack`
//!   and the Redis Sentinel matchmaker (`zmq+sentinel://`, `sentinel_hosts`).
//! * Accepted with no effect: `rpc_zmq_contexts`, `rpc_zmq_topic_backlog`, `zmq_linger`,
//!   `rpc_poll_timeout`, `zmq_immediate`, `zmq_tcp_keepalive*`, `rpc_thread_pool_size` (the
//!   RPC server's executor pool is set on the server), `rpc_message_ttl`,
//!   `rpc_ack_timeout_*`, `rpc_retry_attempts`, `subscribe_on`, `sentinel_group_name`,
//!   `wait_timeout`, `check_timeout`; the `retry` of a send (a send tries the servers as
//!   described above).
//! * This driver's own options: `zmq_connect_timeout` (5 s), `zmq_routing_refresh` (how long a
//!   Redis lookup is reused, 1 s; changes made in this process are seen at once),
//!   `zmq_use_ipc` (true), `matchmaker_key_prefix` (empty), `zmq_hwm` (1000) and
//!   `zmq_hwm_bytes` (4 MiB, see [Flow control](#flow-control)).
//!
//! # Limits of the zeromq crate (0.7), and what this driver does about them
//!
//! * **No high-water mark**: the crate queues up to a hard-coded 100,000 messages per peer
//!   before a send waits, whatever their size. The driver's own marks, `zmq_hwm` and
//!   `zmq_hwm_bytes`, keep far fewer there (see [Flow control](#flow-control)); replies are
//!   bounded by the calls waiting for them, credits by the requests taken. With both marks at
//!   0, or towards a server that sends no credits, a client casting faster than a server
//!   handles can have up to 100,000 messages queued per server in its own memory.
//! * **No maximum message size**: a peer can make the crate buffer a message of any size
//!   before this driver sees it. Expose the ports to trusted peers only.
//! * **No reconnect interval and no reconnect for DEALER sockets**: a lost connection is
//!   detected by this driver (the reply reader ends or a send fails) and the next send
//!   connects again. `connect` itself retries until the peer is up, so every connect is
//!   bounded by `zmq_connect_timeout` and the call's remaining timeout.
//! * **No CURVE / PLAIN security** (see above), **no `inproc://`**: same-process peers use
//!   `ipc://` or TCP.
//! * **No linger**: pending outgoing messages are dropped when a driver is cleaned up.
//! * A DEALER send succeeds once queued locally, not once delivered; a cast to a server that
//!   died after its connection was made can be lost silently (calls time out).
//!
//! Memory the driver holds itself is bounded: the Redis lookup cache (10,000 keys), the
//! duplicate window ([`oslo_core::codec::DEFAULT_DUPLICATE_WINDOW`], 4096 ids per listener),
//! one connection per server address with at most `zmq_hwm` requests and `zmq_hwm_bytes`
//! bytes in flight, the credits
//! a listener owes (one count per client), and the calls waiting for replies.
//!
//! # Tests
//!
//! ```sh
//! OSLO_TEST_ZMQ_URL=zmq+redis://127.0.0.1:6379 cargo test -p driver-zmq
//! ```
//!
//! The Redis tests skip (saying so) when `OSLO_TEST_ZMQ_URL` is unset; the `zmq+dummy://`
//! tests always run.

mod client;
mod config;
mod driver;
pub mod frames;
pub mod matchmaker;
mod server;

pub use client::FlowStats;
pub use config::{MatchmakerKind, ZmqConfig, DEFAULT_HWM, DEFAULT_HWM_BYTES, GROUP, MAX_HWM, MAX_HWM_BYTES, OPTION_NAMES};
pub use driver::ZmqDriver;

use oslo_core::DriverRegistry;

/// The URL scheme this driver serves (`zmq`, with the variants `zmq+redis` and `zmq+dummy`).
pub const SCHEMES: &[&str] = &["zmq"];

/// The driver's name, as reported by [`oslo_core::Driver::name`].
pub const DRIVER_NAME: &str = "zmq";

/// Register [`ZmqDriver`] in `registry` (same as [`ZmqDriver::register`]).
pub fn register(registry: &DriverRegistry) {
    ZmqDriver::register(registry);
}
