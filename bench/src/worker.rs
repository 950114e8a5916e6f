//! `oslo-bench client …`: one implementation's client in a process of its own, so its CPU and
//! peak RSS are its own. It prints `READY`, then reads one JSON [`Cmd`] per line on stdin and
//! answers each with one JSON [`Reply`] line on stdout; on stdin EOF it closes its connections
//! and prints a final `{"closed": …}` line.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::common::{err, vmhwm_kb, Measurement, Res};
use crate::raw::RawClient;
use crate::raw_amqp1::Amqp1Client;
use crate::raw_zmq::ZmqClient;

/// One measurement request from the runner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cmd {
    /// `seq`, `inflight`, `cast`, `fanout` or `notify`.
    pub scenario: String,
    /// Length of the payload string.
    pub payload: usize,
    /// seq: timed calls / untimed warm-up calls.
    pub n: usize,
    pub warmup: usize,
    /// inflight: calls in flight, warm-up and timed seconds.
    pub inflight: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// cast, fanout, notify: how many, and how many concurrent senders.
    pub count: u64,
    pub window: usize,
    /// Raw lapin: speak oslo's protocol (the floor reference variant, see `raw`).
    pub oslo_protocol: bool,
    /// notify: the topic.
    pub notify_topic: String,
    /// Counter poll interval (ms) and the bound of cast/notify waits (s).
    pub poll_ms: f64,
    pub bound_s: f64,
    /// Call timeout (s), for the in-flight bound.
    pub timeout_s: f64,
}

/// The answer to a [`Cmd`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub measurement: Measurement,
    /// Peak RSS of this client process so far, KiB.
    pub vmhwm_kb: Option<u64>,
}

/// How the worker reaches its servers (from the command line).
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "ours"), allow(dead_code))]
pub struct WorkerOpts {
    /// `ours`, `raw-lapin`, `raw-amqp1`, `raw-zmq`.
    pub kind: String,
    pub url: String,
    pub topic: String,
    /// Server name -> queue (raw lapin / amqp1) or endpoint (raw zmq).
    pub servers: HashMap<String, String>,
    pub fanout: String,
    /// raw lapin: the topic exchange of the oslo-protocol reference variant.
    pub topic_exchange: String,
    pub reply_queue: String,
    pub timeout: Duration,
    /// ours: RPC servers to run inside this process (for `fake://`, whose bus is in memory).
    pub in_process_servers: Vec<String>,
    /// raw lapin: oslo's AMQP properties.
    pub oslo_props: bool,
}

/// A payload in every implementation's shape.
#[cfg_attr(not(feature = "ours"), allow(dead_code))]
struct Payload {
    /// `{"value": "xxx…"}` (ours).
    args: Value,
    /// The oslo-like JSON body the raw baselines send.
    body: String,
    body_bytes: Bytes,
    len: usize,
}

impl Payload {
    fn new(len: usize) -> Self {
        let value = "x".repeat(len);
        let body = format!("{{\"method\": \"echo\", \"args\": {{\"value\": \"{value}\"}}}}");
        Payload {
            args: json!({ "value": value }),
            body_bytes: Bytes::from(body.clone().into_bytes()),
            body,
            len,
        }
    }
}

#[derive(Clone)]
enum Client {
    #[cfg(feature = "ours")]
    Ours(Arc<crate::ours::OursClient>),
    Lapin(RawClient),
    Amqp1(Amqp1Client),
    Zmq(ZmqClient),
}

impl Client {
    async fn echo(&self, p: &Payload) -> Res<()> {
        match self {
            #[cfg(feature = "ours")]
            Client::Ours(c) => c.echo(&p.args).await,
            Client::Lapin(c) => c.echo(p.body.as_bytes()).await,
            Client::Amqp1(c) => c.echo(&p.body).await,
            Client::Zmq(c) => c.echo(&p.body_bytes).await,
        }
    }
    async fn cast(&self, fanout: bool, p: &Payload) -> Res<()> {
        match (self, fanout) {
            #[cfg(feature = "ours")]
            (Client::Ours(c), f) => c.cast(f, &p.args).await,
            (Client::Lapin(c), false) => c.cast_incr(p.body.as_bytes()).await,
            (Client::Lapin(c), true) => c.fanout_incr(p.body.as_bytes()).await,
            (Client::Amqp1(c), false) => c.cast(&p.body).await,
            (Client::Amqp1(c), true) => c.fanout(&p.body).await,
            (Client::Zmq(c), false) => c.cast(&p.body_bytes).await,
            (Client::Zmq(c), true) => c.fanout(&p.body_bytes).await,
        }
    }
    async fn counter(&self, server: &str) -> Res<u64> {
        match self {
            #[cfg(feature = "ours")]
            Client::Ours(c) => c.counter(server).await,
            Client::Lapin(c) => c.counter(server).await,
            Client::Amqp1(c) => c.counter(server).await,
            Client::Zmq(c) => c.counter(server).await,
        }
    }
}

