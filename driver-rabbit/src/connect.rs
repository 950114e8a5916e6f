//! Opening broker connections: failover over the URL's hosts, kombu's retry timeline,
//! TLS, client properties, and the classification of lapin errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use oslo_core::{Error, Retry, TransportUrl};
use tokio::time::Instant;

use crate::config::{FailoverStrategy, RabbitConfig};
use crate::hosts::BrokerAddress;
use crate::DRIVER_NAME;

/// How long one TCP + AMQP handshake may take before the host counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP reply codes this driver looks at.
pub(crate) mod codes {
    /// Login refused, or no permission on a resource.
    pub const ACCESS_REFUSED: u16 = 403;
    /// The exchange or queue does not exist.
    pub const NOT_FOUND: u16 = 404;
    /// Declared with arguments different from the existing entity's.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// No access to the virtual host.
    pub const NOT_ALLOWED: u16 = 530;
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub(crate) fn amqp_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Whether a declare failed only because an existing entity has another `durable` flag
/// (oslo retries such declares non-durable).
pub(crate) fn is_durable_mismatch(error: &lapin::Error) -> bool {
    amqp_code(error) == Some(codes::PRECONDITION_FAILED) && error.to_string().contains("inequivalent arg 'durable'")
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectFailure {
    /// Retrying cannot help (bad credentials, vhost access, TLS files): report at once.
    Fatal(Error),
    /// Try the next host / later.
    Retryable(String),
}

/// Opens connections to the URL's brokers, rotating through them on failure.
#[derive(Debug)]
pub(crate) struct Connector {
    brokers: Vec<BrokerAddress>,
    config: Arc<RabbitConfig>,
    /// Index of the host to try next (the last one that worked, after a success).
    cursor: AtomicUsize,
    /// The transport URL without passwords, for messages.
    url_display: String,
    /// Why the latest connection attempt failed; cleared when one succeeds. An operation that
    /// runs out of time while the broker is unreachable reports this instead of a timeout.
    last_failure: std::sync::Mutex<Option<String>>,
}

impl Connector {
    pub(crate) fn new(url: &TransportUrl, config: Arc<RabbitConfig>) -> Self {
        let brokers = BrokerAddress::from_url(url);
        if config.ssl && !config.ssl_version.is_empty() {
            tracing::info!(ssl_version = %config.ssl_version, "ssl_version is ignored: rustls negotiates TLS 1.2 or 1.3");
        }
        if config.use_queue_manager {
            tracing::warn!("use_queue_manager is not supported by the Rust rabbit driver; random queue names are used");
        }
        Connector {
            brokers,
            config,
            cursor: AtomicUsize::new(0),
            url_display: url.to_string(),
            last_failure: std::sync::Mutex::new(None),
        }
    }

    /// Why the latest connection attempt failed, if the latest one failed.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().expect("last failure poisoned").clone()
    }

    /// The error for an operation whose time ran out while the broker could not be reached
    /// (`None` when the latest connection attempt worked: then it is a real timeout).
    pub(crate) fn unreachable_within(&self, waited: Duration) -> Option<Error> {
        self.last_failure().map(|last| Error::MessageDeliveryFailure {
            message: format!(
                "Unable to connect to AMQP server on {} within {:.1}s: {last}",
                self.url_display,
                waited.as_secs_f64()
            ),
            retryable: true,
        })
    }

    pub(crate) fn config(&self) -> &Arc<RabbitConfig> {
        &self.config
    }

    pub(crate) fn brokers(&self) -> &[BrokerAddress] {
        &self.brokers
    }

    /// The order of hosts for the next round, starting at the cursor (round-robin) or shuffled.
    fn round(&self) -> Vec<usize> {
        let n = self.brokers.len();
        match self.config.kombu_failover_strategy {
            FailoverStrategy::RoundRobin => {
                let start = self.cursor.load(Ordering::Relaxed) % n;
                (0..n).map(|i| (start + i) % n).collect()
            }
            FailoverStrategy::Shuffle => {
                let mut order: Vec<usize> = (0..n).collect();
                crate::util::shuffle(&mut order);
                order
            }
        }
    }

    /// Connect to some broker, trying the hosts in failover order; after each failed round
    /// over all hosts wait `rabbit_retry_interval + rabbit_retry_backoff * (round - 1)` seconds
    /// (at most `rabbit_interval_max`), as kombu's `ensure_connection` does. Each host tried
    /// counts as one attempt against `retry`; `deadline` bounds the whole thing.
    ///
    /// Errors: [`Error::MessageDeliveryFailure`] (retryable) when the attempts run out or the
    /// deadline passes, the fatal error (authentication, TLS files) at once.
    pub(crate) async fn connect(&self, retry: Retry, deadline: Option<Instant>, purpose: &str) -> oslo_core::Result<Connection> {
        let mut attempts: u32 = 0;
        let mut rounds: u32 = 0;
        let mut last_error = String::from("no attempt made");
        loop {
            for index in self.round() {
                if attempts > 0 && !retry.allows(attempts) {
                    return Err(self.exhausted(attempts, &last_error));
                }
                attempts += 1;
                let broker = &self.brokers[index];
                let budget = match deadline {
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(self.exhausted(attempts - 1, &last_error));
                        }
                        left.min(CONNECT_TIMEOUT)
                    }
                    None => CONNECT_TIMEOUT,
                };
                match self.connect_to(broker, budget).await {
                    Ok(connection) => {
                        self.cursor.store(index, Ordering::Relaxed);
                        *self.last_failure.lock().expect("last failure poisoned") = None;
                        tracing::info!(broker = %broker, purpose, "connected to AMQP server");
                        return Ok(connection);
                    }
                    Err(ConnectFailure::Fatal(error)) => {
                        *self.last_failure.lock().expect("last failure poisoned") = Some(error.to_string());
                        tracing::error!(broker = %broker, purpose, error = %error, "AMQP connection refused; not retrying");
                        return Err(error);
                    }
                    Err(ConnectFailure::Retryable(message)) => {
                        self.cursor.store(index + 1, Ordering::Relaxed);
                        tracing::warn!(broker = %broker, purpose, error = %message, "AMQP server is unreachable");
                        last_error = format!("{broker}: {message}");
                        *self.last_failure.lock().expect("last failure poisoned") = Some(last_error.clone());
                    }
                }
            }
            rounds += 1;
            if !retry.allows(attempts) {
                return Err(self.exhausted(attempts, &last_error));
            }
            let interval = self.config.retry_interval(rounds);
            tracing::info!(
                seconds = interval.as_secs_f64(),
                purpose,
                "trying again after a full round over the AMQP servers"
            );
            match deadline {
                Some(deadline) if Instant::now() + interval >= deadline => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(self.exhausted(attempts, &last_error));
                }
                _ => tokio::time::sleep(interval).await,
            }
        }
    }

    /// The error for `attempts` failed connection attempts, the last failing with `last_error`.
    pub(crate) fn exhausted(&self, attempts: u32, last_error: &str) -> Error {
        Error::MessageDeliveryFailure {
            message: format!(
                "Unable to connect to AMQP server on {} after {attempts} tries: {last_error}",
                self.url_display
            ),
            retryable: true,
        }
    }

    /// One handshake with one broker.
    async fn connect_to(&self, broker: &BrokerAddress, budget: Duration) -> Result<Connection, ConnectFailure> {
        let uri = broker.to_amqp_uri(&self.config);
        let tls = self.tls_config().await.map_err(ConnectFailure::Fatal)?;
        let name = self
            .config
            .connection_name
            .clone()
            .unwrap_or_else(|| format!("{}:{}:{}", crate::config::process_name(), std::process::id(), uuid::Uuid::new_v4()));
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime().map_err(|e| ConnectFailure::Fatal(Error::transport(DRIVER_NAME, e, false)))?;
        let attempt = Connection::connect_uri_with_config(uri, properties, tls, runtime);
        match tokio::time::timeout(budget, attempt).await {
            Err(_) => Err(ConnectFailure::Retryable(format!("timed out after {:.1}s", budget.as_secs_f64()))),
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(classify_connect_error(broker, self.config.ssl, &error)),
        }
    }

    /// The TLS settings; the certificate files are read off the async runtime.
    async fn tls_config(&self) -> oslo_core::Result<OwnedTLSConfig> {
        if !self.config.ssl {
            return Ok(OwnedTLSConfig::default());
        }
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || read_tls_files(&config))
            .await
            .map_err(|e| Error::configuration("ssl", format!("reading the TLS files failed: {e}")))?
    }
}

