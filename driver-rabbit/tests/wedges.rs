//! Regression tests for the ways a transport could wedge for good (issue: reliability II).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use oslo_core::codec;
use oslo_core::{Endpoint, Error, HandlerError, JsonMap, RpcClient, RpcServer, Target};
use serde_json::json;

/// Cast to an exchange that exists with other arguments (durable, cast as non-durable) more
/// times than a connection has channels: every cast fails at once with the refusal, and the
/// transport keeps working for healthy targets afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn refused_declarations_do_not_use_up_the_connections_channels() {
    let Some(url) = common::broker_url_or_skip() else { return };
    common::captured_logs();
    let exchange = common::unique("wedge-durable");
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (transport, _) = common::transport(&url, &[]);
    let refused = RpcClient::new(transport.clone(), Target::new("wedge").with_exchange(&exchange));
    let ctxt = common::context();
    let started = Instant::now();
    for i in 0..4200 {
        let outcome = tokio::time::timeout(Duration::from_secs(10), refused.cast(&ctxt, "m", json!({"i": i}))).await;
        let err = outcome.unwrap_or_else(|_| panic!("cast {i} hung"));
        match err {
            Err(Error::Transport { .. }) => {}
            other => panic!("cast {i}: expected the refusal, got {other:?}"),
        }
    }
    eprintln!("4200 refused casts in {:?}", started.elapsed());
    let healthy = RpcClient::new(transport.clone(), Target::new(common::unique("wedge-ok")));
    tokio::time::timeout(Duration::from_secs(10), healthy.cast(&ctxt, "m", json!({})))
        .await
        .expect("a healthy cast after the refusals hangs")
        .expect("a healthy cast after the refusals fails");
    transport.cleanup().await;
    common::delete_exchanges(&url, &[exchange]).await;
    let _ = raw.close(200, "OK".into()).await;
}

/// Publish a call request to `echo` whose reply goes to `reply_q`, with raw lapin; returns
/// its `_msg_id`.
async fn publish_orphan_call(channel: &lapin::Channel, topic: &str, reply_q: &str, value: usize) -> String {
    let msg_id = codec::new_id();
    let body = codec::encode_envelope(&codec::encode_request(
        &oslo_core::context(json!({"method": "echo", "args": {"value": value}})),
        &JsonMap::new(),
        Some(&codec::CallFields {
            msg_id: &msg_id,
            reply_q,
            call_monitor_timeout: None,
        }),
        &codec::new_id(),
    ))
    .unwrap();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into());
    channel
        .basic_publish("".into(), topic.into(), BasicPublishOptions::default(), &body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
    msg_id
}

/// Messages waiting in `queue` (declaring it if needed).
async fn depth(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Replies to missing reply queues in flight at once.
const ORPHANS: usize = 512;

/// [`ORPHANS`] replies in flight to as many missing reply queues: each one is retried for
/// `kombu_missing_consumer_retry_timeout` from its own first failure, whatever the other
/// replies' confirms carry, and then abandoned. A queue created within the window gets its
/// reply; queues created after it get nothing (the server stopped trying).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn replies_to_many_missing_queues_keep_one_deadline_each() {
    let Some(url) = common::broker_url_or_skip() else { return };
    common::captured_logs();
    let topic = common::unique("wedge-noreplyq");
    let (server_transport, _) = common::transport(&url, &[("kombu_missing_consumer_retry_timeout", "1")]);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(Endpoint::new().method("echo", |_ctxt, args: JsonMap| async move {
            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(serde_json::Value::Null))
        }))
        // Every orphan in a slot of its own at once: a reply retried for a missing queue holds
        // its executor slot, as in oslo, and the deadlines below assume no queueing.
        .executor_pool_size(2 * ORPHANS)
        .start()
        .await
        .unwrap();
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Real calls keep the server's shared reply channels busy, so that the returns of the
    // orphan replies land on other replies' confirms (multiple acks).
    let (client_transport, client_driver) = common::transport(&url, &[]);
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let load = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(3);
        let mut calls = 0u64;
        while Instant::now() < until {
            let batch = (0..32).map(|i| {
                let client = client.clone();
                async move { client.call(&common::context(), "echo", json!({"value": i})).await }
            });
            for result in futures::future::join_all(batch).await {
                result.expect("a call with a live reply queue");
                calls += 1;
            }
        }
        calls
    });
    let late: Vec<String> = (0..ORPHANS).map(|i| format!("reply_{}_{i}", common::unique("late"))).collect();
    let early = format!("reply_{}", common::unique("early"));
    let started = Instant::now();
    let mut msg_ids = Vec::new();
    for (i, reply_q) in late.iter().enumerate() {
        msg_ids.push(publish_orphan_call(&channel, &topic, reply_q, i).await);
    }
    publish_orphan_call(&channel, &topic, &early, ORPHANS).await;
    // Within the window: the retried reply arrives once its queue exists.
    tokio::time::sleep(Duration::from_millis(400)).await;
    depth(&channel, &early).await;
    assert!(
        common::eventually(Duration::from_secs(3), || {
            let channel = channel.clone();
            let early = early.clone();
            async move { depth(&channel, &early).await == 1 }
        })
        .await,
        "a reply whose queue appears within the retry window must arrive"
    );
    // Past every reply's window (1 s from its first failure, checked every 0.25 s): nothing
    // may be retried any more.
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed())).await;
    for reply_q in &late {
        depth(&channel, reply_q).await;
    }
    let calls = load.await.unwrap();
    eprintln!("{calls} calls alongside the orphan replies");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut delivered = 0;
    for reply_q in &late {
        delivered += depth(&channel, reply_q).await;
    }
    assert_eq!(delivered, 0, "replies were still retried long after their deadline");
    // Each reply entered the missing-queue retries once and was abandoned once: a return that
    // surfaced on another publish's confirm never restarted its clock.
    let mut counts: HashMap<&str, (usize, usize)> = msg_ids.iter().map(|id| (id.as_str(), (0, 0))).collect();
    for line in common::captured_logs().text().lines() {
        let Some((_, rest)) = line.split_once("The reply ") else { continue };
        let Some((msg_id, what)) = rest.split_once(' ') else { continue };
        if let Some((retried, abandoned)) = counts.get_mut(msg_id) {
            *retried += usize::from(what.starts_with("cannot be sent"));
            *abandoned += usize::from(what.starts_with("failed to send"));
        }
    }
    let wrong: Vec<_> = counts.iter().filter(|(_, &c)| c != (1, 1)).collect();
    assert!(
        wrong.is_empty(),
        "replies not retried once and abandoned once (retried, abandoned): {wrong:?}"
    );
    server.shutdown().await;
    let client_reply_q = client_driver.reply_queue_name().unwrap().to_string();
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    let mut queues = late.clone();
    queues.push(client_reply_q);
    queues.extend([early, topic.clone(), format!("{topic}.s1")]);
    common::delete_queues(&url, &queues).await;
    let _ = raw.close(200, "OK".into()).await;
}

