//! Wire-interop tests: the Rust crates against the REAL Python oslo.messaging 18.3.1, both
//! ways, on a real RabbitMQ.
//!
//! * Python client (`interop/py_client.py`) -> Rust `RpcServer`;
//! * Rust `RpcClient` -> Python server (`interop/py_server.py`);
//! * one Python and one Rust server on the same topic (fanout, server targeting, sharing).
//!
//! Run:
//!
//! ```text
//! bash interop/setup-venv.sh
//! OSLO_TEST_RABBIT_URL=rabbit://guest:guest@127.0.0.1:5672/ cargo test -p oslo-tests --test interop_rabbit
//! ```
//!
//! Without `OSLO_TEST_RABBIT_URL` every test returns at once (saying so on stderr), unless
//! `OSLO_REQUIRE_BROKERS` names `rabbit` (CI): then it fails. With the URL set, a missing venv is
//! a failure, not a skip: CI sets the URL and runs the setup script, so nothing may silently
//! skip there. `OSLO_INTEROP_PYTHON` overrides the venv's python.
//!
//! Both server implementations expose the same endpoints (see `interop/py_server.py`):
//! the default endpoint (null namespace, version 1.3) with `echo`, `whoami`, `context`,
//! `client_timeout`, `fail`, `fail_custom`, `sleep`, `record`, `recorded`, `add`, `describe`,
//! and a `control` namespace endpoint at version 1.1 with `ping` -> `"pong-<server name>"`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oslo_messaging::{context, get_transport, pyjson, Endpoint, Error, HandlerError, JsonMap, RpcClient, RpcServer, Target, Transport};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const URL_ENV: &str = "OSLO_TEST_RABBIT_URL";
const PYTHON_ENV: &str = "OSLO_INTEROP_PYTHON";
/// Python start-up + oslo import + broker connection + queue declarations, on a loaded 2-core box.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default per-call timeout for calls that are expected to succeed.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

struct Interop {
    url: String,
    python: PathBuf,
    dir: PathBuf,
}

fn interop() -> Option<Interop> {
    // Skips (saying so) when the URL is unset, unless OSLO_REQUIRE_BROKERS names rabbit.
    let Some(url) = oslo_tests::broker_url("rabbit", URL_ENV) else {
        eprintln!(
            "SKIPPED: to run the Python interop tests: `bash interop/setup-venv.sh` \
             then {URL_ENV}=rabbit://guest:guest@127.0.0.1:5672/ cargo test -p oslo-tests --test interop_rabbit"
        );
        return None;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("interop");
    let python = std::env::var_os(PYTHON_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(".venv").join("bin").join("python"));
    assert!(
        python.exists(),
        "{URL_ENV} is set but the Python interop venv is missing ({} does not exist): \
         run `bash interop/setup-venv.sh` from the workspace root (or point {PYTHON_ENV} at a python with oslo.messaging==18.3.1)",
        python.display()
    );
    Some(Interop { url, python, dir })
}

/// The test's environment, or return from the test (URL unset).
macro_rules! interop_or_skip {
    () => {
        match interop() {
            Some(env) => env,
            None => return,
        }
    };
}

fn unique_topic(test: &str) -> String {
    format!("interop-{test}-{}", uuid::Uuid::new_v4().simple())
}

fn transport(env: &Interop) -> Transport {
    get_transport(&env.url).unwrap_or_else(|e| panic!("get_transport({}) failed: {e}", env.url))
}

/// A value's JSON text, cut to a readable length for assertion messages.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 600 {
        let mut end = 600;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &text[..end], text.len())
    } else {
        text
    }
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => panic!("{what}: still not true after {within:?}; last state: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Python server process
// ---------------------------------------------------------------------------------------------

/// `interop/py_server.py TOPIC NAME` as a child process (killed if dropped without `stop`).
struct PyServer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl PyServer {
    async fn start(env: &Interop, topic: &str, name: &str) -> PyServer {
        Self::start_with(env, topic, name, &[]).await
    }

    /// [`PyServer::start`] with extra `py_server.py` options (e.g. `--exchange E`).
    async fn start_with(env: &Interop, topic: &str, name: &str, extra: &[&str]) -> PyServer {
        let mut child = Command::new(&env.python)
            .arg("-u")
            .arg(env.dir.join("py_server.py"))
            .args([topic, name, "--url", &env.url])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env.python.display()));

        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let log = log.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[py_server {name}] {line}");
                    log.lock().unwrap().push(line);
                }
            });
        }

        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if line.trim() == "READY" {
                    return true;
                }
            }
            false
        })
        .await;
        match ready {
            Ok(true) => {}
            Ok(false) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                tokio::time::sleep(Duration::from_millis(200)).await; // let stderr drain
                panic!(
                    "py_server.py {topic} {name} exited before READY ({status:?}); stderr:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            Err(_) => panic!(
                "py_server.py {topic} {name} did not print READY within {READY_TIMEOUT:?}; stderr so far:\n{}",
                log.lock().unwrap().join("\n")
            ),
        }
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let stdin = child.stdin.take();
        PyServer {
            name: name.to_string(),
            child,
            stdin,
        }
    }

    /// Stop cleanly (EOF on stdin: stop, wait, transport cleanup, which deletes its fanout
    /// queue); kill it if that takes too long.
    async fn stop(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("py_server {} exited with {status}", self.name),
            Ok(Err(e)) => eprintln!("py_server {}: wait failed: {e}", self.name),
            Err(_) => {
                eprintln!("py_server {} did not stop within 30 s; killing it", self.name);
                let _ = self.child.kill().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Python client process
// ---------------------------------------------------------------------------------------------

/// Run `interop/py_client.py --batch -` with `ops` (see its docstring); one JSON result per op.
async fn py_batch(env: &Interop, topic: &str, ops: &[Value]) -> Vec<Value> {
    let budget: f64 = 60.0
        + ops
            .iter()
            .map(|op| {
                op.get("timeout").and_then(Value::as_f64).unwrap_or(60.0) + op.get("delay_before").and_then(Value::as_f64).unwrap_or(0.0)
            })
            .sum::<f64>();
    let mut child = Command::new(&env.python)
        .arg("-u")
        .arg(env.dir.join("py_client.py"))
        .args(["--url", &env.url, "--topic", topic, "--batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", env.python.display()));
    // Python's JSON: values may hold NaN / Infinity, which py_client's json.load reads.
    let input = pyjson::to_vec(ops).expect("ops serialize");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = tokio::spawn(async move {
        stdin.write_all(&input).await?;
        stdin.shutdown().await
    });
    let output = tokio::time::timeout(Duration::from_secs_f64(budget), child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "py_client.py did not finish within {budget} s (ops: {})",
                short(&Value::from(ops.to_vec()))
            )
        })
        .expect("py_client.py wait");
    let _ = writer.await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("[py_client stderr]\n{stderr}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: Vec<Value> = stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| pyjson::from_str(line).unwrap_or_else(|e| panic!("py_client.py printed a non-JSON line ({e}): {line}")))
        .collect();
    assert!(
        output.status.success() && results.len() == ops.len(),
        "py_client.py failed ({}, {} of {} results); stderr:\n{stderr}\nstdout:\n{}",
        output.status,
        results.len(),
        ops.len(),
        short(&Value::String(stdout.to_string()))
    );
    results
}

async fn py_one(env: &Interop, topic: &str, op: Value) -> Value {
    py_batch(env, topic, &[op]).await.pop().expect("one result")
}

/// The result of a successful Python operation.
fn py_ok(out: &Value) -> &Value {
    assert_eq!(out["ok"], json!(true), "Python client operation failed: {}", short(out));
    &out["result"]
}

/// A failed Python operation of exception class `class`.
fn py_err<'a>(out: &'a Value, class: &str) -> &'a Value {
    assert_eq!(
        out["ok"],
        json!(false),
        "Python client operation should have failed with {class}: {}",
        short(out)
    );
    assert_eq!(out["exc_class"], json!(class), "wrong exception class in Python: {}", short(out));
    out
}

// ---------------------------------------------------------------------------------------------
// Rust server with the same endpoints as py_server.py
// ---------------------------------------------------------------------------------------------

