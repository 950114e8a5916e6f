//! TLS spoken to a plain AMQP port, and plain AMQP spoken to a TLS port: each fails at once
//! with a typed error that names the likely cause, not after a timeout.

mod common;

use std::time::{Duration, Instant};

use oslo_core::{Error, JsonMap, Retry, RpcClient, Target};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn cast_error(url: &str) -> (Error, Duration) {
    let (transport, _) = common::transport(url, &[]);
    let client = RpcClient::new(transport.clone(), Target::new("tls-mismatch")).retry(Retry::Limited(0));
    let started = Instant::now();
    let err = client.cast(&JsonMap::new(), "m", json!({})).await.unwrap_err();
    let elapsed = started.elapsed();
    transport.cleanup().await;
    (err, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn tls_to_a_plain_port_names_the_likely_cause() {
    let url = require_broker!();
    let (err, elapsed) = cast_error(&common::with_query(&url, &[("ssl", "true")])).await;
    eprintln!("{err}");
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// A TLS-only listener answers a plain AMQP header with a TLS alert and closes, as
/// RabbitMQ's TLS listener (and any TLS server) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_amqp_to_a_tls_port_names_the_likely_cause() {
    common::init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut header = [0u8; 8];
                let _ = socket.read_exact(&mut header).await;
                // TLS record: alert, TLS 1.2, length 2, fatal (2), protocol_version (70).
                let _ = socket.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    let (err, elapsed) = cast_error(&format!("rabbit://guest:guest@127.0.0.1:{port}/")).await;
    eprintln!("{err}");
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(err.to_string().contains("ssl=true"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}
