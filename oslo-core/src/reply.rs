//! Matching replies to waiting callers, shared by every driver (oslo `ReplyWaiter`).
//!
//! A driver registers a waiter per `_msg_id` before publishing a call, hands every reply it
//! receives to [`ReplyWaiters::deliver`], and awaits [`PendingReply::wait`], which enforces both
//! the overall timeout and the call-monitor timeout (reset by heartbeats only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec::Reply;
use crate::error::{Error, Result};

/// The table of calls waiting for a reply, keyed by `_msg_id`.
#[derive(Debug, Default, Clone)]
pub struct ReplyWaiters {
    waiting: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>>,
}

impl ReplyWaiters {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `msg_id`; the returned handle receives its replies and unregisters on drop.
    pub fn register(&self, msg_id: impl Into<String>) -> PendingReply {
        let msg_id = msg_id.into();
        let (sender, receiver) = mpsc::unbounded_channel();
        self.waiting.lock().expect("reply table poisoned").insert(msg_id.clone(), sender);
        PendingReply {
            waiters: self.clone(),
            msg_id,
            receiver,
        }
    }

    /// Route a reply to its caller. Returns `false` (and logs) when nobody waits for it any more.
    pub fn deliver(&self, reply: Reply) -> bool {
        let table = self.waiting.lock().expect("reply table poisoned");
        match table.get(&reply.msg_id) {
            Some(sender) => sender.send(reply).is_ok(),
            None => {
                tracing::info!(msg_id = %reply.msg_id, "No calling threads waiting for msg_id");
                false
            }
        }
    }

    /// How many calls are waiting.
    pub fn len(&self) -> usize {
        self.waiting.lock().expect("reply table poisoned").len()
    }

    /// Whether no call is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fail every waiting call at once (e.g. the reply queue was lost for good).
    pub fn clear(&self) {
        self.waiting.lock().expect("reply table poisoned").clear();
    }
}

/// One call waiting for its reply.
#[derive(Debug)]
pub struct PendingReply {
    waiters: ReplyWaiters,
    msg_id: String,
    receiver: mpsc::UnboundedReceiver<Reply>,
}

impl PendingReply {
    /// The call's `_msg_id`.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// Wait for the final reply.
    ///
    /// * `timeout`: the overall deadline, never extended.
    /// * `call_monitor_timeout`: restarted by each heartbeat; the call fails when it passes
    ///   without one, even if `timeout` has not.
    ///
    /// A remote failure becomes the error the client sees ([`crate::RemoteError::into_error`]).
    /// Replies from old servers that send the result and `ending` separately are handled: the
    /// last non-null result is kept until `ending`.
    pub async fn wait(mut self, timeout: Option<Duration>, call_monitor_timeout: Option<Duration>, reply_to: &str) -> Result<Value> {
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        let mut monitor_deadline = call_monitor_timeout.map(|t| started + t);
        let mut last_result = Value::Null;
        loop {
            let next_deadline = match (deadline, monitor_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = match next_deadline {
                Some(at) => match tokio::time::timeout_at(at, self.receiver.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        return Err(Error::timeout(format!(
                            "Timed out waiting for a reply {reply_to} to message ID {}.",
                            self.msg_id
                        )))
                    }
                },
                None => self.receiver.recv().await,
            };
            let Some(reply) = received else {
                return Err(Error::MessageDeliveryFailure {
                    message: format!("reply channel for message ID {} closed", self.msg_id),
                    retryable: true,
                });
            };
            if let Some(failure) = reply.failure {
                return Err(failure.into_error());
            }
            if reply.ending {
                return Ok(if reply.result.is_null() { last_result } else { reply.result });
            }
            if reply.result.is_null() {
                // Heartbeat: only the call-monitor timer restarts.
                if let Some(monitor) = call_monitor_timeout {
                    monitor_deadline = Some(Instant::now() + monitor);
                }
            } else {
                last_result = reply.result;
            }
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if let Ok(mut table) = self.waiters.waiting.lock() {
            table.remove(&self.msg_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::RemoteError;

    #[tokio::test(start_paused = true)]
    async fn heartbeats_extend_only_the_monitor_timer() {
        let waiters = ReplyWaiters::new();
        let pending = waiters.register("m");
        let feeder = waiters.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                feeder.deliver(Reply::heartbeat("m"));
            }
            feeder.deliver(Reply::final_reply("m", Ok(Value::from(7))));
        });
        let value = pending
            .wait(Some(Duration::from_secs(60)), Some(Duration::from_secs(2)), "q")
            .await
            .unwrap();
        assert_eq!(value, Value::from(7));
        assert!(waiters.is_empty(), "waiter removed");
    }

    #[tokio::test(start_paused = true)]
    async fn missing_heartbeat_fails_before_overall_timeout() {
        let waiters = ReplyWaiters::new();
        let pending = waiters.register("m");
        let started = Instant::now();
        let err = pending
            .wait(Some(Duration::from_secs(60)), Some(Duration::from_secs(2)), "q")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::MessagingTimeout { .. }));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn overall_timeout_is_never_extended() {
        let waiters = ReplyWaiters::new();
        let pending = waiters.register("m");
        let feeder = waiters.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                feeder.deliver(Reply::heartbeat("m"));
            }
        });
        let started = Instant::now();
        let err = pending
            .wait(Some(Duration::from_secs(5)), Some(Duration::from_secs(2)), "q")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::MessagingTimeout { .. }));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn failures_and_legacy_two_part_replies() {
        let waiters = ReplyWaiters::new();
        let pending = waiters.register("a");
        waiters.deliver(Reply::final_reply("a", Err(RemoteError::new("KeyError", "builtins", "k"))));
        let err = pending.wait(None, None, "q").await.unwrap_err();
        assert_eq!(err.as_remote().unwrap().exc_type, "KeyError");

        let pending = waiters.register("b");
        waiters.deliver(Reply {
            result: Value::from("r"),
            failure: None,
            ending: false,
            msg_id: "b".into(),
            unique_id: None,
        });
        waiters.deliver(Reply {
            result: Value::Null,
            failure: None,
            ending: true,
            msg_id: "b".into(),
            unique_id: None,
        });
        assert_eq!(pending.wait(None, None, "q").await.unwrap(), Value::from("r"));
        assert!(!waiters.deliver(Reply::heartbeat("unknown")));
    }
}
