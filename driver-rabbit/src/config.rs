//! `[oslo_messaging_rabbit]` options (oslo.messaging 18.3.1, `impl_rabbit.py::rabbit_opts` and
//! `amqp.py::amqp_opts`), parsed from strings the way oslo.config parses them.

use std::collections::BTreeMap;
use std::time::Duration;

use oslo_core::{Error, Result};

/// The oslo.config group these options belong to (used in error messages).
pub const GROUP: &str = "oslo_messaging_rabbit";

/// How the next broker is chosen when the current one fails (`kombu_failover_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverStrategy {
    /// Try the hosts in URL order, cycling (`round-robin`, the default).
    #[default]
    RoundRobin,
    /// Try the hosts in a random order, reshuffled on every cycle (`shuffle`).
    Shuffle,
}

/// SASL mechanism used to log in (`rabbit_login_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginMethod {
    /// `AMQPLAIN`, oslo's default.
    #[default]
    AmqPlain,
    /// `PLAIN`.
    Plain,
    /// `EXTERNAL` (TLS client certificate).
    External,
    /// `RABBIT-CR-DEMO`.
    RabbitCrDemo,
}

impl LoginMethod {
    /// The mechanism name as oslo spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            LoginMethod::AmqPlain => "AMQPLAIN",
            LoginMethod::Plain => "PLAIN",
            LoginMethod::External => "EXTERNAL",
            LoginMethod::RabbitCrDemo => "RABBIT-CR-DEMO",
        }
    }
}

