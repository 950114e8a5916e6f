//! `oslo-msg` against the real RabbitMQ at `OSLO_TEST_RABBIT_URL` (skipped, saying so, when it
//! is unset; `OSLO_REQUIRE_BROKERS=rabbit` makes that a failure): `serve` in a child process
//! and `call` / `cast` / `fanout` / `ping` to it, remote errors, timeouts, `notify` + `listen`,
//! authentication failures and `--config-file`.

mod common;

use std::time::Duration;

use common::{run, texts, unique, Running};
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(30);

fn rabbit_url() -> Option<String> {
    oslo_tests::broker_url("rabbit", "OSLO_TEST_RABBIT_URL")
}

/// Deletes the queues named after a test's random topic when the test ends, however it ends.
struct Queues {
    url: String,
    prefix: String,
}

impl Drop for Queues {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(oslo_tests::purge_rabbit_queues(&self.url, &[self.prefix.as_str()]));
    }
}

/// The test URL and a fresh topic `prefix-<random>` whose queues go when the guard drops;
/// `None` (the test skips) when the broker is not configured.
fn rabbit_topic(prefix: &str) -> Option<(String, String, Queues)> {
    let url = rabbit_url()?;
    let topic = unique(prefix);
    let queues = Queues {
        url: url.clone(),
        prefix: topic.clone(),
    };
    Some((url, topic, queues))
}

/// A `serve` child on a fresh topic, ready to take requests.
fn serve(url: &str, topic: &str, server: &str, extra: &[&str]) -> Running {
    let mut args = vec!["serve", url, "--topic", topic, "--server", server];
    args.extend_from_slice(extra);
    spawn_until_ready(&args)
}

/// A `listen` child on `topic` that takes one notification (passing `filters`), or gives up
/// after 30 s.
fn listen_for_one(url: &str, topic: &str, filters: &[&str]) -> Running {
    let mut args = vec!["listen", url, "--topic", topic];
    args.extend_from_slice(filters);
    args.extend_from_slice(&["--count", "1", "--timeout", "30"]);
    Running::spawn(&args)
}

/// `oslo-msg notify URL --topic TOPIC args...`, which must succeed.
fn notify_ok(url: &str, topic: &str, args: &[&str]) {
    let mut all = vec!["notify", url, "--topic", topic];
    all.extend_from_slice(args);
    let (_, stderr, code) = texts(&run(&all));
    assert_eq!(code, 0, "{stderr}");
}

