//! The raw ZeroMQ baseline (zeromq crate, DEALER → ROUTER over tcp), the request/reply and cast
//! shapes of the other baselines, no oslo code and no Redis.
//!
//! Server (`serve-raw-zmq`): a ROUTER bound on `tcp://127.0.0.1:0`; it prints
//! `ENDPOINT tcp://…` then `READY`. A request is `[correlation id, method, body]` (the ROUTER
//! prepends the peer identity); `echo` replies `[identity, correlation id, body]`, `incr` counts
//! (no reply), `counter` replies with the count as decimal text.
//!
//! Client: one DEALER per server; replies are matched to callers by correlation id. A cast is a
//! send with no reply (ZeroMQ has no broker acknowledgement); a fanout cast is one send to each
//! server, as oslo's ZeroMQ driver delivered fanout (direct to every host the matchmaker lists).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Mutex as AsyncMutex};
use zeromq::{DealerSendHalf, DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::common::{err, stdin_eof, Res};

fn frames(parts: Vec<Bytes>) -> Res<ZmqMessage> {
    ZmqMessage::try_from(parts).map_err(|e| format!("empty message: {e:?}"))
}

/// `serve-raw-zmq`: run until stdin closes.
pub async fn serve() -> Res<()> {
    let mut socket = RouterSocket::new();
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.map_err(err("bind ROUTER"))?;
    let (mut tx, mut rx) = socket.split();
    let mut counter = 0u64;
    let mut stop = stdin_eof();
    println!("ENDPOINT {endpoint}");
    println!("READY");
    loop {
        let msg = tokio::select! {
            _ = &mut stop => break,
            m = rx.recv() => match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("raw zmq server: receive failed: {e}");
                    break;
                }
            },
        };
        let mut parts = msg.into_vecdeque();
        let (Some(identity), Some(corr), Some(method)) = (parts.pop_front(), parts.pop_front(), parts.pop_front()) else {
            eprintln!("raw zmq server: malformed request dropped");
            continue;
        };
        let body = parts.pop_front().unwrap_or_default();
        let reply = match &method[..] {
            b"incr" => {
                counter += 1;
                continue;
            }
            b"counter" => Bytes::from(counter.to_string()),
            _ => body,
        };
        if let Err(e) = tx.send(frames(vec![identity, corr, reply])?).await {
            eprintln!("raw zmq server: reply failed: {e}");
        }
    }
    println!("STOPPED");
    Ok(())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// The raw ZeroMQ client. Cheap to clone.
#[derive(Clone)]
pub struct ZmqClient {
    /// Server name -> the send half of its DEALER, in name order (the order of a fanout).
    senders: Arc<BTreeMap<String, AsyncMutex<DealerSendHalf>>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
}

impl ZmqClient {
    /// Connect one DEALER to each server endpoint (`name -> tcp://…`).
    pub async fn connect(endpoints: &HashMap<String, String>, timeout: Duration) -> Res<Self> {
        let pending: Pending = Arc::default();
        let mut senders = BTreeMap::new();
        for (name, endpoint) in endpoints {
            let mut socket = DealerSocket::new();
            tokio::time::timeout(Duration::from_secs(10), socket.connect(endpoint))
                .await
                .map_err(|_| format!("connect to {endpoint}: timed out"))?
                .map_err(err("connect DEALER"))?;
            let (tx, mut rx) = socket.split();
            let dispatch = pending.clone();
            tokio::spawn(async move {
                while let Ok(msg) = rx.recv().await {
                    let mut parts = msg.into_vecdeque();
                    let (Some(corr), Some(body)) = (parts.pop_front(), parts.pop_front()) else {
                        continue;
                    };
                    let Ok(id) = <[u8; 8]>::try_from(&corr[..]).map(u64::from_be_bytes) else {
                        continue;
                    };
                    if let Some(waiter) = dispatch.lock().unwrap().remove(&id) {
                        let _ = waiter.send(body);
                    }
                }
            });
            senders.insert(name.clone(), AsyncMutex::new(tx));
        }
        Ok(ZmqClient {
            senders: Arc::new(senders),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
        })
    }

    async fn send(&self, server: &str, corr: u64, method: &'static str, body: Bytes) -> Res<()> {
        let sender = self.senders.get(server).ok_or_else(|| format!("unknown raw zmq server {server}"))?;
        let msg = frames(vec![
            Bytes::copy_from_slice(&corr.to_be_bytes()),
            Bytes::from_static(method.as_bytes()),
            body,
        ])?;
        sender.lock().await.send(msg).await.map_err(err("zmq send"))
    }

    async fn request(&self, server: &str, method: &'static str, body: Bytes) -> Res<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        if let Err(e) = self.send(server, id, method, body).await {
            self.pending.lock().unwrap().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(data)) => Ok(data),
            _ => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("no reply within {:?}", self.timeout))
            }
        }
    }

    /// One echo request/reply.
    pub async fn echo(&self, body: &Bytes) -> Res<()> {
        let reply = self.request("a", "echo", body.clone()).await?;
        if reply.len() != body.len() {
            return Err("echo returned a different body".into());
        }
        Ok(())
    }

    /// The counter of server `server`.
    pub async fn counter(&self, server: &str) -> Res<u64> {
        let reply = self.request(server, "counter", Bytes::new()).await?;
        String::from_utf8_lossy(&reply)
            .parse()
            .map_err(|e| format!("bad counter reply: {e}"))
    }

    /// A cast to server `a`.
    pub async fn cast(&self, body: &Bytes) -> Res<()> {
        self.send("a", 0, "incr", body.clone()).await
    }

    /// A fanout cast: one send to every server.
    pub async fn fanout(&self, body: &Bytes) -> Res<()> {
        for name in self.senders.keys() {
            self.send(name, 0, "incr", body.clone()).await?;
        }
        Ok(())
    }
}
