//! `TransportConfig::max_message_size` on fake://: a request over the listening transport's
//! limit is logged and dropped before it is decoded; one under it is handled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oslo_core::{context, Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target, Transport, TransportConfig, TransportUrl};
use serde_json::json;

fn transport(url: &str, max_message_size: usize) -> Transport {
    let parsed = TransportUrl::parse(url).unwrap();
    let config = TransportConfig {
        max_message_size,
        ..TransportConfig::default()
    };
    let driver = driver_fake::FakeDriver::new(&parsed, &config).unwrap();
    Transport::from_driver(Arc::new(driver), parsed, config)
}

#[tokio::test(start_paused = true)]
async fn requests_over_the_limit_are_dropped_undecoded() {
    let url = format!("fake://max-size-{}", oslo_core::codec::new_id());
    let handled = Arc::new(AtomicUsize::new(0));
    let server = RpcServer::builder(transport(&url, 4096), Target::new("sized").with_server("s1"))
        .endpoint(Endpoint::new().method("record", {
            let handled = handled.clone();
            move |_ctxt, _args: JsonMap| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            }
        }))
        .start()
        .await
        .unwrap();
    // The sender's own limit does not matter: the listener's does.
    let client = RpcClient::new(transport(&url, 0), Target::new("sized"));
    let ctxt = context(json!({}));
    client.cast(&ctxt, "record", json!({"text": "x".repeat(8192)})).await.unwrap();
    client.cast(&ctxt, "record", json!({"text": "x".repeat(100)})).await.unwrap();
    let call = client.prepare().timeout(Duration::from_secs(5));
    let err = call.call(&ctxt, "record", json!({"text": "x".repeat(8192)})).await.unwrap_err();
    assert!(matches!(err, oslo_core::Error::MessagingTimeout { .. }), "{err}");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "only the request under the limit was handled");
    server.shutdown().await;
}