fn read_tls_files(config: &RabbitConfig) -> oslo_core::Result<OwnedTLSConfig> {
    let mut tls = OwnedTLSConfig::default();
    let read = |option: &str, path: &str| std::fs::read(path).map_err(|e| Error::configuration(option, format!("cannot read {path}: {e}")));
    if !config.ssl_ca_file.is_empty() {
        let pem = read("ssl_ca_file", &config.ssl_ca_file)?;
        tls.cert_chain = Some(String::from_utf8(pem).map_err(|_| Error::configuration("ssl_ca_file", "not a PEM text file"))?);
    }
    match (config.ssl_cert_file.is_empty(), config.ssl_key_file.is_empty()) {
        (true, true) => {}
        (false, false) => {
            tls.identity = Some(OwnedIdentity::PKCS8 {
                pem: read("ssl_cert_file", &config.ssl_cert_file)?,
                key: read("ssl_key_file", &config.ssl_key_file)?,
            });
        }
        (true, false) => {
            return Err(Error::configuration(
                "ssl_cert_file",
                "ssl_key_file is set but ssl_cert_file is not",
            ))
        }
        (false, true) => return Err(Error::configuration("ssl_key_file", "ssl_cert_file is set but ssl_key_file is not")),
    }
    Ok(tls)
}

