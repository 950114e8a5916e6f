//! Broker faults on the real RabbitMQ (`OSLO_TEST_RABBIT_URL`) while traffic flows: confirmed
//! casts are never lost, a server restores its queues, bindings and consumers by itself,
//! redelivered duplicates are dropped by `_unique_id`, and a multi-host URL with a dead first
//! host keeps working across reconnects.
//!
//! The machine's broker is shared, so each test breaks only its own connections (picked by
//! the `connection_name` it sets, closed with `rabbitmqctl close_connection`) and deletes only
//! its own queues. Broker restarts (`stop_app` / `start_app`) run on the extra nodes of
//! `scripts/rabbit-cluster.sh`, in `cluster_rabbit.rs`. Already covered in
//! `driver-rabbit/tests/reconnect.rs`: calls in flight during a connection loss end within
//! their timeout, consumers come back on the same reply queue, a deleted reply queue is
//! declared again, a dead first host on the first connect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use oslo_core::{codec, Endpoint, Error, JsonMap, Retry, RpcClient, RpcServer, Target, TransportUrl};
use oslo_tests::rabbit_ops::{
    close_connections_named, connections_named, delete_queues_and_exchanges, eventually, init_test_tracing, list_json, queues_on,
    rabbit_transport, rabbitmqctl_async, record_endpoint, unique_name, RabbitNode,
};
use oslo_tests::{broker_required, broker_url};
use serde_json::{json, Value};

const LOCAL: RabbitNode = RabbitNode::Local;

/// The broker URL, or `None` when the test must skip (no URL, or no usable `rabbitmqctl`,
/// which is a failure when `OSLO_REQUIRE_BROKERS` names rabbit).
async fn setup() -> Option<String> {
    init_test_tracing();
    let url = broker_url("rabbit", "OSLO_TEST_RABBIT_URL")?;
    if let Err(why) = rabbitmqctl_async(LOCAL, &["status", "-q"]).await {
        assert!(!broker_required("rabbit"), "rabbitmqctl is needed to break connections: {why}");
        eprintln!("skipping: rabbitmqctl is not usable here: {why}");
        return None;
    }
    Some(url)
}

fn ctxt() -> JsonMap {
    oslo_core::context(json!({"user_id": "u-faults", "request_id": "req-faults"}))
}

/// How many times the servers handled each `value`.
#[derive(Default)]
struct Tally(Mutex<HashMap<String, u32>>);

impl Tally {
    fn record(&self, value: &Value) {
        *self.0.lock().unwrap().entry(value_key(value)).or_default() += 1;
    }

    fn count(&self, value: &Value) -> u32 {
        self.0.lock().unwrap().get(&value_key(value)).copied().unwrap_or(0)
    }

    fn duplicates(&self) -> Vec<(String, u32)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }
}

