//! Test helpers shared by the crates of this workspace.
//!
//! # Broker tests that show as ignored
//!
//! A test that needs a broker must show as *ignored* (with the reason) when its broker is not
//! configured, never as passed. libtest decides `#[ignore]` at compile time, so a crate's build
//! script calls [`build::broker_cfgs`], which sets `cfg(oslo_broker_<name>)` for every broker
//! whose URL variable is set, and each such test carries
//!
//! ```text
//! #[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
//! ```
//!
//! Where `OSLO_REQUIRE_BROKERS` names the broker (or `all`), as in CI, the cfg is set even
//! without the URL, so the test runs and fails on the missing URL instead of being ignored.

/// The brokers the tests know: cfg name suffix, URL variable, name in `OSLO_REQUIRE_BROKERS`.
pub const BROKERS: &[(&str, &str, &str)] = &[
    ("rabbit", "OSLO_TEST_RABBIT_URL", "rabbit"),
    ("amqp1", "OSLO_TEST_AMQP1_URL", "amqp1"),
    ("zmq", "OSLO_TEST_ZMQ_URL", "zmq"),
    ("zmq_dummy", "OSLO_TEST_ZMQ_DUMMY_URL", "zmq-dummy"),
    ("rabbit_cluster", "OSLO_TEST_RABBIT_CLUSTER_URL", "rabbit-cluster"),
];

/// Whether `OSLO_REQUIRE_BROKERS` (a comma or space separated list, or `all`) names `broker`.
///
/// ```
/// // Reads the environment: true only where the variable names it.
/// let _ = oslo_testkit::broker_required("rabbit");
/// ```
pub fn broker_required(broker: &str) -> bool {
    std::env::var("OSLO_REQUIRE_BROKERS").is_ok_and(|list| list.split([',', ' ']).map(str::trim).any(|b| b == broker || b == "all"))
}

/// For build scripts (`[build-dependencies] oslo-testkit`).
pub mod build {
    use super::{broker_required, BROKERS};

    /// Print the `cargo:` lines that declare `cfg(oslo_broker_<name>)` for every broker, set it
    /// for each configured (or required) one, and rebuild when those variables change.
    pub fn broker_cfgs() {
        println!("cargo:rerun-if-env-changed=OSLO_REQUIRE_BROKERS");
        for (name, variable, required_name) in BROKERS {
            println!("cargo:rustc-check-cfg=cfg(oslo_broker_{name})");
            println!("cargo:rerun-if-env-changed={variable}");
            let configured = std::env::var(variable).is_ok_and(|url| !url.trim().is_empty());
            if configured || broker_required(required_name) {
                println!("cargo:rustc-cfg=oslo_broker_{name}");
            }
        }
    }
}
