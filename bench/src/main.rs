//! `oslo-bench`: one benchmark suite for every oslo-messaging driver. For each driver present
//! (rabbit, amqp1, zmq, fake) it measures our client/server (through `get_transport(url)`), the
//! raw transport crate doing the same request/reply and cast shapes (lapin, fe2o3-amqp, zeromq)
//! and, on RabbitMQ, Python oslo.messaging 18.3.1, in one run on one machine. See
//! `BENCHMARKS.md` at the workspace root.
//!
//! ```text
//! oslo-bench run [options]                  the whole suite (spawns servers and clients itself)
//! oslo-bench serve-ours TOPIC NAME [--url URL]
//! oslo-bench serve-raw QUEUE [--fanout-exchange X] [--topic-exchange T] [--oslo-props] [--amqp-url URL]
//! oslo-bench serve-raw-amqp1 QUEUE [--url URL]
//! oslo-bench serve-raw-zmq
//! oslo-bench client --kind ours|raw-lapin|raw-amqp1|raw-zmq [...]   (driven by `run`)
//! ```

mod common;
#[cfg(feature = "ours")]
mod ours;
mod raw;
mod raw_amqp1;
mod raw_zmq;
mod report;
mod runner;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::Res;

const USAGE: &str = "\
usage:
  oslo-bench run [options]
      --drivers LIST        drivers to run, comma-separated (default rabbit,amqp1,zmq,fake);
                            a driver whose transport cannot be built is skipped with the reason
      --only LETTERS        run only these scenarios (default abcde): a) sequential calls,
                            b) calls in flight, c) casts, d) fanout casts, e) notifications
      --reps R              repetitions of every measurement, median reported (default 2)
      --n N                 timed sequential calls (default 1000)
      --warmup N            untimed warm-up calls before them (default 100)
      --inflight K[,K..]    calls in flight in scenario b, one measurement each (default 1,16,64)
      --duration S          seconds timed in scenario b (default 2)
      --inflight-warmup S   untimed seconds before that (default 0.5)
      --casts C             casts for ours/raw (default 10000)
      --fanout-casts C      fanout casts for ours/raw (default 5000)
      --py-casts C          casts for Python (default 1000)
      --py-fanout-casts C   fanout casts for Python (default 1000)
      --notifications N     notifications for ours (default 5000)
      --py-notifications N  notifications for Python (default 1000)
      --cast-window W       concurrent casts (and notifications) for ours/raw (default 64)
      --wide-window W       confirms outstanding in the raw lapin reference (default 1000)
      --py-threads T        at most T Python client threads in scenario b (default 64)
      --payloads B[,B..]    payload sizes in bytes (default 100,65536); --payload B = one size
      --big-divisor D       divide counts by D for payloads above 4 KiB (default 4)
      --poll-ms MS          counter poll interval while waiting for casts (default 2)
      --timeout S           call timeout (default 10)
      --url URL             rabbit driver URL (default rabbit://guest:guest@127.0.0.1:5672/)
      --amqp-url URL        raw lapin URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
      --amqp1-url URL       amqp1 driver and raw fe2o3-amqp URL (default amqp://guest:guest@127.0.0.1:5672/)
      --zmq-url URL         zmq driver URL (default zmq+redis://127.0.0.1:6379)
      --fake-url URL        fake driver URL; the run id is appended (default fake://obench)
      --quiet-wait S        before each measurement, wait up to S s for the machine to be
                            quiet (default 0: do not wait)
      --quiet-pct P         quiet = processes outside the benchmark use < P % (default 10)
      --python PATH         python with oslo.messaging (default interop/.venv/bin/python)
      --no-python           skip Python oslo.messaging
      --no-ours             skip our implementation
      --no-refs             skip the raw-lapin reference variants
      --raw-oslo-props      raw lapin publishes with oslo's AMQP properties (persistent,
                            content type/encoding, headers, expiration on calls) and
                            mandatory calls/replies, to separate broker cost from driver cost
      --strict              exit non-zero if a measurement failed or an implementation was
                            skipped (for CI smoke runs)
      --out FILE            results file (default bench/results/latest.md; the chart is
                            written next to it with the extension .svg)
  oslo-bench serve-ours TOPIC NAME [--url URL]
  oslo-bench serve-raw QUEUE [--fanout-exchange X] [--topic-exchange T] [--oslo-props] [--amqp-url URL]
  oslo-bench serve-raw-amqp1 QUEUE [--url URL]
  oslo-bench serve-raw-zmq
  oslo-bench client --kind KIND [--url URL] [--topic T] [--server NAME=QUEUE|ENDPOINT]...
                    [--fanout X] [--topic-exchange T] [--reply-queue Q] [--timeout S] [--in-process-servers a,b] [--oslo-props]";

struct Args {
    positional: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

const FLAGS: &[&str] = &[
    "--no-python",
    "--no-ours",
    "--no-refs",
    "--raw-oslo-props",
    "--oslo-props",
    "--strict",
    "--help",
    "-h",
];

fn parse(args: impl Iterator<Item = String>) -> Res<Args> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg.starts_with('-') {
            if FLAGS.contains(&arg.as_str()) {
                options.push((arg, None));
            } else if let Some((k, v)) = arg.split_once('=') {
                options.push((k.to_string(), Some(v.to_string())));
            } else {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                options.push((arg, Some(value)));
            }
        } else {
            positional.push(arg);
        }
    }
    Ok(Args { positional, options })
}

fn num<T: std::str::FromStr>(key: &str, value: &str) -> Res<T> {
    value.parse().map_err(|_| format!("{key}: bad number {value:?}"))
}

fn list<T: std::str::FromStr>(key: &str, value: &str) -> Res<Vec<T>> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| num(key, s.trim()))
        .collect()
}

