//! Server side: RPC and notification listeners, incoming messages, and replies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Channel;
use oslo_core::clip::clip;
use oslo_core::codec::{self, IncomingRequest, JsonMap, Reply};
use oslo_core::reply::ReplyWaiters;
use oslo_core::{Error, IncomingMessage, Listener, RemoteError, Result, Retry};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::RabbitConfig;
use crate::publisher::{publish_direct, DirectOutcome, Outgoing, Publisher, ReturnedReplies};
use crate::subscription::{DeliveryHandler, Feed, PublishChannel, Subscription};
use crate::util::{ObsoleteReplyQueues, RecentIds};

/// How often a reply to a missing reply queue is tried again (oslo: 0.25 s).
const MISSING_QUEUE_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// Decode a delivery as kombu + oslo do: only `application/json` bodies (utf-8) are accepted,
/// then the oslo envelope is unwrapped. A body over `max_message_size` is refused first. The
/// error text says why the message is dropped.
pub(crate) fn decode_delivery(delivery: &Delivery, max_message_size: usize) -> std::result::Result<JsonMap, String> {
    codec::check_message_size(delivery.data.len(), max_message_size).map_err(|e| e.to_string())?;
    let properties = &delivery.properties;
    match properties.content_type().as_ref().map(|c| c.as_str()) {
        Some("application/json") => {}
        other => return Err(format!("unsupported content type {other:?} (expected \"application/json\")")),
    }
    if let Some(encoding) = properties.content_encoding().as_ref().map(|e| e.as_str().to_ascii_lowercase()) {
        if encoding != "utf-8" && encoding != "utf8" {
            return Err(format!("unsupported content encoding {encoding:?}"));
        }
    }
    if properties.headers().as_ref().is_some_and(|h| h.inner().contains_key("compression")) {
        return Err("compressed messages are not supported".into());
    }
    codec::decode_body(&delivery.data).map_err(|e| e.to_string())
}

/// Queue a `basic.ack` without waiting for the I/O thread: the first poll of
/// `Channel::basic_ack` checks the channel and pushes the frame synchronously. (Going through
/// `Acker` would add a hop through lapin's internal RPC task and a spawned task per ack.)
/// Returns the error if the channel is already closed.
fn ack_now(channel: &Channel, delivery_tag: u64) -> std::result::Result<(), lapin::Error> {
    match channel.basic_ack(delivery_tag, BasicAckOptions::default()).now_or_never() {
        Some(Err(error)) => Err(error),
        _ => Ok(()),
    }
}

/// Queue a `basic.reject` without waiting for the I/O thread.
fn reject_now(channel: &Channel, delivery_tag: u64, requeue: bool) {
    let _ = channel.basic_reject(delivery_tag, BasicRejectOptions { requeue }).now_or_never();
}

/// Most replies retried at once after their return surfaced on another publisher's confirm
/// (each one is a task holding its reply body). Past this, such a reply is dropped with an
/// error log, as its caller's reply queue is missing anyway.
const MAX_RETRIED_REPLIES: usize = 256;

/// Sends replies and call-monitor heartbeats to callers' reply queues.
#[derive(Debug)]
pub(crate) struct Replier {
    publisher: Arc<Publisher>,
    config: Arc<RabbitConfig>,
    obsolete: ObsoleteReplyQueues,
    /// Replies retried in tasks of their own (see [`ReturnedReplies`]), by `msg_id`: one task
    /// each, at most [`MAX_RETRIED_REPLIES`].
    retrying: Mutex<HashSet<String>>,
}

impl Replier {
    pub(crate) fn new(publisher: Arc<Publisher>, config: Arc<RabbitConfig>) -> Self {
        Replier {
            publisher,
            config,
            obsolete: ObsoleteReplyQueues::default(),
            retrying: Mutex::new(HashSet::new()),
        }
    }

    fn outgoing<'a>(&self, reply_q: &'a str, body: &'a [u8], isolated: bool) -> Outgoing<'a> {
        Outgoing {
            exchange: None,
            queue: None,
            routing_key: reply_q,
            body,
            expiration: None,
            mandatory: self.config.direct_mandatory_flag,
            isolated,
        }
    }

    /// Publish on a leased channel of its own, so that the broker's return (a missing reply
    /// queue) always comes back on this publish's confirm and never on another's.
    async fn publish_isolated(&self, reply_q: &str, body: &[u8]) -> Result<()> {
        self.publisher.publish(&self.outgoing(reply_q, body, true), Retry::Forever).await
    }

