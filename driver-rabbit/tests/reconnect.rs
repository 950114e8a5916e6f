//! Failover and recovery against a real broker (OSLO_TEST_RABBIT_URL). Connections are
//! force-closed with `rabbitmqctl close_connection` (root), selected by this test's own
//! `connection_name`, so other users of the broker are not disturbed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oslo_core::{Endpoint, Error, HandlerError, RpcClient, RpcServer, Target, TransportUrl};
use serde_json::{json, Value};

fn echo() -> Endpoint {
    Endpoint::new().method("echo", |_c, args: oslo_core::JsonMap| async move {
        Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
    })
}

async fn call_until_ok(client: &RpcClient, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match client.call(&common::context(), "echo", json!({"value": "again"})).await {
            Ok(value) => {
                assert_eq!(value, json!("again"));
                return started.elapsed();
            }
            Err(err) => {
                assert!(started.elapsed() < within, "calls still failing after {within:?}: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn consumers_restored(queues: &[String]) -> bool {
    let Some(list) = common::list_queues().await else { return true };
    queues
        .iter()
        .all(|name| list.iter().any(|q| q["name"] == name.as_str() && q["consumers"] == json!(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn calls_work_again_after_connections_are_closed() {
    let url = require_broker!();
    if common::rabbitmqctl(&["status", "-q"]).is_none() {
        eprintln!("skipping: rabbitmqctl is not usable here");
        return;
    }
    let topic = common::unique("rt-reco");
    let name = common::unique("rt-reco-conn");
    let options = [("connection_name", name.as_str())];
    let (server_transport, _) = common::transport(&url, &options);
    let (client_transport, client_driver) = common::transport(&url, &options);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(echo())
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(5));
    call_until_ok(&client, Duration::from_secs(5)).await;
    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    let fanout_queue = common::list_queues()
        .await
        .and_then(|queues| {
            queues.iter().find_map(|q| {
                q["name"]
                    .as_str()
                    .filter(|n| n.starts_with(&format!("{topic}_fanout_")))
                    .map(str::to_string)
            })
        })
        .expect("fanout queue listed");

    for round in 0..2 {
        let closed = common::close_connections_named(&name).await.unwrap();
        // Server listener (which also carries its replies), client reply consumer (which also
        // carries its calls), client sender (opened by the first call, which declares the exchange).
        assert!(closed >= 3, "round {round}: closed {closed} connections");
        let took = call_until_ok(&client, Duration::from_secs(30)).await;
        eprintln!("round {round}: calls work again after {took:?}");
        // The same reply and fanout queues are consumed again, no new ones made.
        assert_eq!(client_driver.reply_queue_name(), Some(reply_q.as_str()));
        let expected = vec![topic.clone(), format!("{topic}.s1"), fanout_queue.clone(), reply_q.clone()];
        assert!(
            common::eventually(Duration::from_secs(10), || consumers_restored(&expected)).await,
            "consumers restored on {expected:?}"
        );
        for i in 0..20 {
            assert_eq!(
                client.call(&common::context(), "echo", json!({"value": i})).await.unwrap(),
                json!(i)
            );
        }
    }

    // Fanout still reaches the restored server.
    client
        .prepare()
        .fanout(true)
        .cast(&common::context(), "echo", json!({"value": 1}))
        .await
        .unwrap();

    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn calls_in_flight_during_a_connection_loss_end_within_their_timeout() {
    let url = require_broker!();
    if common::rabbitmqctl(&["status", "-q"]).is_none() {
        eprintln!("skipping: rabbitmqctl is not usable here");
        return;
    }
    let topic = common::unique("rt-inflight");
    let name = common::unique("rt-inflight-conn");
    let options = [("connection_name", name.as_str())];
    let (server_transport, _) = common::transport(&url, &options);
    let (client_transport, client_driver) = common::transport(&url, &options);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(echo())
        .start()
        .await
        .unwrap();
    let timeout = Duration::from_secs(3);
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(timeout);
    call_until_ok(&client, Duration::from_secs(5)).await;

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        let ok = ok.clone();
        let failed = failed.clone();
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop_at {
                i += 1;
                let started = Instant::now();
                let result = client.call(&common::context(), "echo", json!({"value": [worker, i]})).await;
                let elapsed = started.elapsed();
                assert!(
                    elapsed < timeout + Duration::from_millis(1500),
                    "a call took {elapsed:?} (timeout {timeout:?})"
                );
                match result {
                    Ok(value) => {
                        assert_eq!(value, json!([worker, i]));
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(
                        err @ (Error::MessagingTimeout { .. } | Error::MessageDeliveryFailure { .. } | Error::MessageUndeliverable { .. }),
                    ) => {
                        eprintln!("worker {worker}: call failed during the outage: {err}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => panic!("unexpected error kind: {other}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ok.load(Ordering::Relaxed);
    let closed = common::close_connections_named(&name).await.unwrap();
    // Server listener, client reply consumer, client sender (see the test above).
    assert!(closed >= 3, "closed {closed}");
    for worker in workers {
        worker.await.unwrap();
    }
    let after = ok.load(Ordering::Relaxed);
    eprintln!(
        "ok before close: {before}, ok total: {after}, failed: {}",
        failed.load(Ordering::Relaxed)
    );
    assert!(after > before, "calls succeeded after the connection loss");
    call_until_ok(&client, Duration::from_secs(10)).await;

    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn fails_over_past_a_dead_host() {
    let url = require_broker!();
    let parsed = TransportUrl::parse(&url).unwrap();
    let live = &parsed.hosts[0];
    let user = live.username.clone().unwrap_or_else(|| "guest".into());
    let pass = live
        .password
        .as_ref()
        .map(|p| p.expose().to_string())
        .unwrap_or_else(|| "guest".into());
    let host = live.hostname.clone().unwrap_or_else(|| "localhost".into());
    // Port 1 refuses connections: the first host is dead, the second is the test broker.
    let failover = format!(
        "rabbit://{user}:{pass}@127.0.0.1:1,{user}:{pass}@{host}:{}/",
        live.port.unwrap_or(5672)
    );
    let topic = common::unique("rt-failover");
    let (transport, driver) = common::transport(&failover, &[]);
    assert_eq!(driver.brokers().len(), 2);
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(echo())
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let started = Instant::now();
    assert_eq!(
        client.call(&common::context(), "echo", json!({"value": "via h2"})).await.unwrap(),
        json!("via h2")
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let reply_q = driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn deleted_queues_are_declared_again() {
    // A consumer cancelled by the broker (its queue was deleted) counts as a connection
    // problem: the driver reconnects and declares the same queues again.
    let url = require_broker!();
    let topic = common::unique("rt-deleted");
    let (server_transport, _) = common::transport(&url, &[]);
    let (client_transport, client_driver) = common::transport(&url, &[]);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(echo())
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    call_until_ok(&client, Duration::from_secs(5)).await;
    let reply_q = client_driver.reply_queue_name().unwrap().to_string();

    common::delete_queues(&url, &[reply_q.clone(), topic.clone()]).await;
    // The next call may find its reply queue missing for a moment: the server retries the
    // reply until the client has declared the queue again.
    let took = call_until_ok(&client, Duration::from_secs(15)).await;
    eprintln!("calls work again after {took:?}");
    assert_eq!(client_driver.reply_queue_name(), Some(reply_q.as_str()));
    let expected = vec![topic.clone(), format!("{topic}.s1"), reply_q.clone()];
    assert!(common::eventually(Duration::from_secs(10), || consumers_restored(&expected)).await);

    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}
