//! The high-water mark (`zmq_hwm`): a client never has more than `zmq_hwm` requests sent to
//! one server and not yet taken by it; a further send waits (backpressure, not an error) and
//! fails only at its timeout; nothing is lost once the server catches up; memory does not
//! grow with the backlog. Also the wire side: credits go only to clients that count them, and
//! a server that sends none (an older version, a raw ROUTER) gets no limit rather than a hang.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use driver_zmq::matchmaker::DummyMatchmaker;
use driver_zmq::ZmqDriver;
use oslo_core::{
    context, Driver, Endpoint, Error, HandlerError, JsonMap, RpcClient, RpcServer, SendOptions, Target, Transport, TransportConfig,
    TransportUrl,
};
use serde_json::json;
use tokio::sync::watch;
use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

const WAIT: Duration = Duration::from_secs(30);

fn dummy_url(test: &str, options: &[(&str, &str)]) -> String {
    common::with_query(&format!("zmq+dummy://{}", common::unique(test)), options)
}

/// A driver (kept, for its counters) and a transport over it.
fn driver_and_transport(url: &str) -> (Arc<ZmqDriver>, Transport) {
    let parsed = TransportUrl::parse(url).unwrap();
    let config = TransportConfig::default();
    let driver = Arc::new(ZmqDriver::new(&parsed, &config).unwrap());
    (driver.clone(), Transport::from_driver(driver, parsed, config))
}

/// A server whose `record(value)` waits until the gate opens, then records `value`.
struct GatedServer {
    server: RpcServer,
    gate: watch::Sender<bool>,
    seen: Arc<Mutex<Vec<u64>>>,
}

