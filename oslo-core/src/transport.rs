//! `Transport`, the driver registry and `get_transport(url)`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::driver::{Capabilities, Driver};
use crate::error::{Error, Result};
use crate::url::TransportUrl;

/// The transport URL oslo uses when none is configured.
pub const DEFAULT_TRANSPORT_URL: &str = "rabbit://";

/// Driver names this project knows, with the Cargo feature of the `oslo-messaging` crate that
/// compiles each in. Used to tell a user how to get a driver that is not compiled in.
pub const KNOWN_DRIVERS: &[(&str, &str)] = &[
    ("rabbit", "rabbit"),
    ("kombu", "rabbit"),
    ("amqp", "amqp1"),
    ("zmq", "zmq"),
    ("fake", "fake"),
];

/// Settings that apply to every driver (oslo's `[DEFAULT]` group), plus driver-group options.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Exchange used when a target has none (`[DEFAULT] control_exchange`, default `openstack`).
    pub control_exchange: String,
    /// Default call timeout (`[DEFAULT] rpc_response_timeout`, 60 s).
    pub rpc_response_timeout: Duration,
    /// Options of the driver's own group (e.g. `[oslo_messaging_rabbit]`), by oslo option
    /// name, as strings. The URL's query overrides them, as in oslo.
    pub driver_options: BTreeMap<String, String>,
    /// The largest message body a listener or a reply waiter accepts, in bytes; a larger one
    /// is logged once and dropped before it is decoded. `0` means no limit. Default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]. oslo has no such option; without one, a few large
    /// messages at once can take a server's memory.
    pub max_message_size: usize,
    /// How long starting a server or a notification listener may wait for the broker before
    /// it fails with a retryable connection error (`None`: as long as it takes, as oslo
    /// waits). Default [`DEFAULT_START_TIMEOUT`].
    pub start_timeout: Option<Duration>,
}

/// The default [`TransportConfig::start_timeout`]: 60 s. A service started while its broker is
/// down then exits with the connection error (for its supervisor to restart it) instead of
/// hanging without a word.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The default [`TransportConfig::max_message_size`]: 16 MiB, RabbitMQ 4.0's own default
/// `max_message_size` (3.x allowed 128 MiB), far above what OpenStack services send.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            control_exchange: "openstack".into(),
            rpc_response_timeout: Duration::from_secs(60),
            driver_options: BTreeMap::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            start_timeout: Some(DEFAULT_START_TIMEOUT),
        }
    }
}

impl TransportConfig {
    /// The driver options merged with the URL's query (the query wins).
    pub fn merged_driver_options(&self, url: &TransportUrl) -> BTreeMap<String, String> {
        let mut merged = self.driver_options.clone();
        merged.extend(url.query.iter().map(|(k, v)| (k.clone(), v.clone())));
        merged
    }
}

/// Builds a driver for a parsed URL.
pub type DriverFactory = Arc<dyn Fn(&TransportUrl, &TransportConfig) -> Result<Arc<dyn Driver>> + Send + Sync>;

/// Maps driver names (URL schemes up to `+`) to factories.
///
/// Core depends on no driver; the `oslo-messaging` facade registers the compiled-in ones
/// (`install_default_drivers`). A registry of your own can be passed to
/// [`DriverRegistry::get_transport`], e.g. to add a custom driver in tests.
#[derive(Default)]
pub struct DriverRegistry {
    factories: RwLock<BTreeMap<String, DriverFactory>>,
}

impl fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverRegistry").field("drivers", &self.drivers()).finish()
    }
}