    /// Send the final reply (oslo `AMQPIncomingMessage.reply`): retried every 0.25 s while the
    /// reply queue is missing, for up to `kombu_missing_consumer_retry_timeout` from the first
    /// failure; then the queue is remembered as obsolete for 60 s and the reply dropped with an
    /// error log. Never fails because the caller is gone.
    ///
    /// The first attempt goes out on `direct`, the request's own connection, when it has a
    /// usable publish channel; anything but a confirm there hands the reply to the send
    /// connection. A return that surfaces on another reply's confirm there is routed back to
    /// [`ReturnedReplies::retry_returned_reply`].
    pub(crate) async fn send_reply(&self, reply_q: &str, reply: Reply, direct: Option<&PublishChannel>) -> Result<()> {
        let msg_id = reply.msg_id.clone();
        if self.obsolete.contains(reply_q) {
            tracing::warn!("{} doesn't exist, drop reply to {}", clip(reply_q), clip(&msg_id));
            return Ok(());
        }
        let body = reply.encode()?;
        if let Some(channel) = direct.and_then(PublishChannel::usable) {
            match publish_direct(channel, &self.outgoing(reply_q, &body, false), self.publisher.returns()).await {
                DirectOutcome::Confirmed => return Ok(()),
                DirectOutcome::Undeliverable => return self.retry_missing_queue(reply_q, &msg_id, &body).await,
                DirectOutcome::Failed(reason) => {
                    tracing::debug!(msg_id = %clip(&msg_id), reason = %reason, "reply not sent on the consuming connection; using the send connection");
                }
            }
        }
        match self.publish_isolated(reply_q, &body).await {
            Err(Error::MessageUndeliverable { .. }) => self.retry_missing_queue(reply_q, &msg_id, &body).await,
            other => other,
        }
    }

    /// The missing-queue retries of a reply that was just returned: one deadline, counted from
    /// now, the first failure. Every retry is isolated, so its outcome is exact: no other
    /// publish's confirm can take its return and make it look sent.
    async fn retry_missing_queue(&self, reply_q: &str, msg_id: &str, body: &[u8]) -> Result<()> {
        let timeout = self.config.missing_consumer_retry_timeout();
        let deadline = Instant::now() + timeout;
        tracing::info!(
            "The reply {} cannot be sent {} reply queue doesn't exist, retrying...",
            clip(msg_id),
            clip(reply_q)
        );
        loop {
            if Instant::now() >= deadline {
                self.obsolete.add(reply_q);
                tracing::error!(
                    "The reply {} failed to send after {} seconds due to a missing queue ({}). Abandoning...",
                    clip(msg_id),
                    timeout.as_secs(),
                    clip(reply_q)
                );
                return Ok(());
            }
            tokio::time::sleep(MISSING_QUEUE_RETRY_INTERVAL.min(deadline - Instant::now())).await;
            let left = deadline.saturating_duration_since(Instant::now());
            // An attempt the broker does not confirm in time ends at the deadline like a return.
            match tokio::time::timeout(left.max(MISSING_QUEUE_RETRY_INTERVAL), self.publish_isolated(reply_q, body)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Error::MessageUndeliverable { .. })) | Err(_) => {}
                Ok(Err(error)) => return Err(error),
            }
        }
    }

    /// Send one call-monitor heartbeat; a missing reply queue is an error (the server then
    /// stops heartbeating, as oslo's watchdog does).
    pub(crate) async fn send_heartbeat(&self, reply_q: &str, msg_id: &str) -> Result<()> {
        let body = Reply::heartbeat(msg_id).encode()?;
        let limit = self.config.missing_consumer_retry_timeout().max(Duration::from_secs(1));
        match tokio::time::timeout(limit, self.publish_isolated(reply_q, &body)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Error::MessageUndeliverable { .. })) => Err(Error::MessageDeliveryFailure {
                message: "Heartbeat send failed. Missing queue/exchange".into(),
                retryable: false,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::MessageDeliveryFailure {
                message: format!("heartbeat to {reply_q} not sent within {} seconds", limit.as_secs()),
                retryable: true,
            }),
        }
    }
}

