//! Broker restarts and node loss on a real three-node RabbitMQ cluster, the extra nodes of
//! `scripts/rabbit-cluster.sh` (never the machine's own node on 5672):
//!
//! ```sh
//! scripts/rabbit-cluster.sh start
//! OSLO_TEST_RABBIT_CLUSTER_URL=$(scripts/rabbit-cluster.sh url) cargo test -p oslo-tests --test cluster_rabbit
//! scripts/rabbit-cluster.sh stop
//! ```
//!
//! The tests skip when `OSLO_TEST_RABBIT_CLUSTER_URL` is unset (they fail instead when
//! `OSLO_REQUIRE_BROKERS` names `rabbit-cluster` or `all`). They stop and start nodes with
//! `rabbitmqctl stop_app` / `start_app`, so they run one at a time, and each restarts what it
//! stopped, even when it fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver_rabbit::RabbitDriver;
use oslo_core::{Endpoint, Error, JsonMap, RpcClient, RpcServer, Target, Transport, TransportUrl};
use oslo_tests::broker_url;
use oslo_tests::rabbit_ops::{
    connections_named, delete_queues_and_exchanges, eventually, init_test_tracing, queues_on, rabbit_transport, rabbitmqctl,
    rabbitmqctl_async, record_endpoint, unique_name, RabbitNode,
};
use serde_json::json;

/// The tests stop nodes: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster's URL and its nodes in URL order, or `None` to skip.
fn setup() -> Option<(String, Vec<(RabbitNode, u16)>)> {
    init_test_tracing();
    let url = broker_url("rabbit-cluster", "OSLO_TEST_RABBIT_CLUSTER_URL")?;
    let parsed = TransportUrl::parse(&url).expect("OSLO_TEST_RABBIT_CLUSTER_URL parses");
    let nodes: Vec<(RabbitNode, u16)> = parsed
        .hosts
        .iter()
        .map(|host| {
            let port = host.port.unwrap_or(5672);
            let node = RabbitNode::cluster_node_for_port(port)
                .unwrap_or_else(|| panic!("port {port} is not a node of scripts/rabbit-cluster.sh (5673-5675)"));
            (node, port)
        })
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "OSLO_TEST_RABBIT_CLUSTER_URL must name the three cluster nodes: {parsed}"
    );
    if let Err(why) = rabbitmqctl(nodes[0].0, &["await_startup", "--timeout", "30"]) {
        panic!("OSLO_TEST_RABBIT_CLUSTER_URL is set but the cluster is not usable (run scripts/rabbit-cluster.sh start): {why}");
    }
    Some((url, nodes))
}

/// `url` reduced to its hosts on `ports`, in that order, with `options` in the query.
fn url_for(url: &str, ports: &[u16], options: &[(&str, &str)]) -> String {
    let parsed = TransportUrl::parse(url).unwrap();
    let hosts: Vec<String> = ports
        .iter()
        .map(|port| {
            let host = parsed.hosts.iter().find(|h| h.port == Some(*port)).expect("port in URL");
            let user = host.username.clone().unwrap_or_else(|| "guest".into());
            let pass = host.password.as_ref().map_or_else(|| "guest".into(), |p| p.expose().to_string());
            format!(
                "{user}:{pass}@{}:{port}",
                host.hostname.clone().unwrap_or_else(|| "127.0.0.1".into())
            )
        })
        .collect();
    let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    format!("rabbit://{}/{query}", hosts.join(","))
}

/// Starts a stopped node again when dropped (also when the test panics), so a failing test
/// does not leave the cluster short of a node.
struct RestartOnDrop {
    node: RabbitNode,
    armed: bool,
}

impl RestartOnDrop {
    async fn stop(node: RabbitNode) -> RestartOnDrop {
        rabbitmqctl_async(node, &["stop_app"]).await.expect("stop_app");
        RestartOnDrop { node, armed: true }
    }

    async fn start(mut self) {
        self.armed = false;
        start_node(self.node).await;
    }
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // Blocking on purpose: runs during a panic, where nothing can be awaited.
            let _ = rabbitmqctl(self.node, &["start_app"]);
            let _ = rabbitmqctl(self.node, &["await_startup", "--timeout", "60"]);
        }
    }
}

async fn start_node(node: RabbitNode) {
    rabbitmqctl_async(node, &["start_app"]).await.expect("start_app");
    rabbitmqctl_async(node, &["await_startup", "--timeout", "60"])
        .await
        .expect("node booted");
}