fn value_key(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

/// `record(value)` counts the value and returns it.
fn recorder(tally: Arc<Tally>) -> Endpoint {
    record_endpoint(move |value| tally.record(value))
}

/// A server for `target` whose `record` counts into `tally`.
async fn recording_server(transport: &oslo_core::Transport, target: Target, tally: &Arc<Tally>) -> RpcServer {
    RpcServer::builder(transport.clone(), target)
        .endpoint(recorder(tally.clone()))
        .start()
        .await
        .unwrap()
}

async fn call_until_ok(client: &RpcClient, within: Duration) -> Duration {
    oslo_tests::rabbit_ops::call_until_ok(client, &ctxt(), within).await
}

async fn queues() -> Vec<Value> {
    queues_on(LOCAL).await
}

async fn bindings() -> Vec<Value> {
    list_json(
        LOCAL,
        &[
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
            "-q",
        ],
    )
    .await
}

async fn raw_connection(url: &str) -> Connection {
    oslo_tests::rabbit_ops::raw_connection(url).await.expect("raw lapin connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn confirmed_casts_are_never_lost_across_connection_breaks() {
    let Some(url) = setup().await else { return };
    // No prefetch limit (oslo's default): the broker pushes all it can, so a break leaves
    // many handled requests whose ack never reached it; it delivers them again. oslo's
    // 16-entry `_unique_id` window let most of those run twice; ours
    // (`DEFAULT_DUPLICATE_WINDOW`) must catch them all, and nothing may be lost.
    casts_across_connection_breaks(&url, "0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn with_a_bounded_prefetch_no_redelivered_cast_is_handled_twice() {
    let Some(url) = setup().await else { return };
    // At most 8 unacknowledged requests: every redelivery after a break is within the
    // `_unique_id` window, and dropped; so is a cast re-published after a lost confirm.
    casts_across_connection_breaks(&url, "8").await;
}

/// Casts flow from five casters (three retrying forever, two with `retry=0`) while the
/// client's and the server's connections are broken three times. Every confirmed cast must be
/// handled; a cast that was not confirmed must have failed with `MessageDeliveryFailure`; no
/// cast may be handled twice (prefetch `"0"` is no limit).
async fn casts_across_connection_breaks(url: &str, prefetch: &str) {
    let topic = unique_name("flt-casts");
    let server_name = unique_name("flt-casts-srv");
    let client_name = unique_name("flt-casts-cli");
    let server_options = [("connection_name", server_name.as_str()), ("rabbit_qos_prefetch_count", prefetch)];
    let (server_transport, _) = rabbit_transport(url, &server_options);
    let (client_transport, _) = rabbit_transport(url, &[("connection_name", &client_name)]);
    let tally = Arc::new(Tally::default());
    let server = recording_server(&server_transport, Target::new(&topic).with_server("s1"), &tally).await;
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic));
    client.cast(&ctxt(), "record", json!({"value": "first"})).await.unwrap();

    // Casters with oslo's default (retry forever: a break delays the cast, never drops it)
    // and with retry=0 (a cast whose publish or confirm failed is an error to the caller).
    let confirmed = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    // rabbitmqctl takes about a second per command, so the casters run until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut casters = Vec::new();
    for worker in 0..5 {
        let (retry, label) = if worker < 3 {
            (Retry::Forever, "f")
        } else {
            (Retry::Limited(0), "z")
        };
        let client = client.prepare().retry(retry);
        let confirmed = confirmed.clone();
        let failed = failed.clone();
        let stop = stop.clone();
        casters.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let value = format!("{label}{worker}-{i}");
                let outcome = tokio::time::timeout(Duration::from_secs(30), client.cast(&ctxt(), "record", json!({"value": value})))
                    .await
                    .unwrap_or_else(|_| panic!("cast {value} hung for 30 s"));
                match outcome {
                    Ok(()) => confirmed.lock().unwrap().push((value, Instant::now())),
                    Err(Error::MessageDeliveryFailure { .. }) if retry != Retry::Forever => failed.lock().unwrap().push(value),
                    Err(other) => panic!("cast {value} (retry {retry:?}) failed with an unexpected error: {other:?}"),
                }
                // A few thousand casts a second in all: a busy server, and CPU left for
                // rabbitmqctl on a small CI machine.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let mut last_break = Instant::now();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // Break only once both sides are connected again (that itself must happen soon).
        let waited = Instant::now();
        let connected = eventually(Duration::from_secs(20), || {
            let (server_name, client_name) = (server_name.clone(), client_name.clone());
            async move {
                !connections_named(LOCAL, &server_name).await.unwrap_or_default().is_empty()
                    && !connections_named(LOCAL, &client_name).await.unwrap_or_default().is_empty()
            }
        })
        .await;
        assert!(connected, "round {round}: client or server not connected again after 20 s");
        eprintln!("round {round}: both connected (waited {:?})", waited.elapsed());
        let server_closed = close_connections_named(LOCAL, &server_name).await.unwrap();
        let client_closed = close_connections_named(LOCAL, &client_name).await.unwrap();
        last_break = Instant::now();
        eprintln!("round {round}: closed {server_closed} server and {client_closed} client connections");
        assert!(
            server_closed >= 1 && client_closed >= 1,
            "round {round}: nothing to break (server {server_closed}, client {client_closed})"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for caster in casters {
        caster.await.unwrap();
    }

    let confirmed = confirmed.lock().unwrap().clone();
    let after_breaks = confirmed.iter().filter(|(_, at)| *at > last_break).count();
    assert!(after_breaks > 0, "no cast was confirmed after the last break");
    let all_handled = eventually(Duration::from_secs(20), || {
        let tally = tally.clone();
        let confirmed = &confirmed;
        async move { confirmed.iter().all(|(v, _)| tally.count(&json!(v)) > 0) }
    })
    .await;
    let lost: Vec<&String> = confirmed.iter().map(|(v, _)| v).filter(|v| tally.count(&json!(v)) == 0).collect();
    let failed = failed.lock().unwrap().clone();
    eprintln!(
        "prefetch {prefetch}: {} casts confirmed ({after_breaks} after the last break), {} failed with MessageDeliveryFailure, {} lost, {} handled twice",
        confirmed.len(),
        failed.len(),
        lost.len(),
        tally.duplicates().len()
    );
    assert!(all_handled && lost.is_empty(), "confirmed casts never handled: {lost:?}");

    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    oslo_tests::purge_rabbit_queues(url, &[topic.as_str()]).await;
    let duplicates = tally.duplicates();
    assert!(
        duplicates.is_empty(),
        "prefetch {prefetch}: {} redelivered casts were handled twice: {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn a_server_restores_its_queues_bindings_and_consumers_by_itself() {
    let Some(url) = setup().await else { return };
    let topic = unique_name("flt-restore");
    let server_name = unique_name("flt-restore-srv");
    let (server_transport, _) = rabbit_transport(&url, &[("connection_name", &server_name)]);
    let (client_transport, _) = rabbit_transport(&url, &[]);
    let tally = Arc::new(Tally::default());
    let server = recording_server(&server_transport, Target::new(&topic).with_server("s1"), &tally).await;
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(5));
    call_until_ok(&client, Duration::from_secs(5)).await;
    let fanout_queue = queues()
        .await
        .iter()
        .filter_map(|q| q["name"].as_str())
        .find(|n| n.starts_with(&format!("{topic}_fanout_")))
        .expect("the server's fanout queue is listed")
        .to_string();
    let server_queues = [topic.clone(), format!("{topic}.s1"), fanout_queue.clone()];

    // The server loses its connection and everything it declared: its three queues (the
    // fanout exchange, auto-delete, goes with its only queue) and so every binding.
    let closed = close_connections_named(LOCAL, &server_name).await.unwrap();
    assert!(closed >= 1, "no server connection to break");
    delete_queues_and_exchanges(&url, &server_queues, &[])
        .await
        .expect("the server's queues deleted");
    let broken_at = Instant::now();

    let fanout_exchange = format!("{topic}_fanout");
    let expected_bindings = [
        ("openstack", topic.clone(), topic.clone()),
        ("openstack", format!("{topic}.s1"), format!("{topic}.s1")),
        (fanout_exchange.as_str(), fanout_queue.clone(), String::new()),
    ];
    let restored = eventually(Duration::from_secs(15), || {
        let server_queues = &server_queues;
        let expected_bindings = &expected_bindings;
        async move {
            let queues = queues().await;
            let consumed = server_queues
                .iter()
                .all(|name| queues.iter().any(|q| q["name"] == name.as_str() && q["consumers"] == json!(1)));
            if !consumed {
                return false;
            }
            let bindings = bindings().await;
            expected_bindings.iter().all(|(source, queue, key)| {
                bindings.iter().any(|b| {
                    b["source_name"] == *source
                        && b["destination_name"] == queue.as_str()
                        && (key.is_empty() || b["routing_key"] == key.as_str())
                })
            })
        }
    })
    .await;
    let took = broken_at.elapsed();
    eprintln!("queues, bindings and consumers restored after {took:?}");
    assert!(
        restored,
        "the server did not restore {server_queues:?} and their bindings within 15 s"
    );
    // kombu_reconnect_delay (1 s) plus the declarations: "within a few seconds".
    assert!(took < Duration::from_secs(10), "restoring took {took:?}");

    // Each restored binding routes: topic, server-targeted, fanout (the client's cached
    // fanout exchange was deleted under it: redeclared on the 404).
    assert_eq!(
        client.call(&ctxt(), "record", json!({"value": "topic"})).await.unwrap(),
        json!("topic")
    );
    assert_eq!(
        client
            .prepare()
            .server("s1")
            .call(&ctxt(), "record", json!({"value": "direct"}))
            .await
            .unwrap(),
        json!("direct")
    );
    client
        .prepare()
        .fanout(true)
        .cast(&ctxt(), "record", json!({"value": "fanout"}))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let tally = tally.clone();
            async move { tally.count(&json!("fanout")) == 1 }
        })
        .await,
        "the fanout cast did not reach the restored server"
    );

    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    oslo_tests::purge_rabbit_queues(&url, &[topic.as_str()]).await;
}

