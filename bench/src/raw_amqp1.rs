//! The raw AMQP 1.0 baseline: fe2o3-amqp against RabbitMQ's `rabbitmq_amqp1_0` plugin, the same
//! request/reply and cast shapes as the lapin baseline, no oslo code.
//!
//! Pitfalls of transport-notes.md §2.3 handled here: the TCP stream is opened by hand with
//! `TCP_NODELAY` (fe2o3 does not set it: 88 ms per RPC otherwise); every delivery is received
//! unsettled and accepted, so `CreditMode::Auto` tops the credit up (a pre-settled receiver
//! stalls silently); RabbitMQ 3.10 has no dynamic reply source, so the client uses one **named**
//! reply queue. The queues, the fanout exchange and its bindings are declared (and deleted) by
//! the runner over AMQP 0-9-1: attaching to `/exchange/X` would make the broker create
//! `amq.gen-*` queues that leak. Addresses are `/amq/queue/NAME` (existing queues only) and
//! `/exchange/X` for the fanout sender.
//!
//! Messages carry an `AmqpValue<String>` body; the method is the `subject`, calls carry
//! `reply_to` and a `correlation_id`. Casts are sent unsettled and each awaits its disposition
//! (the AMQP 1.0 equivalent of a publisher confirm; callers run many at once, so they are
//! windowed). Requests and replies are sent unsettled too, but the sender does not wait for the
//! disposition before waiting for the reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{AmqpValue, Message, MessageId, Properties};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use tokio::sync::{oneshot, Mutex as AsyncMutex};

use crate::common::{err, stdin_eof, Res};

/// An open connection and session.
pub struct Link {
    conn: ConnectionHandle<()>,
    session: SessionHandle<()>,
}

/// Open a connection (with `TCP_NODELAY`) and a session to `url` (`amqp://user:pass@host:port`).
pub async fn open(url: &str, container: &str) -> Res<Link> {
    let parsed = url::Url::parse(url).map_err(err("bad AMQP 1.0 URL"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port().unwrap_or(5672);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    stream.set_nodelay(true).map_err(err("TCP_NODELAY"))?;
    let profile = if parsed.username().is_empty() {
        SaslProfile::Anonymous
    } else {
        SaslProfile::Plain {
            username: parsed.username().to_string(),
            password: parsed.password().unwrap_or("").to_string(),
        }
    };
    let mut conn = Connection::builder()
        .container_id(container.to_string())
        .scheme("amqp")
        .hostname(host.as_str())
        .sasl_profile(profile)
        .open_with_stream(stream)
        .await
        .map_err(err("AMQP 1.0 open"))?;
    let session = Session::begin(&mut conn).await.map_err(err("AMQP 1.0 begin"))?;
    Ok(Link { conn, session })
}

impl Link {
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.end()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.close()).await;
    }
}

fn message(subject: &str, body: String, reply_to: Option<&str>, correlation: Option<MessageId>) -> Message<AmqpValue<String>> {
    let mut props = Properties::builder().subject(subject.to_string());
    if let Some(r) = reply_to {
        props = props.reply_to(r.to_string());
    }
    if let Some(c) = correlation {
        props = props.correlation_id(c);
    }
    Message::builder().properties(props.build()).value(body).build()
}

/// `serve-raw-amqp1 QUEUE`: consume `/amq/queue/QUEUE`; `echo` replies with the body, `incr`
/// counts, `counter` replies with the count. Runs until stdin closes.
pub async fn serve(url: &str, queue: &str) -> Res<()> {
    let mut link = open(url, &format!("raw-amqp1-server-{queue}")).await?;
    let mut receiver = Receiver::attach(&mut link.session, format!("{queue}-recv"), format!("/amq/queue/{queue}"))
        .await
        .map_err(err("attach receiver"))?;
    // One sender per reply address (no anonymous relay on RabbitMQ 3.10).
    let mut reply_senders: HashMap<String, Arc<AsyncMutex<Sender>>> = HashMap::new();
    let mut counter = 0u64;
    let mut stop = stdin_eof();
    println!("READY");
    loop {
        let delivery = tokio::select! {
            _ = &mut stop => break,
            d = receiver.recv::<AmqpValue<String>>() => match d {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("raw amqp1 server: receive failed: {e}");
                    break;
                }
            },
        };
        if let Err(e) = receiver.accept(&delivery).await {
            eprintln!("raw amqp1 server: accept failed: {e}");
        }
        let props = delivery.message().properties.clone().unwrap_or_default();
        let body = match props.subject.as_deref() {
            Some("incr") => {
                counter += 1;
                continue;
            }
            Some("counter") => counter.to_string(),
            _ => delivery.into_body().0,
        };
        let Some(reply_to) = props.reply_to else { continue };
        let sender = match reply_senders.get(&reply_to) {
            Some(s) => s.clone(),
            None => {
                let s = Sender::attach(
                    &mut link.session,
                    format!("{queue}-reply-{}", reply_senders.len()),
                    reply_to.clone(),
                )
                .await
                .map_err(err("attach reply sender"))?;
                let s = Arc::new(AsyncMutex::new(s));
                reply_senders.insert(reply_to.clone(), s.clone());
                s
            }
        };
        let reply = message("reply", body, None, props.correlation_id);
        let pending = sender.lock().await.send_batchable(reply).await;
        match pending {
            // The disposition is awaited off the receive loop.
            Ok(fut) => {
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        eprintln!("raw amqp1 server: reply not accepted: {e}");
                    }
                });
            }
            Err(e) => eprintln!("raw amqp1 server: reply send failed: {e}"),
        }
    }
    for (_, s) in reply_senders {
        if let Ok(s) = Arc::try_unwrap(s) {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.into_inner().detach()).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver.detach()).await;
    link.close().await;
    println!("STOPPED");
    Ok(())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<String>>>>;

