//! Quick latency/throughput check of the zmq driver: an echo server in a child process and a
//! client here (`cargo run -p driver-zmq --release --example zmq_rpc_bench -- [URL]`).
//! The side-by-side benchmark against raw zeromq is `oslo-bench`; this is for tuning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oslo_core::{context, Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn registry() -> oslo_core::DriverRegistry {
    let registry = oslo_core::DriverRegistry::new();
    driver_zmq::register(&registry);
    registry
}

async fn serve(url: &str, topic: &str) {
    let transport = registry().get_transport(url).expect("transport");
    let server = RpcServer::builder(transport.clone(), Target::new(topic).with_server("bench"))
        .endpoint(Endpoint::new().method("echo", |_c, args: JsonMap| async move {
            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
        }))
        .start()
        .await
        .expect("server");
    println!("READY");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    server.shutdown().await;
    transport.cleanup().await;
}

/// Raw zeromq echo: ROUTER sends every message back unchanged.
async fn serve_raw() {
    use zeromq::{Socket, SocketRecv, SocketSend};
    let mut router = zeromq::RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.expect("bind");
    println!("READY {endpoint}");
    let (mut send, mut recv) = router.split();
    while let Ok(message) = recv.recv().await {
        if send.send(message).await.is_err() {
            break;
        }
    }
}

/// Raw zeromq client of the same shape: 64 tasks, replies matched by id.
async fn raw_client(endpoint: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(endpoint).await.expect("connect");
    let (send, mut recv) = dealer.split();
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let reader_waiting = waiting.clone();
    tokio::spawn(async move {
        while let Ok(message) = recv.recv().await {
            let id = u64::from_le_bytes(message.get(0).unwrap()[..8].try_into().unwrap());
            if let Some(tx) = reader_waiting.lock().unwrap().remove(&id) {
                let _ = tx.send(());
            }
        }
    });
    let next = Arc::new(AtomicU64::new(0));
    let call = {
        let (send, waiting, next) = (send.clone(), waiting.clone(), next.clone());
        move || {
            let (send, waiting, next) = (send.clone(), waiting.clone(), next.clone());
            async move {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = tokio::sync::oneshot::channel();
                waiting.lock().unwrap().insert(id, tx);
                let mut message = ZmqMessage::from(id.to_le_bytes().to_vec());
                message.push_back(vec![b'x'; 116].into());
                send.lock().await.send(message).await.unwrap();
                rx.await.unwrap();
            }
        }
    };
    for _ in 0..500 {
        call().await;
    }
    let mut latencies = Vec::new();
    for _ in 0..5000 {
        let started = Instant::now();
        call().await;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("raw sequential: median {:.3} ms", latencies[latencies.len() / 2]);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(5);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (call, done) = (call.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    call().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!("raw 64 in flight: {:.0} calls/s", done.load(Ordering::Relaxed) as f64 / 5.0);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(&args[2], &args[3]).await;
        return;
    }
    if args.get(1).map(String::as_str) == Some("--serve-raw") {
        serve_raw().await;
        return;
    }
    if args.get(1).map(String::as_str) == Some("--raw") {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .arg("--serve-raw")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("raw server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next_line().await.unwrap().unwrap();
        raw_client(ready.strip_prefix("READY ").unwrap()).await;
        return;
    }
    let url = args.get(1).cloned().unwrap_or_else(|| "zmq+redis://127.0.0.1:6379".into());
    let topic = format!("zmq-bench-{}", std::process::id());
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--serve", &url, &topic])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("READY"));

    let transport = registry().get_transport(&url).expect("transport");
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    let ctxt = context(json!({"request_id": "req-bench", "user_id": "u"}));
    let args = json!({"value": "x".repeat(60)});
    for _ in 0..500 {
        client.call(&ctxt, "echo", args.clone()).await.unwrap();
    }
    let mut latencies = Vec::new();
    for _ in 0..5000 {
        let started = Instant::now();
        client.call(&ctxt, "echo", args.clone()).await.unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "sequential: median {:.3} ms, p99 {:.3} ms",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(5);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, ctxt, args, done) = (client.clone(), ctxt.clone(), args.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    client.call(&ctxt, "echo", args.clone()).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!("64 in flight: {:.0} calls/s", done.load(Ordering::Relaxed) as f64 / 5.0);
    drop(child.stdin.take());
    let _ = child.wait().await;
    transport.cleanup().await;
}
