//! `call`, `cast`, `fanout` and `ping`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use oslo_messaging::{JsonMap, Retry, RpcClient, Target, Transport, PING_METHOD};
use serde_json::Value;

use crate::failure::{Exit, Failure};

/// How a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Wait for the result.
    Call,
    /// One server on the topic, no result.
    Cast,
    /// Every server on the topic, no result.
    Fanout,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Cast => "cast",
            Kind::Fanout => "fanout",
        }
    }
}

/// Where and how to send one request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The target (topic, server, exchange, namespace, version).
    pub target: Target,
    /// How long to wait for a reply (calls) or the broker's confirm (casts).
    pub timeout: Duration,
    /// Connection retries.
    pub retry: Retry,
    /// The request context.
    pub context: JsonMap,
}

/// Extra time on top of `--timeout` before the command gives up on a driver that does not
/// report the timeout itself (e.g. still connecting).
const GRACE: Duration = Duration::from_secs(5);

/// Send `method(kwargs)` as `kind`; a call's result is printed as JSON on stdout.
pub async fn send(transport: &Transport, kind: Kind, request: &Request, method: &str, kwargs: JsonMap) -> Result<(), Failure> {
    let target = request.target.clone().with_fanout(kind == Kind::Fanout);
    let doing = format!("{} {method} to {target}", kind.name());
    let client = RpcClient::new(transport.clone(), target)
        .timeout(request.timeout)
        .retry(request.retry);
    let sent = async {
        match kind {
            Kind::Call => client.call(&request.context, method, Value::Object(kwargs)).await.map(Some),
            Kind::Cast | Kind::Fanout => client.cast(&request.context, method, Value::Object(kwargs)).await.map(|()| None),
        }
    };
    let outcome = tokio::time::timeout(request.timeout + GRACE, sent)
        .await
        .map_err(|_| gave_up(&doing, request.timeout))?
        .map_err(|e| Failure::messaging(&doing, e))?;
    match outcome {
        Some(result) => print_json(&result),
        None => eprintln!("{doing}: sent"),
    }
    Ok(())
}

/// `oslo_rpc_server_ping` to `target` (one server, or any server of the topic).
pub async fn ping(transport: &Transport, request: &Request) -> Result<(), Failure> {
    let doing = format!("ping {}", request.target);
    let client = RpcClient::new(transport.clone(), request.target.clone())
        .timeout(request.timeout)
        .retry(request.retry);
    let started = Instant::now();
    let reply = tokio::time::timeout(request.timeout + GRACE, client.call(&request.context, PING_METHOD, JsonMap::new()))
        .await
        .map_err(|_| gave_up(&doing, request.timeout))?;
    match reply {
        Ok(reply) => {
            let elapsed = started.elapsed();
            println!(
                "{} from {} in {:.1} ms",
                reply.as_str().unwrap_or("(unexpected reply)"),
                request.target,
                elapsed.as_secs_f64() * 1000.0
            );
            Ok(())
        }
        Err(oslo_messaging::Error::NoSuchMethod { .. }) => Err(Failure::new(
            Exit::Remote,
            format!("{doing}: the server does not answer pings (start it with rpc_ping_enabled = true)"),
        )),
        Err(e) => Err(Failure::messaging(&doing, e)),
    }
}

fn gave_up(doing: &str, timeout: Duration) -> Failure {
    Failure::new(
        Exit::Timeout,
        format!(
            "{doing}: gave up after {:.1}s: the broker did not answer (is it reachable?)",
            (timeout + GRACE).as_secs_f64()
        ),
    )
}

/// A JSON value on stdout: indented on a terminal, one line for pipes.
pub fn print_json(value: &Value) {
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    println!("{}", text.unwrap_or_else(|_| value.to_string()));
}
