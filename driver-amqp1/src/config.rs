//! `[oslo_messaging_amqp]` options (oslo.messaging 14.9.0 `amqp1_driver/opts.py`, the last
//! release with the AMQP 1.0 driver), parsed from strings the way oslo.config parses them.

use std::collections::BTreeMap;
use std::time::Duration;

use oslo_core::{Error, Result};

/// The oslo.config group these options belong to.
pub const GROUP: &str = "oslo_messaging_amqp";

/// How addresses are built (`addressing_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressingMode {
    /// oslo's default: legacy for qpidd (or a peer that does not name its product) and for
    /// RabbitMQ, routable for anything else (e.g. qpid-dispatch-router).
    #[default]
    Dynamic,
    /// Dot-joined `unicast.<exchange>.<topic>` style names (qpidd, RabbitMQ).
    Legacy,
    /// Slash-joined `openstack.org/om/rpc/anycast/...` names (qpid-dispatch-router).
    Routable,
}

/// The AMQP 1.0 driver's options, with oslo's names and defaults (`[oslo_messaging_amqp]`).
///
/// ```
/// use std::collections::BTreeMap;
/// use driver_amqp1::{Amqp1Config, AddressingMode};
/// let mut options = BTreeMap::new();
/// options.insert("addressing_mode".to_string(), "routable".to_string());
/// options.insert("rpc_server_credit".to_string(), "50".to_string());
/// let config = Amqp1Config::from_options(&options).unwrap();
/// assert_eq!(config.addressing_mode, AddressingMode::Routable);
/// assert_eq!(config.rpc_server_credit, 50);
/// assert_eq!(config.reply_link_credit, 200);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Amqp1Config {
    /// AMQP container id; generated (`openstack.org/om/container/<node>/<cmd>/<pid>/<uuid>`) when unset.
    pub container_name: Option<String>,
    /// Connection idle timeout in seconds; 0 disables it (`0`).
    pub idle_timeout: u32,
    /// Log every frame (`False`; mapped to `trace`-level logging).
    pub trace: bool,
    /// Connect with TLS (`False`).
    pub ssl: bool,
    /// CA bundle (PEM) that replaces the bundled web PKI roots (`''`).
    pub ssl_ca_file: String,
    /// Client certificate chain (PEM) (`''`).
    pub ssl_cert_file: String,
    /// Client private key (PEM, PKCS#8 / PKCS#1 / SEC1) (`''`).
    pub ssl_key_file: String,
    /// Password of an encrypted key (`None`; encrypted keys are not supported by rustls).
    pub ssl_key_password: Option<String>,
    /// Check the server certificate against the vhost name instead of the host (`False`).
    pub ssl_verify_vhost: bool,
    /// Allowed SASL mechanisms, space separated (`''` = PLAIN with credentials, else ANONYMOUS).
    pub sasl_mechanisms: String,
    /// Cyrus SASL config directory (`''`; accepted, unused: no Cyrus SASL here).
    pub sasl_config_dir: String,
    /// Cyrus SASL config name (`''`; accepted, unused).
    pub sasl_config_name: String,
    /// Realm appended to user names without one, as `user@realm` (`''`).
    pub sasl_default_realm: String,
    /// First reconnect delay in seconds (`1`).
    pub connection_retry_interval: f64,
    /// Added to the delay after each failed attempt (`2`).
    pub connection_retry_backoff: f64,
    /// Longest delay between attempts (`30`).
    pub connection_retry_interval_max: f64,
    /// Delay before re-attaching a link the peer detached, and before resending a released message (`10`).
    pub link_retry_delay: f64,
    /// Retries of a reply send; -1 forever (`0`).
    pub default_reply_retry: i64,
    /// Deadline of a reply send in seconds (`30`).
    pub default_reply_timeout: f64,
    /// Deadline of a cast/call send without a caller timeout (`30`).
    pub default_send_timeout: f64,
    /// Deadline of a notification send (`30`).
    pub default_notify_timeout: f64,
    /// Idle sender links are closed after this many seconds (`600`).
    pub default_sender_link_timeout: f64,
    /// `dynamic`, `legacy` or `routable` (`dynamic`).
    pub addressing_mode: AddressingMode,
    /// Put the URL's vhost into addresses instead of the Open `hostname` (`True`).
    pub pseudo_vhost: bool,
    /// Legacy prefix for server-targeted RPC (`exclusive`).
    pub server_request_prefix: String,
    /// Legacy prefix for fanout (`broadcast`).
    pub broadcast_prefix: String,
    /// Legacy prefix for topic RPC and notifications (`unicast`).
    pub group_request_prefix: String,
    /// Routable RPC prefix (`openstack.org/om/rpc`).
    pub rpc_address_prefix: String,
    /// Routable notification prefix (`openstack.org/om/notify`).
    pub notify_address_prefix: String,
    /// Routable multicast infix (`multicast`).
    pub multicast_address: String,
    /// Routable unicast infix (`unicast`).
    pub unicast_address: String,
    /// Routable anycast infix (`anycast`).
    pub anycast_address: String,
    /// Routable notification exchange when the target has none (`None`).
    pub default_notification_exchange: Option<String>,
    /// Routable RPC exchange when the target has none (`None`).
    pub default_rpc_exchange: Option<String>,
    /// Credit of the reply link (`200`).
    pub reply_link_credit: u32,
    /// Credit of each RPC server link (`100`). The window is refilled as messages are taken
    /// off the link; a consumer that falls behind stops the refills, so at most this many
    /// plus the listener's buffer (256) are outstanding.
    pub rpc_server_credit: u32,
    /// Credit of each notification server link (`100`).
    pub notify_server_credit: u32,
    /// Message kinds sent pre-settled: `rpc-call`, `rpc-reply`, `rpc-cast`, `notify` (`rpc-cast,rpc-reply`).
    pub pre_settled: Vec<String>,
}

