//! Shared helpers for the workspace's integration tests: which brokers to test against.
//!
//! Broker tests read their URL from an environment variable (`OSLO_TEST_RABBIT_URL`,
//! `OSLO_TEST_AMQP1_URL`, `OSLO_TEST_ZMQ_URL`). When it is unset they skip with a message —
//! unless `OSLO_REQUIRE_BROKERS=1` (set by `.ci/run`), in which case a missing URL is a
//! failure, so that nothing skips in CI.

/// The broker URL in `variable`, or `None` (after printing why) when the test must skip.
///
/// # Panics
/// When the variable is unset but `OSLO_REQUIRE_BROKERS=1`.
pub fn broker_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("OSLO_REQUIRE_BROKERS").as_deref() == Ok("1") {
                panic!("{variable} is not set but OSLO_REQUIRE_BROKERS=1: broker tests must not skip");
            }
            eprintln!("skipping: {variable} not set");
            None
        }
    }
}

/// The broker drivers the suite knows: (name, URL variable).
pub const BROKERS: &[(&str, &str)] = &[("rabbit", "OSLO_TEST_RABBIT_URL"), ("amqp1", "OSLO_TEST_AMQP1_URL"), ("zmq", "OSLO_TEST_ZMQ_URL")];
