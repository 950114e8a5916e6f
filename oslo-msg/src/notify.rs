//! `notify` and `listen`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oslo_messaging::notify::redact_context;
use oslo_messaging::{
    JsonMap, Notification, NotificationEndpoint, NotificationFilter, NotificationListener, NotificationResult, Notifier, Priority, Retry,
    Target, Transport,
};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::failure::{Exit, Failure};
use crate::style::Paint;

/// One notification to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `publisher_id`, e.g. `compute.host1`.
    pub publisher_id: String,
    /// `event_type`, e.g. `compute.instance.create.end`.
    pub event_type: String,
    /// Priority.
    pub priority: Priority,
    /// Payload.
    pub payload: Value,
    /// Topics (`notifications` by default).
    pub topics: Vec<String>,
    /// Context sent along (redacted by the notifier).
    pub context: JsonMap,
    /// How long to wait for the broker.
    pub timeout: Duration,
    /// Connection retries.
    pub retry: Retry,
}

/// Send one notification.
pub async fn notify(transport: &Transport, outgoing: Outgoing) -> Result<(), Failure> {
    let doing = format!(
        "notify {} {} to {}",
        outgoing.priority,
        outgoing.event_type,
        outgoing.topics.join(",")
    );
    let notifier = Notifier::new(transport.clone())
        .publisher_id(outgoing.publisher_id.clone())
        .topics(outgoing.topics.clone())
        .retry(outgoing.retry);
    let sent = notifier.notify(&outgoing.context, &outgoing.event_type, outgoing.priority, outgoing.payload);
    tokio::time::timeout(outgoing.timeout, sent)
        .await
        .map_err(|_| {
            Failure::new(
                Exit::Timeout,
                format!("{doing}: the broker did not take it within {:.1}s", outgoing.timeout.as_secs_f64()),
            )
        })?
        .map_err(|e| Failure::messaging(&doing, e))?;
    eprintln!("{doing}: sent");
    Ok(())
}

/// How `listen` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `pretty` on a terminal, `json` otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// One readable (colored) line per notification.
    Pretty,
}

/// What to listen to.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Topics (`notifications` by default).
    pub topics: Vec<String>,
    /// Exchange of the topics (`None`: the control exchange).
    pub exchange: Option<String>,
    /// Priorities (every priority when empty).
    pub priorities: Vec<Priority>,
    /// Listener pool: its own queue, so other consumers keep getting theirs.
    pub pool: Option<String>,
    /// Only notifications whose event type matches this regular expression.
    pub event_type: Option<String>,
    /// Only notifications whose publisher id matches this regular expression.
    pub publisher_id: Option<String>,
    /// Stop after this many.
    pub count: Option<u64>,
    /// Stop after this long.
    pub timeout: Option<Duration>,
    /// Output format.
    pub format: Format,
}

