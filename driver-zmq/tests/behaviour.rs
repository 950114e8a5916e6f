//! The driver's own behaviour beyond the conformance suite: dead and expired servers,
//! failover, stale ipc socket files, malformed frames, oslo's frame layout on a raw DEALER,
//! and the Redis key layout.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::start_server;
use driver_zmq::matchmaker::{DummyMatchmaker, Matchmaker};
use oslo_core::{context, Error, RpcClient, RpcServer, Target, TransportUrl};
use serde_json::json;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

fn dummy_url(test: &str, options: &[(&str, &str)]) -> String {
    // Each test gets its own in-process matchmaker (the URL's host names it).
    common::with_query(&format!("zmq+dummy://{}", common::unique(test)), options)
}

/// A client of `topic` in a transport of its own.
fn client(url: &str, topic: &str, timeout: Duration) -> RpcClient {
    RpcClient::new(common::transport(url), Target::new(topic)).timeout(timeout)
}

/// Register on `url`'s in-process matchmaker a server of `topic` that nobody runs (a free
/// port), for `ttl`; the matchmaker and that record.
async fn register_dead_server(url: &str, topic: &str, ttl: Duration) -> (std::sync::Arc<dyn Matchmaker>, String) {
    let matchmaker = DummyMatchmaker::shared(&TransportUrl::parse(url).unwrap());
    let dead = format!("127.0.0.1:{}", common::free_port());
    matchmaker.register(&format!("ROUTER/{topic}"), &dead, ttl).await.unwrap();
    (matchmaker, dead)
}

fn ctxt() -> oslo_core::JsonMap {
    context(json!({"request_id": "req-zmq-test"}))
}

#[tokio::test]
async fn call_to_a_registered_dead_server_fails_within_its_timeout() {
    common::init_tracing();
    let url = dummy_url("dead", &[("zmq_connect_timeout", "1")]);
    let topic = common::unique("dead");
    // A record whose server is gone: nothing listens on the port.
    register_dead_server(&url, &topic, Duration::from_secs(300)).await;
    let client = client(&url, &topic, Duration::from_secs(2));
    let started = Instant::now();
    let err = client.call(&ctxt(), "echo", json!({"value": 1})).await.expect_err("dead server");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::MessagingTimeout { .. } | Error::MessageDeliveryFailure { .. }),
        "typed error, got {err}"
    );
    assert!(elapsed < Duration::from_millis(2600), "failed within its timeout: {elapsed:?}");
    // A cast to it reports the failure too instead of pretending it was sent.
    let err = client.cast(&ctxt(), "echo", json!({})).await.expect_err("dead server");
    assert!(matches!(err, Error::MessageDeliveryFailure { .. }), "{err}");
}

#[tokio::test]
async fn calls_fail_over_from_a_dead_server_to_a_live_one() {
    common::init_tracing();
    let url = dummy_url("failover", &[("zmq_connect_timeout", "0.5")]);
    let topic = common::unique("failover");
    let (_server_transport, server) = start_server(&url, &topic, "live").await;
    let (matchmaker, _) = register_dead_server(&url, &topic, Duration::from_secs(300)).await;
    assert_eq!(matchmaker.get_hosts(&format!("ROUTER/{topic}")).await.unwrap().len(), 2);
    let client = client(&url, &topic, Duration::from_secs(10));
    let started = Instant::now();
    for i in 0..6 {
        assert_eq!(client.call(&ctxt(), "echo", json!({"value": i})).await.expect("call"), json!(i));
    }
    // Only the first attempt on the dead server waits for its connect timeout; then it is
    // tried last.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    server.shutdown().await;
}

