//! The binary without a broker: `demo`, argument and config-file handling, and the one-line
//! errors (with their exit statuses) for bad URLs, missing drivers and unreachable brokers.

mod common;

use common::{run, texts, unique};

#[test]
fn demo_shows_call_cast_fanout_timeout_and_remote_error() {
    let (stdout, stderr, code) = texts(&run(&["demo"]));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "call: the result comes back\n  $ oslo-msg call URL --topic demo add a:=40 b:=2\n  42\n",
        "\"server\":\"demo-2\"",
        "cast: one server of the topic handles it",
        "fanout: every server of the topic handles it",
        "handled by demo-1 and demo-2",
        "timed out (MessagingTimeout)",
        "(exit status 6)",
        "the server raised ValueError: flavor is required (exit status 1)",
        "    class:     ValueError",
        "    module:    builtins",
        "    message:   flavor is required",
        "    traceback:",
        "done: every step behaved as expected",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // The cast went to exactly one of the two servers.
    let cast_result = stdout.lines().skip_while(|l| !l.starts_with("cast:")).nth(2).unwrap();
    assert!(
        cast_result == "  handled by demo-1" || cast_result == "  handled by demo-2",
        "{cast_result:?}"
    );
}

#[test]
fn help_documents_exit_statuses_and_url_sources() {
    for args in [&["--help"][..], &["call", "--help"]] {
        let (stdout, _, code) = texts(&run(args));
        assert_eq!(code, 0);
        for expected in [
            "Exit status:",
            "6  timed out",
            "7  nobody listens",
            "OSLO_TRANSPORT_URL",
            "--config-file",
        ] {
            assert!(stdout.contains(expected), "{args:?}: missing {expected:?} in:\n{stdout}");
        }
    }
}

