//! Broker addresses: one per transport URL host, as oslo builds kombu's failover list.

use std::fmt;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism};
use oslo_core::{Secret, TransportUrl};

use crate::config::{LoginMethod, RabbitConfig};

/// The AMQP port oslo uses by default, with or without TLS.
pub const DEFAULT_PORT: u16 = 5672;

/// One broker to connect to: a transport URL host with its credentials and the URL's vhost.
///
/// Missing parts get kombu's defaults: host `localhost`, port 5672 (also with `ssl`), user and
/// password `guest`, virtual host `/` (for no path and for an empty one). `Debug` hides the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub username: String,
    /// Password.
    pub password: Secret,
    /// Virtual host.
    pub vhost: String,
}

impl fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerAddress")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("vhost", &self.vhost)
            .finish()
    }
}

impl fmt::Display for BrokerAddress {
    /// `host:port` (IPv6 in brackets), never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl BrokerAddress {
    /// The brokers of a transport URL, in URL order; `localhost:5672` when it names none.
    ///
    /// ```
    /// use driver_rabbit::BrokerAddress;
    /// let url = oslo_core::TransportUrl::parse("rabbit://u:p%40ss@h1,h2:5673/nova").unwrap();
    /// let brokers = BrokerAddress::from_url(&url);
    /// assert_eq!(brokers[0].expose_uri(false), "amqp://u:p%40ss@h1:5672/nova");
    /// assert_eq!(brokers[1].expose_uri(false), "amqp://guest:guest@h2:5673/nova");
    /// ```
    pub fn from_url(url: &TransportUrl) -> Vec<BrokerAddress> {
        let vhost = match url.virtual_host.as_deref() {
            None | Some("") => "/".to_string(),
            Some(vhost) => vhost.to_string(),
        };
        let mut brokers: Vec<BrokerAddress> = url
            .hosts
            .iter()
            .map(|host| BrokerAddress {
                host: host
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".into()),
                port: host.port.unwrap_or(DEFAULT_PORT),
                username: host.username.clone().unwrap_or_else(|| "guest".into()),
                password: host.password.clone().unwrap_or_else(|| Secret::new("guest")),
                vhost: vhost.clone(),
            })
            .collect();
        if brokers.is_empty() {
            brokers.push(BrokerAddress {
                host: "localhost".into(),
                port: DEFAULT_PORT,
                username: "guest".into(),
                password: Secret::new("guest"),
                vhost,
            });
        }
        brokers
    }

    /// The address as an AMQP URI **with the password in clear**, user, password and vhost
    /// percent-encoded (so the default vhost `/` is `%2F`): `amqp[s]://user:pass@host:port/vhost`.
    /// Use only where a URI string must be handed to something that authenticates; never log it.
    pub fn expose_uri(&self, tls: bool) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{}:{}@{}:{}/{}",
            if tls { "amqps" } else { "amqp" },
            percent_encode(&self.username),
            percent_encode(self.password.expose()),
            host,
            self.port,
            percent_encode(&self.vhost)
        )
    }

    /// The lapin URI for this broker with the driver's options applied (heartbeat, login
    /// method, TLS scheme). Built field by field rather than parsed, so IPv6 and IP hosts and
    /// any character in the credentials work.
    pub(crate) fn to_amqp_uri(&self, config: &RabbitConfig) -> AMQPUri {
        AMQPUri {
            scheme: if config.ssl { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone(),
                    password: self.password.expose().to_string(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(config.heartbeat_timeout_threshold),
                auth_mechanism: Some(match config.rabbit_login_method {
                    LoginMethod::AmqPlain => SASLMechanism::AMQPlain,
                    LoginMethod::Plain => SASLMechanism::Plain,
                    LoginMethod::External => SASLMechanism::External,
                    LoginMethod::RabbitCrDemo => SASLMechanism::RabbitCrDemo,
                }),
                ..AMQPQueryString::default()
            },
        }
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(url: &str) -> Vec<BrokerAddress> {
        BrokerAddress::from_url(&TransportUrl::parse(url).unwrap())
    }

    #[test]
    fn defaults_and_percent_encoding() {
        let b = brokers("rabbit://");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].expose_uri(false), "amqp://guest:guest@localhost:5672/%2F");
        let b = brokers("rabbit://h/");
        assert_eq!(b[0].expose_uri(false), "amqp://guest:guest@h:5672/%2F");
        let b = brokers("rabbit://h//");
        assert_eq!(b[0].vhost, "/");
        let b = brokers("rabbit://u%40x:p%3Aw%2F@[::1]:5673,h2/my%2Fvhost");
        assert_eq!(b[0].host, "::1");
        assert_eq!(b[0].username, "u@x");
        assert_eq!(b[0].password.expose(), "p:w/");
        assert_eq!(b[0].vhost, "my/vhost");
        assert_eq!(b[0].expose_uri(false), "amqp://u%40x:p%3Aw%2F@[::1]:5673/my%2Fvhost");
        assert_eq!(b[1].expose_uri(true), "amqps://guest:guest@h2:5672/my%2Fvhost");
        assert_eq!(b[0].to_string(), "[::1]:5673");
        assert!(!format!("{:?}", b[0]).contains("p:w"));
    }

    #[test]
    fn lapin_parses_our_uris_back() {
        for url in ["rabbit://u%40x:p%3Aw%25@host1:5673/v%2Fh", "rabbit://guest:guest@localhost:5672/"] {
            for broker in brokers(url) {
                let parsed: AMQPUri = broker.expose_uri(false).parse().unwrap();
                assert_eq!(parsed.authority.userinfo.username, broker.username);
                assert_eq!(parsed.authority.userinfo.password, broker.password.expose());
                assert_eq!(parsed.vhost, broker.vhost);
                assert_eq!(parsed.authority.port, broker.port);
            }
        }
    }

    #[test]
    fn multi_host_keeps_order_and_per_host_credentials() {
        let b = brokers("rabbit://a:1@h1:1,b:2@h2:2,h3/v");
        assert_eq!(b.iter().map(|b| b.to_string()).collect::<Vec<_>>(), ["h1:1", "h2:2", "h3:5672"]);
        assert_eq!(b[1].username, "b");
        assert_eq!(b[2].username, "guest");
        assert!(b.iter().all(|b| b.vhost == "v"));
    }

    #[test]
    fn amqp_uri_carries_options() {
        let config = RabbitConfig {
            ssl: true,
            heartbeat_timeout_threshold: 30,
            ..RabbitConfig::default()
        };
        let uri = brokers("rabbit://u:p@[::1]/")[0].to_amqp_uri(&config);
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(uri.authority.port, 5672, "oslo keeps 5672 with ssl");
        assert_eq!(uri.authority.host, "::1");
        assert_eq!(uri.query.heartbeat, Some(30));
        assert_eq!(uri.query.auth_mechanism, Some(SASLMechanism::AMQPlain));
        assert_eq!(uri.vhost, "/");
    }
}
