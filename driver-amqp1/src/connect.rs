//! Opening AMQP 1.0 connections: host failover with oslo's backoff, TCP_NODELAY, TLS on
//! rustls/ring, SASL, and learning the peer's product from its Open frame.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::performatives::Open;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Session};
use oslo_core::{Error, Result, Retry, TransportUrl};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Amqp1Config;
use crate::DRIVER_NAME;

/// The port used when the URL names none (oslo's default, TLS or not).
pub const DEFAULT_PORT: u16 = 5672;

/// How many bytes of the server's first frames are kept to find its Open performative.
const SNIFF_LIMIT: usize = 16 * 1024;

/// One broker of the URL, with its credentials.
#[derive(Clone)]
pub(crate) struct Broker {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    password: Option<String>,
}

impl Broker {
    /// The same broker as an AMQP 0-9-1 URI (RabbitMQ serves both protocols on one port).
    pub fn amqp091_uri(&self, vhost: &str, tls: bool) -> lapin::uri::AMQPUri {
        use lapin::uri::{AMQPAuthority, AMQPScheme, AMQPUri, AMQPUserInfo};
        AMQPUri {
            scheme: if tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone().unwrap_or_else(|| "guest".into()),
                    password: self.password.clone().unwrap_or_else(|| "guest".into()),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: vhost.to_string(),
            ..AMQPUri::default()
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// An open connection with one session, and what the peer said about itself.
pub(crate) struct Opened {
    pub connection: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    /// `properties.product` of the peer's Open (`RabbitMQ`, `qpid-cpp`, `qpid-dispatch-router`, ...).
    pub product: Option<String>,
    pub broker: Broker,
}

impl Opened {
    /// End the session and close the connection, ignoring errors (the peer may be gone).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.session.end().await;
            let _ = self.connection.close().await;
        })
        .await;
    }
}

/// Builds connections for one driver: the URL's hosts in turn, starting at a random one.
pub(crate) struct Connector {
    brokers: Vec<Broker>,
    config: Arc<Amqp1Config>,
    vhost: Option<String>,
    container_base: String,
    tls: tokio::sync::OnceCell<tokio_rustls::TlsConnector>,
    next_host: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("brokers", &self.brokers)
            .field("vhost", &self.vhost)
            .finish()
    }
}

pub(crate) fn transport(message: impl std::fmt::Display) -> Error {
    Error::transport(DRIVER_NAME, message, true)
}