// HandlerError is what endpoint handlers return; boxing it is not an option here.
#[allow(clippy::result_large_err)]
fn arg(args: &JsonMap, key: &str) -> Result<Value, HandlerError> {
    args.get(key)
        .cloned()
        .ok_or_else(|| HandlerError::new("TypeError", format!("missing 1 required positional argument: '{key}'")))
}

fn describe(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        // (not Number::is_f64, which says false for NaN and the infinities)
        Value::Number(_) if pyjson::is_float(value) => json!("float"),
        Value::Number(_) => json!("int"),
        Value::String(_) => json!("str"),
        Value::Array(items) => Value::Array(items.iter().map(describe).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), describe(v))).collect()),
    }
}

fn rust_endpoints(name: &str, records: Arc<Mutex<Vec<Value>>>) -> Vec<Endpoint> {
    let whoami_name = name.to_string();
    let ping_name = name.to_string();
    let record_to = records.clone();
    let default = Endpoint::new()
        .with_target(Target::endpoint(None, Some("1.3")))
        .method("echo", |_ctxt, args: JsonMap| async move { arg(&args, "value") })
        .method("whoami", move |_ctxt, _args: JsonMap| {
            let name = whoami_name.clone();
            async move { Ok::<_, HandlerError>(name) }
        })
        .method("context", |ctxt: JsonMap, _args: JsonMap| async move {
            let mut ctxt = ctxt;
            ctxt.remove("client_timeout");
            Ok::<_, HandlerError>(Value::Object(ctxt))
        })
        .method("client_timeout", |ctxt: JsonMap, _args: JsonMap| async move {
            Ok::<_, HandlerError>(ctxt.get("client_timeout").cloned().unwrap_or(Value::Null))
        })
        .method("fail", |_ctxt, args: JsonMap| async move {
            let message = arg(&args, "message")?;
            Err::<Value, _>(HandlerError::new("ValueError", message.as_str().unwrap_or_default()))
        })
        .method("fail_custom", |_ctxt, args: JsonMap| async move {
            let message = arg(&args, "message")?;
            Err::<Value, _>(HandlerError::new("QuotaExceeded", message.as_str().unwrap_or_default()).module("nova.exception"))
        })
        .method("sleep", |_ctxt, args: JsonMap| async move {
            let seconds = arg(&args, "seconds")?;
            let secs = seconds
                .as_f64()
                .ok_or_else(|| HandlerError::new("TypeError", "seconds must be a number"))?;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok::<_, HandlerError>(seconds)
        })
        .method("record", move |_ctxt, args: JsonMap| {
            let records = record_to.clone();
            async move {
                let value = arg(&args, "value")?;
                records.lock().unwrap().push(value);
                Ok::<_, HandlerError>(Value::Null)
            }
        })
        .method("recorded", move |_ctxt, _args: JsonMap| {
            let records = records.clone();
            async move { Ok::<_, HandlerError>(Value::Array(records.lock().unwrap().clone())) }
        })
        .method("add", |_ctxt, args: JsonMap| async move {
            let (a, b) = (arg(&args, "a")?, arg(&args, "b")?);
            match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => Ok(json!(a + b)),
                _ => match (a.as_f64(), b.as_f64()) {
                    (Some(a), Some(b)) => Ok(json!(a + b)),
                    _ => Err(HandlerError::new("TypeError", "unsupported operand types for +")),
                },
            }
        })
        .method("describe", |_ctxt, args: JsonMap| async move {
            Ok::<_, HandlerError>(describe(&arg(&args, "value")?))
        });
    let control =
        Endpoint::new()
            .with_target(Target::endpoint(Some("control"), Some("1.1")))
            .method("ping", move |_ctxt, _args: JsonMap| {
                let name = ping_name.clone();
                async move { Ok::<_, HandlerError>(format!("pong-{name}")) }
            });
    vec![default, control]
}

struct RustServer {
    server: RpcServer,
    records: Arc<Mutex<Vec<Value>>>,
}

