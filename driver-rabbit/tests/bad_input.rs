//! Bad input on the real RabbitMQ: malformed messages published with raw lapin to a running
//! RPC server's and notification listener's queues are logged and dropped (never requeued,
//! never fatal) and the server keeps serving; bad credentials, an unknown virtual host and an
//! unreachable host give a clear typed error within bounded time, retried (when retried at
//! all) with backoff, and without the password in the error text.
//!
//! Connection attempts are counted by a small TCP proxy in front of the broker (or in front of
//! nothing, for a host that accepts and drops connections).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use oslo_core::clip::LOG_FIELD_LIMIT;
use oslo_core::{
    Endpoint, Error, HandlerError, JsonMap, NotificationEndpoint, NotificationListener, NotificationResult, Notifier, Priority, Retry,
    RpcClient, RpcServer, Target,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The broker URL, or `None` to skip (a failure when CI requires the broker).
fn broker() -> Option<String> {
    let url = common::broker_url_or_skip();
    common::captured_logs();
    url
}

fn json_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
}

/// `inner` (a request or notification dict as JSON text) in oslo's 2.0 envelope.
fn enveloped(inner: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": inner})).unwrap()
}

/// Publish `messages` through the default exchange straight into `queue`, with confirms.
async fn publish_raw(url: &str, queue: &str, messages: &[(&str, Vec<u8>, BasicProperties)]) {
    let connection = common::raw_connection(url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (label, body, properties) in messages {
        let confirm = channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties.clone())
            .await
            .unwrap_or_else(|e| panic!("publishing {label}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("confirm of {label}: {e}"));
        assert!(confirm.is_ack(), "{label} not confirmed: {confirm:?}");
    }
    let _ = connection.close(200, "OK".into()).await;
}

/// `(ready, unacknowledged)` message counts of `queue`, from rabbitmqctl.
async fn queue_depth(queue: &str) -> Option<(u64, u64)> {
    let queue = queue.to_string();
    tokio::task::spawn_blocking(move || {
        let text = common::rabbitmqctl(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
            "-q",
        ])?;
        let rows: Vec<Value> = serde_json::from_str(&text).ok()?;
        let row = rows.into_iter().find(|row| row["name"] == json!(queue))?;
        Some((row["messages_ready"].as_u64()?, row["messages_unacknowledged"].as_u64()?))
    })
    .await
    .ok()?
}

/// Wait until `queue` holds no message, ready or unacknowledged; false after `limit`.
async fn drained(queue: &str, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        match queue_depth(queue).await {
            Some((0, 0)) => return true,
            // rabbitmqctl can fail now and then on a loaded machine: ask again until the limit.
            None if started.elapsed() > limit => panic!("cannot read the depth of queue {queue} (rabbitmqctl)"),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
            Some(depth) if started.elapsed() > limit => {
                eprintln!("queue {queue} still holds {depth:?}");
                return false;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A marker for attacker-sized fields (1 MiB of it), to find them in the logs.
const HUGE_MARK: &str = "Zq";

/// The malformed bodies every listener must survive, by name.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>, BasicProperties)> {
    let mut huge = Vec::with_capacity(50 * 1024 * 1024 + 64);
    huge.extend_from_slice(br#"{"oslo.version": "2.0", "oslo.message": ""#);
    huge.resize(50 * 1024 * 1024, b'x');
    huge.extend_from_slice(br#""}"#);
    vec![
        ("not JSON", b"this is not json".to_vec(), json_props()),
        ("empty body", Vec::new(), json_props()),
        (
            "invalid UTF-8",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"\xff\xfe\xfd\"}".to_vec(),
            json_props(),
        ),
        ("invalid UTF-8, raw", vec![0xff, 0xfe, 0x00, 0x80], json_props()),
        (
            "wrong oslo.version",
            br#"{"oslo.version": "3.0", "oslo.message": "{\"method\": \"record\", \"args\": {}}"}"#.to_vec(),
            json_props(),
        ),
        (
            "oslo.version not a string",
            br#"{"oslo.version": 2.0, "oslo.message": "{\"method\": \"record\", \"args\": {}}"}"#.to_vec(),
            json_props(),
        ),
        (
            "oslo.message not a string",
            br#"{"oslo.version": "2.0", "oslo.message": {"method": "record"}}"#.to_vec(),
            json_props(),
        ),
        ("oslo.message not JSON", enveloped("{not json"), json_props()),
        ("oslo.message not an object", enveloped("[1, 2]"), json_props()),
        ("JSON but not an object", b"[1, 2, 3]".to_vec(), json_props()),
        (
            "wrong content type",
            enveloped(r#"{"method": "record", "args": {}}"#),
            BasicProperties::default().with_content_type("text/plain".into()),
        ),
        (
            "no content type",
            enveloped(r#"{"method": "record", "args": {}}"#),
            BasicProperties::default(),
        ),
        ("50 MiB body", huge, json_props()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Malformed messages

/// A request over `max_message_size` is logged once and dropped before it is decoded (the
/// handler never runs, the server keeps serving); one just under the limit is handled. A reply
/// over the client's limit is dropped too, and the call times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn messages_over_max_message_size_are_dropped_before_decoding() {
    let Some(url) = broker() else { return };
    let topic = common::unique("bad-input-size");
    let limit = 256 * 1024;
    let parsed = oslo_core::TransportUrl::parse(&url).unwrap();
    let config = oslo_core::TransportConfig {
        max_message_size: limit,
        ..oslo_core::TransportConfig::default()
    };
    let driver = Arc::new(driver_rabbit::RabbitDriver::new(&parsed, &config).unwrap());
    let transport = oslo_core::Transport::from_driver(driver.clone(), parsed, config);
    let handled = Arc::new(Mutex::new(Vec::new()));
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(Endpoint::new().method("record", {
            let handled = handled.clone();
            move |_c, args: JsonMap| {
                let handled = handled.clone();
                async move {
                    let text = args.get("text").and_then(Value::as_str).unwrap_or_default().len();
                    handled.lock().unwrap().push(text);
                    // The reply is twice the size of the request.
                    Ok::<_, HandlerError>("x".repeat(2 * text))
                }
            }
        }))
        .start()
        .await
        .expect("server starts");
    let request = |len: usize| enveloped(&json!({"method": "record", "args": {"text": "y".repeat(len)}}).to_string());
    let over = request(limit);
    let under = request(limit / 2);
    assert!(over.len() > limit && under.len() < limit);
    publish_raw(
        &url,
        &topic,
        &[("over the limit", over, json_props()), ("under the limit", under, json_props())],
    )
    .await;
    assert!(drained(&topic, Duration::from_secs(10)).await, "nothing left in {topic}");
    let seen = common::eventually(Duration::from_secs(10), || {
        let handled = handled.clone();
        async move { handled.lock().unwrap().len() == 1 }
    })
    .await;
    assert!(seen, "the request under the limit is handled");
    assert_eq!(
        *handled.lock().unwrap(),
        [limit / 2],
        "only the request under the limit reached the handler"
    );
    let dropped = common::log_lines(&[&topic, "larger than max_message_size", "skipping it"]);
    assert_eq!(dropped.len(), 1, "logged once:\n{}", dropped.join("\n"));

    // A reply over the limit: the client drops it and times out; a smaller one arrives.
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(3));
    let ctxt = common::context();
    let small = client.call(&ctxt, "record", json!({"text": "z".repeat(1000)})).await.unwrap();
    assert_eq!(small.as_str().map(str::len), Some(2000));
    let err = client.call(&ctxt, "record", json!({"text": "z".repeat(limit * 2 / 3)})).await;
    assert!(err.is_err(), "a request under the limit whose reply is over it");
    let err = client.call(&ctxt, "record", json!({"text": "z".repeat(limit / 4)})).await.unwrap();
    assert_eq!(err.as_str().map(str::len), Some(limit / 2));
    assert_eq!(common::log_lines(&["larger than max_message_size", "malformed reply"]).len(), 1);

    server.shutdown().await;
    let reply_q = driver.reply_queue_name().map(str::to_string);
    transport.cleanup().await;
    let mut queues = vec![topic.clone(), format!("{topic}.s1")];
    queues.extend(reply_q);
    common::delete_queues(&url, &queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rpc_server_drops_malformed_requests_and_keeps_serving() {
    let Some(url) = broker() else { return };
    let topic = common::unique("bad-input-rpc");
    let (transport, driver) = common::transport(&url, &[]);
    let handled = Arc::new(AtomicUsize::new(0));
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(
            Endpoint::new()
                .method("echo", |_c, args: JsonMap| async move {
                    Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
                })
                .method("record", {
                    let handled = handled.clone();
                    move |_c, _args: JsonMap| {
                        let handled = handled.clone();
                        async move {
                            handled.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, HandlerError>(())
                        }
                    }
                }),
        )
        .start()
        .await
        .expect("server starts");

    let undecodable = malformed_bodies();
    // Decodable, but not a request the dispatcher can run: each ends in a logged dispatch
    // failure (and no endpoint call), never in a dead server.
    let unrunnable: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        ("missing method", enveloped(r#"{"args": {"value": 1}}"#), json_props()),
        ("method not a string", enveloped(r#"{"method": 42, "args": {}}"#), json_props()),
        (
            "args not an object",
            enveloped(r#"{"method": "record", "args": [1, 2]}"#),
            json_props(),
        ),
        ("args a string", enveloped(r#"{"method": "record", "args": "x"}"#), json_props()),
        ("unknown method", enveloped(r#"{"method": "no_such", "args": {}}"#), json_props()),
        (
            "version not a version",
            enveloped(r#"{"method": "record", "args": {}, "version": "banana"}"#),
            json_props(),
        ),
        (
            "routing fields of the wrong types",
            enveloped(
                r#"{"method": "no_such", "args": {}, "_msg_id": 7, "_reply_q": [], "_timeout": "soon", "_unique_id": {}, "_context_roles": 5}"#,
            ),
            json_props(),
        ),
        (
            "call without _reply_q",
            enveloped(r#"{"method": "echo", "args": {"value": 1}, "_msg_id": "m-no-reply-q"}"#),
            json_props(),
        ),
        // Attacker-sized fields: logged clipped (checked below).
        (
            "a 1 MiB method name",
            enveloped(&format!(r#"{{"method": "{}", "args": {{}}}}"#, HUGE_MARK.repeat(1 << 19))),
            json_props(),
        ),
        (
            "a 1 MiB argument of the wrong type",
            enveloped(&format!(r#"{{"method": "record", "args": "{}"}}"#, HUGE_MARK.repeat(1 << 19))),
            json_props(),
        ),
    ];
    let mut all = undecodable.clone();
    all.extend(unrunnable.clone());
    publish_raw(&url, &topic, &all).await;

    // Still serving: a normal call and a normal cast work.
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(15));
    let ctxt = common::context();
    assert_eq!(
        client
            .call(&ctxt, "echo", json!({"value": "still serving"}))
            .await
            .expect("good call"),
        json!("still serving")
    );
    client.cast(&ctxt, "record", json!({})).await.expect("good cast");
    let started = Instant::now();
    while handled.load(Ordering::SeqCst) < 1 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        drained(&topic, Duration::from_secs(10)).await,
        "nothing left or requeued in {topic}"
    );
    // Give a redelivery loop time to show itself, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "only the good cast reached the endpoint");
    let dropped = common::log_lines(&[&topic, "skipping it"]);
    assert_eq!(
        dropped.len(),
        undecodable.len(),
        "each undecodable message logged and rejected exactly once:\n{}",
        dropped.join("\n")
    );
    // Each unrunnable request is logged with the server's topic: a dispatcher refusal
    // (no such method, bad version) as a warning, bad arguments as the endpoint's TypeError.
    let dispatch_failures: Vec<String> = common::log_lines(&[&topic, "RPC dispatch failed"])
        .into_iter()
        .chain(common::log_lines(&[&topic, "RPC endpoint raised", "TypeError"]))
        .collect();
    assert_eq!(
        dispatch_failures.len(),
        unrunnable.len() - 1,
        "every unrunnable request but the reply-less echo logged once:\n{}",
        dispatch_failures.join("\n")
    );
    // The 1 MiB method name and argument were logged, clipped to a few hundred characters.
    let clipped = HUGE_MARK.repeat(LOG_FIELD_LIMIT / HUGE_MARK.len() + 1);
    let long_lines: Vec<usize> = common::log_lines(&[&clipped]).iter().map(String::len).collect();
    assert!(long_lines.is_empty(), "message fields logged whole: lines of {long_lines:?} bytes");
    let logged = common::log_lines(&[&topic, HUGE_MARK, "bytes in all)"]);
    assert!(logged.len() >= 2, "the huge fields are logged, clipped:\n{}", logged.join("\n"));
    let reply_dropped = common::log_lines(&[&topic, "m-no-reply-q", "dropping the reply"]);
    assert_eq!(reply_dropped.len(), 1, "the reply-less call is logged");
    assert!(drained(&topic, Duration::from_secs(1)).await);

    server.shutdown().await;
    let reply_q = driver.reply_queue_name().map(str::to_string);
    transport.cleanup().await;
    let mut queues = vec![topic.clone(), format!("{topic}.s1")];
    queues.extend(reply_q);
    common::delete_queues(&url, &queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn notification_listener_drops_malformed_notifications_and_keeps_listening() {
    let Some(url) = broker() else { return };
    let topic = common::unique("bad-input-notify");
    let (transport, _driver) = common::transport(&url, &[]);
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let endpoint = NotificationEndpoint::new().on(Priority::Info, {
        let received = received.clone();
        move |n| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push(n.payload.clone());
                NotificationResult::Handled
            }
        }
    });
    let listener = NotificationListener::builder(transport.clone(), vec![Target::new(&topic)])
        .endpoint(endpoint)
        .allow_requeue(true)
        .start()
        .await
        .expect("listener starts");
    let queue = format!("{topic}.info");

    let undecodable = malformed_bodies();
    let unusable: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        ("no priority", enveloped(r#"{"event_type": "e", "payload": {}}"#), json_props()),
        (
            "unknown priority",
            enveloped(r#"{"event_type": "e", "priority": "LOUD", "payload": {}}"#),
            json_props(),
        ),
        (
            "priority not a string",
            enveloped(r#"{"event_type": "e", "priority": 3, "payload": {}}"#),
            json_props(),
        ),
        (
            "fields of the wrong types",
            enveloped(r#"{"event_type": 5, "priority": "INFO", "publisher_id": [], "payload": "p", "timestamp": {}, "message_id": 1}"#),
            json_props(),
        ),
    ];
    let mut all = undecodable.clone();
    all.extend(unusable.clone());
    publish_raw(&url, &queue, &all).await;

    Notifier::new(transport.clone())
        .publisher_id("bad-input.host")
        .topics([topic.as_str()])
        .retry(Retry::Limited(3))
        .info(&common::context(), "bad_input.good", json!({"good": true}))
        .await
        .expect("good notification");
    let started = Instant::now();
    while !received.lock().unwrap().contains(&json!({"good": true})) {
        assert!(started.elapsed() < Duration::from_secs(15), "the good notification never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        drained(&queue, Duration::from_secs(10)).await,
        "nothing left or requeued in {queue}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dropped = common::log_lines(&[&queue, "skipping it"]);
    assert_eq!(
        dropped.len(),
        undecodable.len(),
        "each undecodable notification logged and rejected exactly once:\n{}",
        dropped.join("\n")
    );
    // The three without a usable priority are logged and acknowledged (only this test of the
    // binary runs a notification listener); the one with odd field types but a priority is
    // delivered as oslo would, once.
    let unknown_priority = common::log_lines(&["Unknown priority; dropping notification"]);
    assert_eq!(unknown_priority.len(), 3, "{}", unknown_priority.join("\n"));
    let mut got: Vec<String> = received.lock().unwrap().iter().map(Value::to_string).collect();
    got.sort();
    assert_eq!(got, [r#""p""#, r#"{"good":true}"#], "each delivered once, no redelivery loop");
    assert!(drained(&queue, Duration::from_secs(1)).await);

    listener.shutdown().await;
    transport.cleanup().await;
    common::delete_queues(&url, &[queue]).await;
}

// ---------------------------------------------------------------------------------------------
// Bad credentials, unknown virtual host, unreachable host

/// A TCP listener on a random port that counts connections and forwards each to `upstream`,
/// or (without one) closes it at once, as a host whose broker is dead would.
struct CountingProxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(upstream: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let Some(upstream) = upstream else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        CountingProxy { port, accepted, task }
    }

    fn attempts(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's address and a user name from the test URL.
fn broker_address(url: &str) -> (SocketAddr, String, String) {
    let parsed = oslo_core::TransportUrl::parse(url).unwrap();
    let host = &parsed.hosts[0];
    let name = host.hostname.clone().unwrap_or_else(|| "127.0.0.1".into());
    let name = if name == "localhost" { "127.0.0.1".to_string() } else { name };
    let address: SocketAddr = format!("{name}:{}", host.port.unwrap_or(5672))
        .parse()
        .expect("numeric broker host");
    let user = host.username.clone().unwrap_or_else(|| "guest".into());
    let password = host
        .password
        .as_ref()
        .map(|p| p.expose().to_string())
        .unwrap_or_else(|| "guest".into());
    (address, user, password)
}

fn assert_no_secret(err: &Error, secret: &str) {
    let display = err.to_string();
    let debug = format!("{err:?}");
    assert!(!display.contains(secret), "password in the error text: {display}");
    assert!(!debug.contains(secret), "password in the error's Debug: {debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn bad_credentials_fail_at_once_typed_and_without_the_password() {
    let Some(url) = broker() else { return };
    let (broker, user, _) = broker_address(&url);
    let proxy = CountingProxy::start(Some(broker)).await;
    let secret = "Wr0ng-Pa55word-Zq7";
    let bad = format!("rabbit://{user}:{secret}@127.0.0.1:{}/", proxy.port);
    let topic = common::unique("bad-input-creds");

    // A cast with the default retry (forever): authentication failures are not retried.
    let (transport, _) = common::transport(&bad, &[]);
    let started = Instant::now();
    let err = RpcClient::new(transport.clone(), Target::new(&topic))
        .cast(&common::context(), "m", json!({}))
        .await
        .expect_err("wrong password");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(
        matches!(err, Error::Transport { retryable: false, .. }),
        "typed, not retryable: {err}"
    );
    assert!(err.to_string().contains("ACCESS_REFUSED"), "says why: {err}");
    assert_no_secret(&err, secret);
    assert_eq!(proxy.attempts(), 1, "one attempt, no reconnect storm");

    // A server: start fails the same way instead of retrying in the background.
    let started = Instant::now();
    let err = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("s1"))
        .endpoint(Endpoint::new())
        .start()
        .await
        .expect_err("wrong password");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, Error::Transport { retryable: false, .. }), "{err}");
    assert_no_secret(&err, secret);
    assert_eq!(proxy.attempts(), 2);
    transport.cleanup().await;
    let lines = common::log_lines(&[secret]);
    assert!(lines.is_empty(), "password in the logs:\n{}", lines.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn unknown_virtual_host_fails_at_once_typed() {
    let Some(url) = broker() else { return };
    let (broker, user, password) = broker_address(&url);
    let proxy = CountingProxy::start(Some(broker)).await;
    let vhost = common::unique("no-such-vhost");
    let bad = format!("rabbit://{user}:{password}@127.0.0.1:{}/{vhost}", proxy.port);
    let (transport, _) = common::transport(&bad, &[]);
    let started = Instant::now();
    let err = RpcClient::new(transport.clone(), Target::new("bad-input-vhost"))
        .timeout(Duration::from_secs(30))
        .call(&common::context(), "m", json!({}))
        .await
        .expect_err("unknown vhost");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(matches!(err, Error::Transport { retryable: false, .. }), "typed: {err}");
    assert!(err.to_string().contains(&vhost), "names the vhost: {err}");
    if password != user {
        assert_no_secret(&err, &password);
    }
    assert!(!err.to_string().contains(&format!(":{password}@")), "{err}");
    assert_eq!(proxy.attempts(), 1, "not retried");
    transport.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_is_retried_with_backoff_then_fails_typed() {
    common::captured_logs();
    // Needs no broker: a port where connections are accepted and dropped at once.
    let proxy = CountingProxy::start(None).await;
    let secret = "Unreach-Pw-Kx9";
    let url = format!("rabbit://u:{secret}@127.0.0.1:{}/", proxy.port);
    let options = [
        ("rabbit_retry_interval", "1"),
        ("rabbit_retry_backoff", "1"),
        ("rabbit_interval_max", "2"),
    ];
    let (transport, _) = common::transport(&url, &options);
    let client = RpcClient::new(transport.clone(), Target::new("bad-input-unreachable"));

    // Three retries: four attempts, 1 + 2 + 2 s apart (interval 1 s, +1 s per round, max 2 s).
    let started = Instant::now();
    let err = client
        .prepare()
        .retry(Retry::Limited(3))
        .cast(&common::context(), "m", json!({}))
        .await
        .expect_err("unreachable");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }),
        "typed, retryable: {err}"
    );
    assert!(err.to_string().contains("after 4 tries"), "{err}");
    assert_no_secret(&err, secret);
    assert_eq!(proxy.attempts(), 4, "retry=3 means four attempts");
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(15),
        "backed off 1 + 2 + 2 s: {elapsed:?}"
    );

    // Retry forever is still bounded by the call's timeout, at the same pace (no storm).
    let before = proxy.attempts();
    let started = Instant::now();
    let err = client
        .prepare()
        .timeout(Duration::from_secs(4))
        .call(&common::context(), "m", json!({}))
        .await
        .expect_err("unreachable");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::MessagingTimeout { .. } | Error::MessageDeliveryFailure { .. }),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(8), "bounded by the timeout: {elapsed:?}");
    let attempts = proxy.attempts() - before;
    assert!((2..=4).contains(&attempts), "{attempts} attempts in 4 s");
    assert_no_secret(&err, secret);

    // A server against the dead host keeps retrying in the background at the backoff pace.
    let before = proxy.attempts();
    let start = tokio::spawn({
        let transport = transport.clone();
        async move {
            RpcServer::builder(transport, Target::new("bad-input-unreachable").with_server("s1"))
                .endpoint(Endpoint::new())
                .start()
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let attempts = proxy.attempts() - before;
    start.abort();
    assert!(
        (2..=5).contains(&attempts),
        "{attempts} connection attempts in 5 s: a storm or no retry"
    );

    // A closed port (nothing listening) fails the same typed way.
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let (closed_transport, _) = common::transport(&format!("rabbit://u:{secret}@127.0.0.1:{closed}/"), &options);
    let started = Instant::now();
    let err = RpcClient::new(closed_transport.clone(), Target::new("bad-input-closed"))
        .retry(Retry::Limited(1))
        .cast(&common::context(), "m", json!({}))
        .await
        .expect_err("closed port");
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_no_secret(&err, secret);
    let lines = common::log_lines(&[secret]);
    assert!(lines.is_empty(), "password in the logs:\n{}", lines.join("\n"));
    transport.cleanup().await;
    closed_transport.cleanup().await;
}
