//! `NotificationListener` (oslo `notify/listener.py`, `dispatcher.py`, `filter.py`).

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use regex::Regex;
use serde_json::Value;

use super::{Notification, Priority};
use crate::driver::IncomingMessage;
use crate::error::{Error, Result};
use crate::serving::{ServeOptions, ServerHandle};
use crate::target::{Target, TargetUse};
use crate::transport::Transport;

/// What an endpoint did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotificationResult {
    /// Done: acknowledge it (oslo `HANDLED`).
    #[default]
    Handled,
    /// Deliver it again later (oslo `REQUEUE`; only with `allow_requeue`, else acknowledged).
    Requeue,
}

type HandlerFn = Arc<dyn Fn(Notification) -> BoxFuture<'static, NotificationResult> + Send + Sync>;
/// A batch handler: receives every notification of one priority in the batch.
pub type BatchHandlerFn = Arc<dyn Fn(Vec<Notification>) -> BoxFuture<'static, NotificationResult> + Send + Sync>;

/// Selects which notifications an endpoint sees (oslo `NotificationFilter`). Each pattern is a
/// regular expression matched at the start of the value (Python `re.match`); a missing key or
/// a non-string value does not match.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    publisher_id: Option<Regex>,
    event_type: Option<Regex>,
    context: Vec<(String, Regex)>,
    metadata: Vec<(String, Regex)>,
    payload: Vec<(String, Regex)>,
}

fn anchored(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})")).map_err(|e| Error::configuration("filter_rule", e))
}

fn string_matches(regex: &Regex, value: Option<&Value>) -> bool {
    value.and_then(Value::as_str).is_some_and(|text| regex.is_match(text))
}

impl NotificationFilter {
    /// A filter that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only notifications whose `publisher_id` matches.
    pub fn publisher_id(mut self, pattern: &str) -> Result<Self> {
        self.publisher_id = Some(anchored(pattern)?);
        Ok(self)
    }

    /// Only notifications whose `event_type` matches.
    pub fn event_type(mut self, pattern: &str) -> Result<Self> {
        self.event_type = Some(anchored(pattern)?);
        Ok(self)
    }

    /// Only notifications whose context key `key` matches.
    pub fn context(mut self, key: &str, pattern: &str) -> Result<Self> {
        self.context.push((key.to_string(), anchored(pattern)?));
        Ok(self)
    }

    /// Only notifications whose metadata key (`message_id`, `timestamp`) matches.
    pub fn metadata(mut self, key: &str, pattern: &str) -> Result<Self> {
        self.metadata.push((key.to_string(), anchored(pattern)?));
        Ok(self)
    }

    /// Only notifications whose payload key `key` matches.
    pub fn payload(mut self, key: &str, pattern: &str) -> Result<Self> {
        self.payload.push((key.to_string(), anchored(pattern)?));
        Ok(self)
    }

    /// Whether `notification` passes.
    pub fn matches(&self, notification: &Notification) -> bool {
        let text = |s: &str| Value::String(s.to_string());
        if let Some(regex) = &self.publisher_id {
            if !regex.is_match(&notification.publisher_id) {
                return false;
            }
        }
        if let Some(regex) = &self.event_type {
            if !regex.is_match(&notification.event_type) {
                return false;
            }
        }
        let metadata_value = |key: &str| match key {
            "message_id" => Some(text(&notification.metadata.message_id)),
            "timestamp" => Some(text(&notification.metadata.timestamp)),
            _ => None,
        };
        self.context.iter().all(|(k, r)| string_matches(r, notification.context.get(k)))
            && self.metadata.iter().all(|(k, r)| string_matches(r, metadata_value(k).as_ref()))
            && self.payload.iter().all(|(k, r)| string_matches(r, notification.payload.get(k)))
    }
}

/// Handlers for some priorities, with an optional filter (an oslo notification endpoint).
///
/// ```
/// use oslo_core::notify::{NotificationEndpoint, NotificationFilter, NotificationResult, Priority};
/// let endpoint = NotificationEndpoint::new()
///     .on(Priority::Info, |n| async move {
///         println!("{} from {}: {}", n.event_type, n.publisher_id, n.payload);
///         NotificationResult::Handled
///     })
///     .filter(NotificationFilter::new().event_type(r"compute\.instance\.").unwrap());
/// ```
#[derive(Clone, Default)]
pub struct NotificationEndpoint {
    handlers: Vec<(Priority, HandlerFn)>,
    batch_handlers: Vec<(Priority, BatchHandlerFn)>,
    filter: NotificationFilter,
}

impl fmt::Debug for NotificationEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationEndpoint")
            .field("priorities", &self.handlers.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .field("batch_priorities", &self.batch_handlers.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .field("filter", &self.filter)
            .finish()
    }
}

impl NotificationEndpoint {
    /// An endpoint without handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handle notifications of `priority` one at a time.
    pub fn on<F, Fut>(mut self, priority: Priority, handler: F) -> Self
    where
        F: Fn(Notification) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NotificationResult> + Send + 'static,
    {
        self.handlers.push((priority, Arc::new(move |n| handler(n).boxed())));
        self
    }

