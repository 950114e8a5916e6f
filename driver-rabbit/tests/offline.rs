//! Behaviour that needs no broker: registration, configuration errors, and sends to a host
//! that refuses connections (127.0.0.1:1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use driver_rabbit::{RabbitConfig, RabbitDriver, SCHEMES};
use oslo_core::{DriverRegistry, Error, JsonMap, Retry, RpcClient, SendOptions, Target, Transport, TransportConfig, TransportUrl};
use serde_json::json;

const DEAD: &str = "rabbit://guest:guest@127.0.0.1:1/";

fn dead_transport(options: &[(&str, &str)]) -> Transport {
    let url = TransportUrl::parse(DEAD).unwrap();
    let mut config = TransportConfig::default();
    for (k, v) in options {
        config.driver_options.insert(k.to_string(), v.to_string());
    }
    let driver = RabbitDriver::new(&url, &config).unwrap();
    Transport::from_driver(Arc::new(driver), url, config)
}

#[test]
fn registers_every_scheme_and_applies_url_options() {
    let registry = DriverRegistry::new();
    driver_rabbit::register(&registry);
    for scheme in SCHEMES {
        assert!(registry.contains(scheme), "{scheme}");
    }
    // Building a transport does not connect.
    let transport = registry
        .get_transport("kombu://u:p@h1:5673,h2/vh?rabbit_qos_prefetch_count=7")
        .unwrap();
    assert_eq!(transport.driver().name(), "rabbit");
    assert!(transport.capabilities().detects_no_listener && transport.capabilities().fanout);

    let url = TransportUrl::parse("rabbit://h1/?rabbit_qos_prefetch_count=7&ssl=true").unwrap();
    let mut config = TransportConfig::default();
    config.driver_options.insert("rabbit_qos_prefetch_count".into(), "3".into());
    config.driver_options.insert("amqp_durable_queues".into(), "yes".into());
    let driver = RabbitDriver::new(&url, &config).unwrap();
    assert_eq!(driver.config().rabbit_qos_prefetch_count, 7, "the URL query wins");
    assert!(driver.config().amqp_durable_queues);
    assert!(driver.config().ssl);
    assert_eq!(driver.brokers()[0].port, 5672, "ssl keeps port 5672");

    let err = registry.get_transport("rabbit://h1/?no_such_thing=1").unwrap_err();
    match err {
        Error::Configuration { option, reason } => {
            assert_eq!(option, "no_such_thing");
            assert_eq!(reason, "no such option no_such_thing in group [oslo_messaging_rabbit]");
        }
        other => panic!("{other}"),
    }
    let err = registry
        .get_transport("rabbit://h1/?rabbit_ha_queues=1&rabbit_quorum_queue=1")
        .unwrap_err();
    assert!(matches!(err, Error::Configuration { .. }), "{err}");

    let with = RabbitDriver::with_config(
        &TransportUrl::parse("rabbit://").unwrap(),
        &TransportConfig::default(),
        RabbitConfig {
            rabbit_qos_prefetch_count: 5,
            ..RabbitConfig::default()
        },
    )
    .unwrap();
    assert_eq!(with.config().rabbit_qos_prefetch_count, 5);
    assert_eq!(with.brokers()[0].to_string(), "localhost:5672");
    assert_eq!(with.reply_queue_name(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_retry_to_a_dead_broker_is_a_retryable_delivery_failure() {
    let transport = dead_transport(&[]);
    let client = RpcClient::new(transport.clone(), Target::new("offline")).retry(Retry::Limited(1));
    let started = Instant::now();
    let err = client.cast(&JsonMap::new(), "m", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(err.to_string().contains("after 2 tries"), "{err}");
    assert!(!err.to_string().contains("guest:guest"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let err = transport
        .driver()
        .send_notification(
            &Target::new("offline.info"),
            &JsonMap::new(),
            &JsonMap::new(),
            true,
            Retry::Limited(0),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    transport.cleanup().await;
    let err = client.cast(&JsonMap::new(), "m", json!({})).await.unwrap_err();
    assert!(!err.is_retryable(), "after cleanup: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_never_outlives_its_timeout_even_with_retry_forever() {
    let transport = dead_transport(&[]);
    let started = Instant::now();
    let err = transport
        .driver()
        .send(
            &Target::new("offline"),
            &JsonMap::new(),
            &JsonMap::new(),
            &SendOptions {
                wait_for_reply: true,
                timeout: Some(Duration::from_secs(2)),
                retry: Retry::Forever,
                ..SendOptions::default()
            },
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    // The broker never took the request: a retryable connection failure, not a timeout.
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(err.to_string().contains("within 2.0s"), "{err}");
    assert!(!err.to_string().contains("guest:guest"), "{err}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3000),
        "{elapsed:?}"
    );
    transport.cleanup().await;
}

/// A call agrees with a cast: with `Retry::Limited(1)` a dead broker is a retryable delivery
/// failure after two connection attempts, long before the call's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_dead_broker_fails_within_its_retry_budget() {
    let transport = dead_transport(&[]);
    let client = RpcClient::new(transport.clone(), Target::new("offline"))
        .retry(Retry::Limited(1))
        .timeout(Duration::from_secs(30));
    let started = Instant::now();
    let err = client.call(&JsonMap::new(), "m", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("after 2 tries"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    transport.cleanup().await;
}

/// Starting a server or a notification listener against a dead broker ends at
/// `TransportConfig::start_timeout` with the connection error, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_server_against_a_dead_broker_is_bounded() {
    let url = TransportUrl::parse(DEAD).unwrap();
    let config = TransportConfig {
        start_timeout: Some(Duration::from_secs(2)),
        ..TransportConfig::default()
    };
    let driver = RabbitDriver::new(&url, &config).unwrap();
    let transport = Transport::from_driver(Arc::new(driver), url, config);
    let started = Instant::now();
    let err = oslo_core::RpcServer::builder(transport.clone(), Target::new("offline").with_server("s1"))
        .start()
        .await
        .expect_err("no server without a broker");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "names the broker: {err}");
    assert!(!err.to_string().contains("guest:guest"), "{err}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let started = Instant::now();
    let endpoint =
        oslo_core::NotificationEndpoint::new().on(oslo_core::Priority::Info, |_| async { oslo_core::NotificationResult::Handled });
    let err = oslo_core::NotificationListener::builder(transport.clone(), vec![Target::new("offline")])
        .endpoint(endpoint)
        .start()
        .await
        .expect_err("no listener without a broker");
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    transport.cleanup().await;
}

/// A sender with no retries is never stuck behind another sender's retry-forever reconnect,
/// and cleanup stops the retry-forever one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_sends_are_not_stuck_behind_a_retry_forever_reconnect() {
    let transport = dead_transport(&[]);
    let forever = RpcClient::new(transport.clone(), Target::new("offline")).retry(Retry::Forever);
    let background = tokio::spawn(async move { forever.cast(&JsonMap::new(), "m", json!({})).await });
    tokio::time::sleep(Duration::from_millis(200)).await; // it is reconnecting now
    let started = Instant::now();
    let err = RpcClient::new(transport.clone(), Target::new("offline"))
        .retry(Retry::Limited(0))
        .cast(&JsonMap::new(), "m", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessageDeliveryFailure { retryable: true, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    transport.cleanup().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), background)
        .await
        .expect("cleanup ends the retry loop");
    assert!(outcome.unwrap().is_err());
}
