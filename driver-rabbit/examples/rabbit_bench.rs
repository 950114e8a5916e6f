//! Throughput / latency check of the rabbit driver against a real broker.
//!
//! Run the server and the client in two processes (as the raw lapin floors in
//! `transport-notes.md` were measured):
//!
//! ```sh
//! cargo run --release -p driver-rabbit --example rabbit_bench -- serve bench 120   # seconds
//! cargo run --release -p driver-rabbit --example rabbit_bench -- seq bench 5000
//! cargo run --release -p driver-rabbit --example rabbit_bench -- pipe bench 10 64
//! cargo run --release -p driver-rabbit --example rabbit_bench -- cast bench 100000 256
//! ```
//!
//! The broker URL comes from `OSLO_TEST_RABBIT_URL` (default `rabbit://guest:guest@127.0.0.1:5672/`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driver_rabbit::RabbitDriver;
use oslo_core::{Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target, Transport, TransportConfig, TransportUrl};
use serde_json::{json, Value};

fn transport() -> Transport {
    let url = std::env::var("OSLO_TEST_RABBIT_URL").unwrap_or_else(|_| "rabbit://guest:guest@127.0.0.1:5672/".into());
    let url = TransportUrl::parse(&url).expect("url");
    let config = TransportConfig::default();
    let driver = RabbitDriver::new(&url, &config).expect("driver");
    Transport::from_driver(Arc::new(driver), url, config)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("seq");
    let topic = args.get(2).cloned().unwrap_or_else(|| "bench".into());
    let transport = transport();
    let ctxt = JsonMap::new();
    match mode {
        "serve" => {
            let received = Arc::new(AtomicU64::new(0));
            let counter = received.clone();
            let reader = received.clone();
            let server = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("bench-server"))
                .endpoint(
                    Endpoint::new()
                        .method("echo", |_c, args: JsonMap| async move {
                            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
                        })
                        .method("record", move |_c, _args: Value| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            async { Ok::<_, HandlerError>(()) }
                        })
                        .method("count", move |_c, _args: Value| {
                            let n = reader.load(Ordering::Relaxed);
                            async move { Ok::<_, HandlerError>(n) }
                        }),
                )
                .executor_pool_size(std::env::var("BENCH_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or(64))
                .start()
                .await
                .expect("server");
            let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(120);
            eprintln!("serving topic {topic} for {secs} s");
            tokio::time::sleep(Duration::from_secs(secs)).await;
            server.shutdown().await;
        }
        "seq" => {
            let n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5000);
            let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
            for _ in 0..500 {
                client.call(&ctxt, "echo", json!({"value": "x"})).await.expect("warm-up call");
            }
            let mut latencies = Vec::with_capacity(n);
            let started = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                client.call(&ctxt, "echo", json!({"value": "x"})).await.expect("call");
                latencies.push(t.elapsed());
            }
            let total = started.elapsed();
            latencies.sort();
            println!(
                "seq: {n} calls, median {:?}, p99 {:?}, {:.0} calls/s",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                n as f64 / total.as_secs_f64()
            );
        }
        "pipe" => {
            let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
            let inflight: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64);
            let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(30));
            let done = Arc::new(AtomicU64::new(0));
            let warmup_end = Instant::now() + Duration::from_secs(1);
            let end = warmup_end + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for _ in 0..inflight {
                let client = client.clone();
                let done = done.clone();
                let ctxt = ctxt.clone();
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        client.call(&ctxt, "echo", json!({"value": "x"})).await.expect("call");
                        if t >= warmup_end {
                            done.fetch_add(1, Ordering::Relaxed);
                            latencies.push(t.elapsed());
                        }
                    }
                    latencies
                }));
            }
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await.unwrap());
            }
            latencies.sort();
            println!(
                "pipe: {inflight} in flight, {:.0} calls/s, median {:?}, p99 {:?}",
                done.load(Ordering::Relaxed) as f64 / secs as f64,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99)
            );
        }
        "cast" => {
            let n: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100_000);
            let inflight: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(256);
            let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(30));
            let before = client.call(&ctxt, "count", json!({})).await.expect("count").as_u64().unwrap();
            let started = Instant::now();
            let mut tasks = Vec::new();
            for worker in 0..inflight {
                let client = client.clone();
                let ctxt = ctxt.clone();
                let share = n / inflight + u64::from(worker < n % inflight);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..share {
                        client.cast(&ctxt, "record", json!({"value": "x"})).await.expect("cast");
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            let published = started.elapsed();
            loop {
                let count = client.call(&ctxt, "count", json!({})).await.expect("count").as_u64().unwrap();
                if count - before >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let total = started.elapsed();
            println!(
                "cast: {n} casts with confirms, {inflight} senders: published {:.0}/s, end to end {:.0}/s",
                n as f64 / published.as_secs_f64(),
                n as f64 / total.as_secs_f64()
            );
        }
        "raw-serve" => raw::serve(&topic, args.get(3).and_then(|a| a.parse().ok()).unwrap_or(120)).await,
        "raw-seq" => raw::seq(&topic, args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5000)).await,
        "raw-cast" => {
            raw::cast(
                &topic,
                args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100_000),
                args.get(4).and_then(|a| a.parse().ok()).unwrap_or(256),
            )
            .await
        }
        "raw-pipe" => {
            raw::pipe(
                &topic,
                args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10),
                args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64),
            )
            .await
        }
        other => eprintln!("unknown mode {other}: serve | seq | pipe | cast | raw-serve | raw-seq | raw-pipe"),
    }
    transport.cleanup().await;
}

