//! Transport URLs, parsed by oslo.messaging's own rules (`transport.py::TransportURL.parse`).
//!
//! `driver://[user:pass@]host:port[,[userN:passN@]hostN:portN]/virtual_host?query`
//!
//! The netloc is split by hand on `,` (not with `url::Url`, which silently mis-parses
//! multi-host URLs), credentials belong to each host, user, password and virtual host are
//! percent-decoded and repeated query keys are joined with `,`. Passwords never appear in
//! `Debug` or `Display`; [`TransportUrl::expose_secrets`] is the one way to get them back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A password that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where the value is really needed (authentication).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// One broker host of a transport URL, with its own (optional) credentials.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TransportHost {
    /// Host name or IP address (IPv6 without brackets); `None` when only credentials were given.
    pub hostname: Option<String>,
    /// Port, if the URL names one.
    pub port: Option<u16>,
    /// Percent-decoded user name.
    pub username: Option<String>,
    /// Percent-decoded password.
    pub password: Option<Secret>,
}

/// A parsed transport URL.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// The scheme, e.g. `rabbit`, `fake`, `zmq+redis`.
    pub transport: String,
    /// Percent-decoded virtual host: `None` without a path, `""` for `rabbit://h/`, `"/"` for `rabbit://h//`.
    pub virtual_host: Option<String>,
    /// The hosts, in URL order.
    pub hosts: Vec<TransportHost>,
    /// Query options; repeated keys are joined with `,`.
    pub query: BTreeMap<String, String>,
}

/// A host name or virtual host holding an '@' is a piece of a misparsed password (see
/// [`TransportUrl::parse`]): `Debug` and `Display` show `***` instead.
fn shown(piece: &Option<String>) -> Option<&str> {
    piece.as_deref().map(|p| if p.contains('@') { "***" } else { p })
}

impl fmt::Debug for TransportHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportHost")
            .field("hostname", &shown(&self.hostname))
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportUrl")
            .field("transport", &self.transport)
            .field("virtual_host", &shown(&self.virtual_host))
            .field("hosts", &self.hosts)
            .field("query", &self.query)
            .finish()
    }
}

impl TransportUrl {
    /// Parse a transport URL with oslo's algorithm.
    ///
    /// ```
    /// use oslo_core::TransportUrl;
    /// let url = TransportUrl::parse("rabbit://u:p@h1:5672,u2:p2@h2:5673/nova?ssl=1").unwrap();
    /// assert_eq!(url.driver(), "rabbit");
    /// assert_eq!(url.hosts.len(), 2);
    /// assert_eq!(url.hosts[1].port, Some(5673));
    /// assert_eq!(url.virtual_host.as_deref(), Some("nova"));
    /// assert_eq!(url.to_string(), "rabbit://u:***@h1:5672,u2:***@h2:5673/nova?ssl=1");
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTransportUrl {
            reason: reason.to_string(),
            url: redact_raw(text),
        };
        let (scheme, rest) = split_scheme(text).ok_or_else(|| invalid("No scheme specified"))?;
        let transport = scheme.to_ascii_lowercase();

        // urlsplit: fragment, then query, then `//netloc` up to the first '/'.
        let (rest, fragment) = match rest.split_once('#') {
            Some((before, fragment)) => (before, Some(fragment)),
            None => (rest, None),
        };
        let (rest, query_text) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        let (netloc, path) = match rest.strip_prefix("//") {
            Some(after) => match after.find('/') {
                Some(slash) => (&after[..slash], &after[slash..]),
                None => (after, ""),
            },
            None => ("", rest),
        };
        // A password with an unescaped '/', '?' or '#' ends the netloc early, as in Python's
        // urlsplit (`rabbit://guest:4242/S3cr3t@host/` is host `guest`, port 4242, vhost
        // `S3cr3t@host`): the credentials' '@' then shows up in the vhost, a query key or the
        // fragment. Python connects to the wrong host; refuse, without printing the password.
        let query_keys_have_at =
            query_text.is_some_and(|q| q.split(['&', ';']).any(|pair| pair.split('=').next().unwrap_or("").contains('@')));
        if path.contains('@') || fragment.is_some_and(|f| f.contains('@')) || query_keys_have_at {
            return Err(invalid(
                "an '@' follows the host part: a password (or user name) holding '/', '?' or '#' must be percent-encoded (%2F, %3F, %23)",
            ));
        }

