//! `Target`: where a message goes and what an endpoint serves (oslo `target.py`).

use std::fmt;

use crate::error::{Error, Result};

/// Identifies the destination of messages, and the interface an endpoint exposes.
///
/// Which fields matter depends on the use (oslo `Target` docstring):
/// * RPC server: `topic` and `server` are required; `exchange` is optional.
/// * RPC endpoint: `namespace` and `version`.
/// * RPC client: `topic` is required; everything else optional.
/// * Notifier and notification listener: `topic` (and optionally `exchange`).
///
/// ```
/// use oslo_core::Target;
/// let target = Target::new("compute").with_server("host1").with_version("1.2");
/// assert_eq!(target.topic.as_deref(), Some("compute"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Target {
    /// Scope for topics; `None` means the transport's `control_exchange` (default `openstack`).
    pub exchange: Option<String>,
    /// The set of interfaces a server exposes; messages go to one server on the topic.
    pub topic: Option<String>,
    /// Name of an RPC interface; `None` is the null namespace.
    pub namespace: Option<String>,
    /// Interface version, `"major.minor"`.
    pub version: Option<String>,
    /// A specific server on the topic.
    pub server: Option<String>,
    /// Deliver to every server on the topic (cast only).
    pub fanout: bool,
    /// Extra namespaces an endpoint also accepts (for renaming during rolling upgrades).
    pub legacy_namespaces: Vec<String>,
}

/// The operations a target is validated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetUse {
    /// `RpcClient::call`.
    Call,
    /// `RpcClient::cast` (including fanout).
    Cast,
    /// `RpcServer` / `Driver::listen`.
    Listen,
    /// Notifier and notification listener.
    Notify,
}

impl Target {
    /// A target for `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Target {
            topic: Some(topic.into()),
            ..Target::default()
        }
    }

    /// An endpoint target with a namespace and version (`Target(namespace=..., version=...)`).
    pub fn endpoint(namespace: Option<&str>, version: Option<&str>) -> Self {
        Target {
            namespace: namespace.map(str::to_string),
            version: version.map(str::to_string),
            ..Target::default()
        }
    }

    /// Copy with `exchange` set.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Copy with `topic` set.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Copy with `namespace` set.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Copy with `version` set.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Copy with `server` set.
    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Copy with `fanout` set.
    pub fn with_fanout(mut self, fanout: bool) -> Self {
        self.fanout = fanout;
        self
    }

    /// Copy with extra accepted namespaces.
    pub fn with_legacy_namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.legacy_namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// `[namespace] + legacy_namespaces`: the namespaces an endpoint with this target accepts.
    pub fn accepted_namespaces(&self) -> impl Iterator<Item = Option<&str>> {
        std::iter::once(self.namespace.as_deref()).chain(self.legacy_namespaces.iter().map(|n| Some(n.as_str())))
    }

    /// Check the target has what `usage` needs (oslo's `InvalidTarget` rules).
    pub fn validate(&self, usage: TargetUse) -> Result<()> {
        let topic_missing = self.topic.as_deref().is_none_or(str::is_empty);
        let fail = |reason: &str| {
            Err(Error::InvalidTarget {
                reason: reason.to_string(),
                target: self.to_string(),
            })
        };
        match usage {
            TargetUse::Call | TargetUse::Cast | TargetUse::Notify if topic_missing => fail("A topic is required to send or notify"),
            TargetUse::Call if self.fanout => fail("A call cannot be used with fanout"),
            TargetUse::Listen if topic_missing || self.server.as_deref().is_none_or(str::is_empty) => {
                fail("A server's target must have topic and server names specified")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, value) in [
            ("exchange", &self.exchange),
            ("topic", &self.topic),
            ("namespace", &self.namespace),
            ("version", &self.version),
            ("server", &self.server),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        if self.fanout {
            parts.push("fanout=true".into());
        }
        write!(f, "<Target {}>", parts.join(", "))
    }
}

/// A parsed `major.minor[.rev]` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major: must be equal for compatibility.
    pub major: u64,
    /// Minor: the requested minor must be `<=` the implemented one.
    pub minor: u64,
    /// Optional revision (compared only when the minors are equal).
    pub rev: u64,
}

impl Version {
    /// Parse `"1.2"` or `"1.2.3"`; a version without major and minor integers is an error.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Configuration {
            option: "version".into(),
            reason: format!("Version must contain a major and minor integer. Got {text}"),
        };
        let mut parts = text.split('.');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let rev = match parts.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Version { major, minor, rev })
    }
}

/// oslo `_utils.version_is_compatible(imp_version, version)`: can an implementation of
/// `implemented` serve a request for `requested`? Same major, requested minor `<=`, and when
/// the minors are equal, requested rev `<=`. Unparseable versions are incompatible.
pub fn version_is_compatible(implemented: &str, requested: &str) -> bool {
    let (Ok(imp), Ok(req)) = (Version::parse(implemented), Version::parse(requested)) else {
        return false;
    };
    imp.major == req.major && (req.minor < imp.minor || (req.minor == imp.minor && req.rev <= imp.rev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_rules_per_use() {
        assert!(Target::default().validate(TargetUse::Cast).is_err());
        assert!(Target::new("t").validate(TargetUse::Cast).is_ok());
        assert!(Target::new("t").with_fanout(true).validate(TargetUse::Cast).is_ok());
        let err = Target::new("t").with_fanout(true).validate(TargetUse::Call).unwrap_err();
        assert!(err.to_string().contains("fanout"), "{err}");
        assert!(Target::new("t").validate(TargetUse::Listen).is_err());
        assert!(Target::new("t").with_server("s").validate(TargetUse::Listen).is_ok());
        assert!(Target::new("").validate(TargetUse::Notify).is_err());
    }

    #[test]
    fn version_compatibility_matches_oslo() {
        assert!(version_is_compatible("1.0", "1.0"));
        assert!(version_is_compatible("1.5", "1.2"));
        assert!(!version_is_compatible("1.2", "1.5"));
        assert!(!version_is_compatible("2.0", "1.0"));
        assert!(!version_is_compatible("1.0", "2.0"));
        assert!(version_is_compatible("1.2.3", "1.2.1"));
        assert!(!version_is_compatible("1.2.1", "1.2.3"));
        assert!(version_is_compatible("1.3", "1.2.9"));
        assert!(!version_is_compatible("1.0", "x"));
        assert!(Version::parse("1").is_err());
    }

    #[test]
    fn accepted_namespaces_include_legacy() {
        let t = Target::endpoint(Some("new"), None).with_legacy_namespaces(["old"]);
        let ns: Vec<_> = t.accepted_namespaces().collect();
        assert_eq!(ns, vec![Some("new"), Some("old")]);
    }
}
