//! A server in another process, found through the Redis matchmaker (`OSLO_TEST_ZMQ_URL`).
//!
//! This test binary is also the server: run with `--serve <url> <topic> <server>` it starts
//! an RPC server, prints `READY <pid>` and serves until its standard input closes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};
use oslo_core::{context, Error, RpcClient, Target};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The child process: serve until stdin closes.
fn serve(url: &str, topic: &str, name: &str) {
    runtime().block_on(async {
        let (transport, server) = common::start_server(url, topic, name).await;
        println!("READY {}", std::process::id());
        let mut stdin = tokio::io::stdin();
        let mut sink = Vec::new();
        let _ = stdin.read_to_end(&mut sink).await;
        server.shutdown().await;
        transport.cleanup().await;
    });
}

/// Start this binary as a server process; returns it once it is ready, with its pid.
async fn spawn_server(url: &str, topic: &str, name: &str) -> (Child, u32) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["--serve", url, topic, name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server process starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("server ready in time")
        .expect("read stdout")
        .expect("server printed READY");
    let pid = ready
        .strip_prefix("READY ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server output {ready:?}"));
    (child, pid)
}

fn ctxt() -> oslo_core::JsonMap {
    context(json!({"request_id": "req-separate-process"}))
}

/// Calls and casts reach a server in another process; once that process is killed (its
/// records left behind), calls fail with a typed error within their timeout, and once the
/// records expire, at once with `MessageUndeliverable`.
async fn server_in_another_process(url: String) {
    let prefix = format!("{}:", common::unique("zmq-test"));
    let url = common::with_query(
        &url,
        &[
            ("matchmaker_key_prefix", &prefix),
            ("zmq_target_expire", "3"),
            ("zmq_target_update", "1"),
            ("zmq_routing_refresh", "0.2"),
            ("zmq_connect_timeout", "1"),
        ],
    );
    let topic = common::unique("proc");
    let (mut child, pid) = spawn_server(&url, &topic, "remote").await;
    assert_ne!(pid, std::process::id());

    let transport = common::transport(&url);
    let client = RpcClient::new(transport.clone(), Target::new(&topic)).timeout(Duration::from_secs(10));
    assert_eq!(
        client.call(&ctxt(), "pid", json!({})).await.expect("call"),
        json!(pid),
        "served by the other process"
    );
    for i in 0..20 {
        assert_eq!(client.call(&ctxt(), "echo", json!({"value": i})).await.expect("echo"), json!(i));
    }
    client.cast(&ctxt(), "echo", json!({"value": "cast"})).await.expect("cast");
    common::assert_targeted_call_reaches(&client, &ctxt(), "remote").await;

    // Kill it: no unregistering, its records stay in Redis until they expire.
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let started = Instant::now();
    let err = client
        .prepare()
        .timeout(Duration::from_secs(2))
        .call(&ctxt(), "echo", json!({"value": 1}))
        .await
        .expect_err("dead server");
    assert!(
        matches!(err, Error::MessagingTimeout { .. } | Error::MessageDeliveryFailure { .. }),
        "typed error, got {err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2600),
        "within its timeout: {:?}",
        started.elapsed()
    );

    // After zmq_target_expire the dead server's records are no longer used.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let started = Instant::now();
    let err = client.call(&ctxt(), "echo", json!({"value": 1})).await.expect_err("expired");
    assert!(matches!(err, Error::MessageUndeliverable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "at once: {:?}", started.elapsed());

    // A new server process is found as soon as it registered.
    let (mut child, new_pid) = spawn_server(&url, &topic, "remote-2").await;
    assert_eq!(client.call(&ctxt(), "pid", json!({})).await.expect("call"), json!(new_pid));
    // A graceful stop (stdin closed) unregisters it.
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("server exits")
        .expect("wait");
    assert!(status.success(), "{status}");
    // Other processes see the change once their lookup is older than zmq_routing_refresh.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = client.call(&ctxt(), "echo", json!({})).await.expect_err("unregistered");
    assert!(matches!(err, Error::MessageUndeliverable { .. }), "{err}");

    transport.cleanup().await;
    common::delete_redis_keys(&url, &prefix).await;
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve") {
        serve(&argv[2], &argv[3], &argv[4]);
        return;
    }
    let args = Arguments::from_args();
    let url = common::redis_url();
    let skip = url.is_none() && !common::redis_required();
    if skip {
        eprintln!("skipping: OSLO_TEST_ZMQ_URL not set");
    }
    let trial = Trial::test("server_in_another_process", move || {
        let Some(url) = url else {
            return Err("OSLO_TEST_ZMQ_URL is not set but OSLO_REQUIRE_BROKERS names zmq".into());
        };
        common::init_tracing();
        runtime().block_on(server_in_another_process(url));
        Ok(())
    })
    .with_ignored_flag(skip);
    libtest_mimic::run(&args, vec![trial]).exit();
}
