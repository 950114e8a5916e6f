//! Bounded queues (`fake_max_queue_length`): a send to a full queue waits for room
//! (backpressure, not an error), fails only at its timeout, loses nothing once the listeners
//! catch up, keeps memory flat whatever the backlog, and works under `tokio::time::pause()`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driver_fake::{queue_stats, QueueStats};
use oslo_core::{
    context, DriverRegistry, Endpoint, Error, HandlerError, JsonMap, Retry, RpcClient, RpcServer, SendOptions, Target, Transport,
    TransportConfig,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

fn registry() -> DriverRegistry {
    let registry = DriverRegistry::new();
    driver_fake::register(&registry);
    registry
}

fn transport(url: &str) -> Transport {
    registry().get_transport(url).unwrap()
}

/// A bus name no other test uses.
fn bus(test: &str) -> String {
    format!("{test}-{}", oslo_core::codec::new_id())
}

/// `record(value)`: waits `delay` (virtual time under pause) or for the gate, then records.
async fn server(
    transport: Transport,
    topic: &str,
    name: &str,
    pool: usize,
    delay: Duration,
    gate: watch::Receiver<bool>,
) -> (RpcServer, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let endpoint = Endpoint::new().method("record", move |_c, args: JsonMap| {
        let (mut gate, record) = (gate.clone(), record.clone());
        async move {
            tokio::time::sleep(delay).await;
            let _ = gate.wait_for(|open| *open).await;
            record.lock().unwrap().push(args["value"].as_u64().unwrap());
            Ok::<_, HandlerError>(())
        }
    });
    let server = RpcServer::builder(transport, Target::new(topic).with_server(name))
        .endpoint(endpoint)
        .executor_pool_size(pool)
        .start()
        .await
        .unwrap();
    (server, seen)
}

fn open_gate() -> watch::Receiver<bool> {
    watch::channel(true).1
}

fn stats(bus: &str, queue: &str) -> QueueStats {
    queue_stats(bus, "openstack", queue).expect("queue exists")
}

fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<usize>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test(start_paused = true)]
async fn a_fast_caster_waits_for_a_slow_server_under_paused_time() {
    const BOUND: usize = 5;
    const CASTS: u64 = 50;
    let bus = bus("paused-caster");
    let url = format!("fake://{bus}?fake_max_queue_length={BOUND}");
    let (server, seen) = server(transport(&url), "slow", "s", 1, Duration::from_secs(1), open_gate()).await;
    let client = RpcClient::new(transport(&url), Target::new("slow"));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut caster = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for value in 0..CASTS {
                client.cast(&context(json!({})), "record", json!({"value": value})).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The server takes one and sleeps a (virtual) second on it: the caster fills the queue
    // and waits; the 100 ms timer fires long before the server's.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut caster).await.is_err(),
        "the caster waits"
    );
    let queue = stats(&bus, "slow");
    assert_eq!(queue.bound, Some(BOUND));
    assert_eq!((queue.len, queue.peak, queue.waiting), (BOUND, BOUND, 1), "{queue:?}");
    assert_eq!(sent.load(Ordering::SeqCst), BOUND + 1, "the bound plus the one being handled");

    let started = Instant::now();
    caster.await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut values = seen.lock().unwrap().clone();
    values.sort_unstable();
    assert_eq!(values, (0..CASTS).collect::<Vec<_>>(), "every cast exactly once");
    let queue = stats(&bus, "slow");
    assert_eq!(
        (queue.len, queue.peak, queue.waiting),
        (0, BOUND, 0),
        "never above the bound: {queue:?}"
    );
    // One handler at a time, one virtual second each: the caster was paced by the server.
    assert!(
        started.elapsed() >= Duration::from_secs(CASTS - BOUND as u64 - 2),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

/// With the default bounds (1000 messages, 4 MiB): a backlog of big casts stays at 4 MiB.
#[tokio::test]
async fn memory_does_not_grow_with_the_backlog() {
    const CASTS: u64 = 1000;
    // 64 KiB each: unbounded, the backlog would be 1000 x 64 KiB = 63 MiB.
    let payload = "x".repeat(64 * 1024);
    let bus = bus("memory");
    let url = format!("fake://{bus}");
    let (gate, closed) = watch::channel(false);
    let (server, seen) = server(transport(&url), "big", "s", 2, Duration::ZERO, closed).await;
    let client = RpcClient::new(transport(&url), Target::new("big"));
    let before = rss();
    let mut caster = tokio::spawn(async move {
        for value in 0..CASTS {
            client
                .cast(&context(json!({})), "record", json!({"value": value, "pad": payload}))
                .await
                .unwrap();
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut caster).await.is_err(),
        "the caster waits"
    );
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 32 * 1024 * 1024,
        "memory grew by {} MiB with the backlog",
        grown / (1024 * 1024)
    );
    let queue = stats(&bus, "big");
    assert_eq!(
        (queue.bound, queue.bytes_bound),
        (Some(1000), Some(4 * 1024 * 1024)),
        "the defaults"
    );
    assert!(
        queue.peak_bytes <= 4 * 1024 * 1024 && queue.peak_bytes > 4 * 1024 * 1024 - 70 * 1024,
        "{queue:?}"
    );
    gate.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), caster)
        .await
        .expect("caster done")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < CASTS as usize {
        assert!(Instant::now() < deadline, "all casts handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(stats(&bus, "big").peak_bytes <= 4 * 1024 * 1024);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_byte_bound_holds_big_messages_back_and_a_bigger_one_goes_alone() {
    let bus = bus("bytes");
    let url = format!("fake://{bus}?fake_max_queue_length=0&fake_max_queue_bytes=3000");
    let transport = transport(&url);
    let mut listener = transport
        .driver()
        .listen_for_notifications(&[(Target::new("b"), "info".into())], None)
        .await
        .unwrap();
    let send = |pad: usize| {
        let transport = transport.clone();
        async move {
            let message = oslo_core::context(json!({"event_type": "e", "priority": "INFO", "payload": {"pad": "p".repeat(pad)}}));
            transport
                .driver()
                .send_notification(&Target::new("b.info"), &JsonMap::new(), &message, true, Retry::Forever)
                .await
        }
    };
    send(1000).await.unwrap();
    send(1000).await.unwrap();
    let queue = stats(&bus, "b.info");
    assert_eq!((queue.len, queue.bound, queue.bytes_bound), (2, None, Some(3000)));
    assert!(queue.bytes > 2000 && queue.bytes <= 3000, "{queue:?}");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), send(1000)).await.is_err(),
        "a third does not fit"
    );
    // Bigger than the bound: waits until the queue is empty, then goes alone.
    let mut big = tokio::spawn(send(10_000));
    assert!(tokio::time::timeout(Duration::from_secs(1), &mut big).await.is_err());
    listener.next().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut big).await.is_err(),
        "one still there"
    );
    listener.next().await.unwrap();
    big.await.unwrap().unwrap();
    let queue = stats(&bus, "b.info");
    assert_eq!(queue.len, 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), send(10)).await.is_err(),
        "even a small one waits for the big one"
    );
    assert_eq!(
        listener.next().await.unwrap().message()["payload"]["pad"].as_str().unwrap().len(),
        10_000
    );
    send(10).await.unwrap();
    listener.cleanup().await;
}

