//! Wire compatibility with Python oslo.messaging 18.3.1, checked against the captured traffic
//! of `wire-format.md` with raw lapin on a real broker (OSLO_TEST_RABBIT_URL).

mod common;

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};
use oslo_core::{Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target};
use serde_json::{json, Value};

/// The captured "call echo (topic)" body, with its ids as placeholders.
const CALL_ECHO: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\", \"args\": {\"value\": {\"s\": \"hi\", \"zh\": \"\\u4e2d\\u6587\", \"n\": 1, \"f\": 1.5, \"l\": [true, null]}}, \"_msg_id\": \"MSG_ID\", \"_reply_q\": \"REPLY_Q\", \"_timeout\": null, \"_unique_id\": \"UNIQUE_ID\", \"_context_user_id\": \"u-wire\", \"_context_project_id\": \"p-wire\", \"_context_request_id\": \"req-00000000-0000-0000-0000-000000000001\"}"}"##;
/// "cast record (topic)".
const CAST_RECORD: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"record\", \"args\": {\"value\": \"cast-1\"}, \"_unique_id\": \"UNIQUE_ID\", \"_context_user_id\": \"u-wire\", \"_context_project_id\": \"p-wire\", \"_context_request_id\": \"req-00000000-0000-0000-0000-000000000001\"}"}"##;
/// "fanout cast record".
const FANOUT_RECORD: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"record\", \"args\": {\"value\": \"fanout-1\"}, \"_unique_id\": \"UNIQUE_ID\", \"_context_user_id\": \"u-wire\", \"_context_project_id\": \"p-wire\", \"_context_request_id\": \"req-00000000-0000-0000-0000-000000000001\"}"}"##;
/// "call whoami (server-targeted)", with call_monitor_timeout=2 as in "call sleep".
const CALL_WHOAMI_MONITORED: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"whoami\", \"args\": {}, \"_msg_id\": \"MSG_ID\", \"_reply_q\": \"REPLY_Q\", \"_timeout\": 2, \"_unique_id\": \"UNIQUE_ID\", \"_context_user_id\": \"u-wire\", \"_context_project_id\": \"p-wire\", \"_context_request_id\": \"req-00000000-0000-0000-0000-000000000001\"}"}"##;
/// A Python server's final reply and heartbeat ("replies to sleep(3) with _timeout=2").
const PY_REPLY_FINAL: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"result\": 3, \"failure\": null, \"ending\": true, \"_msg_id\": \"MSG_ID\", \"_unique_id\": \"6220ee28eedd47c4926d59102df3627c\"}"}"##;
const PY_REPLY_HEARTBEAT: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"result\": null, \"failure\": null, \"ending\": false, \"_msg_id\": \"MSG_ID\", \"_unique_id\": \"c8a8b199242f4ce2bcfc18d67f1f4da6\"}"}"##;
/// "reply to control ping version 2.0 (UnsupportedVersion)".
const PY_REPLY_UNSUPPORTED: &str = r##"{"oslo.version": "2.0", "oslo.message": "{\"result\": null, \"failure\": \"{\\\"class\\\": \\\"UnsupportedVersion\\\", \\\"module\\\": \\\"oslo_messaging.rpc.dispatcher\\\", \\\"message\\\": \\\"Endpoint does not support RPC version 2.0. Attempted method: ping\\\", \\\"tb\\\": [\\\"Traceback (most recent call last):\\\\n\\\", \\\"  File \\\\\\\"site-packages/oslo_messaging/rpc/server.py\\\\\\\", line 176, in _process_incoming\\\\n    res = self.dispatcher.dispatch(message)\\\\n          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\\\\n\\\", \\\"  File \\\\\\\"site-packages/oslo_messaging/rpc/dispatcher.py\\\\\\\", line 320, in dispatch\\\\n    raise UnsupportedVersion(version, method=method)\\\\n\\\", \\\"oslo_messaging.rpc.dispatcher.UnsupportedVersion: Endpoint does not support RPC version 2.0. Attempted method: ping\\\\n\\\"], \\\"args\\\": [\\\"Endpoint does not support RPC version 2.0. Attempted method: ping\\\"], \\\"kwargs\\\": {}}\", \"ending\": true, \"_msg_id\": \"MSG_ID\", \"_unique_id\": \"c821408bed0f48ed9d4c71e194cf8388\"}"}"##;