/// Servers of a topic starting while others of it stop: the auto-delete `<topic>_fanout`
/// exchange vanishes whenever its last fanout queue goes, possibly between a starting server's
/// declare and its bind, and every start must still succeed with its fanout binding in place.
/// A raw connection plays the other servers: it binds a queue of its own to the exchange and
/// deletes it again in a loop, so the exchange keeps disappearing during the starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn servers_start_while_others_of_their_topic_stop() {
    let Some(url) = common::broker_url_or_skip() else { return };
    common::captured_logs();
    let topic = common::unique("wedge-restart");
    let fanout_exchange = format!("{topic}_fanout");
    let raw = common::raw_connection(&url).await;
    let churning = Arc::new(AtomicBool::new(true));
    let churn = tokio::spawn({
        let churning = churning.clone();
        let exchange = fanout_exchange.clone();
        async move {
            let mut cycles = 0u32;
            while churning.load(Ordering::Relaxed) {
                // The churn meets the same race as the servers: a failed step (the broker then
                // closes the channel) starts the next cycle on a new channel.
                let channel = raw.create_channel().await.unwrap();
                while churning.load(Ordering::Relaxed) && churn_once(&channel, &exchange).await.is_ok() {
                    cycles += 1;
                }
            }
            let _ = raw.close(200, "OK".into()).await;
            cycles
        }
    });
    let (transport, _) = common::transport(&url, &[]);
    let fanouts = Arc::new(AtomicUsize::new(0));
    let endpoint = || {
        let fanouts = fanouts.clone();
        Endpoint::new().method("record", move |_ctxt, _args: JsonMap| {
            let fanouts = fanouts.clone();
            async move {
                fanouts.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
    };
    let start = |i: usize| {
        RpcServer::builder(transport.clone(), Target::new(&topic).with_server(format!("s{i}")))
            .endpoint(endpoint())
            .start()
    };
    let mut failures = Vec::new();
    let starts = 60;
    for i in 0..starts - 1 {
        match start(i).await {
            Ok(server) => server.shutdown().await,
            Err(error) => failures.push(format!("start {i}: {error}")),
        }
    }
    let last = start(starts - 1).await;
    churning.store(false, Ordering::Relaxed);
    let cycles = churn.await.unwrap();
    eprintln!("{starts} starts against {cycles} vanishings of the fanout exchange");
    match last {
        Ok(last) => {
            // The last server's fanout binding is in place: a fanout reaches it.
            let client = RpcClient::new(transport.clone(), Target::new(&topic)).fanout(true);
            client.cast(&common::context(), "record", json!({})).await.unwrap();
            let reached = common::eventually(Duration::from_secs(10), || {
                let fanouts = fanouts.clone();
                async move { fanouts.load(Ordering::SeqCst) == 1 }
            })
            .await;
            assert!(reached, "the fanout did not reach the last server");
            last.shutdown().await;
        }
        Err(error) => failures.push(format!("start {}: {error}", starts - 1)),
    }
    assert!(failures.is_empty(), "{} of {starts} starts failed: {failures:?}", failures.len());
    transport.cleanup().await;
    let mut queues = vec![topic.clone()];
    queues.extend((0..starts).map(|i| format!("{topic}.s{i}")));
    common::delete_queues(&url, &queues).await;
    common::delete_exchanges(&url, &[fanout_exchange]).await;
}

/// Another server of the topic coming and going: bind a private queue to the auto-delete
/// fanout `exchange`, then delete the queue (and so, as its last binding, the exchange).
async fn churn_once(channel: &lapin::Channel, exchange: &str) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(exchange.into(), ExchangeKind::Fanout, options, FieldTable::default())
        .await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.queue_delete(queue.name().clone(), QueueDeleteOptions::default()).await?;
    Ok(())
}
