//! # driver-amqp1: the AMQP 1.0 driver (`amqp://`)
//!
//! oslo.messaging's AMQP 1.0 driver (removed from Python oslo.messaging in 15.0.0; this follows
//! 14.9.0's `impl_amqp1.py`) on [`fe2o3_amqp`]: call, cast, fanout, server-targeted RPC and
//! notifications with the same semantics as every other driver.
//!
//! ```text
//! amqp://[user:pass@]host[:5672][,[user:pass@]host2[:port]]/[vhost][?option=value&...]
//! ```
//!
//! * **Hosts**: tried in turn, starting at a random one; oslo's backoff between attempts
//!   (`connection_retry_interval` 1 s, `+connection_retry_backoff` 2 s per attempt, at most
//!   `connection_retry_interval_max` 30 s). Default port 5672.
//! * **Options** come from the URL query or `TransportConfig::driver_options`, with oslo's
//!   `[oslo_messaging_amqp]` names and defaults; see [`Amqp1Config`]. An unknown option is a
//!   `ConfigurationError`.
//! * **TLS** (`ssl=true`): rustls with the *ring* provider (no C crypto). `ssl_ca_file` (PEM)
//!   replaces the bundled web PKI roots, `ssl_cert_file` + `ssl_key_file` give a client
//!   certificate; `ssl_verify_vhost` checks the certificate against the vhost name. Encrypted
//!   keys (`ssl_key_password`) are refused with a clear error. TLS is covered by configuration
//!   tests only (no TLS broker here).
//! * **SASL**: PLAIN with the URL's credentials (`user@sasl_default_realm` when a realm is
//!   set), else ANONYMOUS; `sasl_mechanisms` restricts the choice. A refused login is reported
//!   at once (not retried).
//! * Every connection sets **TCP_NODELAY** (fe2o3 does not; without it each request/reply
//!   waits for Nagle + delayed ACK, ~40–90 ms). `idle_timeout` (seconds) is the Open
//!   `idle-time-out`.
//!
//! # Addressing (`addressing_mode`, `pseudo_vhost`, the prefixes)
//!
//! | pattern | `legacy` | `routable` |
//! |---|---|---|
//! | RPC to a topic | `unicast[.vhost].<exchange>.<topic>` | `openstack.org/om/rpc/anycast[/vhost]/<exchange>/<topic>` |
//! | RPC to a server | `exclusive[.vhost].<exchange>.<topic>.<server>` | `openstack.org/om/rpc/unicast[/vhost]/<exchange>/<topic>/<server>` |
//! | fanout | `broadcast[.vhost].<exchange>.<topic>.all` | `openstack.org/om/rpc/multicast[/vhost]/<exchange>/<topic>` |
//! | notification | `unicast[.vhost].<exchange>.<topic>.<priority>` | `openstack.org/om/notify/anycast[/vhost]/<exchange>/<topic>.<priority>` |
//!
//! `addressing_mode=dynamic` (the default) chooses from the peer's Open `product`, as oslo did:
//! legacy for `qpid-cpp` or a peer that does not say, routable otherwise. The vhost goes into
//! addresses with `pseudo_vhost=true` (default), else into the Open `hostname`.
//!
//! Which broker needs which mode:
//! * **qpid-dispatch-router** (qdrouterd ≥ 0.7, brokerless RPC): `routable` (what `dynamic`
//!   picks), with distribution `multicast` for `*/multicast`, `closest` for `*/unicast`,
//!   `balanced` for `*/anycast`. Notifications are dropped when nobody listens.
//! * **qpidd** (≥ 0.34): `legacy` (what `dynamic` picks), with
//!   `queue-patterns=exclusive,unicast` and `topic-patterns=broadcast`.
//! * **RabbitMQ 3.x `rabbitmq_amqp1_0`**: always legacy names (it rejects slash-separated
//!   addresses as `unknown_destination`; `routable` is overridden with a warning), with the
//!   fallback below.
//!
//! On qpid peers, replies come through a receiver with a **dynamic source** (the peer names the
//! address; it changes after a reconnect, as in oslo) and fanout through the multicast address.
//! Those two paths follow oslo but were not tested: no Qpid peer is packaged here.
//!
//! # RabbitMQ 3.x: what it lacks, and the fallback
//!
//! RabbitMQ's plugin has **no dynamic sources** (`amqp:not-implemented`), **no anonymous
//! relay**, ends the **whole session on any link-attach error**, and a receiver on an exchange
//! (`/exchange/X/K`, `/topic/K`) makes a non-exclusive, non-auto-delete `amq.gen-*` queue that
//! **is never deleted**. No AMQP 1.0 operation deletes a queue. So on RabbitMQ (detected from
//! `product` = `RabbitMQ`):
//! * topic, server and notification addresses are **queue names**: senders and receivers use
//!   `/queue/<legacy address>` (created on first attach, kept like oslo's rabbit queues, so
//!   notifications are stored until a listener comes);
//! * the **reply queue** (`amqp1_reply_<uuid hex>`, one per transport) and each server's
//!   **fanout queue** (`broadcast.<exchange>.<topic>.all.<uuid hex>`) are declared over
//!   **AMQP 0-9-1** on the same host and port (lapin), non-durable with `x-expires` 30 min (a
//!   safety net for a crashed process), bound to `amq.direct`, consumed over AMQP 1.0 as
//!   `/amq/queue/<name>`, and **deleted on `cleanup()`**;
//! * replies go to `reply_to` = `/exchange/amq.direct/<reply queue>` and fanout casts to
//!   `/exchange/amq.direct/broadcast.<exchange>.<topic>.all` (that exchange always exists, so
//!   these attaches cannot fail and end a session);
//! * notifications are sent to `/exchange/amq.direct/<notification address>`; the sender first
//!   declares the default notification queue `<notification address>` over AMQP 0-9-1 and binds
//!   it (so notifications wait for a listener, as with oslo's rabbit driver). Listeners without
//!   a pool consume that queue; a **pool** gets one queue named after the pool, bound to each of
//!   its `<topic>.<priority>` addresses (the rabbit driver's layout). Shared queues are kept on
//!   `cleanup()`, as oslo keeps them. Pools are a RabbitMQ-only extension: oslo's AMQP 1.0
//!   driver raised `NotImplementedError`, and so does this one on other peers;
//! * a call to a topic nobody serves waits for its timeout (the queue is created on send), so
//!   `detects_no_listener` is off.
//!
//! [`oslo_core::Driver::capabilities`] is exact once the driver has connected (it knows the
//! peer); before that it assumes a broker (`store_and_forward`, pools) unless
//! `addressing_mode=routable` says it talks to a router.
//!
//! The 0-9-1 side connection uses the default vhost `/` with `pseudo_vhost=true`, else the
//! URL's vhost; with `ssl=true` it uses AMQPS with the web PKI roots.
//!
//! # Messages and settlement (as oslo)
//!
//! * Body: an AMQP value holding a JSON string. Request
//!   `{"request": {method, args, namespace?, version?}, "context": {...}, "call_monitor_timeout": s?}`;
//!   notifications put oslo's 2.0 envelope (`messagingv2`) or the plain dict into `request`.
//!   Reply `{"response": result}` or `{"failure": "<oslo failure JSON>"}`.
//! * Properties: `message_id` (uuid hex; for calls it is the correlation key), `to` = the link
//!   address, `reply_to` on calls, `correlation_id` on replies, header `ttl` = the call timeout.
//!   Call-monitor heartbeats have no body, the `correlation_id`, `ttl` = the monitor timeout.
//! * `pre_settled` (default `rpc-cast,rpc-reply`): casts and replies are sent pre-settled;
//!   calls and notifications wait for `accepted`. `released` (or `modified` without
//!   delivery-failed) is sent again after `link_retry_delay`; `rejected` is a
//!   `MessageDeliveryFailure`. Servers receive unsettled and accept when the message is
//!   acknowledged; `requeue()` releases it. The reply link receives pre-settled.
//! * Credit: `rpc_server_credit` / `notify_server_credit` per server link, refilled on every
//!   accept; `reply_link_credit` on the reply link, refilled by hand at half the window
//!   (fe2o3's automatic credit stalls on pre-settled deliveries).
//! * Duplicates (a message resent after a connection loss) are dropped by `message_id`
//!   (oslo-core's `DuplicateFilter` with its default window, per listener); malformed
//!   messages are logged and settled, never fatal.
//!
//! # Connections and recovery
//!
//! One connection per driver for sending (sender links cached per address, closed after
//! `default_sender_link_timeout` idle), one for the reply link, and one per listener. A lost
//! connection is reopened with backoff (failing over across hosts) and every link is
//! re-attached (RabbitMQ private queues are re-declared first); sends retry within their
//! deadline as `retry` allows and end in success or a typed error (`MessagingTimeout`,
//! `MessageDeliveryFailure`).
//!
//! # Tests
//!
//! ```sh
//! rabbitmq-plugins enable rabbitmq_amqp1_0
//! OSLO_TEST_AMQP1_URL=amqp://guest:guest@127.0.0.1:5672/ cargo test -p driver-amqp1
//! OSLO_TEST_AMQP1_URL=amqp://guest:guest@127.0.0.1:5672/ cargo test -p oslo-tests --test conformance -- amqp1::
//! ```
//!
//! ```no_run
//! # fn demo() -> oslo_core::Result<()> {
//! let registry = oslo_core::DriverRegistry::new();
//! driver_amqp1::register(&registry);
//! let transport = registry.get_transport("amqp://guest:guest@127.0.0.1:5672/?rpc_server_credit=50")?;
//! # let _ = transport; Ok(()) }
//! ```

