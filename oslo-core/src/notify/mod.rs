//! Notifications: [`Notifier`] and [`NotificationListener`] (oslo `notify/`).
//!
//! A notifier publishes `{message_id, publisher_id, event_type, priority, payload, timestamp}`
//! to `<topic>.<priority>` for each of its topics; listeners subscribe to `(target, priority)`
//! pairs, optionally in a pool (listeners of one pool share the work; every pool, and the
//! pool-less listeners, get every notification).

mod listener;
mod notifier;

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::codec::JsonMap;
use crate::error::{Error, Result};

pub use listener::{
    BatchHandlerFn, NotificationEndpoint, NotificationFilter, NotificationListener, NotificationListenerBuilder, NotificationResult,
};
pub use notifier::{Notifier, NotifierDriver, RoutingConfig, SentNotification, TestNotifications};

/// A notification priority (oslo's `audit` ... `sample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// `AUDIT`
    Audit,
    /// `DEBUG`
    Debug,
    /// `INFO`
    Info,
    /// `WARN` (oslo's `warn` and `warning`)
    Warn,
    /// `ERROR`
    Error,
    /// `CRITICAL`
    Critical,
    /// `SAMPLE`
    Sample,
}

impl Priority {
    /// Every priority, in oslo's `PRIORITIES` order.
    pub const ALL: [Priority; 7] = [
        Priority::Audit,
        Priority::Debug,
        Priority::Info,
        Priority::Warn,
        Priority::Error,
        Priority::Critical,
        Priority::Sample,
    ];

    /// Upper case, as in the message body (`"INFO"`).
    pub fn as_upper(self) -> &'static str {
        match self {
            Priority::Audit => "AUDIT",
            Priority::Debug => "DEBUG",
            Priority::Info => "INFO",
            Priority::Warn => "WARN",
            Priority::Error => "ERROR",
            Priority::Critical => "CRITICAL",
            Priority::Sample => "SAMPLE",
        }
    }

    /// Lower case, as in routing keys and queue names (`"info"`).
    pub fn as_lower(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_upper())
    }
}

impl FromStr for Priority {
    type Err = Error;
    /// Case-insensitive; `warning` is accepted for `warn`.
    fn from_str(text: &str) -> Result<Self> {
        let lower = text.to_ascii_lowercase();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_lower() == lower)
            .or((lower == "warning").then_some(Priority::Warn))
            .ok_or_else(|| Error::invalid_message(format!("unknown notification priority {text:?}")))
    }
}

/// `message_id` and `timestamp` of a received notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationMetadata {
    /// The notification's `message_id` (a dashed uuid).
    pub message_id: String,
    /// The notification's `timestamp` (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC).
    pub timestamp: String,
}

/// A received notification, as a listener endpoint sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The sender's context.
    pub context: JsonMap,
    /// Who sent it, e.g. `compute.host1`.
    pub publisher_id: String,
    /// What happened, e.g. `compute.instance.create.end`.
    pub event_type: String,
    /// Its priority.
    pub priority: Priority,
    /// The payload.
    pub payload: Value,
    /// `message_id` and `timestamp`.
    pub metadata: NotificationMetadata,
}

impl Notification {
    /// Read a notification from a received message dict and context.
    pub fn from_message(message: &JsonMap, context: &JsonMap) -> Result<Self> {
        let text = |key: &str| message.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let priority: Priority = text("priority").parse()?;
        Ok(Notification {
            context: context.clone(),
            publisher_id: text("publisher_id"),
            event_type: text("event_type"),
            priority,
            payload: message.get("payload").cloned().unwrap_or(Value::Null),
            metadata: NotificationMetadata {
                message_id: text("message_id"),
                timestamp: text("timestamp"),
            },
        })
    }
}

/// The current UTC time as Python's `str(datetime.utcnow())`: `2026-11-24 14:32:39.583330`,
/// without the fraction when the microseconds are zero.
pub fn utc_timestamp_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_timestamp(now.as_secs() as i64, now.subsec_micros())
}

/// Format seconds since the epoch plus microseconds like Python's `str(datetime)`.
pub fn format_timestamp(epoch_seconds: i64, micros: u32) -> String {
    let days = epoch_seconds.div_euclid(86_400);
    let secs_of_day = epoch_seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs_of_day / 3600, secs_of_day % 3600 / 60, secs_of_day % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}");
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    out
}

/// Context keys oslo.context's `redacted_copy()` clears before a context is sent in a
/// notification.
pub const REDACTED_CONTEXT_KEYS: &[&str] = &["auth_token", "service_token", "auth_token_info", "password", "secret"];

/// A copy of `context` with secrets set to null (oslo.context `redacted_copy()`): the keys in
/// [`REDACTED_CONTEXT_KEYS`], and any key whose name contains `password`, `secret` or `token`.
pub fn redact_context(context: &JsonMap) -> JsonMap {
    context
        .iter()
        .map(|(key, value)| {
            let lower = key.to_ascii_lowercase();
            let secret =
                REDACTED_CONTEXT_KEYS.contains(&lower.as_str()) || ["password", "secret", "token"].iter().any(|word| lower.contains(word));
            (key.clone(), if secret { Value::Null } else { value.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_python_str_datetime() {
        assert_eq!(format_timestamp(0, 0), "1970-01-01 00:00:00");
        // 2026-11-24 14:38:26.341075 UTC (from the wire capture).
        assert_eq!(format_timestamp(1_795_531_106, 341_075), "2026-11-24 14:38:26.341075");
        assert_eq!(format_timestamp(951_782_400, 5), "2000-02-29 00:00:00.000005");
        let now = utc_timestamp_now();
        assert!(now.len() == 19 || now.len() == 26, "{now}");
    }

    #[test]
    fn priorities_parse_and_print() {
        assert_eq!("info".parse::<Priority>().unwrap(), Priority::Info);
        assert_eq!("WARNING".parse::<Priority>().unwrap(), Priority::Warn);
        assert!("loud".parse::<Priority>().is_err());
        assert_eq!(Priority::Sample.as_upper(), "SAMPLE");
    }

    #[test]
    fn redaction_clears_secrets_only() {
        let ctx = crate::context(serde_json::json!({"user": "u", "auth_token": "t", "keystone_password": "p", "roles": ["a"]}));
        let red = redact_context(&ctx);
        assert_eq!(red["user"], "u");
        assert_eq!(red["roles"], serde_json::json!(["a"]));
        assert!(red["auth_token"].is_null());
        assert!(red["keystone_password"].is_null());
    }
}