    /// Handle notifications of `priority` in batches (with [`NotificationListenerBuilder::batch`]).
    pub fn on_batch<F, Fut>(mut self, priority: Priority, handler: F) -> Self
    where
        F: Fn(Vec<Notification>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NotificationResult> + Send + 'static,
    {
        self.batch_handlers.push((priority, Arc::new(move |n| handler(n).boxed())));
        self
    }

    /// Only see notifications that pass `filter`.
    pub fn filter(mut self, filter: NotificationFilter) -> Self {
        self.filter = filter;
        self
    }

    fn priorities(&self) -> impl Iterator<Item = Priority> + '_ {
        self.handlers
            .iter()
            .map(|(p, _)| *p)
            .chain(self.batch_handlers.iter().map(|(p, _)| *p))
    }
}

/// Configures and starts a [`NotificationListener`].
#[derive(Debug)]
pub struct NotificationListenerBuilder {
    transport: Transport,
    targets: Vec<Target>,
    endpoints: Vec<NotificationEndpoint>,
    pool: Option<String>,
    allow_requeue: bool,
    batch: Option<(usize, Duration)>,
    executor_pool_size: usize,
}

impl NotificationListenerBuilder {
    /// Add an endpoint.
    pub fn endpoint(mut self, endpoint: NotificationEndpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Share notifications with the other listeners of this pool.
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// Honour [`NotificationResult::Requeue`] (oslo `allow_requeue`; default false).
    pub fn allow_requeue(mut self, allow: bool) -> Self {
        self.allow_requeue = allow;
        self
    }

    /// Deliver to batch handlers in batches of up to `size`, waiting at most `timeout` to fill
    /// one (oslo `get_batch_notification_listener`).
    pub fn batch(mut self, size: usize, timeout: Duration) -> Self {
        self.batch = Some((size.max(1), timeout));
        self
    }

    /// How many notifications (or batches) are handled at once (default 64).
    pub fn executor_pool_size(mut self, size: usize) -> Self {
        self.executor_pool_size = size.max(1);
        self
    }

    /// Subscribe to every `(target, priority)` some endpoint handles, and start.
    pub async fn start(self) -> Result<NotificationListener> {
        for target in &self.targets {
            target.validate(TargetUse::Notify)?;
        }
        let priorities: BTreeSet<Priority> = self.endpoints.iter().flat_map(|e| e.priorities()).collect();
        if priorities.is_empty() {
            return Err(Error::configuration("endpoints", "no endpoint handles any priority"));
        }
        let subscriptions: Vec<(Target, String)> = self
            .targets
            .iter()
            .flat_map(|t| priorities.iter().map(move |p| (t.clone(), p.as_lower().to_string())))
            .collect();
        let driver = self.transport.driver();
        let listener = self
            .transport
            .start_listening(
                "a notification listener",
                driver.listen_for_notifications(&subscriptions, self.pool.as_deref()),
            )
            .await?;
        let dispatcher = Arc::new(Dispatcher {
            endpoints: self.endpoints,
            allow_requeue: self.allow_requeue,
        });
        let span = tracing::info_span!("notification.listener", pool = self.pool.as_deref());
        let options = ServeOptions {
            pool_size: self.executor_pool_size,
            batch: self.batch,
        };
        let batched = self.batch.is_some();
        let handle = ServerHandle::spawn(
            listener,
            options,
            span,
            Arc::new(move |messages| {
                let dispatcher = dispatcher.clone();
                async move {
                    if batched {
                        dispatcher.dispatch_batch(messages).await;
                    } else {
                        for message in messages {
                            dispatcher.dispatch_one(message).await;
                        }
                    }
                }
                .boxed()
            }),
        );
        Ok(NotificationListener { handle })
    }
}

/// A running notification listener (oslo `get_notification_listener(...).start()`).
#[derive(Debug)]
#[must_use = "dropping a NotificationListener stops it: keep it, and call shutdown() to stop it cleanly"]
pub struct NotificationListener {
    handle: ServerHandle,
}

impl NotificationListener {
    /// Start configuring a listener on `targets` (topics; exchange optional).
    pub fn builder(transport: Transport, targets: Vec<Target>) -> NotificationListenerBuilder {
        NotificationListenerBuilder {
            transport,
            targets,
            endpoints: Vec::new(),
            pool: None,
            allow_requeue: false,
            batch: None,
            executor_pool_size: 64,
        }
    }

    /// Stop taking notifications; those taken are still handled.
    pub async fn stop(&self) {
        self.handle.stop().await;
    }

    /// Wait for the notifications taken to be handled, then release the subscriptions.
    pub async fn wait(&self) {
        self.handle.wait().await;
    }

