//! `Notifier` (oslo `notify/notifier.py` and its drivers).

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;

use super::{redact_context, utc_timestamp_now, Priority};
use crate::codec::JsonMap;
use crate::driver::Retry;
use crate::error::{Error, Result};
use crate::serializer::{NoOpSerializer, Serializer};
use crate::target::Target;
use crate::transport::Transport;

/// Where a notifier sends (oslo's notifier drivers).
#[derive(Debug, Clone)]
pub enum NotifierDriver {
    /// `messagingv2`: over the transport, in the 2.0 envelope (the default).
    MessagingV2,
    /// `messaging`: over the transport, without envelope (oslo's 1.0 format).
    Messaging,
    /// `log`: a `tracing` event per notification (target `oslo.messaging.notification`).
    Log,
    /// `noop`: nothing.
    Noop,
    /// `test`: kept in memory for assertions.
    Test(TestNotifications),
    /// `routing`: to other drivers by event type and priority.
    Routing(Arc<RoutingConfig>),
}

/// One notification kept by [`NotifierDriver::Test`].
#[derive(Debug, Clone, PartialEq)]
pub struct SentNotification {
    /// The (redacted) context.
    pub context: JsonMap,
    /// The message dict as it would be sent.
    pub message: JsonMap,
    /// Its priority.
    pub priority: Priority,
    /// The retry setting it was sent with.
    pub retry: Retry,
}

/// The in-memory sink of the `test` notifier driver; clone it to keep a handle.
#[derive(Debug, Clone, Default)]
pub struct TestNotifications {
    sent: Arc<Mutex<Vec<SentNotification>>>,
}

impl TestNotifications {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far.
    pub fn sent(&self) -> Vec<SentNotification> {
        self.sent.lock().expect("sink poisoned").clone()
    }

    /// Forget everything sent so far.
    pub fn clear(&self) {
        self.sent.lock().expect("sink poisoned").clear();
    }
}

/// The `routing` driver's configuration (oslo `routing_config` YAML):
///
/// ```yaml
/// group_1:
///   messagingv2:
///     accepted_events: ["compute.instance.*"]
///   log:
///     accepted_priorities: [error, critical]
/// ```
///
/// A notification goes to every driver (once) of every group whose rule accepts both its event
/// type (`fnmatch` patterns) and its priority; a rule without one of the lists accepts all.
#[derive(Debug, Clone, Default)]
pub struct RoutingConfig {
    rules: Vec<RoutingRule>,
}

#[derive(Debug, Clone)]
struct RoutingRule {
    driver: String,
    accepted_events: Option<Vec<String>>,
    accepted_priorities: Option<Vec<Priority>>,
}

#[derive(Deserialize)]
struct RawRule {
    accepted_events: Option<Vec<String>>,
    accepted_priorities: Option<Vec<String>>,
}

impl RoutingConfig {
    /// Parse oslo's routing YAML. Driver names: `messagingv2`, `messaging`, `log`, `noop`.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let raw: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Option<RawRule>>> =
            serde_yaml_ng::from_str(text).map_err(|e| Error::configuration("routing_config", e))?;
        let mut rules = Vec::new();
        for drivers in raw.into_values() {
            for (driver, rule) in drivers {
                if !matches!(driver.as_str(), "messagingv2" | "messaging" | "log" | "noop") {
                    return Err(Error::configuration(
                        "routing_config",
                        format!("unknown notifier driver {driver:?}"),
                    ));
                }
                let rule = rule.unwrap_or(RawRule {
                    accepted_events: None,
                    accepted_priorities: None,
                });
                let accepted_priorities = rule
                    .accepted_priorities
                    .map(|list| list.iter().map(|p| p.parse()).collect::<Result<Vec<Priority>>>())
                    .transpose()
                    .map_err(|e| Error::configuration("routing_config", e))?;
                rules.push(RoutingRule {
                    driver,
                    accepted_events: rule.accepted_events,
                    accepted_priorities,
                });
            }
        }
        Ok(RoutingConfig { rules })
    }

    /// Read and parse a routing YAML file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let text = std::fs::read_to_string(path.as_ref()).map_err(|e| Error::configuration("routing_config", e))?;
        Self::from_yaml(&text)
    }

    /// The drivers a notification of `event_type` at `priority` goes to.
    fn drivers_for(&self, event_type: &str, priority: Priority) -> Vec<NotifierDriver> {
        let mut names: Vec<&str> = Vec::new();
        for rule in &self.rules {
            let events_ok = rule
                .accepted_events
                .as_ref()
                .is_none_or(|patterns| patterns.iter().any(|p| fnmatch(p, event_type)));
            let priority_ok = rule.accepted_priorities.as_ref().is_none_or(|ps| ps.contains(&priority));
            if events_ok && priority_ok && !names.contains(&rule.driver.as_str()) {
                names.push(&rule.driver);
            }
        }
        names
            .into_iter()
            .map(|name| match name {
                "messagingv2" => NotifierDriver::MessagingV2,
                "messaging" => NotifierDriver::Messaging,
                "log" => NotifierDriver::Log,
                _ => NotifierDriver::Noop,
            })
            .collect()
    }
}

