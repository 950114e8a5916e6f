//! Tests of the fault-injection wrapper itself, over the in-memory `fake://` driver.

use std::sync::Arc;
use std::time::Duration;

use oslo_core::fault::{self, FaultConfig, FaultInjectingDriver};
use oslo_core::{context, Driver, DriverRegistry, Error, Listener, Retry, SendOptions, Target, Transport};
use serde_json::json;
use tokio::time::Instant;

fn fake(bus: &str) -> Transport {
    let registry = DriverRegistry::new();
    driver_fake::register(&registry);
    registry.get_transport(&format!("fake://{bus}")).expect("fake transport")
}

fn cast_options() -> SendOptions {
    SendOptions {
        retry: Retry::Limited(0),
        ..SendOptions::default()
    }
}

fn request(i: u64) -> oslo_core::JsonMap {
    context(json!({"method": "record", "args": {"value": i}}))
}

/// Cast `n` numbered requests to `topic` straight through `driver`.
async fn cast_numbered(driver: &dyn Driver, topic: &str, n: u64) {
    for i in 0..n {
        driver
            .send(&Target::new(topic), &context(json!({})), &request(i), &cast_options())
            .await
            .expect("cast");
    }
}

fn value_of(message: &dyn oslo_core::IncomingMessage) -> u64 {
    message.message()["args"]["value"].as_u64().expect("numbered request")
}

/// What a listener yields within `window`.
async fn drain(listener: &mut Box<dyn Listener>, window: Duration) -> Vec<Box<dyn oslo_core::IncomingMessage>> {
    let mut taken = Vec::new();
    let deadline = Instant::now() + window;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, listener.next()).await {
        taken.push(message);
    }
    taken
}

#[tokio::test]
async fn duplicates_share_one_unique_id_and_one_acknowledgement() {
    let transport = fake("fault-dup");
    let faults = FaultInjectingDriver::new(transport.driver().clone(), FaultConfig::new().duplicate_probability(1.0));
    let mut listener = faults.listen(&Target::new("t").with_server("s")).await.unwrap();
    cast_numbered(&**transport.driver(), "t", 3).await;
    let taken = drain(&mut listener, Duration::from_millis(300)).await;
    let values: Vec<u64> = taken.iter().map(|m| value_of(&**m)).collect();
    assert_eq!(values, [0, 0, 1, 1, 2, 2], "each delivery handed over twice, the copy right after");
    for pair in taken.chunks(2) {
        assert!(pair[0].unique_id().is_some());
        assert_eq!(pair[0].unique_id(), pair[1].unique_id());
        pair[0].acknowledge().await.unwrap();
        pair[1].acknowledge().await.unwrap(); // the copy's settle is absorbed, not sent twice
    }
    let stats = faults.stats();
    assert_eq!((stats.duplicated, stats.deliveries), (3, 6), "{stats:?}");
}