impl ReturnedReplies for Replier {
    /// A reply whose first attempt looked confirmed while its return surfaced elsewhere: that
    /// return is its first failure, so its retries start their one deadline now. Its retries
    /// are isolated, so it cannot come back here a second time.
    fn retry_returned_reply(self: Arc<Self>, reply_q: String, msg_id: String, body: Vec<u8>) {
        if self.obsolete.contains(&reply_q) {
            tracing::warn!("{} doesn't exist, drop reply to {}", clip(&reply_q), clip(&msg_id));
            return;
        }
        {
            let mut retrying = self.retrying.lock().expect("retry table poisoned");
            if retrying.contains(&msg_id) {
                tracing::debug!(msg_id = %clip(&msg_id), "the reply is already being retried");
                return;
            }
            if retrying.len() >= MAX_RETRIED_REPLIES {
                tracing::error!(
                    "The reply {} to the missing queue {} is dropped: {MAX_RETRIED_REPLIES} replies to missing queues are already being retried",
                    clip(&msg_id),
                    clip(&reply_q)
                );
                return;
            }
            retrying.insert(msg_id.clone());
        }
        tokio::spawn(async move {
            if let Err(error) = self.retry_missing_queue(&reply_q, &msg_id, &body).await {
                tracing::error!(msg_id = %clip(&msg_id), error = %error, "failed to send the reply");
            }
            self.retrying.lock().expect("retry table poisoned").remove(&msg_id);
        });
    }
}

/// What a listener takes, and so what its messages are.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// RPC requests (oslo `RpcAMQPListener`). Duplicates are left to the RPC server, which
    /// drops a repeated `_unique_id` (see `RabbitIncoming::unique_id`).
    Rpc { replier: Arc<Replier> },
    /// Notifications (oslo `NotificationAMQPListener`): duplicates are checked on receive and
    /// recorded on acknowledge.
    Notification { recent: Arc<RecentIds> },
}

/// A request or notification received from RabbitMQ.
#[derive(Debug)]
struct RabbitIncoming {
    request: IncomingRequest,
    channel: Channel,
    /// The consuming connection's publish channel (RPC requests: the reply goes there).
    publish_channel: Option<PublishChannel>,
    delivery_tag: u64,
    kind: Kind,
    replied: AtomicBool,
}

#[async_trait]
impl IncomingMessage for RabbitIncoming {
    fn message(&self) -> &JsonMap {
        &self.request.message
    }

    fn context(&self) -> &JsonMap {
        &self.request.context
    }

    fn client_timeout(&self) -> Option<Duration> {
        self.request.client_timeout
    }

    fn client_timeout_value(&self) -> Value {
        self.request.raw_timeout.clone()
    }

    fn expects_reply(&self) -> bool {
        matches!(self.kind, Kind::Rpc { .. }) && self.request.msg_id.is_some()
    }

    fn unique_id(&self) -> Option<&str> {
        match self.kind {
            Kind::Rpc { .. } => self.request.unique_id.as_deref(),
            // Notification listeners check theirs on receive and record it on acknowledge.
            Kind::Notification { .. } => None,
        }
    }

    async fn reply(&self, outcome: std::result::Result<Value, RemoteError>) -> Result<()> {
        let (Kind::Rpc { replier, .. }, Some(msg_id)) = (&self.kind, &self.request.msg_id) else {
            return Ok(());
        };
        if self.replied.swap(true, Ordering::AcqRel) {
            tracing::warn!(msg_id = %clip(msg_id), "reply already sent; ignoring a second one");
            return Ok(());
        }
        let Some(reply_q) = &self.request.reply_q else {
            tracing::warn!(msg_id = %clip(msg_id), "request without _reply_q (pre-9.0 client?); dropping the reply");
            return Ok(());
        };
        replier
            .send_reply(reply_q, Reply::final_reply(msg_id.clone(), outcome), self.publish_channel.as_ref())
            .await
    }

    async fn heartbeat(&self) -> Result<()> {
        match (&self.kind, &self.request.msg_id, &self.request.reply_q) {
            (Kind::Rpc { replier, .. }, Some(msg_id), Some(reply_q)) => replier.send_heartbeat(reply_q, msg_id).await,
            _ => Ok(()),
        }
    }

    async fn acknowledge(&self) -> Result<()> {
        let closed = || Error::MessageDeliveryFailure {
            message: "the channel closed before the message could be acknowledged; it will be redelivered".into(),
            retryable: true,
        };
        match &self.kind {
            // RPC requests: queue the ack and go on (at-most-once, acked before dispatch);
            // waiting for the I/O thread would add to every call's latency.
            // A failed ack is reported to the RPC server, which then forgets the id so that the
            // broker's redelivery runs instead of being taken for a duplicate.
            Kind::Rpc { .. } => ack_now(&self.channel, self.delivery_tag).map_err(|_| closed()),
            Kind::Notification { recent } => {
                self.channel
                    .basic_ack(self.delivery_tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| Error::MessageDeliveryFailure {
                        message: format!("Failed to acknowledge received message: {e}"),
                        retryable: true,
                    })?;
                if let Some(unique_id) = &self.request.unique_id {
                    recent.add(unique_id);
                }
                Ok(())
            }
        }
    }

