//! The driver conformance suite: one set of async checks every driver must pass.
//!
//! Each [`Case`] takes a [`Transport`] and panics (via `assert!`) when the driver misbehaves.
//! Cases that need a capability the driver does not declare are reported as skipped by the
//! runner, never silently passed. Every case uses its own random topic, so cases can run in
//! parallel against one broker. The `oslo-tests` crate runs them against `fake://` always
//! and against every broker whose URL variable is set (`OSLO_TEST_RABBIT_URL`, ...).
//!
//! Names follow oslo.messaging's functional tests (`tests/functional/test_functional.py`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use crate::codec::{new_id, JsonMap};
use crate::driver::{Capabilities, Retry};
use crate::error::Error;
use crate::remote::HandlerError;
use crate::rpc::{Endpoint, RpcClient, RpcServer};
use crate::target::Target;
use crate::transport::Transport;

/// A capability a case needs: its name and how to read it from [`Capabilities`].
pub type Requirement = (&'static str, fn(&Capabilities) -> bool);

/// One conformance check.
pub struct Case {
    /// Test name (oslo's functional test name where one exists).
    pub name: &'static str,
    /// The capability the case needs, if any (the runner skips the case without it).
    pub requires: Option<Requirement>,
    /// The check; panics on failure.
    pub run: fn(Transport) -> BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

impl Case {
    /// Why this case must be skipped on a driver with `capabilities`, if it must.
    pub fn skip_reason(&self, capabilities: &Capabilities) -> Option<String> {
        match self.requires {
            Some((name, check)) if !check(capabilities) => Some(format!("driver lacks capability `{name}`")),
            _ => None,
        }
    }
}

macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            requires: None,
            run: |t| $name(t).boxed(),
        }
    };
    ($name:ident, $cap:ident) => {
        Case {
            name: stringify!($name),
            requires: Some((stringify!($cap), |c: &Capabilities| c.$cap)),
            run: |t| $name(t).boxed(),
        }
    };
}

/// Every conformance case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(call_specific_server, server_targeting),
        case!(call_server_in_group),
        case!(cast_server_in_group),
        case!(cast_specific_server, server_targeting),
        case!(fanout_reaches_every_server_once, fanout),
        case!(fanout_after_servers_restart, fanout),
        case!(call_timeout),
        case!(call_exception),
        case!(endpoint_version_namespace),
        case!(no_such_method),
        case!(version_cap_rejects_newer),
        case!(ping_endpoint),
        case!(context_round_trip),
        case!(client_timeout_in_context, call_monitor),
        case!(values_survive_exactly),
        case!(payload_types),
        case!(payload_must_serialize),
        case!(casts_in_order),
        case!(call_different_exchanges),
        case!(monitor_long_call, call_monitor),
        case!(monitor_dead_server, call_monitor),
        case!(call_to_no_listener_fails_fast, detects_no_listener),
        case!(at_least_once_cast_to_no_listener_fails, detects_no_listener),
        case!(cast_does_not_wait_for_consumer),
        case!(late_reply_after_timeout_is_dropped_quietly),
        case!(server_stop_finishes_in_flight),
        case!(concurrent_calls),
        case!(notify_simple, notifications),
        case!(notify_store_and_forward, store_and_forward),
        case!(notify_pools, notification_pools),
        case!(notify_requeue, requeue),
        case!(notifier_listener_simple, notifications),
        case!(notifier_multiple_topics, notifications),
        case!(notifier_independent_topics, notifications),
        case!(notifier_all_priorities, notifications),
        case!(notifier_filter, notifications),
        case!(notifier_store_and_forward, store_and_forward),
        case!(notifier_listener_pools, notification_pools),
        case!(notifier_listener_requeue, requeue),
        case!(notifier_batch, notifications),
    ]
}

/// The robustness group: cases that wrap the transport's driver in a
/// [`FaultInjectingDriver`](crate::fault::FaultInjectingDriver) (delays, drops, duplicates,
/// disconnects) and check that nothing hangs, nothing is handled twice and errors are typed.
/// The `oslo-tests` runner reports them as `fault::<case>` over `fake://`.
pub fn robustness_cases() -> Vec<Case> {
    vec![
        case!(duplicated_requests_are_handled_once),
        case!(delayed_replies_arrive_within_timeout),
        case!(dropped_requests_end_in_timeout),
        case!(disconnect_errors_are_retryable_and_retry_succeeds),
        case!(disconnected_server_catches_up_without_loss),
    ]
}