fn py_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0)
}

/// The inner oslo message of a captured body.
fn inner(body: &[u8]) -> JsonMap {
    let outer: Value = serde_json::from_slice(body).expect("body is JSON");
    let text = outer["oslo.message"].as_str().expect("oslo.message is a string");
    serde_json::from_str(text).expect("inner JSON")
}

fn fill(template: &str, inner: &JsonMap) -> String {
    let get = |key: &str| inner.get(key).and_then(Value::as_str).unwrap_or("?").to_string();
    template
        .replace("MSG_ID", &get("_msg_id"))
        .replace("REPLY_Q", &get("_reply_q"))
        .replace("UNIQUE_ID", &get("_unique_id"))
}

fn assert_oslo_properties(delivery: &Delivery, expiration: Option<&str>) {
    let p = &delivery.properties;
    assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
    assert_eq!(p.content_encoding().as_ref().map(|s| s.as_str()), Some("utf-8"));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.priority(), Some(0));
    assert_eq!(p.headers().as_ref().map(|h| h.inner().len()), Some(0), "empty header table present");
    assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), expiration);
    assert!(p.correlation_id().is_none() && p.reply_to().is_none() && p.message_id().is_none());
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a message is captured")
        .expect("consumer open")
        .expect("delivery")
}

/// An exclusive, server-named capture queue.
async fn capture_queue(channel: &Channel) -> (String, Consumer) {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = queue.name().to_string();
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "capture".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (name, consumer)
}