#[tokio::test]
async fn expired_records_stop_being_used_and_live_ones_are_refreshed() {
    common::init_tracing();
    let url = dummy_url("expiry", &[("zmq_target_expire", "2"), ("zmq_target_update", "1")]);
    let topic = common::unique("expiry");
    // A server that died without unregistering, with a 1 s record.
    let (matchmaker, dead) = register_dead_server(&url, &topic, Duration::from_secs(1)).await;
    let (_server_transport, server) = start_server(&url, &topic, "live").await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    // The live server refreshed its 2 s record; the dead one expired.
    let hosts = matchmaker.get_hosts(&format!("ROUTER/{topic}")).await.unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_ne!(hosts[0], dead);
    // So no call waits on the dead server any more.
    let client = client(&url, &topic, Duration::from_secs(10));
    let started = Instant::now();
    for _ in 0..4 {
        assert_eq!(client.call(&ctxt(), "whoami", json!({})).await.expect("call"), json!("live"));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    server.shutdown().await;
    // Stopping removed the record at once.
    assert!(matchmaker.get_hosts(&format!("ROUTER/{topic}")).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stale_ipc_socket_file_is_replaced_and_same_host_clients_use_ipc() {
    common::init_tracing();
    let dir = std::env::temp_dir().join(common::unique("zmq-ipc"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::free_port();
    // What a killed server leaves behind: a socket file nobody listens on.
    let stale = dir.join(format!("oslo-zmq-{port}.sock"));
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let (min, max) = (port.to_string(), (port + 1).to_string());
    let url = dummy_url(
        "ipc",
        &[
            ("rpc_zmq_ipc_dir", dir.to_str().unwrap()),
            ("rpc_zmq_min_port", &min),
            ("rpc_zmq_max_port", &max),
            ("rpc_zmq_host", "test-host"),
        ],
    );
    let topic = common::unique("ipc");
    let (_server_transport, server) = start_server(&url, &topic, "s").await;
    // The file is live again: the server listens on it.
    tokio::task::spawn_blocking({
        let stale = stale.clone();
        move || std::os::unix::net::UnixStream::connect(&stale).expect("ipc socket live")
    })
    .await
    .unwrap();
    // The record names a host ("test-host") that does not resolve: only ipc can reach it.
    let client = client(&url, &topic, Duration::from_secs(5));
    assert_eq!(
        client.call(&ctxt(), "echo", json!({"value": "via ipc"})).await.expect("call"),
        json!("via ipc")
    );
    server.shutdown().await;
    assert!(!stale.exists(), "socket file removed on cleanup");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The frames of oslo's direct mode, spoken by a raw zeromq DEALER (what a benchmark's raw
/// client does), and a malformed message that must not stop the server.
#[tokio::test]
async fn raw_dealer_speaks_oslos_frames_and_garbage_is_dropped() {
    common::init_tracing();
    let url = dummy_url("raw", &[("zmq_use_ipc", "false")]);
    let topic = common::unique("raw");
    let (_server_transport, server) = start_server(&url, &topic, "s").await;
    let matchmaker = DummyMatchmaker::shared(&TransportUrl::parse(&url).unwrap());
    let host = matchmaker.get_hosts(&format!("ROUTER/{topic}/s")).await.unwrap().remove(0);
    let port = host.rsplit_once(':').unwrap().1;
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(&format!("tcp://127.0.0.1:{port}")).await.expect("connect");

    let frames = |parts: Vec<&[u8]>| ZmqMessage::try_from(parts.into_iter().map(Bytes::copy_from_slice).collect::<Vec<_>>()).unwrap();
    // Garbage first: wrong frame count, bad version, bad JSON.
    dealer.send(frames(vec![b"junk"])).await.unwrap();
    dealer.send(frames(vec![b"", b"9.9", b"1", b"m0", b"[{},{}]"])).await.unwrap();
    dealer.send(frames(vec![b"", b"1.0", b"1", b"m1", b"not json"])).await.unwrap();
    // Then a real CALL: [b"", b"1.0", b"1", <message id>, json([context, message])].
    let payload = br#"[{"user_id":"raw"},{"method":"echo","args":{"value":"raw hello"},"_unique_id":"u-raw-1"}]"#;
    dealer.send(frames(vec![b"", b"1.0", b"1", b"m2", payload])).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), dealer.recv())
        .await
        .expect("reply in time")
        .expect("reply")
        .into_vec();
    assert_eq!(reply.len(), 5, "{reply:?}");
    assert_eq!(&reply[0][..], b"");
    assert_eq!(&reply[1][..], b"1.0");
    assert_eq!(&reply[2][..], b"5", "REPLY type");
    assert_eq!(&reply[3][..], b"m2", "the request's message id");
    assert_eq!(&reply[4][..], br#"["raw hello",null]"#);
    // The same unique id again is a duplicate: dropped, no second reply.
    dealer.send(frames(vec![b"", b"1.0", b"1", b"m3", payload])).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), dealer.recv()).await.is_err(),
        "duplicate dropped"
    );
    // And the server still serves.
    let client = client(&url, &topic, Duration::from_secs(5));
    assert_eq!(client.call(&ctxt(), "whoami", json!({})).await.expect("call"), json!("s"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_options_are_configuration_errors() {
    let registry = oslo_core::DriverRegistry::new();
    driver_zmq::register(&registry);
    for url in [
        "zmq+dummy://?use_router_proxy=true",
        "zmq+dummy://?rpc_zmq_serialization=msgpack",
        "zmq+sentinel://127.0.0.1:26379",
        "zmq+dummy://?not_an_option=1",
    ] {
        let err = registry.get_transport(url).expect_err(url);
        assert!(matches!(err, Error::Configuration { .. }), "{url}: {err}");
    }
    let transport = registry.get_transport("zmq+dummy://").expect("dummy");
    let capabilities = transport.capabilities();
    assert!(!capabilities.store_and_forward && !capabilities.requeue && !capabilities.durable);
    assert!(capabilities.fanout && capabilities.call_monitor && capabilities.detects_no_listener);
}

#[tokio::test]
#[cfg_attr(not(oslo_broker_zmq), ignore = "OSLO_TEST_ZMQ_URL is not set")]
async fn redis_records_follow_oslos_key_layout_and_are_removed_on_stop() {
    let url = require_redis!();
    let prefix = format!("{}:", common::unique("zmq-test"));
    let url = common::with_query(&url, &[("matchmaker_key_prefix", &prefix), ("rpc_zmq_host", "127.0.0.1")]);
    let topic = common::unique("layout");
    let (_server_transport, server) = start_server(&url, &topic, "host-1@backend").await;
    let all = common::redis_members(&url, &format!("{prefix}ROUTER/{topic}")).await;
    let own = common::redis_members(&url, &format!("{prefix}ROUTER/{topic}/host-1")).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all, own, "server key uses the part before '@'");
    assert!(all[0].starts_with("127.0.0.1:"), "host:port record: {all:?}");
    // A client in another transport finds it through Redis, by server name too.
    let client = client(&url, &topic, Duration::from_secs(5));
    common::assert_targeted_call_reaches(&client, &ctxt(), "host-1@backend").await;
    server.shutdown().await;
    assert!(common::redis_members(&url, &format!("{prefix}ROUTER/{topic}")).await.is_empty());
    assert!(common::redis_members(&url, &format!("{prefix}ROUTER/{topic}/host-1"))
        .await
        .is_empty());
    common::delete_redis_keys(&url, &prefix).await;
}

#[tokio::test]
#[cfg_attr(not(oslo_broker_zmq), ignore = "OSLO_TEST_ZMQ_URL is not set")]
async fn redis_records_expire_individually() {
    let url = require_redis!();
    let prefix = format!("{}:", common::unique("zmq-test"));
    let url = common::with_query(&url, &[("matchmaker_key_prefix", &prefix), ("zmq_routing_refresh", "0")]);
    let parsed = TransportUrl::parse(&url).unwrap();
    let config = driver_zmq::ZmqConfig::from_url(&parsed, &Default::default()).unwrap();
    let matchmaker = driver_zmq::matchmaker::for_config(&parsed, &config).unwrap();
    matchmaker.register("ROUTER/t", "a:1", Duration::from_millis(300)).await.unwrap();
    matchmaker.register("ROUTER/t", "b:2", Duration::from_secs(30)).await.unwrap();
    assert_eq!(matchmaker.get_hosts("ROUTER/t").await.unwrap(), vec!["a:1", "b:2"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // b keeps refreshing the key; a's record is gone all the same (oslo kept it while any
    // other server of the topic refreshed).
    matchmaker.register("ROUTER/t", "b:2", Duration::from_secs(30)).await.unwrap();
    assert_eq!(matchmaker.get_hosts("ROUTER/t").await.unwrap(), vec!["b:2"]);
    // The key itself expires with its longest record: nothing is left behind by a crash.
    let ttl = common::redis_pttl(&url, &format!("{prefix}ROUTER/t")).await;
    assert!(ttl > 20_000 && ttl <= 30_000, "key TTL {ttl} ms");
    matchmaker.unregister("ROUTER/t", "b:2").await.unwrap();
    assert!(matchmaker.get_hosts("ROUTER/t").await.unwrap().is_empty());
    common::delete_redis_keys(&url, &prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error_not_a_hang() {
    common::init_tracing();
    let url = format!("zmq+redis://127.0.0.1:{}?socket_timeout=1000", common::free_port());
    let transport = common::transport(&url);
    let started = Instant::now();
    let err = RpcClient::new(transport.clone(), Target::new("nowhere"))
        .timeout(Duration::from_secs(3))
        .call(&ctxt(), "echo", json!({}))
        .await
        .expect_err("no matchmaker");
    assert!(
        matches!(err, Error::MessageDeliveryFailure { .. } | Error::MessagingTimeout { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(3500), "took {:?}", started.elapsed());
    let err = RpcServer::builder(transport, Target::new("nowhere").with_server("s"))
        .endpoint(common::endpoint("s"))
        .start()
        .await
        .expect_err("cannot register");
    assert!(matches!(err, Error::MessageDeliveryFailure { .. }), "{err}");
}

/// `TransportConfig::max_message_size`: a request over the server's limit is dropped before
/// it is decoded (the call times out), one under it is answered; a reply over the client's
/// limit is dropped too.
#[tokio::test]
async fn messages_over_max_message_size_are_dropped_undecoded() {
    let url = dummy_url("max-size", &[]);
    let limited = |limit: usize| {
        let parsed = TransportUrl::parse(&url).unwrap();
        let config = oslo_core::TransportConfig {
            max_message_size: limit,
            ..oslo_core::TransportConfig::default()
        };
        let driver = std::sync::Arc::new(driver_zmq::ZmqDriver::new(&parsed, &config).unwrap());
        oslo_core::Transport::from_driver(driver, parsed, config)
    };
    let topic = common::unique("sized");
    let server_transport = limited(4096);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(common::endpoint("s1"))
        .start()
        .await
        .unwrap();
    let client_transport = limited(16 * 1024);
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(2));
    let small = json!({"value": "x".repeat(100)});
    assert_eq!(client.call(&ctxt(), "echo", small.clone()).await.unwrap(), small["value"]);
    let err = client.call(&ctxt(), "echo", json!({"value": "x".repeat(8192)})).await.unwrap_err();
    assert!(
        matches!(err, Error::MessagingTimeout { .. }),
        "a request over the server's limit: {err}"
    );
    server.shutdown().await;
    // A server with a larger limit, whose reply is over the client's.
    let server_transport = limited(0);
    let big_client = limited(2048);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s2"))
        .endpoint(common::endpoint("s2"))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(big_client.clone(), Target::new(&topic)).timeout(Duration::from_secs(2));
    let err = client.call(&ctxt(), "echo", json!({"value": "y".repeat(3000)})).await.unwrap_err();
    assert!(
        matches!(err, Error::MessagingTimeout { .. }),
        "a reply over the client's limit: {err}"
    );
    server.shutdown().await;
    for transport in [server_transport, client_transport, big_client] {
        transport.cleanup().await;
    }
}