impl RustServer {
    async fn start(transport: &Transport, topic: &str, name: &str) -> RustServer {
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut builder = RpcServer::builder(transport.clone(), Target::new(topic).with_server(name));
        for endpoint in rust_endpoints(name, records.clone()) {
            builder = builder.endpoint(endpoint);
        }
        let server = tokio::time::timeout(READY_TIMEOUT, builder.start())
            .await
            .unwrap_or_else(|_| panic!("Rust RpcServer {topic}/{name} did not start within {READY_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("Rust RpcServer {topic}/{name} failed to start: {e}"));
        RustServer { server, records }
    }

    fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    async fn stop(self) {
        if tokio::time::timeout(Duration::from_secs(30), self.server.shutdown()).await.is_err() {
            eprintln!("Rust RpcServer did not shut down within 30 s");
        }
    }
}

fn rust_client(transport: &Transport, topic: &str) -> RpcClient {
    RpcClient::new(transport.clone(), Target::new(topic)).timeout(CALL_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// Broker housekeeping
// ---------------------------------------------------------------------------------------------

/// Delete the test's topic queues (`<topic>`, `<topic>.<server>`), which oslo never deletes,
/// so that repeated runs leave nothing behind. Best effort.
async fn delete_topic_queues(env: &Interop, topic: &str, servers: &[&str]) {
    let mut names = vec![topic.to_string()];
    names.extend(servers.iter().map(|s| format!("{topic}.{s}")));
    let run = Command::new(&env.python)
        .arg(env.dir.join("py_admin.py"))
        .args(["--url", &env.url, "delete-queues"])
        .args(&names)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() => {}
        other => eprintln!("could not delete the queues {names:?}: {other:?}"),
    }
}

/// Queues whose name starts with `prefix`, from `rabbitmqctl list_queues`; `None` when
/// rabbitmqctl cannot be used here (not installed, no access, remote broker).
async fn broker_queues_with_prefix(env: &Interop, prefix: &str) -> Option<Vec<String>> {
    if !(env.url.contains("@127.0.0.1")
        || env.url.contains("@localhost")
        || env.url.contains("://127.0.0.1")
        || env.url.contains("://localhost"))
    {
        return None;
    }
    let run = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() => Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|name| name.starts_with(prefix))
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------------

/// A 1 MiB string (plus a few multi-byte characters at the end).
fn big_string() -> String {
    let mut s = "0123456789abcdef".repeat(65536);
    s.push_str("é中😀");
    s
}

/// Named values of every JSON type, including the edges.
fn json_samples() -> Vec<(&'static str, Value)> {
    vec![
        ("null", Value::Null),
        ("true", json!(true)),
        ("false", json!(false)),
        ("zero", json!(0)),
        ("int", json!(42)),
        ("negative", json!(-7)),
        ("i64_max", json!(i64::MAX)),
        ("i64_min", json!(i64::MIN)),
        ("float", json!(1.5)),
        ("float_negative", json!(-0.25)),
        ("float_integral", json!(2.0)),
        ("float_tiny", json!(1e-300)),
        ("float_huge", json!(1.7976931348623157e308)),
        ("float_third", json!(1.0 / 3.0)),
        ("empty_string", json!("")),
        ("ascii", json!("hello")),
        ("unicode", json!("héllo wörld 中文 ключ Ωμέγα 😀🚀 \u{1F9EA}")),
        (
            "escapes",
            json!("quote \" backslash \\ slash / tab \t newline \n cr \r nul \u{0} bell \u{7} del \u{7f} ls \u{2028}"),
        ),
        ("empty_list", json!([])),
        ("empty_object", json!({})),
        ("list", json!([1, "two", 3.5, null, true, [false], {"k": "v"}])),
        (
            "nested",
            json!({"a": {"b": {"c": [1, [2, [3, [4, {"d": "deep"}]]]]}}, "ключ": "значение", "emoji 😀": ["🚀"], "": "empty key"}),
        ),
        ("big_string", Value::String(big_string())),
    ]
}

/// Values whose Python type must be exact (int stays int, float stays float).
fn type_probe() -> (Value, Value) {
    (
        json!({"i64_max": i64::MAX, "i64_min": i64::MIN, "zero": 0, "float_integral": 2.0, "float": 0.1, "huge": 1e300,
               "list": [1, 1.0, "1", true, null]}),
        json!({"i64_max": "int", "i64_min": "int", "zero": "int", "float_integral": "float", "float": "float", "huge": "float",
               "list": ["int", "float", "str", "bool", "null"]}),
    )
}

/// Values that must survive exactly between Python and Rust ("Reliability II"), from JSON text
/// (`json!` cannot hold a NaN number): 2**64+1, -2**63-1, 10**39, the non-finite floats, a
/// string that says NaN, and floats Python writes with an exponent or a sign.
fn exact_values() -> Vec<Value> {
    let text = r#"[18446744073709551617, -9223372036854775809, 1000000000000000000000000000000000000000, NaN, Infinity, -Infinity, "NaN", 1e+16, -0.0, [NaN, {"k": -Infinity, "big": 340282366920938463463374607431768211457}]]"#;
    match pyjson::from_str(text).expect("valid") {
        Value::Array(values) => values,
        _ => unreachable!(),
    }
}

/// `{"value": value}` and a py_client operation calling `method` with it (built by hand:
/// `json!` cannot hold a NaN number).
fn value_args(value: &Value) -> JsonMap {
    let mut args = JsonMap::new();
    args.insert("value".into(), value.clone());
    args
}

fn value_op(method: &str, value: &Value) -> Value {
    let mut op = context(json!({"method": method, "timeout": 30}));
    op.insert("args".into(), Value::Object(value_args(value)));
    Value::Object(op)
}

/// A probe for the Python types of exact values, and what Python's `describe` says of it.
fn exact_type_probe() -> (Value, Value) {
    let probe = pyjson::from_str(r#"[18446744073709551617, -9223372036854775809, NaN, Infinity, -Infinity, 1e+16, 2]"#).unwrap();
    (probe, json!(["int", "int", "float", "float", "float", "float", "int"]))
}

fn request_context() -> Value {
    json!({
        "user_id": "u-interop",
        "project_id": "p-interop",
        "request_id": "req-00000000-0000-0000-0000-000000000042",
        "global_request_id": null,
        "auth_token": "tok€n-😀",
        "roles": ["admin", "member"],
        "is_admin": true,
        "read_only": false,
        "count": 3,
        "ratio": 0.5,
        "nested": {"a": [1, "ü", {"b": null}]},
    })
}

// ---------------------------------------------------------------------------------------------
// Control: Python client -> Python servers (no Rust). When a Rust <-> Python test fails and
// this one passes, the broker, the venv and the scripts are fine.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn python_to_python_baseline() {
    let env = interop_or_skip!();
    let topic = unique_topic("baseline");
    let py_a = PyServer::start(&env, &topic, "py-a").await;
    let py_b = PyServer::start(&env, &topic, "py-b").await;
    let ctxt = request_context();
    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "echo", "args": {"value": {"i": i64::MAX, "u": "😀", "big": big_string()}}, "timeout": 30}),
            json!({"method": "context", "context": ctxt, "timeout": 20}),
            json!({"method": "whoami", "server": "py-b", "timeout": 20}),
            json!({"method": "fail", "args": {"message": "boom"}, "timeout": 20}),
            json!({"method": "nope", "timeout": 20}),
            json!({"method": "ping", "namespace": "control", "version": "1.1", "server": "py-a", "timeout": 20}),
            json!({"method": "sleep", "args": {"seconds": 3}, "timeout": 1}),
            json!({"method": "sleep", "args": {"seconds": 3}, "timeout": 10, "call_monitor_timeout": 2}),
            json!({"method": "record", "args": {"value": "fan"}, "fanout": true}),
            json!({"method": "recorded", "server": "py-a", "timeout": 20, "delay_before": 1.0}),
            json!({"method": "recorded", "server": "py-b", "timeout": 20}),
        ],
    )
    .await;
    assert_eq!(py_ok(&results[0])["big"].as_str().map(str::len), Some(big_string().len()));
    assert_eq!(py_ok(&results[1]), &ctxt);
    assert_eq!(py_ok(&results[2]), &json!("py-b"));
    assert!(py_err(&results[3], "ValueError")["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("boom"));
    assert_eq!(py_err(&results[4], "RemoteError")["remote_exc_type"], json!("NoSuchMethod"));
    assert_eq!(py_ok(&results[5]), &json!("pong-py-a"));
    py_err(&results[6], "MessagingTimeout");
    assert_eq!(py_ok(&results[7]), &json!(3));
    assert_eq!(py_ok(&results[9]), &json!(["fan"]));
    assert_eq!(py_ok(&results[10]), &json!(["fan"]));
    py_a.stop().await;
    py_b.stop().await;
    delete_topic_queues(&env, &topic, &["py-a", "py-b"]).await;
}

// ---------------------------------------------------------------------------------------------
// JSON types
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_to_rust_server_json_types() {
    let env = interop_or_skip!();
    let topic = unique_topic("types-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    let samples = json_samples();
    let mut ops: Vec<Value> = samples
        .iter()
        .map(|(name, value)| json!({"id": name, "method": "echo", "args": {"value": value}, "timeout": 30}))
        .collect();
    let all: serde_json::Map<String, Value> = samples.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    ops.push(json!({"id": "all_at_once", "method": "echo", "args": {"value": all}, "timeout": 30}));
    let (probe, expected_types) = type_probe();
    ops.push(json!({"id": "describe", "method": "describe", "args": {"value": probe}, "timeout": 30}));
    ops.push(json!({"id": "add", "method": "add", "args": {"a": 40, "b": 2}, "timeout": 30}));
    let results = py_batch(&env, &topic, &ops).await;

    for ((name, value), out) in samples.iter().zip(&results) {
        assert_eq!(py_ok(out), value, "echo of {name} via Python client -> Rust server: {}", short(out));
    }
    assert_eq!(
        py_ok(&results[samples.len()]),
        &Value::Object(all),
        "echo of all samples in one dict"
    );
    assert_eq!(
        py_ok(&results[samples.len() + 1]),
        &expected_types,
        "Rust server saw wrong JSON number kinds from Python"
    );
    assert_eq!(py_ok(&results[samples.len() + 2]), &json!(42));

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_to_py_server_json_types() {
    let env = interop_or_skip!();
    let topic = unique_topic("types-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let client = rust_client(&transport, &topic);
    let ctxt = context(json!({}));

    let samples = json_samples();
    for (name, value) in &samples {
        let result = client
            .call(&ctxt, "echo", json!({"value": value}))
            .await
            .unwrap_or_else(|e| panic!("echo of {name} via Rust client -> Python server failed: {e}"));
        assert_eq!(&result, value, "echo of {name} via Rust client -> Python server");
    }
    let all: serde_json::Map<String, Value> = samples.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    let result = client
        .call(&ctxt, "echo", json!({"value": all.clone()}))
        .await
        .expect("echo of all samples");
    assert_eq!(result, Value::Object(all));

    let (probe, expected_types) = type_probe();
    let types = client.call(&ctxt, "describe", json!({"value": probe})).await.expect("describe");
    assert_eq!(types, expected_types, "Python server saw wrong JSON number kinds from Rust");
    assert_eq!(client.call(&ctxt, "add", json!({"a": 40, "b": 2})).await.expect("add"), json!(42));

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_to_rust_server_exact_values() {
    let env = interop_or_skip!();
    let topic = unique_topic("exact-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    // Python's echo(2**64+1), echo(float("nan")), ... against the Rust server.
    let values = exact_values();
    let mut ops: Vec<Value> = values.iter().map(|value| value_op("echo", value)).collect();
    let (probe, expected_types) = exact_type_probe();
    ops.push(value_op("describe", &probe));
    ops.push(json!({"method": "client_timeout", "timeout": 30, "call_monitor_timeout": 2}));
    ops.push(json!({"method": "client_timeout", "timeout": 30}));
    let results = py_batch(&env, &topic, &ops).await;

    for (value, out) in values.iter().zip(&results) {
        assert_eq!(
            pyjson::to_string(py_ok(out)).unwrap(),
            pyjson::to_string(value).unwrap(),
            "echo via Python client -> Rust server"
        );
    }
    let n = values.len();
    assert_eq!(py_ok(&results[n]), &expected_types, "the Rust server saw the Python types");
    assert_eq!(
        py_ok(&results[n + 1]),
        &json!(2),
        "ctxt['client_timeout'] with call_monitor_timeout=2"
    );
    assert_eq!(
        py_ok(&results[n + 2]),
        &Value::Null,
        "ctxt['client_timeout'] without a call monitor"
    );

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_to_py_server_exact_values() {
    let env = interop_or_skip!();
    let topic = unique_topic("exact-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let client = rust_client(&transport, &topic);
    let ctxt = context(json!({}));

    for value in exact_values() {
        let result = client
            .call(&ctxt, "echo", value_args(&value))
            .await
            .unwrap_or_else(|e| panic!("echo of {value} via Rust client -> Python server failed: {e}"));
        assert_eq!(
            pyjson::to_string(&result).unwrap(),
            pyjson::to_string(&value).unwrap(),
            "echo via Rust client -> Python server"
        );
    }
    let (probe, expected_types) = exact_type_probe();
    let types = client.call(&ctxt, "describe", value_args(&probe)).await.expect("describe");
    assert_eq!(
        types, expected_types,
        "the Python server saw big ints as int, NaN/Infinity as float"
    );
    // An f64 result from Python's float("inf") and float("nan").
    let floats: Vec<f64> = client
        .call_as(&ctxt, "echo", value_args(&exact_type_probe().0))
        .await
        .expect("echo as f64");
    assert!(floats[2].is_nan());
    assert_eq!(floats[3..5], [f64::INFINITY, f64::NEG_INFINITY]);

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_cast_to_rust_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("cast-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    let value = json!({"cast": "from-python", "n": 1, "u": "😀"});
    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "record", "args": {"value": value}, "cast": true}),
            json!({"method": "record", "args": {"value": "to-server"}, "cast": true, "server": "rs-1"}),
            // Follow-up calls: the casts are in the server's queues before these are sent, but
            // the server may dispatch them concurrently, hence several polls.
            json!({"method": "recorded", "timeout": 20, "delay_before": 0.2}),
            json!({"method": "recorded", "timeout": 20, "delay_before": 1.0}),
            json!({"method": "recorded", "timeout": 20, "delay_before": 2.0}),
        ],
    )
    .await;
    assert_eq!(py_ok(&results[0]), &Value::Null, "cast returns None");
    py_ok(&results[1]);
    let last = py_ok(&results[4]).as_array().cloned().unwrap_or_default();
    assert_eq!(last.len(), 2, "Rust server should have recorded both casts exactly once: {last:?}");
    assert!(last.contains(&value) && last.contains(&json!("to-server")), "recorded: {last:?}");
    assert_eq!(server.records().len(), 2);

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_cast_to_py_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("cast-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let client = rust_client(&transport, &topic);
    let ctxt = context(request_context());

    let value = json!({"cast": "from-rust", "n": 1, "u": "😀"});
    client.cast(&ctxt, "record", json!({"value": value})).await.expect("cast to topic");
    client
        .prepare()
        .server("py-1")
        .cast(&ctxt, "record", json!({"value": "to-server"}))
        .await
        .expect("cast to server");
    eventually("the Python server recorded both casts", Duration::from_secs(15), || {
        let client = client.clone();
        let ctxt = ctxt.clone();
        let value = value.clone();
        async move {
            let recorded = client.call(&ctxt, "recorded", json!({})).await.map_err(|e| e.to_string())?;
            let list = recorded.as_array().cloned().unwrap_or_default();
            if list.len() == 2 && list.contains(&value) && list.contains(&json!("to-server")) {
                Ok(())
            } else {
                Err(recorded.to_string())
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = client.call(&ctxt, "recorded", json!({})).await.expect("recorded");
    assert_eq!(recorded.as_array().map(Vec::len), Some(2), "each cast exactly once: {recorded}");

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

// ---------------------------------------------------------------------------------------------
// Fanout, server targeting, one topic served by both languages
// ---------------------------------------------------------------------------------------------

/// Both servers must have recorded `value` exactly once.
async fn assert_fanout_delivered(env: &Interop, topic: &str, rust: &RustServer, value: &Value) {
    eventually("the Rust server recorded the fanout cast", Duration::from_secs(15), || async {
        let n = rust.records().iter().filter(|v| *v == value).count();
        if n >= 1 {
            Ok(())
        } else {
            Err(format!("{:?}", rust.records()))
        }
    })
    .await;
    // Poll the Python server through server-targeted calls from the Python client.
    let ops: Vec<Value> = (0..6)
        .map(|i| json!({"method": "recorded", "server": "py-a", "timeout": 20, "delay_before": if i == 0 { 0.0 } else { 1.0 }}))
        .collect();
    let results = py_batch(env, topic, &ops).await;
    let last = py_ok(results.last().unwrap());
    let py_count = last.as_array().map(|l| l.iter().filter(|v| *v == value).count()).unwrap_or(0);
    assert_eq!(
        py_count, 1,
        "Python server should have the fanout cast {value} exactly once: {last}"
    );
    let rust_count = rust.records().iter().filter(|v| *v == value).count();
    assert_eq!(
        rust_count,
        1,
        "Rust server should have the fanout cast {value} exactly once: {:?}",
        rust.records()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn fanout_reaches_python_and_rust_servers_once() {
    let env = interop_or_skip!();
    let topic = unique_topic("fanout");
    let transport = transport(&env);
    // Rust declares the topic's exchanges first here; the Python server must accept them
    // (a PRECONDITION_FAILED would make it exit before READY).
    let rust = RustServer::start(&transport, &topic, "rs-b").await;
    let py = PyServer::start(&env, &topic, "py-a").await;

    // Python client fanout.
    let from_py = json!("fanout-from-python");
    let out = py_one(
        &env,
        &topic,
        json!({"method": "record", "args": {"value": from_py}, "fanout": true}),
    )
    .await;
    py_ok(&out);
    assert_fanout_delivered(&env, &topic, &rust, &from_py).await;

    // Rust client fanout.
    let from_rs = json!("fanout-from-rust");
    rust_client(&transport, &topic)
        .fanout(true)
        .cast(&context(json!({"request_id": "req-fanout"})), "record", json!({"value": from_rs}))
        .await
        .expect("Rust fanout cast");
    assert_fanout_delivered(&env, &topic, &rust, &from_rs).await;

    // Each server has its own `<topic>_fanout_<uuid4 hex>` queue, and deletes it when it
    // stops (oslo's Connection.close); only reply queues are left to expire (x-expires).
    let prefix = format!("{topic}_fanout_");
    let before = broker_queues_with_prefix(&env, &prefix).await;
    if let Some(queues) = &before {
        assert_eq!(queues.len(), 2, "one fanout queue per server expected: {queues:?}");
        for queue in queues {
            let suffix = &queue[prefix.len()..];
            assert!(
                suffix.len() == 32 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
                "fanout queue names are <topic>_fanout_<uuid4 hex>: {queue}"
            );
        }
    }
    rust.stop().await;
    py.stop().await;
    transport.cleanup().await;
    match broker_queues_with_prefix(&env, &prefix).await {
        Some(left) => assert!(left.is_empty(), "fanout queues left after both servers stopped: {left:?}"),
        None => eprintln!("rabbitmqctl not usable here: fanout queue leak check skipped"),
    }
    delete_topic_queues(&env, &topic, &["py-a", "rs-b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn shared_topic_and_server_targeting() {
    let env = interop_or_skip!();
    let topic = unique_topic("shared");
    // Python declares first here (the reverse of the fanout test).
    let py = PyServer::start(&env, &topic, "py-a").await;
    let transport = transport(&env);
    let rust = RustServer::start(&transport, &topic, "rs-b").await;
    let names = [json!("py-a"), json!("rs-b")];

    // Python client: server targeting, then 10 calls to the shared topic.
    let mut ops = Vec::new();
    for _ in 0..3 {
        ops.push(json!({"method": "whoami", "server": "py-a", "timeout": 20}));
        ops.push(json!({"method": "whoami", "server": "rs-b", "timeout": 20}));
    }
    for _ in 0..10 {
        ops.push(json!({"method": "whoami", "timeout": 20}));
    }
    let results = py_batch(&env, &topic, &ops).await;
    for (i, out) in results[..6].iter().enumerate() {
        let expected = &names[i % 2];
        assert_eq!(
            py_ok(out),
            expected,
            "Python client call targeted at {expected} answered by the wrong server"
        );
    }
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for out in &results[6..] {
        let who = py_ok(out);
        assert!(names.contains(who), "unexpected answer {who}");
        *by_name.entry(who.as_str().unwrap().to_string()).or_default() += 1;
    }
    // Sequential calls to a queue with two consumers are delivered round robin by RabbitMQ.
    assert_eq!(
        by_name.len(),
        2,
        "10 sequential Python calls should reach both servers: {by_name:?}"
    );

    // Rust client: the same.
    let client = rust_client(&transport, &topic);
    let ctxt = context(json!({"request_id": "req-shared"}));
    for _ in 0..3 {
        for name in &names {
            let who = client
                .prepare()
                .server(name.as_str().unwrap())
                .call(&ctxt, "whoami", json!({}))
                .await
                .expect("targeted call");
            assert_eq!(&who, name, "Rust client call targeted at {name} answered by the wrong server");
        }
    }
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        let who = client.call(&ctxt, "whoami", json!({})).await.expect("topic call");
        assert!(names.contains(&who), "unexpected answer {who}");
        *by_name.entry(who.as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(by_name.len(), 2, "10 sequential Rust calls should reach both servers: {by_name:?}");

    rust.stop().await;
    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-a", "rs-b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_times_out_on_slow_py_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("timeout-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let ctxt = context(json!({}));

    let started = Instant::now();
    let err = rust_client(&transport, &topic)
        .timeout(Duration::from_secs(1))
        .call(&ctxt, "sleep", json!({"seconds": 4}))
        .await
        .expect_err("a 4 s call with a 1 s timeout must fail");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::MessagingTimeout { .. }),
        "expected MessagingTimeout, got {err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "timed out after {elapsed:?}"
    );
    // The transport still works after a timeout (the late reply must be dropped quietly).
    let echo = rust_client(&transport, &topic)
        .call(&ctxt, "echo", json!({"value": "after"}))
        .await
        .expect("call after timeout");
    assert_eq!(echo, json!("after"));

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_times_out_on_slow_rust_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("timeout-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "sleep", "args": {"seconds": 4}, "timeout": 1}),
            json!({"method": "echo", "args": {"value": "after"}, "timeout": 20}),
        ],
    )
    .await;
    let out = py_err(&results[0], "MessagingTimeout");
    assert_eq!(out["exc_module"], json!("oslo_messaging.exceptions"));
    let elapsed = out["elapsed"].as_f64().unwrap_or(0.0);
    assert!((0.9..4.0).contains(&elapsed), "Python timed out after {elapsed} s");
    assert_eq!(py_ok(&results[1]), &json!("after"));

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_call_monitor_with_py_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("monitor-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let ctxt = context(json!({}));
    let client = rust_client(&transport, &topic)
        .timeout(Duration::from_secs(10))
        .call_monitor_timeout(Duration::from_secs(2));

    // The Python server heartbeats every int(2)/2 = 1 s; the call outlives the monitor
    // timeout twice over and must still succeed with the real result (not a heartbeat's null).
    let started = Instant::now();
    let result = client
        .call(&ctxt, "sleep", json!({"seconds": 4.5}))
        .await
        .expect("long call with call monitor");
    assert_eq!(result, json!(4.5));
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "returned after {:?}",
        started.elapsed()
    );

    // `_timeout` on the wire is the call-monitor timeout: the Python server sees 2.
    let seen = client.call(&ctxt, "client_timeout", json!({})).await.expect("client_timeout");
    assert_eq!(seen.as_f64(), Some(2.0), "Python server saw client_timeout {seen}");
    let seen = rust_client(&transport, &topic)
        .call(&ctxt, "client_timeout", json!({}))
        .await
        .expect("client_timeout");
    assert_eq!(
        seen,
        Value::Null,
        "without a call monitor the Python server must see client_timeout None"
    );

    // Negative control: with call_monitor_timeout=1 the server's heartbeat interval is
    // int(1)/2 = 0 s, so oslo sends none; the Rust client's monitor must then give up after
    // ~1 s although the overall timeout is 10 s.
    let started = Instant::now();
    let err = rust_client(&transport, &topic)
        .timeout(Duration::from_secs(10))
        .call_monitor_timeout(Duration::from_secs(1))
        .call(&ctxt, "sleep", json!({"seconds": 4}))
        .await
        .expect_err("no heartbeats: the call monitor must expire");
    assert!(
        matches!(err, Error::MessagingTimeout { .. }),
        "expected MessagingTimeout, got {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the call monitor expired after {:?}",
        started.elapsed()
    );

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_call_monitor_with_rust_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("monitor-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    // The Python client restarts its 2 s monitor timer only on the Rust server's heartbeats.
    let out = py_one(
        &env,
        &topic,
        json!({"method": "sleep", "args": {"seconds": 4.5}, "timeout": 10, "call_monitor_timeout": 2}),
    )
    .await;
    assert_eq!(
        py_ok(&out),
        &json!(4.5),
        "long call from Python with call_monitor_timeout=2 (Rust server heartbeats)"
    );
    assert!(out["elapsed"].as_f64().unwrap_or(0.0) >= 4.0, "{}", short(&out));

    // Negative control: call_monitor_timeout=1 means no heartbeats (interval int(1)/2 = 0 s), so
    // the Python client's monitor expires after ~1 s although the overall timeout is 10 s.
    let out = py_one(
        &env,
        &topic,
        json!({"method": "sleep", "args": {"seconds": 4}, "timeout": 10, "call_monitor_timeout": 1}),
    )
    .await;
    py_err(&out, "MessagingTimeout");
    assert!(out["elapsed"].as_f64().unwrap_or(99.0) < 3.0, "{}", short(&out));

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_exceptions_reach_rust_client() {
    let env = interop_or_skip!();
    let topic = unique_topic("exc-py2rs");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let client = rust_client(&transport, &topic);
    let ctxt = context(json!({}));

    let err = client
        .call(&ctxt, "fail", json!({"message": "boom ü"}))
        .await
        .expect_err("fail must fail");
    let Error::Remote(remote) = &err else {
        panic!("expected Error::Remote for a Python ValueError, got {err:?}")
    };
    assert_eq!(remote.exc_type, "ValueError");
    assert_eq!(remote.module, "builtins");
    assert_eq!(remote.message, "boom ü");
    assert_eq!(remote.args, vec![json!("boom ü")]);
    assert!(
        remote.tb.concat().contains("raise ValueError(message)"),
        "Python traceback expected: {:?}",
        remote.tb
    );
    assert_eq!(err.oslo_class(), "ValueError");

    let err = client
        .call(&ctxt, "fail_custom", json!({"message": "over quota"}))
        .await
        .expect_err("fail_custom must fail");
    let Error::Remote(remote) = &err else {
        panic!("expected Error::Remote for a Python QuotaExceeded, got {err:?}")
    };
    assert_eq!(remote.exc_type, "QuotaExceeded");
    assert_eq!(remote.module, "__main__");
    assert_eq!(remote.message, "over quota");

    // A handler argument error in Python (TypeError) also travels.
    let err = client.call(&ctxt, "add", json!({"a": 1})).await.expect_err("missing argument");
    assert_eq!(err.as_remote().map(|r| r.exc_type.as_str()), Some("TypeError"), "{err:?}");

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_exceptions_reach_py_client() {
    let env = interop_or_skip!();
    let topic = unique_topic("exc-rs2py");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "fail", "args": {"message": "boom"}, "timeout": 20}),
            json!({"method": "fail_custom", "args": {"message": "x"}, "timeout": 20}),
            json!({"method": "add", "args": {"a": 1}, "timeout": 20}),
        ],
    )
    .await;

    // HandlerError::new("ValueError", "boom") -> rebuilt as a real ValueError in Python, whose
    // str() is the message followed by the remote traceback.
    let out = py_err(&results[0], "ValueError");
    assert_eq!(out["exc_module"], json!("builtins"), "{}", short(out));
    let message = out["message"].as_str().unwrap_or_default();
    assert!(
        message == "boom" || message.starts_with("boom\n"),
        "ValueError message: {message:?}"
    );

    // HandlerError::new("QuotaExceeded", "x").module("nova.exception") -> RemoteError.
    let out = py_err(&results[1], "RemoteError");
    assert_eq!(out["remote_exc_type"], json!("QuotaExceeded"), "{}", short(out));
    assert_eq!(out["remote_value"], json!("x"), "{}", short(out));

    // The Rust handler's missing-argument error is a builtins TypeError.
    let out = py_err(&results[2], "TypeError");
    assert_eq!(out["exc_module"], json!("builtins"));

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_dispatch_against_py_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("dispatch-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let client = rust_client(&transport, &topic);
    let ctxt = context(json!({}));

    let err = client.call(&ctxt, "no_such_method", json!({})).await.expect_err("NoSuchMethod");
    assert!(
        matches!(&err, Error::NoSuchMethod { method } if method == "no_such_method"),
        "expected NoSuchMethod, got {err:?}"
    );

    let err = client
        .prepare()
        .version("1.4")
        .call(&ctxt, "echo", json!({"value": 1}))
        .await
        .expect_err("UnsupportedVersion");
    assert!(
        matches!(&err, Error::UnsupportedVersion { version, method } if version == "1.4" && method == "echo"),
        "expected UnsupportedVersion 1.4, got {err:?}"
    );
    let err = client
        .prepare()
        .version("2.0")
        .call(&ctxt, "echo", json!({"value": 1}))
        .await
        .expect_err("major mismatch");
    assert!(
        matches!(&err, Error::UnsupportedVersion { version, .. } if version == "2.0"),
        "got {err:?}"
    );

    // Default namespace: any 1.x up to 1.3.
    for version in ["1.0", "1.3"] {
        let v = client
            .prepare()
            .version(version)
            .call(&ctxt, "echo", json!({"value": version}))
            .await;
        assert_eq!(v.unwrap_or_else(|e| panic!("echo at version {version}: {e}")), json!(version));
    }
    // The control namespace at 1.1.
    for version in ["1.0", "1.1"] {
        let pong = client
            .prepare()
            .namespace("control")
            .version(version)
            .call(&ctxt, "ping", json!({}))
            .await;
        assert_eq!(
            pong.unwrap_or_else(|e| panic!("control ping at {version}: {e}")),
            json!("pong-py-1")
        );
    }
    let err = client
        .prepare()
        .namespace("control")
        .version("1.2")
        .call(&ctxt, "ping", json!({}))
        .await
        .expect_err("1.2");
    assert!(
        matches!(&err, Error::UnsupportedVersion { version, method } if version == "1.2" && method == "ping"),
        "got {err:?}"
    );
    // ping exists only in the control namespace; echo not in it.
    let err = client.call(&ctxt, "ping", json!({})).await.expect_err("ping outside its namespace");
    assert!(matches!(&err, Error::NoSuchMethod { method } if method == "ping"), "got {err:?}");
    let err = client
        .prepare()
        .namespace("control")
        .version("1.1")
        .call(&ctxt, "echo", json!({"value": 1}))
        .await
        .expect_err("echo in control");
    assert!(matches!(&err, Error::NoSuchMethod { .. }), "got {err:?}");
    let err = client
        .prepare()
        .namespace("nope")
        .call(&ctxt, "ping", json!({}))
        .await
        .expect_err("unknown namespace");
    assert!(matches!(&err, Error::UnsupportedVersion { .. }), "got {err:?}");

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_dispatch_against_rust_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("dispatch-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "no_such_method", "timeout": 20}),
            json!({"method": "echo", "args": {"value": 1}, "version": "1.4", "timeout": 20}),
            json!({"method": "echo", "args": {"value": 1}, "version": "2.0", "timeout": 20}),
            json!({"method": "echo", "args": {"value": "1.0"}, "version": "1.0", "timeout": 20}),
            json!({"method": "echo", "args": {"value": "1.3"}, "version": "1.3", "timeout": 20}),
            json!({"method": "ping", "namespace": "control", "version": "1.0", "timeout": 20}),
            json!({"method": "ping", "namespace": "control", "version": "1.1", "timeout": 20}),
            json!({"method": "ping", "namespace": "control", "version": "1.2", "timeout": 20}),
            json!({"method": "ping", "timeout": 20}),
            json!({"method": "echo", "args": {"value": 1}, "namespace": "control", "version": "1.1", "timeout": 20}),
            json!({"method": "ping", "namespace": "nope", "timeout": 20}),
        ],
    )
    .await;

    let remote = |i: usize, exc_type: &str, value: Option<&str>| {
        let out = py_err(&results[i], "RemoteError");
        assert_eq!(out["remote_exc_type"], json!(exc_type), "op {i}: {}", short(out));
        if let Some(value) = value {
            assert_eq!(out["remote_value"], json!(value), "op {i}: {}", short(out));
        }
    };
    remote(0, "NoSuchMethod", Some("Endpoint does not support RPC method no_such_method"));
    remote(
        1,
        "UnsupportedVersion",
        Some("Endpoint does not support RPC version 1.4. Attempted method: echo"),
    );
    remote(
        2,
        "UnsupportedVersion",
        Some("Endpoint does not support RPC version 2.0. Attempted method: echo"),
    );
    assert_eq!(py_ok(&results[3]), &json!("1.0"));
    assert_eq!(py_ok(&results[4]), &json!("1.3"));
    assert_eq!(py_ok(&results[5]), &json!("pong-rs-1"));
    assert_eq!(py_ok(&results[6]), &json!("pong-rs-1"));
    remote(
        7,
        "UnsupportedVersion",
        Some("Endpoint does not support RPC version 1.2. Attempted method: ping"),
    );
    remote(8, "NoSuchMethod", Some("Endpoint does not support RPC method ping"));
    remote(9, "NoSuchMethod", Some("Endpoint does not support RPC method echo"));
    remote(10, "UnsupportedVersion", None);

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn py_client_context_reaches_rust_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("ctxt-py2rs");
    let transport = transport(&env);
    let server = RustServer::start(&transport, &topic, "rs-1").await;

    let ctxt = request_context();
    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "context", "context": ctxt, "timeout": 20}),
            json!({"method": "context", "context": {}, "timeout": 20}),
            json!({"method": "context", "context": ctxt, "timeout": 20, "server": "rs-1"}),
        ],
    )
    .await;
    assert_eq!(py_ok(&results[0]), &ctxt, "context keys from Python as seen by the Rust endpoint");
    assert_eq!(py_ok(&results[1]), &json!({}), "an empty Python context must reach Rust empty");
    assert_eq!(py_ok(&results[2]), &ctxt);

    server.stop().await;
    transport.cleanup().await;
    delete_topic_queues(&env, &topic, &["rs-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_context_reaches_py_server() {
    let env = interop_or_skip!();
    let topic = unique_topic("ctxt-rs2py");
    let py = PyServer::start(&env, &topic, "py-1").await;
    let transport = transport(&env);
    let client = rust_client(&transport, &topic);

    let ctxt = request_context();
    let seen = client
        .call(&context(ctxt.clone()), "context", json!({}))
        .await
        .expect("context call");
    assert_eq!(seen, ctxt, "context keys from Rust as seen by the Python endpoint");
    let seen = client
        .call(&context(json!({})), "context", json!({}))
        .await
        .expect("empty context call");
    assert_eq!(seen, json!({}), "an empty Rust context must reach Python empty");
    let seen = client
        .prepare()
        .server("py-1")
        .call(&context(ctxt.clone()), "context", json!({}))
        .await
        .expect("targeted");
    assert_eq!(seen, ctxt);

    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-1"]).await;
}

// ---------------------------------------------------------------------------------------------
// Raw wire comparison (interop/py_capture.py): what Rust publishes vs what Python publishes
// ---------------------------------------------------------------------------------------------

/// Spawn `interop/<script>` with stdout piped and stderr forwarded (prefixed) to ours.
fn spawn_python(env: &Interop, script: &str, args: &[String]) -> (Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) {
    let mut child = Command::new(&env.python)
        .arg("-u")
        .arg(env.dir.join(script))
        .args(["--url", &env.url])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} {script}: {e}", env.python.display()));
    let stderr = child.stderr.take().expect("piped stderr");
    let script_name = script.to_string();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{script_name}] {line}");
        }
    });
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    (child, stdout)
}

/// A running `py_capture.py listen`.
struct Capture {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Capture {
    /// Bind a capture queue to `exchange:type:routing_key` specs; returns once it consumes.
    async fn listen(env: &Interop, binds: &[String], count: usize) -> Capture {
        let mut args = vec![
            "listen".to_string(),
            "--count".into(),
            count.to_string(),
            "--timeout".into(),
            "90".into(),
        ];
        for bind in binds {
            args.push("--bind".into());
            args.push(bind.clone());
        }
        let (child, mut lines) = spawn_python(env, "py_capture.py", &args);
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "READY" {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(ready, Ok(true)), "py_capture.py listen did not get ready ({ready:?})");
        Capture { child, lines }
    }

    /// The captured messages (waits until `count` arrived or the capture timed out).
    async fn messages(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        let lines = &mut self.lines;
        let _ = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                out.push(serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("py_capture.py printed non-JSON ({e}): {line}")));
            }
        })
        .await;
        let _ = self.child.kill().await;
        out
    }
}

/// `py_capture.py request`: publish the oslo request `inner` to `routing_key` (exchange
/// `openstack`) with our own reply queue, and return the replies (up to the final one).
async fn capture_request(env: &Interop, routing_key: &str, inner: &Value) -> Vec<Value> {
    let args = vec![
        "request".to_string(),
        "--routing-key".into(),
        routing_key.into(),
        "--message".into(),
        inner.to_string(),
        "--timeout".into(),
        "30".into(),
    ];
    let (mut child, mut lines) = spawn_python(env, "py_capture.py", &args);
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = lines.next_line().await {
            out.push(serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("py_capture.py printed non-JSON ({e}): {line}")));
        }
    })
    .await;
    let _ = child.kill().await;
    out
}

