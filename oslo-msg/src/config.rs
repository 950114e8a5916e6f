//! oslo.config files (`--config-file nova.conf`) and where the transport comes from.
//!
//! The file format is oslo.config's INI dialect: `[section]` headers, `key = value` (or
//! `key: value`) lines, `#` and `;` comment lines, indented continuation lines, matching
//! quotes around a value stripped, a repeated key keeping its last value, and later files
//! overriding earlier ones. `$var` interpolation is not supported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oslo_messaging::{driver_amqp1, driver_rabbit, driver_zmq, TransportConfig, TransportUrl};

use crate::failure::Failure;

/// The environment variable a transport URL may come from.
pub const URL_VARIABLE: &str = "OSLO_TRANSPORT_URL";

/// Parsed oslo.config files: section → option → value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OsloConfig {
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl OsloConfig {
    /// Parse one file's text; `origin` names it in errors.
    #[cfg(test)]
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let mut config = OsloConfig::default();
        config.merge_text(text, origin)?;
        Ok(config)
    }

    /// Read and merge `paths` in order (later files win).
    pub fn load(paths: &[PathBuf]) -> Result<Self, String> {
        let mut config = OsloConfig::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            config.merge_text(&text, &path.display().to_string())?;
        }
        Ok(config)
    }

    fn merge_text(&mut self, text: &str, origin: &str) -> Result<(), String> {
        let mut section: Option<String> = None;
        // The option the last line set, for indented continuation lines.
        let mut last_key: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                last_key = None;
                continue;
            }
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if raw.starts_with(char::is_whitespace) {
                // Never echo the line: it may hold a password.
                let (Some(section), Some(key)) = (&section, &last_key) else {
                    return Err(format!("{origin}:{line_no}: indented line outside an option value"));
                };
                let value = self.sections.entry(section.clone()).or_default().entry(key.clone()).or_default();
                value.push('\n');
                value.push_str(trimmed);
                continue;
            }
            if let Some(name) = trimmed.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| format!("{origin}:{line_no}: bad section header"))?;
                section = Some(name.to_string());
                last_key = None;
                continue;
            }
            let Some(section) = &section else {
                return Err(format!("{origin}:{line_no}: option before any [section] header"));
            };
            let split = trimmed
                .find(['=', ':'])
                .ok_or_else(|| format!("{origin}:{line_no}: expected `name = value`"))?;
            let key = trimmed[..split].trim().replace('-', "_");
            if key.is_empty() {
                return Err(format!("{origin}:{line_no}: option without a name"));
            }
            if key.contains(char::is_whitespace) {
                return Err(format!("{origin}:{line_no}: expected `name = value`"));
            }
            let value = unquote(trimmed[split + 1..].trim()).to_string();
            self.sections.entry(section.clone()).or_default().insert(key.clone(), value);
            last_key = Some(key);
        }
        Ok(())
    }

    /// The value of `option` in `section`.
    pub fn get(&self, section: &str, option: &str) -> Option<&str> {
        self.sections.get(section)?.get(option).map(String::as_str)
    }

    /// Every option of `section`.
    pub fn section(&self, section: &str) -> BTreeMap<String, String> {
        self.sections.get(section).cloned().unwrap_or_default()
    }
}

