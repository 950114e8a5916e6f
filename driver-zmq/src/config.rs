//! `[oslo_messaging_zmq]` and `[matchmaker_redis]` options (oslo.messaging 8.1.4,
//! `zmq_options.py`, `matchmaker/zmq_matchmaker_redis.py`), parsed from strings the way
//! oslo.config parses them, plus the few options of this driver's own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oslo_core::{Error, Result, TransportUrl};

/// The oslo.config group of the driver options (used in error messages).
pub const GROUP: &str = "oslo_messaging_zmq";

/// The default of `zmq_hwm`: requests in flight per connection (libzmq's default HWM).
pub const DEFAULT_HWM: usize = 1000;

/// The largest `zmq_hwm` accepted (a window the server side can still count per peer).
pub const MAX_HWM: usize = 1_000_000;

/// The default of `zmq_hwm_bytes`: bytes of requests in flight per connection (4 MiB).
pub const DEFAULT_HWM_BYTES: usize = 4 * 1024 * 1024;

/// The largest `zmq_hwm_bytes` accepted (4 GiB - 1).
pub const MAX_HWM_BYTES: usize = u32::MAX as usize;

/// Which matchmaker finds the servers of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchmakerKind {
    /// Records in Redis (`zmq+redis://host:port/db`): works across processes and hosts.
    Redis,
    /// Records in this process's memory (`zmq+dummy://`): one process only.
    Dummy,
}

/// Every option name the driver accepts (anything else is a `ConfigurationError`, as in oslo).
pub const OPTION_NAMES: &[&str] = &[
    "rpc_zmq_bind_address",
    "rpc_zmq_matchmaker",
    "rpc_zmq_contexts",
    "rpc_zmq_topic_backlog",
    "rpc_zmq_ipc_dir",
    "rpc_zmq_host",
    "zmq_linger",
    "rpc_poll_timeout",
    "zmq_target_expire",
    "zmq_target_update",
    "use_pub_sub",
    "use_router_proxy",
    "use_dynamic_connections",
    "zmq_failover_connections",
    "rpc_zmq_min_port",
    "rpc_zmq_max_port",
    "rpc_zmq_bind_port_retries",
    "rpc_zmq_serialization",
    "zmq_immediate",
    "zmq_tcp_keepalive",
    "zmq_tcp_keepalive_idle",
    "zmq_tcp_keepalive_cnt",
    "zmq_tcp_keepalive_intvl",
    "rpc_thread_pool_size",
    "rpc_message_ttl",
    "rpc_use_acks",
    "rpc_ack_timeout_base",
    "rpc_ack_timeout_multiplier",
    "rpc_retry_attempts",
    "subscribe_on",
    // [matchmaker_redis]
    "host",
    "port",
    "password",
    "sentinel_hosts",
    "sentinel_group_name",
    "wait_timeout",
    "check_timeout",
    "socket_timeout",
    // This driver's own.
    "zmq_connect_timeout",
    "zmq_routing_refresh",
    "zmq_use_ipc",
    "matchmaker_key_prefix",
    "zmq_hwm",
    "zmq_hwm_bytes",
];

