//! The raw lapin baseline: the same request/reply and cast shapes with no oslo code at all.
//!
//! Server (`serve-raw QUEUE`): one connection, consumes QUEUE with manual ack and no prefetch
//! limit (oslo's default `rabbit_qos_prefetch_count=0`), handles each delivery in its own task,
//! **acks before acting** (as oslo does for RPC requests; the ack is queued without awaiting
//! lapin's I/O thread, as the driver does), then by the message's AMQP `type`:
//! * `echo`: publish the body back to `reply_to` with the request's `correlation_id`;
//! * `echo_c`: the same with oslo's properties and `mandatory`, on a channel in confirm mode,
//!   awaiting the confirm (oslo's reply);
//! * `incr`: increment a counter (the cast target);
//! * `counter`: reply with the counter's value as decimal text.
//!
//! Client: one connection; requests are published to the default exchange (routing key = the
//! server's queue) with `reply_to` = a server-named exclusive reply queue consumed with manual
//! ack; replies are matched to callers by correlation id (`HashMap<u64, oneshot>`) and acked
//! (queued, not awaited) right after the caller is woken. Casts go through a channel in confirm
//! mode and each cast awaits its own publisher confirm (callers run many casts concurrently,
//! so confirms are windowed).
//!
//! The reference variant "raw lapin, oslo's protocol" ([`RawClient::with_oslo_protocol`]) sends
//! what oslo's wire protocol makes every implementation send: requests and casts through a
//! **topic exchange** (the servers bind their queues to it with routing key = queue name, as
//! oslo binds `<topic>` to `openstack`), oslo's AMQP properties, `mandatory` calls and replies,
//! and **every publish confirmed** (request, reply, cast). It is the floor for any
//! oslo-compatible client and server on lapin: what remains between it and ours is our own cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;

use crate::common::{err, stdin_eof, Res};

/// oslo's AMQP properties (wire-format.md §0), for `--raw-oslo-props`: `application/json`,
/// `utf-8`, persistent, priority 0, an empty header table, plus `expiration` on calls.
fn oslo_properties(oslo: bool, expiration: Option<&str>) -> BasicProperties {
    if !oslo {
        return BasicProperties::default();
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0);
    match expiration {
        Some(ms) => props.with_expiration(ms.into()),
        None => props,
    }
}

/// Publish options: oslo publishes calls and replies `mandatory`.
fn publish_options(oslo: bool, mandatory: bool) -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: oslo && mandatory,
        immediate: false,
    }
}

/// Acknowledge without waiting for lapin's I/O thread: `Acker::ack` hands the frame to the
/// connection before its first await, so polling it once queues the ack (in order, ahead of
/// anything published afterwards). The driver acks the same way; awaiting the ack instead
/// (the floor of transport-notes.md §1) costs one more I/O-thread round trip per message.
fn ack_now(acker: &Acker) {
    let _ = acker.ack(BasicAckOptions::default()).now_or_never();
}

/// Connect to the broker (an `amqp://` URL).
pub async fn connect(url: &str) -> Res<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// A plain channel and one in confirm mode, on `conn`.
async fn channels(conn: &Connection) -> Res<(Channel, Channel)> {
    let plain = conn.create_channel().await.map_err(err("create channel"))?;
    let confirm = conn.create_channel().await.map_err(err("create channel"))?;
    confirm
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("confirm.select"))?;
    Ok((plain, confirm))
}

/// `serve-raw QUEUE [--fanout-exchange X] [--topic-exchange T] [--oslo-props]`: run until stdin
/// closes. The queue is bound to the fanout exchange (key `""`) and to the topic exchange (key
/// = queue name, as oslo binds `<topic>` to `openstack`).
pub async fn serve(url: &str, queue: &str, fanout_exchange: Option<&str>, topic_exchange: Option<&str>, oslo_props: bool) -> Res<()> {
    let conn = connect(url).await?;
    let (ch, confirm_ch) = channels(&conn).await?;
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .map_err(err("queue.declare"))?;
    let bindings = [
        (fanout_exchange, ExchangeKind::Fanout, ""),
        (topic_exchange, ExchangeKind::Topic, queue),
    ];
    for (exchange, kind, routing_key) in bindings {
        let Some(exchange) = exchange else { continue };
        ch.exchange_declare(exchange.into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
            .await
            .map_err(err("exchange.declare"))?;
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("queue.bind"))?;
    }
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("basic.consume"))?;
    let counter = Arc::new(AtomicU64::new(0));
    let mut stop = stdin_eof();
    println!("READY");
    loop {
        tokio::select! {
            _ = &mut stop => break,
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    tokio::spawn(handle(delivery, ch.clone(), confirm_ch.clone(), counter.clone(), oslo_props));
                }
                Some(Err(e)) => {
                    eprintln!("raw server: consumer error: {e}");
                    break;
                }
                None => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    println!("STOPPED");
    Ok(())
}