impl Connector {
    pub fn new(url: &TransportUrl, config: Arc<Amqp1Config>) -> Result<Self> {
        let mut brokers = Vec::new();
        for host in &url.hosts {
            let username = host.username.clone().map(|user| {
                if !config.sasl_default_realm.is_empty() && !user.contains('@') {
                    format!("{user}@{}", config.sasl_default_realm)
                } else {
                    user
                }
            });
            brokers.push(Broker {
                host: host.hostname.clone().unwrap_or_else(|| "localhost".into()),
                port: host.port.unwrap_or(DEFAULT_PORT),
                username,
                password: host.password.as_ref().map(|p| p.expose().to_string()),
            });
        }
        if brokers.is_empty() {
            brokers.push(Broker {
                host: "localhost".into(),
                port: DEFAULT_PORT,
                username: None,
                password: None,
            });
        }
        let container_base = match &config.container_name {
            Some(name) => name.clone(),
            None => {
                let node = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
                let cmd = std::env::args()
                    .next()
                    .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "rust".into());
                format!("openstack.org/om/container/{node}/{cmd}/{}", std::process::id())
            }
        };
        let vhost = url.virtual_host.clone().filter(|v| !v.is_empty());
        // Start at a random host, as oslo does, so that clients spread over the brokers.
        let start = uuid::Uuid::new_v4().as_u128() as usize % brokers.len();
        Ok(Connector {
            brokers,
            config,
            vhost,
            container_base,
            tls: tokio::sync::OnceCell::new(),
            next_host: start.into(),
        })
    }

    /// The URL's virtual host, if any.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
    }

    pub fn brokers(&self) -> &[Broker] {
        &self.brokers
    }

    /// Connect, trying every host in turn with oslo's backoff
    /// (`connection_retry_interval` + `connection_retry_backoff` per attempt, at most
    /// `connection_retry_interval_max`), until `retry` runs out.
    pub async fn connect(&self, retry: Retry) -> Result<Opened> {
        let mut attempt: u32 = 0;
        loop {
            let index = self.next_host.load(std::sync::atomic::Ordering::Relaxed) % self.brokers.len();
            let broker = self.brokers[index].clone();
            match self.connect_to(&broker).await {
                Ok(opened) => return Ok(opened),
                Err(err) if !err.is_retryable() => return Err(err),
                Err(err) => {
                    self.next_host.store(index + 1, std::sync::atomic::Ordering::Relaxed);
                    attempt += 1;
                    if !retry.allows(attempt) {
                        return Err(Error::MessageDeliveryFailure {
                            message: format!("cannot connect to any AMQP 1.0 broker after {attempt} attempt(s): {err}"),
                            retryable: true,
                        });
                    }
                    let delay = self.backoff(attempt);
                    tracing::warn!(broker = ?broker, error = %err, ?delay, "AMQP 1.0 connection failed, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Delay before attempt `attempt` (1-based), as oslo computes it.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.config;
        let secs = c.connection_retry_interval + c.connection_retry_backoff * (attempt.saturating_sub(1)) as f64;
        Amqp1Config::secs(secs.min(c.connection_retry_interval_max))
    }

    async fn connect_to(&self, broker: &Broker) -> Result<Opened> {
        let address = format!("{}:{}", broker.host, broker.port);
        let stream = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(&address))
            .await
            .map_err(|_| transport(format!("connecting to {address} timed out")))?
            .map_err(|e| transport(format!("connecting to {address}: {e}")))?;
        // fe2o3 does not set it; without it every request/reply waits for Nagle + delayed ACK.
        stream.set_nodelay(true).map_err(|e| transport(format!("TCP_NODELAY: {e}")))?;
        let captured = Arc::new(Mutex::new(Vec::with_capacity(512)));
        let connection = if self.config.ssl {
            let connector = self.tls_connector().await?;
            let name = if self.config.ssl_verify_vhost {
                self.vhost.clone().unwrap_or_else(|| broker.host.clone())
            } else {
                broker.host.clone()
            };
            let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| Error::configuration("ssl", format!("{name:?} is not a valid TLS server name: {e}")))?;
            let tls = connector
                .connect(server_name, stream)
                .await
                .map_err(|e| transport(format!("TLS handshake with {address}: {e}")))?;
            self.open(broker, SniffStream::new(tls, captured.clone()))
                .await
                .map_err(|e| with_protocol_hint(e, &captured.lock().expect("sniff buffer")))?
        } else {
            self.open(broker, SniffStream::new(stream, captured.clone()))
                .await
                .map_err(|e| with_protocol_hint(e, &captured.lock().expect("sniff buffer")))?
        };
        let product = peer_product(&captured.lock().expect("sniff buffer"));
        let mut connection = connection;
        let session = Session::begin(&mut connection)
            .await
            .map_err(|e| transport(format!("begin session: {e}")))?;
        let opened = Opened {
            connection,
            session,
            product,
            broker: broker.clone(),
        };
        tracing::debug!(broker = ?broker, product = ?opened.product, "AMQP 1.0 connection open");
        Ok(opened)
    }

    async fn open<S>(&self, broker: &Broker, stream: SniffStream<S>) -> Result<ConnectionHandle<()>>
    where
        S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        let container_id = format!("{}/{}", self.container_base, uuid::Uuid::new_v4().simple());
        // With pseudo_vhost the vhost goes into addresses; otherwise it is the Open hostname.
        let hostname = match (&self.vhost, self.config.pseudo_vhost) {
            (Some(vhost), false) => vhost.clone(),
            _ => broker.host.clone(),
        };
        let mut builder = Connection::builder()
            .container_id(container_id)
            .scheme("amqp")
            .hostname(hostname.as_str())
            .sasl_profile(self.sasl_profile(broker)?);
        if self.config.idle_timeout > 0 {
            builder = builder.idle_time_out(self.config.idle_timeout.saturating_mul(1000));
        }
        tokio::time::timeout(Duration::from_secs(30), builder.open_with_stream(stream))
            .await
            .map_err(|_| transport(format!("AMQP 1.0 open with {broker:?} timed out")))?
            .map_err(|e| {
                let text = e.to_string();
                // A refused login will not get better by retrying.
                let auth = text.contains("Sasl") || text.contains("sasl") || text.contains("Auth");
                Error::transport(DRIVER_NAME, format!("AMQP 1.0 open with {broker:?}: {text}"), !auth)
            })
    }

    fn sasl_profile(&self, broker: &Broker) -> Result<SaslProfile> {
        let allowed: Vec<String> = self
            .config
            .sasl_mechanisms
            .split_whitespace()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let allows = |m: &str| allowed.is_empty() || allowed.iter().any(|a| a == m);
        match (&broker.username, &broker.password) {
            (Some(user), password) if allows("PLAIN") => Ok(SaslProfile::Plain {
                username: user.clone(),
                password: password.clone().unwrap_or_default(),
            }),
            _ if allows("ANONYMOUS") => Ok(SaslProfile::Anonymous),
            _ => Err(Error::configuration(
                "sasl_mechanisms",
                format!(
                    "none of {:?} is usable here (supported: PLAIN with credentials in the URL, ANONYMOUS)",
                    self.config.sasl_mechanisms
                ),
            )),
        }
    }

    async fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector> {
        let config = self.config.clone();
        self.tls
            .get_or_try_init(|| async move {
                let client = tokio::task::spawn_blocking(move || tls_client_config(&config))
                    .await
                    .map_err(|e| Error::configuration("ssl", format!("reading the TLS files failed: {e}")))??;
                Ok(tokio_rustls::TlsConnector::from(Arc::new(client)))
            })
            .await
            .cloned()
    }
}

