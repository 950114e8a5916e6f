//! `oslo-msg`: a command-line tool for operators of OpenStack clouds. It speaks every
//! oslo.messaging driver compiled into the `oslo-messaging` crate: `call`, `cast` and `fanout`
//! RPC requests, `ping` servers, send and tail notifications, run a demo server, and show it
//! all on the in-memory transport with `demo`.

mod args;
mod config;
mod demo;
mod failure;
mod logging;
mod notify;
mod rpc;
mod serve;
mod style;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use oslo_messaging::{JsonMap, Priority, Retry, Target, Transport};
use serde_json::Value;

use crate::args::{parse_json_object, parse_kwargs, parse_seconds, split_url};
use crate::config::Settings;
use crate::failure::{Exit, Failure, EXIT_STATUS_HELP};

/// Call, cast, ping, notify, listen and serve over any oslo.messaging transport.
#[derive(Debug, Parser)]
#[command(name = "oslo-msg", version, after_help = format!("{EXAMPLES}\n\n{EXIT_STATUS_HELP}"))]
struct Cli {
    /// oslo.config file (e.g. /etc/nova/nova.conf) giving [DEFAULT] transport_url,
    /// control_exchange, rpc_response_timeout and the driver's options
    /// ([oslo_messaging_rabbit]); may be repeated, later files win.
    #[arg(long = "config-file", value_name = "PATH", global = true)]
    config_files: Vec<PathBuf>,

    /// Log to stderr: -v for info, -vv for debug (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Call METHOD on one server of the topic and print its result as JSON.
    #[command(
        override_usage = "oslo-msg call [URL] --topic <TOPIC> [OPTIONS] <METHOD> [KEY=VALUE | KEY:=JSON]...",
        after_help = EXIT_STATUS_HELP
    )]
    Call(RpcArgs),
    /// Send METHOD to one server of the topic without waiting for a result.
    #[command(
        override_usage = "oslo-msg cast [URL] --topic <TOPIC> [OPTIONS] <METHOD> [KEY=VALUE | KEY:=JSON]...",
        after_help = EXIT_STATUS_HELP
    )]
    Cast(RpcArgs),
    /// Send METHOD to every server of the topic without waiting for a result.
    #[command(
        override_usage = "oslo-msg fanout [URL] --topic <TOPIC> [OPTIONS] <METHOD> [KEY=VALUE | KEY:=JSON]...",
        after_help = EXIT_STATUS_HELP
    )]
    Fanout(RpcArgs),
    /// Ping a server (or any server of a topic) with oslo's `oslo_rpc_server_ping`; the server
    /// must run with `rpc_ping_enabled = true` (as `oslo-msg serve` does).
    #[command(after_help = EXIT_STATUS_HELP)]
    Ping(PingArgs),
    /// Send a notification.
    #[command(
        override_usage = "oslo-msg notify [URL] [OPTIONS] <EVENT_TYPE> [KEY=VALUE | KEY:=JSON]...",
        after_help = EXIT_STATUS_HELP
    )]
    Notify(NotifyArgs),
    /// Tail notifications: one JSON line each, or a readable colored line on a terminal.
    #[command(after_help = EXIT_STATUS_HELP)]
    Listen(ListenArgs),
    /// Run a demo RPC server (echo, add, fail, sleep, whoami; answers pings) until Ctrl-C,
    /// printing each request it handles.
    #[command(after_help = EXIT_STATUS_HELP)]
    Serve(ServeArgs),
    /// Run a server and a client on the in-memory fake:// transport and show call, cast,
    /// fanout, a timeout and a remote error.
    Demo,
}

/// The target of a request.
#[derive(Debug, Args)]
struct TargetArgs {
    /// Topic the servers listen on (e.g. `compute`).
    #[arg(long)]
    topic: String,
    /// One server of the topic (e.g. a host name).
    #[arg(long)]
    server: Option<String>,
    /// Exchange (default: control_exchange, `openstack`).
    #[arg(long)]
    exchange: Option<String>,
    /// Endpoint namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Interface version asked for, `major.minor`.
    #[arg(long, value_parser = parse_version)]
    version: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Target {
        let mut target = Target::new(self.topic.clone());
        target.server = self.server.clone();
        target.exchange = self.exchange.clone();
        target.namespace = self.namespace.clone();
        target.version = self.version.clone();
        target
    }
}