    async fn requeue(&self) -> Result<()> {
        self.channel
            .basic_reject(self.delivery_tag, BasicRejectOptions { requeue: true })
            .await
            .map_err(|e| Error::MessageDeliveryFailure {
                message: format!("Failed to requeue received message: {e}"),
                retryable: true,
            })
    }
}

/// How many recent `_unique_id`s a listener remembers (oslo `_MsgIdCache` keeps 16; see
/// [`codec::DEFAULT_DUPLICATE_WINDOW`] for why ours is larger).
const DUPLICATE_WINDOW: usize = codec::DEFAULT_DUPLICATE_WINDOW;

/// Decode a delivery, or log it and reject it without requeue (oslo's consumer callback:
/// "Failed to process message ... skipping it.").
fn decode_or_drop(origin: &Origin<'_>, delivery: &Delivery) -> Option<codec::IncomingRequest> {
    let (queue, channel) = (origin.queue, origin.channel);
    match decode_delivery(delivery, origin.max_message_size) {
        Ok(map) => Some(codec::decode_request(map)),
        Err(reason) => {
            tracing::warn!(queue, reason = %clip(&reason), "Failed to process message ... skipping it.");
            reject_now(channel, delivery.delivery_tag, false);
            None
        }
    }
}

/// Where a delivery came from: its queue, its consuming channel (settle it there: ack /
/// reject) and the connection's publish channel, if the topology asked for one.
struct Origin<'a> {
    queue: &'a str,
    channel: &'a Channel,
    publish_channel: Option<&'a PublishChannel>,
    max_message_size: usize,
}

impl Kind {
    /// A notification listener's kind, with its own duplicate window.
    pub(crate) fn notification() -> Self {
        Kind::Notification {
            recent: Arc::new(RecentIds::new(DUPLICATE_WINDOW)),
        }
    }

    /// The incoming message for `delivery`, or `None` when it was malformed (rejected) or a
    /// duplicate notification (acked).
    fn take(&self, origin: &Origin<'_>, delivery: Delivery) -> Option<Box<dyn IncomingMessage>> {
        let request = decode_or_drop(origin, &delivery)?;
        let publish_channel = match self {
            Kind::Rpc { .. } => origin.publish_channel.cloned(),
            Kind::Notification { recent } => {
                if let Some(unique_id) = &request.unique_id {
                    if recent.contains(unique_id) {
                        tracing::info!(queue = origin.queue, unique_id = %clip(unique_id), "ignoring duplicate message");
                        let _ = ack_now(origin.channel, delivery.delivery_tag);
                        return None;
                    }
                }
                None
            }
        };
        Some(Box::new(RabbitIncoming {
            request,
            channel: origin.channel.clone(),
            publish_channel,
            delivery_tag: delivery.delivery_tag,
            kind: self.clone(),
            replied: AtomicBool::new(false),
        }))
    }
}

/// Routes replies arriving on the client's reply queue to the waiting calls (the subscription
/// acks them on receipt).
pub(crate) struct ReplyHandler {
    pub(crate) waiters: ReplyWaiters,
    pub(crate) max_message_size: usize,
}

impl DeliveryHandler for ReplyHandler {
    fn handle(&self, queue: &str, delivery: Delivery) {
        match decode_delivery(&delivery, self.max_message_size).and_then(|map| Reply::from_map(map).map_err(|e| e.to_string())) {
            Ok(reply) => {
                self.waiters.deliver(reply);
            }
            Err(reason) => tracing::warn!(queue, reason = %clip(&reason), "dropping a malformed reply"),
        }
    }
}

/// One session's consumers, polled by [`RabbitListener::next`].
struct LiveFeed {
    channel: Channel,
    publish_channel: Option<PublishChannel>,
    queues: Vec<String>,
    /// Every consumer's deliveries, tagged with its index in `queues`; a consumer's stream ends
    /// with an `Err` saying why.
    deliveries: SelectAll<BoxStream<'static, (usize, std::result::Result<Delivery, String>)>>,
    ended: mpsc::UnboundedSender<String>,
    max_message_size: usize,
}

