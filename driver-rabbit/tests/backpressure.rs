//! A slow server beside a deep backlog keeps a steady memory: listeners hold a bounded number
//! of unacknowledged deliveries (`RabbitConfig::listener_prefetch`), so the backlog stays on the
//! broker. Alone in its test binary, so that the process's RSS is the server's own.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use oslo_core::codec;
use oslo_core::{Endpoint, HandlerError, JsonMap, RpcServer, Target};
use serde_json::json;

/// Resident set size of this process, in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

const QUEUED: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn a_slow_server_with_100k_queued_casts_keeps_a_steady_rss() {
    let url = require_broker!();
    let topic = common::unique("backlog");
    // The server's topic queue, filled before the server starts: 100k casts of ~1.1 KiB.
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    let declare = || channel.queue_declare(topic.as_str().into(), QueueDeclareOptions::default(), FieldTable::default());
    declare().await.unwrap();
    let filler = "f".repeat(1000);
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into());
    // One body encoded by the codec, then copied with a fresh `_unique_id` each (so that
    // the server's duplicate filter lets every one through); without confirms (fast): the
    // queue's depth says when all are in.
    let placeholder = "0".repeat(codec::new_id().len());
    let template = String::from_utf8(
        codec::encode_envelope(&codec::encode_request(
            &oslo_core::context(json!({"method": "work", "args": {"filler": filler}})),
            &JsonMap::new(),
            None,
            &placeholder,
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(template.matches(&placeholder).count(), 1);
    for _ in 0..QUEUED {
        let body = template.replace(&placeholder, &codec::new_id());
        channel
            .basic_publish(
                "".into(),
                topic.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties.clone(),
            )
            .await
            .unwrap();
    }
    let filled = Instant::now();
    while declare().await.unwrap().message_count() < QUEUED as u32 {
        assert!(filled.elapsed() < Duration::from_secs(60), "the backlog never reached {QUEUED}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = raw.close(200, "OK".into()).await;

    let (transport, _) = common::transport(&url, &[]);
    let handled = Arc::new(AtomicUsize::new(0));
    let before = rss_kib();
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(Endpoint::new().method("work", {
            let handled = handled.clone();
            move |_ctxt, _args: JsonMap| {
                let handled = handled.clone();
                async move {
                    // Slow: the backlog outlives the measurement.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    handled.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, HandlerError>(())
                }
            }
        }))
        .start()
        .await
        .expect("server starts");
    let started = Instant::now();
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib());
    }
    let done = handled.load(Ordering::Relaxed);
    eprintln!("RSS {before} KiB before, peak {peak} KiB while handling {done} of {QUEUED} queued casts");
    assert!(done > 100, "the server handles the backlog ({done})");
    assert!(done < QUEUED / 2, "the backlog outlives the measurement ({done})");
    // Unbounded prefetch took ~180 MB here (the whole backlog); bounded, a few MB.
    assert!(
        peak < before + 32 * 1024,
        "RSS grew from {before} to {peak} KiB with a backlog of {QUEUED}"
    );
    server.shutdown().await;
    transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1")]).await;
}
