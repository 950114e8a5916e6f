//! Shared helpers for the workspace's integration tests: which brokers to test against.
//!
//! Broker tests read their URL from an environment variable (`OSLO_TEST_RABBIT_URL`,
//! `OSLO_TEST_AMQP1_URL`, `OSLO_TEST_ZMQ_URL`). When it is unset they skip with a message,
//! unless the driver is listed in `OSLO_REQUIRE_BROKERS` (comma separated, e.g. `rabbit`, or
//! `all`; `.ci/run` sets it): then a missing URL is a failure, so nothing skips in CI.

/// The broker drivers the suite knows: (driver name, URL variable).
pub const BROKERS: &[(&str, &str)] = &[
    ("rabbit", "OSLO_TEST_RABBIT_URL"),
    ("amqp1", "OSLO_TEST_AMQP1_URL"),
    ("zmq", "OSLO_TEST_ZMQ_URL"),
];

/// Whether `OSLO_REQUIRE_BROKERS` demands that `driver`'s tests run.
pub fn broker_required(driver: &str) -> bool {
    std::env::var("OSLO_REQUIRE_BROKERS")
        .map(|list| list.split(',').map(str::trim).any(|d| d == driver || d == "all"))
        .unwrap_or(false)
}

/// The URL for `driver`'s broker from `variable`, or `None` (after printing why) when the
/// test must skip.
///
/// # Panics
/// When the variable is unset but the driver is required by `OSLO_REQUIRE_BROKERS`.
pub fn broker_url(driver: &str, variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if broker_required(driver) {
                panic!("{variable} is not set but OSLO_REQUIRE_BROKERS requires the {driver} tests: they must not skip");
            }
            eprintln!("skipping {driver} tests: {variable} not set");
            None
        }
    }
}

/// Delete the queues whose names start with one of `prefixes` from the RabbitMQ at `url`.
///
/// oslo never deletes topic, server or notification queues, and the test suites name theirs
/// randomly, so without this every run would leave some behind. Queue names come from
/// `rabbitmqctl list_queues` (root on the broker host); when that is not available nothing is
/// deleted and the reason is printed.
pub async fn purge_rabbit_queues(url: &str, prefixes: &[&str]) {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--quiet", "--no-table-headers"])
        .output();
    let names: Vec<String> = match listing {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
            .map(str::to_string)
            .collect(),
        Ok(out) => {
            eprintln!(
                "not purging test queues: rabbitmqctl failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(err) => {
            eprintln!("not purging test queues: cannot run rabbitmqctl: {err}");
            return;
        }
    };
    if names.is_empty() {
        return;
    }
    let Ok(parsed) = oslo_core::TransportUrl::parse(url) else { return };
    let Some(broker) = driver_rabbit::BrokerAddress::from_url(&parsed).into_iter().next() else {
        return;
    };
    let connection = match lapin::Connection::connect(&broker.expose_uri(false), lapin::ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(err) => {
            eprintln!("not purging test queues: {err}");
            return;
        }
    };
    if let Ok(channel) = connection.create_channel().await {
        for name in &names {
            let _ = channel
                .queue_delete(name.as_str().into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(0, "purged".into()).await;
}