/// The RabbitMQ driver's options, with oslo.messaging 18.3.1's names and defaults.
///
/// Build it with [`RabbitConfig::from_options`] (strings as found in a config file or a
/// transport URL query) or start from [`RabbitConfig::default`] and set fields.
/// `control_exchange` is not here: it comes from [`oslo_core::TransportConfig`].
///
/// ```
/// use std::collections::BTreeMap;
/// use driver_rabbit::RabbitConfig;
/// let mut options = BTreeMap::new();
/// options.insert("rabbit_qos_prefetch_count".to_string(), "10".to_string());
/// options.insert("amqp_durable_queues".to_string(), "yes".to_string());
/// let config = RabbitConfig::from_options(&options).unwrap();
/// assert_eq!(config.rabbit_qos_prefetch_count, 10);
/// assert!(config.amqp_durable_queues);
/// assert_eq!(config.rabbit_transient_queues_ttl, 1800);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RabbitConfig {
    /// Declare topic exchanges and topic/server/notification queues durable (`False`).
    pub amqp_durable_queues: bool,
    /// Declare topic exchanges and topic/server/notification queues auto-delete (`False`).
    pub amqp_auto_delete: bool,
    /// Add `x-ha-policy: all` to every queue (`False`; ignored by RabbitMQ since 3.0).
    pub rabbit_ha_queues: bool,
    /// Declare topic, server and notification queues as quorum queues (`False`).
    pub rabbit_quorum_queue: bool,
    /// Declare reply and fanout queues as quorum queues (`False`).
    pub rabbit_transient_quorum_queue: bool,
    /// `x-delivery-limit` of quorum queues; 0 means unset (`0`).
    pub rabbit_quorum_delivery_limit: i64,
    /// `x-max-in-memory-length` of quorum queues; 0 means unset (`0`).
    pub rabbit_quorum_max_memory_length: i64,
    /// `x-max-in-memory-bytes` of quorum queues; 0 means unset (`0`).
    pub rabbit_quorum_max_memory_bytes: i64,
    /// `x-expires` of reply and fanout queues, in seconds; 0 leaves it off (`1800`).
    pub rabbit_transient_queues_ttl: i64,
    /// `basic.qos` prefetch of consuming channels; 0 means unlimited and sends no `basic.qos` (`0`).
    pub rabbit_qos_prefetch_count: u16,
    /// AMQP heartbeat in seconds (`60`). lapin cannot disable heartbeats the broker asks for,
    /// so `0` means "the broker's value".
    pub heartbeat_timeout_threshold: u16,
    /// How many checks per heartbeat period (`3`); lapin schedules heartbeats itself, so this is
    /// accepted for compatibility and otherwise unused.
    pub heartbeat_rate: i64,
    /// First reconnect interval in seconds (`1`, min 1).
    pub rabbit_retry_interval: i64,
    /// Added to the interval after every failed round over all hosts (`2`, min 0).
    pub rabbit_retry_backoff: i64,
    /// Upper bound of the reconnect interval in seconds (`30`, min 1).
    pub rabbit_interval_max: i64,
    /// Wait before reconnecting after a connection loss or consumer cancel, in seconds
    /// (`1.0`, 0..=4.5).
    pub kombu_reconnect_delay: f64,
    /// Random extra wait (0..splay seconds) added to `kombu_reconnect_delay` (`0.0`).
    pub kombu_reconnect_splay: f64,
    /// How long a server keeps retrying a reply to a missing reply queue, in seconds (`60`).
    pub kombu_missing_consumer_retry_timeout: i64,
    /// How the next broker host is picked (`round-robin`).
    pub kombu_failover_strategy: FailoverStrategy,
    /// SASL mechanism (`AMQPLAIN`).
    pub rabbit_login_method: LoginMethod,
    /// Connect with TLS (`False`). The default port stays 5672, as in oslo.
    pub ssl: bool,
    /// PEM file of the CA certificates to trust (`''`: the bundled webpki roots).
    pub ssl_ca_file: String,
    /// PEM client certificate (`''`).
    pub ssl_cert_file: String,
    /// PEM (PKCS#8) client key (`''`).
    pub ssl_key_file: String,
    /// Requested TLS version (`''`). rustls negotiates TLS 1.2 or 1.3 by itself, so this is
    /// only checked and logged.
    pub ssl_version: String,
    /// `connection_name` client property. `None` (the default) gives oslo's
    /// `<basename(argv0)>:<pid>:<uuid4>`, a new uuid per connection. Not an oslo option.
    pub connection_name: Option<String>,
    /// Add `x-cancel-on-ha-failover: true` to consumers (`False`).
    pub enable_cancel_on_failover: bool,
    /// Publish replies with `mandatory` (`True`; deprecated in oslo, always on in effect).
    pub direct_mandatory_flag: bool,
    /// oslo's send connection pool size (`30`, min 1). This driver multiplexes every send on one
    /// connection, so the value is only validated.
    pub rpc_conn_pool_size: i64,
    /// oslo's pool minimum (`2`); validated only.
    pub conn_pool_min_size: i64,
    /// oslo's idle connection TTL (`1200`); unused.
    pub conn_pool_ttl: i64,
    /// Use `reply_<host>:<process>:<n>` names (`False`). Not supported: random names are used
    /// and a warning is logged.
    pub use_queue_manager: bool,
    /// Host name for the queue manager (unused).
    pub hostname: String,
    /// Process name for the queue manager (unused).
    pub processname: String,
    /// Stream fanout queues (`False`). Not supported: `true` is a configuration error.
    pub rabbit_stream_fanout: bool,
    /// Body compression (`None`). Not supported: setting it is a configuration error.
    pub kombu_compression: Option<String>,
    /// Deprecated, no effect (`False`).
    pub ssl_enforce_fips_mode: bool,
    /// Deprecated, not read by oslo 18.3.1 (`True`).
    pub ssl_enforce_hostname_verification: bool,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            amqp_durable_queues: false,
            amqp_auto_delete: false,
            rabbit_ha_queues: false,
            rabbit_quorum_queue: false,
            rabbit_transient_quorum_queue: false,
            rabbit_quorum_delivery_limit: 0,
            rabbit_quorum_max_memory_length: 0,
            rabbit_quorum_max_memory_bytes: 0,
            rabbit_transient_queues_ttl: 1800,
            rabbit_qos_prefetch_count: 0,
            heartbeat_timeout_threshold: 60,
            heartbeat_rate: 3,
            rabbit_retry_interval: 1,
            rabbit_retry_backoff: 2,
            rabbit_interval_max: 30,
            kombu_reconnect_delay: 1.0,
            kombu_reconnect_splay: 0.0,
            kombu_missing_consumer_retry_timeout: 60,
            kombu_failover_strategy: FailoverStrategy::RoundRobin,
            rabbit_login_method: LoginMethod::AmqPlain,
            ssl: false,
            ssl_ca_file: String::new(),
            ssl_cert_file: String::new(),
            ssl_key_file: String::new(),
            ssl_version: String::new(),
            connection_name: None,
            enable_cancel_on_failover: false,
            direct_mandatory_flag: true,
            rpc_conn_pool_size: 30,
            conn_pool_min_size: 2,
            conn_pool_ttl: 1200,
            use_queue_manager: false,
            hostname: String::new(),
            processname: process_name(),
            rabbit_stream_fanout: false,
            kombu_compression: None,
            ssl_enforce_fips_mode: false,
            ssl_enforce_hostname_verification: true,
        }
    }
}

