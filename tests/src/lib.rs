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