/// Run every case against transports made by `make_transport`, returning the failures.
/// Convenient for drivers outside this workspace; the `oslo-tests` crate reports each case
/// separately instead.
pub async fn run_all<F>(make_transport: F) -> Vec<(String, String)>
where
    F: Fn(&str) -> Transport,
{
    let mut failures = Vec::new();
    for case in cases() {
        let transport = make_transport(case.name);
        if case.skip_reason(&transport.capabilities()).is_some() {
            continue;
        }
        if let Err(panic) = std::panic::AssertUnwindSafe((case.run)(transport)).catch_unwind().await {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push((case.name.to_string(), text));
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn topic() -> String {
    format!("conformance-{}", new_id())
}

fn ctxt() -> JsonMap {
    crate::context(json!({"request_id": "req-conformance", "user_id": "u-conf"}))
}

/// What one test server saw: the server name and every `record` argument.
#[derive(Clone, Default)]
struct Recorder {
    records: Arc<Mutex<Vec<Value>>>,
    calls: Arc<AtomicUsize>,
}

impl Recorder {
    fn values(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }
}

fn test_endpoint(name: &str, recorder: Recorder) -> Endpoint {
    let name = name.to_string();
    let whoami_name = name.clone();
    let calls = recorder.calls.clone();
    Endpoint::new()
        .with_target(Target::endpoint(None, Some("1.3")))
        .method("echo", |_c, args: JsonMap| async move {
            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
        })
        .method("whoami", move |_c, _a: Value| {
            let name = whoami_name.clone();
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(name)
            }
        })
        .method("record", move |_c, args: JsonMap| {
            let records = recorder.records.clone();
            async move {
                records.lock().unwrap().push(args.get("value").cloned().unwrap_or(Value::Null));
                Ok::<_, HandlerError>(())
            }
        })
        .method(
            "context",
            |c: JsonMap, _a: Value| async move { Ok::<_, HandlerError>(Value::Object(c)) },
        )
        .method("sleep", |_c, args: JsonMap| async move {
            let seconds = args.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok::<_, HandlerError>(seconds)
        })
        .method("fail", |_c, args: JsonMap| async move {
            let message = args.get("message").and_then(Value::as_str).unwrap_or("failed").to_string();
            Err::<(), _>(HandlerError::new("ValueError", message))
        })
}

async fn start_server(transport: &Transport, topic: &str, name: &str, recorder: Recorder) -> RpcServer {
    RpcServer::builder(transport.clone(), Target::new(topic).with_server(name))
        .endpoint(test_endpoint(name, recorder))
        .start()
        .await
        .expect("server starts")
}

/// A test server named `name` on `topic`, with the recorder it writes to.
async fn start_recorded(transport: &Transport, topic: &str, name: &str) -> (RpcServer, Recorder) {
    let recorder = Recorder::default();
    (start_server(transport, topic, name, recorder.clone()).await, recorder)
}

fn client(transport: &Transport, topic: &str) -> RpcClient {
    RpcClient::new(transport.clone(), Target::new(topic)).timeout(Duration::from_secs(10))
}

/// Wait until `check` holds, at most `limit`.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

// ---------------------------------------------------------------------------------------------
// RPC cases

/// A call with `server` set reaches that server only.
pub async fn call_specific_server(transport: Transport) {
    let topic = topic();
    let a = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let b = start_server(&transport, &topic, "server-b", Recorder::default()).await;
    let client = client(&transport, &topic);
    for _ in 0..6 {
        let who = client
            .prepare()
            .server("server-b")
            .call(&ctxt(), "whoami", json!({}))
            .await
            .expect("call");
        assert_eq!(who, json!("server-b"));
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Calls to a topic served by several servers are each answered exactly once.
pub async fn call_server_in_group(transport: Transport) {
    let topic = topic();
    let ((a, ra), (b, rb)) = (
        start_recorded(&transport, &topic, "server-a").await,
        start_recorded(&transport, &topic, "server-b").await,
    );
    let client = client(&transport, &topic);
    for _ in 0..20 {
        let who = client.call(&ctxt(), "whoami", json!({})).await.expect("call");
        assert!(who == json!("server-a") || who == json!("server-b"), "{who}");
    }
    // Give a duplicate delivery time to show up before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ra.calls.load(Ordering::SeqCst) + rb.calls.load(Ordering::SeqCst),
        20,
        "each call handled exactly once"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Casts to a topic served by several servers are each handled exactly once.
pub async fn cast_server_in_group(transport: Transport) {
    let topic = topic();
    let ((a, ra), (b, rb)) = (
        start_recorded(&transport, &topic, "server-a").await,
        start_recorded(&transport, &topic, "server-b").await,
    );
    let client = client(&transport, &topic);
    for i in 0..20 {
        client.cast(&ctxt(), "record", json!({"value": i})).await.expect("cast");
    }
    assert!(
        eventually(Duration::from_secs(10), || ra.values().len() + rb.values().len() >= 20).await,
        "casts handled"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut all: Vec<i64> = ra.values().into_iter().chain(rb.values()).filter_map(|v| v.as_i64()).collect();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "every cast exactly once");
    a.shutdown().await;
    b.shutdown().await;
}

/// A cast with `server` set reaches that server only.
pub async fn cast_specific_server(transport: Transport) {
    let topic = topic();
    let ((a, ra), (b, rb)) = (
        start_recorded(&transport, &topic, "server-a").await,
        start_recorded(&transport, &topic, "server-b").await,
    );
    let client = client(&transport, &topic);
    for i in 0..5 {
        client
            .prepare()
            .server("server-a")
            .cast(&ctxt(), "record", json!({"value": i}))
            .await
            .expect("cast");
    }
    assert!(eventually(Duration::from_secs(10), || ra.values().len() >= 5).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ra.values().len(), 5);
    assert!(rb.values().is_empty(), "server-b got {:?}", rb.values());
    a.shutdown().await;
    b.shutdown().await;
}

/// A fanout cast reaches every server of the topic exactly once.
pub async fn fanout_reaches_every_server_once(transport: Transport) {
    let topic = topic();
    let recorders: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let mut servers = Vec::new();
    for (i, recorder) in recorders.iter().enumerate() {
        servers.push(start_server(&transport, &topic, &format!("server-{i}"), recorder.clone()).await);
    }
    client(&transport, &topic)
        .prepare()
        .fanout(true)
        .cast(&ctxt(), "record", json!({"value": "hello"}))
        .await
        .expect("fanout");
    assert!(
        eventually(Duration::from_secs(10), || recorders.iter().all(|r| !r.values().is_empty())).await,
        "every server got it"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for recorder in &recorders {
        assert_eq!(recorder.values(), vec![json!("hello")]);
    }
    for server in servers {
        server.shutdown().await;
    }
}

/// Fanout keeps working after every server of the topic went away and a new one started
/// (on RabbitMQ the auto-delete fanout exchange is deleted and must be declared again).
pub async fn fanout_after_servers_restart(transport: Transport) {
    let topic = topic();
    let client = client(&transport, &topic).fanout(true);
    let first = Recorder::default();
    let server = start_server(&transport, &topic, "server-a", first.clone()).await;
    client.cast(&ctxt(), "record", json!({"value": 1})).await.expect("first fanout");
    assert!(
        eventually(Duration::from_secs(10), || first.values() == vec![json!(1)]).await,
        "first server got it"
    );
    server.shutdown().await;
    // Nobody listens now: the cast is dropped, but must not fail.
    client
        .cast(&ctxt(), "record", json!({"value": 0}))
        .await
        .expect("fanout with no server");
    let second = Recorder::default();
    let server = start_server(&transport, &topic, "server-b", second.clone()).await;
    for value in 2..5 {
        client
            .cast(&ctxt(), "record", json!({"value": value}))
            .await
            .expect("fanout after restart");
    }
    let sorted = || {
        let mut values: Vec<i64> = second.values().iter().filter_map(Value::as_i64).collect();
        values.sort();
        values
    };
    assert!(
        eventually(Duration::from_secs(10), || sorted() == vec![2, 3, 4]).await,
        "new server got {:?}",
        second.values()
    );
    server.shutdown().await;
}

/// A call whose reply does not come in time fails with `MessagingTimeout`, promptly.
pub async fn call_timeout(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let started = Instant::now();
    let err = client(&transport, &topic)
        .timeout(Duration::from_millis(500))
        .call(&ctxt(), "sleep", json!({"seconds": 2}))
        .await
        .expect_err("must time out");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1800), "took {:?}", started.elapsed());
    server.shutdown().await;
}

/// An endpoint failure comes back as a remote error with class, module and message.
pub async fn call_exception(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let err = client(&transport, &topic)
        .call(&ctxt(), "fail", json!({"message": "boom"}))
        .await
        .expect_err("must fail");
    let remote = err.as_remote().unwrap_or_else(|| panic!("not remote: {err}"));
    assert_eq!(remote.exc_type, "ValueError");
    assert_eq!(remote.module, "builtins");
    assert_eq!(remote.message, "boom");
    assert!(!remote.tb.is_empty(), "traceback present");
    // The server keeps serving.
    assert_eq!(
        client(&transport, &topic).call(&ctxt(), "whoami", json!({})).await.expect("call"),
        json!("server-a")
    );
    server.shutdown().await;
}

/// Namespace and version select the endpoint; mismatches are `UnsupportedVersion`.
pub async fn endpoint_version_namespace(transport: Transport) {
    let topic = topic();
    let control = Endpoint::new()
        .with_target(Target::endpoint(Some("control"), Some("1.1")))
        .method("ping", |_c, _a: Value| async { Ok::<_, HandlerError>("pong") });
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("server-a"))
        .endpoint(test_endpoint("server-a", Recorder::default()))
        .endpoint(control)
        .start()
        .await
        .expect("server");
    let client = client(&transport, &topic);
    assert_eq!(
        client
            .prepare()
            .namespace("control")
            .version("1.1")
            .call(&ctxt(), "ping", json!({}))
            .await
            .expect("1.1"),
        json!("pong")
    );
    assert_eq!(
        client
            .prepare()
            .namespace("control")
            .version("1.0")
            .call(&ctxt(), "ping", json!({}))
            .await
            .expect("1.0"),
        json!("pong")
    );
    let err = client
        .prepare()
        .namespace("control")
        .version("1.2")
        .call(&ctxt(), "ping", json!({}))
        .await
        .expect_err("1.2");
    assert!(
        matches!(&err, Error::UnsupportedVersion { version, method } if version == "1.2" && method == "ping"),
        "{err}"
    );
    let err = client
        .prepare()
        .namespace("control")
        .version("2.0")
        .call(&ctxt(), "ping", json!({}))
        .await
        .expect_err("2.0");
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    let err = client
        .prepare()
        .namespace("nope")
        .call(&ctxt(), "ping", json!({}))
        .await
        .expect_err("ns");
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    // Null namespace, version 1.2 <= 1.3.
    assert_eq!(
        client
            .prepare()
            .version("1.2")
            .call(&ctxt(), "whoami", json!({}))
            .await
            .expect("1.2"),
        json!("server-a")
    );
    server.shutdown().await;
}

/// An unknown method is `NoSuchMethod`; so is a private (`_`) one under the default policy.
pub async fn no_such_method(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let client = client(&transport, &topic);
    let err = client.call(&ctxt(), "does_not_exist", json!({})).await.expect_err("no method");
    assert!(
        matches!(&err, Error::NoSuchMethod { method } if method == "does_not_exist"),
        "{err}"
    );
    let err = client.call(&ctxt(), "_private", json!({})).await.expect_err("private");
    assert!(matches!(err, Error::NoSuchMethod { .. }), "{err}");
    server.shutdown().await;
}

/// The client refuses versions above its cap before sending anything.
pub async fn version_cap_rejects_newer(transport: Transport) {
    let topic = topic();
    let client = client(&transport, &topic).version_cap("1.2");
    assert!(client.can_send_version(Some("1.1")));
    assert!(!client.can_send_version(Some("1.3")));
    let err = client
        .prepare()
        .version("1.3")
        .cast(&ctxt(), "whoami", json!({}))
        .await
        .expect_err("cap");
    assert!(matches!(err, Error::RpcVersionCap { .. }), "{err}");
    // A capped client sending no version is refused too, as oslo does.
    let err = client.cast(&ctxt(), "whoami", json!({})).await.expect_err("no version");
    assert!(matches!(err, Error::RpcVersionCap { .. }), "{err}");
}

/// `oslo_rpc_server_ping` answers `pong` when enabled.
pub async fn ping_endpoint(transport: Transport) {
    let topic = topic();
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("server-a"))
        .ping_enabled(true)
        .start()
        .await
        .expect("server");
    assert_eq!(
        client(&transport, &topic)
            .call(&ctxt(), crate::PING_METHOD, json!({}))
            .await
            .expect("ping"),
        json!("pong")
    );
    server.shutdown().await;
}

/// The context reaches the endpoint key for key.
pub async fn context_round_trip(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let context = crate::context(json!({
        "user_id": "u1", "project_id": "p1", "request_id": "req-123", "roles": ["admin", "member"],
        "is_admin": true, "auth_token": null, "nested": {"a": [1, 2, {"b": "c"}]}, "unicode": "ünïcødé ✓"
    }));
    let got = client(&transport, &topic).call(&context, "context", json!({})).await.expect("call");
    // Plus `client_timeout` (null: no call monitor), as oslo's unpack_context adds it.
    let mut expected = context;
    expected.insert("client_timeout".into(), Value::Null);
    assert_eq!(got, Value::Object(expected));
    server.shutdown().await;
}

/// The endpoint's context carries the caller's call-monitor timeout as `client_timeout`
/// (oslo `_drivers/amqp.py::unpack_context`): as sent, null without a call monitor.
pub async fn client_timeout_in_context(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let client = client(&transport, &topic);
    let seen = |got: Value| got.get("client_timeout").cloned().expect("client_timeout in the context");
    for (monitor, expected) in [(Duration::from_secs(2), json!(2)), (Duration::from_millis(1500), json!(1.5))] {
        let got = client
            .clone()
            .call_monitor_timeout(monitor)
            .call(&ctxt(), "context", json!({}))
            .await
            .expect("call");
        assert_eq!(seen(got), expected, "call_monitor_timeout {monitor:?}");
    }
    let got = client.call(&ctxt(), "context", json!({})).await.expect("call");
    assert_eq!(seen(got), Value::Null, "no call monitor");
    server.shutdown().await;
}

/// Integers of any size and non-finite floats come back exactly, as between two Python
/// processes (`json.dumps` writes `NaN`, `Infinity`, `-Infinity` bare and keeps every digit).
pub async fn values_survive_exactly(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let client = client(&transport, &topic);
    let text = r#"[18446744073709551617, -9223372036854775809, 1000000000000000000000000000000000000000, NaN, Infinity, -Infinity, "NaN", 1e+16, -0.0, 0.1, [NaN, {"k": -Infinity}]]"#;
    let Value::Array(values) = crate::pyjson::from_str(text).expect("valid") else {
        unreachable!()
    };
    for value in values {
        // A JsonMap, not json!: json! cannot hold a NaN number.
        let mut args = JsonMap::new();
        args.insert("value".into(), value.clone());
        let got = client.call(&ctxt(), "echo", &args).await.expect("echo");
        assert_eq!(
            crate::pyjson::to_string(&got).unwrap(),
            crate::pyjson::to_string(&value).unwrap(),
            "round trip"
        );
        assert_eq!(got, value);
    }
    // Typed both ways: an f64 argument and result.
    #[derive(serde::Serialize)]
    struct Floats {
        value: Vec<f64>,
    }
    let got: Vec<f64> = client
        .call_as(
            &ctxt(),
            "echo",
            Floats {
                value: vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 2.5],
            },
        )
        .await
        .expect("echo floats");
    assert!(got[0].is_nan());
    assert_eq!(got[1..], [f64::INFINITY, f64::NEG_INFINITY, 2.5]);
    server.shutdown().await;
}

/// Every JSON type survives the round trip, up to a 1 MiB string.
pub async fn payload_types(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let client = client(&transport, &topic);
    let big = "x".repeat(1024 * 1024);
    let values = [
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(0),
        json!(1.5),
        json!(-2.25e-10),
        json!(1e300),
        json!("unicode ✓ 中文 😀 \u{0} \"quoted\" \\ back"),
        json!(true),
        json!(null),
        json!([1, "two", [3.0, {"four": 4}]]),
        json!({"nested": {"deep": {"deeper": [null, false]}}}),
        json!({}),
        json!([]),
        json!(big),
    ];
    for value in values {
        let got = client.call(&ctxt(), "echo", json!({"value": value})).await.expect("echo");
        assert_eq!(got, value, "round trip");
    }
    server.shutdown().await;
}

/// Arguments that are not a JSON object of keyword arguments fail at send time.
pub async fn payload_must_serialize(transport: Transport) {
    let topic = topic();
    let client = client(&transport, &topic);
    let err = client.cast(&ctxt(), "record", json!([1, 2])).await.expect_err("list args");
    assert!(matches!(err, Error::Serialization(_)), "{err}");
    let mut bad = std::collections::BTreeMap::new();
    bad.insert((1, 2), "tuple keys are not JSON");
    let err = client.cast(&ctxt(), "record", bad).await.expect_err("non-string keys");
    assert!(matches!(err, Error::Serialization(_)), "{err}");
}

/// Casts from one client to one server (handled one at a time) arrive in order.
pub async fn casts_in_order(transport: Transport) {
    let topic = topic();
    let recorder = Recorder::default();
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("server-a"))
        .endpoint(test_endpoint("server-a", recorder.clone()))
        .executor_pool_size(1)
        .start()
        .await
        .expect("server");
    let client = client(&transport, &topic);
    for i in 0..50 {
        client.cast(&ctxt(), "record", json!({"value": i})).await.expect("cast");
    }
    assert!(eventually(Duration::from_secs(10), || recorder.values().len() >= 50).await);
    let got: Vec<i64> = recorder.values().into_iter().filter_map(|v| v.as_i64()).collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    server.shutdown().await;
}

