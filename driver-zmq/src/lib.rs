//! # driver-zmq: ZeroMQ (brokerless, on the zeromq crate, Redis matchmaker) — **not implemented yet**
//!
//! This crate reserves the driver's place in the workspace. It registers its URL scheme so
//! that `get_transport` answers with a clear `DriverLoadFailure` ("not implemented yet")
//! instead of pretending to work. The driver itself is tracked in issue #7.

use oslo_core::DriverRegistry;

/// URL schemes this driver will serve.
pub const SCHEMES: &[&str] = &["zmq"];

/// Register the schemes as known but not implemented yet.
pub fn register(registry: &DriverRegistry) {
    for scheme in SCHEMES {
        registry.register_unavailable(scheme, "the zmq driver is not implemented yet (issue #7)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_not_implemented() {
        let registry = oslo_core::DriverRegistry::new();
        super::register(&registry);
        let err = registry.get_transport("zmq://127.0.0.1/").unwrap_err();
        assert!(err.to_string().contains("not implemented yet"), "{err}");
    }
}
