//! The server side: one ROUTER socket per listener, bound to a random port in
//! `[rpc_zmq_min_port, rpc_zmq_max_port)` (and to an `ipc://` socket file for same-host
//! clients), registered in the matchmaker and refreshed every `zmq_target_update`, crediting
//! the requests it takes to the clients that count credits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use oslo_core::clip::clip;
use oslo_core::codec::{DuplicateFilter, JsonMap};
use oslo_core::{Error, IncomingMessage, Listener, RemoteError, Result};
use serde_json::Value;
use tokio::sync::Notify;
use zeromq::{RouterRecvHalf, RouterSendHalf, RouterSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::config::ZmqConfig;
use crate::frames::{self, MessageType, Request};
use crate::matchmaker::Matchmaker;

/// How long `stop()` waits for the matchmaker to forget this listener.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket file a server on this host listens on, next to its TCP port `port`.
pub(crate) fn ipc_path(dir: &Path, port: &str) -> PathBuf {
    dir.join(format!("oslo-zmq-{port}.sock"))
}

/// A bound ROUTER socket.
struct Bound {
    socket: RouterSocket,
    host: String,
    ipc_file: Option<PathBuf>,
}

fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64
}

async fn bind(config: &ZmqConfig) -> Result<Bound> {
    let mut options = SocketOptions::default();
    // Tells connecting clients (in the handshake) that this server sends credits.
    options.peer_identity(frames::server_identity().try_into().expect("identity below 255 bytes"));
    let mut socket = RouterSocket::with_options(options);
    let bind_host = config.bind_host();
    let bind_host = if bind_host.contains(':') && !bind_host.starts_with('[') {
        format!("[{bind_host}]")
    } else {
        bind_host.to_string()
    };
    let span = u64::from(config.rpc_zmq_max_port - config.rpc_zmq_min_port);
    let mut port = None;
    let mut last_error = String::new();
    for _ in 0..config.rpc_zmq_bind_port_retries {
        let candidate = u64::from(config.rpc_zmq_min_port) + random_u64() % span;
        if candidate > 65535 {
            continue;
        }
        match socket.bind(&format!("tcp://{bind_host}:{candidate}")).await {
            Ok(_) => {
                port = Some(candidate as u16);
                break;
            }
            Err(err) => last_error = err.to_string(),
        }
    }
    let Some(port) = port else {
        return Err(Error::transport(
            crate::DRIVER_NAME,
            format!(
                "no free port in [{}, {}) on {bind_host} after {} tries (rpc_zmq_bind_port_retries): {last_error}",
                config.rpc_zmq_min_port, config.rpc_zmq_max_port, config.rpc_zmq_bind_port_retries
            ),
            true,
        ));
    };
    let ipc_file = if config.zmq_use_ipc {
        bind_ipc(&mut socket, &config.rpc_zmq_ipc_dir, port).await
    } else {
        None
    };
    Ok(Bound {
        socket,
        host: format!("{}:{port}", config.rpc_zmq_host),
        ipc_file,
    })
}

/// Bind the `ipc://` endpoint, removing a stale socket file first (the crate fails with
/// EADDRINUSE on one left by a killed process). Failing here only costs same-host clients
/// the faster path: they use TCP.
async fn bind_ipc(socket: &mut RouterSocket, dir: &Path, port: u16) -> Option<PathBuf> {
    let path = ipc_path(dir, &port.to_string());
    if path.as_os_str().len() > 100 {
        tracing::warn!(path = %path.display(), "ipc socket path too long; same-host clients use TCP");
        return None;
    }
    let prepare = {
        let (dir, path) = (dir.to_path_buf(), path.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            std::fs::create_dir_all(&dir)?;
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    // A live server (bound on another address with the same port) owns it.
                    return Ok(false);
                }
                std::fs::remove_file(&path)?;
            }
            Ok(true)
        })
        .await
    };
    match prepare {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::warn!(path = %path.display(), "ipc socket file in use by a live server; same-host clients use TCP");
            return None;
        }
        Ok(Err(err)) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot prepare the ipc socket file (rpc_zmq_ipc_dir); same-host clients use TCP");
            return None;
        }
        Err(err) => {
            tracing::warn!(error = %err, "ipc preparation task failed");
            return None;
        }
    }
    match socket.bind(&format!("ipc://{}", path.display())).await {
        Ok(_) => Some(path),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot bind the ipc endpoint; same-host clients use TCP");
            None
        }
    }
}