/// `text` with every standalone 32-digit hex run (uuid4().hex ids) replaced by `<id>`.
fn normalize_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if run > 0 {
            let standalone = run == 32 && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
            out.push_str(if standalone { "<id>" } else { &text[i..i + run] });
            i += run;
        } else {
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn assert_hex_id(value: &Value, what: &str) {
    let text = value.as_str().unwrap_or_default();
    assert!(
        text.len() == 32 && text.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{what} must be a uuid4 hex (32 lower-case hex digits), got {value}"
    );
}

/// The decoded inner oslo message of a captured message, checking the envelope on the way.
fn inner_message(msg: &Value) -> JsonMap {
    let body = msg["body"].as_str().unwrap_or_default();
    let envelope: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"));
    let keys: Vec<&String> = envelope.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert_eq!(keys, ["oslo.version", "oslo.message"], "envelope keys (in order) of {body}");
    assert_eq!(envelope["oslo.version"], json!("2.0"), "{body}");
    let text = envelope["oslo.message"]
        .as_str()
        .unwrap_or_else(|| panic!("oslo.message must be a JSON string: {body}"));
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        other => panic!("oslo.message is not a JSON object ({other:?}): {text}"),
    }
}

/// The inner message with its random ids checked and replaced by placeholders.
fn inner_normalized(msg: &Value) -> Value {
    let mut map = inner_message(msg);
    for key in ["_msg_id", "_unique_id"] {
        if let Some(id) = map.get_mut(key) {
            assert_hex_id(id, key);
            *id = json!("<id>");
        }
    }
    if let Some(reply_q) = map.get_mut("_reply_q") {
        let name = reply_q.as_str().unwrap_or_default();
        assert_hex_id(&json!(name.strip_prefix("reply_").unwrap_or("")), "_reply_q after reply_");
        *reply_q = json!("reply_<id>");
    }
    Value::Object(map)
}

