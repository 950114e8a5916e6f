//! Our implementation: `oslo_messaging::get_transport(url)` with the project's `RpcServer` /
//! `RpcClient` / `Notifier` / `NotificationListener`, on whichever driver the URL names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oslo_messaging::driver_rabbit::RabbitDriver;
use oslo_messaging::{
    get_transport, Driver, Endpoint, HandlerError, JsonMap, NotificationEndpoint, NotificationListener, NotificationResult, Notifier,
    Priority, RpcClient, RpcServer, Target, Transport, TransportConfig, TransportUrl,
};
use serde_json::{json, Value};

use crate::common::{stdin_eof, Measurement, Res};

/// An RPC server on `transport` with `echo(value)`, `incr(value?)`, `counter()`.
pub async fn start_server(transport: &Transport, topic: &str, name: &str) -> Res<RpcServer> {
    let count = Arc::new(AtomicU64::new(0));
    let (incr, read) = (count.clone(), count);
    let endpoint = Endpoint::new()
        .method("echo", |_ctxt, mut args: JsonMap| async move {
            Ok::<_, HandlerError>(args.remove("value").unwrap_or(Value::Null))
        })
        .method("incr", move |_ctxt, _args: JsonMap| {
            let incr = incr.clone();
            async move {
                incr.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(Value::Null)
            }
        })
        .method("counter", move |_ctxt, _args: JsonMap| {
            let read = read.clone();
            async move { Ok::<_, HandlerError>(read.load(Ordering::Relaxed)) }
        });
    RpcServer::builder(transport.clone(), Target::new(topic).with_server(name))
        .endpoint(endpoint)
        .start()
        .await
        .map_err(|e| format!("RpcServer::start: {e}"))
}

/// Stop servers, then release their transport, each step bounded.
pub async fn stop_servers(servers: &[RpcServer], transport: &Transport) {
    for server in servers {
        if tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await.is_err() {
            eprintln!("ours server: shutdown did not finish within 15 s");
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), transport.cleanup()).await.is_err() {
        eprintln!("ours server: transport cleanup did not finish within 10 s");
    }
}

/// `serve-ours TOPIC NAME`: one RPC server (see [`start_server`]); runs until stdin closes.
pub async fn serve(url: &str, topic: &str, name: &str) -> Res<()> {
    let transport = get_transport(url).map_err(|e| format!("get_transport({url}): {e}"))?;
    let server = start_server(&transport, topic, name).await?;
    println!("READY");
    let _ = stdin_eof().await;
    stop_servers(&[server], &transport).await;
    println!("STOPPED");
    Ok(())
}

/// Our RPC client, on any driver. Cheap to clone.
#[derive(Clone)]
pub struct OursClient {
    transport: Transport,
    /// With the rabbit driver: the same driver as `transport`'s, kept typed to learn its reply
    /// queue's name (oslo leaves reply queues to expire after 30 min; the runner deletes it).
    rabbit: Option<Arc<RabbitDriver>>,
    client: RpcClient,
    fanout: RpcClient,
    ctxt: Arc<JsonMap>,
}

impl OursClient {
    /// A client for `topic` with call timeout `timeout`, through `get_transport(url)` (for
    /// `rabbit://`, built as `get_transport` builds it but keeping a typed driver handle).
    pub fn new(url: &str, topic: &str, timeout: Duration) -> Res<OursClient> {
        let (transport, rabbit) = if url.starts_with("rabbit://") {
            let parsed = TransportUrl::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
            let config = TransportConfig::default();
            let driver = Arc::new(RabbitDriver::new(&parsed, &config).map_err(|e| format!("RabbitDriver::new({url}): {e}"))?);
            (
                Transport::from_driver(driver.clone() as Arc<dyn Driver>, parsed, config),
                Some(driver),
            )
        } else {
            (get_transport(url).map_err(|e| format!("get_transport({url}): {e}"))?, None)
        };
        let client = RpcClient::new(transport.clone(), Target::new(topic)).timeout(timeout);
        let fanout = client.prepare().fanout(true);
        Ok(OursClient {
            transport,
            rabbit,
            client,
            fanout,
            ctxt: Arc::new(JsonMap::new()),
        })
    }

    /// One `echo` call; `args` is `{"value": <payload string>}`.
    pub async fn echo(&self, args: &Value) -> Res<()> {
        let result = self
            .client
            .call(&self.ctxt, "echo", args)
            .await
            .map_err(|e| format!("echo call: {e}"))?;
        if result != args["value"] {
            return Err("echo returned a different value".into());
        }
        Ok(())
    }

