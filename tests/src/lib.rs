//! Shared helpers for the workspace's integration tests: which brokers to test against.
//!
//! Broker tests read their URL from an environment variable (`OSLO_TEST_RABBIT_URL`,
//! `OSLO_TEST_AMQP1_URL`, `OSLO_TEST_ZMQ_URL`). When it is unset they skip with a message,
//! unless the driver is listed in `OSLO_REQUIRE_BROKERS` (comma separated, e.g. `rabbit`, or
//! `all`; `.ci/run` sets it): then a missing URL is a failure, so nothing skips in CI.
//! The cluster tests (`cluster_rabbit.rs`) use `OSLO_TEST_RABBIT_CLUSTER_URL` under the name
//! `rabbit-cluster` (see `scripts/rabbit-cluster.sh` and [`rabbit_ops`]).

/// The broker drivers the suite knows: (driver name, URL variable).
pub const BROKERS: &[(&str, &str)] = &[
    ("rabbit", "OSLO_TEST_RABBIT_URL"),
    ("amqp1", "OSLO_TEST_AMQP1_URL"),
    ("zmq", "OSLO_TEST_ZMQ_URL"),
    // The zmq driver with its in-process matchmaker (`zmq+dummy://`): no service needed.
    ("zmq-dummy", "OSLO_TEST_ZMQ_DUMMY_URL"),
];

/// Whether `OSLO_REQUIRE_BROKERS` demands that `driver`'s tests run.
pub fn broker_required(driver: &str) -> bool {
    std::env::var("OSLO_REQUIRE_BROKERS")
        .map(|list| list.split(',').map(str::trim).any(|d| d == driver || d == "all"))
        .unwrap_or(false)
}

/// The URL for `driver`'s broker from `variable`, or `None` (after printing why) when the
/// test must skip.
///
/// # Panics
/// When the variable is unset but the driver is required by `OSLO_REQUIRE_BROKERS`.
pub fn broker_url(driver: &str, variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if broker_required(driver) {
                panic!("{variable} is not set but OSLO_REQUIRE_BROKERS requires the {driver} tests: they must not skip");
            }
            eprintln!("skipping {driver} tests: {variable} not set");
            None
        }
    }
}