/// Exchanges scope topics: a server on exchange A does not get messages sent on exchange B.
pub async fn call_different_exchanges(transport: Transport) {
    let topic = topic();
    // Fixed names: exchanges are never deleted (as in oslo), so reuse two.
    let exchange_a = "conformance-exchange-a";
    let exchange_b = "conformance-exchange-b";
    let server = RpcServer::builder(
        transport.clone(),
        Target::new(&topic).with_server("server-a").with_exchange(exchange_a),
    )
    .endpoint(test_endpoint("server-a", Recorder::default()))
    .start()
    .await
    .expect("server");
    let client = client(&transport, &topic);
    assert_eq!(
        client
            .prepare()
            .exchange(exchange_a)
            .call(&ctxt(), "whoami", json!({}))
            .await
            .expect("A"),
        json!("server-a")
    );
    let err = client
        .prepare()
        .exchange(exchange_b)
        .timeout(Duration::from_millis(500))
        .call(&ctxt(), "whoami", json!({}))
        .await
        .expect_err("B has no server");
    assert!(
        matches!(err, Error::MessagingTimeout { .. } | Error::MessageUndeliverable { .. }),
        "{err}"
    );
    server.shutdown().await;
}

/// Call-monitor heartbeats keep a call alive longer than the monitor timeout.
pub async fn monitor_long_call(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let got = client(&transport, &topic)
        .timeout(Duration::from_secs(20))
        .call_monitor_timeout(Duration::from_secs(2))
        .call(&ctxt(), "sleep", json!({"seconds": 4.5}))
        .await
        .expect("heartbeats keep the call alive");
    assert_eq!(got, json!(4.5));
    server.shutdown().await;
}

