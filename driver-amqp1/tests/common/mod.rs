//! Helpers shared by the broker tests (gated on `OSLO_TEST_AMQP1_URL`).
#![allow(dead_code, missing_docs)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use oslo_core::{DriverRegistry, Endpoint, HandlerError, JsonMap, RpcServer, Target, Transport};
use serde_json::Value;

pub fn broker_url() -> Option<String> {
    match std::env::var("OSLO_TEST_AMQP1_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let required =
                std::env::var("OSLO_REQUIRE_BROKERS").is_ok_and(|v| v.split([',', ' ']).any(|b| b.trim() == "amqp1" || b.trim() == "all"));
            assert!(!required, "OSLO_TEST_AMQP1_URL is not set but OSLO_REQUIRE_BROKERS names amqp1");
            eprintln!("skipping: OSLO_TEST_AMQP1_URL not set");
            None
        }
    }
}

#[macro_export]
macro_rules! require_broker {
    () => {
        match common::broker_url() {
            Some(url) => {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
                    .with_test_writer()
                    .try_init();
                url
            }
            None => return,
        }
    };
}

pub fn transport(url: &str) -> Transport {
    let registry = DriverRegistry::new();
    driver_amqp1::register(&registry);
    registry.get_transport(url).expect("transport")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn with_query(url: &str, query: &str) -> String {
    format!("{url}{}{query}", if url.contains('?') { "&" } else { "?" })
}

pub fn queues() -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--quiet", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl list_queues (run the broker tests as root on the broker host)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect()
}

/// The shared topic/server queues stay by design (as oslo's); the tests remove theirs.
pub fn delete_queues_containing(needle: &str) {
    for queue in queues().into_iter().filter(|q| q.contains(needle)) {
        let _ = Command::new("rabbitmqctl").args(["delete_queue", &queue]).output();
    }
}

pub fn echo_server_endpoint(counter: Arc<AtomicUsize>) -> Endpoint {
    Endpoint::new().method("echo", move |_ctxt: JsonMap, args: Value| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, HandlerError>(args["value"].clone())
        }
    })
}

pub async fn start_server(transport: &Transport, topic: &str, server: &str, counter: Arc<AtomicUsize>) -> RpcServer {
    RpcServer::builder(transport.clone(), Target::new(topic).with_server(server))
        .endpoint(echo_server_endpoint(counter))
        .start()
        .await
        .expect("server starts")
}

/// `(source, destination, routing key)` of every binding.
pub fn bindings() -> Vec<(String, String, String)> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
            "--quiet",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl list_bindings");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut parts = l.split('\t').map(str::to_string);
            (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        })
        .collect()
}
