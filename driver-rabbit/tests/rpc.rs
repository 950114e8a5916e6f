//! RPC and notification behaviour against a real broker (OSLO_TEST_RABBIT_URL).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use oslo_core::codec;
use oslo_core::{Driver, Endpoint, Error, HandlerError, JsonMap, Retry, RpcClient, RpcServer, SendOptions, Target};
use serde_json::{json, Value};

type Log = Arc<Mutex<Vec<Value>>>;

fn endpoint(log: Log) -> Endpoint {
    let record_log = log.clone();
    Endpoint::new()
        .method("echo", |_ctxt, args: JsonMap| async move {
            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
        })
        .method("context", |ctxt: JsonMap, _args: Value| async move {
            Ok::<_, HandlerError>(Value::Object(ctxt))
        })
        .method("fail", |_ctxt, _args: Value| async move {
            Err::<(), _>(HandlerError::new("ValueError", "boom"))
        })
        .method("sleep", |_ctxt, args: JsonMap| async move {
            let seconds = args.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok::<_, HandlerError>(seconds)
        })
        .method("record", move |_ctxt, args: JsonMap| {
            let log = record_log.clone();
            async move {
                log.lock().unwrap().push(args.get("value").cloned().unwrap_or(Value::Null));
                Ok::<_, HandlerError>(())
            }
        })
}