/// The ZeroMQ driver's options, with oslo's names and defaults.
///
/// Build it with [`ZmqConfig::from_url`]: the URL's query overrides the configured options.
///
/// ```
/// use std::collections::BTreeMap;
/// let url = oslo_core::TransportUrl::parse("zmq+dummy://?rpc_zmq_min_port=40000&rpc_zmq_max_port=40100").unwrap();
/// let config = driver_zmq::ZmqConfig::from_url(&url, &BTreeMap::new()).unwrap();
/// assert_eq!(config.rpc_zmq_min_port, 40000);
/// assert_eq!(config.zmq_target_expire, std::time::Duration::from_secs(300));
/// assert_eq!(config.matchmaker, driver_zmq::MatchmakerKind::Dummy);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ZmqConfig {
    /// Matchmaker: the URL's `zmq+<name>` variant, else `rpc_zmq_matchmaker` (`redis`).
    pub matchmaker: MatchmakerKind,
    /// Address servers bind their ROUTER socket to; `*` is every interface (`*`).
    pub rpc_zmq_bind_address: String,
    /// Directory of the `ipc://` socket files of same-host peers (`/var/run/openstack`).
    pub rpc_zmq_ipc_dir: PathBuf,
    /// This host's name or address as peers reach it; goes into matchmaker records
    /// (the host name).
    pub rpc_zmq_host: String,
    /// How long a matchmaker record lives without refresh; 0 = forever (300 s).
    pub zmq_target_expire: Duration,
    /// How often a server refreshes its records (180 s).
    pub zmq_target_update: Duration,
    /// How many further servers of a topic a send tries when the chosen one cannot be
    /// reached (2).
    pub zmq_failover_connections: usize,
    /// Lowest port a server binds (49153).
    pub rpc_zmq_min_port: u32,
    /// Port range end, exclusive (65536).
    pub rpc_zmq_max_port: u32,
    /// How many random ports a server tries before giving up (100).
    pub rpc_zmq_bind_port_retries: u32,
    /// How long a connect to a server may take before the server counts as unreachable
    /// (ours: 5 s; never longer than the call's own timeout).
    pub zmq_connect_timeout: Duration,
    /// How long a Redis lookup is reused before it is made again (ours: 1 s; 0 = every send).
    /// Changes made by this process are seen at once whatever the value.
    pub zmq_routing_refresh: Duration,
    /// Reach servers on this host through `ipc://` socket files instead of TCP (ours: true).
    pub zmq_use_ipc: bool,
    /// Prefix of every Redis key (ours: empty, oslo's layout), e.g. to share a Redis.
    pub matchmaker_key_prefix: String,
    /// High-water mark of one connection (ours: 1000; 0 = none): at most this many requests
    /// (calls, casts, fanout copies, notifications) sent to one server and not yet taken by
    /// it; a further send to that server waits for room, within its timeout if it has one.
    /// Needs a server of this driver version (see the crate docs, "Flow control"); oslo 8.1.4
    /// had no such option.
    pub zmq_hwm: usize,
    /// The same in bytes of request frames (ours: 4 MiB; 0 = none), so that big messages do
    /// not make `zmq_hwm` a lot of memory. A request bigger than this waits until nothing else
    /// is in flight on its connection, then goes alone.
    pub zmq_hwm_bytes: usize,
    /// Not an option of this group: `TransportConfig::max_message_size`, set by the driver.
    /// Larger requests and replies are dropped before they are decoded (0 = no limit).
    pub max_message_size: usize,
    /// Redis connect and command timeout (`socket_timeout`, 10000 ms).
    pub redis_socket_timeout: Duration,
    /// Redis host when the URL names none (`[matchmaker_redis] host`, `127.0.0.1`).
    pub redis_host: String,
    /// Redis port when the URL names none (`[matchmaker_redis] port`, 6379).
    pub redis_port: u16,
}

impl ZmqConfig {
    /// Read the options from `url` (scheme variant, query) and `options` (the configured
    /// driver options; the query wins).
    pub fn from_url(url: &TransportUrl, options: &BTreeMap<String, String>) -> Result<Self> {
        let mut merged = options.clone();
        merged.extend(url.query.iter().map(|(k, v)| (k.clone(), v.clone())));
        for key in merged.keys() {
            if !OPTION_NAMES.contains(&key.as_str()) {
                return Err(Error::configuration(key.clone(), format!("no such option in group {GROUP}")));
            }
        }
        let get = |key: &str| merged.get(key).map(|v| v.trim().to_string());
        let matchmaker_name = match url.transport_variant() {
            Some(variant) => variant.to_string(),
            None => get("rpc_zmq_matchmaker").unwrap_or_else(|| "redis".into()),
        };
        let matchmaker = match matchmaker_name.as_str() {
            "redis" => MatchmakerKind::Redis,
            "dummy" => MatchmakerKind::Dummy,
            "sentinel" => {
                return Err(Error::configuration(
                    "rpc_zmq_matchmaker",
                    "the Redis Sentinel matchmaker is not supported; use zmq+redis://host:port",
                ))
            }
            other => {
                return Err(Error::configuration(
                    "rpc_zmq_matchmaker",
                    format!("unknown matchmaker {other:?} (allowed: redis, dummy)"),
                ))
            }
        };
        for (option, what) in [
            ("use_pub_sub", "PUB/SUB fanout needs the zmq proxy, which this driver does not have"),
            ("use_router_proxy", "the router proxy mode is not supported; only direct mode is"),
            (
                "use_dynamic_connections",
                "one socket per message is not supported; connections are cached",
            ),
            (
                "rpc_use_acks",
                "acknowledgements exist only in oslo's proxy mode, which is not supported",
            ),
        ] {
            if get(option).map(|v| parse_bool(option, &v)).transpose()?.unwrap_or(false) {
                return Err(Error::configuration(option, what));
            }
        }
        if let Some(serialization) = get("rpc_zmq_serialization") {
            if serialization != "json" {
                return Err(Error::configuration(
                    "rpc_zmq_serialization",
                    format!("{serialization:?} is not supported (allowed: json)"),
                ));
            }
        }
        if get("sentinel_hosts").is_some_and(|v| !v.is_empty()) {
            return Err(Error::configuration("sentinel_hosts", "Redis Sentinel is not supported"));
        }
        // Accepted for compatibility with oslo configuration files; they have no effect here
        // (documented in the crate docs): read them anyway so that bad values are reported.
        for option in [
            "rpc_zmq_contexts",
            "zmq_linger",
            "rpc_thread_pool_size",
            "rpc_message_ttl",
            "rpc_retry_attempts",
        ] {
            if let Some(v) = get(option) {
                parse_int(option, &v)?;
            }
        }
        for option in ["zmq_immediate"] {
            if let Some(v) = get(option) {
                parse_bool(option, &v)?;
            }
        }

        let seconds = |option: &str, default: f64| -> Result<Duration> {
            match get(option) {
                None => Ok(Duration::from_secs_f64(default)),
                Some(v) => {
                    let value: f64 = v
                        .parse()
                        .map_err(|_| Error::configuration(option, format!("{v:?} is not a number")))?;
                    if !value.is_finite() || value > 1e9 {
                        return Err(Error::configuration(option, format!("{v:?} is out of range")));
                    }
                    Ok(Duration::from_secs_f64(value.max(0.0)))
                }
            }
        };
        let millis = |option: &str, default: u64| -> Result<Duration> {
            match get(option) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => Ok(Duration::from_millis(parse_int(option, &v)?.clamp(1, 86_400_000) as u64)),
            }
        };
        let int = |option: &str, default: i64| -> Result<i64> { get(option).map_or(Ok(default), |v| parse_int(option, &v)) };

