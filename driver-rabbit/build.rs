//! Marks the broker tests `#[ignore]`d, with the reason, when no broker is configured: they
//! then show as ignored, never as passed. `OSLO_TEST_RABBIT_URL` (or `OSLO_REQUIRE_BROKERS`
//! naming `rabbit`, as in CI, where a missing URL must fail the tests) sets `cfg(rabbit_broker)`.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(rabbit_broker)");
    println!("cargo:rerun-if-env-changed=OSLO_TEST_RABBIT_URL");
    println!("cargo:rerun-if-env-changed=OSLO_REQUIRE_BROKERS");
    let url = std::env::var("OSLO_TEST_RABBIT_URL").is_ok_and(|u| !u.trim().is_empty());
    let required = std::env::var("OSLO_REQUIRE_BROKERS").is_ok_and(|v| v.split([',', ' ']).any(|b| matches!(b.trim(), "rabbit" | "all")));
    if url || required {
        println!("cargo:rustc-cfg=rabbit_broker");
    }
}