async fn gated_server(url: &str, topic: &str, pool: usize) -> GatedServer {
    let (gate, opened) = watch::channel(false);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let endpoint = Endpoint::new().method("record", move |_c, args: JsonMap| {
        let (mut opened, record) = (opened.clone(), record.clone());
        async move {
            let _ = opened.wait_for(|open| *open).await;
            record.lock().unwrap().push(args["value"].as_u64().unwrap());
            Ok::<_, HandlerError>(())
        }
    });
    let server = RpcServer::builder(common::transport(url), Target::new(topic).with_server("s"))
        .endpoint(endpoint)
        .executor_pool_size(pool)
        .start()
        .await
        .expect("server starts");
    GatedServer { server, gate, seen }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// This process's resident memory, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_caster_waits_for_a_slow_server_and_nothing_is_lost() {
    common::init_tracing();
    const HWM: usize = 20;
    const POOL: usize = 2;
    const CASTERS: u64 = 4;
    const PER_CASTER: u64 = 400;
    const TOTAL: usize = (CASTERS * PER_CASTER) as usize;
    // 64 KiB each: without the mark the backlog would be TOTAL x 64 KiB = 100 MiB here.
    let payload = "x".repeat(64 * 1024);
    let url = dummy_url("hwm", &[("zmq_hwm", &HWM.to_string()), ("zmq_use_ipc", "false")]);
    let topic = common::unique("hwm");
    let server = gated_server(&url, &topic, POOL).await;
    let (driver, transport) = driver_and_transport(&url);
    let client = RpcClient::new(transport, Target::new(&topic));
    let rss_before = rss();

    let sent = Arc::new(AtomicUsize::new(0));
    let casters: Vec<_> = (0..CASTERS)
        .map(|caster| {
            let (client, sent, payload) = (client.clone(), sent.clone(), payload.clone());
            tokio::spawn(async move {
                for i in 0..PER_CASTER {
                    let value = caster * PER_CASTER + i;
                    client
                        .cast(&context(json!({})), "record", json!({"value": value, "pad": payload}))
                        .await
                        .expect("cast");
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // The server takes POOL casts and stops taking (its handlers wait on the gate): the
    // casters fill the window and then wait.
    eventually("a caster waits for room", || driver.flow_stats().waiting > 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = driver.flow_stats();
    let sent_while_blocked = sent.load(Ordering::SeqCst);
    assert!(stats.waiting > 0 && stats.waiting <= CASTERS as usize, "{stats:?}");
    assert_eq!(stats.peak_in_flight, HWM, "the window filled up, and no further: {stats:?}");
    assert!(stats.in_flight <= HWM, "{stats:?}");
    // What the server took (at most POOL) may have been credited, nothing more.
    assert!(
        (HWM..=HWM + POOL).contains(&sent_while_blocked),
        "{sent_while_blocked} casts sent while the server holds {POOL}; zmq_hwm is {HWM}"
    );
    assert!(casters.iter().all(|caster| !caster.is_finished()), "every caster is still sending");
    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024 * 1024,
        "memory grew by {} MiB while the backlog waited: it must wait in the casters, not in buffers",
        grown / (1024 * 1024)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        sent_while_blocked,
        "no progress while the server takes nothing"
    );

    // Once the server catches up, every cast arrives exactly once.
    server.gate.send(true).unwrap();
    for caster in casters {
        tokio::time::timeout(WAIT, caster).await.expect("casters finish").unwrap();
    }
    eventually("the server handled every cast", || server.seen.lock().unwrap().len() >= TOTAL).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seen = server.seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..TOTAL as u64).collect::<Vec<_>>(), "each cast exactly once");
    let stats = driver.flow_stats();
    assert!(stats.peak_in_flight <= HWM, "{stats:?}");
    eventually("everything is credited back", || driver.flow_stats().in_flight == 0).await;
    server.server.shutdown().await;
}

#[tokio::test]
async fn a_send_with_a_timeout_fails_when_no_room_comes_and_calls_wait_too() {
    common::init_tracing();
    let url = dummy_url("hwm-timeout", &[("zmq_hwm", "3"), ("zmq_use_ipc", "false")]);
    let topic = common::unique("hwm-timeout");
    let server = gated_server(&url, &topic, 1).await;
    let (driver, transport) = driver_and_transport(&url);
    let target = Target::new(&topic);
    let ctxt = context(json!({}));
    let message = |value: u64| oslo_core::context(json!({"method": "record", "args": {"value": value}}));
    // One is taken (and held) by the server, three fill the window.
    let cast = SendOptions::default();
    for value in 0..4 {
        driver.send(&target, &ctxt, &message(value), &cast).await.expect("room");
    }
    eventually("the window is full", || driver.flow_stats().in_flight == 3).await;
    let with_timeout = SendOptions {
        timeout: Some(Duration::from_millis(300)),
        ..SendOptions::default()
    };
    let started = tokio::time::Instant::now();
    let err = driver.send(&target, &ctxt, &message(99), &with_timeout).await.unwrap_err();
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // A call waits for room within its own timeout as well.
    let err = RpcClient::new(transport.clone(), target.clone())
        .timeout(Duration::from_millis(300))
        .call(&ctxt, "record", json!({"value": 98}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err}");
    assert_eq!(driver.flow_stats().waiting, 0, "timed-out waiters are gone");
    // The connection is still fine: once the server moves, the window moves.
    server.gate.send(true).unwrap();
    driver.send(&target, &ctxt, &message(4), &with_timeout).await.expect("room again");
    eventually("all five handled", || server.seen.lock().unwrap().len() == 5).await;
    let mut seen = server.seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3, 4], "the timed-out sends were never sent");
    server.server.shutdown().await;
}

#[tokio::test]
async fn fanout_copies_and_notifications_count_against_each_servers_window() {
    common::init_tracing();
    const HWM: usize = 5;
    let url = dummy_url("hwm-fanout", &[("zmq_hwm", &HWM.to_string()), ("zmq_use_ipc", "false")]);
    let topic = common::unique("hwm-fanout");
    let slow = gated_server(&url, &topic, 1).await;
    let (driver, transport) = driver_and_transport(&url);
    let fanout = RpcClient::new(transport, Target::new(&topic)).prepare().fanout(true);
    let sent = Arc::new(AtomicUsize::new(0));
    let caster = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for value in 0..50u64 {
                fanout
                    .cast(&context(json!({})), "record", json!({"value": value}))
                    .await
                    .expect("fanout");
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    eventually("the fanout waits for the slow server", || driver.flow_stats().waiting == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sent.load(Ordering::SeqCst) <= HWM + 1, "{}", sent.load(Ordering::SeqCst));
    assert_eq!(driver.flow_stats().peak_in_flight, HWM);
    slow.gate.send(true).unwrap();
    tokio::time::timeout(WAIT, caster).await.expect("fanout finishes").unwrap();
    eventually("every copy handled", || slow.seen.lock().unwrap().len() == 50).await;
    slow.server.shutdown().await;

    // Notifications: a listener that takes nothing holds the notifier back at HWM.
    let (notifier_driver, _) = driver_and_transport(&url);
    let notify_topic = common::unique("hwm-notify");
    let listener_transport = common::transport(&url);
    let mut listener = listener_transport
        .driver()
        .listen_for_notifications(&[(Target::new(&notify_topic), "info".into())], None)
        .await
        .unwrap();
    let notifications = {
        let driver = notifier_driver.clone();
        let target = Target::new(format!("{notify_topic}.info"));
        tokio::spawn(async move {
            for n in 0..20 {
                let message = oslo_core::context(json!({"event_type": "e", "priority": "INFO", "payload": {"n": n}}));
                driver
                    .send_notification(&target, &JsonMap::new(), &message, true, oslo_core::Retry::Forever)
                    .await
                    .expect("notification");
            }
        })
    };
    eventually("the notifier waits", || notifier_driver.flow_stats().waiting == 1).await;
    assert_eq!(notifier_driver.flow_stats().in_flight, HWM);
    let mut got = Vec::new();
    while got.len() < 20 {
        let message = tokio::time::timeout(WAIT, listener.next())
            .await
            .expect("notification in time")
            .unwrap();
        got.push(message.message()["payload"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "in order, none lost");
    tokio::time::timeout(WAIT, notifications).await.expect("notifier finishes").unwrap();
    assert!(notifier_driver.flow_stats().peak_in_flight <= HWM);
    listener.cleanup().await;
}

/// A raw ROUTER, as a server of an older version of this driver is (no credits): the client
/// keeps no mark for it instead of waiting forever.
#[tokio::test]
async fn a_server_that_sends_no_credits_gets_no_high_water_mark() {
    common::init_tracing();
    let url = dummy_url("hwm-legacy", &[("zmq_hwm", "5"), ("zmq_use_ipc", "false")]);
    let topic = common::unique("hwm-legacy");
    let mut router = zeromq::RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap();
    let port = endpoint.to_string().rsplit_once(':').unwrap().1.to_string();
    let matchmaker = DummyMatchmaker::shared(&TransportUrl::parse(&url).unwrap());
    matchmaker
        .register(&format!("ROUTER/{topic}"), &format!("127.0.0.1:{port}"), Duration::from_secs(60))
        .await
        .unwrap();
    let (driver, transport) = driver_and_transport(&url);
    let client = RpcClient::new(transport, Target::new(&topic));
    tokio::time::timeout(WAIT, async {
        for value in 0..30 {
            client
                .cast(&context(json!({})), "record", json!({"value": value}))
                .await
                .expect("cast");
        }
    })
    .await
    .expect("30 casts to a server without credits do not wait");
    assert_eq!(driver.flow_stats(), Default::default(), "no window kept");
    for _ in 0..30 {
        let frames = tokio::time::timeout(WAIT, router.recv()).await.unwrap().unwrap().into_vec();
        assert_eq!(frames.len(), 6, "oslo's request frames, unchanged");
        assert_eq!(&frames[3][..], b"2", "CAST");
    }
}

/// The credit frames on the wire, as a DEALER announcing a window of 4 requests sees them.
#[tokio::test]
async fn credits_on_the_wire_go_to_clients_that_count_them() {
    common::init_tracing();
    let url = dummy_url("hwm-wire", &[("zmq_use_ipc", "false")]);
    let topic = common::unique("hwm-wire");
    let (_server_transport, server) = common::start_server(&url, &topic, "s").await;
    let matchmaker = DummyMatchmaker::shared(&TransportUrl::parse(&url).unwrap());
    let host = matchmaker.get_hosts(&format!("ROUTER/{topic}/s")).await.unwrap().remove(0);
    let port = host.rsplit_once(':').unwrap().1;
    let mut options = SocketOptions::default();
    let limits = driver_zmq::frames::Limits { messages: 4, bytes: 0 };
    options.peer_identity(driver_zmq::frames::client_identity(limits).try_into().unwrap());
    let mut dealer = zeromq::DealerSocket::with_options(options);
    dealer.connect(&format!("tcp://127.0.0.1:{port}")).await.expect("connect");
    let mut sizes = 0;
    for i in 0..8 {
        let payload = format!(r#"[{{}},{{"method":"echo","args":{{"value":{i}}},"_unique_id":"u-wire-{i}"}}]"#);
        let frames: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(b"1.0"),
            Bytes::from_static(b"2"),
            Bytes::from(format!("m{i}")),
            Bytes::from(payload),
        ];
        sizes += frames.iter().map(Bytes::len).sum::<usize>();
        dealer.send(ZmqMessage::try_from(frames).unwrap()).await.unwrap();
    }
    let (mut credited, mut credited_bytes) = (0, 0);
    while credited < 8 {
        let frames = tokio::time::timeout(WAIT, dealer.recv())
            .await
            .expect("credit in time")
            .unwrap()
            .into_vec();
        // ["", "1.0", "7", <requests>, <bytes>]
        assert_eq!(frames.len(), 5, "{frames:?}");
        assert_eq!(
            (&frames[0][..], &frames[1][..], &frames[2][..]),
            (&b""[..], &b"1.0"[..], &b"7"[..]),
            "{frames:?}"
        );
        let number = |frame: &Bytes| -> usize { std::str::from_utf8(frame).unwrap().parse().unwrap() };
        let count = number(&frames[3]);
        assert!((1..=8 - credited).contains(&count), "{count} after {credited}");
        credited += count;
        credited_bytes += number(&frames[4]);
    }
    assert_eq!(credited_bytes, sizes, "the bytes of the request frames");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), dealer.recv()).await.is_err(),
        "nothing credited twice"
    );
    server.shutdown().await;
}

/// `zmq_hwm_bytes` alone: big requests are held back by their bytes, not their count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_requests_are_held_back_by_their_bytes() {
    common::init_tracing();
    const BYTES: usize = 256 * 1024;
    const CASTS: u64 = 100;
    let url = dummy_url(
        "hwm-bytes",
        &[("zmq_hwm", "0"), ("zmq_hwm_bytes", &BYTES.to_string()), ("zmq_use_ipc", "false")],
    );
    let topic = common::unique("hwm-bytes");
    let server = gated_server(&url, &topic, 1).await;
    let (driver, transport) = driver_and_transport(&url);
    let client = RpcClient::new(transport, Target::new(&topic));
    let payload = "z".repeat(64 * 1024);
    let sent = Arc::new(AtomicUsize::new(0));
    let caster = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for value in 0..CASTS {
                client
                    .cast(&context(json!({})), "record", json!({"value": value, "pad": payload}))
                    .await
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    eventually("the caster waits for room", || driver.flow_stats().waiting == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = driver.flow_stats();
    // Each cast is a little over 64 KiB: three fit in 256 KiB (the server holds one more).
    assert_eq!(stats.in_flight, 3, "{stats:?}");
    assert!(
        stats.peak_in_flight_bytes <= BYTES && stats.peak_in_flight_bytes > 3 * 64 * 1024,
        "{stats:?}"
    );
    assert!(sent.load(Ordering::SeqCst) <= 4, "{}", sent.load(Ordering::SeqCst));
    server.gate.send(true).unwrap();
    tokio::time::timeout(WAIT, caster).await.expect("caster finishes").unwrap();
    eventually("every cast handled", || server.seen.lock().unwrap().len() == CASTS as usize).await;
    assert!(driver.flow_stats().peak_in_flight_bytes <= BYTES);
    eventually("everything credited", || driver.flow_stats().in_flight_bytes == 0).await;
    server.server.shutdown().await;
}

/// Options reach the driver, from the URL or the transport's driver options.
#[test]
fn zmq_hwm_is_read_from_the_url_and_driver_options() {
    let url = TransportUrl::parse("zmq+dummy://?zmq_hwm=12&zmq_hwm_bytes=5000").unwrap();
    let config = ZmqDriver::new(&url, &TransportConfig::default()).unwrap().config().clone();
    assert_eq!((config.zmq_hwm, config.zmq_hwm_bytes), (12, 5000));
    let config = TransportConfig {
        driver_options: BTreeMap::from([("zmq_hwm".to_string(), "0".to_string())]),
        ..TransportConfig::default()
    };
    let url = TransportUrl::parse("zmq+dummy://").unwrap();
    assert_eq!(ZmqDriver::new(&url, &config).unwrap().config().zmq_hwm, 0);
}

/// Sends dropped at any point (waiting for room, for the socket, or while queueing) never
/// keep a place: once the server has taken everything, nothing is in flight and the window
/// is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_sends_give_their_place_back() {
    common::init_tracing();
    const HWM: usize = 8;
    let url = dummy_url("hwm-cancel", &[("zmq_hwm", &HWM.to_string()), ("zmq_use_ipc", "false")]);
    let topic = common::unique("hwm-cancel");
    let server = gated_server(&url, &topic, 4).await;
    server.gate.send(true).unwrap();
    let (driver, transport) = driver_and_transport(&url);
    let client = RpcClient::new(transport, Target::new(&topic));
    let payload = "y".repeat(16 * 1024);
    for round in 0..60u64 {
        let casts = (0..50u64).map(|i| {
            let (client, payload) = (client.clone(), payload.clone());
            tokio::spawn(async move {
                let ctxt = context(json!({}));
                let cast = client.cast(&ctxt, "record", json!({"value": round * 50 + i, "pad": payload}));
                let _ = tokio::time::timeout(Duration::from_micros(20 + (i * 53 + round * 17) % 600), cast).await;
            })
        });
        for cast in futures::future::join_all(casts).await {
            cast.unwrap();
        }
    }
    eventually("nothing left in flight", || driver.flow_stats().in_flight == 0).await;
    assert!(driver.flow_stats().peak_in_flight <= HWM);
    // The whole window is usable: HWM + 1 casts while the server holds none back.
    tokio::time::timeout(WAIT, async {
        for value in 0..=HWM as u64 {
            client
                .cast(&context(json!({})), "record", json!({"value": 10_000 + value}))
                .await
                .unwrap();
        }
    })
    .await
    .expect("the window is whole");
    server.server.shutdown().await;
}