#[test]
fn bad_key_value_arguments_are_usage_errors() {
    let cases = [
        (
            vec!["call", "fake://args", "--topic", "t", "echo", "n:=three"],
            "argument \"n\": \"three\" is not valid JSON",
        ),
        (
            vec!["call", "fake://args", "--topic", "t", "echo", "novalue"],
            "is not KEY=VALUE or KEY:=JSON",
        ),
        (
            vec!["cast", "fake://args", "--topic", "t", "echo", "a=1", "a=2"],
            "argument \"a\" is given twice",
        ),
        (vec!["call", "fake://args", "--topic", "t"], "the METHOD argument is missing"),
        (
            vec!["call", "fake://args", "--topic", "t", "--context", "[1]", "echo"],
            "--context must be a JSON object",
        ),
        (
            vec!["notify", "fake://args", "--payload", "3", "compute.x"],
            "--payload must be a JSON object",
        ),
        (vec!["listen", "not-a-url"], "\"not-a-url\" is not a transport URL"),
        (
            vec!["call", "::nonsense", "--topic", "t", "echo"],
            "\"::nonsense\" is neither a transport URL",
        ),
    ];
    for (args, expected) in cases {
        let (stdout, stderr, code) = texts(&run(&args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: missing {expected:?} in {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: not one line: {stderr:?}");
        assert!(stdout.is_empty());
    }
    // clap's own usage errors also exit with 2.
    let (_, stderr, code) = texts(&run(&["call", "fake://args", "echo"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--topic <TOPIC>"), "{stderr}");
}

#[test]
fn fake_transport_call_without_server_fails_cleanly() {
    // fake:// lives inside one process: nobody serves this topic.
    let (_, stderr, code) = texts(&run(&["call", "fake://lonely", "--topic", "t", "--timeout", "0.5", "echo", "a=1"]));
    assert!(code == 6 || code == 7, "code {code}: {stderr}");
    assert!(stderr.starts_with("oslo-msg: error: call echo to <Target topic=t>: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bad_urls_and_unknown_schemes_never_print_passwords() {
    let secret = "pw-never-shown-42";
    let cases = [
        (format!("rabbit://user:{secret}@host:notaport/"), 3, "invalid transport URL"),
        (format!("nats://user:{secret}@127.0.0.1:4222/"), 3, "compiled-in drivers"),
        (
            format!("rabbit://user:{secret}@127.0.0.1:1/"),
            4,
            "Unable to connect to AMQP server on rabbit://user:***@127.0.0.1:1/",
        ),
    ];
    for (url, expected_code, expected) in &cases {
        for command in [
            vec!["call", url.as_str(), "--topic", "t", "echo"],
            vec!["ping", url.as_str(), "--topic", "t"],
            vec!["listen", url.as_str(), "--count", "1", "--timeout", "3"],
        ] {
            let (stdout, stderr, code) = texts(&run(&command));
            assert_eq!(code, *expected_code, "{command:?}: {stderr}");
            assert!(stderr.contains(expected), "{command:?}: missing {expected:?} in {stderr:?}");
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{command:?} printed the password: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{command:?}: not one line: {stderr:?}");
            assert!(!stderr.contains("panicked") && !stderr.contains("{ "), "{stderr}");
        }
    }
}

#[test]
fn url_comes_from_the_environment_or_is_asked_for() {
    let (_, stderr, code) = texts(&run(&["ping", "--topic", "t"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no transport URL") && stderr.contains("OSLO_TRANSPORT_URL"),
        "{stderr}"
    );

    let output = common::oslo_msg()
        .args(["ping", "--topic", "t"])
        .env("OSLO_TRANSPORT_URL", "rabbit://u:env-secret@127.0.0.1:1/")
        .output()
        .unwrap();
    let (_, stderr, code) = texts(&output);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1") && !stderr.contains("env-secret"), "{stderr}");
}

fn write_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.conf", unique("oslo-msg-test")));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_file_gives_url_and_driver_options() {
    // transport_url from [DEFAULT], the environment loses to it.
    let conf =
        write_config("[DEFAULT]\n# nova.conf\ntransport_url = rabbit://nova:conf-secret@127.0.0.1:1/nova\ncontrol_exchange = nova\n");
    let output = common::oslo_msg()
        .args(["call", "--config-file", conf.to_str().unwrap(), "--topic", "compute", "echo"])
        .env("OSLO_TRANSPORT_URL", "nats://elsewhere/")
        .output()
        .unwrap();
    let (_, stderr, code) = texts(&output);
    std::fs::remove_file(&conf).unwrap();
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1") && !stderr.contains("conf-secret"), "{stderr}");

    // [oslo_messaging_rabbit] options reach the driver, which rejects unknown ones.
    let conf = write_config("[DEFAULT]\ntransport_url = rabbit://127.0.0.1:1/\n\n[oslo_messaging_rabbit]\nrabbit_no_such_option = 1\n");
    let (_, stderr, code) = texts(&run(&["ping", "--topic", "t", "--config-file", conf.to_str().unwrap()]));
    std::fs::remove_file(&conf).unwrap();
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("rabbit_no_such_option"), "{stderr}");

    // A malformed file names the file and line, and nothing from the line.
    let conf = write_config("[DEFAULT]\ntransport_url rabbit://u:line-secret@h/\n");
    let (_, stderr, code) = texts(&run(&["ping", "--topic", "t", "--config-file", conf.to_str().unwrap()]));
    std::fs::remove_file(&conf).unwrap();
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(".conf:2: expected `name = value`") && !stderr.contains("line-secret"),
        "{stderr}"
    );

    // A missing file.
    let (_, stderr, code) = texts(&run(&["ping", "--topic", "t", "--config-file", "/nonexistent/nova.conf"]));
    assert_eq!(code, 3);
    assert!(stderr.contains("cannot read config file /nonexistent/nova.conf"), "{stderr}");
}

#[test]
fn every_driver_fails_fast_and_in_one_line_on_an_unreachable_broker() {
    // amqp:// and zmq:// reach the binary through the facade; whatever state those drivers
    // are in, an unreachable endpoint must give one line, a documented status, and end.
    for url in ["amqp://user:drv-secret@127.0.0.1:1/", "zmq://user:drv-secret@127.0.0.1:1/"] {
        for command in [
            vec!["call", url, "--topic", "t", "--timeout", "3", "echo"],
            vec!["listen", url, "--count", "1", "--timeout", "3"],
        ] {
            let started = std::time::Instant::now();
            let (stdout, stderr, code) = texts(&run(&command));
            assert!([3, 4, 6].contains(&code), "{command:?}: exit {code}: {stderr}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(15),
                "{command:?} took {:?}",
                started.elapsed()
            );
            assert_eq!(stderr.lines().count(), 1, "{command:?}: {stderr:?}");
            assert!(!stderr.contains("drv-secret") && !stdout.contains("drv-secret"), "{stderr}");
        }
    }
}