/// Delete the queues whose names start with one of `prefixes` from the RabbitMQ at `url`.
///
/// oslo never deletes topic, server or notification queues, and the test suites name theirs
/// randomly, so without this every run would leave some behind. Queue names come from
/// `rabbitmqctl list_queues` (root on the broker host); when that is not available nothing is
/// deleted and the reason is printed.
pub async fn purge_rabbit_queues(url: &str, prefixes: &[&str]) {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--quiet", "--no-table-headers"])
        .output();
    let names: Vec<String> = match listing {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
            .map(str::to_string)
            .collect(),
        Ok(out) => {
            eprintln!(
                "not purging test queues: rabbitmqctl failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(err) => {
            eprintln!("not purging test queues: cannot run rabbitmqctl: {err}");
            return;
        }
    };
    if names.is_empty() {
        return;
    }
    let Ok(parsed) = oslo_core::TransportUrl::parse(url) else { return };
    let Some(broker) = driver_rabbit::BrokerAddress::from_url(&parsed).into_iter().next() else {
        return;
    };
    let connection = match lapin::Connection::connect(&broker.expose_uri(false), lapin::ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(err) => {
            eprintln!("not purging test queues: {err}");
            return;
        }
    };
    if let Ok(channel) = connection.create_channel().await {
        for name in &names {
            let _ = channel
                .queue_delete(name.as_str().into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(0, "purged".into()).await;
}

/// Operator actions on RabbitMQ nodes for the fault, cluster and soak tests: `rabbitmqctl` on
/// the machine's node or on a node of `scripts/rabbit-cluster.sh`, closing only the
/// connections a test named itself (`connection_name`), listing and deleting queues, polling
/// and `record` helpers for the traffic those tests send, and the process's resident memory.
pub mod rabbit_ops {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use oslo_core::{Endpoint, HandlerError, JsonMap, RpcClient};
    use serde_json::Value;

    /// A RabbitMQ node a `rabbitmqctl` command goes to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RabbitNode {
        /// The machine's own node (`rabbitmqctl` without `-n`).
        Local,
        /// Node `n` (1..=3) of `scripts/rabbit-cluster.sh` (through its `ctl` command, which
        /// knows the node name and the cluster's Erlang cookie).
        Cluster(u8),
    }

    impl RabbitNode {
        /// The cluster node listening on AMQP `port` (5673 is node 1), if any.
        pub fn cluster_node_for_port(port: u16) -> Option<RabbitNode> {
            match port {
                5673..=5675 => Some(RabbitNode::Cluster((port - 5672) as u8)),
                _ => None,
            }
        }

        /// The Erlang node name.
        pub fn name(&self) -> String {
            match self {
                RabbitNode::Local => "rabbit@localhost".into(),
                RabbitNode::Cluster(n) => format!("oslo-c{n}@localhost"),
            }
        }
    }

    /// `scripts/rabbit-cluster.sh` of this checkout.
    pub fn cluster_script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbit-cluster.sh")
    }

    /// Run `rabbitmqctl args` against `node` (bounded to 60 s by `timeout`); the output, or
    /// why it failed. Blocking: call it from `spawn_blocking` (see [`rabbitmqctl_async`]).
    pub fn rabbitmqctl(node: RabbitNode, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("timeout");
        command.arg("60");
        match node {
            RabbitNode::Local => command.arg("rabbitmqctl"),
            RabbitNode::Cluster(n) => command.arg(cluster_script()).arg("ctl").arg(n.to_string()),
        };
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("cannot run rabbitmqctl {args:?} on {}: {e}", node.name()))?;
        if !output.status.success() {
            return Err(format!(
                "rabbitmqctl {args:?} on {} failed ({}): {}",
                node.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// [`rabbitmqctl`] on the blocking pool.
    pub async fn rabbitmqctl_async(node: RabbitNode, args: &[&str]) -> Result<String, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rabbitmqctl(node, &args)
        })
        .await
        .map_err(|e| format!("rabbitmqctl task failed: {e}"))?
    }

    /// The pids of the connections on `node` whose `connection_name` client property is
    /// exactly `name`. (`list_connections` lists the whole cluster's connections; a pid
    /// `<node@host.a.b.c>` names the node that holds it.)
    pub async fn connections_named(node: RabbitNode, name: &str) -> Result<Vec<String>, String> {
        // Table output: the JSON formatter prints pids as `#PID<...>`, which close_connection
        // does not accept.
        let text = rabbitmqctl_async(node, &["list_connections", "pid", "client_properties", "-q", "--no-table-headers"]).await?;
        let quoted = format!("<<\"{name}\">>");
        let plain = format!("\"{name}\"");
        Ok(text
            .lines()
            .filter(|line| line.contains(&quoted) || line.contains(&plain))
            .filter_map(|line| line.split('\t').next())
            .map(|pid| pid.trim().to_string())
            .filter(|pid| !pid.is_empty() && pid.starts_with(&format!("<{}.", node.name())))
            .collect())
    }

    /// Force-close (as an operator would) the connections on `node` named `name`, and only
    /// those: other users of the broker are not disturbed. Returns how many were closed.
    pub async fn close_connections_named(node: RabbitNode, name: &str) -> Result<usize, String> {
        let mut closed = 0;
        for pid in connections_named(node, name).await? {
            // A connection that went away meanwhile is fine.
            if rabbitmqctl_async(node, &["close_connection", &pid, "fault test"]).await.is_ok() {
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// `prefix` plus 12 random hex digits: a queue, topic or connection name no other test or
    /// run uses.
    pub fn unique_name(prefix: &str) -> String {
        format!("{prefix}-{}", &oslo_core::codec::new_id()[..12])
    }

    /// A rabbit driver for `url` with `[oslo_messaging_rabbit]` `options`, and a transport
    /// over it (the driver gives access to its reply queue name).
    ///
    /// # Panics
    /// When the URL or an option is invalid.
    pub fn rabbit_transport(url: &str, options: &[(&str, &str)]) -> (oslo_core::Transport, std::sync::Arc<driver_rabbit::RabbitDriver>) {
        let url = oslo_core::TransportUrl::parse(url).expect("test URL parses");
        let mut config = oslo_core::TransportConfig::default();
        for (key, value) in options {
            config.driver_options.insert(key.to_string(), value.to_string());
        }
        let driver = std::sync::Arc::new(driver_rabbit::RabbitDriver::new(&url, &config).expect("driver builds"));
        (oslo_core::Transport::from_driver(driver.clone(), url, config), driver)
    }

    /// Log to the test's output at `RUST_LOG` (default `warn`); idempotent.
    pub fn init_test_tracing() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    }

    /// Whether `check` comes true within `timeout`, polling every 100 ms.
    pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An endpoint with one method, `record(value)`: hands `value` (null when missing) to
    /// `record` and returns it.
    pub fn record_endpoint(record: impl Fn(&Value) + Send + Sync + 'static) -> Endpoint {
        let record = Arc::new(record);
        Endpoint::new().method("record", move |_ctxt, args: JsonMap| {
            let record = record.clone();
            async move {
                let value = args.get("value").cloned().unwrap_or(Value::Null);
                record(&value);
                Ok::<_, HandlerError>(value)
            }
        })
    }

    /// Call `record` (of [`record_endpoint`]) with a fresh value until a call returns it;
    /// how long that took.
    ///
    /// # Panics
    /// When calls still fail after `within`, or a reply is not the value sent.
    pub async fn call_until_ok(client: &RpcClient, context: &JsonMap, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let probe = unique_name("probe");
            match client.call(context, "record", serde_json::json!({ "value": probe })).await {
                Ok(reply) => {
                    assert_eq!(reply, Value::String(probe), "a reply to another call");
                    return started.elapsed();
                }
                Err(err) => {
                    assert!(started.elapsed() < within, "calls still failing after {within:?}: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The output of a `rabbitmqctl` listing on `node` run with `--formatter json`.
    ///
    /// # Panics
    /// When `rabbitmqctl` fails or prints no JSON.
    pub async fn list_json(node: RabbitNode, args: &[&str]) -> Vec<Value> {
        let text = rabbitmqctl_async(node, args).await.expect("rabbitmqctl list");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("rabbitmqctl {args:?} printed no JSON ({e}): {text}"))
    }

    /// The queues `node` knows (the cluster's, on a cluster node), each with its `name`,
    /// `consumers` and `type`.
    pub async fn queues_on(node: RabbitNode) -> Vec<Value> {
        list_json(node, &["list_queues", "name", "consumers", "type", "--formatter", "json", "-q"]).await
    }

    /// A plain lapin connection to the first host of `url` that accepts one.
    pub async fn raw_connection(url: &str) -> Result<lapin::Connection, String> {
        let parsed = oslo_core::TransportUrl::parse(url).map_err(|e| e.to_string())?;
        let mut why = format!("no host in {parsed}");
        for broker in driver_rabbit::BrokerAddress::from_url(&parsed) {
            match lapin::Connection::connect(&broker.expose_uri(false), lapin::ConnectionProperties::default()).await {
                Ok(connection) => return Ok(connection),
                Err(err) => why = err.to_string(),
            }
        }
        Err(why)
    }

    /// Delete `queues` and `exchanges` (missing ones are fine) through the first host of `url`
    /// that answers.
    pub async fn delete_queues_and_exchanges(url: &str, queues: &[String], exchanges: &[String]) -> Result<(), String> {
        let connection = raw_connection(url).await?;
        // A channel each: deleting what is not there may close the channel.
        for name in queues {
            let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
            let _ = channel
                .queue_delete(name.as_str().into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
        for name in exchanges {
            let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
            let _ = channel
                .exchange_delete(name.as_str().into(), lapin::options::ExchangeDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "OK".into()).await;
        Ok(())
    }

    /// This process's resident set size in KiB (`VmRSS` of `/proc/self/status`), if readable.
    pub fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    }
}
