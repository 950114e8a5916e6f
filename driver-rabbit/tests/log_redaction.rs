//! Passwords never reach the logs: every log line the driver (and lapin) writes at TRACE level
//! while failing to log in, failing over from a dead host and working normally is captured and
//! searched for the password.

mod common;

use std::time::Duration;

use oslo_core::{Retry, RpcClient, Target};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn passwords_never_appear_in_logs() {
    // Not `require_broker!`: that installs its own global subscriber.
    let Some(url) = common::broker_url_or_skip() else { return };
    let captured = common::CapturedLogs::default();
    let writer = captured.clone();
    // This test binary holds only this test, so the global subscriber is ours.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let parsed = oslo_core::TransportUrl::parse(&url).unwrap();
    let host = &parsed.hosts[0];
    let (name, port) = (host.hostname.clone().unwrap_or("localhost".into()), host.port.unwrap_or(5672));
    let user = host.username.clone().unwrap_or("guest".into());
    let good_password = host.password.as_ref().map(|p| p.expose().to_string()).unwrap_or("guest".into());

    // 1. Wrong password.
    let (transport, _) = common::transport(&format!("rabbit://{user}:Wr0ngPassw0rd-Zq@{name}:{port}/"), &[]);
    let client = RpcClient::new(transport.clone(), Target::new("log-redaction")).retry(Retry::Limited(1));
    assert!(client.cast(&common::context(), "m", json!({})).await.is_err());
    transport.cleanup().await;

    // 2. A dead first host (closed port) with its own password, then the real broker.
    let failover = format!("rabbit://{user}:Dead-Host-Pw-Qx@127.0.0.1:1,{user}:{good_password}@{name}:{port}/");
    let (transport, _) = common::transport(&failover, &[]);
    let client = RpcClient::new(transport.clone(), Target::new("log-redaction")).timeout(Duration::from_secs(10));
    client
        .cast(&common::context(), "m", json!({}))
        .await
        .expect("fails over to the live broker");
    transport.cleanup().await;

    let logs = captured.text();
    assert!(logs.len() > 200, "the subscriber captured the driver's logs: {logs}");
    // The failures were logged (so the search below covered them), with the host but no secret.
    assert!(logs.contains("127.0.0.1:1"), "the dead host is named in the logs:\n{logs}");
    assert!(
        logs.contains("ACCESS_REFUSED") || logs.contains("access refused"),
        "the login failure is logged:\n{logs}"
    );
    for secret in ["Wr0ngPassw0rd-Zq", "Dead-Host-Pw-Qx"] {
        assert!(!logs.contains(secret), "password {secret} leaked into the logs:\n{logs}");
    }
    if good_password.len() >= 8 {
        assert!(!logs.contains(&good_password), "the real password leaked into the logs");
    }
}