        let rpc_zmq_min_port = int("rpc_zmq_min_port", 49153)?;
        let rpc_zmq_max_port = int("rpc_zmq_max_port", 65536)?;
        if !(1..=65535).contains(&rpc_zmq_min_port) || !(2..=65536).contains(&rpc_zmq_max_port) || rpc_zmq_min_port >= rpc_zmq_max_port {
            return Err(Error::configuration(
                "rpc_zmq_min_port",
                format!("port range [{rpc_zmq_min_port}, {rpc_zmq_max_port}) is not valid (1..=65536, min < max)"),
            ));
        }
        let expire = int("zmq_target_expire", 300)?;
        let update = int("zmq_target_update", 180)?;
        if update <= 0 {
            return Err(Error::configuration("zmq_target_update", "must be positive"));
        }
        if expire > 0 && update >= expire {
            return Err(Error::configuration(
                "zmq_target_update",
                format!("records would expire before their refresh ({update} s >= zmq_target_expire {expire} s)"),
            ));
        }
        let redis_port = int("port", 6379)?;
        Ok(ZmqConfig {
            matchmaker,
            rpc_zmq_bind_address: get("rpc_zmq_bind_address").unwrap_or_else(|| "*".into()),
            rpc_zmq_ipc_dir: PathBuf::from(get("rpc_zmq_ipc_dir").unwrap_or_else(|| "/var/run/openstack".into())),
            rpc_zmq_host: get("rpc_zmq_host").filter(|h| !h.is_empty()).unwrap_or_else(local_hostname),
            zmq_target_expire: Duration::from_secs(expire.max(0) as u64),
            zmq_target_update: Duration::from_secs(update as u64),
            zmq_failover_connections: int("zmq_failover_connections", 2)?.clamp(0, 1000) as usize,
            rpc_zmq_min_port: rpc_zmq_min_port as u32,
            rpc_zmq_max_port: rpc_zmq_max_port as u32,
            rpc_zmq_bind_port_retries: int("rpc_zmq_bind_port_retries", 100)?.clamp(1, 100_000) as u32,
            zmq_connect_timeout: seconds("zmq_connect_timeout", 5.0)?.max(Duration::from_millis(10)),
            zmq_routing_refresh: seconds("zmq_routing_refresh", 1.0)?,
            zmq_use_ipc: get("zmq_use_ipc").map_or(Ok(true), |v| parse_bool("zmq_use_ipc", &v))?,
            matchmaker_key_prefix: get("matchmaker_key_prefix").unwrap_or_default(),
            zmq_hwm: match int("zmq_hwm", DEFAULT_HWM as i64)? {
                hwm if (0..=MAX_HWM as i64).contains(&hwm) => hwm as usize,
                hwm => return Err(Error::configuration("zmq_hwm", format!("{hwm} is out of range (0..={MAX_HWM})"))),
            },
            zmq_hwm_bytes: match int("zmq_hwm_bytes", DEFAULT_HWM_BYTES as i64)? {
                hwm if (0..=MAX_HWM_BYTES as i64).contains(&hwm) => hwm as usize,
                hwm => {
                    return Err(Error::configuration(
                        "zmq_hwm_bytes",
                        format!("{hwm} is out of range (0..={MAX_HWM_BYTES})"),
                    ))
                }
            },
            max_message_size: oslo_core::DEFAULT_MAX_MESSAGE_SIZE,
            redis_socket_timeout: millis("socket_timeout", 10_000)?,
            redis_host: get("host").unwrap_or_else(|| "127.0.0.1".into()),
            redis_port: u16::try_from(redis_port).map_err(|_| Error::configuration("port", format!("{redis_port} is not a port")))?,
        })
    }

    /// The address the ROUTER binds (`*` means every IPv4 interface).
    pub(crate) fn bind_host(&self) -> &str {
        match self.rpc_zmq_bind_address.as_str() {
            "*" | "" => "0.0.0.0",
            other => other,
        }
    }
}