/// Python's `fnmatch.fnmatch` (case-sensitive form): `*`, `?`, `[seq]`, `[!seq]`.
pub(crate) fn fnmatch(pattern: &str, text: &str) -> bool {
    let mut regex = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            '[' => {
                let mut class = String::new();
                let mut closed = false;
                for next in chars.by_ref() {
                    if next == ']' && !class.is_empty() {
                        closed = true;
                        break;
                    }
                    class.push(next);
                }
                if closed {
                    let class = match class.strip_prefix('!') {
                        Some(rest) => format!("^{}", rest.replace('\\', "\\\\")),
                        None => class.replace('\\', "\\\\"),
                    };
                    regex.push_str(&format!("[{class}]"));
                } else {
                    regex.push_str(&regex::escape(&format!("[{class}")));
                }
            }
            other => regex.push_str(&regex::escape(&other.to_string())),
        }
    }
    regex.push('$');
    regex::Regex::new(&regex).map(|r| r.is_match(text)).unwrap_or(false)
}

/// Sends notifications (oslo `Notifier`).
///
/// ```
/// # async fn demo(transport: oslo_core::Transport) -> oslo_core::Result<()> {
/// use oslo_core::notify::Notifier;
/// use serde_json::json;
/// let notifier = Notifier::new(transport).publisher_id("compute.host1");
/// let ctxt = oslo_core::context(json!({"request_id": "req-1"}));
/// notifier.info(&ctxt, "compute.instance.create.end", json!({"instance_id": "i-1"})).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Notifier {
    transport: Transport,
    publisher_id: Option<String>,
    drivers: Vec<NotifierDriver>,
    topics: Vec<String>,
    retry: Retry,
    serializer: Arc<dyn Serializer>,
}

impl Notifier {
    /// A `messagingv2` notifier on topic `notifications`, retrying forever.
    pub fn new(transport: Transport) -> Self {
        Notifier {
            transport,
            publisher_id: None,
            drivers: vec![NotifierDriver::MessagingV2],
            topics: vec!["notifications".into()],
            retry: Retry::Forever,
            serializer: Arc::new(NoOpSerializer),
        }
    }

    /// A copy to override `publisher_id` / `retry` on (oslo `prepare`).
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// Who sends, e.g. `compute.host1`.
    pub fn publisher_id(mut self, publisher_id: impl Into<String>) -> Self {
        self.publisher_id = Some(publisher_id.into());
        self
    }

    /// Send with this one driver.
    pub fn driver(mut self, driver: NotifierDriver) -> Self {
        self.drivers = vec![driver];
        self
    }

    /// Send with each of these drivers.
    pub fn drivers(mut self, drivers: Vec<NotifierDriver>) -> Self {
        self.drivers = drivers;
        self
    }

    /// Send to these topics (default `["notifications"]`).
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Connection retries per send (default: forever).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Serializer for payload and context.
    pub fn serializer(mut self, serializer: Arc<dyn Serializer>) -> Self {
        self.serializer = serializer;
        self
    }

    /// Whether any driver would send something (oslo `is_enabled`).
    pub fn is_enabled(&self) -> bool {
        self.drivers.iter().any(|d| !matches!(d, NotifierDriver::Noop))
    }