async fn publish_raw(channel: &Channel, exchange: &str, routing_key: &str, body: &str) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            py_properties(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn client_messages_match_the_capture_and_python_replies_are_understood() {
    let url = require_broker!();
    let topic = common::unique("rt-wire");
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    let (capture, mut captured) = capture_queue(&channel).await;
    // Python's declarations of the exchanges; bind `<topic>.#` (not `#`, so other tests sharing
    // `openstack` are not disturbed) and the fanout exchange.
    channel
        .exchange_declare(
            "openstack".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let fanout = format!("{topic}_fanout");
    channel
        .exchange_declare(
            fanout.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (exchange, key) in [("openstack", format!("{topic}.#")), (fanout.as_str(), topic.clone())] {
        channel
            .queue_bind(
                capture.as_str().into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    let (transport, driver) = common::transport(&url, &[]);
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let ctxt = common::context();

    // Call echo: captured byte for byte, then answered with a Python reply.
    let value = json!({"s": "hi", "zh": "中文", "n": 1, "f": 1.5, "l": [true, null]});
    let call = tokio::spawn({
        let client = client.clone();
        let ctxt = ctxt.clone();
        async move { client.call(&ctxt, "echo", json!({"value": value})).await }
    });
    let request = next(&mut captured).await;
    assert_eq!(request.exchange.as_str(), "openstack");
    assert_eq!(request.routing_key.as_str(), topic);
    assert_oslo_properties(&request, Some("10000"));
    let fields = inner(&request.data);
    assert_eq!(String::from_utf8(request.data.clone()).unwrap(), fill(CALL_ECHO, &fields));
    let msg_id = fields["_msg_id"].as_str().unwrap().to_string();
    let reply_q = fields["_reply_q"].as_str().unwrap().to_string();
    assert_eq!(msg_id.len(), 32);
    assert!(reply_q.starts_with("reply_") && reply_q.len() == 38, "{reply_q}");
    assert_eq!(Some(reply_q.as_str()), driver.reply_queue_name());
    publish_raw(&channel, "", &reply_q, &PY_REPLY_HEARTBEAT.replace("MSG_ID", &msg_id)).await;
    publish_raw(&channel, "", &reply_q, &PY_REPLY_FINAL.replace("MSG_ID", &msg_id)).await;
    assert_eq!(call.await.unwrap().unwrap(), json!(3));

    // Server-targeted call with a call monitor; answered with a Python failure.
    let call = tokio::spawn({
        let client = client.prepare().server("wirecap-a").call_monitor_timeout(Duration::from_secs(2));
        let ctxt = ctxt.clone();
        async move { client.call(&ctxt, "whoami", json!({})).await }
    });
    let request = next(&mut captured).await;
    assert_eq!(request.routing_key.as_str(), format!("{topic}.wirecap-a"));
    assert_oslo_properties(&request, Some("10000"));
    let fields = inner(&request.data);
    assert_eq!(
        String::from_utf8(request.data.clone()).unwrap(),
        fill(CALL_WHOAMI_MONITORED, &fields)
    );
    publish_raw(
        &channel,
        "",
        &reply_q,
        &PY_REPLY_UNSUPPORTED.replace("MSG_ID", fields["_msg_id"].as_str().unwrap()),
    )
    .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.oslo_class(), "UnsupportedVersion", "{err}");
    assert!(err.to_string().contains("Endpoint does not support RPC version 2.0"), "{err}");

    // Cast and fanout cast.
    client.cast(&ctxt, "record", json!({"value": "cast-1"})).await.unwrap();
    let cast = next(&mut captured).await;
    assert_eq!((cast.exchange.as_str(), cast.routing_key.as_str()), ("openstack", topic.as_str()));
    assert_oslo_properties(&cast, None);
    assert_eq!(String::from_utf8(cast.data.clone()).unwrap(), fill(CAST_RECORD, &inner(&cast.data)));

    client
        .prepare()
        .fanout(true)
        .cast(&ctxt, "record", json!({"value": "fanout-1"}))
        .await
        .unwrap();
    let cast = next(&mut captured).await;
    assert_eq!((cast.exchange.as_str(), cast.routing_key.as_str()), (fanout.as_str(), ""));
    assert_oslo_properties(&cast, None);
    assert_eq!(
        String::from_utf8(cast.data.clone()).unwrap(),
        fill(FANOUT_RECORD, &inner(&cast.data))
    );

    // messagingv2 notification: routing key <topic>.<priority>, no expiration.
    let notification = oslo_core::context(json!({
        "message_id": "4898fd74-82d2-4ffa-b3b6-ab3bb8a14ce9",
        "publisher_id": "wirecap-client.host1",
        "event_type": "wirecap.event",
        "priority": "INFO",
        "payload": {"k": "v2"},
        "timestamp": "2026-11-24 14:38:27.154870"
    }));
    use oslo_core::Driver;
    driver
        .send_notification(
            &Target::new(format!("{topic}.info")),
            &JsonMap::new(),
            &notification,
            true,
            oslo_core::Retry::Limited(2),
        )
        .await
        .unwrap();
    let note = next(&mut captured).await;
    assert_eq!(
        (note.exchange.as_str(), note.routing_key.as_str()),
        ("openstack", format!("{topic}.info").as_str())
    );
    assert_oslo_properties(&note, None);
    let expected = r##"{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"4898fd74-82d2-4ffa-b3b6-ab3bb8a14ce9\", \"publisher_id\": \"wirecap-client.host1\", \"event_type\": \"wirecap.event\", \"priority\": \"INFO\", \"payload\": {\"k\": \"v2\"}, \"timestamp\": \"2026-11-24 14:38:27.154870\", \"_unique_id\": \"UNIQUE_ID\"}"}"##;
    assert_eq!(String::from_utf8(note.data.clone()).unwrap(), fill(expected, &inner(&note.data)));

    transport.cleanup().await;
    let _ = raw.close(200, "OK".into()).await;
    common::delete_queues(&url, &[reply_q, format!("{topic}.info")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn server_answers_python_requests_with_python_replies() {
    let url = require_broker!();
    let topic = common::unique("rt-wsrv");
    let (transport, _) = common::transport(&url, &[]);
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("wirecap-a"))
        .endpoint(
            Endpoint::new()
                .method("echo", |_c, args: JsonMap| async move {
                    Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
                })
                .method("sleep", |_c, args: JsonMap| async move {
                    let seconds = args.get("seconds").and_then(Value::as_u64).unwrap_or(0);
                    tokio::time::sleep(Duration::from_secs(seconds)).await;
                    Ok::<_, HandlerError>(seconds)
                }),
        )
        .start()
        .await
        .unwrap();
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    let (capture, mut replies) = capture_queue(&channel).await;

    // A Python client's call (captured form) with _timeout=2: heartbeats, then the result.
    let msg_id = "37068d9ff8d6463098c8f2fbbaf8d58e";
    let request = CALL_WHOAMI_MONITORED
        .replace(
            "\\\"whoami\\\", \\\"args\\\": {}",
            "\\\"sleep\\\", \\\"args\\\": {\\\"seconds\\\": 3}",
        )
        .replace("MSG_ID", msg_id)
        .replace("REPLY_Q", &capture)
        .replace("UNIQUE_ID", "1d1a18594286414b9892658e366abc0a");
    publish_raw(&channel, "openstack", &topic, &request).await;
    let mut heartbeats = 0;
    loop {
        let reply = next(&mut replies).await;
        assert_eq!((reply.exchange.as_str(), reply.routing_key.as_str()), ("", capture.as_str()));
        assert_oslo_properties(&reply, None);
        let fields = inner(&reply.data);
        let text = String::from_utf8(reply.data.clone()).unwrap();
        if fields["ending"] == json!(false) {
            heartbeats += 1;
            assert_eq!(
                text,
                fill(
                    &PY_REPLY_HEARTBEAT
                        .replace("c8a8b199242f4ce2bcfc18d67f1f4da6", "UNIQUE_ID")
                        .replace("MSG_ID", msg_id),
                    &fields
                )
            );
            continue;
        }
        assert_eq!(
            text,
            fill(
                &PY_REPLY_FINAL
                    .replace("6220ee28eedd47c4926d59102df3627c", "UNIQUE_ID")
                    .replace("MSG_ID", msg_id),
                &fields
            )
        );
        break;
    }
    assert!(heartbeats >= 2, "heartbeats every int(_timeout)/2 s: got {heartbeats}");

    // A bare, un-enveloped request (no _context_*, no _unique_id) is served too.
    let bare = format!(
        r#"{{"method": "echo", "args": {{"value": "bare"}}, "_msg_id": "fad3a259d70b429891321a093599c1ae", "_reply_q": "{capture}"}}"#
    );
    publish_raw(&channel, "openstack", &format!("{topic}.wirecap-a"), &bare).await;
    let reply = next(&mut replies).await;
    let fields = inner(&reply.data);
    assert_eq!(fields["result"], "bare");
    assert_eq!(fields["failure"], Value::Null);
    assert_eq!(fields["ending"], true);
    assert_eq!(fields["_msg_id"], "fad3a259d70b429891321a093599c1ae");

    server.shutdown().await;
    transport.cleanup().await;
    let _ = raw.close(200, "OK".into()).await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.wirecap-a")]).await;
}

fn find<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not found"))
}

async fn redeclare_queue(channel_source: &lapin::Connection, name: &str, durable: bool, args: FieldTable) -> Result<(), lapin::Error> {
    let channel = channel_source.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        )
        .await
        .map(|_| ())
}

async fn redeclare_exchange(
    connection: &lapin::Connection,
    name: &str,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable,
                auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn topology_matches_the_capture() {
    let url = require_broker!();
    let topic = common::unique("rt-topo");
    let (transport, driver) = common::transport(&url, &[]);
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(Endpoint::new().method("echo", |_c, _a: Value| async move { Ok::<_, HandlerError>(1) }))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    client.call(&common::context(), "echo", json!({})).await.unwrap();
    let reply_q = driver.reply_queue_name().unwrap().to_string();

    // Python's declarations (same flags and arguments) are accepted: no PRECONDITION_FAILED.
    let raw = common::raw_connection(&url).await;
    let mut ttl = FieldTable::default();
    ttl.insert("x-expires".into(), AMQPValue::LongInt(1_800_000));
    redeclare_queue(&raw, &topic, false, FieldTable::default())
        .await
        .expect("topic queue equivalent");
    redeclare_queue(&raw, &format!("{topic}.s1"), false, FieldTable::default())
        .await
        .expect("server queue equivalent");
    redeclare_queue(&raw, &reply_q, false, ttl.clone())
        .await
        .expect("reply queue equivalent");
    redeclare_exchange(&raw, "openstack", ExchangeKind::Topic, false, false)
        .await
        .expect("control exchange equivalent");
    redeclare_exchange(&raw, &format!("{topic}_fanout"), ExchangeKind::Fanout, false, true)
        .await
        .expect("fanout exchange equivalent");
    // ...and the check is real: other arguments are refused.
    let mut short = FieldTable::default();
    short.insert("x-expires".into(), AMQPValue::LongInt(1000));
    assert!(redeclare_queue(&raw, &reply_q, false, short).await.is_err());
    assert!(redeclare_queue(&raw, &topic, true, FieldTable::default()).await.is_err());
    assert!(
        redeclare_exchange(&raw, &format!("{topic}_fanout"), ExchangeKind::Fanout, false, false)
            .await
            .is_err()
    );

    if let Some(queues) = common::list_queues().await {
        for name in [topic.clone(), format!("{topic}.s1")] {
            let q = find(&queues, &name);
            assert_eq!(
                (q["durable"].clone(), q["auto_delete"].clone(), q["exclusive"].clone()),
                (json!(false), json!(false), json!(false)),
                "{q}"
            );
            assert_eq!(q["arguments"], json!([]), "{q}");
            assert_eq!(q["consumers"], json!(1), "{q}");
        }
        let fanout_queues: Vec<&Value> = queues
            .iter()
            .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&format!("{topic}_fanout_"))))
            .collect();
        assert_eq!(fanout_queues.len(), 1);
        let fq = fanout_queues[0];
        assert_eq!(fq["name"].as_str().unwrap().len(), topic.len() + "_fanout_".len() + 32);
        assert_eq!((fq["durable"].clone(), fq["auto_delete"].clone()), (json!(false), json!(false)));
        assert_eq!(fq["arguments"], json!([["x-expires", "signedint", 1800000]]));
        let rq = find(&queues, &reply_q);
        assert_eq!(
            (rq["durable"].clone(), rq["auto_delete"].clone(), rq["exclusive"].clone()),
            (json!(false), json!(false), json!(false))
        );
        assert_eq!(rq["arguments"], json!([["x-expires", "signedint", 1800000]]));
        assert_eq!(rq["consumers"], json!(1));

        let exchanges = common::list_exchanges().await.unwrap();
        let e = find(&exchanges, "openstack");
        assert_eq!(
            (e["type"].clone(), e["durable"].clone(), e["auto_delete"].clone()),
            (json!("topic"), json!(false), json!(false))
        );
        let e = find(&exchanges, &format!("{topic}_fanout"));
        assert_eq!(
            (e["type"].clone(), e["durable"].clone(), e["auto_delete"].clone()),
            (json!("fanout"), json!(false), json!(true))
        );

        let bindings = common::list_bindings().await.unwrap();
        let has = |source: &str, dest: &str, key: &str| {
            bindings
                .iter()
                .any(|b| b["source_name"] == source && b["destination_name"] == dest && b["routing_key"] == key)
        };
        assert!(has("openstack", &topic, &topic));
        assert!(has("openstack", &format!("{topic}.s1"), &format!("{topic}.s1")));
        assert!(has(&format!("{topic}_fanout"), fq["name"].as_str().unwrap(), &topic));

        // oslo's connection name `<basename(argv0)>:<pid>:<uuid4>` and the AMQPLAIN login.
        let argv0 = std::env::args().next().unwrap();
        let prefix = format!(
            "{}:{}:",
            std::path::Path::new(&argv0).file_name().unwrap().to_string_lossy(),
            std::process::id()
        );
        let rows = common::connection_rows().await.unwrap();
        let ours: Vec<&String> = rows.iter().filter(|r| r.contains(&prefix)).collect();
        assert!(ours.len() >= 3, "listener, reply and send connections named {prefix}...: {rows:?}");
        assert!(ours.iter().all(|r| r.starts_with("AMQPLAIN")), "{ours:?}");
    } else {
        eprintln!("rabbitmqctl not available: checked by re-declaration only");
    }

    // Stopping the server deletes its private fanout queue (oslo Connection.close), not the others.
    let fanout_queue_prefix = format!("{topic}_fanout_");
    server.shutdown().await;
    if let Some(queues) = common::list_queues().await {
        assert!(!queues
            .iter()
            .any(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&fanout_queue_prefix))));
        find(&queues, &topic);
    }
    transport.cleanup().await;
    let _ = raw.close(200, "OK".into()).await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn quorum_and_durable_options_change_the_declarations() {
    let url = require_broker!();
    let topic = common::unique("rt-quorum");
    let exchange = common::unique("rt-quorum-x");
    let options = [
        ("rabbit_quorum_queue", "true"),
        ("rabbit_transient_quorum_queue", "true"),
        ("rabbit_quorum_delivery_limit", "5"),
    ];
    let (transport, driver) = common::transport(&url, &options);
    let target = Target::new(&topic).with_exchange(&exchange);
    let server = RpcServer::builder(transport.clone(), target.clone().with_server("s1"))
        .endpoint(Endpoint::new().method("echo", |_c, _a: Value| async move { Ok::<_, HandlerError>(1) }))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(transport.clone(), target.clone()).timeout(Duration::from_secs(20));
    assert_eq!(client.call(&common::context(), "echo", json!({})).await.unwrap(), json!(1));
    let reply_q = driver.reply_queue_name().unwrap().to_string();

    let raw = common::raw_connection(&url).await;
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    quorum.insert("x-delivery-limit".into(), AMQPValue::LongInt(5));
    redeclare_queue(&raw, &topic, true, quorum.clone())
        .await
        .expect("quorum topic queue equivalent");
    let mut transient = quorum.clone();
    transient.insert("x-expires".into(), AMQPValue::LongInt(1_800_000));
    redeclare_queue(&raw, &reply_q, true, transient)
        .await
        .expect("transient quorum reply queue equivalent");
    redeclare_exchange(&raw, &exchange, ExchangeKind::Topic, true, false)
        .await
        .expect("durable exchange");
    redeclare_exchange(&raw, &format!("{topic}_fanout"), ExchangeKind::Fanout, true, true)
        .await
        .expect("durable fanout exchange");

    if let Some(queues) = common::list_queues().await {
        let q = find(&queues, &topic);
        assert_eq!(q["durable"], true);
        let args = q["arguments"].to_string();
        assert!(args.contains("\"x-queue-type\",\"longstr\",\"quorum\""), "{args}");
        assert!(args.contains("\"x-delivery-limit\",\"signedint\",5"), "{args}");
    }
    server.shutdown().await;
    transport.cleanup().await;
    let _ = raw.close(200, "OK".into()).await;
    common::delete_queues(&url, &[topic.clone(), format!("{topic}.s1"), reply_q]).await;
    common::delete_exchanges(&url, &[exchange, format!("{topic}_fanout")]).await;
}