/// How a request is sent.
#[derive(Debug, Args)]
struct SendArgs {
    /// Seconds to wait for a reply or for the broker [default: 30, or rpc_response_timeout
    /// from --config-file].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Request context as a JSON object (a `request_id` is added when missing).
    #[arg(long, value_name = "JSON")]
    context: Option<String>,
    /// Connection retries before giving up; -1 retries until --timeout.
    #[arg(long, value_name = "N", default_value_t = 2, allow_negative_numbers = true)]
    retry: i64,
}

#[derive(Debug, Args)]
struct RpcArgs {
    /// Transport URL, e.g. rabbit://user:pass@host:5672/ (default: --config-file's
    /// transport_url, then $OSLO_TRANSPORT_URL).
    url: Option<String>,
    /// Method to invoke.
    method: Option<String>,
    /// Arguments: KEY=VALUE passes the string VALUE, KEY:=JSON passes parsed JSON
    /// (n:=3, flag:=true, ids:='[1,2]').
    #[arg(value_name = "KEY=VALUE | KEY:=JSON")]
    args: Vec<String>,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Debug, Args)]
struct PingArgs {
    /// Transport URL (default: --config-file's transport_url, then $OSLO_TRANSPORT_URL).
    url: Option<String>,
    /// Topic to ping.
    #[arg(long)]
    topic: String,
    /// One server of the topic (default: any one).
    #[arg(long)]
    server: Option<String>,
    /// Exchange (default: control_exchange).
    #[arg(long)]
    exchange: Option<String>,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Debug, Args)]
struct NotifyArgs {
    /// Transport URL (default: --config-file's transport_url, then $OSLO_TRANSPORT_URL).
    url: Option<String>,
    /// Event type, e.g. compute.instance.create.end.
    event_type: Option<String>,
    /// Payload fields: KEY=VALUE (string) or KEY:=JSON.
    #[arg(value_name = "KEY=VALUE | KEY:=JSON")]
    fields: Vec<String>,
    /// Payload as a JSON object (instead of KEY=VALUE fields).
    #[arg(long, value_name = "JSON", conflicts_with = "fields")]
    payload: Option<String>,
    /// Publisher id [default: oslo-msg.<host name>].
    #[arg(long)]
    publisher_id: Option<String>,
    /// Priority: audit, debug, info, warn, error, critical or sample.
    #[arg(long, default_value = "info", value_parser = parse_priority)]
    priority: Priority,
    /// Topic (repeatable).
    #[arg(long = "topic", default_value = "notifications")]
    topics: Vec<String>,
    /// Exchange (default: control_exchange).
    #[arg(long)]
    exchange: Option<String>,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Debug, Args)]
