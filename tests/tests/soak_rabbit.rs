//! A bounded soak on the real RabbitMQ (`OSLO_TEST_RABBIT_URL`): 64 operations in flight,
//! calls, casts and fanout casts mixed, against two servers. Checks zero lost replies, zero
//! hung calls, every confirmed cast handled (fanouts by both servers), and stable memory: the
//! resident set at the end within 20% of the one after the warm-up.
//!
//! `OSLO_SOAK_SECS` sets the duration (default 20 s, what CI runs); the long form is
//!
//! ```sh
//! OSLO_SOAK_SECS=120 OSLO_TEST_RABBIT_URL=rabbit://guest:guest@127.0.0.1:5672/ \
//!     cargo test -p oslo-tests --test soak_rabbit -- --nocapture
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oslo_core::{Endpoint, HandlerError, JsonMap, RpcClient, RpcServer, Target};
use oslo_tests::broker_url;
use oslo_tests::rabbit_ops::{rabbit_transport, rss_kib, unique_name};
use serde_json::{json, Value};

/// Operations in flight at any time.
const IN_FLIGHT: usize = 64;
/// The call timeout; a call not back within it plus a margin counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed RSS growth from the end of the warm-up to the end of the run.
const RSS_GROWTH_LIMIT: f64 = 0.20;

fn ctxt() -> JsonMap {
    oslo_core::context(json!({"user_id": "u-soak", "request_id": "req-soak"}))
}

/// Counters only: the bookkeeping must not grow with the run, or it would be measured as a
/// leak.
#[derive(Default)]
struct Counters {
    calls_ok: AtomicU64,
    calls_failed: AtomicU64,
    calls_hung: AtomicU64,
    casts_confirmed: AtomicU64,
    casts_handled: AtomicU64,
    fanouts_confirmed: AtomicU64,
    fanouts_handled: AtomicU64,
    send_errors: AtomicU64,
}

fn endpoint(counters: Arc<Counters>) -> Endpoint {
    let cast_counters = counters.clone();
    Endpoint::new()
        .method("echo", |_ctxt, args: JsonMap| async move {
            Ok::<_, HandlerError>(args.get("value").cloned().unwrap_or(Value::Null))
        })
        .method("cast", move |_ctxt, _args: JsonMap| {
            let counters = cast_counters.clone();
            async move {
                counters.casts_handled.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(Value::Null)
            }
        })
        .method("fanout", move |_ctxt, _args: JsonMap| {
            let counters = counters.clone();
            async move {
                counters.fanouts_handled.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(Value::Null)
            }
        })
}