async fn handle(mut delivery: Delivery, ch: Channel, confirm_ch: Channel, counter: Arc<AtomicU64>, oslo: bool) {
    ack_now(&delivery.acker);
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str().to_string());
    match kind.as_deref() {
        Some("incr") => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Some("counter") => {
            let body = counter.load(Ordering::Relaxed).to_string().into_bytes();
            reply(&ch, &delivery, &body, false, oslo).await;
        }
        Some("echo_c") => {
            let body = std::mem::take(&mut delivery.data);
            reply(&confirm_ch, &delivery, &body, true, true).await;
        }
        _ => {
            let body = std::mem::take(&mut delivery.data);
            reply(&ch, &delivery, &body, false, oslo).await;
        }
    }
}

async fn reply(ch: &Channel, request: &Delivery, body: &[u8], confirm: bool, oslo: bool) {
    let Some(reply_to) = request.properties.reply_to().clone() else {
        return;
    };
    let mut props = oslo_properties(oslo, None);
    if let Some(corr) = request.properties.correlation_id() {
        props = props.with_correlation_id(corr.clone());
    }
    match ch
        .basic_publish("".into(), reply_to, publish_options(oslo, true), body, props)
        .await
    {
        Ok(pending) => {
            if confirm {
                if let Err(e) = pending.await {
                    eprintln!("raw server: reply confirm failed: {e}");
                }
            }
        }
        Err(e) => eprintln!("raw server: reply publish failed: {e}"),
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

struct Inner {
    conn: Connection,
    rpc_ch: Channel,
    confirm_ch: Channel,
    reply_q: ShortString,
    pending: Pending,
    next_id: AtomicU64,
    /// Queue of server `a` (calls and casts go there).
    queue: String,
    /// Server name -> its queue (counter polls).
    server_queues: HashMap<String, String>,
    fanout_exchange: String,
    /// The topic exchange the servers' queues are bound to (oslo's protocol variant).
    topic_exchange: String,
    timeout: Duration,
    oslo_props: bool,
}

/// The raw lapin client. Cheap to clone.
#[derive(Clone)]
pub struct RawClient {
    inner: Arc<Inner>,
    /// oslo's protocol: requests and casts through the topic exchange with oslo's properties,
    /// `mandatory` calls and replies, every publish (request, reply, cast) confirmed.
    oslo_protocol: bool,
}

impl RawClient {
    /// Connect, declare the reply queue and start the reply dispatcher.
    pub async fn connect(
        url: &str,
        queue: &str,
        server_queues: HashMap<String, String>,
        fanout_exchange: &str,
        topic_exchange: &str,
        timeout: Duration,
        oslo_props: bool,
    ) -> Res<RawClient> {
        let conn = connect(url).await?;
        let (rpc_ch, confirm_ch) = channels(&conn).await?;
        let reply_queue = rpc_ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err("declare reply queue"))?;
        let reply_q = reply_queue.name().clone();
        let mut consumer = rpc_ch
            .basic_consume(
                reply_q.clone(),
                "raw-client".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("consume reply queue"))?;
        let pending: Pending = Arc::default();
        let dispatch = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let id = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse::<u64>().ok());
                let acker = delivery.acker.clone();
                if let Some(id) = id {
                    let waiter = dispatch.lock().unwrap().remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(delivery.data);
                    }
                }
                ack_now(&acker);
            }
        });
        Ok(RawClient {
            inner: Arc::new(Inner {
                conn,
                rpc_ch,
                confirm_ch,
                reply_q,
                pending,
                next_id: AtomicU64::new(1),
                queue: queue.to_string(),
                server_queues,
                fanout_exchange: fanout_exchange.to_string(),
                topic_exchange: topic_exchange.to_string(),
                timeout,
                oslo_props,
            }),
            oslo_protocol: false,
        })
    }

    /// A handle that speaks oslo's protocol (see the module docs): the floor reference.
    pub fn with_oslo_protocol(&self) -> RawClient {
        RawClient {
            inner: self.inner.clone(),
            oslo_protocol: true,
        }
    }

    /// Exchange and routing key of a request or cast to `queue`, and whether oslo's
    /// properties apply.
    fn route<'a>(&'a self, queue: &'a str) -> (&'a str, &'a str, bool) {
        if self.oslo_protocol {
            (&self.inner.topic_exchange, queue, true)
        } else {
            ("", queue, self.inner.oslo_props)
        }
    }

    async fn request(&self, queue: &str, kind: &str, body: &[u8]) -> Res<Vec<u8>> {
        let inner = &*self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.pending.lock().unwrap().insert(id, tx);
        let ch = if self.oslo_protocol { &inner.confirm_ch } else { &inner.rpc_ch };
        let (exchange, routing_key, oslo) = self.route(queue);
        let expiration = inner.timeout.as_millis().to_string();
        let props = oslo_properties(oslo, Some(&expiration))
            .with_reply_to(inner.reply_q.clone())
            .with_correlation_id(id.to_string().into())
            .with_type(kind.into());
        let sent = async {
            let confirm = ch
                .basic_publish(exchange.into(), routing_key.into(), publish_options(oslo, true), body, props)
                .await
                .map_err(err("publish request"))?;
            if self.oslo_protocol {
                let confirmation = confirm.await.map_err(err("request confirm"))?;
                if !confirmation.is_ack() {
                    return Err("request nacked".to_string());
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            inner.pending.lock().unwrap().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(inner.timeout, rx).await {
            Ok(Ok(data)) => Ok(data),
            _ => {
                inner.pending.lock().unwrap().remove(&id);
                Err(format!("no reply within {:?}", inner.timeout))
            }
        }
    }

    /// One echo request/reply of `body`.
    pub async fn echo(&self, body: &[u8]) -> Res<()> {
        let kind = if self.oslo_protocol { "echo_c" } else { "echo" };
        let reply = self.request(&self.inner.queue, kind, body).await?;
        if reply.len() != body.len() {
            return Err("echo returned a different body".into());
        }
        Ok(())
    }

    /// The counter of server `server`.
    pub async fn counter(&self, server: &str) -> Res<u64> {
        let queue = self
            .inner
            .server_queues
            .get(server)
            .ok_or_else(|| format!("unknown raw server {server}"))?;
        let reply = self.request(queue, "counter", b"").await?;
        String::from_utf8_lossy(&reply)
            .parse()
            .map_err(|e| format!("bad counter reply: {e}"))
    }

    async fn publish_confirmed(&self, exchange: &str, routing_key: &str, body: &[u8], oslo: bool) -> Res<()> {
        let props = oslo_properties(oslo, None).with_type("incr".into());
        let confirm = self
            .inner
            .confirm_ch
            .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props)
            .await
            .map_err(err("publish cast"))?;
        let confirmation = confirm.await.map_err(err("cast confirm"))?;
        if !confirmation.is_ack() {
            return Err("cast nacked".into());
        }
        Ok(())
    }

    /// A cast of `incr` to server `a`'s queue, returning once the broker confirmed it.
    pub async fn cast_incr(&self, body: &[u8]) -> Res<()> {
        let (exchange, routing_key, oslo) = self.route(&self.inner.queue);
        self.publish_confirmed(exchange, routing_key, body, oslo).await
    }

    /// A cast of `incr` to the fanout exchange, returning once the broker confirmed it.
    pub async fn fanout_incr(&self, body: &[u8]) -> Res<()> {
        self.publish_confirmed(&self.inner.fanout_exchange, "", body, self.inner.oslo_props || self.oslo_protocol)
            .await
    }

    /// Close the connection (the reply queue is exclusive: the broker deletes it).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.conn.close(200, "bye".into())).await;
    }
}