/// The raw AMQP 1.0 client. Cheap to clone.
#[derive(Clone)]
pub struct Amqp1Client {
    senders: Arc<HashMap<String, Arc<AsyncMutex<Sender>>>>,
    fanout: Arc<AsyncMutex<Sender>>,
    reply_address: Arc<str>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    link: Arc<AsyncMutex<Option<Link>>>,
}

impl Amqp1Client {
    /// Attach senders to each server queue (`name -> queue`) and the fanout exchange, and a
    /// receiver on the (pre-declared) named reply queue.
    pub async fn connect(
        url: &str,
        server_queues: &HashMap<String, String>,
        fanout: &str,
        reply_queue: &str,
        timeout: Duration,
    ) -> Res<Self> {
        let mut link = open(url, &format!("raw-amqp1-client-{reply_queue}")).await?;
        let mut senders = HashMap::new();
        for (name, queue) in server_queues {
            let s = Sender::attach(&mut link.session, format!("{queue}-send"), format!("/amq/queue/{queue}"))
                .await
                .map_err(err("attach sender"))?;
            senders.insert(name.clone(), Arc::new(AsyncMutex::new(s)));
        }
        let fanout = Sender::attach(&mut link.session, format!("{fanout}-send"), format!("/exchange/{fanout}"))
            .await
            .map_err(err("attach fanout sender"))?;
        let reply_address = format!("/amq/queue/{reply_queue}");
        let mut receiver = Receiver::attach(&mut link.session, format!("{reply_queue}-recv"), reply_address.clone())
            .await
            .map_err(err("attach reply receiver"))?;
        let pending: Pending = Arc::default();
        let dispatch = pending.clone();
        tokio::spawn(async move {
            while let Ok(delivery) = receiver.recv::<AmqpValue<String>>().await {
                let _ = receiver.accept(&delivery).await;
                let id = match delivery.message().properties.as_ref().and_then(|p| p.correlation_id.clone()) {
                    Some(MessageId::Ulong(id)) => id,
                    _ => continue,
                };
                if let Some(waiter) = dispatch.lock().unwrap().remove(&id) {
                    let _ = waiter.send(delivery.into_body().0);
                }
            }
        });
        Ok(Amqp1Client {
            senders: Arc::new(senders),
            fanout: Arc::new(AsyncMutex::new(fanout)),
            reply_address: reply_address.into(),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
            link: Arc::new(AsyncMutex::new(Some(link))),
        })
    }

    fn sender(&self, server: &str) -> Res<&Arc<AsyncMutex<Sender>>> {
        self.senders.get(server).ok_or_else(|| format!("unknown raw amqp1 server {server}"))
    }

    async fn request(&self, server: &str, subject: &str, body: String) -> Res<String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let msg = message(subject, body, Some(&self.reply_address), Some(MessageId::Ulong(id)));
        let sent = self.sender(server)?.lock().await.send_batchable(msg).await;
        let outcome = match sent {
            Ok(fut) => fut,
            Err(e) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(format!("send request: {e}"));
            }
        };
        let (outcome, reply) = tokio::join!(outcome, tokio::time::timeout(self.timeout, rx));
        if let Err(e) = outcome {
            self.pending.lock().unwrap().remove(&id);
            return Err(format!("request not accepted: {e}"));
        }
        match reply {
            Ok(Ok(data)) => Ok(data),
            _ => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("no reply within {:?}", self.timeout))
            }
        }
    }

    /// One echo request/reply.
    pub async fn echo(&self, body: &str) -> Res<()> {
        let reply = self.request("a", "echo", body.to_string()).await?;
        if reply.len() != body.len() {
            return Err("echo returned a different body".into());
        }
        Ok(())
    }

    /// The counter of server `server`.
    pub async fn counter(&self, server: &str) -> Res<u64> {
        let reply = self.request(server, "counter", String::new()).await?;
        reply.parse().map_err(|e| format!("bad counter reply {reply:?}: {e}"))
    }

    async fn send_confirmed(&self, sender: &Arc<AsyncMutex<Sender>>, body: &str) -> Res<()> {
        let fut = sender
            .lock()
            .await
            .send_batchable(message("incr", body.to_string(), None, None))
            .await
            .map_err(err("send cast"))?;
        fut.await.map_err(err("cast not accepted"))?;
        Ok(())
    }

    /// A cast to server `a`'s queue, returning once the broker accepted it.
    pub async fn cast(&self, body: &str) -> Res<()> {
        self.send_confirmed(self.sender("a")?, body).await
    }

    /// A cast to the fanout exchange, returning once the broker accepted it.
    pub async fn fanout(&self, body: &str) -> Res<()> {
        self.send_confirmed(&self.fanout, body).await
    }

    /// Close the connection (the runner deletes the reply queue).
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            link.close().await;
        }
    }
}