impl LiveFeed {
    fn new(feed: Feed, max_message_size: usize) -> Self {
        let mut queues = Vec::with_capacity(feed.consumers.len());
        let mut deliveries = SelectAll::new();
        for (index, (queue, consumer)) in feed.consumers.into_iter().enumerate() {
            let failed_queue = queue.clone();
            let cancelled = format!("consumer on queue {queue:?} was cancelled");
            let stream = consumer
                .map(move |item| {
                    (
                        index,
                        item.map_err(|error| format!("consumer on queue {failed_queue:?} failed: {error}")),
                    )
                })
                .chain(stream::once(async move { (index, Err(cancelled)) }));
            deliveries.push(stream.boxed());
            queues.push(queue);
        }
        LiveFeed {
            channel: feed.channel,
            publish_channel: feed.publish_channel,
            queues,
            deliveries,
            ended: feed.ended,
            max_message_size,
        }
    }

    fn origin(&self, index: usize) -> Origin<'_> {
        Origin {
            queue: &self.queues[index],
            channel: &self.channel,
            publish_channel: self.publish_channel.as_ref(),
            max_message_size: self.max_message_size,
        }
    }
}

/// A listener over one supervised consuming connection. It polls the session's lapin
/// consumers itself (a delivery reaches the server's task directly), and adopts the consumers
/// of each new session after a reconnect.
pub(crate) struct RabbitListener {
    kind: Kind,
    feeds: mpsc::UnboundedReceiver<Feed>,
    live: Option<LiveFeed>,
    subscription: Subscription,
    stopped: bool,
    cleaned: bool,
    max_message_size: usize,
}

impl RabbitListener {
    /// Where a subscription sends its sessions' consumers, and where this listener takes them.
    pub(crate) fn feed_channel() -> (mpsc::UnboundedSender<Feed>, mpsc::UnboundedReceiver<Feed>) {
        mpsc::unbounded_channel()
    }

    pub(crate) fn new(kind: Kind, feeds: mpsc::UnboundedReceiver<Feed>, subscription: Subscription, max_message_size: usize) -> Self {
        RabbitListener {
            kind,
            feeds,
            live: None,
            subscription,
            stopped: false,
            cleaned: false,
            max_message_size,
        }
    }

    /// A delivery taken from the live feed: the message, or nothing when it was dropped; a
    /// consumer that ended is reported to the subscription and the feed let go.
    fn take(&mut self, item: Option<(usize, std::result::Result<Delivery, String>)>) -> Option<Box<dyn IncomingMessage>> {
        let live = self.live.as_ref()?;
        let reason = match item {
            Some((index, Ok(delivery))) => return self.kind.take(&live.origin(index), delivery),
            Some((_, Err(reason))) => reason,
            None => "every consumer ended".into(),
        };
        let _ = live.ended.send(reason);
        self.live = None;
        None
    }
}

/// One step of [`RabbitListener::next`].
enum Step {
    Feed(Option<Feed>),
    Delivery(Option<(usize, std::result::Result<Delivery, String>)>),
}

#[async_trait]
impl Listener for RabbitListener {
    async fn next(&mut self) -> Option<Box<dyn IncomingMessage>> {
        loop {
            if self.stopped {
                // Hand out what was already received, then report the end.
                let live = self.live.as_mut()?;
                match live.deliveries.next().now_or_never() {
                    Some(Some((index, Ok(delivery)))) => match self.kind.take(&live.origin(index), delivery) {
                        Some(message) => return Some(message),
                        None => continue,
                    },
                    _ => return None,
                }
            }
            // Cancel safe: a feed or delivery is only taken out of its stream by a poll that
            // completes, and then handled before the next await.
            let step = match self.live.as_mut() {
                Some(live) => tokio::select! {
                    biased;
                    feed = self.feeds.recv() => Step::Feed(feed),
                    item = live.deliveries.next() => Step::Delivery(item),
                },
                None => Step::Feed(self.feeds.recv().await),
            };
            match step {
                // A new session (after a reconnect) replaces the old one's consumers.
                Step::Feed(Some(feed)) => self.live = Some(LiveFeed::new(feed, self.max_message_size)),
                Step::Feed(None) => return None,
                Step::Delivery(item) => {
                    if let Some(message) = self.take(item) {
                        return Some(message);
                    }
                }
            }
        }
    }

    async fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.subscription.stop().await;
        }
    }

    async fn cleanup(&mut self) {
        if !self.cleaned {
            self.cleaned = true;
            self.stopped = true;
            self.subscription.cleanup().await;
            // Undelivered messages were never acked: the broker redelivers them elsewhere.
            self.live = None;
            self.feeds.close();
        }
    }
}
