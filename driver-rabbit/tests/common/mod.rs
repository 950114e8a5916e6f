//! Helpers shared by the broker tests. Every broker test is gated on `OSLO_TEST_RABBIT_URL`.
#![allow(dead_code, missing_docs)]

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_rabbit::{BrokerAddress, RabbitDriver};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use oslo_core::{Transport, TransportConfig, TransportUrl};
use serde_json::Value;

/// The broker URL, or `None` (the test then prints the skip notice and returns).
pub fn broker_url() -> Option<String> {
    std::env::var("OSLO_TEST_RABBIT_URL").ok().filter(|u| !u.trim().is_empty())
}

/// Whether `OSLO_REQUIRE_BROKERS` (as in CI) names `rabbit`: then a missing URL is a failure.
pub fn broker_required() -> bool {
    std::env::var("OSLO_REQUIRE_BROKERS").is_ok_and(|v| v.split([',', ' ']).any(|b| b.trim() == "rabbit"))
}

/// `let url = require_broker!();` — skip the test when no broker is configured (fail instead
/// when `OSLO_REQUIRE_BROKERS` names `rabbit`).
#[macro_export]
macro_rules! require_broker {
    () => {
        match common::broker_url_or_skip() {
            Some(url) => {
                common::init_tracing();
                url
            }
            None => return,
        }
    };
}

/// The broker URL, or `None` after printing the skip notice; a failure instead when
/// `OSLO_REQUIRE_BROKERS` names `rabbit`. Installs no subscriber, unlike [`require_broker!`]
/// (for tests that install their own).
pub fn broker_url_or_skip() -> Option<String> {
    let url = broker_url();
    if url.is_none() {
        assert!(
            !broker_required(),
            "OSLO_TEST_RABBIT_URL is not set but OSLO_REQUIRE_BROKERS names rabbit"
        );
        eprintln!("skipping: OSLO_TEST_RABBIT_URL not set");
    }
    url
}

/// A `tracing` writer that keeps everything written to it, for tests that search the logs.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// All that was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, captured by a subscriber installed once for the whole
/// binary (INFO and above; lapin's at WARN); tests tell their lines apart by their own random
/// names. Call it before anything else installs a subscriber.
pub fn captured_logs() -> &'static CapturedLogs {
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = CapturedLogs::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info,lapin=warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

/// Captured log lines containing every one of `needles`.
pub fn log_lines(needles: &[&str]) -> Vec<String> {
    let text = captured_logs().text();
    text.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_string)
        .collect()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// `url` with extra query options appended.
pub fn with_query(url: &str, options: &[(&str, &str)]) -> String {
    if options.is_empty() {
        return url.to_string();
    }
    let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", query.join("&"))
}

/// A driver and a transport over it, with `[oslo_messaging_rabbit]` options.
pub fn transport(url: &str, options: &[(&str, &str)]) -> (Transport, Arc<RabbitDriver>) {
    let url = TransportUrl::parse(url).expect("test URL parses");
    let mut config = TransportConfig::default();
    for (key, value) in options {
        config.driver_options.insert(key.to_string(), value.to_string());
    }
    let driver = Arc::new(RabbitDriver::new(&url, &config).expect("driver builds"));
    (Transport::from_driver(driver.clone(), url, config), driver)
}

/// A plain lapin connection to the test broker (for raw publishes, captures, checks).
pub async fn raw_connection(url: &str) -> Connection {
    let url = TransportUrl::parse(url).expect("test URL parses");
    let uri = BrokerAddress::from_url(&url)[0].expose_uri(false);
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("raw connection")
}