/// Tail notifications until `count` arrived, `timeout` passed or Ctrl-C.
pub async fn listen(transport: &Transport, subscription: Subscription) -> Result<(), Failure> {
    let priorities = if subscription.priorities.is_empty() {
        Priority::ALL.to_vec()
    } else {
        subscription.priorities.clone()
    };
    let mut filter = NotificationFilter::new();
    if let Some(pattern) = &subscription.event_type {
        filter = filter
            .event_type(pattern)
            .map_err(|e| Failure::usage(format!("--event-type: {e}")))?;
    }
    if let Some(pattern) = &subscription.publisher_id {
        filter = filter
            .publisher_id(pattern)
            .map_err(|e| Failure::usage(format!("--publisher-id: {e}")))?;
    }

    let (sender, mut received) = mpsc::unbounded_channel::<Notification>();
    let taken = Arc::new(AtomicU64::new(0));
    let mut endpoint = NotificationEndpoint::new().filter(filter);
    for priority in &priorities {
        let sender = sender.clone();
        let taken = taken.clone();
        let limit = subscription.count;
        endpoint = endpoint.on(*priority, move |notification| {
            // Past --count, hand notifications back to the broker instead of dropping them.
            let over = limit.is_some_and(|limit| taken.fetch_add(1, Ordering::SeqCst) >= limit);
            let result = if over || sender.send(notification).is_err() {
                NotificationResult::Requeue
            } else {
                NotificationResult::Handled
            };
            async move { result }
        });
    }
    drop(sender);
    let targets: Vec<Target> = subscription
        .topics
        .iter()
        .map(|topic| match &subscription.exchange {
            Some(exchange) => Target::new(topic.clone()).with_exchange(exchange.clone()),
            None => Target::new(topic.clone()),
        })
        .collect();
    let mut builder = NotificationListener::builder(transport.clone(), targets)
        .endpoint(endpoint)
        .allow_requeue(true)
        // One at a time, so they print in the order they arrive.
        .executor_pool_size(1);
    if let Some(pool) = &subscription.pool {
        builder = builder.pool(pool.clone());
    }
    // The transport's start_timeout bounds the start, with the broker's error.
    let listener = builder.start().await.map_err(|e| Failure::messaging("listen", e))?;
    crate::logging::started();
    eprintln!(
        "listening on {} for {} (Ctrl-C to stop)",
        subscription.topics.join(","),
        priorities.iter().map(|p| p.as_lower()).collect::<Vec<_>>().join(",")
    );

    let format = match subscription.format {
        Format::Auto if std::io::stdout().is_terminal() => Format::Pretty,
        Format::Auto => Format::Json,
        other => other,
    };
    let paint = Paint::for_stream(std::io::stdout().is_terminal());
    // Both made once, outside the loop: a signal handler registered anew each turn would miss
    // a Ctrl-C that arrives while a notification is being printed.
    let deadline = subscription.timeout.map(|t| tokio::time::Instant::now() + t);
    let until_deadline = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let stop = crate::stopped();
    tokio::pin!(until_deadline, stop);
    let mut printed: u64 = 0;
    let mut timed_out = false;
    loop {
        if subscription.count.is_some_and(|count| printed >= count) {
            break;
        }
        tokio::select! {
            next = received.recv() => match next {
                Some(notification) => {
                    print_notification(&notification, format, &paint);
                    printed += 1;
                }
                None => break,
            },
            () = &mut until_deadline => {
                timed_out = true;
                break;
            }
            () = &mut stop => break,
        }
    }
    listener.shutdown().await;
    match subscription.count {
        Some(count) if timed_out && printed < count => Err(Failure::new(
            Exit::Timeout,
            format!(
                "listen: {printed} of {count} notifications within {:.1}s",
                subscription.timeout.unwrap_or_default().as_secs_f64()
            ),
        )),
        _ => Ok(()),
    }
}

/// The JSON line `listen` prints for a notification (context redacted).
pub fn notification_json(notification: &Notification) -> Value {
    let mut line = JsonMap::new();
    line.insert("timestamp".into(), notification.metadata.timestamp.clone().into());
    line.insert("priority".into(), notification.priority.as_upper().into());
    line.insert("publisher_id".into(), notification.publisher_id.clone().into());
    line.insert("event_type".into(), notification.event_type.clone().into());
    line.insert("message_id".into(), notification.metadata.message_id.clone().into());
    line.insert("payload".into(), notification.payload.clone());
    line.insert("context".into(), Value::Object(redact_context(&notification.context)));
    Value::Object(line)
}

fn print_notification(notification: &Notification, format: Format, paint: &Paint) {
    let text = match format {
        Format::Pretty => format!(
            "{} {} {} {} {}",
            paint.dim(&notification.metadata.timestamp),
            paint.priority(notification.priority.as_upper()),
            paint.name(&notification.publisher_id),
            paint.bold(&notification.event_type),
            notification.payload
        ),
        _ => notification_json(notification).to_string(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