/// Every option name [`RabbitConfig::from_options`] accepts (oslo names, one deprecated alias,
/// and this driver's `connection_name`).
pub const OPTION_NAMES: &[&str] = &[
    "amqp_durable_queues",
    "amqp_auto_delete",
    "rabbit_ha_queues",
    "rabbit_quorum_queue",
    "rabbit_transient_quorum_queue",
    "rabbit_quorum_delivery_limit",
    "rabbit_quorum_max_memory_length",
    "rabbit_quorum_max_memory_bytes",
    "rabbit_transient_queues_ttl",
    "rabbit_qos_prefetch_count",
    "heartbeat_timeout_threshold",
    "heartbeat_rate",
    "rabbit_retry_interval",
    "rabbit_retry_backoff",
    "rabbit_interval_max",
    "kombu_reconnect_delay",
    "kombu_reconnect_splay",
    "kombu_missing_consumer_retry_timeout",
    "kombu_reconnect_timeout",
    "kombu_failover_strategy",
    "rabbit_login_method",
    "ssl",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_version",
    "connection_name",
    "enable_cancel_on_failover",
    "direct_mandatory_flag",
    "rpc_conn_pool_size",
    "conn_pool_min_size",
    "conn_pool_ttl",
    "use_queue_manager",
    "hostname",
    "processname",
    "rabbit_stream_fanout",
    "kombu_compression",
    "ssl_enforce_fips_mode",
    "ssl_enforce_hostname_verification",
];

/// The `basic.qos` prefetch of a listener when `rabbit_qos_prefetch_count` is 0: twice oslo's
/// default `executor_thread_pool_size` (64), so a server always has a full pool's worth of
/// requests at hand and no more.
pub const DEFAULT_LISTENER_PREFETCH: u16 = 128;

impl RabbitConfig {
    /// The prefetch RPC servers and notification listeners consume with:
    /// `rabbit_qos_prefetch_count`, or [`DEFAULT_LISTENER_PREFETCH`] when that is 0.
    ///
    /// A deviation from oslo on purpose: with oslo's unlimited prefetch (0) the broker pushes
    /// a queue's whole backlog into one consumer's memory (100k queued casts of 1.1 KiB took a
    /// slow server from 16 to 193 MB), where a bounded prefetch leaves it on the broker, for
    /// the other servers of the topic to share. Nothing changes on the wire for Python peers.
    ///
    /// ```
    /// use driver_rabbit::{RabbitConfig, DEFAULT_LISTENER_PREFETCH};
    /// assert_eq!(RabbitConfig::default().listener_prefetch(), DEFAULT_LISTENER_PREFETCH);
    /// let set = RabbitConfig { rabbit_qos_prefetch_count: 10, ..RabbitConfig::default() };
    /// assert_eq!(set.listener_prefetch(), 10);
    /// ```
    pub fn listener_prefetch(&self) -> u16 {
        match self.rabbit_qos_prefetch_count {
            0 => DEFAULT_LISTENER_PREFETCH,
            count => count,
        }
    }