/// Registered records `(key, value)`, refreshed in the background until dropped or
/// unregistered.
struct Registration {
    matchmaker: Arc<dyn Matchmaker>,
    /// This listener's own records (value: its `host:port`), removed on stop.
    own: Vec<(String, String)>,
    /// Pool names (value: the pool's name under `<key>`, its listeners under
    /// `<key>/<name>`), shared by the pool's listeners and removed with the last one.
    pools: Vec<(String, String)>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    async fn start(
        matchmaker: Arc<dyn Matchmaker>,
        own: Vec<(String, String)>,
        pools: Vec<(String, String)>,
        config: &ZmqConfig,
    ) -> Result<Self> {
        let expire = config.zmq_target_expire;
        let records: Vec<(String, String)> = own.iter().chain(&pools).cloned().collect();
        for (key, value) in &records {
            matchmaker.register(key, value, expire).await?;
        }
        let refresher = (!expire.is_zero()).then(|| {
            let (matchmaker, every) = (matchmaker.clone(), config.zmq_target_update);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticker.tick().await;
                    for (key, value) in &records {
                        if let Err(err) = matchmaker.register(key, value, expire).await {
                            tracing::warn!(key, error = %err, "cannot refresh a matchmaker record; it expires unless a later refresh works");
                        }
                    }
                }
            })
        });
        Ok(Registration {
            matchmaker,
            own,
            pools,
            refresher,
        })
    }

    async fn unregister(&mut self) {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
        let own = std::mem::take(&mut self.own);
        let pools = std::mem::take(&mut self.pools);
        let matchmaker = self.matchmaker.clone();
        let work = async move {
            for (key, value) in &own {
                if let Err(err) = matchmaker.unregister(key, value).await {
                    tracing::warn!(key, error = %err, "cannot remove a matchmaker record; it expires by itself");
                }
            }
            // A pool's name goes once its last listener is gone.
            for (key, value) in &pools {
                if let Err(err) = matchmaker.unregister_if_empty(key, value, &format!("{key}/{value}")).await {
                    tracing::warn!(key, error = %err, "cannot remove a matchmaker record; it expires by itself");
                }
            }
        };
        if tokio::time::timeout(UNREGISTER_TIMEOUT, work).await.is_err() {
            tracing::warn!("matchmaker did not answer; records expire by themselves");
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
    }
}

/// The credits a listener owes its clients: every request it takes from a client that
/// counts credits (its identity announces its limits) is credited back, once a quarter of
/// either of that client's limits is owed, and all at once whenever the listener has nothing
/// left to read. A client therefore never has more than its limits sent and not yet taken,
/// and never waits for a credit the server holds back while idle.
#[derive(Default)]
struct Credits {
    state: Mutex<CreditState>,
    /// Wakes the task that sends the credits.
    ready: Notify,
}

#[derive(Default)]
struct CreditState {
    /// Per client identity: what was taken and not credited yet.
    owed: HashMap<Bytes, Owed>,
    /// Credits to send now: (client, requests, bytes).
    due: Vec<(Bytes, usize, usize)>,
}

struct Owed {
    limits: frames::Limits,
    messages: usize,
    bytes: usize,
}

impl Owed {
    /// A quarter of a limit is owed.
    fn due(&self) -> bool {
        let reached = |owed: usize, limit: usize| limit > 0 && owed >= limit.div_ceil(4);
        reached(self.messages, self.limits.messages) || reached(self.bytes, self.limits.bytes)
    }
}