impl DriverRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry `get_transport` uses.
    pub fn global() -> &'static DriverRegistry {
        static GLOBAL: OnceLock<DriverRegistry> = OnceLock::new();
        GLOBAL.get_or_init(DriverRegistry::new)
    }

    /// Register (or replace) the factory for driver `name`.
    pub fn register<F>(&self, name: &str, factory: F)
    where
        F: Fn(&TransportUrl, &TransportConfig) -> Result<Arc<dyn Driver>> + Send + Sync + 'static,
    {
        self.factories
            .write()
            .expect("registry poisoned")
            .insert(name.to_string(), Arc::new(factory));
    }

    /// Register `name` as known but unusable: building it fails with a `DriverLoadFailure`
    /// carrying `reason` (for drivers that are not implemented yet, so none pretends to work).
    pub fn register_unavailable(&self, name: &str, reason: &'static str) {
        let driver = name.to_string();
        self.register(name, move |_url, _config| {
            Err(Error::DriverLoadFailure {
                driver: driver.clone(),
                reason: reason.to_string(),
                available: Vec::new(),
                hint: None,
            })
        });
    }

    /// Whether a driver is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.read().expect("registry poisoned").contains_key(name)
    }

    /// The registered driver names, sorted.
    pub fn drivers(&self) -> Vec<String> {
        self.factories.read().expect("registry poisoned").keys().cloned().collect()
    }

    /// Parse `url` and build a transport with the default [`TransportConfig`].
    pub fn get_transport(&self, url: &str) -> Result<Transport> {
        self.get_transport_with_config(url, TransportConfig::default())
    }

    /// Parse `url` and build a transport with `config`. An empty URL means `rabbit://`.
    pub fn get_transport_with_config(&self, url: &str, config: TransportConfig) -> Result<Transport> {
        let url = TransportUrl::parse(if url.trim().is_empty() { DEFAULT_TRANSPORT_URL } else { url })?;
        self.build(url, config)
    }

    /// Build a transport for an already parsed URL.
    pub fn build(&self, url: TransportUrl, config: TransportConfig) -> Result<Transport> {
        let name = url.driver().to_string();
        let factory = self.factories.read().expect("registry poisoned").get(&name).cloned();
        let Some(factory) = factory else {
            let hint = KNOWN_DRIVERS.iter().find(|(known, _)| *known == name).map(|(_, feature)| {
                format!("enable the `{feature}` Cargo feature of the `oslo-messaging` crate (and call `oslo_messaging::install_default_drivers()` or use `oslo_messaging::get_transport`)")
            });
            return Err(Error::DriverLoadFailure {
                driver: name,
                reason: "no driver is registered for this scheme".into(),
                available: self.drivers(),
                hint,
            });
        };
        let driver = factory(&url, &config).map_err(|err| match err {
            Error::DriverLoadFailure {
                driver,
                reason,
                available,
                hint,
            } => Error::DriverLoadFailure {
                driver,
                reason,
                available: if available.is_empty() { self.drivers() } else { available },
                hint,
            },
            err @ (Error::Configuration { .. } | Error::InvalidTransportUrl { .. }) => err,
            other => Error::DriverLoadFailure {
                driver: name.clone(),
                reason: other.to_string(),
                available: self.drivers(),
                hint: None,
            },
        })?;
        Ok(Transport::from_driver(driver, url, config))
    }
}

/// Parse `url` and build a transport from the process-wide registry.
///
/// Drivers must have been registered first; the `oslo-messaging` facade's `get_transport`
/// does that for every compiled-in driver.
pub fn get_transport(url: &str) -> Result<Transport> {
    DriverRegistry::global().get_transport(url)
}

/// A handle on a connected (or lazily connecting) driver; cheap to clone and share.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    driver: Arc<dyn Driver>,
    url: TransportUrl,
    config: TransportConfig,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("driver", &self.inner.driver.name())
            .field("url", &self.inner.url.to_string())
            .finish()
    }
}

impl Transport {
    /// Wrap a driver you built yourself.
    pub fn from_driver(driver: Arc<dyn Driver>, url: TransportUrl, config: TransportConfig) -> Self {
        Transport {
            inner: Arc::new(TransportInner { driver, url, config }),
        }
    }

    /// Run a listener's start (`driver.listen...`), bounded by
    /// [`TransportConfig::start_timeout`] for every driver: a driver that honours the timeout
    /// itself returns its own connection error first; past a grace of 5 s more, a retryable
    /// `MessageDeliveryFailure` ends the wait.
    pub(crate) async fn start_listening<T>(&self, what: &str, start: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let Some(timeout) = self.inner.config.start_timeout else {
            return start.await;
        };
        match tokio::time::timeout(timeout + Duration::from_secs(5), start).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::MessageDeliveryFailure {
                message: format!("could not start {what} on {} within {timeout:?} (start_timeout)", self.inner.url),
                retryable: true,
            }),
        }
    }

    /// The driver behind this transport.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }

    /// The URL it was built from (prints without passwords).
    pub fn url(&self) -> &TransportUrl {
        &self.inner.url
    }

    /// The transport-wide configuration.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// What the driver supports.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.driver.capabilities()
    }

    /// Close connections and release resources (oslo `Transport.cleanup`).
    pub async fn cleanup(&self) {
        self.inner.driver.cleanup().await;
    }
}