/// What a failed handshake likely means when the two sides do not speak the same protocol:
/// TLS sent to a plain port makes rustls see AMQP bytes ("corrupt message"); plain AMQP sent
/// to a TLS port makes the server answer with a TLS alert (unparsable as AMQP) or hang up.
fn protocol_mismatch_hint(ssl: bool, error: &lapin::Error) -> Option<&'static str> {
    let text = error.to_string();
    if ssl && (text.contains("corrupt message") || text.contains("InvalidContentType") || text.contains("InvalidMessage")) {
        return Some("the broker does not speak TLS on this port: use its TLS port (5671 by default) or set ssl=false");
    }
    if !ssl && matches!(error.kind(), ErrorKind::ParsingError(_)) {
        return Some("the server did not answer in AMQP 0-9-1: is this a TLS port (set ssl=true), or not a RabbitMQ AMQP 0-9-1 port?");
    }
    None
}

fn classify_connect_error(broker: &BrokerAddress, ssl: bool, error: &lapin::Error) -> ConnectFailure {
    if let Some(hint) = protocol_mismatch_hint(ssl, error) {
        return ConnectFailure::Retryable(format!("{error} ({hint})"));
    }
    match amqp_code(error) {
        Some(codes::ACCESS_REFUSED) => ConnectFailure::Fatal(Error::transport(
            DRIVER_NAME,
            format!(
                "authentication failed for user {:?} on {broker} (ACCESS_REFUSED): check the transport URL credentials and rabbit_login_method",
                broker.username
            ),
            false,
        )),
        Some(codes::NOT_ALLOWED) => ConnectFailure::Fatal(Error::transport(
            DRIVER_NAME,
            format!("access to virtual host {:?} refused for user {:?} on {broker} (NOT_ALLOWED)", broker.vhost, broker.username),
            false,
        )),
        _ => ConnectFailure::Retryable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(url: &str, config: RabbitConfig) -> Connector {
        Connector::new(&TransportUrl::parse(url).unwrap(), Arc::new(config))
    }

    #[test]
    fn round_robin_starts_at_the_cursor() {
        let c = connector("rabbit://h1,h2,h3/", RabbitConfig::default());
        assert_eq!(c.round(), [0, 1, 2]);
        c.cursor.store(2, Ordering::Relaxed);
        assert_eq!(c.round(), [2, 0, 1]);
        c.cursor.store(3, Ordering::Relaxed);
        assert_eq!(c.round(), [0, 1, 2]);
    }

    #[test]
    fn shuffle_visits_every_host() {
        let c = connector(
            "rabbit://h1,h2,h3,h4/",
            RabbitConfig {
                kombu_failover_strategy: FailoverStrategy::Shuffle,
                ..RabbitConfig::default()
            },
        );
        let mut round = c.round();
        round.sort();
        assert_eq!(round, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn tls_files_are_checked() {
        let c = connector(
            "rabbit://h1/",
            RabbitConfig {
                ssl: true,
                ssl_ca_file: "/nonexistent/ca.pem".into(),
                ..RabbitConfig::default()
            },
        );
        let err = c.tls_config().await.unwrap_err();
        assert!(
            matches!(&err, Error::Configuration { option, .. } if option == "ssl_ca_file"),
            "{err}"
        );
        let c = connector(
            "rabbit://h1/",
            RabbitConfig {
                ssl: true,
                ssl_key_file: "/k.pem".into(),
                ..RabbitConfig::default()
            },
        );
        assert!(c.tls_config().await.is_err());
        let c = connector("rabbit://h1/", RabbitConfig::default());
        assert_eq!(c.tls_config().await.unwrap(), OwnedTLSConfig::default());
    }

    #[tokio::test]
    async fn limited_retry_gives_up_with_delivery_failure() {
        // Port 1 on localhost refuses connections immediately.
        let c = connector("rabbit://127.0.0.1:1,127.0.0.1:2/", RabbitConfig::default());
        let err = c.connect(Retry::Limited(2), None, "test").await.unwrap_err();
        match &err {
            Error::MessageDeliveryFailure { message, retryable } => {
                assert!(*retryable);
                assert!(message.contains("after 3 tries"), "{message}");
            }
            other => panic!("{other}"),
        }
    }
}
