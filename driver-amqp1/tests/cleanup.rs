//! `cleanup()` leaves no private queue, binding or `amq.gen-*` queue behind. Its own test
//! binary, so that no other test of this crate creates queues at the same time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oslo_core::{context, RpcClient, Target};
use serde_json::json;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_amqp1), ignore = "OSLO_TEST_AMQP1_URL is not set")]
async fn cleanup_leaves_no_private_queues_bindings_or_amq_gen() {
    let url = require_broker!();
    let topic = unique("amqp1-cleanup");
    let before = queues();
    let transport = transport(&url);
    let counter = Arc::new(AtomicUsize::new(0));
    let server = start_server(&transport, &topic, "s1", counter.clone()).await;
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let ctxt = context(json!({"request_id": "r"}));
    assert_eq!(client.call(&ctxt, "echo", json!({"value": 1})).await.unwrap(), json!(1));
    client
        .prepare()
        .fanout(true)
        .cast(&ctxt, "echo", json!({"value": 2}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counter.load(Ordering::SeqCst), 2, "call and fanout both served");

    // While running: this transport's reply queue and the server's fanout queue exist.
    let running = queues();
    let fanout_prefix = format!("broadcast.openstack.{topic}.all.");
    let ours: Vec<String> = running
        .iter()
        .filter(|q| !before.contains(q) && (q.starts_with(&fanout_prefix) || q.starts_with("amqp1_reply_")))
        .cloned()
        .collect();
    assert!(ours.iter().any(|q| q.starts_with(&fanout_prefix)), "fanout queue: {running:?}");
    assert!(ours.iter().any(|q| q.starts_with("amqp1_reply_")), "reply queue: {running:?}");

    server.shutdown().await;
    transport.cleanup().await;

    let after = queues();
    let left: Vec<&String> = ours.iter().filter(|q| after.contains(q)).collect();
    assert!(left.is_empty(), "private queues left after cleanup(): {left:?}");
    // No receiver on an exchange was used, so no amq.gen-* queue is bound to our keys.
    let leaked: Vec<_> = bindings()
        .into_iter()
        .filter(|(_, destination, key)| key.contains(&topic) && destination.starts_with("amq.gen-"))
        .collect();
    assert!(leaked.is_empty(), "amq.gen queues bound to our addresses: {leaked:?}");
    // Only the shared topic and server queues stay (as oslo's); remove them.
    let shared_left: Vec<&String> = after.iter().filter(|q| q.contains(&topic)).collect();
    assert!(
        shared_left.iter().all(|q| q.starts_with("unicast.") || q.starts_with("exclusive.")),
        "unexpected queues: {shared_left:?}"
    );
    delete_queues_containing(&topic);
}