    /// The counter of server `server` (a server-targeted call).
    pub async fn counter(&self, server: &str) -> Res<u64> {
        let value = self
            .client
            .prepare()
            .server(server)
            .call(&self.ctxt, "counter", json!({}))
            .await
            .map_err(|e| format!("counter call: {e}"))?;
        value.as_u64().ok_or_else(|| format!("bad counter reply {value}"))
    }

    /// A cast of `incr(value)` to the topic (or a fanout cast).
    pub async fn cast(&self, fanout: bool, args: &Value) -> Res<()> {
        let client = if fanout { &self.fanout } else { &self.client };
        client.cast(&self.ctxt, "incr", args).await.map_err(|e| format!("cast: {e}"))
    }

    /// Release the transport; returns the reply queue's name (left behind, as oslo does).
    pub async fn close(&self) -> Option<String> {
        let reply_queue = self.rabbit.as_ref().and_then(|d| d.reply_queue_name().map(str::to_string));
        if tokio::time::timeout(Duration::from_secs(10), self.transport.cleanup())
            .await
            .is_err()
        {
            eprintln!("oslo-bench: our client's transport cleanup did not finish within 10 s");
        }
        reply_queue
    }
}

/// Scenario e): `count` `info` notifications sent by a `Notifier` (up to `window` sends in
/// flight, so publisher confirms are windowed) to a `NotificationListener` running in this
/// process on its own transport (its own connection). Timed from the first send until the
/// listener has counted them all; the send-only rate is also recorded. The queue
/// `<topic>.info` is left for the runner to delete.
pub async fn notify_bench(url: &str, topic: &str, count: u64, window: usize, payload_len: usize, bound: Duration) -> Res<Measurement> {
    let listen_transport = get_transport(url).map_err(|e| format!("get_transport({url}): {e}"))?;
    let send_transport = get_transport(url).map_err(|e| format!("get_transport({url}): {e}"))?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let endpoint = {
        let (received, done) = (received.clone(), done.clone());
        NotificationEndpoint::new().on(Priority::Info, move |_n| {
            let (received, done) = (received.clone(), done.clone());
            async move {
                if received.fetch_add(1, Ordering::Relaxed) + 1 >= count {
                    done.notify_one();
                }
                NotificationResult::Handled
            }
        })
    };
    let listener = NotificationListener::builder(listen_transport.clone(), vec![Target::new(topic)])
        .endpoint(endpoint)
        .start()
        .await
        .map_err(|e| format!("NotificationListener::start: {e}"))?;
    let notifier = Notifier::new(send_transport.clone()).publisher_id("bench").topics([topic]);
    let ctxt = Arc::new(JsonMap::new());
    let payload = Arc::new(json!({ "value": "x".repeat(payload_len) }));
    let result = async {
        let tickets = Arc::new(AtomicU64::new(count));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..window {
            let (notifier, ctxt, payload, tickets) = (notifier.clone(), ctxt.clone(), payload.clone(), tickets.clone());
            tasks.spawn(async move {
                while tickets
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    notifier
                        .info(&ctxt, "bench.event", (*payload).clone())
                        .await
                        .map_err(|e| format!("notify: {e}"))?;
                }
                Ok::<_, String>(())
            });
        }
        let sending = tokio::time::timeout(bound, async {
            while let Some(joined) = tasks.join_next().await {
                joined.map_err(|e| format!("notify task: {e}"))??;
            }
            Ok::<_, String>(())
        })
        .await;
        match sending {
            Err(_) => return Err(format!("notifications not all sent within {bound:?}")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        let sent = start.elapsed().as_secs_f64();
        let left = bound.saturating_sub(start.elapsed());
        let waiting = async {
            while received.load(Ordering::Relaxed) < count {
                // Notified by the handler of the last one; the short sleep bounds a lost wake-up.
                let _ = tokio::time::timeout(Duration::from_millis(50), done.notified()).await;
            }
        };
        if tokio::time::timeout(left, waiting).await.is_err() {
            return Err(format!(
                "listener counted only {} of {count} within {bound:?}",
                received.load(Ordering::Relaxed)
            ));
        }
        let total = start.elapsed().as_secs_f64();
        Ok(Measurement {
            per_s: Some(count as f64 / total),
            send_per_s: Some(count as f64 / sent),
            ops: Some(count),
            note: format!(
                "{count} notifications, {window} concurrent sends; listener in the client process counted {}",
                received.load(Ordering::Relaxed)
            ),
            ..Default::default()
        })
    }
    .await;
    if tokio::time::timeout(Duration::from_secs(15), listener.shutdown()).await.is_err() {
        eprintln!("oslo-bench: notification listener shutdown did not finish within 15 s");
    }
    for t in [&send_transport, &listen_transport] {
        if tokio::time::timeout(Duration::from_secs(10), t.cleanup()).await.is_err() {
            eprintln!("oslo-bench: notification transport cleanup did not finish within 10 s");
        }
    }
    result
}