impl Credits {
    /// One request taken (whatever it turns out to be, even malformed): `frames` as received,
    /// the client's identity first.
    fn taken(&self, frames: &ZmqMessage) {
        let Some(peer) = frames.get(0) else {
            return;
        };
        let Some(limits) = frames::client_limits(peer) else {
            return;
        };
        let weight = limits.weight(frames::request_size(frames) - peer.len());
        let mut state = self.state.lock().expect("credits poisoned");
        let owed = state.owed.entry(peer.clone()).or_insert(Owed {
            limits,
            messages: 0,
            bytes: 0,
        });
        owed.messages += 1;
        owed.bytes += weight;
        if owed.due() {
            let (messages, bytes) = (owed.messages, owed.bytes);
            state.owed.remove(peer);
            state.due.push((peer.clone(), messages, bytes));
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Nothing more to read: everything owed is due.
    fn idle(&self) {
        let mut state = self.state.lock().expect("credits poisoned");
        if state.owed.is_empty() {
            return;
        }
        let owed: Vec<_> = state.owed.drain().map(|(peer, owed)| (peer, owed.messages, owed.bytes)).collect();
        state.due.extend(owed);
        drop(state);
        self.ready.notify_one();
    }

    /// Send the credits due, as they become due, until aborted.
    async fn send(self: Arc<Self>, mut sender: RouterSendHalf) {
        loop {
            self.ready.notified().await;
            let due = std::mem::take(&mut self.state.lock().expect("credits poisoned").due);
            for (peer, messages, bytes) in due {
                if let Err(err) = sender.send(frames::credit(peer, messages, bytes)).await {
                    // The client is gone, and its window with it.
                    tracing::debug!(error = %err, "credit not sent");
                }
            }
        }
    }
}

/// A listener: its ROUTER socket, its records and its duplicate window.
pub(crate) struct ZmqListener {
    receiver: Option<RouterRecvHalf>,
    sender: RouterSendHalf,
    registration: Registration,
    stopped: bool,
    duplicates: DuplicateFilter,
    ipc_file: Option<PathBuf>,
    host: String,
    credits: Arc<Credits>,
    /// `TransportConfig::max_message_size`: larger requests are dropped before decoding.
    max_message_size: usize,
    /// Sends the credits (holds a sender: aborted on cleanup so that the socket closes).
    crediting: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ZmqListener {
    fn drop(&mut self) {
        if let Some(task) = self.crediting.take() {
            task.abort();
        }
    }
}

impl ZmqListener {
    /// Bind, register this listener's `host:port` under each of `keys` and each pool record
    /// `(key, pool name)` of `pools`, and start refreshing them.
    pub(crate) async fn start(
        config: &ZmqConfig,
        matchmaker: Arc<dyn Matchmaker>,
        keys: Vec<String>,
        pools: Vec<(String, String)>,
    ) -> Result<Self> {
        let bound = bind(config).await?;
        let own = keys.into_iter().map(|key| (key, bound.host.clone())).collect();
        let (sender, receiver) = bound.socket.split();
        let registration = match Registration::start(matchmaker, own, pools, config).await {
            Ok(registration) => registration,
            Err(err) => {
                remove_ipc_file(bound.ipc_file).await;
                return Err(err);
            }
        };
        tracing::debug!(host = %bound.host, ipc = ?bound.ipc_file, "listening");
        let credits = Arc::new(Credits::default());
        let crediting = tokio::spawn(credits.clone().send(sender.clone()));
        Ok(ZmqListener {
            receiver: Some(receiver),
            sender,
            registration,
            stopped: false,
            duplicates: DuplicateFilter::default(),
            ipc_file: bound.ipc_file,
            host: bound.host,
            credits,
            max_message_size: config.max_message_size,
            crediting: Some(crediting),
        })
    }
}

async fn remove_ipc_file(path: Option<PathBuf>) {
    if let Some(path) = path {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    }
}

#[async_trait]
impl Listener for ZmqListener {
    async fn next(&mut self) -> Option<Box<dyn IncomingMessage>> {
        loop {
            if self.stopped {
                return None;
            }
            let receiver = self.receiver.as_mut()?;
            let mut receive = receiver.recv();
            let received = match futures::poll!(receive.as_mut()) {
                std::task::Poll::Ready(received) => received,
                std::task::Poll::Pending => {
                    // Nothing waiting to be read: credit everything taken so far.
                    self.credits.idle();
                    receive.await
                }
            };
            let frames = match received {
                Ok(frames) => frames,
                Err(err) => {
                    // Per-peer failures are handled by the crate (the peer is dropped); do not
                    // spin if it keeps reporting.
                    tracing::debug!(error = %err, "receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            self.credits.taken(&frames);
            let decoded = frames::check_size(&frames, self.max_message_size).and_then(|()| frames::decode_request(frames));
            let request = match decoded {
                Ok(request) => request,
                Err(err) => {
                    tracing::warn!(host = %self.host, error = %clip(&err.to_string()), "dropping a malformed message");
                    continue;
                }
            };
            if let Some(unique_id) = &request.unique_id {
                if !self.duplicates.check_and_add(unique_id) {
                    tracing::info!(unique_id = %clip(unique_id), "dropping a duplicate message");
                    continue;
                }
            }
            return Some(Box::new(ZmqIncoming {
                request,
                sender: self.sender.clone(),
                replied: AtomicBool::new(false),
            }));
        }
    }

    async fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            // What was taken is credited; what clients sent since is not read.
            self.credits.idle();
            // Clients stop choosing this server first; what they already sent is not read.
            self.registration.unregister().await;
        }
    }

    async fn cleanup(&mut self) {
        self.stop().await;
        // The socket closes once the messages still being handled (each holds a sender) are dropped.
        self.receiver = None;
        if let Some(task) = self.crediting.take() {
            task.abort();
        }
        remove_ipc_file(self.ipc_file.take()).await;
    }
}

/// A request taken from the ROUTER socket.
struct ZmqIncoming {
    request: Request,
    sender: RouterSendHalf,
    replied: AtomicBool,
}

impl std::fmt::Debug for ZmqIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqIncoming")
            .field("kind", &self.request.kind)
            .field("message_id", &String::from_utf8_lossy(&self.request.message_id))
            .finish()
    }
}

impl ZmqIncoming {
    async fn send_to_caller(&self, payload: Option<Bytes>) -> Result<()> {
        let frames = frames::reply(self.request.peer.clone(), &self.request.message_id, payload);
        let mut sender = self.sender.clone();
        if let Err(err) = sender.send(frames).await {
            // The caller is gone (its connection closed): nothing to do but say so.
            tracing::info!(message_id = %clip(&String::from_utf8_lossy(&self.request.message_id)), error = %err, "caller gone; reply dropped");
        }
        Ok(())
    }
}

#[async_trait]
impl IncomingMessage for ZmqIncoming {
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
        self.request.kind == MessageType::Call
    }

    async fn reply(&self, outcome: std::result::Result<Value, RemoteError>) -> Result<()> {
        if !self.expects_reply() || self.replied.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let payload = frames::encode_reply_payload(&outcome)?;
        self.send_to_caller(Some(payload)).await
    }

    async fn heartbeat(&self) -> Result<()> {
        if !self.expects_reply() || self.replied.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.send_to_caller(None).await
    }

    async fn acknowledge(&self) -> Result<()> {
        // Nothing to acknowledge: there is no broker, the message is already here.
        Ok(())
    }

    async fn requeue(&self) -> Result<()> {
        Err(Error::transport(
            crate::DRIVER_NAME,
            "the zmq driver cannot requeue a message: there is no broker to give it back to",
            false,
        ))
    }
}