/// A server that took the call but went silent fails the call after the monitor timeout,
/// well before the overall timeout.
pub async fn monitor_dead_server(transport: Transport) {
    let topic = topic();
    // A listener that takes requests and never answers nor heartbeats: a hung server.
    let mut listener = transport
        .driver()
        .listen(&Target::new(&topic).with_server("dead"))
        .await
        .expect("listen");
    let (done, mut finish) = tokio::sync::oneshot::channel::<()>();
    let swallow = tokio::spawn(async move {
        let mut taken = Vec::new();
        loop {
            tokio::select! {
                _ = &mut finish => break,
                message = listener.next() => match message {
                    Some(message) => {
                        let _ = message.acknowledge().await;
                        taken.push(message);
                    }
                    None => break,
                },
            }
        }
        listener.stop().await;
        listener.cleanup().await;
    });
    let started = Instant::now();
    let err = client(&transport, &topic)
        .timeout(Duration::from_secs(30))
        .call_monitor_timeout(Duration::from_secs(2))
        .call(&ctxt(), "sleep", json!({"seconds": 1}))
        .await
        .expect_err("dead server");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(6),
        "took {elapsed:?}"
    );
    let _ = done.send(());
    swallow.await.expect("listener task");
}

/// A call to a topic nobody listens on fails fast with `MessageUndeliverable`.
pub async fn call_to_no_listener_fails_fast(transport: Transport) {
    let started = Instant::now();
    let err = client(&transport, &topic())
        .timeout(Duration::from_secs(30))
        .call(&ctxt(), "whoami", json!({}))
        .await
        .expect_err("nobody");
    assert!(matches!(err, Error::MessageUndeliverable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// An `at_least_once` cast to a topic nobody listens on is reported, not dropped.
pub async fn at_least_once_cast_to_no_listener_fails(transport: Transport) {
    let err = client(&transport, &topic())
        .at_least_once(true)
        .cast(&ctxt(), "record", json!({}))
        .await
        .expect_err("nobody");
    assert!(matches!(err, Error::MessageUndeliverable { .. }), "{err}");
}

/// A plain cast returns without any consumer (fire and forget).
pub async fn cast_does_not_wait_for_consumer(transport: Transport) {
    let started = Instant::now();
    client(&transport, &topic())
        .cast(&ctxt(), "record", json!({"value": 1}))
        .await
        .expect("cast without consumer");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A reply that arrives after its call timed out is dropped; the next call gets its own reply.
pub async fn late_reply_after_timeout_is_dropped_quietly(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let client = client(&transport, &topic);
    let err = client
        .prepare()
        .timeout(Duration::from_millis(300))
        .call(&ctxt(), "sleep", json!({"seconds": 0.8}))
        .await
        .expect_err("late");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await; // the late reply arrives now
    assert_eq!(
        client.call(&ctxt(), "echo", json!({"value": "fresh"})).await.expect("next call"),
        json!("fresh")
    );
    server.shutdown().await;
}

/// Stopping a server lets the calls it already took finish and reply.
pub async fn server_stop_finishes_in_flight(transport: Transport) {
    let topic = topic();
    let server = Arc::new(start_server(&transport, &topic, "server-a", Recorder::default()).await);
    let client = client(&transport, &topic);
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call(&ctxt(), "sleep", json!({"seconds": 1})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the server has taken the call
    server.stop().await;
    server.wait().await;
    assert_eq!(call.await.expect("join").expect("in-flight call finished"), json!(1.0));
}

/// Many calls in flight on one client are each answered with their own result.
pub async fn concurrent_calls(transport: Transport) {
    let topic = topic();
    let server = start_server(&transport, &topic, "server-a", Recorder::default()).await;
    let client = client(&transport, &topic);
    let calls = (0..64).map(|i| {
        let client = client.clone();
        async move { (i, client.call(&ctxt(), "echo", json!({"value": i})).await) }
    });
    for (i, result) in futures::future::join_all(calls).await {
        assert_eq!(result.expect("call"), json!(i));
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Notification cases (driver level; the Notifier API builds on these)

fn notification(event_type: &str, n: i64) -> JsonMap {
    crate::context(json!({
        "message_id": uuid::Uuid::new_v4().to_string(), "publisher_id": "conformance.host",
        "event_type": event_type, "priority": "INFO", "payload": {"n": n},
        "timestamp": "2026-11-25 12:00:00.000000"
    }))
}

async fn notify(transport: &Transport, topic: &str, priority: &str, message: &JsonMap) {
    let target = Target::new(format!("{topic}.{priority}"));
    transport
        .driver()
        .send_notification(&target, &ctxt(), message, true, Retry::Limited(3))
        .await
        .expect("notify");
}

async fn next_payload(listener: &mut Box<dyn crate::Listener>) -> Value {
    let message = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("notification in time")
        .expect("listener open");
    message.acknowledge().await.expect("ack");
    message.message()["payload"]["n"].clone()
}

/// A notification reaches a listener with its fields and context intact.
pub async fn notify_simple(transport: Transport) {
    let topic = topic();
    let mut listener = transport
        .driver()
        .listen_for_notifications(&[(Target::new(&topic), "info".into())], None)
        .await
        .expect("listen");
    let sent = notification("conformance.simple", 7);
    notify(&transport, &topic, "info", &sent).await;
    let message = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("in time")
        .expect("open");
    for key in ["message_id", "publisher_id", "event_type", "priority", "payload", "timestamp"] {
        assert_eq!(message.message()[key], sent[key], "{key}");
    }
    assert_eq!(message.context()["request_id"], json!("req-conformance"));
    message.acknowledge().await.expect("ack");
    listener.cleanup().await;
}

/// Notifications sent before any listener started are delivered once one starts.
pub async fn notify_store_and_forward(transport: Transport) {
    let topic = topic();
    for n in 0..3 {
        notify(&transport, &topic, "info", &notification("conformance.saf", n)).await;
    }
    let mut listener = transport
        .driver()
        .listen_for_notifications(&[(Target::new(&topic), "info".into())], None)
        .await
        .expect("listen");
    for n in 0..3 {
        assert_eq!(next_payload(&mut listener).await, json!(n));
    }
    listener.cleanup().await;
}

/// Each pool gets every notification once; listeners in one pool share them.
pub async fn notify_pools(transport: Transport) {
    let topic = topic();
    let pool_a = format!("{topic}-pool-a");
    let pool_b = format!("{topic}-pool-b");
    let targets = [(Target::new(&topic), "info".to_string())];
    let mut a1 = transport
        .driver()
        .listen_for_notifications(&targets, Some(&pool_a))
        .await
        .expect("a1");
    let mut a2 = transport
        .driver()
        .listen_for_notifications(&targets, Some(&pool_a))
        .await
        .expect("a2");
    let mut b = transport
        .driver()
        .listen_for_notifications(&targets, Some(&pool_b))
        .await
        .expect("b");
    for n in 0..10 {
        notify(&transport, &topic, "info", &notification("conformance.pools", n)).await;
    }
    let mut got_b = Vec::new();
    for _ in 0..10 {
        got_b.push(next_payload(&mut b).await.as_i64().unwrap());
    }
    assert_eq!(got_b, (0..10).collect::<Vec<_>>(), "pool b gets everything");
    // Pool a's two listeners share the ten between them.
    let mut got_a = Vec::new();
    while got_a.len() < 10 {
        tokio::select! {
            Some(m) = a1.next() => { m.acknowledge().await.unwrap(); got_a.push(m.message()["payload"]["n"].as_i64().unwrap()); }
            Some(m) = a2.next() => { m.acknowledge().await.unwrap(); got_a.push(m.message()["payload"]["n"].as_i64().unwrap()); }
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("pool a got only {got_a:?}"),
        }
    }
    got_a.sort();
    assert_eq!(got_a, (0..10).collect::<Vec<_>>(), "pool a gets each once");
    for mut listener in [a1, a2, b] {
        listener.cleanup().await;
    }
}

/// A requeued notification is delivered again.
pub async fn notify_requeue(transport: Transport) {
    let topic = topic();
    let mut listener = transport
        .driver()
        .listen_for_notifications(&[(Target::new(&topic), "info".into())], None)
        .await
        .expect("listen");
    notify(&transport, &topic, "info", &notification("conformance.requeue", 42)).await;
    let first = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("in time")
        .expect("open");
    first.requeue().await.expect("requeue");
    assert_eq!(next_payload(&mut listener).await, json!(42));
    listener.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Notifier / NotificationListener cases (oslo's functional notify tests)

use crate::notify::{Notification, NotificationEndpoint, NotificationFilter, NotificationListener, NotificationResult, Notifier, Priority};

/// Collects what a listener endpoint received.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Notification>>>);

impl Inbox {
    fn all(&self) -> Vec<Notification> {
        self.0.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn endpoint(&self, priorities: &[Priority]) -> NotificationEndpoint {
        let mut endpoint = NotificationEndpoint::new();
        for priority in priorities {
            let inbox = self.clone();
            endpoint = endpoint.on(*priority, move |n| {
                let inbox = inbox.clone();
                async move {
                    inbox.0.lock().unwrap().push(n);
                    NotificationResult::Handled
                }
            });
        }
        endpoint
    }
}

async fn start_listener(
    transport: &Transport,
    topics: &[&str],
    endpoint: NotificationEndpoint,
    pool: Option<&str>,
) -> NotificationListener {
    let mut builder = NotificationListener::builder(transport.clone(), topics.iter().map(|t| Target::new(*t)).collect()).endpoint(endpoint);
    if let Some(pool) = pool {
        builder = builder.pool(pool);
    }
    builder.start().await.expect("listener starts")
}

fn notifier(transport: &Transport, topics: &[&str]) -> Notifier {
    Notifier::new(transport.clone())
        .publisher_id("conformance.host1")
        .topics(topics.iter().copied())
        .retry(Retry::Limited(3))
}

/// A notification reaches the listener with every field, and the context redacted.
pub async fn notifier_listener_simple(transport: Transport) {
    let topic = topic();
    let inbox = Inbox::default();
    let listener = start_listener(&transport, &[&topic], inbox.endpoint(&[Priority::Info]), None).await;
    let context = crate::context(json!({"user_id": "u1", "auth_token": "SECRET-TOKEN", "request_id": "req-n"}));
    notifier(&transport, &[&topic])
        .info(&context, "conformance.created", json!({"id": 7, "name": "ünï"}))
        .await
        .expect("notify");
    assert!(eventually(Duration::from_secs(10), || inbox.len() == 1).await, "received");
    let got = &inbox.all()[0];
    assert_eq!(got.publisher_id, "conformance.host1");
    assert_eq!(got.event_type, "conformance.created");
    assert_eq!(got.priority, Priority::Info);
    assert_eq!(got.payload, json!({"id": 7, "name": "ünï"}));
    assert_eq!(got.metadata.message_id.len(), 36, "dashed uuid: {}", got.metadata.message_id);
    assert!(got.metadata.timestamp.len() >= 19, "{}", got.metadata.timestamp);
    assert_eq!(got.context["user_id"], json!("u1"));
    assert!(got.context["auth_token"].is_null(), "secrets are redacted: {:?}", got.context);
    listener.shutdown().await;
}

/// A notifier with two topics reaches listeners of each.
pub async fn notifier_multiple_topics(transport: Transport) {
    let (a, b) = (topic(), topic());
    let (inbox_a, inbox_b) = (Inbox::default(), Inbox::default());
    let la = start_listener(&transport, &[&a], inbox_a.endpoint(&[Priority::Warn]), None).await;
    let lb = start_listener(&transport, &[&b], inbox_b.endpoint(&[Priority::Warn]), None).await;
    notifier(&transport, &[&a, &b])
        .warn(&ctxt(), "conformance.both", json!({}))
        .await
        .expect("notify");
    assert!(eventually(Duration::from_secs(10), || inbox_a.len() == 1 && inbox_b.len() == 1).await);
    la.shutdown().await;
    lb.shutdown().await;
}

/// Listeners see only their own topics.
pub async fn notifier_independent_topics(transport: Transport) {
    let (a, b) = (topic(), topic());
    let (inbox_a, inbox_b) = (Inbox::default(), Inbox::default());
    let la = start_listener(&transport, &[&a], inbox_a.endpoint(&[Priority::Info]), None).await;
    let lb = start_listener(&transport, &[&b], inbox_b.endpoint(&[Priority::Info]), None).await;
    notifier(&transport, &[&a])
        .info(&ctxt(), "only.a", json!({"n": 1}))
        .await
        .expect("a");
    notifier(&transport, &[&b])
        .info(&ctxt(), "only.b", json!({"n": 2}))
        .await
        .expect("b");
    assert!(eventually(Duration::from_secs(10), || inbox_a.len() == 1 && inbox_b.len() == 1).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(inbox_a.all()[0].event_type, "only.a");
    assert_eq!(inbox_b.all()[0].event_type, "only.b");
    assert_eq!((inbox_a.len(), inbox_b.len()), (1, 1));
    la.shutdown().await;
    lb.shutdown().await;
}

/// Every priority arrives, and reports itself.
pub async fn notifier_all_priorities(transport: Transport) {
    let topic = topic();
    let inbox = Inbox::default();
    let listener = start_listener(&transport, &[&topic], inbox.endpoint(&Priority::ALL), None).await;
    let n = notifier(&transport, &[&topic]);
    n.audit(&ctxt(), "e", json!({})).await.unwrap();
    n.debug(&ctxt(), "e", json!({})).await.unwrap();
    n.info(&ctxt(), "e", json!({})).await.unwrap();
    n.warn(&ctxt(), "e", json!({})).await.unwrap();
    n.error(&ctxt(), "e", json!({})).await.unwrap();
    n.critical(&ctxt(), "e", json!({})).await.unwrap();
    n.sample(&ctxt(), "e", json!({})).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || inbox.len() == 7).await,
        "got {}",
        inbox.len()
    );
    let mut seen: Vec<Priority> = inbox.all().iter().map(|n| n.priority).collect();
    seen.sort();
    assert_eq!(seen, Priority::ALL.to_vec());
    listener.shutdown().await;
}

/// A filter keeps out what it does not match.
pub async fn notifier_filter(transport: Transport) {
    let topic = topic();
    let inbox = Inbox::default();
    let endpoint = inbox
        .endpoint(&[Priority::Info])
        .filter(NotificationFilter::new().event_type(r"keep\.").unwrap());
    let listener = start_listener(&transport, &[&topic], endpoint, None).await;
    let n = notifier(&transport, &[&topic]);
    n.info(&ctxt(), "drop.me", json!({})).await.unwrap();
    n.info(&ctxt(), "keep.me", json!({})).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || inbox.len() == 1).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        inbox.all().iter().map(|n| n.event_type.as_str()).collect::<Vec<_>>(),
        vec!["keep.me"]
    );
    listener.shutdown().await;
}

/// Notifications sent before the listener started are delivered when it starts.
pub async fn notifier_store_and_forward(transport: Transport) {
    let topic = topic();
    let n = notifier(&transport, &[&topic]);
    for i in 0..3 {
        n.info(&ctxt(), "saf", json!({"i": i})).await.unwrap();
    }
    let inbox = Inbox::default();
    let listener = start_listener(&transport, &[&topic], inbox.endpoint(&[Priority::Info]), None).await;
    assert!(
        eventually(Duration::from_secs(10), || inbox.len() == 3).await,
        "got {}",
        inbox.len()
    );
    listener.shutdown().await;
}

/// Two pools each get every notification; the two listeners of one pool share them.
pub async fn notifier_listener_pools(transport: Transport) {
    let topic = topic();
    let (pool_a, pool_b) = (format!("{topic}-a"), format!("{topic}-b"));
    let (a1, a2, b) = (Inbox::default(), Inbox::default(), Inbox::default());
    let la1 = start_listener(&transport, &[&topic], a1.endpoint(&[Priority::Info]), Some(&pool_a)).await;
    let la2 = start_listener(&transport, &[&topic], a2.endpoint(&[Priority::Info]), Some(&pool_a)).await;
    let lb = start_listener(&transport, &[&topic], b.endpoint(&[Priority::Info]), Some(&pool_b)).await;
    let n = notifier(&transport, &[&topic]);
    for i in 0..10 {
        n.info(&ctxt(), "pooled", json!({"i": i})).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || b.len() == 10 && a1.len() + a2.len() == 10).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((b.len(), a1.len() + a2.len()), (10, 10), "each pool once");
    for l in [la1, la2, lb] {
        l.shutdown().await;
    }
}

/// With `allow_requeue`, a `Requeue` result delivers the notification again.
pub async fn notifier_listener_requeue(transport: Transport) {
    let topic = topic();
    let attempts = Arc::new(AtomicUsize::new(0));
    let endpoint = NotificationEndpoint::new().on(Priority::Info, {
        let attempts = attempts.clone();
        move |_n| {
            let attempts = attempts.clone();
            async move {
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    NotificationResult::Requeue
                } else {
                    NotificationResult::Handled
                }
            }
        }
    });
    let listener = NotificationListener::builder(transport.clone(), vec![Target::new(&topic)])
        .endpoint(endpoint)
        .allow_requeue(true)
        .start()
        .await
        .expect("listener");
    notifier(&transport, &[&topic]).info(&ctxt(), "again", json!({})).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || attempts.load(Ordering::SeqCst) >= 2).await,
        "redelivered"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "handled once after the requeue");
    listener.shutdown().await;
}

/// A batch listener gets the notifications in batches of at most `batch_size`.
pub async fn notifier_batch(transport: Transport) {
    let topic = topic();
    let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
    let endpoint = NotificationEndpoint::new().on_batch(Priority::Info, {
        let batches = batches.clone();
        move |batch| {
            let batches = batches.clone();
            async move {
                batches.lock().unwrap().push(batch.len());
                NotificationResult::Handled
            }
        }
    });
    let n = notifier(&transport, &[&topic]);
    let mut builder = Some(
        NotificationListener::builder(transport.clone(), vec![Target::new(&topic)])
            .endpoint(endpoint)
            .batch(5, Duration::from_millis(500)),
    );
    // Queue them first so that full batches are available at once; a driver without
    // store-and-forward would drop them, so there the listener starts first.
    let mut listener = None;
    if !transport.capabilities().store_and_forward {
        listener = Some(builder.take().unwrap().start().await.expect("listener"));
    }
    for i in 0..12 {
        n.info(&ctxt(), "batched", json!({"i": i})).await.unwrap();
    }
    let listener = match listener {
        Some(listener) => listener,
        None => builder.take().unwrap().start().await.expect("listener"),
    };
    assert!(eventually(Duration::from_secs(10), || batches.lock().unwrap().iter().sum::<usize>() == 12).await);
    let sizes = batches.lock().unwrap().clone();
    assert!(sizes.iter().all(|s| *s <= 5), "{sizes:?}");
    assert!(sizes.iter().any(|s| *s > 1), "batched: {sizes:?}");
    listener.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Robustness cases (run through the fault-injection wrapper)

use crate::fault::{FaultConfig, FaultInjectingDriver};

fn faulty(transport: &Transport, config: FaultConfig) -> (FaultInjectingDriver, Transport) {
    let faults = FaultInjectingDriver::new(transport.driver().clone(), config);
    let wrapped = faults.transport(transport);
    (faults, wrapped)
}

/// Every request delivered twice (as after a reconnect) is still handled once: the copy is
/// dropped by its `_unique_id`.
pub async fn duplicated_requests_are_handled_once(transport: Transport) {
    let topic = topic();
    let (faults, server_transport) = faulty(&transport, FaultConfig::new().seed(11).duplicate_probability(1.0));
    let (server, recorder) = start_recorded(&server_transport, &topic, "server-a").await;
    let client = client(&transport, &topic);
    for i in 0..10 {
        client.cast(&ctxt(), "record", json!({"value": i})).await.expect("cast");
    }
    for _ in 0..5 {
        assert_eq!(client.call(&ctxt(), "whoami", json!({})).await.expect("call"), json!("server-a"));
    }
    assert!(
        eventually(Duration::from_secs(10), || recorder.values().len() >= 10).await,
        "casts handled"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // room for a second handling to show
    let mut values: Vec<i64> = recorder.values().iter().filter_map(Value::as_i64).collect();
    values.sort();
    assert_eq!(values, (0..10).collect::<Vec<_>>(), "each cast handled exactly once");
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 5, "each call handled exactly once");
    assert_eq!(faults.stats().duplicated, 15, "every request was delivered twice");
    server.shutdown().await;
}

/// Slow sends, deliveries and replies still answer within the timeout; a timeout shorter
/// than the delays ends in `MessagingTimeout` on time, not later.
pub async fn delayed_replies_arrive_within_timeout(transport: Transport) {
    let topic = topic();
    let delay = Duration::from_millis(150);
    let (server_faults, server_transport) = faulty(
        &transport,
        FaultConfig::new().seed(12).delay(delay).jitter(Duration::from_millis(100)),
    );
    let (client_faults, client_transport) = faulty(&transport, FaultConfig::new().seed(13).send_delay(delay));
    let server = start_server(&server_transport, &topic, "server-a", Recorder::default()).await;
    let client = RpcClient::new(client_transport, Target::new(&topic)).timeout(Duration::from_secs(10));
    let calls = (0..8).map(|i| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let result = client.call(&ctxt(), "echo", json!({"value": i})).await;
            (i, result, started.elapsed())
        }
    });
    for (i, result, elapsed) in futures::future::join_all(calls).await {
        assert_eq!(result.expect("delayed call"), json!(i));
        // Send, delivery and reply were each held back at least `delay`.
        assert!(elapsed >= delay * 3, "call {i} took only {elapsed:?}");
    }
    assert!(server_faults.stats().delayed >= 16, "{:?}", server_faults.stats());
    assert_eq!(client_faults.stats().delayed, 8);

    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = client
        .prepare()
        .timeout(timeout)
        .call(&ctxt(), "echo", json!({"value": "late"}))
        .await
        .expect_err("the delays exceed the timeout");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(1),
        "timed out after {elapsed:?}"
    );
    server.shutdown().await;
}

/// A lost request or a lost reply ends the call in `MessagingTimeout` at its timeout, never
/// a hang; on a lossy link every call either answers or times out.
pub async fn dropped_requests_end_in_timeout(transport: Transport) {
    let timeout = Duration::from_millis(300);
    let bounded = |elapsed: Duration| elapsed >= timeout && elapsed < timeout + Duration::from_secs(2);

    // Every request lost.
    let topic_a = topic();
    let (faults, server_transport) = faulty(&transport, FaultConfig::new().seed(14).drop_probability(1.0));
    let (server, recorder) = start_recorded(&server_transport, &topic_a, "server-a").await;
    let started = Instant::now();
    let err = client(&transport, &topic_a)
        .timeout(timeout)
        .call(&ctxt(), "whoami", json!({}))
        .await
        .expect_err("request lost");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert!(bounded(started.elapsed()), "timed out after {:?}", started.elapsed());
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 0);
    assert_eq!(faults.stats().dropped, 1);
    server.shutdown().await;

    // Every reply lost: the endpoint ran, the caller still times out on time.
    let topic_b = topic();
    let (faults, server_transport) = faulty(&transport, FaultConfig::new().seed(15).drop_reply_probability(1.0));
    let (server, recorder) = start_recorded(&server_transport, &topic_b, "server-b").await;
    let started = Instant::now();
    let err = client(&transport, &topic_b)
        .timeout(timeout)
        .call(&ctxt(), "whoami", json!({}))
        .await
        .expect_err("reply lost");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert!(bounded(started.elapsed()), "timed out after {:?}", started.elapsed());
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 1);
    assert_eq!(faults.stats().replies_dropped, 1);
    server.shutdown().await;

    // A lossy link: one timeout per lost request, every other call answered.
    let topic_c = topic();
    let (faults, server_transport) = faulty(&transport, FaultConfig::new().seed(16).drop_probability(0.3));
    let server = start_server(&server_transport, &topic_c, "server-c", Recorder::default()).await;
    let client = client(&transport, &topic_c).timeout(timeout);
    let (mut answered, mut timed_out) = (0u64, 0u64);
    for i in 0..20 {
        match client.call(&ctxt(), "echo", json!({"value": i})).await {
            Ok(value) => {
                assert_eq!(value, json!(i));
                answered += 1;
            }
            Err(Error::MessagingTimeout { .. }) => timed_out += 1,
            Err(other) => panic!("call {i}: unexpected error {other}"),
        }
    }
    assert_eq!(timed_out, faults.stats().dropped, "one timeout per lost request");
    assert!(answered > 0 && timed_out > 0, "seed 16 loses some but not all: {answered} answered");
    server.shutdown().await;
}