/// rustls client configuration (ring provider) from the `ssl_*` options.
pub(crate) fn tls_client_config(config: &Amqp1Config) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    if config.ssl_ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.ssl_ca_file)
            .and_then(|it| it.collect::<std::result::Result<_, _>>())
            .map_err(|e| Error::configuration("ssl_ca_file", format!("{}: {e}", config.ssl_ca_file)))?;
        if certs.is_empty() {
            return Err(Error::configuration(
                "ssl_ca_file",
                format!("{}: no certificate found", config.ssl_ca_file),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::configuration("ssl_ca_file", format!("{}: {e}", config.ssl_ca_file)))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::configuration("ssl", e.to_string()))?
        .with_root_certificates(roots);
    if config.ssl_key_password.is_some() {
        return Err(Error::configuration(
            "ssl_key_password",
            "encrypted private keys are not supported; decrypt the key file",
        ));
    }
    match (config.ssl_cert_file.is_empty(), config.ssl_key_file.is_empty()) {
        (true, true) => Ok(builder.with_no_client_auth()),
        (false, false) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.ssl_cert_file)
                .and_then(|it| it.collect::<std::result::Result<_, _>>())
                .map_err(|e| Error::configuration("ssl_cert_file", format!("{}: {e}", config.ssl_cert_file)))?;
            let key = PrivateKeyDer::from_pem_file(&config.ssl_key_file)
                .map_err(|e| Error::configuration("ssl_key_file", format!("{}: {e}", config.ssl_key_file)))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::configuration("ssl_cert_file", e.to_string()))
        }
        (true, false) => Err(Error::configuration(
            "ssl_cert_file",
            "ssl_key_file is set but ssl_cert_file is not",
        )),
        (false, true) => Err(Error::configuration("ssl_key_file", "ssl_cert_file is set but ssl_key_file is not")),
    }
}

/// A stream that keeps a copy of the first bytes it reads: fe2o3 does not expose the peer's
/// Open frame, and oslo's `addressing_mode=dynamic` needs its `product` property.
#[derive(Debug)]
pub(crate) struct SniffStream<S> {
    inner: S,
    captured: Arc<Mutex<Vec<u8>>>,
}