/// Delete queues (missing ones are fine).
pub async fn delete_queues(url: &str, names: &[String]) {
    let connection = raw_connection(url).await;
    for name in names {
        let channel = connection.create_channel().await.expect("channel");
        let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = connection.close(200, "OK".into()).await;
}

/// Delete exchanges (missing ones are fine).
pub async fn delete_exchanges(url: &str, names: &[String]) {
    let connection = raw_connection(url).await;
    for name in names {
        let channel = connection.create_channel().await.expect("channel");
        let _ = channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "OK".into()).await;
}

/// Run `rabbitmqctl` (bounded to 60 s); `None` if it is not available here.
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let output = Command::new("timeout").arg("60").arg("rabbitmqctl").args(args).output().ok()?;
    if !output.status.success() {
        eprintln!("rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `rabbitmqctl list_queues` as JSON objects, or `None` without rabbitmqctl.
pub async fn list_queues() -> Option<Vec<Value>> {
    tokio::task::spawn_blocking(|| {
        let text = rabbitmqctl(&[
            "list_queues",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "consumers",
            "--formatter",
            "json",
            "-q",
        ])?;
        serde_json::from_str(&text).ok()
    })
    .await
    .ok()?
}

/// `rabbitmqctl list_exchanges` as JSON objects, or `None` without rabbitmqctl.
pub async fn list_exchanges() -> Option<Vec<Value>> {
    tokio::task::spawn_blocking(|| {
        let text = rabbitmqctl(&[
            "list_exchanges",
            "name",
            "type",
            "durable",
            "auto_delete",
            "--formatter",
            "json",
            "-q",
        ])?;
        serde_json::from_str(&text).ok()
    })
    .await
    .ok()?
}

/// `rabbitmqctl list_bindings` as JSON objects, or `None` without rabbitmqctl.
pub async fn list_bindings() -> Option<Vec<Value>> {
    tokio::task::spawn_blocking(|| {
        let text = rabbitmqctl(&[
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
            "-q",
        ])?;
        serde_json::from_str(&text).ok()
    })
    .await
    .ok()?
}

/// `rabbitmqctl list_connections auth_mechanism client_properties` rows (tab separated), or
/// `None` without rabbitmqctl.
pub async fn connection_rows() -> Option<Vec<String>> {
    tokio::task::spawn_blocking(|| {
        let text = rabbitmqctl(&[
            "list_connections",
            "auth_mechanism",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])?;
        Some(text.lines().map(str::to_string).collect())
    })
    .await
    .ok()?
}

/// How many bytes the broker received on each connection whose `connection_name` is `name`
/// (`rabbitmqctl list_connections recv_oct`), or `None` without rabbitmqctl.
pub async fn bytes_received_named(name: &str) -> Option<Vec<u64>> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let text = rabbitmqctl(&["list_connections", "recv_oct", "client_properties", "-q", "--no-table-headers"])?;
        let counts = text
            .lines()
            .filter(|line| line.contains(&format!("\"{name}\"")) || line.contains(&format!("<<\"{name}\">>")))
            .filter_map(|line| line.split('\t').next()?.trim().parse().ok())
            .collect();
        Some(counts)
    })
    .await
    .ok()?
}

/// Force-close (as an operator would) every broker connection whose `connection_name` is
/// `name`, leaving other users' connections alone. Returns how many were closed, or `None`
/// without rabbitmqctl.
pub async fn close_connections_named(name: &str) -> Option<usize> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        // Table output: the JSON formatter prints pids as `#PID<...>`, which close_connection
        // does not accept.
        let text = rabbitmqctl(&["list_connections", "pid", "client_properties", "-q", "--no-table-headers"])?;
        let mut closed = 0;
        for line in text.lines() {
            if !line.contains(&format!("\"{name}\"")) && !line.contains(&format!("<<\"{name}\">>")) {
                continue;
            }
            let pid = line.split('\t').next()?.trim().to_string();
            if rabbitmqctl(&["close_connection", &pid, "test"]).is_some() {
                closed += 1;
            }
        }
        Some(closed)
    })
    .await
    .ok()?
}

/// Poll `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn context() -> oslo_core::JsonMap {
    oslo_core::context(serde_json::json!({
        "user_id": "u-wire",
        "project_id": "p-wire",
        "request_id": "req-00000000-0000-0000-0000-000000000001"
    }))
}
