//! # oslo-messaging
//!
//! OpenStack's oslo.messaging in Rust: **call**, **cast**, **fanout** and server-targeted RPC
//! (plus the notification driver API), wire-compatible with the Python services of a running
//! cloud. This facade re-exports [`oslo_core`] and registers the drivers you enable with Cargo
//! features:
//!
//! | feature | URL schemes | driver crate | status |
//! |---|---|---|---|
//! | `rabbit` (default) | `rabbit://`, `kombu://` | `driver-rabbit` (lapin) | RabbitMQ, wire-compatible with oslo.messaging 18.3.1 |
//! | `fake` (default) | `fake://<bus-name>` | `driver-fake` | in memory, for unit tests |
//! | `amqp1` | `amqp://` | `driver-amqp1` (fe2o3-amqp) | AMQP 1.0: qpidd, qpid-dispatch-router, RabbitMQ 3.x `rabbitmq_amqp1_0` |
//! | `zmq` | `zmq://`, `zmq+redis://`, `zmq+dummy://` | `driver-zmq` (zeromq) | brokerless ZeroMQ, oslo's direct mode, Redis or in-process matchmaker; no store-and-forward |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oslo_messaging::Result<()> {
//! use oslo_messaging::{context, get_transport, Endpoint, HandlerError, RpcClient, RpcServer, Target};
//! use serde_json::{json, Value};
//!
//! let transport = get_transport("fake://readme")?;
//! let server = RpcServer::builder(transport.clone(), Target::new("calc").with_server("calc-1"))
//!     .endpoint(Endpoint::new().method("add", |_ctxt, args: Value| async move {
//!         Ok::<_, HandlerError>(args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0))
//!     }))
//!     .start()
//!     .await?;
//! let client = RpcClient::new(transport, Target::new("calc"));
//! let sum = client.call(&context(json!({"request_id": "req-1"})), "add", json!({"a": 2, "b": 3})).await?;
//! assert_eq!(sum, json!(5));
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub use oslo_core::*;

#[cfg(feature = "amqp1")]
pub use driver_amqp1;
#[cfg(feature = "fake")]
pub use driver_fake;
#[cfg(feature = "rabbit")]
pub use driver_rabbit;
#[cfg(feature = "zmq")]
pub use driver_zmq;

/// Register every compiled-in driver in `registry`.
pub fn install_drivers(registry: &DriverRegistry) {
    #[cfg(feature = "fake")]
    driver_fake::register(registry);
    #[cfg(feature = "rabbit")]
    driver_rabbit::register(registry);
    #[cfg(feature = "amqp1")]
    driver_amqp1::register(registry);
    #[cfg(feature = "zmq")]
    driver_zmq::register(registry);
    let _ = registry;
}

/// Register every compiled-in driver in the process-wide registry (idempotent), as sqlx's
/// `install_default_drivers`.
///
/// The process-wide registry also gets the `fault+<driver>://` wrapper
/// ([`oslo_core::fault`]), so tests can inject delays, drops, duplicates and disconnects by URL,
/// e.g. `fault+fake://bus?fault_drop=0.1&fault_seed=7`:
///
/// ```
/// # #[cfg(feature = "fake")] {
/// let flaky = oslo_messaging::get_transport("fault+fake://doc-bus?fault_drop=0.1&fault_seed=7");
/// assert!(flaky.is_ok());
/// let typo = oslo_messaging::get_transport("fault+fake://doc-bus?fault_dorp=0.1").unwrap_err();
/// assert!(typo.to_string().contains("fault_dorp"), "{typo}");
/// # }
/// ```
pub fn install_default_drivers() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        install_drivers(DriverRegistry::global());
        oslo_core::fault::register(DriverRegistry::global());
    });
}

/// Parse `url` and build a transport with every compiled-in driver available.
///
/// An unknown scheme gives [`Error::DriverLoadFailure`] naming the compiled-in drivers and the
/// Cargo feature that would add the missing one.
pub fn get_transport(url: &str) -> Result<Transport> {
    install_default_drivers();
    oslo_core::get_transport(url)
}

/// [`get_transport`] with transport-wide settings (control exchange, default timeout, driver
/// options by oslo name).
pub fn get_transport_with_config(url: &str, config: TransportConfig) -> Result<Transport> {
    install_default_drivers();
    DriverRegistry::global().get_transport_with_config(url, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scheme_lists_drivers_and_feature() {
        let err = get_transport("nats://127.0.0.1:4222/").unwrap_err();
        let Error::DriverLoadFailure { driver, available, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(driver, "nats");
        #[cfg(feature = "fake")]
        assert!(available.contains(&"fake".to_string()), "{err}");
        #[cfg(feature = "rabbit")]
        assert!(available.contains(&"rabbit".to_string()), "{err}");
    }

    #[cfg(not(feature = "zmq"))]
    #[test]
    fn missing_feature_is_named() {
        let err = get_transport("zmq+redis://127.0.0.1:6379").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`zmq` Cargo feature"), "{text}");
    }

    #[test]
    fn bad_url_is_invalid_transport_url() {
        assert!(matches!(get_transport("::nonsense"), Err(Error::InvalidTransportUrl { .. })));
    }
}