impl<S> SniffStream<S> {
    fn new(inner: S, captured: Arc<Mutex<Vec<u8>>>) -> Self {
        SniffStream { inner, captured }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SniffStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let mut captured = self.captured.lock().expect("sniff buffer");
            if captured.len() < SNIFF_LIMIT {
                let new = &buf.filled()[before..];
                let room = SNIFF_LIMIT - captured.len();
                captured.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SniffStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A failed open whose peer answered with the AMQP 0-9-1 protocol header: RabbitMQ does that
/// on a port without the AMQP 1.0 plugin (it offers the protocol it speaks, then closes).
fn with_protocol_hint(error: Error, peer_sent: &[u8]) -> Error {
    if !peer_sent.starts_with(b"AMQP\x00\x00\x09\x01") {
        return error;
    }
    Error::transport(
        DRIVER_NAME,
        format!(
            "{error} (the broker speaks only AMQP 0-9-1 on this port: use rabbit:// for it, or enable RabbitMQ's rabbitmq_amqp1_0 plugin)"
        ),
        false,
    )
}

/// Find the peer's Open performative in the bytes it sent first (protocol headers, SASL
/// frames, then AMQP frames) and return its `product` property.
pub(crate) fn peer_product(bytes: &[u8]) -> Option<String> {
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        if &bytes[pos..pos + 4] == b"AMQP" {
            pos += 8;
            continue;
        }
        let size = u32::from_be_bytes(bytes[pos..pos + 4].try_into().ok()?) as usize;
        let doff = bytes[pos + 4] as usize * 4;
        let frame_type = bytes[pos + 5];
        if size < 8 || doff < 8 || pos + size > bytes.len() {
            return None;
        }
        if frame_type == 0 && size > doff {
            if let Ok(open) = serde_amqp::from_slice::<Open>(&bytes[pos + doff..pos + size]) {
                let properties = open.properties?;
                return properties.iter().find(|(k, _)| k.as_str() == "product").and_then(|(_, v)| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Symbol(s) => Some(s.as_str().to_string()),
                    _ => None,
                });
            }
        }
        pos += size;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::definitions::Fields;
    use fe2o3_amqp::types::primitives::Symbol;

    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&[2, frame_type, 0, 0]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn product_is_read_from_the_peers_open() {
        let mut properties = Fields::default();
        properties.insert(Symbol::from("product"), Value::String("RabbitMQ".into()));
        let open = Open {
            container_id: "c".into(),
            hostname: None,
            max_frame_size: Default::default(),
            channel_max: Default::default(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: Some(properties),
        };
        let mut bytes = b"AMQP\x03\x01\x00\x00".to_vec();
        bytes.extend(frame(1, b"\x00\x53\x44\x45")); // a SASL frame is skipped
        bytes.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        bytes.extend(frame(0, &serde_amqp::to_vec(&open).unwrap()));
        assert_eq!(peer_product(&bytes).as_deref(), Some("RabbitMQ"));
        assert_eq!(peer_product(&bytes[..bytes.len() - 3]), None, "a truncated frame is not read");
        assert_eq!(peer_product(b"garbage!"), None);
    }

    #[test]
    fn tls_options_are_checked() {
        let mut config = Amqp1Config {
            ssl: true,
            ssl_ca_file: "/nonexistent/ca.pem".into(),
            ..Amqp1Config::default()
        };
        let err = tls_client_config(&config).unwrap_err();
        assert!(
            matches!(&err, Error::Configuration { option, .. } if option == "ssl_ca_file"),
            "{err}"
        );
        config.ssl_ca_file.clear();
        config.ssl_key_file = "/k.pem".into();
        assert!(matches!(tls_client_config(&config), Err(Error::Configuration { .. })));
        config.ssl_key_file.clear();
        assert!(tls_client_config(&config).is_ok(), "web PKI roots by default");
    }

    /// RabbitMQ without the AMQP 1.0 plugin answers the AMQP 1.0 header with its own 0-9-1
    /// header and closes: the error says to use rabbit://, and is not retried.
    #[tokio::test]
    async fn an_amqp_0_9_1_only_port_says_use_rabbit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut header = [0u8; 8];
                let _ = socket.read_exact(&mut header).await;
                let _ = socket.write_all(b"AMQP\x00\x00\x09\x01").await;
                let _ = socket.shutdown().await;
            }
        });
        let url = TransportUrl::parse(&format!("amqp://guest:guest@127.0.0.1:{port}/")).unwrap();
        let connector = Connector::new(&url, Arc::new(Amqp1Config::default())).unwrap();
        let err = match connector.connect(Retry::Limited(3)).await {
            Ok(_) => panic!("connected to a 0-9-1 port"),
            Err(err) => err,
        };
        assert!(err.to_string().contains("use rabbit://"), "{err}");
        assert!(!err.is_retryable(), "{err}");
    }

    #[test]
    fn backoff_follows_oslo() {
        let url = TransportUrl::parse("amqp://u:secret@h1,h2:5673/").unwrap();
        let connector = Connector::new(&url, Arc::new(Amqp1Config::default())).unwrap();
        assert_eq!(connector.backoff(1), Duration::from_secs(1));
        assert_eq!(connector.backoff(2), Duration::from_secs(3));
        assert_eq!(connector.backoff(100), Duration::from_secs(30));
        assert_eq!(connector.brokers()[1].port, 5673);
        assert!(!format!("{:?}", connector).contains("secret"));
    }
}