fn ctxt() -> JsonMap {
    oslo_core::context(json!({"user_id": "u-cluster", "request_id": "req-cluster"}))
}

/// When the server first handled each value.
#[derive(Default)]
struct Handled(Mutex<HashMap<String, (Instant, u32)>>);

impl Handled {
    fn record(&self, key: String) {
        let mut seen = self.0.lock().unwrap();
        seen.entry(key).or_insert((Instant::now(), 0)).1 += 1;
    }

    fn first(&self, key: &str) -> Option<Instant> {
        self.0.lock().unwrap().get(key).map(|(at, _)| *at)
    }
}

fn recorder(handled: Arc<Handled>) -> Endpoint {
    record_endpoint(move |value| handled.record(value.as_str().unwrap_or_default().to_string()))
}

async fn call_until_ok(client: &RpcClient, within: Duration) -> Duration {
    oslo_tests::rabbit_ops::call_until_ok(client, &ctxt(), within).await
}

/// A server (`s1`, recording into `handled`) and a client with `timeout`, on a topic and an
/// exchange of their own (the tests do not depend on each other's declarations), with calls
/// going through.
struct Rig {
    server_transport: Transport,
    client_transport: Transport,
    client_driver: Arc<RabbitDriver>,
    handled: Arc<Handled>,
    topic: String,
    exchange: String,
    target: Target,
    server: RpcServer,
    client: RpcClient,
    reply_q: String,
}

impl Rig {
    async fn start(url: &str, prefix: &str, timeout: Duration) -> Rig {
        let topic = unique_name(prefix);
        let (server_transport, _) = rabbit_transport(url, &[]);
        let (client_transport, client_driver) = rabbit_transport(url, &[]);
        let handled = Arc::new(Handled::default());
        let exchange = unique_name(prefix);
        let target = Target::new(&topic).with_exchange(&exchange);
        let server = RpcServer::builder(server_transport.clone(), target.clone().with_server("s1"))
            .endpoint(recorder(handled.clone()))
            .start()
            .await
            .unwrap();
        let client = RpcClient::new(client_transport.clone(), target.clone()).timeout(timeout);
        call_until_ok(&client, Duration::from_secs(10)).await;
        let reply_q = client_driver.reply_queue_name().unwrap().to_string();
        Rig {
            server_transport,
            client_transport,
            client_driver,
            handled,
            topic,
            exchange,
            target,
            server,
            client,
            reply_q,
        }
    }

    /// Shut both down and delete their queues (and `more_queues`) and exchange through the
    /// first host of `url` that answers.
    async fn stop(self, url: &str, more_queues: impl IntoIterator<Item = String>) {
        self.server.shutdown().await;
        self.client_transport.cleanup().await;
        self.server_transport.cleanup().await;
        let topic = self.topic;
        let mut queues = vec![topic.clone(), format!("{topic}.s1"), self.reply_q];
        queues.extend(more_queues);
        if let Err(why) = delete_queues_and_exchanges(url, &queues, &[self.exchange]).await {
            eprintln!("test queues not deleted: {why}");
        }
    }
}

/// One call's outcome, for the checks after the traffic stopped.
struct CallRecord {
    value: String,
    started: Instant,
    outcome: Result<(), String>,
}