fn soak_duration() -> Duration {
    let secs = std::env::var("OSLO_SOAK_SECS")
        .ok()
        .map(|v| v.trim().parse::<u64>().expect("OSLO_SOAK_SECS is a number of seconds"))
        .unwrap_or(20);
    Duration::from_secs(secs.max(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn soak_calls_casts_and_fanouts_lose_nothing_and_keep_memory_flat() {
    let Some(url) = broker_url("rabbit", "OSLO_TEST_RABBIT_URL") else {
        return;
    };
    let duration = soak_duration();
    // A fifth of the run (2..=20 s): connections, channels, queues and buffers are set up.
    let warm_up = (duration / 5).clamp(Duration::from_secs(2), Duration::from_secs(20));
    let topic = unique_name("soak");
    let counters = Arc::new(Counters::default());
    let (server_transport, _) = rabbit_transport(&url, &[]);
    let (client_transport, client_driver) = rabbit_transport(&url, &[]);
    let mut servers = Vec::new();
    for server in ["s1", "s2"] {
        servers.push(
            RpcServer::builder(server_transport.clone(), Target::new(&topic).with_server(server))
                .endpoint(endpoint(counters.clone()))
                .start()
                .await
                .unwrap(),
        );
    }
    let client = RpcClient::new(client_transport.clone(), Target::new(&topic)).timeout(CALL_TIMEOUT);
    client.call(&ctxt(), "echo", json!({"value": 0})).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|worker| {
            let client = client.clone();
            let fanout = client.prepare().fanout(true);
            let counters = counters.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let value = format!("w{worker}-{i}");
                    // Six calls, one cast, one fanout in every eight operations.
                    match i % 8 {
                        6 => {
                            _ = match client.cast(&ctxt(), "cast", json!({"value": value})).await {
                                Ok(()) => counters.casts_confirmed.fetch_add(1, Ordering::Relaxed),
                                Err(err) => {
                                    eprintln!("cast {value} failed: {err}");
                                    counters.send_errors.fetch_add(1, Ordering::Relaxed)
                                }
                            }
                        }
                        7 => {
                            _ = match fanout.cast(&ctxt(), "fanout", json!({"value": value})).await {
                                Ok(()) => counters.fanouts_confirmed.fetch_add(1, Ordering::Relaxed),
                                Err(err) => {
                                    eprintln!("fanout {value} failed: {err}");
                                    counters.send_errors.fetch_add(1, Ordering::Relaxed)
                                }
                            }
                        }
                        _ => {
                            let context = ctxt();
                            let call = client.call(&context, "echo", json!({"value": value}));
                            match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), call).await {
                                Err(_) => counters.calls_hung.fetch_add(1, Ordering::Relaxed),
                                Ok(Ok(reply)) if reply == json!(value) => counters.calls_ok.fetch_add(1, Ordering::Relaxed),
                                Ok(Ok(reply)) => panic!("call {value} got the reply {reply} of another call"),
                                Ok(Err(err)) => {
                                    eprintln!("call {value} failed: {err}");
                                    counters.calls_failed.fetch_add(1, Ordering::Relaxed)
                                }
                            };
                        }
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    tokio::time::sleep(warm_up).await;
    let rss_warm = rss_kib().expect("VmRSS readable in /proc/self/status");
    let ops_warm = counters.calls_ok.load(Ordering::Relaxed);
    let mut rss_peak = rss_warm;
    eprintln!("after the {warm_up:?} warm-up: RSS {rss_warm} KiB, {ops_warm} calls");
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(5).min(duration.saturating_sub(started.elapsed()))).await;
        let rss = rss_kib().unwrap_or(0);
        rss_peak = rss_peak.max(rss);
        eprintln!(
            "{:>4}s: RSS {rss} KiB, {} calls ok, {} casts, {} fanouts",
            started.elapsed().as_secs(),
            counters.calls_ok.load(Ordering::Relaxed),
            counters.casts_confirmed.load(Ordering::Relaxed),
            counters.fanouts_confirmed.load(Ordering::Relaxed)
        );
    }
    let rss_end = rss_kib().unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();

    // Everything confirmed is handled: each cast once, each fanout by both servers.
    let drained = Instant::now();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    while drained.elapsed() < Duration::from_secs(20)
        && (load(&counters.casts_handled) < load(&counters.casts_confirmed)
            || load(&counters.fanouts_handled) < 2 * load(&counters.fanouts_confirmed))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = load(&counters.calls_ok);
    eprintln!(
        "{elapsed:?}: {calls} calls ({:.0}/s), {} failed, {} hung; {} casts confirmed, {} handled; {} fanouts confirmed, {} handled; \
         {} send errors; RSS warm {rss_warm} KiB, end {rss_end} KiB, peak {rss_peak} KiB",
        calls as f64 / elapsed.as_secs_f64(),
        load(&counters.calls_failed),
        load(&counters.calls_hung),
        load(&counters.casts_confirmed),
        load(&counters.casts_handled),
        load(&counters.fanouts_confirmed),
        load(&counters.fanouts_handled),
        load(&counters.send_errors),
    );
    assert!(calls > ops_warm, "no calls after the warm-up");
    assert_eq!(load(&counters.calls_hung), 0, "hung calls");
    assert_eq!(load(&counters.calls_failed), 0, "calls without their reply");
    assert_eq!(load(&counters.send_errors), 0, "casts that failed to send");
    assert_eq!(
        load(&counters.casts_handled),
        load(&counters.casts_confirmed),
        "every confirmed cast handled exactly once"
    );
    assert_eq!(
        load(&counters.fanouts_handled),
        2 * load(&counters.fanouts_confirmed),
        "every confirmed fanout handled by both servers"
    );
    let limit = (rss_warm as f64 * (1.0 + RSS_GROWTH_LIMIT)) as u64;
    assert!(
        rss_end <= limit,
        "RSS grew from {rss_warm} KiB after the warm-up to {rss_end} KiB at the end (limit {limit} KiB)"
    );

    for server in &servers {
        server.shutdown().await;
    }
    let reply_q = client_driver.reply_queue_name().map(str::to_string);
    client_transport.cleanup().await;
    server_transport.cleanup().await;
    let mut prefixes = vec![topic.as_str()];
    prefixes.extend(reply_q.as_deref());
    oslo_tests::purge_rabbit_queues(&url, &prefixes).await;
}