#![deny(missing_docs)]

mod address;
mod config;
mod connect;
mod driver;
mod listener;
mod rabbit_admin;
mod wire;

pub use address::{style_for, AddressStyle, Addresser, Peer};
pub use config::{AddressingMode, Amqp1Config, GROUP, OPTION_NAMES};
pub use connect::DEFAULT_PORT;
pub use driver::Amqp1Driver;

/// The transport URL schemes this driver serves.
pub const SCHEMES: &[&str] = &["amqp"];

/// The driver's name, as reported by [`oslo_core::Driver::name`].
pub const DRIVER_NAME: &str = "amqp";

/// Register [`Amqp1Driver`] in `registry` under every scheme in [`SCHEMES`].
pub fn register(registry: &oslo_core::DriverRegistry) {
    Amqp1Driver::register(registry);
}

#[cfg(test)]
mod tests {
    #[test]
    fn registers_the_amqp_scheme() {
        let registry = oslo_core::DriverRegistry::new();
        super::register(&registry);
        let transport = registry
            .get_transport("amqp://u:p@127.0.0.1:5672/")
            .expect("driver builds without connecting");
        assert_eq!(transport.driver().name(), "amqp");
        let caps = transport.capabilities();
        assert!(caps.fanout && caps.server_targeting && caps.notifications && caps.requeue && caps.call_monitor);
        assert!(caps.notification_pools && !caps.detects_no_listener);
        let routable = registry.get_transport("amqp://h/?addressing_mode=routable").unwrap();
        assert!(
            !routable.capabilities().store_and_forward,
            "a router drops unconsumed notifications"
        );
    }
}