    /// Send an `AUDIT` notification.
    pub async fn audit(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Audit, payload).await
    }

    /// Send a `DEBUG` notification.
    pub async fn debug(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Debug, payload).await
    }

    /// Send an `INFO` notification.
    pub async fn info(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Info, payload).await
    }

    /// Send a `WARN` notification (oslo `warn` / `warning`).
    pub async fn warn(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Warn, payload).await
    }

    /// Send an `ERROR` notification.
    pub async fn error(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Error, payload).await
    }

    /// Send a `CRITICAL` notification.
    pub async fn critical(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Critical, payload).await
    }

    /// Send a `SAMPLE` notification.
    pub async fn sample(&self, context: &JsonMap, event_type: &str, payload: Value) -> Result<()> {
        self.notify(context, event_type, Priority::Sample, payload).await
    }

    /// Send a notification at `priority` with every driver, to every topic.
    ///
    /// The message is oslo's: `message_id` (dashed uuid4), `publisher_id`, `event_type`,
    /// `priority` (upper case), `payload`, `timestamp` (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`);
    /// the context is sent redacted ([`super::redact_context`]). Unlike oslo, which only logs
    /// driver failures, the first failure is also returned.
    pub async fn notify(&self, context: &JsonMap, event_type: &str, priority: Priority, payload: Value) -> Result<()> {
        let context = redact_context(&self.serializer.serialize_context(context)?);
        let mut message = JsonMap::new();
        message.insert("message_id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        message.insert("publisher_id".into(), self.publisher_id.clone().map_or(Value::Null, Value::String));
        message.insert("event_type".into(), Value::String(event_type.to_string()));
        message.insert("priority".into(), Value::String(priority.as_upper().to_string()));
        message.insert("payload".into(), self.serializer.serialize_entity(&context, payload)?);
        message.insert("timestamp".into(), Value::String(utc_timestamp_now()));

        let mut first_error = None;
        for driver in &self.drivers {
            if let Err(err) = self.send_with(driver, &context, &message, event_type, priority).await {
                tracing::error!(error = %err, event_type, "could not send notification");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn send_with(
        &self,
        driver: &NotifierDriver,
        context: &JsonMap,
        message: &JsonMap,
        event_type: &str,
        priority: Priority,
    ) -> Result<()> {
        match driver {
            NotifierDriver::MessagingV2 | NotifierDriver::Messaging => {
                let envelope = matches!(driver, NotifierDriver::MessagingV2);
                for topic in &self.topics {
                    let target = Target::new(format!("{topic}.{}", priority.as_lower()));
                    self.transport
                        .driver()
                        .send_notification(&target, context, message, envelope, self.retry)
                        .await?;
                }
                Ok(())
            }
            NotifierDriver::Log => {
                let body = serde_json::to_string(message)?;
                match priority {
                    Priority::Debug => tracing::debug!(target: "oslo.messaging.notification", event_type, "{body}"),
                    Priority::Info | Priority::Audit | Priority::Sample => {
                        tracing::info!(target: "oslo.messaging.notification", event_type, "{body}")
                    }
                    Priority::Warn => tracing::warn!(target: "oslo.messaging.notification", event_type, "{body}"),
                    Priority::Error | Priority::Critical => tracing::error!(target: "oslo.messaging.notification", event_type, "{body}"),
                }
                Ok(())
            }
            NotifierDriver::Noop => Ok(()),
            NotifierDriver::Test(sink) => {
                sink.sent.lock().expect("sink poisoned").push(SentNotification {
                    context: context.clone(),
                    message: message.clone(),
                    priority,
                    retry: self.retry,
                });
                Ok(())
            }
            NotifierDriver::Routing(config) => {
                for routed in config.drivers_for(event_type, priority) {
                    Box::pin(self.send_with(&routed, context, message, event_type, priority)).await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        assert!(fnmatch("compute.instance.*", "compute.instance.create.end"));
        assert!(!fnmatch("compute.instance.*", "compute.volume"));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("[ab]x", "bx"));
        assert!(!fnmatch("[!ab]x", "bx"));
        assert!(fnmatch("*", ""));
    }

    #[test]
    fn routing_config_selects_drivers() {
        let config = RoutingConfig::from_yaml(
            "group_1:\n  messagingv2:\n    accepted_events: ['compute.*']\n  log:\n    accepted_priorities: [error]\ngroup_2:\n  log:\n    accepted_events: ['volume.*']\n",
        )
        .unwrap();
        let names = |event: &str, p: Priority| {
            let mut names: Vec<String> = config.drivers_for(event, p).iter().map(|d| format!("{d:?}")).collect();
            names.sort();
            names
        };
        assert_eq!(names("compute.start", Priority::Info), vec!["MessagingV2"]);
        assert_eq!(names("compute.start", Priority::Error), vec!["Log", "MessagingV2"]);
        assert_eq!(names("volume.attach", Priority::Info), vec!["Log"]);
        assert!(names("network.x", Priority::Info).is_empty());
        assert!(RoutingConfig::from_yaml("g:\n  carrier_pigeon: {}\n").is_err());
        assert!(RoutingConfig::from_yaml("not: [valid").is_err());
    }
}