        let mut query: BTreeMap<String, String> = BTreeMap::new();
        if let Some(query_text) = query_text {
            for pair in query_text.split(['&', ';']) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                // parse_qs drops blank values unless keep_blank_values.
                if value.is_empty() {
                    continue;
                }
                let key = unquote_plus(key);
                let value = unquote_plus(value);
                query
                    .entry(key)
                    .and_modify(|existing| {
                        existing.push(',');
                        existing.push_str(&value);
                    })
                    .or_insert(value);
            }
        }

        let virtual_host = path.strip_prefix('/').map(unquote);

        let mut hosts = Vec::new();
        for raw in netloc.split(',').filter(|h| !h.is_empty()) {
            let mut host = TransportHost::default();
            let mut hostport = raw;
            if let Some((creds, after)) = raw.rsplit_once('@') {
                hostport = after;
                match creds.split_once(':') {
                    Some((user, pass)) => {
                        host.username = Some(unquote(user));
                        host.password = Some(Secret(unquote(pass)));
                    }
                    None => host.username = Some(unquote(creds)),
                }
            }
            let (name, port_text) = if let Some(bracketed) = hostport.strip_prefix('[') {
                let end = bracketed.find(']').ok_or_else(|| invalid("Invalid IPv6 URL"))?;
                // `[[]` would give host `[`, which prints as a URL that no longer parses
                // (found by fuzzing); Python's urlsplit refuses it too.
                if bracketed[..end].contains('[') {
                    return Err(invalid("Invalid IPv6 URL"));
                }
                let port_text = bracketed[end + 1..].strip_prefix(':');
                (&bracketed[..end], port_text)
            } else {
                match hostport.split_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (hostport, None),
                }
            };
            host.hostname = (!name.is_empty()).then(|| name.to_string());
            host.port = match port_text {
                None | Some("") => None,
                // The values are not quoted: with an unescaped '/' in a password, the "port"
                // and "host" seen here are pieces of that password.
                Some(port) => Some(
                    port.parse::<u16>()
                        .map_err(|_| invalid(&format!("invalid port in host entry {}", hosts.len() + 1)))?,
                ),
            };
            hosts.push(host);
        }

        let with_creds = hosts.iter().filter(|h| h.username.is_some() && h.password.is_some()).count();
        if with_creds != 0 && with_creds != hosts.len() {
            tracing::warn!(url = %redact_raw(text), "All hosts must be set with username/password or not");
        }

        Ok(TransportUrl {
            transport,
            virtual_host,
            hosts,
            query,
        })
    }

    /// The driver name: the scheme up to the first `+` (`zmq` for `zmq+redis://`).
    pub fn driver(&self) -> &str {
        self.transport.split('+').next().unwrap_or(&self.transport)
    }

    /// The part of the scheme after `+`, if any (`redis` for `zmq+redis://`).
    pub fn transport_variant(&self) -> Option<&str> {
        self.transport.split_once('+').map(|(_, variant)| variant)
    }

    /// The URL as oslo's `TransportURL.__str__` builds it, **with passwords in clear**.
    /// Use only to hand the URL to something that must authenticate.
    pub fn expose_secrets(&self) -> String {
        self.format(true)
    }

    /// Look up a query option.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn format(&self, with_passwords: bool) -> String {
        let netlocs: Vec<String> = self
            .hosts
            .iter()
            .map(|host| {
                let mut netloc = String::new();
                if host.username.is_some() || host.password.is_some() {
                    if let Some(user) = &host.username {
                        netloc.push_str(&quote(user, ""));
                    }
                    if let Some(pass) = &host.password {
                        netloc.push(':');
                        netloc.push_str(&if with_passwords {
                            quote(pass.expose(), "")
                        } else {
                            "***".to_string()
                        });
                    }
                    netloc.push('@');
                }
                if let Some(name) = host.hostname.as_deref().filter(|n| !n.is_empty()) {
                    if name.contains('@') {
                        // Part of a misparsed password (see `parse`): never print it.
                        netloc.push_str("***");
                    } else if name.contains(':') {
                        netloc.push_str(&format!("[{name}]"));
                    } else {
                        netloc.push_str(name);
                    }
                }
                if let Some(port) = host.port {
                    netloc.push_str(&format!(":{port}"));
                }
                netloc
            })
            .collect();
        let mut out = format!("{}://{}/", self.transport, netlocs.join(","));
        if let Some(vhost) = self.virtual_host.as_deref().filter(|v| !v.is_empty()) {
            if vhost.contains('@') && !with_passwords {
                // Part of a misparsed password (see `parse`): never print it.
                out.push_str("***");
            } else {
                out.push_str(&quote(vhost, "/"));
            }
        }
        if !self.query.is_empty() {
            out.push('?');
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", quote_plus(k), quote_plus(v)))
                .collect();
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

impl fmt::Display for TransportUrl {
    /// oslo's URL form with every password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(false))
    }
}