struct ListenArgs {
    /// Transport URL (default: --config-file's transport_url, then $OSLO_TRANSPORT_URL).
    url: Option<String>,
    /// Topic (repeatable).
    #[arg(long = "topic", default_value = "notifications")]
    topics: Vec<String>,
    /// Priority (repeatable) [default: all]. Each (topic, priority) gets a queue
    /// `<topic>.<priority>` if it has none yet; a queue nobody reads keeps filling up, so
    /// name only the priorities your cloud's consumers read.
    #[arg(long = "priority", value_parser = parse_priority)]
    priorities: Vec<Priority>,
    /// Exchange (default: control_exchange).
    #[arg(long)]
    exchange: Option<String>,
    /// Listen in a pool: a queue of its own (named after the pool), so other consumers (e.g.
    /// ceilometer) still get every notification. Without it, this listener shares
    /// `<topic>.<priority>` with them. The pool's queue stays on the broker and keeps
    /// collecting notifications after listen exits: delete it when done.
    #[arg(long)]
    pool: Option<String>,
    /// Only show event types matching this regular expression from their start (Python's
    /// re.match); the others are consumed all the same, as with oslo's filters.
    #[arg(long, value_name = "REGEX")]
    event_type: Option<String>,
    /// Only show publisher ids matching this regular expression from their start; the others
    /// are consumed all the same.
    #[arg(long, value_name = "REGEX")]
    publisher_id: Option<String>,
    /// Stop after N notifications (later ones are handed back to the broker).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (exit status 6 if --count was not reached).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value = "auto")]
    format: notify::Format,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Transport URL (default: --config-file's transport_url, then $OSLO_TRANSPORT_URL).
    url: Option<String>,
    /// Topic to serve.
    #[arg(long)]
    topic: String,
    /// Server name [default: this host's name].
    #[arg(long)]
    server: Option<String>,
    /// Exchange (default: control_exchange).
    #[arg(long)]
    exchange: Option<String>,
    /// Endpoint namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Endpoint version; clients asking for a compatible version (same major) are served.
    #[arg(long, default_value = "1.0", value_parser = parse_version)]
    version: String,
}

/// How long `serve` and `listen` wait for their subscriptions before giving up.
pub(crate) const START_LIMIT: Duration = Duration::from_secs(30);

const EXAMPLES: &str = "\
Examples:
  oslo-msg demo
  oslo-msg serve rabbit://guest:guest@127.0.0.1:5672/ --topic demo --server demo-1
  oslo-msg call rabbit://guest:guest@127.0.0.1:5672/ --topic demo add a:=40 b:=2
  oslo-msg --config-file /etc/nova/nova.conf ping --topic compute --server compute-1
  oslo-msg notify $URL --priority error compute.instance.create.error instance_id=vm-1
  oslo-msg listen $URL --topic notifications --priority error --count 10 --timeout 60";

fn parse_version(text: &str) -> Result<String, String> {
    oslo_messaging::Version::parse(text)
        .map(|_| text.to_string())
        .map_err(|_| format!("{text:?} is not a `major.minor` version"))
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not one of audit, debug, info, warn, error, critical, sample"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let long_running = matches!(cli.command, Command::Serve(_) | Command::Listen(_));
    logging::init(cli.verbose, long_running);
    // Files are read here, before the async runtime exists.
    let settings = match Settings::load(&cli.config_files) {
        Ok(settings) => settings,
        Err(failure) => return failure.report(),
    };
    let host = host_name();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return Failure::new(Exit::Other, format!("cannot start the async runtime: {e}")).report(),
    };
    let outcome = runtime.block_on(run(cli.command, &settings, &host));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

async fn run(command: Command, settings: &Settings, host: &str) -> Result<(), Failure> {
    match command {
        Command::Call(args) => send_rpc(rpc::Kind::Call, args, settings).await,
        Command::Cast(args) => send_rpc(rpc::Kind::Cast, args, settings).await,
        Command::Fanout(args) => send_rpc(rpc::Kind::Fanout, args, settings).await,
        Command::Ping(args) => {
            let mut target = Target::new(args.topic.clone());
            target.server = args.server.clone();
            target.exchange = args.exchange.clone();
            let request = request(target, &args.send, settings)?;
            let transport = connect(settings, only_url(args.url)?, None, START_LIMIT).await?;
            finish(&transport, rpc::ping(&transport, &request).await).await
        }
        Command::Notify(args) => {
            let (url, event_type, fields) = split_url(args.url, args.event_type, args.fields);
            let event_type = event_type.ok_or_else(|| Failure::usage("notify: the EVENT_TYPE argument is missing"))?;
            let payload = match &args.payload {
                Some(text) => parse_json_object(text, "--payload").map_err(Failure::usage)?,
                None => parse_kwargs(&fields).map_err(Failure::usage)?,
            };
            let outgoing = notify::Outgoing {
                publisher_id: args.publisher_id.clone().unwrap_or_else(|| format!("oslo-msg.{host}")),
                event_type,
                priority: args.priority,
                payload: Value::Object(payload),
                topics: args.topics.clone(),
                context: request_context(args.send.context.as_deref())?,
                timeout: timeout(&args.send, settings)?,
                retry: Retry::from_oslo(args.send.retry),
            };
            let transport = connect(settings, url, args.exchange.as_deref(), START_LIMIT).await?;
            finish(&transport, notify::notify(&transport, outgoing).await).await
        }
        Command::Listen(args) => {
            let subscription = notify::Subscription {
                topics: args.topics,
                exchange: args.exchange,
                priorities: args.priorities,
                pool: args.pool,
                event_type: args.event_type,
                publisher_id: args.publisher_id,
                count: args.count,
                timeout: args.timeout,
                format: args.format,
            };
            let start_limit = subscription.timeout.unwrap_or(START_LIMIT).min(START_LIMIT);
            let transport = connect(settings, only_url(args.url)?, None, start_limit).await?;
            finish(&transport, notify::listen(&transport, subscription).await).await
        }
        Command::Serve(args) => {
            let transport = connect(settings, only_url(args.url.clone())?, None, START_LIMIT).await?;
            finish(&transport, serve_until_stopped(&transport, args, host).await).await
        }
        Command::Demo => demo::run().await,
    }
}

async fn send_rpc(kind: rpc::Kind, args: RpcArgs, settings: &Settings) -> Result<(), Failure> {
    let (url, method, rest) = split_url(args.url, args.method, args.args);
    let method = method.ok_or_else(|| Failure::usage("the METHOD argument is missing"))?;
    if method.contains([':', '=', '/']) {
        return Err(Failure::usage(format!(
            "{method:?} is neither a transport URL (scheme://...) nor a method name"
        )));
    }
    let kwargs = parse_kwargs(&rest).map_err(Failure::usage)?;
    let request = request(args.target.target(), &args.send, settings)?;
    let transport = connect(settings, url, None, START_LIMIT).await?;
    finish(&transport, rpc::send(&transport, kind, &request, &method, kwargs).await).await
}

fn request(target: Target, send: &SendArgs, settings: &Settings) -> Result<rpc::Request, Failure> {
    Ok(rpc::Request {
        target,
        timeout: timeout(send, settings)?,
        retry: Retry::from_oslo(send.retry),
        context: request_context(send.context.as_deref())?,
    })
}

fn timeout(send: &SendArgs, settings: &Settings) -> Result<Duration, Failure> {
    Ok(match send.timeout {
        Some(timeout) => timeout,
        None => settings.rpc_response_timeout()?.unwrap_or(Duration::from_secs(30)),
    })
}

/// The `--context` object, with a `request_id` added when it has none (servers log it).
fn request_context(text: Option<&str>) -> Result<JsonMap, Failure> {
    let mut context = match text {
        Some(text) => parse_json_object(text, "--context").map_err(Failure::usage)?,
        None => JsonMap::new(),
    };
    context
        .entry("request_id")
        .or_insert_with(|| Value::String(format!("req-{}", uuid::Uuid::new_v4())));
    Ok(context)
}

/// A positional that must be a URL when given.
fn only_url(url: Option<String>) -> Result<Option<String>, Failure> {
    match url {
        Some(url) if !args::looks_like_url(&url) => Err(Failure::usage(format!(
            "{url:?} is not a transport URL (expected e.g. rabbit://user:pass@host:5672/)"
        ))),
        other => Ok(other),
    }
}

/// Build the transport for the URL argument / config file / environment. Nothing connects
/// yet: an unreachable broker is the library's typed error, within the command's `--retry`
/// budget (sends) or `start_limit` (servers and listeners), for every driver.
async fn connect(settings: &Settings, url: Option<String>, exchange: Option<&str>, start_limit: Duration) -> Result<Transport, Failure> {
    let url = settings.url(url)?;
    let mut config = settings.transport_config(&url)?;
    if let Some(exchange) = exchange {
        config.control_exchange = exchange.to_string();
    }
    config.start_timeout = Some(start_limit);
    oslo_messaging::get_transport_with_config(&url, config).map_err(Failure::from_error)
}

/// Release the transport (its reply queue, connections) and pass `outcome` on.
async fn finish(transport: &Transport, outcome: Result<(), Failure>) -> Result<(), Failure> {
    let _ = tokio::time::timeout(Duration::from_secs(5), transport.cleanup()).await;
    outcome
}

async fn serve_until_stopped(transport: &Transport, args: ServeArgs, host: &str) -> Result<(), Failure> {
    let server_name = args.server.clone().unwrap_or_else(|| host.to_string());
    let mut target = Target::new(args.topic.clone()).with_server(server_name.clone());
    target.exchange = args.exchange.clone();
    let hook: serve::RequestHook = Arc::new(|server: &str, method: &str, args: &Value| {
        println!("{server}: {method} {args}");
    });
    let server = serve::start(transport, target, args.namespace.as_deref(), &args.version, hook).await?;
    eprintln!(
        "serving topic {:?} as server {:?} on {} (endpoints echo, add, fail, sleep, whoami; Ctrl-C to stop)",
        args.topic,
        server_name,
        transport.url()
    );
    logging::started();
    stopped().await;
    eprintln!("stopping: finishing the requests in flight");
    server.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn stopped() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn call_without_url_takes_the_first_positional_as_method() {
        let cli = Cli::try_parse_from(["oslo-msg", "call", "--topic", "t", "echo", "a=1", "b:=2"]).unwrap();
        let Command::Call(args) = cli.command else { panic!() };
        let (url, method, rest) = split_url(args.url, args.method, args.args);
        assert_eq!(url, None);
        assert_eq!(method.as_deref(), Some("echo"));
        assert_eq!(rest, ["a=1", "b:=2"]);
    }

    #[test]
    fn config_file_is_global() {
        let cli = Cli::try_parse_from(["oslo-msg", "ping", "--topic", "t", "--config-file", "/etc/nova/nova.conf"]).unwrap();
        assert_eq!(cli.config_files, [PathBuf::from("/etc/nova/nova.conf")]);
    }
}