#[tokio::test(start_paused = true)]
async fn calls_and_casts_with_a_timeout_fail_when_no_room_comes() {
    let bus = bus("timeouts");
    let url = format!("fake://{bus}?fake_max_queue_length=2");
    let (gate, closed) = watch::channel(false);
    let (server, seen) = server(transport(&url), "stuck", "s", 1, Duration::ZERO, closed).await;
    let client_transport = transport(&url);
    let ctxt = context(json!({}));
    let client = RpcClient::new(client_transport.clone(), Target::new("stuck"));
    for value in 0..3 {
        // One taken (held at the gate), two queued.
        client.cast(&ctxt, "record", json!({"value": value})).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(stats(&bus, "stuck").len, 2);
    let started = Instant::now();
    let err = client
        .prepare()
        .timeout(Duration::from_secs(10))
        .call(&ctxt, "record", json!({"value": 100}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(10), "the call's timeout, not later");
    let cast = SendOptions {
        timeout: Some(Duration::from_secs(5)),
        ..SendOptions::default()
    };
    let message = oslo_core::context(json!({"method": "record", "args": {"value": 101}}));
    let started = Instant::now();
    let err = client_transport
        .driver()
        .send(&Target::new("stuck"), &ctxt, &message, &cast)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(stats(&bus, "stuck").waiting, 0, "timed-out senders are gone");
    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut values = seen.lock().unwrap().clone();
    values.sort_unstable();
    assert_eq!(values, vec![0, 1, 2], "what timed out was never queued");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_fanout_reaches_every_server_or_none() {
    let bus = bus("fanout");
    let url = format!("fake://{bus}?fake_max_queue_length=2");
    let (gate, closed) = watch::channel(false);
    let (slow, slow_seen) = server(transport(&url), "fan", "slow", 1, Duration::ZERO, closed).await;
    let (fast, fast_seen) = server(transport(&url), "fan", "fast", 1, Duration::ZERO, open_gate()).await;
    let transport = transport(&url);
    let ctxt = context(json!({}));
    let fanout = Target::new("fan").with_fanout(true);
    let send = |value: u64, timeout: Option<Duration>| {
        let (transport, fanout, ctxt) = (transport.clone(), fanout.clone(), ctxt.clone());
        async move {
            let message = oslo_core::context(json!({"method": "record", "args": {"value": value}}));
            let options = SendOptions {
                timeout,
                ..SendOptions::default()
            };
            transport.driver().send(&fanout, &ctxt, &message, &options).await
        }
    };
    for value in 0..3 {
        send(value, None).await.unwrap();
        tokio::task::yield_now().await;
    }
    let err = send(3, Some(Duration::from_secs(1))).await.unwrap_err();
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *fast_seen.lock().unwrap(),
        vec![0, 1, 2],
        "the fast server did not get the copy that timed out"
    );
    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*slow_seen.lock().unwrap(), vec![0, 1, 2]);
    slow.shutdown().await;
    fast.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn notifications_wait_for_room_and_requeue_never_waits() {
    let bus = bus("notify");
    let transport = transport(&format!("fake://{bus}?fake_max_queue_length=3"));
    let target = Target::new("n.info");
    let notification = |n: u64| oslo_core::context(json!({"event_type": "e", "priority": "INFO", "payload": {"n": n}}));
    // Nobody listens yet: the queue keeps three (store and forward), the fourth waits.
    for n in 0..3 {
        transport
            .driver()
            .send_notification(&target, &JsonMap::new(), &notification(n), true, Retry::Forever)
            .await
            .unwrap();
    }
    let mut fourth = {
        let (transport, target, message) = (transport.clone(), target.clone(), notification(3));
        tokio::spawn(async move {
            transport
                .driver()
                .send_notification(&target, &JsonMap::new(), &message, true, Retry::Forever)
                .await
        })
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), &mut fourth).await.is_err(),
        "waits as long as it takes"
    );
    assert_eq!(stats(&bus, "n.info").waiting, 1);
    let mut listener = transport
        .driver()
        .listen_for_notifications(&[(Target::new("n"), "info".into())], None)
        .await
        .unwrap();
    let first = listener.next().await.unwrap();
    assert_eq!(first.message()["payload"]["n"], 0);
    fourth.await.unwrap().unwrap();
    // The queue is full again (1, 2, 3); a requeue goes back at the head without waiting.
    assert_eq!(stats(&bus, "n.info").len, 3);
    tokio::time::timeout(Duration::from_millis(1), first.requeue())
        .await
        .expect("requeue does not wait")
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(listener.next().await.unwrap().message()["payload"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, vec![0, 1, 2, 3]);
    // The requeue's extra place was paid back: the bound holds again.
    for n in 4..7 {
        transport
            .driver()
            .send_notification(&target, &JsonMap::new(), &notification(n), true, Retry::Forever)
            .await
            .unwrap();
    }
    let (empty, seventh) = (JsonMap::new(), notification(7));
    let driver = transport.driver();
    let blocked = driver.send_notification(&target, &empty, &seventh, true, Retry::Forever);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), blocked).await.is_err(),
        "bound 3 again"
    );
    listener.cleanup().await;
}