impl Default for Amqp1Config {
    fn default() -> Self {
        Amqp1Config {
            container_name: None,
            idle_timeout: 0,
            trace: false,
            ssl: false,
            ssl_ca_file: String::new(),
            ssl_cert_file: String::new(),
            ssl_key_file: String::new(),
            ssl_key_password: None,
            ssl_verify_vhost: false,
            sasl_mechanisms: String::new(),
            sasl_config_dir: String::new(),
            sasl_config_name: String::new(),
            sasl_default_realm: String::new(),
            connection_retry_interval: 1.0,
            connection_retry_backoff: 2.0,
            connection_retry_interval_max: 30.0,
            link_retry_delay: 10.0,
            default_reply_retry: 0,
            default_reply_timeout: 30.0,
            default_send_timeout: 30.0,
            default_notify_timeout: 30.0,
            default_sender_link_timeout: 600.0,
            addressing_mode: AddressingMode::Dynamic,
            pseudo_vhost: true,
            server_request_prefix: "exclusive".into(),
            broadcast_prefix: "broadcast".into(),
            group_request_prefix: "unicast".into(),
            rpc_address_prefix: "openstack.org/om/rpc".into(),
            notify_address_prefix: "openstack.org/om/notify".into(),
            multicast_address: "multicast".into(),
            unicast_address: "unicast".into(),
            anycast_address: "anycast".into(),
            default_notification_exchange: None,
            default_rpc_exchange: None,
            reply_link_credit: 200,
            rpc_server_credit: 100,
            notify_server_credit: 100,
            pre_settled: vec!["rpc-cast".into(), "rpc-reply".into()],
        }
    }
}