/// Where a captured message went, with the topic and reply queue names abstracted.
fn route(msg: &Value, topic: &str) -> (String, String) {
    let abstracted = |field: &str| normalize_ids(&msg[field].as_str().unwrap_or_default().replace(topic, "TOPIC"));
    (abstracted("exchange"), abstracted("routing_key"))
}

fn wire_context() -> JsonMap {
    context(json!({"user_id": "u-wire", "project_id": "p-wire", "request_id": "req-00000000-0000-0000-0000-000000000001"}))
}

fn wire_value() -> Value {
    json!({"s": "hi", "zh": "中文", "n": 1, "f": 1.5, "l": [true, null], "e": "😀"})
}

/// Compare the messages `rust` and `python` published (same operations, in order).
fn compare_published(what: &str, python: &[Value], py_topic: &str, rust: &[Value], rs_topic: &str, expected: usize) {
    assert_eq!(
        python.len(),
        expected,
        "{what}: the capture got {} of the {expected} messages Python published",
        python.len()
    );
    assert_eq!(
        python.len(),
        rust.len(),
        "{what}: Python published {} messages, Rust {}",
        python.len(),
        rust.len()
    );
    for (i, (py, rs)) in python.iter().zip(rust).enumerate() {
        assert_eq!(route(rs, rs_topic), route(py, py_topic), "{what} #{i}: exchange / routing key");
        for key in ["content_type", "content_encoding", "delivery_mode", "expiration"] {
            assert_eq!(
                rs["properties"][key], py["properties"][key],
                "{what} #{i}: AMQP property {key} (Rust {} vs Python {})",
                rs["properties"], py["properties"]
            );
        }
        let (py_inner, rs_inner) = (inner_normalized(py), inner_normalized(rs));
        assert_eq!(rs_inner, py_inner, "{what} #{i}: inner message (ids normalized), Rust vs Python");
    }
    // Now the strict comparisons: same keys in the same order, same JSON text, same property set.
    for (i, (py, rs)) in python.iter().zip(rust).enumerate() {
        let keys = |m: &Value| inner_message(m).keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(rs), keys(py), "{what} #{i}: inner key order");
        assert_eq!(rs["properties"], py["properties"], "{what} #{i}: full AMQP property set");
        assert_eq!(
            rs["body_is_ascii"],
            json!(true),
            "{what} #{i}: Python bodies are pure ASCII (ensure_ascii)"
        );
        let (py_body, rs_body) = (
            normalize_ids(py["body"].as_str().unwrap_or_default()),
            normalize_ids(rs["body"].as_str().unwrap_or_default()),
        );
        assert_eq!(rs_body, py_body, "{what} #{i}: body bytes (ids normalized), Rust vs Python");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_client_requests_match_python_client_on_the_wire() {
    let env = interop_or_skip!();
    let binds = |topic: &str| {
        vec![
            format!("openstack:topic:{topic}"),
            format!("openstack:topic:{topic}.s1"),
            format!("{topic}_fanout:fanout:"),
        ]
    };

    // Python client; nobody serves the topic, so its calls time out after 1 s.
    let py_topic = unique_topic("wire-py-client");
    let capture = Capture::listen(&env, &binds(&py_topic), 5).await;
    let ctxt = Value::Object(wire_context());
    let results = py_batch(
        &env,
        &py_topic,
        &[
            json!({"method": "echo", "args": {"value": wire_value()}, "context": ctxt, "timeout": 1}),
            json!({"method": "record", "args": {"value": "c"}, "context": ctxt, "cast": true}),
            json!({"method": "whoami", "context": ctxt, "server": "s1", "timeout": 1}),
            json!({"method": "record", "args": {"value": "f"}, "context": ctxt, "fanout": true}),
            json!({"method": "ping", "context": ctxt, "namespace": "control", "version": "1.1", "call_monitor_timeout": 2, "timeout": 1}),
        ],
    )
    .await;
    py_err(&results[0], "MessagingTimeout");
    let python = capture.messages().await;

    // The same operations from the Rust client.
    let rs_topic = unique_topic("wire-rs-client");
    let capture = Capture::listen(&env, &binds(&rs_topic), 5).await;
    let transport = transport(&env);
    let client = RpcClient::new(transport.clone(), Target::new(&rs_topic)).timeout(Duration::from_secs(1));
    let ctxt = wire_context();
    let err = client
        .call(&ctxt, "echo", json!({"value": wire_value()}))
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, Error::MessagingTimeout { .. }), "{err:?}");
    client.cast(&ctxt, "record", json!({"value": "c"})).await.expect("cast");
    let _ = client
        .prepare()
        .server("s1")
        .call(&ctxt, "whoami", json!({}))
        .await
        .expect_err("nobody answers");
    client
        .prepare()
        .fanout(true)
        .cast(&ctxt, "record", json!({"value": "f"}))
        .await
        .expect("fanout cast");
    let _ = client
        .prepare()
        .namespace("control")
        .version("1.1")
        .call_monitor_timeout(Duration::from_secs(2))
        .call(&ctxt, "ping", json!({}))
        .await
        .expect_err("nobody answers");
    let rust = capture.messages().await;
    transport.cleanup().await;

    compare_published("request", &python, &py_topic, &rust, &rs_topic, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn rust_server_replies_match_python_server_on_the_wire() {
    let env = interop_or_skip!();
    let py_topic = unique_topic("wire-py-server");
    let rs_topic = unique_topic("wire-rs-server");
    let py = PyServer::start(&env, &py_topic, "srv").await;
    let transport = transport(&env);
    let rust = RustServer::start(&transport, &rs_topic, "srv").await;

    let requests = [
        (
            "echo",
            json!({"method": "echo", "args": {"value": wire_value()}, "_context_user_id": "u-wire"}),
        ),
        ("fail", json!({"method": "fail", "args": {"message": "boom ü"}})),
        ("no such method", json!({"method": "nope", "args": {}})),
        (
            "unsupported version",
            json!({"method": "ping", "args": {}, "namespace": "control", "version": "1.2"}),
        ),
        ("heartbeats", json!({"method": "sleep", "args": {"seconds": 2.5}, "_timeout": 2})),
    ];
    for (what, request) in &requests {
        let python = capture_request(&env, &format!("{py_topic}.srv"), request).await;
        let rust = capture_request(&env, &format!("{rs_topic}.srv"), request).await;
        assert!(!python.is_empty(), "{what}: no reply from the Python server");
        assert!(!rust.is_empty(), "{what}: no reply from the Rust server (request: {request})");
        let finals = |replies: &[Value]| replies.iter().filter(|m| inner_message(m)["ending"] == json!(true)).count();
        assert_eq!(finals(&rust), 1, "{what}: exactly one final reply from Rust: {rust:?}");
        assert_eq!(
            inner_message(rust.last().unwrap())["ending"],
            json!(true),
            "{what}: the final reply comes last"
        );
        for reply in &rust {
            assert_eq!(reply["exchange"], json!(""), "{what}: replies go to the default exchange");
            assert_eq!(
                reply["properties"], python[0]["properties"],
                "{what}: reply AMQP properties, Rust vs Python"
            );
            assert_eq!(
                reply["body_is_ascii"],
                json!(true),
                "{what}: Python bodies are pure ASCII (ensure_ascii)"
            );
            let keys: Vec<String> = inner_message(reply).keys().cloned().collect();
            assert_eq!(
                keys,
                ["result", "failure", "ending", "_msg_id", "_unique_id"],
                "{what}: reply keys in oslo's order"
            );
        }
        let (py_final, rs_final) = (python.last().unwrap(), rust.last().unwrap());
        let (py_inner, rs_inner) = (inner_message(py_final), inner_message(rs_final));
        assert_eq!(rs_inner["result"], py_inner["result"], "{what}: result");
        match (py_inner["failure"].as_str(), rs_inner["failure"].as_str()) {
            (None, None) => {
                // No failure: the whole reply text must match once the ids are abstracted.
                assert_eq!(
                    normalize_ids(rs_final["body"].as_str().unwrap()),
                    normalize_ids(py_final["body"].as_str().unwrap()),
                    "{what}: reply bytes (ids normalized), Rust vs Python"
                );
            }
            (Some(py_failure), Some(rs_failure)) => {
                let py_failure: JsonMap = serde_json::from_str(py_failure).expect("Python failure JSON");
                let rs_failure: JsonMap =
                    serde_json::from_str(rs_failure).unwrap_or_else(|e| panic!("{what}: Rust failure is not JSON ({e}): {rs_failure}"));
                let keys = |m: &JsonMap| m.keys().cloned().collect::<Vec<_>>();
                assert_eq!(keys(&rs_failure), keys(&py_failure), "{what}: failure keys in oslo's order");
                for key in ["class", "module", "message", "args", "kwargs"] {
                    assert_eq!(rs_failure[key], py_failure[key], "{what}: failure.{key}, Rust vs Python");
                }
                assert!(rs_failure["tb"].is_array(), "{what}: failure.tb must be a list");
            }
            (py_failure, rs_failure) => panic!("{what}: failure Python {py_failure:?} vs Rust {rs_failure:?}"),
        }
        if *what == "heartbeats" {
            let heartbeats: Vec<&Value> = rust.iter().filter(|m| inner_message(m)["ending"] == json!(false)).collect();
            assert!(
                !heartbeats.is_empty(),
                "the Rust server sent no call-monitor heartbeat for _timeout=2 and a 2.5 s call"
            );
            let py_heartbeat = python
                .iter()
                .find(|m| inner_message(m)["ending"] == json!(false))
                .expect("Python heartbeat");
            for heartbeat in heartbeats {
                assert_eq!(
                    normalize_ids(heartbeat["body"].as_str().unwrap()),
                    normalize_ids(py_heartbeat["body"].as_str().unwrap()),
                    "heartbeat bytes (ids normalized), Rust vs Python"
                );
            }
        }
    }

    rust.stop().await;
    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &py_topic, &["srv"]).await;
    delete_topic_queues(&env, &rs_topic, &["srv"]).await;
}