async fn seq(c: &Client, p: &Payload, n: usize, warmup: usize) -> Res<Measurement> {
    for _ in 0..warmup {
        c.echo(p).await?;
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.echo(p).await?;
        lat.push(t.elapsed().as_secs_f64());
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Measurement {
        per_s: Some(n as f64 / secs),
        ops: Some((n + warmup) as u64),
        ..Default::default()
    }
    .with_latencies(&mut lat))
}

async fn inflight(c: &Client, p: Arc<Payload>, conc: usize, warmup: Duration, dur: Duration, call_timeout: Duration) -> Res<Measurement> {
    let t0 = Instant::now() + warmup;
    let t1 = t0 + dur;
    let mut tasks = JoinSet::new();
    for _ in 0..conc {
        let (c, p) = (c.clone(), p.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let (mut done, mut errors, mut last_error) = (0u64, 0u64, None);
            while Instant::now() < t1 {
                let t = Instant::now();
                match c.echo(&p).await {
                    Ok(()) => {
                        done += 1;
                        let end = Instant::now();
                        if end >= t0 && end < t1 {
                            lat.push((end - t).as_secs_f64());
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        last_error = Some(e);
                        if errors >= 20 {
                            break;
                        }
                    }
                }
            }
            (lat, done, errors, last_error)
        });
    }
    let (mut all, mut ops, mut errors, mut last_error) = (Vec::new(), 0, 0, None);
    let bound = warmup + dur + call_timeout + Duration::from_secs(10);
    let collected = tokio::time::timeout(bound, async {
        while let Some(joined) = tasks.join_next().await {
            let (lat, done, e, last) = joined.map_err(err("in-flight task"))?;
            all.extend(lat);
            ops += done;
            errors += e;
            if last.is_some() {
                last_error = last;
            }
        }
        Ok::<_, String>(())
    })
    .await;
    match collected {
        Err(_) => return Err(format!("in-flight tasks did not finish within {bound:?}")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    if all.is_empty() {
        return Err(match last_error {
            Some(e) => format!("no call completed in the timed window; {errors} errors, last: {e}"),
            None => format!("no call completed in the timed window ({ops} before or after it): every call took longer than the window"),
        });
    }
    let mut note = format!("{conc} in flight");
    if errors > 0 {
        note.push_str(&format!("; {errors} errors, last: {}", last_error.unwrap_or_default()));
    }
    Ok(Measurement {
        per_s: Some(all.len() as f64 / dur.as_secs_f64()),
        ops: Some(ops),
        note,
        ..Default::default()
    }
    .with_latencies(&mut all))
}

async fn casts(c: &Client, p: Arc<Payload>, count: u64, window: usize, fanout: bool, poll: Duration, bound: Duration) -> Res<Measurement> {
    // Casts to a topic are shared by its servers (ours, Python), so a cast counts once in the
    // servers' sum; a fanout cast counts on every server.
    let servers = ["a", "b"];
    let mut before = Vec::new();
    for s in servers {
        before.push(c.counter(s).await?);
    }
    let tickets = Arc::new(AtomicU64::new(count));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..window {
        let (c, p, tickets) = (c.clone(), p.clone(), tickets.clone());
        tasks.spawn(async move {
            while tickets
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                c.cast(fanout, &p).await?;
            }
            Ok::<_, String>(())
        });
    }
    let sending = tokio::time::timeout(bound, async {
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(err("cast task"))??;
        }
        Ok::<_, String>(())
    })
    .await;
    match sending {
        Err(_) => return Err(format!("casts not all sent within {bound:?}")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let sent = start.elapsed().as_secs_f64();
    let mut processed = vec![0u64; servers.len()];
    loop {
        for (i, s) in servers.iter().enumerate() {
            processed[i] = c.counter(s).await?.saturating_sub(before[i]);
        }
        let done = if fanout {
            processed.iter().all(|p| *p >= count)
        } else {
            processed.iter().sum::<u64>() >= count
        };
        if done {
            break;
        }
        if start.elapsed() > bound {
            return Err(format!("servers processed only {processed:?} of {count} within {bound:?}"));
        }
        tokio::time::sleep(poll).await;
    }
    let total = start.elapsed().as_secs_f64();
    Ok(Measurement {
        per_s: Some(count as f64 / total),
        send_per_s: Some(count as f64 / sent),
        ops: Some(count),
        note: format!("{count} casts, {window} concurrent; processed {processed:?}"),
        ..Default::default()
    })
}

async fn measure(c: &Client, opts: &WorkerOpts, cmd: &Cmd) -> Res<Measurement> {
    let p = Arc::new(Payload::new(cmd.payload));
    let bound = Duration::from_secs_f64(cmd.bound_s.max(1.0));
    let poll = Duration::from_secs_f64(cmd.poll_ms.max(0.1) / 1e3);
    let c = match (c, cmd.oslo_protocol) {
        (Client::Lapin(raw), true) => Client::Lapin(raw.with_oslo_protocol()),
        _ => c.clone(),
    };
    match cmd.scenario.as_str() {
        "seq" => seq(&c, &p, cmd.n.max(1), cmd.warmup).await,
        "inflight" => {
            inflight(
                &c,
                p,
                cmd.inflight.max(1),
                Duration::from_secs_f64(cmd.warmup_s),
                Duration::from_secs_f64(cmd.duration_s),
                Duration::from_secs_f64(cmd.timeout_s),
            )
            .await
        }
        "cast" => casts(&c, p, cmd.count, cmd.window.max(1), false, poll, bound).await,
        "fanout" => casts(&c, p, cmd.count, cmd.window.max(1), true, poll, bound).await,
        "notify" => {
            #[cfg(feature = "ours")]
            if let Client::Ours(_) = c {
                return crate::ours::notify_bench(&opts.url, &cmd.notify_topic, cmd.count, cmd.window.max(1), p.len, bound).await;
            }
            let _ = opts;
            Err("notifications are measured for ours and Python only".into())
        }
        other => Err(format!("unknown scenario {other}")),
    }
}

/// Run the worker until stdin closes.
pub async fn run(opts: WorkerOpts) -> Res<()> {
    let mut closers: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>> = Vec::new();
    #[cfg(feature = "ours")]
    let mut in_process = None;
    let client = match opts.kind.as_str() {
        #[cfg(feature = "ours")]
        "ours" => {
            if !opts.in_process_servers.is_empty() {
                let transport = oslo_messaging::get_transport(&opts.url).map_err(|e| format!("get_transport({}): {e}", opts.url))?;
                let mut servers = Vec::new();
                for name in &opts.in_process_servers {
                    servers.push(crate::ours::start_server(&transport, &opts.topic, name).await?);
                }
                in_process = Some((servers, transport));
            }
            let c = Arc::new(crate::ours::OursClient::new(&opts.url, &opts.topic, opts.timeout)?);
            let closing = c.clone();
            closers.push(Box::pin(async move { closing.close().await }));
            Client::Ours(c)
        }
        "raw-lapin" => {
            let c = RawClient::connect(
                &opts.url,
                opts.servers.get("a").ok_or("raw lapin needs server a")?,
                opts.servers.clone(),
                &opts.fanout,
                &opts.topic_exchange,
                opts.timeout,
                opts.oslo_props,
            )
            .await?;
            let closing = c.clone();
            closers.push(Box::pin(async move {
                closing.close().await;
                None
            }));
            Client::Lapin(c)
        }
        "raw-amqp1" => {
            let c = Amqp1Client::connect(&opts.url, &opts.servers, &opts.fanout, &opts.reply_queue, opts.timeout).await?;
            let closing = c.clone();
            closers.push(Box::pin(async move {
                closing.close().await;
                None
            }));
            Client::Amqp1(c)
        }
        "raw-zmq" => Client::Zmq(ZmqClient::connect(&opts.servers, opts.timeout).await?),
        other => return Err(format!("unknown client kind {other}")),
    };
    println!("READY");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::Builder::new()
        .name("stdin-commands".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .map_err(err("spawn stdin reader"))?;
    while let Some(line) = rx.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        let measurement = match serde_json::from_str::<Cmd>(&line) {
            Ok(cmd) => measure(&client, &opts, &cmd).await.unwrap_or_else(Measurement::failed),
            Err(e) => Measurement::failed(format!("bad command {line:?}: {e}")),
        };
        let reply = Reply {
            measurement,
            vmhwm_kb: vmhwm_kb(std::process::id()),
        };
        println!("{}", serde_json::to_string(&reply).map_err(err("encode reply"))?);
    }
    let mut reply_queues = Vec::new();
    for closer in closers {
        if let Some(q) = closer.await {
            reply_queues.push(q);
        }
    }
    #[cfg(feature = "ours")]
    if let Some((servers, transport)) = in_process {
        crate::ours::stop_servers(&servers, &transport).await;
    }
    println!("{}", json!({ "closed": true, "reply_queues": reply_queues }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies_round_trip_as_json_lines() {
        let cmd = Cmd {
            scenario: "inflight".into(),
            payload: 65536,
            inflight: 16,
            duration_s: 2.0,
            ..Default::default()
        };
        let line = serde_json::to_string(&cmd).unwrap();
        assert!(!line.contains('\n'));
        let back: Cmd = serde_json::from_str(&line).unwrap();
        assert_eq!((back.scenario.as_str(), back.payload, back.inflight), ("inflight", 65536, 16));
        let reply = Reply {
            measurement: Measurement::failed("boom".into()),
            vmhwm_kb: Some(1024),
        };
        let back: Reply = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        assert_eq!(back.measurement.error.as_deref(), Some("boom"));
        assert_eq!(back.vmhwm_kb, Some(1024));
    }

    #[test]
    fn raw_payload_is_oslo_shaped_json_of_the_requested_length() {
        let p = Payload::new(100);
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["args"]["value"].as_str().map(str::len), Some(100));
        assert_eq!(p.args["value"].as_str().map(str::len), Some(100));
        assert_eq!(p.body_bytes.len(), p.body.len());
    }
}