#[tokio::test]
async fn same_seed_drops_the_same_messages() {
    let mut runs = Vec::new();
    for run in 0..3 {
        let transport = fake(&format!("fault-seed-{run}"));
        let seed = if run < 2 { 99 } else { 100 };
        let faults = FaultInjectingDriver::new(transport.driver().clone(), FaultConfig::new().seed(seed).drop_probability(0.5));
        assert_eq!(faults.seed(), seed);
        let mut listener = faults.listen(&Target::new("t").with_server("s")).await.unwrap();
        cast_numbered(&**transport.driver(), "t", 40).await;
        let kept: Vec<u64> = drain(&mut listener, Duration::from_millis(300))
            .await
            .iter()
            .map(|m| value_of(&**m))
            .collect();
        assert_eq!(
            kept.len() as u64 + faults.stats().dropped,
            40,
            "every message kept or counted as dropped"
        );
        assert!(!kept.is_empty() && kept.len() < 40, "about half dropped: kept {}", kept.len());
        runs.push(kept);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert_ne!(runs[0], runs[2], "another seed, other faults");
}

#[tokio::test(start_paused = true)]
async fn delivery_delay_is_cancel_safe() {
    let transport = fake("fault-cancel");
    let faults = FaultInjectingDriver::new(
        transport.driver().clone(),
        FaultConfig::new().delivery_delay(Duration::from_secs(5)),
    );
    let mut listener = faults.listen(&Target::new("t").with_server("s")).await.unwrap();
    cast_numbered(&**transport.driver(), "t", 1).await;
    // The server loop polls `next` inside `select!`: a poll abandoned mid-delay loses nothing.
    assert!(tokio::time::timeout(Duration::from_secs(1), listener.next()).await.is_err());
    let started = Instant::now();
    let message = listener.next().await.expect("still there");
    assert_eq!(value_of(&*message), 0);
    assert_eq!(started.elapsed(), Duration::from_secs(4), "the remaining delay only");
}

#[tokio::test(start_paused = true)]
async fn listeners_stall_while_disconnected_and_listen_fails() {
    let transport = fake("fault-stall");
    let faults = FaultInjectingDriver::new(transport.driver().clone(), FaultConfig::new());
    let mut listener = faults.listen(&Target::new("t").with_server("s")).await.unwrap();
    faults.disconnect_for(Duration::from_secs(3));
    assert!(!faults.is_connected());
    let err = faults
        .listen(&Target::new("other").with_server("s"))
        .await
        .err()
        .expect("cannot subscribe");
    assert!(matches!(err, Error::Transport { retryable: true, .. }), "{err}");
    cast_numbered(&**transport.driver(), "t", 2).await;
    let started = Instant::now();
    let first = listener.next().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(value_of(&*first), 0);
    assert_eq!(value_of(&*listener.next().await.unwrap()), 1);
    assert!(faults.is_connected());
}

#[tokio::test(start_paused = true)]
async fn sends_honour_retry_and_the_call_timeout() {
    let transport = fake("fault-send");
    let faults = FaultInjectingDriver::new(
        transport.driver().clone(),
        FaultConfig::new().retry_interval(Duration::from_millis(100)),
    );
    let _listener = faults.listen(&Target::new("t").with_server("s")).await.unwrap();
    faults.disconnect();
    let send = |retry: Retry, wait_for_reply: bool| {
        let faults = faults.clone();
        async move {
            let options = SendOptions {
                retry,
                wait_for_reply,
                timeout: Some(Duration::from_secs(2)),
                ..SendOptions::default()
            };
            faults.send(&Target::new("t"), &context(json!({})), &request(0), &options).await
        }
    };
    let started = Instant::now();
    let err = send(Retry::Limited(3), false).await.unwrap_err();
    assert!(matches!(err, Error::Transport { retryable: true, .. }), "{err}");
    assert_eq!(started.elapsed(), Duration::from_millis(300), "three retries, 100 ms apart");
    // A call never waits past its timeout for the link.
    let started = Instant::now();
    let err = send(Retry::Forever, true).await.unwrap_err();
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(faults.stats().sends_failed, 2);
    assert_eq!(faults.stats().sends, 0, "nothing reached the broker");
}

#[tokio::test]
async fn fault_scheme_wraps_a_registered_driver() {
    let registry: &'static DriverRegistry = Box::leak(Box::new(DriverRegistry::new()));
    driver_fake::register(registry);
    fault::register(registry);
    let transport = registry
        .get_transport("fault+fake://fault-url?fault_seed=3&fault_duplicate=1")
        .expect("fault transport");
    assert_eq!(transport.driver().name(), "fake");
    let mut listener = transport.driver().listen(&Target::new("t").with_server("s")).await.unwrap();
    // The inner driver is the plain fake://fault-url bus.
    cast_numbered(&*fake("fault-url").driver().clone(), "t", 1).await;
    assert_eq!(drain(&mut listener, Duration::from_millis(300)).await.len(), 2, "duplicated");

    for bad in ["fault://x", "fault+fake://x?fault_drop=3", "fault+fake://x?fault_nope=1"] {
        let err = registry.get_transport(bad).expect_err(bad);
        assert!(
            matches!(err, Error::InvalidTransportUrl { .. } | Error::Configuration { .. }),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn notifications_pass_through_with_faults() {
    let transport = fake("fault-notify");
    let faults = Arc::new(FaultInjectingDriver::new(
        transport.driver().clone(),
        FaultConfig::new().send_delay(Duration::from_millis(30)).duplicate_probability(1.0),
    ));
    let wrapped = faults.transport(&transport);
    let mut listener = wrapped
        .driver()
        .listen_for_notifications(&[(Target::new("n"), "info".into())], None)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    wrapped
        .driver()
        .send_notification(
            &Target::new("n.info"),
            &context(json!({})),
            &context(json!({"event_type": "e", "payload": {}})),
            true,
            Retry::Forever,
        )
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(drain(&mut listener, Duration::from_millis(300)).await.len(), 2);
    assert_eq!(faults.stats().sends, 1);
}