async fn recorded(log: &Log, expected: usize) -> bool {
    let log = log.clone();
    common::eventually(Duration::from_secs(10), move || {
        let log = log.clone();
        async move { log.lock().unwrap().len() >= expected }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn call_cast_fanout_round_trip() {
    let url = require_broker!();
    let topic = common::unique("rt-rpc");
    let (server_transport, _) = common::transport(&url, &[]);
    let (client_transport, client_driver) = common::transport(&url, &[]);
    let log: Log = Arc::default();
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(endpoint(log.clone()))
        .start()
        .await
        .expect("server starts");
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let ctxt = common::context();

    let value = json!({"s": "hi", "zh": "中文", "n": 1, "f": 1.5, "l": [true, null]});
    assert_eq!(client.call(&ctxt, "echo", json!({"value": value})).await.unwrap(), value);

    let seen = client.call(&ctxt, "context", json!({})).await.unwrap();
    assert_eq!(seen["user_id"], "u-wire");
    assert_eq!(seen["request_id"], "req-00000000-0000-0000-0000-000000000001");

    let err = client.call(&ctxt, "fail", json!({})).await.unwrap_err();
    assert_eq!(err.oslo_class(), "ValueError", "{err}");
    assert!(err.to_string().contains("boom"), "{err}");
    let err = client.call(&ctxt, "no_such_method", json!({})).await.unwrap_err();
    assert_eq!(err.oslo_class(), "NoSuchMethod", "{err}");

    let targeted = client.prepare().server("s1");
    assert_eq!(targeted.call(&ctxt, "echo", json!({"value": 7})).await.unwrap(), json!(7));

    // Call monitor heartbeats keep a call alive past its monitor timeout.
    let monitored = client.prepare().call_monitor_timeout(Duration::from_secs(2));
    assert_eq!(monitored.call(&ctxt, "sleep", json!({"seconds": 3})).await.unwrap(), json!(3.0));

    client.cast(&ctxt, "record", json!({"value": "cast-1"})).await.unwrap();
    client
        .prepare()
        .fanout(true)
        .cast(&ctxt, "record", json!({"value": "fanout-1"}))
        .await
        .unwrap();
    client
        .prepare()
        .server("s1")
        .at_least_once(true)
        .cast(&ctxt, "record", json!({"value": "alo-1"}))
        .await
        .unwrap();
    assert!(recorded(&log, 3).await, "casts arrive: {:?}", log.lock().unwrap());
    let mut got: Vec<String> = log.lock().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    got.sort();
    assert_eq!(got, ["alo-1", "cast-1", "fanout-1"]);

    // 64 calls in flight on one driver.
    let calls = (0..64).map(|i| {
        let client = client.clone();
        let ctxt = ctxt.clone();
        async move { client.call(&ctxt, "echo", json!({"value": i})).await }
    });
    let results = futures::future::join_all(calls).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), json!(i));
    }

    let reply_q = client_driver
        .reply_queue_name()
        .expect("reply queue exists after a call")
        .to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

/// Each side publishes on the connection it consumes on: a server replies on its listener's
/// connection and a client sends its calls on its reply queue's connection (one I/O thread
/// per message instead of two). The client's send connection only carries the first call, which
/// declares the exchange, and the server never needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn calls_and_replies_travel_on_the_consuming_connections() {
    let url = require_broker!();
    if common::rabbitmqctl(&["status", "-q"]).is_none() {
        eprintln!("skipping: rabbitmqctl is not usable here");
        return;
    }
    let topic = common::unique("rt-conns");
    let (server_name, client_name) = (common::unique("rt-conns-server"), common::unique("rt-conns-client"));
    let (server_transport, _) = common::transport(&url, &[("connection_name", server_name.as_str())]);
    let (client_transport, client_driver) = common::transport(&url, &[("connection_name", client_name.as_str())]);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(endpoint(Arc::default()))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let ctxt = common::context();
    const CALLS: u64 = 200;
    for i in 0..CALLS {
        assert_eq!(client.call(&ctxt, "echo", json!({"value": i})).await.unwrap(), json!(i));
    }
    // Every reply body alone is over 100 bytes, every request body over 300.
    let server_bytes = common::bytes_received_named(&server_name).await.unwrap();
    assert_eq!(
        server_bytes.len(),
        1,
        "the server has only its listener connection: {server_bytes:?}"
    );
    assert!(
        server_bytes[0] >= 100 * CALLS,
        "replies go out on the listener connection: {server_bytes:?}"
    );
    let mut client_bytes = common::bytes_received_named(&client_name).await.unwrap();
    client_bytes.sort_unstable();
    assert_eq!(client_bytes.len(), 2, "reply connection and send connection: {client_bytes:?}");
    let (send, reply) = (client_bytes[0], client_bytes[1]);
    assert!(reply >= 300 * (CALLS - 1), "calls go out on the reply connection: {client_bytes:?}");
    assert!(send < 20 * 300, "the send connection carried only the first call: {client_bytes:?}");

    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn call_without_server_fails_fast_with_undeliverable() {
    let url = require_broker!();
    let topic = common::unique("rt-nobody");
    let (transport, driver) = common::transport(&url, &[]);
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(30));
    let ctxt = common::context();
    // Warm up the reply queue and send connection so only the call itself is timed.
    let _ = client.call(&ctxt, "echo", json!({})).await;

    let started = Instant::now();
    let err = client.call(&ctxt, "echo", json!({})).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, Error::MessageUndeliverable { exchange, routing_key } if exchange == "openstack" && routing_key == &topic),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

    let err = client.prepare().server("nobody").call(&ctxt, "echo", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::MessageUndeliverable { routing_key, .. } if routing_key == &format!("{topic}.nobody")),
        "{err}"
    );
    // at_least_once casts are mandatory too; plain casts are silently dropped, as in oslo.
    let err = client
        .prepare()
        .at_least_once(true)
        .cast(&ctxt, "echo", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessageUndeliverable { .. }), "{err}");
    client.cast(&ctxt, "echo", json!({})).await.unwrap();

    let reply_q = driver.reply_queue_name().unwrap().to_string();
    transport.cleanup().await;
    common::delete_queues(&url, &[reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn malformed_messages_are_dropped_and_duplicates_ignored() {
    let url = require_broker!();
    let topic = common::unique("rt-bad");
    let (server_transport, _) = common::transport(&url, &[]);
    let (client_transport, client_driver) = common::transport(&url, &[]);
    let log: Log = Arc::default();
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(endpoint(log.clone()))
        .start()
        .await
        .unwrap();

    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    let json_props = || {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
    };
    let server_queue = format!("{topic}.s1");
    let good_cast = codec::encode_envelope(&codec::encode_request(
        &oslo_core::context(json!({"method": "record", "args": {"value": "dup"}})),
        &JsonMap::new(),
        None,
        "0123456789abcdef0123456789abcdef",
    ))
    .unwrap();
    let bad: Vec<(Vec<u8>, BasicProperties)> = vec![
        (b"this is not json".to_vec(), json_props()),
        (good_cast.clone(), BasicProperties::default()), // no content_type: kombu cannot decode it
        (br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#.to_vec(), json_props()),
        (
            br#"{"oslo.version": "2.0", "oslo.message": {"method": "record"}}"#.to_vec(),
            json_props(),
        ),
        (br#"[1, 2, 3]"#.to_vec(), json_props()),
        // Absurd values off the wire must not panic the consumer (and loop on redelivery).
        (
            br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\", \"args\": {}, \"_timeout\": 1e300}"}"#.to_vec(),
            json_props(),
        ),
        (
            br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": 42, \"args\": [1], \"_timeout\": -1, \"_unique_id\": 7}"}"#.to_vec(),
            json_props(),
        ),
    ];
    for (body, properties) in bad {
        channel
            .basic_publish(
                "".into(),
                server_queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The same message twice: the second is a duplicate (same _unique_id) and is dropped.
    for _ in 0..2 {
        channel
            .basic_publish(
                "".into(),
                topic.as_str().into(),
                BasicPublishOptions::default(),
                &good_cast,
                json_props(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let ctxt = common::context();
    assert_eq!(
        client.call(&ctxt, "echo", json!({"value": "still serving"})).await.unwrap(),
        json!("still serving")
    );
    assert!(recorded(&log, 1).await);
    client.cast(&ctxt, "record", json!({"value": "after"})).await.unwrap();
    assert!(recorded(&log, 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<Value> = log.lock().unwrap().clone();
    assert_eq!(got, vec![json!("dup"), json!("after")], "the duplicate was ignored");

    // Nothing malformed is left in (or requeued to) the server queue.
    let check = raw.create_channel().await.unwrap();
    let state = check
        .queue_declare(
            server_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(state.message_count(), 0);
    let _ = raw.close(200, "OK".into()).await;

    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), server_queue, reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn notifications_are_kept_until_a_listener_comes() {
    let url = require_broker!();
    let topic = common::unique("rt-notif");
    let (transport, driver) = common::transport(&url, &[]);
    let message = oslo_core::context(json!({
        "message_id": "3589a2cd-3533-4b71-afec-fa40a6f52152",
        "publisher_id": "rt.host1",
        "event_type": "rt.event",
        "priority": "INFO",
        "payload": {"k": "v"},
        "timestamp": "2026-11-24 14:38:26.341075",
    }));
    // Sent before anyone listens: the notifier's own queue keeps them.
    let info = Target::new(format!("{topic}.info"));
    driver
        .send_notification(&info, &common::context(), &message, true, Retry::Limited(3))
        .await
        .unwrap();
    driver
        .send_notification(&info, &JsonMap::new(), &message, false, Retry::Limited(3))
        .await
        .unwrap();

    let mut listener = driver
        .listen_for_notifications(&[(Target::new(&topic), "INFO".to_string())], None)
        .await
        .unwrap();
    for expect_context in [true, false] {
        let incoming = tokio::time::timeout(Duration::from_secs(10), listener.next())
            .await
            .expect("notification arrives")
            .unwrap();
        assert_eq!(incoming.message()["event_type"], "rt.event");
        assert_eq!(incoming.message()["payload"], json!({"k": "v"}));
        assert!(!incoming.message().contains_key("_unique_id"));
        assert_eq!(incoming.context().contains_key("user_id"), expect_context);
        assert!(!incoming.expects_reply());
        incoming.acknowledge().await.unwrap();
    }

    // Requeue gives the message back; it comes again (not taken for a duplicate).
    driver
        .send_notification(&info, &JsonMap::new(), &message, true, Retry::Limited(3))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .unwrap()
        .unwrap();
    first.requeue().await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.message()["event_type"], "rt.event");
    again.acknowledge().await.unwrap();

    // Pools: each pool gets every notification once.
    let mut pool_a = driver
        .listen_for_notifications(&[(Target::new(&topic), "error".to_string())], Some(&format!("{topic}-pool-a")))
        .await
        .unwrap();
    let error = Target::new(format!("{topic}.error"));
    driver
        .send_notification(&error, &JsonMap::new(), &message, true, Retry::Limited(3))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), pool_a.next()).await.unwrap().unwrap();
    got.acknowledge().await.unwrap();

    listener.stop().await;
    listener.cleanup().await;
    pool_a.stop().await;
    pool_a.cleanup().await;
    transport.cleanup().await;
    common::delete_queues(
        &url,
        &[format!("{topic}.info"), format!("{topic}.error"), format!("{topic}-pool-a")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn wrong_password_fails_fast_without_leaking_it() {
    let url = require_broker!();
    let parsed = oslo_core::TransportUrl::parse(&url).unwrap();
    let host = &parsed.hosts[0];
    let bad = format!(
        "rabbit://{}:S3cretWrong@{}:{}/",
        host.username.as_deref().unwrap_or("guest"),
        host.hostname.as_deref().unwrap_or("localhost"),
        host.port.unwrap_or(5672)
    );
    let (transport, _) = common::transport(&bad, &[]);
    let client = RpcClient::new(transport.clone(), Target::new("rt-auth"));
    let started = Instant::now();
    let err = client.cast(&common::context(), "echo", json!({})).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no retry storm: {:?}",
        started.elapsed()
    );
    assert!(!err.is_retryable(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("ACCESS_REFUSED"), "{text}");
    assert!(!text.contains("S3cretWrong"), "{text}");
    let err = transport
        .driver()
        .send(
            &Target::new("rt-auth"),
            &JsonMap::new(),
            &JsonMap::new(),
            &SendOptions {
                wait_for_reply: true,
                timeout: Some(Duration::from_secs(5)),
                ..SendOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(!format!("{err:?}").contains("S3cretWrong"));
    transport.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn returns_are_attributed_under_concurrency() {
    // Many calls in flight on one channel, half of them to a topic nobody listens on: the
    // broker acks several publishes at once, and lapin may hand a returned message to another
    // publish's confirm. Every call to nowhere must still fail fast, every other call succeed.
    let url = require_broker!();
    let topic = common::unique("rt-mixed");
    let nowhere = common::unique("rt-nowhere");
    let (server_transport, _) = common::transport(&url, &[]);
    let (client_transport, client_driver) = common::transport(&url, &[]);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(endpoint(Arc::default()))
        .start()
        .await
        .unwrap();
    let good = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(20));
    let bad = RpcClient::new(client_transport.clone(), Target::new(&nowhere)).timeout(Duration::from_secs(20));
    let ctxt = common::context();
    good.call(&ctxt, "echo", json!({"value": 0})).await.unwrap();
    for round in 0..5 {
        let calls = (0..128).map(|i| {
            let client = if i % 2 == 0 { good.clone() } else { bad.clone() };
            let ctxt = ctxt.clone();
            async move {
                let started = Instant::now();
                let result = client.call(&ctxt, "echo", json!({"value": i})).await;
                (i, result, started.elapsed())
            }
        });
        for (i, result, elapsed) in futures::future::join_all(calls).await {
            if i % 2 == 0 {
                assert_eq!(result.unwrap(), json!(i), "round {round}");
            } else {
                assert!(
                    matches!(result, Err(Error::MessageUndeliverable { .. })),
                    "round {round} call {i}: {result:?}"
                );
                assert!(elapsed < Duration::from_secs(2), "round {round} call {i} took {elapsed:?}");
            }
        }
    }
    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn replies_to_missing_queues_are_retried_then_dropped() {
    // A caller whose reply queue is gone: the server retries for
    // kombu_missing_consumer_retry_timeout, then drops the reply; other callers are unaffected,
    // including when returned replies surface on other replies' confirms.
    let url = require_broker!();
    let topic = common::unique("rt-noreplyq");
    let (server_transport, _) = common::transport(&url, &[("kombu_missing_consumer_retry_timeout", "1")]);
    let (client_transport, client_driver) = common::transport(&url, &[]);
    let server = RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(endpoint(Arc::default()))
        .start()
        .await
        .unwrap();
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into());
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(20));
    let ctxt = common::context();
    for round in 0..3 {
        // 32 orphan requests whose reply queue does not exist...
        for i in 0..32 {
            let body = codec::encode_envelope(&codec::encode_request(
                &oslo_core::context(json!({"method": "echo", "args": {"value": i}})),
                &JsonMap::new(),
                Some(&codec::CallFields {
                    msg_id: &codec::new_id(),
                    reply_q: &format!("reply_{}", codec::new_id()),
                    call_monitor_timeout: None,
                }),
                &codec::new_id(),
            ))
            .unwrap();
            channel
                .basic_publish(
                    "".into(),
                    topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await
                .unwrap();
        }
        // ...interleaved with real calls, which all succeed.
        let calls = (0..32).map(|i| {
            let client = client.clone();
            let ctxt = ctxt.clone();
            async move { client.call(&ctxt, "echo", json!({"value": i})).await }
        });
        for (i, result) in futures::future::join_all(calls).await.into_iter().enumerate() {
            assert_eq!(result.unwrap(), json!(i), "round {round}");
        }
    }
    // The orphan replies are abandoned after ~1 s; the server keeps serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.call(&ctxt, "echo", json!({"value": "end"})).await.unwrap(), json!("end"));
    let _ = raw.close(200, "OK".into()).await;
    let reply_q = client_driver.reply_queue_name().unwrap().to_string();
    server.shutdown().await;
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

/// The fanout exchange is declared once and cached; when the broker deletes it (it is
/// auto-delete) the next cast gets a 404, redeclares it and goes through, without a retry
/// being counted (so even `Retry::Limited(0)` succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn fanout_exchange_deleted_under_the_publisher_is_redeclared() {
    let url = require_broker!();
    let (transport, _driver) = common::transport(&url, &[]);
    let topic = common::unique("fanout-vanish");
    let log: Log = Arc::default();
    let client = RpcClient::new(transport.clone(), Target::new(&topic))
        .fanout(true)
        .retry(Retry::Limited(0));
    // The first cast declares and caches `<topic>_fanout`.
    client.cast(&common::context(), "record", json!({"value": 0})).await.unwrap();
    // Delete it behind the publisher's back.
    common::delete_exchanges(&url, &[format!("{topic}_fanout")]).await;
    // No retry allowed, and nobody listens: must still succeed (the 404 redeclares it).
    client
        .cast(&common::context(), "record", json!({"value": 1}))
        .await
        .expect("cast after the exchange vanished");
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(endpoint(log.clone()))
        .start()
        .await
        .unwrap();
    common::delete_exchanges(&url, &[format!("{topic}_fanout")]).await;
    // The server's binding went with the exchange; a restarted server rebinds it, but here
    // the client only has to redeclare and publish without error.
    client
        .cast(&common::context(), "record", json!({"value": 2}))
        .await
        .expect("second vanish");
    server.shutdown().await;
    transport.cleanup().await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1")]).await;
    // Declared by the publisher without bindings, the exchange would never auto-delete.
    common::delete_exchanges(&url, &[format!("{topic}_fanout")]).await;
}