fn unquote(value: &str) -> &str {
    let bytes = value.as_bytes();
    if bytes.len() >= 2 && bytes[0] == bytes[bytes.len() - 1] && (bytes[0] == b'"' || bytes[0] == b'\'') {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

/// The options group a driver reads from the config file, as each driver crate declares it.
fn driver_group(driver: &str) -> Option<&'static str> {
    [
        (driver_rabbit::SCHEMES, driver_rabbit::GROUP),
        (driver_amqp1::SCHEMES, driver_amqp1::GROUP),
        (driver_zmq::SCHEMES, driver_zmq::GROUP),
    ]
    .into_iter()
    .find(|(schemes, _)| schemes.contains(&driver))
    .map(|(_, group)| group)
}

/// Where the transport comes from: config files and the environment.
#[derive(Debug, Default)]
pub struct Settings {
    config: OsloConfig,
    has_files: bool,
}

impl Settings {
    /// Read the `--config-file`s (blocking: call before the async runtime starts).
    pub fn load(paths: &[PathBuf]) -> Result<Self, Failure> {
        let config = OsloConfig::load(paths).map_err(Failure::config)?;
        Ok(Settings {
            config,
            has_files: !paths.is_empty(),
        })
    }

    /// The transport URL: the argument, else `[DEFAULT] transport_url`, else `$OSLO_TRANSPORT_URL`.
    pub fn url(&self, argument: Option<String>) -> Result<String, Failure> {
        if let Some(url) = argument {
            return Ok(url);
        }
        if let Some(url) = self.config.get("DEFAULT", "transport_url").filter(|u| !u.is_empty()) {
            return Ok(url.to_string());
        }
        if let Some(url) = std::env::var(URL_VARIABLE).ok().filter(|u| !u.trim().is_empty()) {
            return Ok(url);
        }
        let hint = if self.has_files {
            "the config files have no [DEFAULT] transport_url"
        } else {
            "give it as the first argument, use --config-file, or set OSLO_TRANSPORT_URL"
        };
        Err(Failure::usage(format!("no transport URL: {hint}")))
    }

    /// The transport-wide settings for `url`: `[DEFAULT] control_exchange` and
    /// `rpc_response_timeout`, and the driver's own group as driver options.
    pub fn transport_config(&self, url: &str) -> Result<TransportConfig, Failure> {
        let parsed = TransportUrl::parse(url).map_err(Failure::from_error)?;
        let mut config = TransportConfig::default();
        if let Some(exchange) = self.config.get("DEFAULT", "control_exchange").filter(|e| !e.is_empty()) {
            config.control_exchange = exchange.to_string();
        }
        if let Some(timeout) = self.rpc_response_timeout()? {
            config.rpc_response_timeout = timeout;
        }
        if let Some(group) = driver_group(parsed.driver()) {
            config.driver_options = self.config.section(group);
        }
        Ok(config)
    }

    /// `[DEFAULT] rpc_response_timeout`, when a config file sets it.
    pub fn rpc_response_timeout(&self) -> Result<Option<Duration>, Failure> {
        match self.config.get("DEFAULT", "rpc_response_timeout") {
            None => Ok(None),
            Some(text) => crate::args::parse_seconds(text)
                .map(Some)
                .map_err(|e| Failure::config(format!("[DEFAULT] rpc_response_timeout: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA_CONF: &str = r#"
# nova.conf excerpt
[DEFAULT]
transport_url = rabbit://nova:s3cret@rabbit1:5672,nova:s3cret@rabbit2:5672/nova
control_exchange = nova
rpc_response_timeout: 90
debug = True

[oslo_messaging_rabbit]
; comment
rabbit_qos_prefetch_count = "10"
heartbeat-timeout-threshold = 30
amqp_durable_queues = 'true'

[oslo_messaging_notifications]
driver = messagingv2
topics = notifications,
  versioned_notifications
"#;

    #[test]
    fn oslo_config_dialect() {
        let config = OsloConfig::parse(NOVA_CONF, "nova.conf").unwrap();
        assert_eq!(
            config.get("DEFAULT", "transport_url"),
            Some("rabbit://nova:s3cret@rabbit1:5672,nova:s3cret@rabbit2:5672/nova")
        );
        assert_eq!(config.get("DEFAULT", "rpc_response_timeout"), Some("90"));
        assert_eq!(config.get("oslo_messaging_rabbit", "rabbit_qos_prefetch_count"), Some("10"));
        assert_eq!(config.get("oslo_messaging_rabbit", "heartbeat_timeout_threshold"), Some("30"));
        assert_eq!(config.get("oslo_messaging_rabbit", "amqp_durable_queues"), Some("true"));
        assert_eq!(
            config.get("oslo_messaging_notifications", "topics"),
            Some("notifications,\nversioned_notifications")
        );
        assert_eq!(config.get("DEFAULT", "missing"), None);
    }

    #[test]
    fn errors_name_the_line_but_never_echo_it() {
        let err = OsloConfig::parse("transport_url = rabbit://u:hunter2@h/\n", "x.conf").unwrap_err();
        assert_eq!(err, "x.conf:1: option before any [section] header");
        let err = OsloConfig::parse("[DEFAULT]\npassword hunter2\n", "x.conf").unwrap_err();
        assert_eq!(err, "x.conf:2: expected `name = value`");
        let err = OsloConfig::parse("[DEFAULT]\ntransport_url rabbit://u:hunter2@h/\n", "x.conf").unwrap_err();
        assert_eq!(err, "x.conf:2: expected `name = value`");
        assert!(OsloConfig::parse("[DEFAULT\n", "x.conf").unwrap_err().contains("section header"));
    }

    #[test]
    fn driver_options_come_from_the_driver_group_only() {
        let settings = Settings {
            config: OsloConfig::parse(NOVA_CONF, "nova.conf").unwrap(),
            has_files: true,
        };
        let url = settings.url(None).unwrap();
        let config = settings.transport_config(&url).unwrap();
        assert_eq!(config.control_exchange, "nova");
        assert_eq!(config.rpc_response_timeout, Duration::from_secs(90));
        assert_eq!(config.driver_options["rabbit_qos_prefetch_count"], "10");
        assert_eq!(config.driver_options.len(), 3);
        let fake = settings.transport_config("fake://bus").unwrap();
        assert!(fake.driver_options.is_empty());
        assert_eq!(fake.control_exchange, "nova");
        // The argument wins over the file.
        assert_eq!(settings.url(Some("fake:".into())).unwrap(), "fake:");
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let mut config = OsloConfig::parse("[DEFAULT]\ncontrol_exchange = nova\nrpc_response_timeout = 60\n", "a").unwrap();
        config.merge_text("[DEFAULT]\ncontrol_exchange = cinder\n", "b").unwrap();
        assert_eq!(config.get("DEFAULT", "control_exchange"), Some("cinder"));
        assert_eq!(config.get("DEFAULT", "rpc_response_timeout"), Some("60"));
    }
}