    /// [`NotificationListener::stop`] then [`NotificationListener::wait`].
    pub async fn shutdown(&self) {
        self.stop().await;
        self.wait().await;
    }
}

struct Dispatcher {
    endpoints: Vec<NotificationEndpoint>,
    allow_requeue: bool,
}

impl Dispatcher {
    async fn run_catching(future: BoxFuture<'static, NotificationResult>) -> NotificationResult {
        // A panicking endpoint counts as REQUEUE, like an exception in oslo.
        std::panic::AssertUnwindSafe(future).catch_unwind().await.unwrap_or_else(|_| {
            tracing::error!("notification endpoint panicked");
            NotificationResult::Requeue
        })
    }

    /// Hand one notification to every endpoint that handles its priority and passes the filter.
    async fn dispatch_one(&self, message: Box<dyn IncomingMessage>) {
        let outcome = match Notification::from_message(message.message(), message.context()) {
            Err(err) => {
                tracing::warn!(error = %crate::clip::clip(&err.to_string()), "Unknown priority; dropping notification");
                NotificationResult::Handled
            }
            Ok(notification) => {
                let mut outcome = NotificationResult::Handled;
                for endpoint in &self.endpoints {
                    if !endpoint.filter.matches(&notification) {
                        continue;
                    }
                    for (_, handler) in endpoint.handlers.iter().filter(|(p, _)| *p == notification.priority) {
                        if Self::run_catching(handler(notification.clone())).await == NotificationResult::Requeue {
                            outcome = NotificationResult::Requeue;
                        }
                    }
                }
                outcome
            }
        };
        self.settle(&*message, outcome).await;
    }

    /// Hand a batch to the batch handlers, grouped by priority; a REQUEUE requeues that group.
    async fn dispatch_batch(&self, messages: Vec<Box<dyn IncomingMessage>>) {
        let mut parsed = Vec::new();
        for message in messages {
            match Notification::from_message(message.message(), message.context()) {
                Ok(notification) => parsed.push((message, notification)),
                Err(err) => {
                    tracing::warn!(error = %crate::clip::clip(&err.to_string()), "Unknown priority; dropping notification");
                    self.settle(&*message, NotificationResult::Handled).await;
                }
            }
        }
        for priority in Priority::ALL {
            let group: Vec<&(Box<dyn IncomingMessage>, Notification)> = parsed.iter().filter(|(_, n)| n.priority == priority).collect();
            if group.is_empty() {
                continue;
            }
            let mut outcome = NotificationResult::Handled;
            for endpoint in &self.endpoints {
                let batch: Vec<Notification> = group
                    .iter()
                    .map(|(_, n)| n.clone())
                    .filter(|n| endpoint.filter.matches(n))
                    .collect();
                if batch.is_empty() {
                    continue;
                }
                for (_, handler) in endpoint.batch_handlers.iter().filter(|(p, _)| *p == priority) {
                    if Self::run_catching(handler(batch.clone())).await == NotificationResult::Requeue {
                        outcome = NotificationResult::Requeue;
                    }
                }
                for (_, handler) in endpoint.handlers.iter().filter(|(p, _)| *p == priority) {
                    for notification in &batch {
                        if Self::run_catching(handler(notification.clone())).await == NotificationResult::Requeue {
                            outcome = NotificationResult::Requeue;
                        }
                    }
                }
            }
            for (message, _) in group {
                self.settle(&**message, outcome).await;
            }
        }
    }

    async fn settle(&self, message: &dyn IncomingMessage, outcome: NotificationResult) {
        let result = if outcome == NotificationResult::Requeue && self.allow_requeue {
            message.requeue().await
        } else {
            message.acknowledge().await
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not settle a notification");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Notification {
        Notification::from_message(
            &crate::context(json!({
                "message_id": "m-1", "publisher_id": "compute.host1", "event_type": "compute.instance.create.end",
                "priority": "INFO", "payload": {"state": "active", "n": 1}, "timestamp": "2026-11-25 10:00:00"
            })),
            &crate::context(json!({"project_id": "p-42"})),
        )
        .unwrap()
    }

    #[test]
    fn filters_match_at_the_start_like_re_match() {
        let n = sample();
        assert!(NotificationFilter::new().matches(&n));
        assert!(NotificationFilter::new().event_type(r"compute\.instance").unwrap().matches(&n));
        assert!(
            !NotificationFilter::new().event_type(r"instance").unwrap().matches(&n),
            "anchored at start"
        );
        assert!(NotificationFilter::new().publisher_id("compute").unwrap().matches(&n));
        assert!(NotificationFilter::new().context("project_id", "p-4").unwrap().matches(&n));
        assert!(
            !NotificationFilter::new().context("user_id", ".*").unwrap().matches(&n),
            "missing key"
        );
        assert!(NotificationFilter::new().payload("state", "act").unwrap().matches(&n));
        assert!(
            !NotificationFilter::new().payload("n", ".*").unwrap().matches(&n),
            "non-string value"
        );
        assert!(NotificationFilter::new().metadata("message_id", "m-").unwrap().matches(&n));
        assert!(NotificationFilter::new().event_type("(").is_err());
    }
}
