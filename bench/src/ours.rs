//! Our implementation: `oslo_messaging::get_transport("rabbit://...")` with the project's
//! `RpcServer` / `RpcClient` on the rabbit driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oslo_messaging::driver_rabbit::RabbitDriver;
use oslo_messaging::{
    get_transport, Driver, Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target, Transport, TransportConfig, TransportUrl,
};
use serde_json::{json, Value};

use crate::common::{stdin_eof, Res};

/// `serve-ours TOPIC NAME`: an RPC server with `echo(value)`, `incr()`, `counter()`; runs until
/// stdin closes.
pub async fn serve(url: &str, topic: &str, name: &str) -> Res<()> {
    let transport = get_transport(url).map_err(|e| format!("get_transport({url}): {e}"))?;
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
    let server = RpcServer::builder(transport.clone(), Target::new(topic).with_server(name))
        .endpoint(endpoint)
        .start()
        .await
        .map_err(|e| format!("RpcServer::start: {e}"))?;
    println!("READY");
    let _ = stdin_eof().await;
    if tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await.is_err() {
        eprintln!("ours server: shutdown did not finish within 15 s");
    }
    if tokio::time::timeout(Duration::from_secs(10), transport.cleanup()).await.is_err() {
        eprintln!("ours server: transport cleanup did not finish within 10 s");
    }
    println!("STOPPED");
    Ok(())
}

/// Our RPC client. Cheap to clone.
#[derive(Clone)]
pub struct OursClient {
    transport: Transport,
    /// The same driver as `transport`'s, kept typed to learn its reply queue's name.
    driver: Arc<RabbitDriver>,
    client: RpcClient,
    fanout: RpcClient,
    ctxt: Arc<JsonMap>,
    echo_args: Arc<Value>,
}

impl OursClient {
    /// A client for `topic` with call timeout `timeout`.
    ///
    /// Built as `get_transport` builds it (`RabbitDriver::new` with the default config), but
    /// keeping a typed handle on the driver, so the runner can delete the reply queue at the
    /// end (oslo leaves reply queues to expire after 30 min).
    pub fn new(url: &str, topic: &str, payload_len: usize, timeout: Duration) -> Res<OursClient> {
        let parsed = TransportUrl::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
        let config = TransportConfig::default();
        let driver = Arc::new(RabbitDriver::new(&parsed, &config).map_err(|e| format!("RabbitDriver::new({url}): {e}"))?);
        let transport = Transport::from_driver(driver.clone() as Arc<dyn Driver>, parsed, config);
        let client = RpcClient::new(transport.clone(), Target::new(topic)).timeout(timeout);
        let fanout = client.prepare().fanout(true);
        Ok(OursClient {
            transport,
            driver,
            client,
            fanout,
            ctxt: Arc::new(JsonMap::new()),
            echo_args: Arc::new(json!({ "value": "x".repeat(payload_len) })),
        })
    }

    /// One `echo` call of the benchmark payload.
    pub async fn echo(&self) -> Res<()> {
        let result = self
            .client
            .call(&self.ctxt, "echo", &*self.echo_args)
            .await
            .map_err(|e| format!("echo call: {e}"))?;
        if result != self.echo_args["value"] {
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

    /// A cast of `incr()` to the topic.
    pub async fn cast_incr(&self) -> Res<()> {
        self.client
            .cast(&self.ctxt, "incr", json!({}))
            .await
            .map_err(|e| format!("cast: {e}"))
    }

    /// A fanout cast of `incr()`.
    pub async fn fanout_incr(&self) -> Res<()> {
        self.fanout
            .cast(&self.ctxt, "incr", json!({}))
            .await
            .map_err(|e| format!("fanout cast: {e}"))
    }

    /// Release the transport; returns the reply queue's name (left behind, as oslo does).
    pub async fn close(&self) -> Option<String> {
        let reply_queue = self.driver.reply_queue_name().map(str::to_string);
        if tokio::time::timeout(Duration::from_secs(10), self.transport.cleanup())
            .await
            .is_err()
        {
            eprintln!("oslo-bench: our client's transport cleanup did not finish within 10 s");
        }
        reply_queue
    }
}
