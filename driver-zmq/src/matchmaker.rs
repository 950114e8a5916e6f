//! Matchmakers: where servers register the address of their ROUTER socket and clients look
//! up the servers of a target (oslo's `matchmaker/` package).
//!
//! Keys follow oslo's `zmq_address.target_to_key`: `ROUTER/<topic>` lists every server of a
//! topic, `ROUTER/<topic>/<server>` the ones with that server name (only the part of the name
//! before `@`, oslo's Cinder workaround). Values are `host:port`. Two additions: a topic on an
//! exchange other than `control_exchange` is keyed `<exchange>:<topic>` (oslo ignored exchanges,
//! so two exchanges sharing a topic name mixed their servers), and notification pools register
//! their names in `POOL/<topic>.<priority>` and their listeners in `POOL/<topic>.<priority>/<pool>`.
//!
//! Each record expires on its own `zmq_target_expire` after its last refresh. (oslo's Redis
//! matchmaker put an `EXPIRE` on the whole set, so a dead server's record lived as long as any
//! other server of the topic kept refreshing.)

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oslo_core::{Error, Result, TransportUrl};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::config::ZmqConfig;

/// The socket type servers register under (oslo's `listener_type`).
pub const ROUTER: &str = "ROUTER";
/// The prefix of notification pool records.
pub const POOL: &str = "POOL";

/// A place where servers register and clients find them.
#[async_trait]
pub trait Matchmaker: Send + Sync + fmt::Debug {
    /// Add (or refresh) `host` under `key`, to expire after `expire` (zero: never).
    async fn register(&self, key: &str, host: &str, expire: Duration) -> Result<()>;
    /// Remove `host` from `key`.
    async fn unregister(&self, key: &str, host: &str) -> Result<()>;
    /// The unexpired hosts under `key`.
    async fn get_hosts(&self, key: &str) -> Result<Vec<String>>;
    /// Remove `value` from `key` if `members_key` has no unexpired record, atomically (a pool's
    /// name once its last listener is gone).
    async fn unregister_if_empty(&self, key: &str, value: &str, members_key: &str) -> Result<()>;
    /// Drop what is cached about `key` (a server of it could not be reached), so that the
    /// next lookup asks again.
    fn forget(&self, _key: &str) {}
}