impl FromStr for TransportUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TransportUrl::parse(s)
    }
}

/// `scheme:rest` as `urlsplit` finds it: a letter, then letters, digits, `+`, `-`, `.`.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
    let scheme = &text[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    Some((scheme, &text[colon + 1..]))
}

/// Best-effort redaction of a URL that may not parse: hide whatever sits between the first
/// `:` after `//` (or after a `,`) and the next `@`.
pub(crate) fn redact_raw(text: &str) -> String {
    let Some(start) = text.find("//") else { return text.to_string() };
    let (head, rest) = text.split_at(start + 2);
    // Credentials end at the last '@': a password may hold an unescaped '/', '?' or '#'.
    let Some(last_at) = rest.rfind('@') else { return text.to_string() };
    let (credentials, tail) = rest.split_at(last_at);
    let redacted: Vec<String> = credentials
        .split(',')
        .map(|piece| {
            let (creds, host) = match piece.rsplit_once('@') {
                Some((creds, host)) => (creds, Some(host)),
                None => (piece, None),
            };
            let creds = match creds.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => creds.to_string(),
            };
            match host {
                Some(host) => format!("{creds}@{host}"),
                None => creds,
            }
        })
        .collect();
    format!("{head}{}{tail}", redacted.join(","))
}

fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() => {
                let hex = &text[i + 1..i + 3];
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `urllib.parse.unquote`.
fn unquote(text: &str) -> String {
    percent_decode(text, false)
}

/// Python's `urllib.parse.unquote_plus` (as `parse_qs` uses).
fn unquote_plus(text: &str) -> String {
    percent_decode(text, true)
}

/// Python's `urllib.parse.quote(text, safe)`.
fn quote(text: &str, safe: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let ch = byte as char;
        if byte.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-' | '~') || (byte.is_ascii() && safe.contains(ch)) {
            out.push(ch);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Python's `urllib.parse.quote_plus` (as `urlencode` uses).
fn quote_plus(text: &str) -> String {
    quote(text, " ").replace(' ', "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: Option<&str>, port: Option<u16>, user: Option<&str>, pass: Option<&str>) -> TransportHost {
        TransportHost {
            hostname: name.map(str::to_string),
            port,
            username: user.map(str::to_string),
            password: pass.map(Secret::new),
        }
    }

    /// oslo.messaging `tests/test_urls.py::TestParseURL` scenarios.
    #[test]
    fn oslo_parse_scenarios() {
        let cases: Vec<(&str, &str, Option<&str>, Vec<TransportHost>)> = vec![
            ("transport", "foo:", None, vec![]),
            ("virtual_host_slash", "foo:////", Some("/"), vec![]),
            ("virtual_host", "foo:///bar", Some("bar"), vec![]),
            ("host", "foo://host/bar", Some("bar"), vec![host(Some("host"), None, None, None)]),
            (
                "ipv6_host",
                "foo://[ffff::1]/bar",
                Some("bar"),
                vec![host(Some("ffff::1"), None, None, None)],
            ),
            (
                "port",
                "foo://host:1234/bar",
                Some("bar"),
                vec![host(Some("host"), Some(1234), None, None)],
            ),
            (
                "ipv6_port",
                "foo://[ffff::1]:1234/bar",
                Some("bar"),
                vec![host(Some("ffff::1"), Some(1234), None, None)],
            ),
            (
                "username",
                "foo://u@host:1234/bar",
                Some("bar"),
                vec![host(Some("host"), Some(1234), Some("u"), None)],
            ),
            (
                "password",
                "foo://u:p@host:1234/bar",
                Some("bar"),
                vec![host(Some("host"), Some(1234), Some("u"), Some("p"))],
            ),
            (
                "creds_no_host",
                "foo://u:p@/bar",
                Some("bar"),
                vec![host(None, None, Some("u"), Some("p"))],
            ),
            (
                "multi_host",
                "foo://u:p@host1:1234,host2:4321/bar",
                Some("bar"),
                vec![
                    host(Some("host1"), Some(1234), Some("u"), Some("p")),
                    host(Some("host2"), Some(4321), None, None),
                ],
            ),
            (
                "multi_host_partial_creds",
                "foo://u:p@host1,host2/bar",
                Some("bar"),
                vec![
                    host(Some("host1"), None, Some("u"), Some("p")),
                    host(Some("host2"), None, None, None),
                ],
            ),
            (
                "multi_creds",
                "foo://u1:p1@host1:1234,u2:p2@host2:4321/bar",
                Some("bar"),
                vec![
                    host(Some("host1"), Some(1234), Some("u1"), Some("p1")),
                    host(Some("host2"), Some(4321), Some("u2"), Some("p2")),
                ],
            ),
            (
                "multi_creds_ipv6",
                "foo://u1:p1@[ffff::1]:1234,u2:p2@[ffff::2]:4321/bar",
                Some("bar"),
                vec![
                    host(Some("ffff::1"), Some(1234), Some("u1"), Some("p1")),
                    host(Some("ffff::2"), Some(4321), Some("u2"), Some("p2")),
                ],
            ),
            (
                "quoting",
                "foo://u%24:p%26@host:1234/%24",
                Some("$"),
                vec![host(Some("host"), Some(1234), Some("u$"), Some("p&"))],
            ),
        ];
        for (name, text, vhost, hosts) in cases {
            let url = TransportUrl::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(url.transport, "foo", "{name}");
            assert_eq!(url.virtual_host.as_deref(), vhost, "{name}");
            assert_eq!(url.hosts, hosts, "{name}");
        }
    }

    /// oslo.messaging `tests/test_urls.py::TestFormatURL` scenarios (with secrets exposed).
    #[test]
    fn oslo_format_scenarios() {
        let make = |vhost: Option<&str>, hosts: Vec<TransportHost>, query: &[(&str, &str)]| TransportUrl {
            transport: "testtransport".into(),
            virtual_host: vhost.map(str::to_string),
            hosts,
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let cases = vec![
            (make(None, vec![], &[]), "testtransport:///"),
            (make(Some("/vhost"), vec![], &[]), "testtransport:////vhost"),
            (make(Some("vhost"), vec![], &[("foo", "bar")]), "testtransport:///vhost?foo=bar"),
            (
                make(None, vec![host(Some("host"), Some(10), Some("bob"), Some("secret"))], &[]),
                "testtransport://bob:secret@host:10/",
            ),
            (
                make(None, vec![host(Some("ffff::1"), Some(10), Some("bob"), Some("secret"))], &[]),
                "testtransport://bob:secret@[ffff::1]:10/",
            ),
            (
                make(
                    Some("virtual_host"),
                    vec![
                        host(Some("host1"), Some(10), Some("bob1"), Some("secret1")),
                        host(Some("host2"), Some(20), Some("bob2"), Some("secret2")),
                    ],
                    &[],
                ),
                "testtransport://bob1:secret1@host1:10,bob2:secret2@host2:20/virtual_host",
            ),
            (
                make(Some("$"), vec![host(Some("host"), Some(10), Some("b$ob"), Some("s&ecret"))], &[]),
                "testtransport://b%24ob:s%26ecret@host:10/%24",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(url.expose_secrets(), expected);
            assert_eq!(
                TransportUrl::parse(expected).unwrap().expose_secrets(),
                expected,
                "re-parse of {expected}"
            );
        }
    }

    #[test]
    fn fake_forms_and_vhost_rules() {
        for text in ["fake:", "fake:/", "fake://", "fake://bus-a"] {
            let url = TransportUrl::parse(text).unwrap();
            assert_eq!(url.driver(), "fake", "{text}");
        }
        assert_eq!(TransportUrl::parse("fake:").unwrap().virtual_host, None);
        assert_eq!(TransportUrl::parse("fake:/").unwrap().virtual_host.as_deref(), Some(""));
        assert_eq!(TransportUrl::parse("rabbit://h/").unwrap().virtual_host.as_deref(), Some(""));
        assert_eq!(TransportUrl::parse("rabbit://h//").unwrap().virtual_host.as_deref(), Some("/"));
        assert_eq!(TransportUrl::parse("rabbit://h").unwrap().virtual_host, None);
    }

    #[test]
    fn documented_edge_case_from_the_spec() {
        // oslo-messaging.md §1.2: rabbit://u%40x:p%3Aw@[::1]:5673,h2//?ssl=1&ssl=0
        let url = TransportUrl::parse("rabbit://u%40x:p%3Aw@[::1]:5673,h2//?ssl=1&ssl=0").unwrap();
        assert_eq!(url.hosts[0], host(Some("::1"), Some(5673), Some("u@x"), Some("p:w")));
        assert_eq!(url.hosts[1], host(Some("h2"), None, None, None));
        assert_eq!(url.virtual_host.as_deref(), Some("/"));
        assert_eq!(url.query_value("ssl"), Some("1,0"));
    }

    #[test]
    fn multi_host_with_credentials_is_not_misparsed() {
        let url = TransportUrl::parse("rabbit://u:p@h1:5672,u:p@h2:5672/vhost").unwrap();
        assert_eq!(url.hosts.len(), 2);
        assert_eq!(url.hosts[0].hostname.as_deref(), Some("h1"));
        assert_eq!(url.hosts[1].password.as_ref().unwrap().expose(), "p");
        let url = TransportUrl::parse("amqp://h1:5672,h2:5672/").unwrap();
        assert_eq!(url.hosts.len(), 2);
        // Username containing '@' (rsplit on the last '@').
        let url = TransportUrl::parse("rabbit://me@corp:pw@h1/").unwrap();
        assert_eq!(url.hosts[0].username.as_deref(), Some("me@corp"));
    }

    #[test]
    fn driver_plus_transport_scheme() {
        let url = TransportUrl::parse("zmq+redis://127.0.0.1:6379").unwrap();
        assert_eq!(url.driver(), "zmq");
        assert_eq!(url.transport_variant(), Some("redis"));
        assert_eq!(url.transport, "zmq+redis");
    }

    #[test]
    fn passwords_never_print() {
        let url = TransportUrl::parse("rabbit://user:s3cr%40t@h1:5672,u2:hunter2@h2/").unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(url.expose_secrets().contains("s3cr%40t"));
        assert_eq!(url.hosts[0].password.as_ref().unwrap().expose(), "s3cr@t");
    }

    #[test]
    fn errors_are_typed_and_redacted() {
        let err = TransportUrl::parse("no-scheme-here").unwrap_err();
        assert!(matches!(err, Error::InvalidTransportUrl { .. }), "{err}");
        let err = TransportUrl::parse("rabbit://u:topsecret@h1:notaport/").unwrap_err();
        assert!(matches!(err, Error::InvalidTransportUrl { .. }), "{err}");
        assert!(!err.to_string().contains("topsecret"), "{err}");
        let err = TransportUrl::parse("rabbit://[ffff::1/").unwrap_err();
        assert!(err.to_string().contains("Invalid IPv6 URL"));
        // Found by fuzzing: host `[` printed as `u://[/`, which did not parse again.
        for text in ["u://[[]", "u://q@[[\u{1}]:5"] {
            let err = TransportUrl::parse(text).unwrap_err();
            assert!(err.to_string().contains("Invalid IPv6 URL"), "{text}: {err}");
        }
    }

    #[test]
    fn unescaped_slash_in_a_password_never_leaks_into_errors() {
        for text in [
            "rabbit://u:pa/ss@h/",
            "rabbit://u:p?a#ss@h1:5672/",
            "rabbit://u:ok@h1,u2:x/y:z@h2/v",
        ] {
            let shown = match TransportUrl::parse(text) {
                Ok(url) => format!("{url} {url:?}"),
                Err(err) => format!("{err} {err:?}"),
            };
            for fragment in ["pa/ss", "ss@", "p?a", "a#ss", "x/y"] {
                assert!(!shown.contains(fragment), "{text}: {shown}");
            }
        }
        assert_eq!(redact_raw("rabbit://u:ok@h1,u2:x/y:z@h2/v"), "rabbit://u:***@h1,u2:***@h2/v");
    }

    #[test]
    fn an_unescaped_password_that_ends_the_netloc_is_refused_without_printing_it() {
        for (text, secret) in [
            ("rabbit://guest:4242/S3cr3t@host/", "S3cr3t"),
            ("rabbit://guest:4242#S3cr3t@host/", "S3cr3t"),
            ("rabbit://guest:4242?S3cr3t@host/", "S3cr3t"),
            ("rabbit://u:ok@h1,u2:x/Y3z@h2/v", "Y3z"),
        ] {
            let err = TransportUrl::parse(text).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, Error::InvalidTransportUrl { .. }), "{text}: {shown}");
            assert!(shown.contains("percent-encoded"), "{text}: {shown}");
            assert!(!shown.contains(secret), "{text}: {shown}");
        }
        // Percent-encoded, the same password parses and stays hidden.
        let url = TransportUrl::parse("rabbit://guest:4242%2FS3cr3t@host/").unwrap();
        assert_eq!(url.hosts[0].password.as_ref().unwrap().expose(), "4242/S3cr3t");
        assert_eq!(url.to_string(), "rabbit://guest:***@host/");
        // A URL built by hand with such pieces still prints nothing of them.
        let mut url = TransportUrl::parse("rabbit://guest@host/").unwrap();
        url.virtual_host = Some("S3cr3t@host".into());
        url.hosts[0].hostname = Some("p@ss".into());
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("S3cr3t") && !shown.contains("p@ss"), "{shown}");
    }

    #[test]
    fn query_decoding() {
        let url = TransportUrl::parse("rabbit://h/?a=1&b=x+y&a=2&empty=&c=%2F").unwrap();
        assert_eq!(url.query_value("a"), Some("1,2"));
        assert_eq!(url.query_value("b"), Some("x y"));
        assert_eq!(url.query_value("empty"), None);
        assert_eq!(url.query_value("c"), Some("/"));
    }
}