/// `workers` tasks calling `record` until `stop`; each call must end within its timeout (plus
/// a margin) with its own value or a typed error.
fn spawn_callers(
    client: &RpcClient,
    timeout: Duration,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<CallRecord>>> {
    (0..workers)
        .map(|worker| {
            let client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut records = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let value = format!("call{worker}-{i}");
                    let started = Instant::now();
                    let result = client.call(&ctxt(), "record", json!({"value": value})).await;
                    let elapsed = started.elapsed();
                    assert!(
                        elapsed < timeout + Duration::from_millis(1500),
                        "call {value} took {elapsed:?} (timeout {timeout:?})"
                    );
                    let outcome = match result {
                        Ok(reply) => {
                            assert_eq!(reply, json!(value), "a reply to another call");
                            Ok(())
                        }
                        Err(
                            err @ (Error::MessagingTimeout { .. }
                            | Error::MessageDeliveryFailure { .. }
                            | Error::MessageUndeliverable { .. }),
                        ) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Err(err.to_string())
                        }
                        Err(other) => panic!("call {value}: unexpected error kind: {other:?}"),
                    };
                    records.push(CallRecord { value, started, outcome });
                }
                records
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit_cluster), ignore = "OSLO_TEST_RABBIT_CLUSTER_URL is not set")]
async fn a_broker_restart_is_survived_without_restarting_client_or_server() {
    let Some((url, nodes)) = setup() else { return };
    let _serial = SERIAL.lock().await;
    // One node only, classic queues: the broker the client and server use goes away and
    // comes back empty (its transient queues are gone), as a single broker's restart does.
    let (node, port) = nodes[2];
    let name = unique_name("cl-restart");
    let single = url_for(&url, &[port], &[("connection_name", &name)]);
    let timeout = Duration::from_secs(4);
    let rig = Rig::start(&single, "cl-restart", timeout).await;
    let (client, client_driver, topic, reply_q) = (&rig.client, &rig.client_driver, &rig.topic, &rig.reply_q);

    let stop = Arc::new(AtomicBool::new(false));
    let callers = spawn_callers(client, timeout, 4, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = RestartOnDrop::stop(node).await;
    eprintln!("{} stopped", node.name());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stopped.start().await;
    let back_at = Instant::now();
    eprintln!("{} started again", node.name());

    // The same client and server, untouched: calls work again within a few seconds.
    let resumed = call_until_ok(client, Duration::from_secs(20)).await;
    eprintln!("calls work again {resumed:?} after the broker came back");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for caller in callers {
        records.extend(caller.await.unwrap());
    }
    let ok_after = records.iter().filter(|r| r.outcome.is_ok() && r.started > back_at).count();
    let failed = records.iter().filter(|r| r.outcome.is_err()).count();
    eprintln!(
        "{} calls: {failed} ended with a typed error during the outage, {ok_after} succeeded after it",
        records.len()
    );
    assert!(ok_after > 0, "no call in flight succeeded after the restart");
    assert!(
        resumed < Duration::from_secs(12),
        "calls resumed only {resumed:?} after the broker came back"
    );

    // The server consumes again from the queues it declared anew, under the same names; the
    // client's reply queue is the same one.
    assert_eq!(client_driver.reply_queue_name(), Some(reply_q.as_str()));
    let fanout_prefix = format!("{topic}_fanout_");
    let restored = eventually(Duration::from_secs(10), || {
        let expected = [topic.clone(), format!("{topic}.s1"), reply_q.clone()];
        let fanout_prefix = fanout_prefix.clone();
        async move {
            let queues = queues_on(node).await;
            let consumed = |name: &str| queues.iter().any(|q| q["name"] == name && q["consumers"] == json!(1));
            expected.iter().all(|name| consumed(name))
                && queues
                    .iter()
                    .any(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&fanout_prefix)) && q["consumers"] == json!(1))
        }
    })
    .await;
    assert!(restored, "queues and consumers not restored on {}", node.name());
    client
        .prepare()
        .server("s1")
        .call(&ctxt(), "record", json!({"value": "direct"}))
        .await
        .expect("server-targeted call after the restart");

    rig.stop(&single, []).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit_cluster), ignore = "OSLO_TEST_RABBIT_CLUSTER_URL is not set")]