/// oslo.config's boolean strings.
fn parse_bool(option: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::configuration(option, format!("{value:?} is not a boolean"))),
    }
}

fn parse_int(option: &str, value: &str) -> Result<i64> {
    value
        .parse()
        .map_err(|_| Error::configuration(option, format!("{value:?} is not an integer")))
}

/// The host name, as oslo's `rpc_zmq_host` default (`socket.gethostname()`).
fn local_hostname() -> String {
    // procfs is memory-backed: this read does not block.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<ZmqConfig> {
        ZmqConfig::from_url(&TransportUrl::parse(url).unwrap(), &BTreeMap::new())
    }

    #[test]
    fn defaults_are_oslos() {
        let c = config("zmq://").unwrap();
        assert_eq!(c.matchmaker, MatchmakerKind::Redis, "oslo's default matchmaker");
        assert_eq!(c.rpc_zmq_bind_address, "*");
        assert_eq!((c.rpc_zmq_min_port, c.rpc_zmq_max_port), (49153, 65536));
        assert_eq!(c.zmq_target_expire, Duration::from_secs(300));
        assert_eq!(c.zmq_target_update, Duration::from_secs(180));
        assert_eq!(c.zmq_failover_connections, 2);
        assert_eq!(c.rpc_zmq_ipc_dir, PathBuf::from("/var/run/openstack"));
        assert!(!c.rpc_zmq_host.is_empty());
        assert_eq!(c.zmq_hwm, DEFAULT_HWM);
        assert_eq!(config("zmq://?zmq_hwm=0").unwrap().zmq_hwm, 0, "0 = no high-water mark");
        assert_eq!(config("zmq://?zmq_hwm=7").unwrap().zmq_hwm, 7);
        assert_eq!(c.zmq_hwm_bytes, DEFAULT_HWM_BYTES);
        assert_eq!(config("zmq://?zmq_hwm_bytes=0").unwrap().zmq_hwm_bytes, 0);
    }

    #[test]
    fn scheme_variant_and_option_pick_the_matchmaker() {
        assert_eq!(config("zmq+dummy://").unwrap().matchmaker, MatchmakerKind::Dummy);
        assert_eq!(config("zmq://?rpc_zmq_matchmaker=dummy").unwrap().matchmaker, MatchmakerKind::Dummy);
        assert!(matches!(config("zmq+sentinel://h:26379"), Err(Error::Configuration { .. })));
        assert!(matches!(config("zmq+etcd://h"), Err(Error::Configuration { .. })));
    }

    #[test]
    fn bad_and_unsupported_options_are_refused() {
        for url in [
            "zmq+dummy://?no_such_option=1",
            "zmq+dummy://?use_pub_sub=true",
            "zmq+dummy://?use_router_proxy=true",
            "zmq+dummy://?rpc_use_acks=yes",
            "zmq+dummy://?rpc_zmq_serialization=msgpack",
            "zmq+dummy://?rpc_zmq_min_port=500&rpc_zmq_max_port=400",
            "zmq+dummy://?zmq_target_expire=10&zmq_target_update=20",
            "zmq+dummy://?zmq_connect_timeout=soon",
            "zmq+dummy://?zmq_linger=never",
            "zmq+dummy://?zmq_hwm=-1",
            "zmq+dummy://?zmq_hwm=lots",
            "zmq+dummy://?zmq_hwm=1000001",
            "zmq+dummy://?zmq_hwm_bytes=-5",
            "zmq+dummy://?zmq_hwm_bytes=4294967296",
        ] {
            let err = config(url).expect_err(url);
            assert!(matches!(err, Error::Configuration { .. }), "{url}: {err}");
        }
        assert!(config("zmq+dummy://?use_pub_sub=false&zmq_linger=0").is_ok());
    }
}
