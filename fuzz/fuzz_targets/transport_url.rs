//! `TransportUrl::parse` on arbitrary text: never panics; what it accepts prints (with and
//! without passwords) to URLs that parse again, formatting is stable after one round, and the
//! redacted form carries no password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oslo_core::{TransportHost, TransportUrl};

/// The hosts that print as something: a host with no name, port or credentials (`x://:/`)
/// prints as nothing and is gone after one round, as in oslo.
fn visible(url: &TransportUrl) -> Vec<&TransportHost> {
    url.hosts
        .iter()
        .filter(|h| {
            h.hostname.as_deref().is_some_and(|n| !n.is_empty()) || h.port.is_some() || h.username.is_some() || h.password.is_some()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(url) = TransportUrl::parse(text) else { return };
    let _ = (url.driver(), url.transport_variant(), format!("{url:?}"));

    // With secrets: what prints parses again to the same hosts and options, and printing is
    // stable once empty hosts are gone.
    let printed = url.expose_secrets();
    let reparsed = TransportUrl::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} does not parse again: {e}"));
    assert_eq!(visible(&reparsed), visible(&url), "{printed:?}");
    assert_eq!(reparsed.query, url.query, "{printed:?}");
    assert_eq!(reparsed.driver(), url.driver());
    let normalized = reparsed.expose_secrets();
    let stable = TransportUrl::parse(&normalized).unwrap();
    assert_eq!(stable.expose_secrets(), normalized, "printing is stable");
    assert_eq!(visible(&stable), visible(&url));

    // Redacted: parses to the same hosts, every password replaced by `***`.
    let redacted = url.to_string();
    let parsed_redacted = TransportUrl::parse(&redacted).unwrap_or_else(|e| panic!("{redacted:?} does not parse: {e}"));
    assert_eq!(visible(&parsed_redacted).len(), visible(&url).len(), "{redacted:?}");
    for (original, shown) in visible(&url).into_iter().zip(visible(&parsed_redacted)) {
        assert_eq!(original.username, shown.username);
        assert_eq!(
            original.hostname.as_deref().filter(|h| !h.is_empty()),
            shown.hostname.as_deref().filter(|h| !h.is_empty())
        );
        assert_eq!(original.port, shown.port);
        match (&original.password, &shown.password) {
            (None, None) => {}
            (Some(_), Some(shown)) => assert_eq!(shown.expose(), "***", "{redacted:?}"),
            other => panic!("password presence changed in {redacted:?}: {other:?}"),
        }
    }
    assert!(!format!("{url:?}").contains("Secret(\""), "Debug shows a secret");
});