/// The raw lapin floor of `transport-notes.md` ("lapin -> RabbitMQ, manual ack"): the same
/// request/reply pattern without oslo, to compare with on the same machine at the same time.
mod raw {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use driver_rabbit::BrokerAddress;
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
    use tokio::sync::oneshot;

    const BODY: &[u8] =
        br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\", \"args\": {\"value\": \"x\"}, \"_unique_id\": \"0123\"}"}"#;

    async fn channel() -> (Connection, Channel) {
        let url = std::env::var("OSLO_TEST_RABBIT_URL").unwrap_or_else(|_| "rabbit://guest:guest@127.0.0.1:5672/".into());
        let uri = BrokerAddress::from_url(&oslo_core::TransportUrl::parse(&url).unwrap())[0].expose_uri(false);
        let connection = Connection::connect(&uri, ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    pub async fn serve(topic: &str, secs: u64) {
        let queue = format!("{topic}-raw");
        let (_connection, channel) = channel().await;
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "raw".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let serve = async {
            while let Some(Ok(delivery)) = consumer.next().await {
                let channel = channel.clone();
                tokio::spawn(async move {
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                    let reply_to = delivery.properties.reply_to().clone().unwrap();
                    let properties = BasicProperties::default().with_correlation_id(delivery.properties.correlation_id().clone().unwrap());
                    channel
                        .basic_publish("".into(), reply_to, BasicPublishOptions::default(), &delivery.data, properties)
                        .await
                        .unwrap();
                });
            }
        };
        // One-way sink for raw-cast: ack every message as the oslo server does.
        let sink = format!("{topic}-rawcast");
        channel
            .queue_declare(sink.as_str().into(), options, FieldTable::default())
            .await
            .unwrap();
        let mut casts = channel
            .basic_consume(
                sink.as_str().into(),
                "rawcast".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let sink_channel = channel.clone();
        let drain = async move {
            use futures::FutureExt;
            while let Some(Ok(delivery)) = casts.next().await {
                let _ = sink_channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .now_or_never();
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(secs), futures::future::join(serve, drain)).await;
    }

    /// Publisher-confirmed one-way sends to the raw sink, `inflight` publishers on one channel.
    pub async fn cast(topic: &str, n: u64, inflight: u64) {
        let (_connection, channel) = channel().await;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        let sink = format!("{topic}-rawcast");
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..inflight {
            let channel = channel.clone();
            let sink = sink.clone();
            let share = n / inflight + u64::from(worker < n % inflight);
            tasks.push(tokio::spawn(async move {
                for _ in 0..share {
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            sink.as_str().into(),
                            BasicPublishOptions::default(),
                            BODY,
                            BasicProperties::default(),
                        )
                        .await
                        .unwrap();
                    assert!(confirm.await.unwrap().is_ack());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        println!(
            "raw-cast: {n} publishes with confirms, {inflight} publishers: {:.0}/s",
            n as f64 / started.elapsed().as_secs_f64()
        );
    }

    async fn reply_queue(channel: &Channel) -> (String, lapin::Consumer) {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let name = queue.name().to_string();
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        (name, consumer)
    }

    pub async fn seq(topic: &str, n: usize) {
        let (_connection, channel) = channel().await;
        let (reply_to, mut replies) = reply_queue(&channel).await;
        let queue = format!("{topic}-raw");
        let mut latencies = Vec::new();
        for i in 0..(n + 500) {
            let t = Instant::now();
            let properties = BasicProperties::default()
                .with_reply_to(reply_to.as_str().into())
                .with_correlation_id(i.to_string().into());
            channel
                .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), BODY, properties)
                .await
                .unwrap();
            let delivery = replies.next().await.unwrap().unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            if i >= 500 {
                latencies.push(t.elapsed());
            }
        }
        latencies.sort();
        let total: Duration = latencies.iter().sum();
        println!(
            "raw-seq: {n} calls, median {:?}, p99 {:?}, {:.0} calls/s",
            super::percentile(&latencies, 0.5),
            super::percentile(&latencies, 0.99),
            n as f64 / total.as_secs_f64()
        );
    }

    pub async fn pipe(topic: &str, secs: u64, inflight: usize) {
        let (_connection, channel) = channel().await;
        let (reply_to, mut replies) = reply_queue(&channel).await;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let router = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                let id = delivery.properties.correlation_id().clone().unwrap().to_string();
                if let Some(sender) = router.lock().unwrap().remove(&id) {
                    let _ = sender.send(());
                }
            }
        });
        let queue = format!("{topic}-raw");
        let warmup_end = Instant::now() + Duration::from_secs(1);
        let end = warmup_end + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for worker in 0..inflight {
            let channel = channel.clone();
            let waiting = waiting.clone();
            let reply_to = reply_to.clone();
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let t = Instant::now();
                    let id = format!("{worker}-{i}");
                    let (sender, receiver) = oneshot::channel();
                    waiting.lock().unwrap().insert(id.clone(), sender);
                    let properties = BasicProperties::default()
                        .with_reply_to(reply_to.as_str().into())
                        .with_correlation_id(id.into());
                    channel
                        .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), BODY, properties)
                        .await
                        .unwrap();
                    receiver.await.unwrap();
                    if t >= warmup_end {
                        done += 1;
                    }
                }
                done
            }));
        }
        let mut done = 0;
        for task in tasks {
            done += task.await.unwrap();
        }
        println!("raw-pipe: {inflight} in flight, {:.0} calls/s", done as f64 / secs as f64);
    }
}