/// An oslo cast request body for `record(value)` with the given `_unique_id`.
fn cast_body(value: &str, unique_id: &str) -> Vec<u8> {
    let message = json!({"method": "record", "args": {"value": value}});
    let inner = codec::encode_request(message.as_object().unwrap(), &ctxt(), None, unique_id);
    codec::encode_envelope(&inner).unwrap()
}

async fn publish_raw(connection: &Connection, routing_key: &str, body: &[u8]) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(FieldTable::default())
        .with_delivery_mode(2);
    channel
        .basic_publish(
            "openstack".into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let _ = channel.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn a_redelivered_duplicate_after_a_reconnect_is_dropped_by_unique_id() {
    let Some(url) = setup().await else { return };
    let topic = unique_name("flt-dup");
    let server_name = unique_name("flt-dup-srv");
    let (server_transport, _) = rabbit_transport(&url, &[("connection_name", &server_name)]);
    let tally = Arc::new(Tally::default());
    let server = recording_server(&server_transport, Target::new(&topic).with_server("s1"), &tally).await;
    let publisher = raw_connection(&url).await;
    let wait_for = |value: &'static str, n: u32| {
        let tally = tally.clone();
        async move {
            eventually(Duration::from_secs(10), || {
                let tally = tally.clone();
                async move { tally.count(&json!(value)) >= n }
            })
            .await
        }
    };

    let unique_id = codec::new_id();
    publish_raw(&publisher, &topic, &cast_body("once", &unique_id)).await;
    assert!(wait_for("once", 1).await, "the first delivery was not handled");

    // The connection breaks after the message was handled: the broker delivers it again (as
    // when an ack is lost), to the server's new connection.
    let before = connections_named(LOCAL, &server_name).await.unwrap();
    assert!(close_connections_named(LOCAL, &server_name).await.unwrap() >= 1);
    let reconnected = eventually(Duration::from_secs(15), || {
        let before = before.clone();
        let server_name = server_name.clone();
        let topic = topic.clone();
        async move {
            let now = connections_named(LOCAL, &server_name).await.unwrap_or_default();
            let fresh = now.iter().any(|pid| !before.contains(pid));
            fresh
                && queues()
                    .await
                    .iter()
                    .any(|q| q["name"] == topic.as_str() && q["consumers"] == json!(1))
        }
    })
    .await;
    assert!(reconnected, "the server did not consume again");
    publish_raw(&publisher, &topic, &cast_body("once", &unique_id)).await;
    // The same body with a new _unique_id is a new message; it also marks that the
    // duplicate (queued before it) has been through the server.
    publish_raw(&publisher, &topic, &cast_body("once", &codec::new_id())).await;
    publish_raw(&publisher, &topic, &cast_body("marker", &codec::new_id())).await;
    assert!(wait_for("marker", 1).await, "the server stopped handling messages");
    assert!(wait_for("once", 2).await, "the new message with the same body was not handled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tally.count(&json!("once")),
        2,
        "the duplicate _unique_id was handled (or a message was lost)"
    );

    let _ = publisher.close(200, "OK".into()).await;
    server.shutdown().await;
    server_transport.cleanup().await;
    oslo_tests::purge_rabbit_queues(&url, &[topic.as_str()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn a_multi_host_url_with_a_dead_first_host_keeps_working_across_reconnects() {
    let Some(url) = setup().await else { return };
    let parsed = TransportUrl::parse(&url).unwrap();
    let live = &parsed.hosts[0];
    let user = live.username.clone().unwrap_or_else(|| "guest".into());
    let pass = live.password.as_ref().map_or_else(|| "guest".into(), |p| p.expose().to_string());
    let host = live.hostname.clone().unwrap_or_else(|| "127.0.0.1".into());
    // Port 1 refuses connections. Shuffled failover, so reconnects meet the dead host too.
    let failover = format!(
        "rabbit://{user}:{pass}@127.0.0.1:1,{user}:{pass}@{host}:{}/",
        live.port.unwrap_or(5672)
    );
    let topic = unique_name("flt-failover");
    let name = unique_name("flt-failover-conn");
    let options = [("connection_name", name.as_str()), ("kombu_failover_strategy", "shuffle")];
    let (server_transport, _) = rabbit_transport(&failover, &options);
    let (client_transport, client_driver) = rabbit_transport(&failover, &options);
    assert_eq!(client_driver.brokers().len(), 2);
    let tally = Arc::new(Tally::default());
    let server = recording_server(&server_transport, Target::new(&topic).with_server("s1"), &tally).await;
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(5));
    let took = call_until_ok(&client, Duration::from_secs(10)).await;
    eprintln!("first call through the second host after {took:?}");
    for round in 0..3 {
        let closed = close_connections_named(LOCAL, &name).await.unwrap();
        assert!(closed >= 3, "round {round}: closed {closed} connections");
        let took = call_until_ok(&client, Duration::from_secs(15)).await;
        eprintln!("round {round}: calls work again after {took:?}");
    }
    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    oslo_tests::purge_rabbit_queues(&url, &[topic.as_str(), reply_q.as_str()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn a_server_keeps_consuming_when_its_exchange_exists_with_another_durability() {
    // oslo redeclares a durable exchange that exists non-durable as non-durable ("Force
    // creating a non durable exchange"), on a new channel: the broker closed the first one.
    // That channel's error must not be taken for a lost connection (which made the listener
    // reconnect every second, forever, and miss requests in between).
    let Some(url) = setup().await else { return };
    let exchange = unique_name("flt-exch");
    let topic = unique_name("flt-exch");
    let server_name = unique_name("flt-exch-srv");
    let connection = raw_connection(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let options = [("connection_name", server_name.as_str()), ("amqp_durable_queues", "true")];
    let (server_transport, _) = rabbit_transport(&url, &options);
    let (client_transport, _) = rabbit_transport(&url, &[("amqp_durable_queues", "true")]);
    let tally = Arc::new(Tally::default());
    let target = Target::new(&topic).with_exchange(&exchange);
    let server = recording_server(&server_transport, target.clone().with_server("s1"), &tally).await;
    // The listener's connection stays the one it started with.
    let listener = connections_named(LOCAL, &server_name).await.unwrap();
    assert_eq!(listener.len(), 1, "one listener connection: {listener:?}");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = connections_named(LOCAL, &server_name).await.unwrap();
        assert_eq!(now, listener, "the server's listener reconnected after {:?}", started.elapsed());
    }
    let client = RpcClient::new(client_transport.clone(), target).timeout(Duration::from_secs(3));
    for i in 0..20 {
        assert_eq!(client.call(&ctxt(), "record", json!({"value": i})).await.unwrap(), json!(i));
    }

    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    oslo_tests::purge_rabbit_queues(&url, &[topic.as_str()]).await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), lapin::options::ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
}