#[test]
fn the_bound_comes_from_the_url_or_the_driver_options() {
    let registry = registry();
    let err = registry.get_transport("fake://opt?fake_max_queue_length=many").unwrap_err();
    assert!(matches!(err, Error::Configuration { .. }), "{err}");
    let options = |value: &str| TransportConfig {
        driver_options: BTreeMap::from([
            ("fake_max_queue_length".to_string(), value.to_string()),
            // Another driver's option is ignored, not refused.
            ("rabbit_qos_prefetch_count".to_string(), "10".to_string()),
        ]),
        ..TransportConfig::default()
    };
    let driver =
        |url: &str, config: &TransportConfig| driver_fake::FakeDriver::new(&oslo_core::TransportUrl::parse(url).unwrap(), config).unwrap();
    assert_eq!(driver("fake://opt", &TransportConfig::default()).max_queue_length(), Some(1000));
    assert_eq!(driver("fake://opt", &options("7")).max_queue_length(), Some(7));
    assert_eq!(
        driver("fake://opt?fake_max_queue_length=9", &options("7")).max_queue_length(),
        Some(9),
        "the query wins"
    );
    assert_eq!(driver("fake://opt", &options("0")).max_queue_length(), None, "0 = no bound");
    assert_eq!(
        driver("fake://opt", &TransportConfig::default()).max_queue_bytes(),
        Some(4 * 1024 * 1024)
    );
    assert_eq!(
        driver("fake://opt?fake_max_queue_bytes=5000", &options("7")).max_queue_bytes(),
        Some(5000)
    );
    assert_eq!(driver("fake://opt?fake_max_queue_bytes=0", &options("7")).max_queue_bytes(), None);
    let err = registry.get_transport("fake://opt?fake_max_queue_bytes=-1").unwrap_err();
    assert!(matches!(err, Error::Configuration { .. }), "{err}");
}