/// Build the matchmaker `config` asks for.
pub fn for_config(url: &TransportUrl, config: &ZmqConfig) -> Result<Arc<dyn Matchmaker>> {
    match config.matchmaker {
        crate::MatchmakerKind::Dummy => Ok(DummyMatchmaker::shared(url)),
        crate::MatchmakerKind::Redis => Ok(Arc::new(CachedMatchmaker::new(
            RedisMatchmaker::new(url, config)?,
            config.zmq_routing_refresh,
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Dummy: one process's memory.

/// Records in this process's memory, shared by every transport built from the same URL
/// (oslo's `MatchmakerDummy`). Servers in other processes cannot be found through it.
#[derive(Debug, Default)]
pub struct DummyMatchmaker {
    records: Mutex<HashMap<String, HashMap<String, Option<Instant>>>>,
}

impl DummyMatchmaker {
    /// The process-wide matchmaker for `url` (its hosts and virtual host name it:
    /// `zmq+dummy://` and `zmq+dummy://a` are separate).
    pub fn shared(url: &TransportUrl) -> Arc<dyn Matchmaker> {
        static REGISTRIES: OnceLock<Mutex<HashMap<String, Arc<DummyMatchmaker>>>> = OnceLock::new();
        let name = format!(
            "{}/{}",
            url.hosts
                .iter()
                .map(|h| format!("{}:{}", h.hostname.as_deref().unwrap_or(""), h.port.unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(","),
            url.virtual_host.as_deref().unwrap_or("")
        );
        let mut registries = REGISTRIES.get_or_init(Default::default).lock().expect("dummy registries poisoned");
        registries.entry(name).or_default().clone()
    }
}

#[async_trait]
impl Matchmaker for DummyMatchmaker {
    async fn register(&self, key: &str, host: &str, expire: Duration) -> Result<()> {
        let expires = (!expire.is_zero()).then(|| Instant::now() + expire);
        let mut records = self.records.lock().expect("dummy matchmaker poisoned");
        records.entry(key.to_string()).or_default().insert(host.to_string(), expires);
        Ok(())
    }

    async fn unregister(&self, key: &str, host: &str) -> Result<()> {
        let mut records = self.records.lock().expect("dummy matchmaker poisoned");
        if let Some(hosts) = records.get_mut(key) {
            hosts.remove(host);
            if hosts.is_empty() {
                records.remove(key);
            }
        }
        Ok(())
    }

    async fn get_hosts(&self, key: &str) -> Result<Vec<String>> {
        let now = Instant::now();
        let mut records = self.records.lock().expect("dummy matchmaker poisoned");
        let Some(hosts) = records.get_mut(key) else { return Ok(Vec::new()) };
        hosts.retain(|_, expires| expires.is_none_or(|at| at > now));
        let mut found: Vec<String> = hosts.keys().cloned().collect();
        if found.is_empty() {
            records.remove(key);
        }
        found.sort();
        Ok(found)
    }

    async fn unregister_if_empty(&self, key: &str, value: &str, members_key: &str) -> Result<()> {
        let now = Instant::now();
        let mut records = self.records.lock().expect("dummy matchmaker poisoned");
        let members_left = records
            .get(members_key)
            .is_some_and(|members| members.values().any(|expires| expires.is_none_or(|at| at > now)));
        if !members_left {
            if let Some(values) = records.get_mut(key) {
                values.remove(value);
                if values.is_empty() {
                    records.remove(key);
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Redis.

/// Add a record scored with its expiry time (Redis server clock, so hosts' clocks do not
/// matter), drop expired ones, and keep the key itself alive as long as its longest record.
const REGISTER_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expire = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if expire > 0 then
  redis.call('ZADD', KEYS[1], now + expire, ARGV[1])
  -- PTTL is -1 for a key without expiry (just created): give it one, unless it holds
  -- records that never expire.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < expire and redis.call('ZCOUNT', KEYS[1], 'inf', 'inf') == 0 then
    redis.call('PEXPIRE', KEYS[1], expire)
  end
else
  redis.call('ZADD', KEYS[1], 'inf', ARGV[1])
  redis.call('PERSIST', KEYS[1])
end
return 1
"#;

/// The records of a key that have not expired.
const LOOKUP_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"#;

/// Remove ARGV[1] from KEYS[1] when KEYS[2] has no unexpired member.
const UNREGISTER_IF_EMPTY_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"#;

/// Records in Redis (oslo's `MatchmakerRedis`): one sorted set per key, each `host:port`
/// member scored with the time it expires.
pub struct RedisMatchmaker {
    client: redis::Client,
    address: String,
    prefix: String,
    timeout: Duration,
    connection: OnceCell<ConnectionManager>,
    register: redis::Script,
    lookup: redis::Script,
    unregister_if_empty: redis::Script,
}

impl fmt::Debug for RedisMatchmaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the password: never print it.
        f.debug_struct("RedisMatchmaker")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisMatchmaker {
    /// A matchmaker on the Redis named by the URL's first host (or `[matchmaker_redis]
    /// host`/`port`), database = the URL's virtual host (a number, default 0), password = the
    /// URL's password. Connects on first use.
    pub fn new(url: &TransportUrl, config: &ZmqConfig) -> Result<Self> {
        let first = url.hosts.first();
        let host = first
            .and_then(|h| h.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| config.redis_host.clone());
        let port = first.and_then(|h| h.port).unwrap_or(config.redis_port);
        let db = match url.virtual_host.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => 0,
            Some(db) => db.parse::<i64>().map_err(|_| Error::InvalidTransportUrl {
                reason: format!("the Redis database (the URL path) must be a number, not {db:?}"),
                url: url.to_string(),
            })?,
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(db);
        if let Some(user) = first.and_then(|h| h.username.as_deref()).filter(|u| !u.is_empty()) {
            settings = settings.set_username(user);
        }
        if let Some(password) = first.and_then(|h| h.password.as_ref()) {
            settings = settings.set_password(password.expose());
        }
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(host.clone(), port))
            .map_err(|e| Error::configuration("host", e.to_string()))?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| Error::configuration("host", e.to_string()))?;
        Ok(RedisMatchmaker {
            client,
            address: format!("{host}:{port}/{db}"),
            prefix: config.matchmaker_key_prefix.clone(),
            timeout: config.redis_socket_timeout,
            connection: OnceCell::new(),
            register: redis::Script::new(REGISTER_SCRIPT),
            lookup: redis::Script::new(LOOKUP_SCRIPT),
            unregister_if_empty: redis::Script::new(UNREGISTER_IF_EMPTY_SCRIPT),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .map_err(|e| self.error("connect", e))?;
        Ok(connection.clone())
    }

    fn error(&self, what: &str, err: redis::RedisError) -> Error {
        Error::MessageDeliveryFailure {
            message: format!("matchmaker Redis {}: {what} failed: {err}", self.address),
            retryable: true,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Matchmaker for RedisMatchmaker {
    async fn register(&self, key: &str, host: &str, expire: Duration) -> Result<()> {
        let mut connection = self.connection().await?;
        let expire_ms = expire.as_millis().min(i64::MAX as u128) as i64;
        self.register
            .key(self.key(key))
            .arg(host)
            .arg(expire_ms)
            .invoke_async::<i64>(&mut connection)
            .await
            .map_err(|e| self.error("register", e))?;
        Ok(())
    }

    async fn unregister(&self, key: &str, host: &str) -> Result<()> {
        let mut connection = self.connection().await?;
        redis::cmd("ZREM")
            .arg(self.key(key))
            .arg(host)
            .query_async::<i64>(&mut connection)
            .await
            .map_err(|e| self.error("unregister", e))?;
        Ok(())
    }

    async fn get_hosts(&self, key: &str) -> Result<Vec<String>> {
        let mut connection = self.connection().await?;
        let mut hosts: Vec<String> = self
            .lookup
            .key(self.key(key))
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.error("lookup", e))?;
        hosts.sort();
        Ok(hosts)
    }

    async fn unregister_if_empty(&self, key: &str, value: &str, members_key: &str) -> Result<()> {
        let mut connection = self.connection().await?;
        self.unregister_if_empty
            .key(self.key(key))
            .key(self.key(members_key))
            .arg(value)
            .invoke_async::<i64>(&mut connection)
            .await
            .map_err(|e| self.error("unregister", e))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Lookup cache.

/// Every register/unregister made in this process stamps its key here, so that cached
/// lookups older than the change are made again at once, in every transport of the process.
fn local_changes() -> &'static Mutex<HashMap<String, (u64, Instant)>> {
    static CHANGES: OnceLock<Mutex<HashMap<String, (u64, Instant)>>> = OnceLock::new();
    CHANGES.get_or_init(Default::default)
}

static CHANGE_CLOCK: AtomicU64 = AtomicU64::new(1);

fn note_local_change(key: &str, max_age: Duration) {
    let stamp = CHANGE_CLOCK.fetch_add(1, Ordering::SeqCst) + 1;
    let mut changes = local_changes().lock().expect("change table poisoned");
    if changes.len() >= 4096 {
        // A stamp older than the cache age can no longer make a cached lookup stale: any
        // lookup older than it is expired anyway.
        let now = Instant::now();
        changes.retain(|_, (_, at)| now.duration_since(*at) <= max_age);
    }
    changes.insert(key.to_string(), (stamp, Instant::now()));
}

fn last_local_change(key: &str) -> u64 {
    local_changes()
        .lock()
        .expect("change table poisoned")
        .get(key)
        .map_or(0, |(stamp, _)| *stamp)
}

#[derive(Debug)]
struct CachedHosts {
    hosts: Vec<String>,
    fetched: Instant,
    stamp: u64,
}

/// Reuses a lookup for `max_age` (oslo's routing table, refreshed every
/// `zmq_target_update`, here `zmq_routing_refresh`), and never caches "no hosts".
#[derive(Debug)]
pub struct CachedMatchmaker<M> {
    inner: M,
    max_age: Duration,
    cache: Mutex<HashMap<String, CachedHosts>>,
}

/// The most keys cached at once (bounds memory; the cache is simply cleared when full).
const CACHE_CAPACITY: usize = 10_000;

impl<M: Matchmaker> CachedMatchmaker<M> {
    /// Wrap `inner`.
    pub fn new(inner: M, max_age: Duration) -> Self {
        CachedMatchmaker {
            inner,
            max_age,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<M: Matchmaker> Matchmaker for CachedMatchmaker<M> {
    async fn register(&self, key: &str, host: &str, expire: Duration) -> Result<()> {
        let result = self.inner.register(key, host, expire).await;
        note_local_change(key, self.max_age);
        result
    }

    async fn unregister(&self, key: &str, host: &str) -> Result<()> {
        let result = self.inner.unregister(key, host).await;
        note_local_change(key, self.max_age);
        result
    }

    async fn unregister_if_empty(&self, key: &str, value: &str, members_key: &str) -> Result<()> {
        let result = self.inner.unregister_if_empty(key, value, members_key).await;
        note_local_change(key, self.max_age);
        result
    }

    fn forget(&self, key: &str) {
        self.cache.lock().expect("routing cache poisoned").remove(key);
    }

    async fn get_hosts(&self, key: &str) -> Result<Vec<String>> {
        let changed = last_local_change(key);
        let stale = {
            let cache = self.cache.lock().expect("routing cache poisoned");
            match cache.get(key) {
                Some(entry) if entry.stamp >= changed && entry.fetched.elapsed() < self.max_age => return Ok(entry.hosts.clone()),
                Some(entry) => Some(entry.hosts.clone()),
                None => None,
            }
        };
        let stamp = CHANGE_CLOCK.load(Ordering::SeqCst);
        match self.inner.get_hosts(key).await {
            Ok(hosts) => {
                let mut cache = self.cache.lock().expect("routing cache poisoned");
                if hosts.is_empty() {
                    cache.remove(key);
                } else {
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                    cache.insert(
                        key.to_string(),
                        CachedHosts {
                            hosts: hosts.clone(),
                            fetched: Instant::now(),
                            stamp,
                        },
                    );
                }
                Ok(hosts)
            }
            Err(err) => match stale {
                // The matchmaker is unreachable: the last known servers are better than none.
                Some(hosts) => {
                    tracing::warn!(key, error = %err, "matchmaker lookup failed; using the last known hosts");
                    Ok(hosts)
                }
                None => Err(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dummy_records_expire_and_are_shared_per_url() {
        let url = TransportUrl::parse("zmq+dummy://unit-test-expiry").unwrap();
        let a = DummyMatchmaker::shared(&url);
        let b = DummyMatchmaker::shared(&url);
        let other = DummyMatchmaker::shared(&TransportUrl::parse("zmq+dummy://unit-test-other").unwrap());
        a.register("ROUTER/t", "h:1", Duration::from_millis(100)).await.unwrap();
        a.register("ROUTER/t", "h:2", Duration::ZERO).await.unwrap();
        assert_eq!(b.get_hosts("ROUTER/t").await.unwrap(), vec!["h:1", "h:2"]);
        assert!(other.get_hosts("ROUTER/t").await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(b.get_hosts("ROUTER/t").await.unwrap(), vec!["h:2"], "expired record dropped");
        b.unregister("ROUTER/t", "h:2").await.unwrap();
        assert!(a.get_hosts("ROUTER/t").await.unwrap().is_empty());
    }
}
