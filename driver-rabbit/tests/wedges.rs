//! Regression tests for the ways a transport could wedge for good (issue: reliability II).

mod common;

use std::time::{Duration, Instant};

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use oslo_core::{Error, RpcClient, Target};
use serde_json::json;

/// Cast to an exchange that exists with other arguments (durable, cast as non-durable) more
/// times than a connection has channels: every cast fails at once with the refusal, and the
/// transport keeps working for healthy targets afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_declarations_do_not_use_up_the_connections_channels() {
    let url = require_broker!();
    let exchange = common::unique("wedge-durable");
    let raw = common::raw_connection(&url).await;
    let channel = raw.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (transport, _) = common::transport(&url, &[]);
    let refused = RpcClient::new(transport.clone(), Target::new("wedge").with_exchange(&exchange));
    let ctxt = common::context();
    let started = Instant::now();
    for i in 0..4200 {
        let outcome = tokio::time::timeout(Duration::from_secs(10), refused.cast(&ctxt, "m", json!({"i": i}))).await;
        let err = outcome.unwrap_or_else(|_| panic!("cast {i} hung"));
        match err {
            Err(Error::Transport { .. }) => {}
            other => panic!("cast {i}: expected the refusal, got {other:?}"),
        }
    }
    eprintln!("4200 refused casts in {:?}", started.elapsed());
    let healthy = RpcClient::new(transport.clone(), Target::new(&common::unique("wedge-ok")));
    tokio::time::timeout(Duration::from_secs(10), healthy.cast(&ctxt, "m", json!({})))
        .await
        .expect("a healthy cast after the refusals hangs")
        .expect("a healthy cast after the refusals fails");
    transport.cleanup().await;
    common::delete_exchanges(&url, &[exchange]).await;
    let _ = raw.close(200, "OK".into()).await;
}