    /// Parse options given as strings by oslo name (`[oslo_messaging_rabbit]` values merged
    /// with the transport URL query).
    ///
    /// Each value is parsed with its option's type: booleans accept `true/false/1/0/yes/no/on/off`
    /// in any case, as oslo.config does. Errors are [`Error::Configuration`] naming the option:
    /// an unknown name (oslo `NoSuchOptError`), a bad value, a value out of range or not among
    /// the choices, `rabbit_quorum_queue` together with `rabbit_ha_queues`, and the options this
    /// driver cannot honour (`rabbit_stream_fanout=true`, `kombu_compression`).
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<RabbitConfig> {
        let mut config = RabbitConfig::default();
        for (key, value) in options {
            config.set(key, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Set one option from its string form (no cross-option validation).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "amqp_durable_queues" => self.amqp_durable_queues = parse_bool(key, value)?,
            "amqp_auto_delete" => self.amqp_auto_delete = parse_bool(key, value)?,
            "rabbit_ha_queues" => self.rabbit_ha_queues = parse_bool(key, value)?,
            "rabbit_quorum_queue" => self.rabbit_quorum_queue = parse_bool(key, value)?,
            "rabbit_transient_quorum_queue" => self.rabbit_transient_quorum_queue = parse_bool(key, value)?,
            "rabbit_quorum_delivery_limit" => self.rabbit_quorum_delivery_limit = parse_int(key, value, None, None)?,
            "rabbit_quorum_max_memory_length" => self.rabbit_quorum_max_memory_length = parse_int(key, value, None, None)?,
            "rabbit_quorum_max_memory_bytes" => self.rabbit_quorum_max_memory_bytes = parse_int(key, value, None, None)?,
            "rabbit_transient_queues_ttl" => self.rabbit_transient_queues_ttl = parse_int(key, value, Some(0), None)?,
            "rabbit_qos_prefetch_count" => {
                // oslo has no bounds; basic.qos carries a 16-bit count and negative means none.
                let count = parse_int(key, value, None, None)?;
                self.rabbit_qos_prefetch_count = count.clamp(0, i64::from(u16::MAX)) as u16;
            }
            "heartbeat_timeout_threshold" => {
                let seconds = parse_int(key, value, None, None)?;
                self.heartbeat_timeout_threshold = seconds.clamp(0, i64::from(u16::MAX)) as u16;
            }
            "heartbeat_rate" => self.heartbeat_rate = parse_int(key, value, None, None)?,
            "rabbit_retry_interval" => self.rabbit_retry_interval = parse_int(key, value, Some(1), None)?,
            "rabbit_retry_backoff" => self.rabbit_retry_backoff = parse_int(key, value, Some(0), None)?,
            "rabbit_interval_max" => self.rabbit_interval_max = parse_int(key, value, Some(1), None)?,
            "kombu_reconnect_delay" => self.kombu_reconnect_delay = parse_float(key, value, Some(0.0), Some(4.5))?,
            "kombu_reconnect_splay" => self.kombu_reconnect_splay = parse_float(key, value, Some(0.0), None)?,
            "kombu_missing_consumer_retry_timeout" | "kombu_reconnect_timeout" => {
                self.kombu_missing_consumer_retry_timeout = parse_int("kombu_missing_consumer_retry_timeout", value, None, None)?
            }
            "kombu_failover_strategy" => {
                self.kombu_failover_strategy = match value.trim() {
                    "round-robin" => FailoverStrategy::RoundRobin,
                    "shuffle" => FailoverStrategy::Shuffle,
                    other => return Err(bad_choice(key, other, &["round-robin", "shuffle"])),
                }
            }
            "rabbit_login_method" => {
                self.rabbit_login_method = match value.trim() {
                    "AMQPLAIN" => LoginMethod::AmqPlain,
                    "PLAIN" => LoginMethod::Plain,
                    "EXTERNAL" => LoginMethod::External,
                    "RABBIT-CR-DEMO" => LoginMethod::RabbitCrDemo,
                    other => return Err(bad_choice(key, other, &["PLAIN", "AMQPLAIN", "EXTERNAL", "RABBIT-CR-DEMO"])),
                }
            }
            "ssl" => self.ssl = parse_bool(key, value)?,
            "ssl_ca_file" => self.ssl_ca_file = value.to_string(),
            "ssl_cert_file" => self.ssl_cert_file = value.to_string(),
            "ssl_key_file" => self.ssl_key_file = value.to_string(),
            "ssl_version" => self.ssl_version = value.to_string(),
            "connection_name" => self.connection_name = Some(value.to_string()).filter(|v| !v.is_empty()),
            "enable_cancel_on_failover" => self.enable_cancel_on_failover = parse_bool(key, value)?,
            "direct_mandatory_flag" => self.direct_mandatory_flag = parse_bool(key, value)?,
            "rpc_conn_pool_size" => self.rpc_conn_pool_size = parse_int(key, value, Some(1), None)?,
            "conn_pool_min_size" => self.conn_pool_min_size = parse_int(key, value, None, None)?,
            "conn_pool_ttl" => self.conn_pool_ttl = parse_int(key, value, None, None)?,
            "use_queue_manager" => self.use_queue_manager = parse_bool(key, value)?,
            "hostname" => self.hostname = value.to_string(),
            "processname" => self.processname = value.to_string(),
            "rabbit_stream_fanout" => self.rabbit_stream_fanout = parse_bool(key, value)?,
            "kombu_compression" => self.kombu_compression = Some(value.to_string()).filter(|v| !v.is_empty()),
            "ssl_enforce_fips_mode" => self.ssl_enforce_fips_mode = parse_bool(key, value)?,
            "ssl_enforce_hostname_verification" => self.ssl_enforce_hostname_verification = parse_bool(key, value)?,
            unknown => {
                return Err(Error::Configuration {
                    option: unknown.to_string(),
                    reason: format!("no such option {unknown} in group [{GROUP}]"),
                })
            }
        }
        Ok(())
    }

    /// Cross-option checks oslo does at driver or connection creation, plus refusals of the
    /// options this driver does not implement.
    pub fn validate(&self) -> Result<()> {
        if self.rabbit_quorum_queue && self.rabbit_ha_queues {
            return Err(Error::configuration(
                "rabbit_quorum_queue",
                "Configuration Error: rabbit_quorum_queue and rabbit_ha_queues both enabled, queue type is quorum or HA (mirrored) not both",
            ));
        }
        if !(0.0..=4.5).contains(&self.kombu_reconnect_delay) {
            return Err(Error::configuration(
                "kombu_reconnect_delay",
                format!("value {} is out of range 0.0..4.5", self.kombu_reconnect_delay),
            ));
        }
        if self.rpc_conn_pool_size < self.conn_pool_min_size {
            return Err(Error::configuration(
                "rpc_conn_pool_size",
                format!(
                    "rpc_conn_pool_size: {} must be greater than or equal to conn_pool_min_size: {}",
                    self.rpc_conn_pool_size, self.conn_pool_min_size
                ),
            ));
        }
        if self.rabbit_stream_fanout {
            return Err(Error::configuration(
                "rabbit_stream_fanout",
                "stream fanout queues are not supported by this driver",
            ));
        }
        if let Some(compression) = &self.kombu_compression {
            return Err(Error::configuration(
                "kombu_compression",
                format!("compression {compression:?} is not supported by this driver"),
            ));
        }
        Ok(())
    }

    /// `durable` of topic exchanges and topic/server/notification queues
    /// (`amqp_durable_queues or rabbit_quorum_queue`, oslo `Connection.durable`).
    pub fn durable(&self) -> bool {
        self.amqp_durable_queues || self.rabbit_quorum_queue
    }

    /// The wait before reconnecting after a lost connection: `kombu_reconnect_delay` plus a
    /// random part of `kombu_reconnect_splay`.
    pub fn reconnect_delay(&self) -> Duration {
        let splay = if self.kombu_reconnect_splay > 0.0 {
            self.kombu_reconnect_splay * crate::util::random_unit()
        } else {
            0.0
        };
        Duration::from_secs_f64((self.kombu_reconnect_delay + splay).max(0.0))
    }

    /// The reconnect interval after `rounds` failed rounds over all hosts (1-based), kombu's
    /// `interval_start + interval_step * (rounds - 1)` capped at `interval_max`.
    pub fn retry_interval(&self, rounds: u32) -> Duration {
        let step = self.rabbit_retry_backoff.max(0).saturating_mul(i64::from(rounds.saturating_sub(1)));
        let seconds = self
            .rabbit_retry_interval
            .max(0)
            .saturating_add(step)
            .min(self.rabbit_interval_max.max(1));
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// How long a server retries a reply whose queue is missing.
    pub fn missing_consumer_retry_timeout(&self) -> Duration {
        Duration::from_secs(self.kombu_missing_consumer_retry_timeout.max(0) as u64)
    }
}

/// `basename(sys.argv[0])`, as oslo's `processname` default and connection name prefix.
pub(crate) fn process_name() -> String {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// oslo.config `types.Boolean`: true/1/on/yes and false/0/off/no, case-insensitive.
pub(crate) fn parse_bool(option: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(Error::configuration(
            option,
            format!("Value {value:?} is not a valid boolean for option {option}"),
        )),
    }
}

fn parse_int(option: &str, value: &str, min: Option<i64>, max: Option<i64>) -> Result<i64> {
    let parsed: i64 = value
        .trim()
        .parse()
        .map_err(|_| Error::configuration(option, format!("Value {value:?} is not a valid integer for option {option}")))?;
    if let Some(min) = min.filter(|min| parsed < *min) {
        return Err(Error::configuration(
            option,
            format!("Should be greater than or equal to {min}, got {parsed}"),
        ));
    }
    if let Some(max) = max.filter(|max| parsed > *max) {
        return Err(Error::configuration(
            option,
            format!("Should be less than or equal to {max}, got {parsed}"),
        ));
    }
    Ok(parsed)
}

fn parse_float(option: &str, value: &str, min: Option<f64>, max: Option<f64>) -> Result<f64> {
    let parsed: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| Error::configuration(option, format!("Value {value:?} is not a valid float for option {option}")))?;
    if let Some(min) = min.filter(|min| parsed < *min) {
        return Err(Error::configuration(
            option,
            format!("Should be greater than or equal to {min}, got {parsed}"),
        ));
    }
    if let Some(max) = max.filter(|max| parsed > *max) {
        return Err(Error::configuration(
            option,
            format!("Should be less than or equal to {max}, got {parsed}"),
        ));
    }
    Ok(parsed)
}

fn bad_choice(option: &str, value: &str, choices: &[&str]) -> Error {
    Error::configuration(option, format!("Valid values are [{}], but found {value:?}", choices.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_oslo() {
        let c = RabbitConfig::from_options(&BTreeMap::new()).unwrap();
        assert!(!c.amqp_durable_queues && !c.amqp_auto_delete && !c.rabbit_ha_queues);
        assert!(!c.rabbit_quorum_queue && !c.rabbit_transient_quorum_queue);
        assert_eq!(c.rabbit_transient_queues_ttl, 1800);
        assert_eq!(c.rabbit_qos_prefetch_count, 0);
        assert_eq!(c.heartbeat_timeout_threshold, 60);
        assert_eq!(c.heartbeat_rate, 3);
        assert_eq!((c.rabbit_retry_interval, c.rabbit_retry_backoff, c.rabbit_interval_max), (1, 2, 30));
        assert_eq!(c.kombu_reconnect_delay, 1.0);
        assert_eq!(c.kombu_missing_consumer_retry_timeout, 60);
        assert_eq!(c.kombu_failover_strategy, FailoverStrategy::RoundRobin);
        assert_eq!(c.rabbit_login_method, LoginMethod::AmqPlain);
        assert!(!c.ssl);
        assert!(c.direct_mandatory_flag);
        assert!(!c.enable_cancel_on_failover);
        assert_eq!(c.connection_name, None);
        assert!(!c.durable());
        assert_eq!(c, RabbitConfig::default());
    }

    #[test]
    fn booleans_like_oslo_config() {
        for (text, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("On", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("off", false),
        ] {
            let c = RabbitConfig::from_options(&options(&[("ssl", text)])).unwrap();
            assert_eq!(c.ssl, expected, "{text}");
        }
        let err = RabbitConfig::from_options(&options(&[("ssl", "maybe")])).unwrap_err();
        assert!(matches!(&err, Error::Configuration { option, .. } if option == "ssl"), "{err}");
    }

    #[test]
    fn unknown_option_is_no_such_opt() {
        let err = RabbitConfig::from_options(&options(&[("rabbit_hosts", "h1")])).unwrap_err();
        match err {
            Error::Configuration { option, reason } => {
                assert_eq!(option, "rabbit_hosts");
                assert_eq!(reason, "no such option rabbit_hosts in group [oslo_messaging_rabbit]");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn typed_values_and_ranges() {
        let c = RabbitConfig::from_options(&options(&[
            ("rabbit_qos_prefetch_count", "64"),
            ("kombu_reconnect_delay", "0.5"),
            ("kombu_failover_strategy", "shuffle"),
            ("rabbit_login_method", "PLAIN"),
            ("rabbit_transient_queues_ttl", "0"),
            ("kombu_reconnect_timeout", "5"),
            ("rabbit_quorum_queue", "true"),
            ("rabbit_quorum_delivery_limit", "5"),
        ]))
        .unwrap();
        assert_eq!(c.rabbit_qos_prefetch_count, 64);
        assert_eq!(c.kombu_reconnect_delay, 0.5);
        assert_eq!(c.kombu_failover_strategy, FailoverStrategy::Shuffle);
        assert_eq!(c.rabbit_login_method, LoginMethod::Plain);
        assert_eq!(c.rabbit_transient_queues_ttl, 0);
        assert_eq!(c.kombu_missing_consumer_retry_timeout, 5);
        assert!(c.durable(), "quorum queues are durable");
        for (key, value) in [
            ("kombu_reconnect_delay", "4.6"),
            ("kombu_reconnect_delay", "-1"),
            ("kombu_reconnect_delay", "soon"),
            ("rabbit_retry_interval", "0"),
            ("rabbit_transient_queues_ttl", "-5"),
            ("rabbit_qos_prefetch_count", "ten"),
            ("kombu_failover_strategy", "random"),
            ("rabbit_login_method", "amqplain"),
            ("rabbit_stream_fanout", "true"),
            ("kombu_compression", "gzip"),
        ] {
            let err = RabbitConfig::from_options(&options(&[(key, value)])).unwrap_err();
            assert!(
                matches!(&err, Error::Configuration { option, .. } if option == key),
                "{key}={value}: {err}"
            );
        }
        assert!(RabbitConfig::from_options(&options(&[("kombu_reconnect_delay", "4.5")])).is_ok());
    }

    #[test]
    fn quorum_and_ha_conflict() {
        let err = RabbitConfig::from_options(&options(&[("rabbit_quorum_queue", "true"), ("rabbit_ha_queues", "true")])).unwrap_err();
        assert!(
            matches!(&err, Error::Configuration { option, .. } if option == "rabbit_quorum_queue"),
            "{err}"
        );
    }

    #[test]
    fn retry_intervals_follow_kombu() {
        let c = RabbitConfig::default();
        let secs: Vec<u64> = (1..=20).map(|r| c.retry_interval(r).as_secs()).collect();
        assert_eq!(&secs[..5], &[1, 3, 5, 7, 9]);
        assert_eq!(*secs.last().unwrap(), 30);
        assert_eq!(c.reconnect_delay(), Duration::from_secs(1));
    }
}