/// While the connection is down a send fails with a typed, retryable error once its retry
/// budget is spent (sends with retries left wait for the link); retrying later succeeds and
/// the failed attempt is never delivered.
pub async fn disconnect_errors_are_retryable_and_retry_succeeds(transport: Transport) {
    let topic = topic();
    let (server, recorder) = start_recorded(&transport, &topic, "server-a").await;
    let window = Duration::from_millis(400);
    let (faults, client_transport) = faulty(&transport, FaultConfig::new().seed(17).disconnect_after(3).disconnect_for(window));
    let client = RpcClient::new(client_transport, Target::new(&topic))
        .timeout(Duration::from_secs(10))
        .retry(Retry::Limited(0));
    for i in 0..3 {
        client.cast(&ctxt(), "record", json!({"value": i})).await.expect("before the break");
    }
    let started = Instant::now();
    let err = client
        .cast(&ctxt(), "record", json!({"value": 3}))
        .await
        .expect_err("connection lost");
    assert!(matches!(err, Error::Transport { .. }), "typed: {err}");
    assert!(err.is_retryable(), "retryable: {err}");
    assert!(started.elapsed() < Duration::from_secs(1), "failed fast, no hang");

    // The application retries with a backoff until the link is back.
    let mut attempts = 1;
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.cast(&ctxt(), "record", json!({"value": 3})).await {
            Ok(()) => break,
            Err(err) if err.is_retryable() && started.elapsed() < Duration::from_secs(5) => {
                attempts += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
            }
            Err(err) => panic!("retry did not succeed: {err}"),
        }
    }
    assert!(attempts >= 2, "the first retries hit the outage");
    assert!(started.elapsed() >= window - Duration::from_millis(50), "{:?}", started.elapsed());

    // A send with retries left rides out a short outage by itself.
    faults.disconnect_for(Duration::from_millis(200));
    let value = client
        .prepare()
        .retry(Retry::Limited(100))
        .call(&ctxt(), "echo", json!({"value": "after"}))
        .await
        .expect("retried by the driver");
    assert_eq!(value, json!("after"));

    assert!(
        eventually(Duration::from_secs(10), || recorder.values().len() >= 4).await,
        "casts handled"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut values: Vec<i64> = recorder.values().iter().filter_map(Value::as_i64).collect();
    values.sort();
    assert_eq!(values, vec![0, 1, 2, 3], "failed attempts were never delivered");
    assert!(faults.stats().sends_failed >= 2, "{:?}", faults.stats());
    server.shutdown().await;
}

/// A server whose connection is down takes nothing; once it is back it handles every
/// message sent meanwhile, each once.
pub async fn disconnected_server_catches_up_without_loss(transport: Transport) {
    let topic = topic();
    let (faults, server_transport) = faulty(&transport, FaultConfig::new().seed(18));
    let (server, recorder) = start_recorded(&server_transport, &topic, "server-a").await;
    faults.disconnect();
    let client = client(&transport, &topic);
    for i in 0..5 {
        client.cast(&ctxt(), "record", json!({"value": i})).await.expect("cast");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(recorder.values().is_empty(), "handled while disconnected: {:?}", recorder.values());
    faults.reconnect();
    assert!(
        eventually(Duration::from_secs(10), || recorder.values().len() >= 5).await,
        "caught up"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut values: Vec<i64> = recorder.values().iter().filter_map(Value::as_i64).collect();
    values.sort();
    assert_eq!(values, (0..5).collect::<Vec<_>>(), "each once");
    server.shutdown().await;
}