// ---------------------------------------------------------------------------------------------
// A non-default exchange (services set control_exchange, e.g. `nova`)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
async fn custom_exchange_both_directions() {
    let env = interop_or_skip!();
    let topic = unique_topic("exchange");
    let exchange = format!("interop-x-{}", uuid::Uuid::new_v4().simple());
    let py = PyServer::start_with(&env, &topic, "py-a", &["--exchange", &exchange]).await;
    let transport = transport(&env);
    let rust = {
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut builder = RpcServer::builder(transport.clone(), Target::new(&topic).with_server("rs-b").with_exchange(&exchange));
        for endpoint in rust_endpoints("rs-b", records) {
            builder = builder.endpoint(endpoint);
        }
        builder.start().await.expect("Rust server on a custom exchange")
    };

    // Python client -> both servers through the custom exchange.
    let results = py_batch(
        &env,
        &topic,
        &[
            json!({"method": "whoami", "exchange": exchange, "server": "py-a", "timeout": 20}),
            json!({"method": "whoami", "exchange": exchange, "server": "rs-b", "timeout": 20}),
        ],
    )
    .await;
    assert_eq!(py_ok(&results[0]), &json!("py-a"));
    assert_eq!(
        py_ok(&results[1]),
        &json!("rs-b"),
        "Python client -> Rust server on exchange {exchange}"
    );

    // Rust client -> both servers.
    let client = rust_client(&transport, &topic).exchange(&exchange);
    let ctxt = context(json!({}));
    for name in ["py-a", "rs-b"] {
        let who = client.prepare().server(name).call(&ctxt, "whoami", json!({})).await;
        assert_eq!(
            who.unwrap_or_else(|e| panic!("Rust client -> {name} on exchange {exchange}: {e}")),
            json!(name)
        );
    }

    if tokio::time::timeout(Duration::from_secs(30), rust.shutdown()).await.is_err() {
        eprintln!("Rust RpcServer did not shut down within 30 s");
    }
    transport.cleanup().await;
    py.stop().await;
    delete_topic_queues(&env, &topic, &["py-a", "rs-b"]).await;
    let _ = Command::new(&env.python)
        .arg(env.dir.join("py_admin.py"))
        .args(["--url", &env.url, "delete-exchanges", &exchange])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
}