/// Every option name this driver accepts.
pub const OPTION_NAMES: &[&str] = &[
    "container_name",
    "idle_timeout",
    "trace",
    "ssl",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_key_password",
    "ssl_verify_vhost",
    "sasl_mechanisms",
    "sasl_config_dir",
    "sasl_config_name",
    "sasl_default_realm",
    "connection_retry_interval",
    "connection_retry_backoff",
    "connection_retry_interval_max",
    "link_retry_delay",
    "default_reply_retry",
    "default_reply_timeout",
    "default_send_timeout",
    "default_notify_timeout",
    "default_sender_link_timeout",
    "addressing_mode",
    "pseudo_vhost",
    "server_request_prefix",
    "broadcast_prefix",
    "group_request_prefix",
    "rpc_address_prefix",
    "notify_address_prefix",
    "multicast_address",
    "unicast_address",
    "anycast_address",
    "default_notification_exchange",
    "default_rpc_exchange",
    "reply_link_credit",
    "rpc_server_credit",
    "notify_server_credit",
    "pre_settled",
];

impl Amqp1Config {
    /// Parse options given as strings (config group merged with the URL query). An unknown
    /// option or a bad value is a `ConfigurationError` naming the option.
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Self> {
        let mut c = Amqp1Config::default();
        for (name, value) in options {
            let v = value.trim();
            match name.as_str() {
                "container_name" => c.container_name = non_empty(v),
                "idle_timeout" => c.idle_timeout = parse_int(name, v, 0, u32::MAX as i64)? as u32,
                "trace" => c.trace = parse_bool(name, v)?,
                "ssl" => c.ssl = parse_bool(name, v)?,
                "ssl_ca_file" => c.ssl_ca_file = v.into(),
                "ssl_cert_file" => c.ssl_cert_file = v.into(),
                "ssl_key_file" => c.ssl_key_file = v.into(),
                "ssl_key_password" => c.ssl_key_password = non_empty(v),
                "ssl_verify_vhost" => c.ssl_verify_vhost = parse_bool(name, v)?,
                "sasl_mechanisms" => c.sasl_mechanisms = v.into(),
                "sasl_config_dir" => c.sasl_config_dir = v.into(),
                "sasl_config_name" => c.sasl_config_name = v.into(),
                "sasl_default_realm" => c.sasl_default_realm = v.into(),
                "connection_retry_interval" => c.connection_retry_interval = parse_float(name, v, 1.0)?,
                "connection_retry_backoff" => c.connection_retry_backoff = parse_float(name, v, 0.0)?,
                "connection_retry_interval_max" => c.connection_retry_interval_max = parse_float(name, v, 1.0)?,
                "link_retry_delay" => c.link_retry_delay = parse_float(name, v, 1.0)?,
                "default_reply_retry" => c.default_reply_retry = parse_int(name, v, -1, i64::MAX)?,
                "default_reply_timeout" => c.default_reply_timeout = parse_float(name, v, 5.0)?,
                "default_send_timeout" => c.default_send_timeout = parse_float(name, v, 5.0)?,
                "default_notify_timeout" => c.default_notify_timeout = parse_float(name, v, 5.0)?,
                "default_sender_link_timeout" => c.default_sender_link_timeout = parse_float(name, v, 1.0)?,
                "addressing_mode" => {
                    c.addressing_mode = match v.to_ascii_lowercase().as_str() {
                        "dynamic" => AddressingMode::Dynamic,
                        "legacy" => AddressingMode::Legacy,
                        "routable" => AddressingMode::Routable,
                        _ => return Err(Error::configuration(name, format!("{v:?} is not one of legacy, routable, dynamic"))),
                    }
                }
                "pseudo_vhost" => c.pseudo_vhost = parse_bool(name, v)?,
                "server_request_prefix" => c.server_request_prefix = v.into(),
                "broadcast_prefix" => c.broadcast_prefix = v.into(),
                "group_request_prefix" => c.group_request_prefix = v.into(),
                "rpc_address_prefix" => c.rpc_address_prefix = v.into(),
                "notify_address_prefix" => c.notify_address_prefix = v.into(),
                "multicast_address" => c.multicast_address = v.into(),
                "unicast_address" => c.unicast_address = v.into(),
                "anycast_address" => c.anycast_address = v.into(),
                "default_notification_exchange" => c.default_notification_exchange = non_empty(v),
                "default_rpc_exchange" => c.default_rpc_exchange = non_empty(v),
                "reply_link_credit" => c.reply_link_credit = parse_int(name, v, 1, u32::MAX as i64)? as u32,
                "rpc_server_credit" => c.rpc_server_credit = parse_int(name, v, 1, u32::MAX as i64)? as u32,
                "notify_server_credit" => c.notify_server_credit = parse_int(name, v, 1, u32::MAX as i64)? as u32,
                "pre_settled" => {
                    let kinds: Vec<String> = v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_string).collect();
                    if let Some(bad) = kinds
                        .iter()
                        .find(|k| !["rpc-call", "rpc-reply", "rpc-cast", "notify"].contains(&k.as_str()))
                    {
                        return Err(Error::configuration(
                            name,
                            format!("{bad:?} is not one of rpc-call, rpc-reply, rpc-cast, notify"),
                        ));
                    }
                    c.pre_settled = kinds;
                }
                _ => return Err(Error::configuration(name, format!("no such option in group [{GROUP}]"))),
            }
        }
        Ok(c)
    }

    /// Whether messages of `kind` (`rpc-call`, `rpc-reply`, `rpc-cast`, `notify`) are sent pre-settled.
    pub fn is_pre_settled(&self, kind: &str) -> bool {
        self.pre_settled.iter().any(|k| k == kind)
    }

    pub(crate) fn secs(value: f64) -> Duration {
        Duration::from_secs_f64(value.max(0.0))
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn parse_bool(option: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::configuration(option, format!("{value:?} is not a boolean"))),
    }
}