fn run_opts(args: &Args, command_line: String) -> Res<runner::Opts> {
    let mut o = runner::Opts {
        command_line,
        ..Default::default()
    };
    for (key, value) in &args.options {
        let v = value.as_deref().unwrap_or("");
        match key.as_str() {
            "--reps" => o.reps = num::<usize>(key, v)?.max(1),
            "--n" => o.n = num::<usize>(key, v)?.max(1),
            "--warmup" => o.warmup = num(key, v)?,
            "--inflight" => o.inflight = list::<usize>(key, v)?.into_iter().map(|k| k.max(1)).collect(),
            "--drivers" => {
                o.drivers = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(runner::Driver::parse)
                    .collect::<Res<_>>()?
            }
            "--payloads" => o.payloads = list(key, v)?,
            "--big-divisor" => o.big_divisor = num::<u64>(key, v)?.max(1),
            "--amqp1-url" => o.amqp1_url = v.to_string(),
            "--zmq-url" => o.zmq_url = v.to_string(),
            "--fake-url" => o.fake_url = v.to_string(),
            "--duration" => o.duration = num(key, v)?,
            "--inflight-warmup" => o.inflight_warmup = num(key, v)?,
            "--casts" => o.casts = num::<u64>(key, v)?.max(1),
            "--fanout-casts" => o.fanout_casts = num::<u64>(key, v)?.max(1),
            "--py-casts" => o.py_casts = num::<u64>(key, v)?.max(1),
            "--py-fanout-casts" => o.py_fanout_casts = num::<u64>(key, v)?.max(1),
            "--notifications" => o.notifications = num::<u64>(key, v)?.max(1),
            "--py-notifications" => o.py_notifications = num::<u64>(key, v)?.max(1),
            "--cast-window" => o.cast_window = num::<usize>(key, v)?.max(1),
            "--wide-window" => o.wide_window = num::<usize>(key, v)?.max(1),
            "--py-threads" => o.py_threads = num::<usize>(key, v)?.max(1),
            "--payload" => o.payloads = vec![num(key, v)?],
            "--poll-ms" => o.poll_ms = num(key, v)?,
            "--timeout" => o.timeout = num(key, v)?,
            "--url" => o.url = v.to_string(),
            "--amqp-url" => o.amqp_url = v.to_string(),
            "--python" => o.python = Some(PathBuf::from(v)),
            "--out" => o.out = PathBuf::from(v),
            "--quiet-wait" => o.quiet_wait = num(key, v)?,
            "--quiet-pct" => o.quiet_pct = num(key, v)?,
            "--no-python" => o.no_python = true,
            "--no-ours" => o.no_ours = true,
            "--no-refs" => o.no_refs = true,
            "--raw-oslo-props" => o.raw_oslo_props = true,
            "--strict" => o.strict = true,
            "--only" => o.only = v.to_string(),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if o.duration <= 0.0 || o.timeout <= 0.0 || o.poll_ms <= 0.0 {
        return Err("--duration, --timeout and --poll-ms must be positive".into());
    }
    if o.drivers.is_empty() || o.inflight.is_empty() || o.payloads.is_empty() {
        return Err("--drivers, --inflight and --payloads need at least one value".into());
    }
    Ok(o)
}

fn option<'a>(args: &'a Args, key: &str, default: &'a str) -> &'a str {
    args.options
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_deref())
        .unwrap_or(default)
}

fn worker_opts(args: &Args) -> Res<worker::WorkerOpts> {
    let mut servers = HashMap::new();
    for (k, v) in &args.options {
        if k == "--server" {
            let v = v.as_deref().unwrap_or("");
            let (name, target) = v.split_once('=').ok_or_else(|| format!("--server NAME=TARGET, got {v:?}"))?;
            servers.insert(name.to_string(), target.to_string());
        }
    }
    Ok(worker::WorkerOpts {
        kind: option(args, "--kind", "").to_string(),
        url: option(args, "--url", "").to_string(),
        topic: option(args, "--topic", "").to_string(),
        servers,
        fanout: option(args, "--fanout", "").to_string(),
        topic_exchange: option(args, "--topic-exchange", "").to_string(),
        reply_queue: option(args, "--reply-queue", "").to_string(),
        timeout: Duration::from_secs_f64(num("--timeout", option(args, "--timeout", "10"))?),
        in_process_servers: option(args, "--in-process-servers", "")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        oslo_props: args.options.iter().any(|(k, _)| k == "--oslo-props"),
    })
}

async fn real_main() -> Res<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = parse(argv.clone().into_iter())?;
    if args.options.iter().any(|(k, _)| k == "--help" || k == "-h") || args.positional.is_empty() {
        println!("{USAGE}");
        return Ok(());
    }
    let default_url = "rabbit://guest:guest@127.0.0.1:5672/";
    let default_amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
    match args.positional[0].as_str() {
        "run" => {
            let command_line = format!("cargo run -p oslo-bench --release -- {}", argv.join(" "));
            runner::run(run_opts(&args, command_line)?).await
        }
        "serve-ours" => {
            let [_, topic, name] = &args.positional[..] else {
                return Err(format!("serve-ours TOPIC NAME\n{USAGE}"));
            };
            #[cfg(feature = "ours")]
            {
                ours::serve(option(&args, "--url", default_url), topic, name).await
            }
            #[cfg(not(feature = "ours"))]
            {
                let _ = (topic, name, default_url);
                Err("built without the `ours` feature".into())
            }
        }
        "serve-raw" => {
            let [_, queue] = &args.positional[..] else {
                return Err(format!("serve-raw QUEUE\n{USAGE}"));
            };
            let fanout = args
                .options
                .iter()
                .find(|(k, _)| k == "--fanout-exchange")
                .and_then(|(_, v)| v.as_deref());
            let topic = args
                .options
                .iter()
                .find(|(k, _)| k == "--topic-exchange")
                .and_then(|(_, v)| v.as_deref());
            let oslo_props = args.options.iter().any(|(k, _)| k == "--oslo-props");
            raw::serve(option(&args, "--amqp-url", default_amqp), queue, fanout, topic, oslo_props).await
        }
        "serve-raw-amqp1" => {
            let [_, queue] = &args.positional[..] else {
                return Err(format!("serve-raw-amqp1 QUEUE\n{USAGE}"));
            };
            raw_amqp1::serve(option(&args, "--url", "amqp://guest:guest@127.0.0.1:5672/"), queue).await
        }
        "serve-raw-zmq" => raw_zmq::serve().await,
        "client" => worker::run(worker_opts(&args)?).await,
        other => Err(format!("unknown command {other}\n{USAGE}")),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = real_main().await {
        eprintln!("oslo-bench: {e}");
        std::process::exit(1);
    }
}