/// `oslo-msg serve ...` once it says it is serving.
fn spawn_until_ready(serve_args: &[&str]) -> Running {
    let mut running = Running::spawn(serve_args);
    running.wait_stderr("serving topic", START);
    running
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn serve_answers_call_cast_fanout_and_ping() {
    let Some((url, topic, _queues)) = rabbit_topic("oslo-msg-rpc") else {
        return;
    };
    let mut server = serve(&url, &topic, "srv-a", &[]);

    // KEY=VALUE gives strings, KEY:=JSON gives JSON; the server echoes what it received.
    let (stdout, stderr, code) = texts(&run(&[
        "call",
        &url,
        "--topic",
        &topic,
        "echo",
        "name=vm-1",
        "n=3",
        "count:=3",
        "ids:=[1, 2]",
        "spec:={\"on\": true, \"x\": null}",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let echoed: Value = serde_json::from_str(stdout.trim()).expect("call prints JSON");
    assert_eq!(
        echoed,
        json!({"name": "vm-1", "n": "3", "count": 3, "ids": [1, 2], "spec": {"on": true, "x": null}})
    );

    let (stdout, stderr, code) = texts(&run(&[
        "call", &url, "--topic", &topic, "--server", "srv-a", "add", "a:=40", "b:=2",
    ]));
    assert_eq!((code, stdout.trim()), (0, "42"), "{stderr}");

    // The context is sent along (whoami returns its request_id).
    let (stdout, stderr, code) = texts(&run(&[
        "call",
        &url,
        "--topic",
        &topic,
        "--context",
        r#"{"request_id": "req-cli-test", "user_id": "ops"}"#,
        "whoami",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let who: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(who, json!({"server": "srv-a", "request_id": "req-cli-test"}));

    // cast and fanout print nothing on stdout; the server logs each request it handles.
    let marker = unique("cast");
    let (stdout, stderr, code) = texts(&run(&["cast", &url, "--topic", &topic, "echo", &format!("marker={marker}")]));
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    assert!(stderr.contains("cast echo to <Target topic="), "{stderr}");
    let line = server.wait_stdout(&marker, START);
    assert!(line.starts_with("srv-a: echo "), "{line}");

    let marker = unique("fanout");
    let (_, stderr, code) = texts(&run(&["fanout", &url, "--topic", &topic, "echo", &format!("marker={marker}")]));
    assert_eq!(code, 0, "{stderr}");
    server.wait_stdout(&marker, START);

    // The URL can come from the environment.
    let output = common::oslo_msg()
        .args(["call", "--topic", &topic, "add", "a:=1", "b:=1"])
        .env("OSLO_TRANSPORT_URL", &url)
        .output()
        .unwrap();
    let (stdout, stderr, code) = texts(&output);
    assert_eq!((code, stdout.trim()), (0, "2"), "{stderr}");

    // ping the server, and any server of the topic.
    for extra in [&["--server", "srv-a"][..], &[]] {
        let mut args = vec!["ping", url.as_str(), "--topic", topic.as_str()];
        args.extend_from_slice(extra);
        let (stdout, stderr, code) = texts(&run(&args));
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("pong from <Target topic="), "{stdout}");
    }
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn fanout_reaches_every_server() {
    let Some((url, topic, _queues)) = rabbit_topic("oslo-msg-fan") else {
        return;
    };
    let mut first = serve(&url, &topic, "fan-1", &[]);
    let mut second = serve(&url, &topic, "fan-2", &[]);
    let marker = unique("everyone");
    let (_, stderr, code) = texts(&run(&["fanout", &url, "--topic", &topic, "echo", &format!("marker={marker}")]));
    assert_eq!(code, 0, "{stderr}");
    assert!(first.wait_stdout(&marker, START).starts_with("fan-1: echo"));
    assert!(second.wait_stdout(&marker, START).starts_with("fan-2: echo"));
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn remote_errors_timeouts_and_missing_servers_have_their_exit_status() {
    let Some((url, topic, _queues)) = rabbit_topic("oslo-msg-err") else {
        return;
    };
    let _server = serve(&url, &topic, "srv-e", &[]);

    let (stdout, stderr, code) = texts(&run(&[
        "call",
        &url,
        "--topic",
        &topic,
        "fail",
        "class=KeyError",
        "module=nova.exception",
        "message=instance vm-9 not found",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    for expected in [
        "oslo-msg: error: call fail to <Target topic=",
        "the server raised KeyError: instance vm-9 not found",
        "  class:     KeyError",
        "  module:    nova.exception",
        "  message:   instance vm-9 not found",
        "  traceback:",
        "Traceback (most recent call last):",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }

    let (_, stderr, code) = texts(&run(&["call", &url, "--topic", &topic, "no_such_method"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("class:     NoSuchMethod") && stderr.contains("no_such_method"),
        "{stderr}"
    );

    let (_, stderr, code) = texts(&run(&["call", &url, "--topic", &topic, "--version", "2.0", "echo"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("UnsupportedVersion"), "{stderr}");

    let (_, stderr, code) = texts(&run(&["call", &url, "--topic", &topic, "--timeout", "0.5", "sleep", "seconds:=3"]));
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("timed out (MessagingTimeout)"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Nobody serves this server name: the call fails at once instead of timing out.
    let (_, stderr, code) = texts(&run(&["call", &url, "--topic", &topic, "--server", "nobody", "echo"]));
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("nobody is listening"), "{stderr}");
    let (_, stderr, code) = texts(&run(&["ping", &url, "--topic", &topic, "--server", "nobody"]));
    assert_eq!(code, 7, "{stderr}");
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn notify_then_listen_receives_it_and_hands_back_the_rest() {
    let Some((url, topic, _queues)) = rabbit_topic("oslo-msg-notif") else {
        return;
    };
    // A listener that is already running gets the notification.
    let listener = {
        let mut listener = listen_for_one(&url, &topic, &[]);
        listener.wait_stderr("listening on", START);
        listener
    };
    notify_ok(
        &url,
        &topic,
        &[
            "--publisher-id",
            "compute.host1",
            "--priority",
            "error",
            "--context",
            r#"{"request_id": "req-n1", "auth_token": "tok-secret"}"#,
            "compute.instance.create.end",
            "instance_id=vm-1",
            "vcpus:=2",
        ],
    );
    let (stdout, stderr, code) = listener.finish(START);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let got: Value = serde_json::from_str(lines[0]).expect("listen prints JSON lines off a terminal");
    assert_eq!(got["priority"], "ERROR");
    assert_eq!(got["publisher_id"], "compute.host1");
    assert_eq!(got["event_type"], "compute.instance.create.end");
    assert_eq!(got["payload"], json!({"instance_id": "vm-1", "vcpus": 2}));
    assert_eq!(got["context"]["request_id"], "req-n1");
    assert_eq!(got["context"]["auth_token"], Value::Null);
    assert!(!stdout.contains("tok-secret"));

    // Notifications sent before any listener wait in their queue; --count 1 takes only the
    // first and hands the second back, so the next listener gets it.
    for n in 1..=2 {
        notify_ok(
            &url,
            &topic,
            &["--priority", "info", "--payload", &format!("{{\"n\": {n}}}"), "test.event"],
        );
    }
    for n in 1..=2 {
        let listener = listen_for_one(&url, &topic, &["--priority", "info"]);
        let (stdout, stderr, code) = listener.finish(START);
        assert_eq!(code, 0, "{stderr}");
        let got: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(got["payload"], json!({"n": n}), "{stdout}");
    }

    // Nothing more: --count not reached within --timeout is exit status 6.
    let (stdout, stderr, code) = texts(&run(&["listen", &url, "--topic", &topic, "--count", "1", "--timeout", "1"]));
    assert_eq!(code, 6, "{stderr}");
    assert!(stdout.is_empty() && stderr.contains("0 of 1 notifications"), "{stderr}");
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn listen_filters_and_prints_readable_lines() {
    let Some((url, topic, _queues)) = rabbit_topic("oslo-msg-filter") else {
        return;
    };
    for event_type in ["image.upload", "compute.instance.reboot.end"] {
        notify_ok(&url, &topic, &["--publisher-id", "compute.host7", event_type, "instance_id=vm-7"]);
    }
    let listener = listen_for_one(
        &url,
        &topic,
        &["--priority", "info", "--event-type", r"compute\.instance\.", "--format", "pretty"],
    );
    let (stdout, stderr, code) = listener.finish(START);
    assert_eq!(code, 0, "{stderr}");
    let line = stdout.trim();
    // `<timestamp> INFO     compute.host7 compute.instance.reboot.end {"instance_id":"vm-7"}`
    assert!(
        line.ends_with(r#" INFO     compute.host7 compute.instance.reboot.end {"instance_id":"vm-7"}"#),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}'), "no colors off a terminal: {line:?}");
}

/// The test URL with its credentials replaced.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with ://");
    let hosts = rest.split_once('@').map(|(_, hosts)| hosts).unwrap_or(rest);
    format!("{scheme}://{user}:{password}@{hosts}")
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn authentication_failure_is_clear_and_keeps_the_password() {
    let Some(url) = rabbit_url() else { return };
    let bad = with_credentials(&url, "oslo-msg-no-such-user", "wrong-pass-31337");
    for args in [
        vec!["call", bad.as_str(), "--topic", "t", "echo"],
        vec!["cast", bad.as_str(), "--topic", "t", "echo"],
        vec!["notify", bad.as_str(), "test.event"],
        vec!["listen", bad.as_str(), "--count", "1", "--timeout", "10"],
    ] {
        let (stdout, stderr, code) = texts(&run(&args));
        assert_eq!(code, 5, "{args:?}: {stderr}");
        assert!(stderr.contains("authentication failed"), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("wrong-pass-31337") && !stdout.contains("wrong-pass-31337"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
#[cfg_attr(not(oslo_broker_rabbit), ignore = "OSLO_TEST_RABBIT_URL is not set")]
fn config_file_sets_url_and_control_exchange() {
    let Some((url, topic, _queues)) = rabbit_topic("oslo-msg-conf") else {
        return;
    };
    // One fixed exchange name, so test runs leave at most this one exchange behind.
    let conf = std::env::temp_dir().join(format!("{topic}.conf"));
    std::fs::write(
        &conf,
        format!("[DEFAULT]\ntransport_url = {url}\ncontrol_exchange = oslo-msg-test\n\n[oslo_messaging_rabbit]\nrabbit_qos_prefetch_count = 5\n"),
    )
    .unwrap();
    let conf_arg = conf.to_str().unwrap().to_string();
    let outcome = std::panic::catch_unwind(|| {
        let _server = serve_with_config(&conf_arg, &topic);
        let (stdout, stderr, code) = texts(&run(&[
            "call",
            "--config-file",
            &conf_arg,
            "--topic",
            &topic,
            "add",
            "a:=1",
            "b:=2",
        ]));
        assert_eq!((code, stdout.trim()), (0, "3"), "{stderr}");
        // Without the file the call goes to the default exchange, where nobody serves the topic.
        let (_, stderr, code) = texts(&run(&["call", &url, "--topic", &topic, "add", "a:=1", "b:=2"]));
        assert_eq!(code, 7, "{stderr}");
        // --exchange names it explicitly.
        let (stdout, stderr, code) = texts(&run(&[
            "call",
            &url,
            "--topic",
            &topic,
            "--exchange",
            "oslo-msg-test",
            "add",
            "a:=2",
            "b:=2",
        ]));
        assert_eq!((code, stdout.trim()), (0, "4"), "{stderr}");
    });
    let _ = std::fs::remove_file(&conf);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn serve_with_config(conf: &str, topic: &str) -> Running {
    spawn_until_ready(&["serve", "--config-file", conf, "--topic", topic, "--server", "conf-1"])
}