fn parse_int(option: &str, value: &str, min: i64, max: i64) -> Result<i64> {
    let n: i64 = value
        .parse()
        .map_err(|_| Error::configuration(option, format!("{value:?} is not an integer")))?;
    if n < min || n > max {
        return Err(Error::configuration(option, format!("{n} is out of range [{min}, {max}]")));
    }
    Ok(n)
}

fn parse_float(option: &str, value: &str, min: f64) -> Result<f64> {
    let n: f64 = value
        .parse()
        .map_err(|_| Error::configuration(option, format!("{value:?} is not a number")))?;
    if !n.is_finite() || n < min {
        return Err(Error::configuration(option, format!("{n} is below the minimum {min}")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_oslos() {
        let c = Amqp1Config::default();
        assert_eq!(c.addressing_mode, AddressingMode::Dynamic);
        assert!(c.pseudo_vhost);
        assert_eq!((c.reply_link_credit, c.rpc_server_credit, c.notify_server_credit), (200, 100, 100));
        assert!(c.is_pre_settled("rpc-cast") && c.is_pre_settled("rpc-reply") && !c.is_pre_settled("rpc-call"));
        assert_eq!(c.connection_retry_interval_max, 30.0);
    }

    #[test]
    fn bad_values_name_the_option() {
        for (k, v) in [
            ("addressing_mode", "weird"),
            ("rpc_server_credit", "0"),
            ("ssl", "maybe"),
            ("pre_settled", "rpc-foo"),
        ] {
            let err = Amqp1Config::from_options(&opts(&[(k, v)])).unwrap_err();
            assert!(matches!(&err, Error::Configuration { option, .. } if option == k), "{err}");
        }
        let err = Amqp1Config::from_options(&opts(&[("rabbit_qos_prefetch_count", "1")])).unwrap_err();
        assert!(err.to_string().contains("no such option"), "{err}");
    }

    #[test]
    fn every_option_name_parses() {
        for name in OPTION_NAMES {
            let value = match *name {
                "addressing_mode" => "legacy",
                "pre_settled" => "rpc-call,notify",
                n if n.starts_with("ssl") && n != "ssl" && n != "ssl_verify_vhost" => "x",
                "ssl" | "ssl_verify_vhost" | "trace" | "pseudo_vhost" => "true",
                n if n.contains("prefix")
                    || n.ends_with("_address")
                    || n.starts_with("sasl")
                    || n.starts_with("default_") && n.ends_with("exchange")
                    || n == "container_name" =>
                {
                    "x"
                }
                _ => "10",
            };
            Amqp1Config::from_options(&opts(&[(name, value)])).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
