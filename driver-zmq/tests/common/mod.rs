//! Helpers shared by the driver's integration tests. The Redis tests are gated on
//! `OSLO_TEST_ZMQ_URL` (e.g. `zmq+redis://127.0.0.1:6379`); the `zmq+dummy://` ones always run.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use driver_zmq::ZmqDriver;
use oslo_core::{Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target, Transport, TransportConfig, TransportUrl};
use serde_json::Value;

/// The Redis matchmaker URL, or `None` (the test then prints the skip notice and returns).
pub fn redis_url() -> Option<String> {
    std::env::var("OSLO_TEST_ZMQ_URL").ok().filter(|u| !u.trim().is_empty())
}

/// Whether `OSLO_REQUIRE_BROKERS` (as in CI) names `zmq` (or `all`): then a missing URL fails.
pub fn redis_required() -> bool {
    std::env::var("OSLO_REQUIRE_BROKERS").is_ok_and(|v| v.split([',', ' ']).any(|b| b.trim() == "zmq" || b.trim() == "all"))
}

/// `let url = require_redis!();` — skip the test when `OSLO_TEST_ZMQ_URL` is unset (fail
/// instead when `OSLO_REQUIRE_BROKERS` names `zmq`).
#[macro_export]
macro_rules! require_redis {
    () => {
        match common::redis_url() {
            Some(url) => {
                common::init_tracing();
                url
            }
            None if common::redis_required() => panic!("OSLO_TEST_ZMQ_URL is not set but OSLO_REQUIRE_BROKERS names zmq"),
            None => {
                eprintln!("skipping: OSLO_TEST_ZMQ_URL not set");
                return;
            }
        }
    };
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// `url` with extra query options appended.
pub fn with_query(url: &str, options: &[(&str, &str)]) -> String {
    if options.is_empty() {
        return url.to_string();
    }
    let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{}", query.join("&"))
}

/// A transport over a zmq driver for `url` (options in its query).
pub fn transport(url: &str) -> Transport {
    let parsed = TransportUrl::parse(url).expect("test URL parses");
    let config = TransportConfig {
        driver_options: BTreeMap::new(),
        ..TransportConfig::default()
    };
    let driver = Arc::new(ZmqDriver::new(&parsed, &config).expect("driver builds"));
    Transport::from_driver(driver, parsed, config)
}

/// `echo` returns its `value`; `whoami` returns `name`; `pid` returns the process id.
pub fn endpoint(name: &str) -> Endpoint {
    let name = name.to_string();
    Endpoint::new()
        .method("echo", |_c, args: JsonMap| async move {
            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
        })
        .method("whoami", move |_c, _a: Value| {
            let name = name.clone();
            async move { Ok::<_, HandlerError>(name) }
        })
        .method("pid", |_c, _a: Value| async move { Ok::<_, HandlerError>(std::process::id()) })
}

/// A server `name` on `topic` serving [`endpoint`], over a transport of its own.
pub async fn start_server(url: &str, topic: &str, name: &str) -> (Transport, RpcServer) {
    let transport = transport(url);
    let server = RpcServer::builder(transport.clone(), Target::new(topic).with_server(name))
        .endpoint(endpoint(name))
        .start()
        .await
        .expect("server starts");
    (transport, server)
}

/// A call to `whoami` of server `server` (through `client`'s topic) is answered by it.
pub async fn assert_targeted_call_reaches(client: &RpcClient, context: &JsonMap, server: &str) {
    let reply = client
        .prepare()
        .server(server)
        .call(context, "whoami", serde_json::json!({}))
        .await
        .expect("targeted call");
    assert_eq!(reply, Value::String(server.to_string()));
}

/// A connection to the Redis server of a `zmq+redis://` URL (its first host).
async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let parsed = TransportUrl::parse(url).expect("URL parses");
    let host = parsed
        .hosts
        .first()
        .and_then(|h| h.hostname.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = parsed.hosts.first().and_then(|h| h.port).unwrap_or(6379);
    redis::Client::open(format!("redis://{host}:{port}/"))?
        .get_multiplexed_async_connection()
        .await
}

/// Delete every Redis key under `prefix` (the tests give each run its own prefix).
pub async fn delete_redis_keys(url: &str, prefix: &str) {
    let Ok(mut connection) = redis_connection(url).await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await;
    }
}

/// The members of a Redis sorted set `key`.
pub async fn redis_members(url: &str, key: &str) -> Vec<String> {
    let mut connection = redis_connection(url).await.expect("redis connection");
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .expect("ZRANGE")
}

/// The PTTL of a Redis key (ms; -1 without expiry, -2 when missing).
pub async fn redis_pttl(url: &str, key: &str) -> i64 {
    let mut connection = redis_connection(url).await.expect("redis connection");
    redis::cmd("PTTL").arg(key).query_async(&mut connection).await.expect("PTTL")
}

/// A TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
