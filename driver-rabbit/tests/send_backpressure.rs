//! Senders keep a bounded number of publishes waiting for their confirms, then wait: a proxy
//! holds the broker's confirms back and counts what the client publishes meanwhile.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oslo_core::Target;
use serde_json::json;

/// A proxy to the broker that counts the `basic.publish` frames the client sends and can hold
/// back everything the broker sends (its confirms), to see how far a sender runs ahead.
struct ConfirmGate {
    port: u16,
    publishes: Arc<AtomicUsize>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConfirmGate {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let publishes = Arc::new(AtomicUsize::new(0));
        let (open, _) = tokio::sync::watch::channel(true);
        let open = Arc::new(open);
        let (counter, gate) = (publishes.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut broker_read, mut broker_write) = outbound.into_split();
                let counter = counter.clone();
                tokio::spawn(async move {
                    // Client to broker: forwarded as it comes, method frames counted.
                    let mut frames = FrameCounter::default();
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 || broker_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        counter.fetch_add(frames.feed(&buffer[..n]), Ordering::SeqCst);
                    }
                });
                let mut gate = gate.subscribe();
                tokio::spawn(async move {
                    // Broker to client: held back while the gate is closed.
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = broker_read.read(&mut buffer).await {
                        if n == 0 || gate.wait_for(|open| *open).await.is_err() {
                            break;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        ConfirmGate {
            port,
            publishes,
            open,
            task,
        }
    }
}

impl Drop for ConfirmGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts `basic.publish` method frames (class 60, method 40) in an AMQP 0-9-1 byte stream.
#[derive(Default)]
struct FrameCounter {
    pending: Vec<u8>,
    header_skipped: bool,
}

impl FrameCounter {
    fn feed(&mut self, bytes: &[u8]) -> usize {
        self.pending.extend_from_slice(bytes);
        if !self.header_skipped {
            if self.pending.len() < 8 {
                return 0;
            }
            self.pending.drain(..8); // "AMQP\0\0\9\1"
            self.header_skipped = true;
        }
        let mut count = 0;
        loop {
            if self.pending.len() < 7 {
                return count;
            }
            let size = u32::from_be_bytes([self.pending[3], self.pending[4], self.pending[5], self.pending[6]]) as usize;
            if self.pending.len() < 7 + size + 1 {
                return count;
            }
            let payload = &self.pending[7..7 + size];
            if self.pending[0] == 1 && payload.len() >= 4 && payload[..4] == [0, 60, 0, 40] {
                count += 1;
            }
            self.pending.drain(..7 + size + 1);
        }
    }
}

/// Many senders at once while the broker's confirms are held back: the send connection stops
/// publishing at its bound of unconfirmed messages and the senders wait (no error); once the
/// confirms flow again, every cast completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn senders_wait_once_the_unconfirmed_bound_is_reached() {
    let url = require_broker!();
    let parsed = oslo_core::TransportUrl::parse(&url).unwrap();
    let broker = &driver_rabbit::BrokerAddress::from_url(&parsed)[0];
    let upstream = tokio::net::lookup_host((broker.host.as_str(), broker.port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let gate = ConfirmGate::start(upstream).await;
    let proxied = format!("rabbit://{}:{}@127.0.0.1:{}/", broker.username, broker.password.expose(), gate.port);
    let (transport, _) = common::transport(&proxied, &[]);
    let topic = common::unique("unconfirmed");
    let client = oslo_core::RpcClient::new(transport.clone(), Target::new(&topic));
    let ctxt = common::context();
    client
        .cast(&ctxt, "m", json!({}))
        .await
        .expect("a first cast sets the connection up");
    let before = gate.publishes.load(Ordering::SeqCst);
    gate.open.send_replace(false);
    let senders = 3000;
    let casts: Vec<_> = (0..senders)
        .map(|i| {
            let client = client.clone();
            let ctxt = ctxt.clone();
            tokio::spawn(async move { client.cast(&ctxt, "m", json!({"i": i})).await })
        })
        .collect();
    let settled = Instant::now();
    let mut sent = 0;
    while settled.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sent = gate.publishes.load(Ordering::SeqCst) - before;
    }
    eprintln!("{sent} of {senders} casts published while no confirm came back");
    assert!(
        sent <= driver_rabbit::MAX_UNCONFIRMED,
        "{sent} publishes ran ahead of their confirms"
    );
    assert!(sent >= driver_rabbit::MAX_UNCONFIRMED / 2, "the senders stopped early ({sent})");
    assert!(
        casts.iter().all(|c| !c.is_finished()),
        "a cast ended while its confirm was held back"
    );
    gate.open.send_replace(true);
    for cast in casts {
        tokio::time::timeout(Duration::from_secs(30), cast)
            .await
            .expect("a cast still waits after the confirms came back")
            .unwrap()
            .expect("a cast failed");
    }
    transport.cleanup().await;
}
