//! Notification interop with real Python oslo.messaging 18.3.1 on RabbitMQ, both ways.
//!
//! Needs `OSLO_TEST_RABBIT_URL` and the virtualenv from `bash interop/setup-venv.sh`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oslo_messaging::{
    context, get_transport, Notification, NotificationEndpoint, NotificationListener, NotificationResult, Notifier, NotifierDriver,
    Priority, Target, Transport,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop")
}

/// The broker URL and the venv python, or `None` to skip (never in CI: see `oslo_tests`).
fn setup() -> Option<(String, PathBuf)> {
    let url = oslo_tests::broker_url("rabbit", "OSLO_TEST_RABBIT_URL")?;
    let python = interop_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash interop/setup-venv.sh` first",
        python.display()
    );
    Some((url, python))
}

fn topic() -> String {
    format!("interop-notify-{}", uuid::Uuid::new_v4().simple())
}

fn python(python: &PathBuf, args: &[&str]) -> Command {
    let mut command = Command::new(python);
    command.arg(interop_dir().join("py_notify.py")).args(args).kill_on_drop(true);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    command
}

/// A Python listener that has printed READY.
struct PyListener {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyListener {
    async fn start(py: &PathBuf, url: &str, topic: &str, pool: Option<&str>, count: usize) -> Self {
        let count = count.to_string();
        let mut args = vec!["listen", "--url", url, "--topic", topic, "--count", &count, "--timeout", "60"];
        if let Some(pool) = pool {
            args.extend(["--pool", pool]);
        }
        let mut child = python(py, &args).spawn().expect("spawn python listener");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("READY in time")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("READY"));
        PyListener { _child: child, lines }
    }

    /// Notifications printed until `count` arrived or `limit` passed.
    async fn received(&mut self, count: usize, limit: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = Instant::now() + limit;
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let value: Value = serde_json::from_str(&line).expect("JSON line");
                    if value.get("done").is_none() {
                        out.push(value);
                    }
                }
                _ => break,
            }
        }
        out
    }
}

async fn py_send(py: &PathBuf, url: &str, topic: &str, extra: &[&str]) {
    let mut args = vec!["send", "--url", url, "--topic", topic];
    args.extend_from_slice(extra);
    let output = python(py, &args).stdin(Stdio::null()).output().await.expect("run python notifier");
    assert!(
        output.status.success(),
        "python notifier failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Notification>>>);

impl Inbox {
    fn endpoint(&self) -> NotificationEndpoint {
        let mut endpoint = NotificationEndpoint::new();
        for priority in Priority::ALL {
            let inbox = self.clone();
            endpoint = endpoint.on(priority, move |n| {
                let inbox = inbox.clone();
                async move {
                    inbox.0.lock().unwrap().push(n);
                    NotificationResult::Handled
                }
            });
        }
        endpoint
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Notification> {
        let deadline = Instant::now() + limit;
        while self.len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.0.lock().unwrap().clone()
    }
}

async fn rust_listener(transport: &Transport, topic: &str, pool: Option<&str>, inbox: &Inbox) -> NotificationListener {
    let mut builder = NotificationListener::builder(transport.clone(), vec![Target::new(topic)]).endpoint(inbox.endpoint());
    if let Some(pool) = pool {
        builder = builder.pool(pool);
    }
    builder.start().await.expect("rust listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn python_notifier_to_rust_listener_keeps_every_field() {
    let Some((url, py)) = setup() else { return };
    let transport = get_transport(&url).unwrap();
    let topic = topic();
    let inbox = Inbox::default();
    let listener = rust_listener(&transport, &topic, None, &inbox).await;
    py_send(
        &py,
        &url,
        &topic,
        &[
            "--publisher",
            "compute.py-host",
            "--event",
            "compute.instance.create.end",
            "--priority",
            "error",
            "--payload",
            r#"{"name": "vm ✓ 😀", "n": 9007199254740993, "f": 0.1, "nested": {"l": [1, null, true]}}"#,
            "--context",
            r#"{"user_id": "u-py", "project_id": "p-py", "auth_token": "SECRET"}"#,
        ],
    )
    .await;
    let got = inbox.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "received the Python notification");
    let n = &got[0];
    assert_eq!(n.publisher_id, "compute.py-host");
    assert_eq!(n.event_type, "compute.instance.create.end");
    assert_eq!(n.priority, Priority::Error);
    assert_eq!(
        n.payload,
        json!({"name": "vm ✓ 😀", "n": 9007199254740993u64, "f": 0.1, "nested": {"l": [1, null, true]}})
    );
    assert_eq!(n.metadata.message_id.len(), 36);
    assert_eq!(n.metadata.timestamp.len(), 26, "{}", n.metadata.timestamp);
    assert_eq!(n.context["user"], json!("u-py"));
    assert_eq!(n.context["project_id"], json!("p-py"));
    assert!(n.context["auth_token"].is_null(), "Python redacts the token");
    listener.shutdown().await;

    // The v1 `messaging` driver (no envelope) is understood too.
    let inbox = Inbox::default();
    let listener = rust_listener(&transport, &topic, None, &inbox).await;
    py_send(
        &py,
        &url,
        &topic,
        &["--driver", "messaging", "--event", "v1.event", "--payload", r#"{"v": 1}"#],
    )
    .await;
    let got = inbox.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].event_type.as_str(), &got[0].payload), ("v1.event", &json!({"v": 1})));
    listener.shutdown().await;
    transport.cleanup().await;
    oslo_tests::purge_rabbit_queues(&url, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_notifier_to_python_listener_keeps_every_field() {
    let Some((url, py)) = setup() else { return };
    let transport = get_transport(&url).unwrap();
    let topic = topic();
    let mut listener = PyListener::start(&py, &url, &topic, None, 3).await;
    let notifier = Notifier::new(transport.clone())
        .publisher_id("compute.rust-host")
        .topics([topic.as_str()]);
    let ctxt = context(json!({"user": "u-rs", "project_id": "p-rs", "auth_token": "SECRET", "request_id": "req-rs"}));
    let payload = json!({"name": "ünïcødé 😀", "big": i64::MAX, "f": 1.5, "list": [1, "two", null]});
    notifier.info(&ctxt, "compute.instance.update", payload.clone()).await.unwrap();
    notifier.warn(&ctxt, "compute.instance.warn", json!({})).await.unwrap();
    notifier
        .prepare()
        .driver(NotifierDriver::Messaging)
        .sample(&ctxt, "metric.v1", json!({"v": 1}))
        .await
        .unwrap();
    let got = listener.received(3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let info = got.iter().find(|n| n["event_type"] == "compute.instance.update").expect("info");
    assert_eq!(info["publisher_id"], "compute.rust-host");
    assert_eq!(info["priority"], "INFO");
    assert_eq!(info["payload"], payload);
    assert_eq!(info["metadata"]["message_id"].as_str().unwrap().len(), 36);
    assert!(info["metadata"]["timestamp"].as_str().unwrap().starts_with("20"));
    assert_eq!(info["ctxt"]["user"], "u-rs");
    assert_eq!(info["ctxt"]["request_id"], "req-rs");
    assert!(info["ctxt"]["auth_token"].is_null(), "we redact the token");
    assert!(got.iter().any(|n| n["priority"] == "WARN"));
    assert!(got.iter().any(|n| n["priority"] == "SAMPLE" && n["event_type"] == "metric.v1"));
    transport.cleanup().await;
    drop(listener);
    oslo_tests::purge_rabbit_queues(&url, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn pools_behave_the_same_on_both_sides() {
    let Some((url, py)) = setup() else { return };
    let transport = get_transport(&url).unwrap();
    let topic = topic();
    let shared_pool = format!("{topic}-shared");
    let other_pool = format!("{topic}-other");
    // Pool "shared": one Python and one Rust listener. Pool "other": one Rust listener.
    let mut py_shared = PyListener::start(&py, &url, &topic, Some(&shared_pool), 20).await;
    let rust_shared = Inbox::default();
    let rust_other = Inbox::default();
    let l1 = rust_listener(&transport, &topic, Some(&shared_pool), &rust_shared).await;
    let l2 = rust_listener(&transport, &topic, Some(&other_pool), &rust_other).await;
    // Half from Python, half from Rust.
    py_send(
        &py,
        &url,
        &topic,
        &["--event", "pooled.py", "--count", "10", "--payload", r#"{"from": "py"}"#],
    )
    .await;
    let notifier = Notifier::new(transport.clone()).publisher_id("rust").topics([topic.as_str()]);
    for i in 0..10 {
        notifier
            .info(&context(json!({})), "pooled.rs", json!({"from": "rs", "seq": i}))
            .await
            .unwrap();
    }
    let other = rust_other.wait_for(20, Duration::from_secs(30)).await;
    assert_eq!(other.len(), 20, "the other pool gets every notification");
    // The shared pool splits the 20 between its Python and Rust members, each exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut py_got = Vec::new();
    while py_got.len() + rust_shared.len() < 20 && Instant::now() < deadline {
        py_got.extend(py_shared.received(1, Duration::from_millis(200)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    py_got.extend(py_shared.received(20, Duration::from_millis(300)).await);
    assert_eq!(
        py_got.len() + rust_shared.len(),
        20,
        "python {} + rust {}",
        py_got.len(),
        rust_shared.len()
    );
    assert!(!py_got.is_empty() && rust_shared.len() > 0, "both pool members took part");
    l1.shutdown().await;
    l2.shutdown().await;
    transport.cleanup().await;
    drop(py_shared);
    oslo_tests::purge_rabbit_queues(&url, &[&topic]).await;
}