async fn quorum_queues_lose_no_confirmed_cast_and_no_reply_when_the_connected_node_stops() {
    let Some((url, nodes)) = setup() else { return };
    let _serial = SERIAL.lock().await;
    let name = unique_name("cl-quorum");
    let ports: Vec<u16> = nodes.iter().map(|(_, port)| *port).collect();
    let options = [
        ("connection_name", name.as_str()),
        ("rabbit_quorum_queue", "true"),
        ("rabbit_transient_quorum_queue", "true"),
    ];
    let cluster = url_for(&url, &ports, &options);
    let timeout = Duration::from_secs(15);
    let rig = Rig::start(&cluster, "cl-quorum", timeout).await;
    let (client, handled, topic, reply_q) = (&rig.client, &rig.handled, &rig.topic, &rig.reply_q);
    let queue_types: HashMap<String, String> = queues_on(nodes[0].0)
        .await
        .into_iter()
        .filter(|q| {
            q["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(topic.as_str()) || n == reply_q.as_str())
        })
        .map(|q| {
            (
                q["name"].as_str().unwrap().to_string(),
                q["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        queue_types.len() == 4 && queue_types.values().all(|t| t == "quorum"),
        "topic, server, fanout and reply queues are quorum queues: {queue_types:?}"
    );

    // The node the client and server are connected to (the first that answers: node 1).
    let mut victim = None;
    for (node, _) in &nodes {
        let here = connections_named(*node, &name).await.unwrap();
        eprintln!("{}: {} of our connections", node.name(), here.len());
        if !here.is_empty() {
            assert!(victim.is_none(), "our connections are spread over several nodes");
            victim = Some(*node);
        }
    }
    let victim = victim.expect("our connections are on some node");

    let stop = Arc::new(AtomicBool::new(false));
    let callers = spawn_callers(client, timeout, 4, &stop);
    let confirmed = Arc::new(Mutex::new(Vec::<String>::new()));
    let casters: Vec<_> = (0..2)
        .map(|worker| {
            let client = client.clone();
            let stop = stop.clone();
            let confirmed = confirmed.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let value = format!("cast{worker}-{i}");
                    // Retry forever (oslo's default): the cast waits out the failover.
                    let sent = tokio::time::timeout(Duration::from_secs(30), client.cast(&ctxt(), "record", json!({"value": value})))
                        .await
                        .unwrap_or_else(|_| panic!("cast {value} hung for 30 s"));
                    match sent {
                        Ok(()) => confirmed.lock().unwrap().push(value),
                        Err(err) => panic!("cast {value} failed although it retries forever: {err:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = RestartOnDrop::stop(victim).await;
    let down_at = Instant::now();
    eprintln!("{} stopped", victim.name());

    // A new client whose URL starts with the stopped node fails over to the next one.
    let (other_node, other_port) = *nodes.iter().find(|(n, _)| *n != victim).unwrap();
    let victim_port = nodes.iter().find(|(n, _)| *n == victim).unwrap().1;
    let failover = url_for(&url, &[victim_port, other_port], &options);
    let (fresh_transport, fresh_driver) = rabbit_transport(&failover, &[]);
    let fresh = RpcClient::new(fresh_transport.clone(), rig.target.clone()).timeout(Duration::from_secs(10));
    let took = call_until_ok(&fresh, Duration::from_secs(20)).await;
    eprintln!(
        "a new client with the stopped node first in its URL called through {} in {took:?}",
        other_node.name()
    );

    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for caller in callers {
        records.extend(caller.await.unwrap());
    }
    for caster in casters {
        caster.await.unwrap();
    }

    // Traffic moved to the other nodes.
    let mut moved = 0;
    for (node, _) in nodes.iter().filter(|(n, _)| *n != victim) {
        moved += connections_named(*node, &name).await.unwrap().len();
    }
    assert!(moved >= 3, "our connections did not move to the remaining nodes ({moved})");
    let ok_after = records.iter().filter(|r| r.outcome.is_ok() && r.started > down_at).count();
    assert!(ok_after > 0, "no call succeeded after {} stopped", victim.name());

    // No confirmed cast lost.
    let confirmed = confirmed.lock().unwrap().clone();
    let all_handled = eventually(Duration::from_secs(30), || {
        let handled = handled.clone();
        let confirmed = &confirmed;
        async move { confirmed.iter().all(|v| handled.first(v).is_some()) }
    })
    .await;
    let lost: Vec<&String> = confirmed.iter().filter(|v| handled.first(v).is_none()).collect();
    assert!(
        all_handled,
        "{} confirmed casts lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // No reply lost: a call that failed was not handled by the server in time to answer it.
    let failed: Vec<&CallRecord> = records.iter().filter(|r| r.outcome.is_err()).collect();
    for record in &failed {
        if let Some(at) = handled.first(&record.value) {
            assert!(
                at + Duration::from_secs(2) > record.started + timeout,
                "call {} was handled {:?} after it started but its reply never came: {:?}",
                record.value,
                at - record.started,
                record.outcome
            );
        }
    }
    eprintln!(
        "{} calls ({} failed with a typed error, {ok_after} succeeded after the stop), {} confirmed casts, all handled",
        records.len(),
        failed.len(),
        confirmed.len()
    );

    stopped.start().await;
    fresh_transport.cleanup().await;
    let mut more_queues: Vec<String> = fresh_driver.reply_queue_name().map(str::to_string).into_iter().collect();
    more_queues.extend(queue_types.keys().filter(|n| n.contains("_fanout_")).cloned());
    rig.stop(&cluster, more_queues).await;
}