#[tokio::test]
async fn a_queue_takes_the_smallest_bound_of_its_users() {
    let bus = bus("smallest");
    let (server, _seen) = server(
        transport(&format!("fake://{bus}?fake_max_queue_length=0")),
        "q",
        "s",
        1,
        Duration::ZERO,
        open_gate(),
    )
    .await;
    assert_eq!(stats(&bus, "q").bound, None, "created unbounded");
    let client = RpcClient::new(transport(&format!("fake://{bus}?fake_max_queue_length=4")), Target::new("q"));
    client.cast(&context(json!({})), "record", json!({"value": 1})).await.unwrap();
    assert_eq!(stats(&bus, "q").bound, Some(4), "lowered by a sender");
    let other = RpcClient::new(transport(&format!("fake://{bus}?fake_max_queue_length=50")), Target::new("q"));
    other.cast(&context(json!({})), "record", json!({"value": 2})).await.unwrap();
    assert_eq!(stats(&bus, "q").bound, Some(4), "never raised");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_bound_lowered_below_the_backlog_holds_once_the_backlog_drains() {
    let bus = bus("lowered");
    let notify = |transport: &Transport, n: u64| {
        let transport = transport.clone();
        async move {
            let message = oslo_core::context(json!({"event_type": "e", "priority": "INFO", "payload": {"n": n}}));
            transport
                .driver()
                .send_notification(&Target::new("l.info"), &JsonMap::new(), &message, true, Retry::Forever)
                .await
        }
    };
    let wide = transport(&format!("fake://{bus}?fake_max_queue_length=10"));
    for n in 0..5 {
        notify(&wide, n).await.unwrap();
    }
    // A transport bounded at 2 uses the queue: 5 queued, the bound is now 2.
    let narrow = transport(&format!("fake://{bus}?fake_max_queue_length=2"));
    let mut waiting = tokio::spawn(notify(&narrow, 5));
    assert!(tokio::time::timeout(Duration::from_secs(1), &mut waiting).await.is_err());
    assert_eq!(stats(&bus, "l.info").bound, Some(2));
    let mut listener = wide
        .driver()
        .listen_for_notifications(&[(Target::new("l"), "info".into())], None)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(listener.next().await.unwrap().message()["payload"]["n"].as_u64().unwrap());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "still {} queued", stats(&bus, "l.info").len);
    }
    // Two left: the next pop makes room for one.
    got.push(listener.next().await.unwrap().message()["payload"]["n"].as_u64().unwrap());
    waiting.await.unwrap().unwrap();
    assert_eq!(stats(&bus, "l.info").len, 2);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), notify(&wide, 6)).await.is_err(),
        "2 is the bound for everyone"
    );
    for _ in 0..2 {
        got.push(listener.next().await.unwrap().message()["payload"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    listener.cleanup().await;
}
