//! `oslo-bench run`: the side-by-side comparison.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::common::{
    cpu_snap, cpu_use, err, fmt_ms, fmt_rate, log_tail, median, pids_by_comm, run_bounded, vmhwm_kb, Measurement, Res, ServerProc,
};
#[cfg(feature = "ours")]
use crate::ours::OursClient;
use crate::raw::{self, RawClient};

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct Opts {
    pub url: String,
    pub amqp_url: String,
    pub reps: usize,
    pub n: usize,
    pub warmup: usize,
    pub inflight: usize,
    pub inflight_warmup: f64,
    pub duration: f64,
    pub casts: u64,
    pub fanout_casts: u64,
    pub py_casts: u64,
    pub py_fanout_casts: u64,
    pub notifications: u64,
    pub py_notifications: u64,
    pub cast_window: usize,
    pub wide_window: usize,
    pub py_threads: usize,
    pub payload: usize,
    pub poll_ms: f64,
    pub timeout: f64,
    pub quiet_wait: f64,
    pub quiet_pct: f64,
    pub no_python: bool,
    pub no_ours: bool,
    pub no_refs: bool,
    pub raw_oslo_props: bool,
    /// Scenarios to run, by letter (`abcde`).
    pub only: String,
    pub python: Option<PathBuf>,
    pub out: PathBuf,
    pub command_line: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            url: "rabbit://guest:guest@127.0.0.1:5672/".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            reps: 3,
            n: 2000,
            warmup: 200,
            inflight: 64,
            inflight_warmup: 1.0,
            duration: 5.0,
            casts: 20_000,
            fanout_casts: 10_000,
            py_casts: 3000,
            py_fanout_casts: 2000,
            notifications: 10_000,
            py_notifications: 2000,
            cast_window: 64,
            wide_window: 1000,
            py_threads: 16,
            payload: 100,
            poll_ms: 2.0,
            timeout: 10.0,
            quiet_wait: 0.0,
            quiet_pct: 10.0,
            no_python: false,
            no_ours: false,
            no_refs: false,
            raw_oslo_props: false,
            only: "abcde".into(),
            python: None,
            out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest.md")),
            command_line: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Scenario {
    Seq,
    Inflight,
    Cast,
    Fanout,
    Notify,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Seq => "a) sequential call",
            Scenario::Inflight => "b) calls in flight",
            Scenario::Cast => "c) casts",
            Scenario::Fanout => "d) fanout casts",
            Scenario::Notify => "e) notifications",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Impl {
    Ours,
    Raw,
    /// Raw lapin with every publish confirmed (requests and replies), as oslo publishes.
    RawConfirm,
    /// Raw lapin casts with `wide_window` confirms outstanding (the floor's shape).
    RawWide,
    Python,
}

impl Impl {
    fn label(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Raw => "raw lapin",
            Impl::RawConfirm => "raw lapin, every publish confirmed",
            Impl::RawWide => "raw lapin, wide confirm window",
            Impl::Python => "python",
        }
    }
}

/// A Rust-side client (ours or raw lapin): the scenarios below drive both the same way.
#[derive(Clone)]
enum Client {
    #[cfg(feature = "ours")]
    Ours(Arc<OursClient>),
    Raw(RawClient),
}

impl Client {
    async fn echo(&self) -> Res<()> {
        match self {
            #[cfg(feature = "ours")]
            Client::Ours(c) => c.echo().await,
            Client::Raw(c) => c.echo().await,
        }
    }
    async fn cast(&self, fanout: bool) -> Res<()> {
        match (self, fanout) {
            #[cfg(feature = "ours")]
            (Client::Ours(c), false) => c.cast_incr().await,
            #[cfg(feature = "ours")]
            (Client::Ours(c), true) => c.fanout_incr().await,
            (Client::Raw(c), false) => c.cast_incr().await,
            (Client::Raw(c), true) => c.fanout_incr().await,
        }
    }
    async fn counter(&self, server: &str) -> Res<u64> {
        match self {
            #[cfg(feature = "ours")]
            Client::Ours(c) => c.counter(server).await,
            Client::Raw(c) => c.counter(server).await,
        }
    }
}

async fn rust_seq(c: &Client, n: usize, warmup: usize) -> Res<Measurement> {
    for _ in 0..warmup {
        c.echo().await?;
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.echo().await?;
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

async fn rust_inflight(c: &Client, conc: usize, warmup: Duration, dur: Duration, call_timeout: Duration) -> Res<Measurement> {
    let t0 = Instant::now() + warmup;
    let t1 = t0 + dur;
    let mut tasks = JoinSet::new();
    for _ in 0..conc {
        let c = c.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut done = 0u64;
            let mut errors = 0u64;
            let mut last_error = None;
            while Instant::now() < t1 {
                let t = Instant::now();
                match c.echo().await {
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
    let mut all = Vec::new();
    let mut ops = 0;
    let mut errors = 0;
    let mut last_error = None;
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
        return Err(format!("no call completed; last error: {last_error:?}"));
    }
    let mut note = format!("{conc} in flight");
    if errors > 0 {
        let _ = write!(note, "; {errors} errors, last: {}", last_error.unwrap_or_default());
    }
    Ok(Measurement {
        per_s: Some(all.len() as f64 / dur.as_secs_f64()),
        ops: Some(ops),
        note,
        ..Default::default()
    }
    .with_latencies(&mut all))
}

async fn rust_casts(
    c: &Client,
    count: u64,
    window: usize,
    fanout: bool,
    servers: &[&str],
    poll: Duration,
    bound: Duration,
) -> Res<Measurement> {
    let mut before = Vec::new();
    for s in servers {
        before.push(c.counter(s).await?);
    }
    let tickets = Arc::new(AtomicU64::new(count));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..window {
        let c = c.clone();
        let tickets = tickets.clone();
        tasks.spawn(async move {
            while tickets
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                c.cast(fanout).await?;
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
        let mut done = true;
        for (i, s) in servers.iter().enumerate() {
            processed[i] = c.counter(s).await?.saturating_sub(before[i]);
            if processed[i] < count {
                done = false;
            }
        }
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

struct Names {
    ours_topic: String,
    py_topic: String,
    raw_queue_a: String,
    raw_queue_b: String,
    raw_fanout: String,
    ours_notify_topic: String,
    py_notify_topic: String,
}

struct Runner {
    opts: Opts,
    run_id: String,
    names: Names,
    logdir: PathBuf,
    python: Option<PathBuf>,
    script: PathBuf,
    servers: Vec<ServerProc>,
    broker_pids: Vec<u32>,
    results: BTreeMap<(Scenario, Impl), Vec<Measurement>>,
    py_reply_queues: Vec<String>,
    /// Other queues to delete at the end (our client's reply queue).
    extra_queues: Vec<String>,
    py_client_peak_kb: Option<u64>,
    py_version: Option<String>,
    peak_rss: BTreeMap<String, Option<u64>>,
    notes: Vec<String>,
    ours_enabled: bool,
}

/// Where the interop virtualenv's python is expected.
fn default_python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../interop/.venv/bin/python"))
}

/// `oslo-bench run`.
pub async fn run(opts: Opts) -> Res<()> {
    let started = Instant::now();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let run_id = format!("obench-{}-{:06x}", std::process::id(), nanos & 0xff_ffff);
    let logdir = std::env::temp_dir().join(&run_id);
    std::fs::create_dir_all(&logdir).map_err(err("create log dir"))?;
    let python = if opts.no_python {
        None
    } else {
        let py = opts.python.clone().unwrap_or_else(default_python);
        if !py.exists() {
            return Err(format!(
                "the Python side needs the interop virtualenv, but {} does not exist.\n\
                 Create it with `bash interop/setup-venv.sh` (from the workspace root), pass --python PATH, \
                 or skip Python with --no-python.",
                py.display()
            ));
        }
        Some(py)
    };
    let ours_enabled = cfg!(feature = "ours") && !opts.no_ours;
    let names = Names {
        ours_topic: format!("{run_id}-ours"),
        py_topic: format!("{run_id}-py"),
        raw_queue_a: format!("{run_id}-raw.a"),
        raw_queue_b: format!("{run_id}-raw.b"),
        raw_fanout: format!("{run_id}-raw_fanout"),
        ours_notify_topic: format!("{run_id}-ours-notify"),
        py_notify_topic: format!("{run_id}-py-notify"),
    };
    let mut runner = Runner {
        opts,
        run_id,
        names,
        logdir,
        python,
        script: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/py_bench.py")),
        servers: Vec::new(),
        broker_pids: pids_by_comm("beam.smp"),
        results: BTreeMap::new(),
        py_reply_queues: Vec::new(),
        extra_queues: Vec::new(),
        py_client_peak_kb: None,
        py_version: None,
        peak_rss: BTreeMap::new(),
        notes: Vec::new(),
        ours_enabled,
    };
    eprintln!(
        "oslo-bench: run {} (logs in {}); ours={} python={}",
        runner.run_id,
        runner.logdir.display(),
        runner.ours_enabled,
        runner.python.is_some()
    );
    runner.exe()?;
    let outcome = runner.run_all().await;
    // Always: stop servers, clean the broker, then report what we have.
    runner.stop_servers();
    runner.cleanup_broker().await;
    let _ = std::fs::remove_file(runner.logdir.join("oslo-bench"));
    if let Err(e) = outcome {
        runner.notes.push(format!("run aborted: {e}"));
        println!("{}", runner.report(started.elapsed()));
        return Err(format!(
            "{e}\n(partial results above; not written to {})",
            runner.opts.out.display()
        ));
    }
    let report = runner.report(started.elapsed());
    println!("{report}");
    if let Some(dir) = runner.opts.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&runner.opts.out, &report).map_err(err("write the report"))?;
    // Logs are only kept when something went wrong.
    if runner.notes.iter().all(|n| !n.contains("killed") && !n.contains("failure")) {
        let _ = std::fs::remove_dir_all(&runner.logdir);
    }
    eprintln!("oslo-bench: wrote {}", runner.opts.out.display());
    Ok(())
}

impl Runner {
    /// The binary the servers run: a private copy made at start, so that a rebuild of
    /// `target/release/oslo-bench` during the run (other engineers build too) cannot break it.
    fn exe(&self) -> Res<PathBuf> {
        let copy = self.logdir.join("oslo-bench");
        if !copy.exists() {
            let current = std::env::current_exe().map_err(err("current_exe"))?;
            std::fs::copy(&current, &copy).map_err(|e| format!("copy {} to {}: {e}", current.display(), copy.display()))?;
        }
        Ok(copy)
    }

    fn start_server(&mut self, label: &str, cmd: Command, ready: Duration) -> Res<()> {
        eprintln!("oslo-bench: starting {label}");
        let log = self.logdir.join(format!("{label}.log"));
        let server = ServerProc::start(label, cmd, log, ready)?;
        self.servers.push(server);
        Ok(())
    }

    fn start_servers(&mut self, name: &str) -> Res<()> {
        let exe = self.exe()?;
        let raw_queue = if name == "a" {
            &self.names.raw_queue_a
        } else {
            &self.names.raw_queue_b
        };
        let mut cmd = Command::new(&exe);
        cmd.args([
            "serve-raw",
            raw_queue,
            "--fanout-exchange",
            &self.names.raw_fanout,
            "--amqp-url",
            &self.opts.amqp_url,
        ]);
        if self.opts.raw_oslo_props {
            cmd.arg("--oslo-props");
        }
        self.start_server(&format!("raw-{name}"), cmd, Duration::from_secs(30))?;
        if self.ours_enabled {
            let mut cmd = Command::new(&exe);
            cmd.args(["serve-ours", &self.names.ours_topic, name, "--url", &self.opts.url]);
            self.start_server(&format!("ours-{name}"), cmd, Duration::from_secs(30))?;
        }
        if let Some(py) = self.python.clone() {
            let mut cmd = Command::new(py);
            cmd.arg(&self.script)
                .args(["serve", &self.names.py_topic, name, "--url", &self.opts.url]);
            self.start_server(&format!("python-{name}"), cmd, Duration::from_secs(90))?;
        }
        Ok(())
    }

    fn check_servers(&mut self) -> Res<()> {
        for s in &mut self.servers {
            if !s.alive() {
                return Err(format!(
                    "server {} died; its log ({}):\n{}",
                    s.label,
                    s.log.display(),
                    log_tail(&s.log, 20)
                ));
            }
        }
        Ok(())
    }

    /// (pids of `kind`'s servers, pids of the other servers).
    fn server_pids(&self, kind: Impl) -> (Vec<u32>, Vec<u32>) {
        let prefix = match kind {
            Impl::Ours => "ours-",
            Impl::Raw | Impl::RawConfirm | Impl::RawWide => "raw-",
            Impl::Python => "python-",
        };
        let (mine, others): (Vec<&ServerProc>, Vec<&ServerProc>) = self.servers.iter().partition(|s| s.label.starts_with(prefix));
        (mine.iter().map(|s| s.pid()).collect(), others.iter().map(|s| s.pid()).collect())
    }

    /// With `--quiet-wait S`: wait (at most S seconds) for a 0.5 s window in which processes
    /// outside the benchmark use less than `--quiet-pct` of the machine.
    async fn wait_quiet(&self) {
        if self.opts.quiet_wait <= 0.0 {
            return;
        }
        let (_, all) = self.server_pids(Impl::Ours);
        let deadline = Instant::now() + Duration::from_secs_f64(self.opts.quiet_wait);
        loop {
            let a = cpu_snap(&[], &all, &self.broker_pids);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let foreign = cpu_use(a, cpu_snap(&[], &all, &self.broker_pids)).map(|c| c.foreign_pct);
            if foreign.is_none_or(|f| f < self.opts.quiet_pct) || Instant::now() >= deadline {
                return;
            }
        }
    }

    fn stop_servers(&mut self) {
        for s in &self.servers {
            self.peak_rss.insert(s.label.clone(), vmhwm_kb(s.pid()));
        }
        for s in &mut self.servers {
            if !s.stop(Duration::from_secs(20)) {
                self.notes
                    .push(format!("server {} had to be killed (did not stop within 20 s)", s.label));
            }
        }
        self.servers.clear();
    }

    fn kinds(&self, scenario: Scenario) -> Vec<Impl> {
        let mut kinds = Vec::new();
        if self.ours_enabled {
            kinds.push(Impl::Ours);
        }
        if scenario == Scenario::Notify {
            // No raw lapin here: a notification is a cast-shaped publish, measured in c).
            if self.python.is_some() {
                kinds.push(Impl::Python);
            }
            return kinds;
        }
        kinds.push(Impl::Raw);
        if !self.opts.no_refs {
            match scenario {
                Scenario::Seq | Scenario::Inflight => kinds.push(Impl::RawConfirm),
                Scenario::Cast => kinds.push(Impl::RawWide),
                Scenario::Fanout | Scenario::Notify => {}
            }
        }
        if self.python.is_some() {
            kinds.push(Impl::Python);
        }
        kinds
    }

    async fn run_all(&mut self) -> Res<()> {
        let timeout = Duration::from_secs_f64(self.opts.timeout);
        self.start_servers("a")?;
        let server_queues: HashMap<String, String> = [
            ("a".to_string(), self.names.raw_queue_a.clone()),
            ("b".to_string(), self.names.raw_queue_b.clone()),
        ]
        .into();
        let raw = RawClient::connect(
            &self.opts.amqp_url,
            &self.names.raw_queue_a,
            server_queues,
            &self.names.raw_fanout,
            self.opts.payload,
            timeout,
            self.opts.raw_oslo_props,
        )
        .await?;
        #[cfg(feature = "ours")]
        let ours = if self.ours_enabled {
            Some(OursClient::new(&self.opts.url, &self.names.ours_topic, self.opts.payload, timeout)?)
        } else {
            None
        };
        let result = self
            .scenarios(&raw, {
                #[cfg(feature = "ours")]
                {
                    ours.clone().map(|c| Client::Ours(Arc::new(c)))
                }
                #[cfg(not(feature = "ours"))]
                {
                    None
                }
            })
            .await;
        #[cfg(feature = "ours")]
        if let Some(ours) = &ours {
            if let Some(reply_queue) = ours.close().await {
                self.extra_queues.push(reply_queue);
            }
        }
        raw.close().await;
        result
    }

    async fn scenarios(&mut self, raw: &RawClient, ours: Option<Client>) -> Res<()> {
        let raw_client = Client::Raw(raw.clone());
        let raw_confirm = Client::Raw(raw.with_confirm_calls());
        let clients = |kind: Impl| -> Option<Client> {
            match kind {
                Impl::Ours => ours.clone(),
                Impl::Raw | Impl::RawWide => Some(raw_client.clone()),
                Impl::RawConfirm => Some(raw_confirm.clone()),
                Impl::Python => None,
            }
        };
        for scenario in [
            Scenario::Seq,
            Scenario::Inflight,
            Scenario::Cast,
            Scenario::Fanout,
            Scenario::Notify,
        ] {
            let letter = scenario.label().chars().next().unwrap_or('?');
            if !self.opts.only.contains(letter) {
                continue;
            }
            if scenario == Scenario::Fanout {
                self.start_servers("b")?;
            }
            let kinds = self.kinds(scenario);
            if kinds.is_empty() {
                continue;
            }
            for rep in 0..self.opts.reps {
                let mut order = kinds.clone();
                let shift = rep % order.len();
                order.rotate_left(shift);
                for kind in order {
                    self.check_servers()?;
                    self.wait_quiet().await;
                    let (mine, others) = self.server_pids(kind);
                    let before = cpu_snap(&mine, &others, &self.broker_pids);
                    let mut m = match clients(kind) {
                        Some(client) => self.rust_measure(scenario, kind, &client).await.unwrap_or_else(Measurement::failed),
                        None => self.python_measure(scenario).await.unwrap_or_else(Measurement::failed),
                    };
                    m.cpu = cpu_use(before, cpu_snap(&mine, &others, &self.broker_pids));
                    if let (Some(cpu), Some(client)) = (m.cpu.as_mut(), m.client_cpu_s) {
                        cpu.client_s = client;
                    }
                    m.foreign_pct = m.cpu.map(|c| c.foreign_pct);
                    eprintln!(
                        "oslo-bench: {} | {} | rep {} -> {}/s, median {} ms, p99 {} ms, foreign CPU {}{}",
                        scenario.label(),
                        kind.label(),
                        rep + 1,
                        fmt_rate(m.per_s),
                        fmt_ms(m.median_ms),
                        fmt_ms(m.p99_ms),
                        m.foreign_pct.map(|p| format!("{p:.0} %")).unwrap_or_else(|| "n/a".into()),
                        m.error.as_deref().map(|e| format!(" ERROR: {e}")).unwrap_or_default()
                    );
                    self.results.entry((scenario, kind)).or_default().push(m);
                }
            }
        }
        Ok(())
    }

    async fn rust_measure(&self, scenario: Scenario, kind: Impl, client: &Client) -> Res<Measurement> {
        let o = &self.opts;
        let poll = Duration::from_secs_f64(o.poll_ms / 1e3);
        let bound = Duration::from_secs(120);
        match scenario {
            Scenario::Seq => rust_seq(client, o.n, o.warmup).await,
            Scenario::Inflight => {
                rust_inflight(
                    client,
                    o.inflight,
                    Duration::from_secs_f64(o.inflight_warmup),
                    Duration::from_secs_f64(o.duration),
                    Duration::from_secs_f64(o.timeout),
                )
                .await
            }
            Scenario::Cast => {
                let window = if kind == Impl::RawWide { o.wide_window } else { o.cast_window };
                rust_casts(client, o.casts, window, false, &["a"], poll, bound).await
            }
            Scenario::Fanout => rust_casts(client, o.fanout_casts, o.cast_window, true, &["a", "b"], poll, bound).await,
            Scenario::Notify => {
                #[cfg(feature = "ours")]
                {
                    crate::ours::notify_bench(
                        &o.url,
                        &self.names.ours_notify_topic,
                        o.notifications,
                        o.cast_window,
                        o.payload,
                        bound,
                    )
                    .await
                }
                #[cfg(not(feature = "ours"))]
                {
                    Err("built without the `ours` feature".into())
                }
            }
        }
    }

    async fn python_measure(&mut self, scenario: Scenario) -> Res<Measurement> {
        let o = self.opts.clone();
        let py = self.python.clone().ok_or("no python")?;
        let mut args: Vec<String> = vec![
            self.script.display().to_string(),
            "client".into(),
            match scenario {
                Scenario::Seq => "seq",
                Scenario::Inflight => "inflight",
                Scenario::Cast => "cast",
                Scenario::Fanout => "fanout",
                Scenario::Notify => "notify",
            }
            .into(),
            "--topic".into(),
            if scenario == Scenario::Notify {
                self.names.py_notify_topic.clone()
            } else {
                self.names.py_topic.clone()
            },
            "--url".into(),
            o.url.clone(),
            "--payload".into(),
            o.payload.to_string(),
            "--timeout".into(),
            o.timeout.to_string(),
            "--poll-ms".into(),
            o.poll_ms.to_string(),
        ];
        let bound = match scenario {
            Scenario::Seq => {
                args.extend(["--n".into(), o.n.to_string(), "--warmup".into(), o.warmup.to_string()]);
                60.0 + (o.n + o.warmup) as f64 * 0.05
            }
            Scenario::Inflight => {
                args.extend([
                    "--threads".into(),
                    o.py_threads.to_string(),
                    "--duration".into(),
                    o.duration.to_string(),
                    "--warmup-secs".into(),
                    o.inflight_warmup.to_string(),
                ]);
                60.0 + o.duration + o.inflight_warmup + o.timeout
            }
            Scenario::Cast => {
                args.extend(["--servers".into(), "a".into(), "--count".into(), o.py_casts.to_string()]);
                60.0 + o.py_casts as f64 * 0.05
            }
            Scenario::Fanout => {
                args.extend(["--servers".into(), "a,b".into(), "--count".into(), o.py_fanout_casts.to_string()]);
                60.0 + o.py_fanout_casts as f64 * 0.05
            }
            Scenario::Notify => {
                args.extend(["--count".into(), o.py_notifications.to_string()]);
                60.0 + o.py_notifications as f64 * 0.05
            }
        };
        let log = self.logdir.join("python-client.log");
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(py);
            cmd.args(&args);
            run_bounded(cmd, Duration::from_secs_f64(bound), Some(&log))
        })
        .await
        .map_err(err("python client task"))?
        .map_err(|e| format!("{e}; see {}", self.logdir.join("python-client.log").display()))?;
        let line = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad python client output {line:?}: {e}"))?;
        if let Some(q) = v["reply_q"].as_str() {
            self.py_reply_queues.push(q.to_string());
        }
        if let Some(kb) = v["client_vmhwm_kb"].as_u64() {
            self.py_client_peak_kb = Some(self.py_client_peak_kb.unwrap_or(0).max(kb));
        }
        if let Some(ver) = v["oslo_messaging_version"].as_str() {
            self.py_version = Some(ver.to_string());
        }
        let mut note = String::new();
        if let Some(t) = v["threads"].as_u64() {
            let _ = write!(note, "{t} threads");
        }
        if let Some(e) = v["errors"].as_u64().filter(|e| *e > 0) {
            let _ = write!(note, "; {e} errors");
        }
        if let Some(c) = v["notifications"].as_u64() {
            let _ = write!(
                note,
                "{c} notifications, sequential; listener in the client process counted {}",
                v["received"]
            );
        } else if let Some(c) = v["count"].as_u64() {
            let _ = write!(note, "{c} casts, sequential; processed {}", v["processed"]);
        }
        Ok(Measurement {
            per_s: v["per_s"].as_f64(),
            median_ms: v["median_ms"].as_f64(),
            p99_ms: v["p99_ms"].as_f64(),
            send_per_s: v["send_per_s"].as_f64(),
            ops: v["ops_total"].as_u64(),
            client_cpu_s: v["cpu_s"].as_f64(),
            note,
            ..Default::default()
        })
    }

    async fn cleanup_broker(&mut self) {
        let n = &self.names;
        let mut queues = vec![n.raw_queue_a.clone(), n.raw_queue_b.clone()];
        for topic in [&n.ours_topic, &n.py_topic] {
            queues.push(topic.clone());
            queues.push(format!("{topic}.a"));
            queues.push(format!("{topic}.b"));
        }
        for topic in [&n.ours_notify_topic, &n.py_notify_topic] {
            queues.push(format!("{topic}.info"));
        }
        queues.extend(self.py_reply_queues.iter().cloned());
        queues.extend(self.extra_queues.iter().cloned());
        let exchanges = vec![
            n.raw_fanout.clone(),
            format!("{}_fanout", n.ours_topic),
            format!("{}_fanout", n.py_topic),
        ];
        // Queues and exchanges with the run's prefix that we did not create by name: what the
        // servers left behind (e.g. fanout queues).
        let leftovers = self.scan_leftovers(&queues, &exchanges);
        let conn = match raw::connect(&self.opts.amqp_url).await {
            Ok(conn) => conn,
            Err(e) => {
                self.notes.push(format!("cleanup: {e}; queues of run {} may remain", self.run_id));
                return;
            }
        };
        let mut failures = Vec::new();
        let mut channel = None;
        let all_queues = queues.iter().chain(leftovers.as_ref().map(|l| &l.0).into_iter().flatten());
        for q in all_queues {
            if channel.is_none() {
                channel = conn.create_channel().await.ok();
            }
            let Some(ch) = &channel else { break };
            let op = ch.queue_delete(q.as_str().into(), Default::default());
            match tokio::time::timeout(Duration::from_secs(5), op).await {
                Ok(Ok(_)) => {}
                other => {
                    failures.push(format!("queue {q}: {other:?}"));
                    channel = None;
                }
            }
        }
        let all_exchanges = exchanges.iter().chain(leftovers.as_ref().map(|l| &l.1).into_iter().flatten());
        for x in all_exchanges {
            if channel.is_none() {
                channel = conn.create_channel().await.ok();
            }
            let Some(ch) = &channel else { break };
            let op = ch.exchange_delete(x.as_str().into(), Default::default());
            match tokio::time::timeout(Duration::from_secs(5), op).await {
                Ok(Ok(_)) => {}
                other => {
                    failures.push(format!("exchange {x}: {other:?}"));
                    channel = None;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
        if !failures.is_empty() {
            self.notes.push(format!("cleanup failures: {}", failures.join("; ")));
        }
        match leftovers {
            Some((q, x)) if !q.is_empty() || !x.is_empty() => self.notes.push(format!(
                "left behind after the servers stopped (deleted by the runner): queues {q:?}, exchanges {x:?}"
            )),
            Some(_) => {}
            None => self.notes.push(
                "rabbitmqctl not usable: no scan for leftover queues (reply queues of our client, if any, expire by themselves)".into(),
            ),
        }
    }

    /// With `rabbitmqctl`: queues/exchanges carrying the run id that are not in the known lists.
    fn scan_leftovers(&self, queues: &[String], exchanges: &[String]) -> Option<(Vec<String>, Vec<String>)> {
        let list = |what: &str| -> Option<Vec<String>> {
            let mut cmd = Command::new("rabbitmqctl");
            cmd.args(["-q", what, "--no-table-headers", "name"]);
            let out = run_bounded(cmd, Duration::from_secs(30), None).ok()?;
            Some(
                out.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| l.contains(&self.run_id))
                    .collect(),
            )
        };
        let q: Vec<String> = list("list_queues")?.into_iter().filter(|n| !queues.contains(n)).collect();
        let x: Vec<String> = list("list_exchanges")?.into_iter().filter(|n| !exchanges.contains(n)).collect();
        Some((q, x))
    }

    fn summary(&self, scenario: Scenario, kind: Impl) -> Summary {
        let ms = self.results.get(&(scenario, kind)).cloned().unwrap_or_default();
        let ok: Vec<&Measurement> = ms.iter().filter(|m| m.error.is_none()).collect();
        let pick = |f: fn(&Measurement) -> Option<f64>| median(&ok.iter().filter_map(|m| f(m)).collect::<Vec<_>>());
        let per_op = |f: fn(&crate::common::CpuUse) -> f64| {
            median(
                &ok.iter()
                    .filter_map(|m| Some(f(m.cpu.as_ref()?) * 1e6 / m.ops.filter(|n| *n > 0)? as f64))
                    .collect::<Vec<_>>(),
            )
        };
        Summary {
            per_s: pick(|m| m.per_s),
            median_ms: pick(|m| m.median_ms),
            p99_ms: pick(|m| m.p99_ms),
            send_per_s: pick(|m| m.send_per_s),
            cpu_us: [per_op(|c| c.client_s), per_op(|c| c.server_s), per_op(|c| c.broker_s)],
        }
    }

    fn report(&self, elapsed: Duration) -> String {
        let o = &self.opts;
        let mut r = String::new();
        let date = run_bounded(
            {
                let mut c = Command::new("date");
                c.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
                c
            },
            Duration::from_secs(5),
            None,
        )
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown date".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let _ = writeln!(r, "# oslo-bench results ({date})\n");
        let _ = writeln!(
            r,
            "Command: `{}` (run took {:.0} s). Machine: {cores} cores, Linux {}; client, servers and RabbitMQ \
             share the machine, so every figure is whole-system. Each figure is the median of {} repetition(s); \
             implementations are interleaved within each scenario (rotating order per repetition).{}\n",
            o.command_line,
            elapsed.as_secs_f64(),
            kernel.trim(),
            o.reps,
            if o.raw_oslo_props {
                " **Raw lapin here publishes with oslo's AMQP properties and mandatory calls/replies (`--raw-oslo-props`).**"
            } else {
                ""
            }
        );
        let s = |sc, k| self.summary(sc, k);
        let (ours_a, raw_a, py_a) = (
            s(Scenario::Seq, Impl::Ours),
            s(Scenario::Seq, Impl::Raw),
            s(Scenario::Seq, Impl::Python),
        );
        let (ours_b, raw_b, py_b) = (
            s(Scenario::Inflight, Impl::Ours),
            s(Scenario::Inflight, Impl::Raw),
            s(Scenario::Inflight, Impl::Python),
        );
        let (ours_c, raw_c, py_c) = (
            s(Scenario::Cast, Impl::Ours),
            s(Scenario::Cast, Impl::Raw),
            s(Scenario::Cast, Impl::Python),
        );
        let (ours_d, raw_d, py_d) = (
            s(Scenario::Fanout, Impl::Ours),
            s(Scenario::Fanout, Impl::Raw),
            s(Scenario::Fanout, Impl::Python),
        );
        let (ours_e, py_e) = (s(Scenario::Notify, Impl::Ours), s(Scenario::Notify, Impl::Python));
        let _ = writeln!(
            r,
            "| metric | ours | raw lapin | Python oslo.messaging | ours/raw | ours/Python | target | met |"
        );
        let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---|---|");
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let fr = |x: Option<f64>| x.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "n/a".into());
        let fr_lat_py = |x: Option<f64>| {
            x.map(|x| format!("{x:.2}x ({:.1}x faster)", 1.0 / x))
                .unwrap_or_else(|| "n/a".into())
        };
        let verdict = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "**NO**",
            None => "n/a",
        };
        // a) median
        let a_raw = ratio(ours_a.median_ms, raw_a.median_ms);
        let a_py = ratio(ours_a.median_ms, py_a.median_ms);
        let a_met = match (a_raw, a_py) {
            (Some(x), Some(y)) => Some(x <= 1.25 && y <= 0.25),
            (Some(x), None) => Some(x <= 1.25),
            _ => None,
        };
        let _ = writeln!(
            r,
            "| a) sequential `echo` call, median latency (ms) | {} | {} | {} | {} | {} | ≤ 1.25x raw and ≥ 4x faster than Python | {} |",
            fmt_ms(ours_a.median_ms),
            fmt_ms(raw_a.median_ms),
            fmt_ms(py_a.median_ms),
            fr(a_raw),
            fr_lat_py(a_py),
            verdict(a_met)
        );
        let _ = writeln!(
            r,
            "| a) sequential `echo` call, p99 latency (ms) | {} | {} | {} | {} | {} | | |",
            fmt_ms(ours_a.p99_ms),
            fmt_ms(raw_a.p99_ms),
            fmt_ms(py_a.p99_ms),
            fr(ratio(ours_a.p99_ms, raw_a.p99_ms)),
            fr_lat_py(ratio(ours_a.p99_ms, py_a.p99_ms)),
        );
        let _ = writeln!(
            r,
            "| a) sequential calls/s | {} | {} | {} | {} | {} | | |",
            fmt_rate(ours_a.per_s),
            fmt_rate(raw_a.per_s),
            fmt_rate(py_a.per_s),
            fr(ratio(ours_a.per_s, raw_a.per_s)),
            fr(ratio(ours_a.per_s, py_a.per_s)),
        );
        let b_raw = ratio(ours_b.per_s, raw_b.per_s);
        let _ = writeln!(
            r,
            "| b) calls/s, {} in flight (Python: {} threads) | {} | {} | {} | {} | {} | ≥ 0.8x raw | {} |",
            o.inflight,
            o.py_threads,
            fmt_rate(ours_b.per_s),
            fmt_rate(raw_b.per_s),
            fmt_rate(py_b.per_s),
            fr(b_raw),
            fr(ratio(ours_b.per_s, py_b.per_s)),
            verdict(b_raw.map(|x| x >= 0.8))
        );
        let _ = writeln!(
            r,
            "| b) latency under load, median / p99 (ms) | {} / {} | {} / {} | {} / {} | | | | |",
            fmt_ms(ours_b.median_ms),
            fmt_ms(ours_b.p99_ms),
            fmt_ms(raw_b.median_ms),
            fmt_ms(raw_b.p99_ms),
            fmt_ms(py_b.median_ms),
            fmt_ms(py_b.p99_ms),
        );
        let _ = writeln!(
            r,
            "| c) casts/s with publisher confirms, until processed ({} concurrent; Python sequential) | {} | {} | {} | {} | {} | ≥ 40,000/s | {} |",
            o.cast_window,
            fmt_rate(ours_c.per_s),
            fmt_rate(raw_c.per_s),
            fmt_rate(py_c.per_s),
            fr(ratio(ours_c.per_s, raw_c.per_s)),
            fr(ratio(ours_c.per_s, py_c.per_s)),
            verdict(ours_c.per_s.map(|x| x >= 40_000.0))
        );
        let _ = writeln!(
            r,
            "| c) casts/s, send only | {} | {} | {} | {} | {} | | |",
            fmt_rate(ours_c.send_per_s),
            fmt_rate(raw_c.send_per_s),
            fmt_rate(py_c.send_per_s),
            fr(ratio(ours_c.send_per_s, raw_c.send_per_s)),
            fr(ratio(ours_c.send_per_s, py_c.send_per_s)),
        );
        let _ = writeln!(
            r,
            "| d) fanout casts/s to 2 servers, until both processed | {} | {} | {} | {} | {} | | |",
            fmt_rate(ours_d.per_s),
            fmt_rate(raw_d.per_s),
            fmt_rate(py_d.per_s),
            fr(ratio(ours_d.per_s, raw_d.per_s)),
            fr(ratio(ours_d.per_s, py_d.per_s)),
        );
        let _ = writeln!(
            r,
            "| e) notifications/s published and consumed, until the listener counted all ({} concurrent; Python sequential) | {} | n/a | {} | | {} | | |",
            o.cast_window,
            fmt_rate(ours_e.per_s),
            fmt_rate(py_e.per_s),
            fr(ratio(ours_e.per_s, py_e.per_s)),
        );
        let _ = writeln!(
            r,
            "| e) notifications/s, publish only | {} | n/a | {} | | {} | | |",
            fmt_rate(ours_e.send_per_s),
            fmt_rate(py_e.send_per_s),
            fr(ratio(ours_e.send_per_s, py_e.send_per_s)),
        );
        let _ = writeln!(
            r,
            "\nCounts: a) {} warm-up + {} timed calls each, {}-byte string payload; b) {:.0} s warm-up + {:.0} s timed; \
             c) {} casts (Python {}); d) {} fanout casts (Python {}), each delivered to 2 servers; \
             e) {} `info` notifications (Python {}), {}-byte string payload, listener in the client's process \
             (its CPU is counted as the client's).\n",
            o.warmup,
            o.n,
            o.payload,
            o.inflight_warmup,
            o.duration,
            o.casts,
            o.py_casts,
            o.fanout_casts,
            o.py_fanout_casts,
            o.notifications,
            o.py_notifications,
            o.payload
        );
        let _ = writeln!(
            r,
            "CPU per operation in µs, client / server(s) / RabbitMQ = total (CPU time of each process over the \
             measurement, warm-up included, divided by the operations done; Python client: its own process time):\n"
        );
        let _ = writeln!(r, "| scenario | ours | raw lapin | Python |");
        let _ = writeln!(r, "|---|---:|---:|---:|");
        for (label, sc) in [
            ("a) sequential call", Scenario::Seq),
            ("b) calls in flight", Scenario::Inflight),
            ("c) cast", Scenario::Cast),
            ("d) fanout cast (2 deliveries)", Scenario::Fanout),
            ("e) notification (listener in client process)", Scenario::Notify),
        ] {
            let _ = writeln!(
                r,
                "| {label} | {} | {} | {} |",
                s(sc, Impl::Ours).cpu(),
                s(sc, Impl::Raw).cpu(),
                s(sc, Impl::Python).cpu()
            );
        }
        let _ = writeln!(r);
        if !o.no_refs {
            let rc_a = s(Scenario::Seq, Impl::RawConfirm);
            let rc_b = s(Scenario::Inflight, Impl::RawConfirm);
            let rw_c = s(Scenario::Cast, Impl::RawWide);
            let _ = writeln!(r, "Reference points (raw lapin variants; not targets):\n");
            let _ = writeln!(
                r,
                "| reference | value | ours / reference | CPU µs per op, reference (client / server / broker) |"
            );
            let _ = writeln!(r, "|---|---:|---:|---:|");
            let _ = writeln!(
                r,
                "| raw lapin, every publish confirmed (request and reply): a) median / p99 (ms) | {} / {} | {} / {} | {} |",
                fmt_ms(rc_a.median_ms),
                fmt_ms(rc_a.p99_ms),
                fr(ratio(ours_a.median_ms, rc_a.median_ms)),
                fr(ratio(ours_a.p99_ms, rc_a.p99_ms)),
                rc_a.cpu(),
            );
            let _ = writeln!(
                r,
                "| raw lapin, every publish confirmed: b) calls/s, {} in flight | {} | {} | {} |",
                o.inflight,
                fmt_rate(rc_b.per_s),
                fr(ratio(ours_b.per_s, rc_b.per_s)),
                rc_b.cpu(),
            );
            let _ = writeln!(
                r,
                "| raw lapin casts, {} confirms outstanding: c) casts/s | {} | {} | {} |",
                o.wide_window,
                fmt_rate(rw_c.per_s),
                fr(ratio(ours_c.per_s, rw_c.per_s)),
                rw_c.cpu(),
            );
            let _ = writeln!(r);
        }
        let _ = writeln!(r, "Peak RSS (VmHWM) of the server processes at the end of the run:\n");
        let _ = writeln!(r, "| server | ours | raw lapin | Python |");
        let _ = writeln!(r, "|---|---:|---:|---:|");
        let rss = |label: &str| {
            self.peak_rss
                .get(label)
                .copied()
                .flatten()
                .map(|kb| format!("{:.1} MiB", kb as f64 / 1024.0))
                .unwrap_or_else(|| "n/a".into())
        };
        for name in ["a", "b"] {
            let _ = writeln!(
                r,
                "| server {name}{} | {} | {} | {} |",
                if name == "a" { " (a to d)" } else { " (d only)" },
                rss(&format!("ours-{name}")),
                rss(&format!("raw-{name}")),
                rss(&format!("python-{name}"))
            );
        }
        if let Some(kb) = self.py_client_peak_kb {
            let _ = writeln!(r, "\nPython client process peak RSS: {:.1} MiB.", kb as f64 / 1024.0);
        }
        if let Some(v) = &self.py_version {
            let _ = writeln!(r, "Python: oslo.messaging {v} (interop/.venv).");
        }
        let _ = writeln!(
            r,
            "\nEvery measurement (foreign CPU = CPU used by processes outside the benchmark and the broker, % of the machine):\n"
        );
        let _ = writeln!(
            r,
            "| scenario | implementation | rep | per s | median ms | p99 ms | send-only per s | CPU µs/op client / server / broker | foreign CPU | notes |"
        );
        let _ = writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for ((sc, kind), ms) in &self.results {
            for (i, m) in ms.iter().enumerate() {
                let _ = writeln!(
                    r,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    sc.label(),
                    kind.label(),
                    i + 1,
                    fmt_rate(m.per_s),
                    fmt_ms(m.median_ms),
                    fmt_ms(m.p99_ms),
                    fmt_rate(m.send_per_s),
                    match (m.cpu, m.ops.filter(|n| *n > 0)) {
                        (Some(c), Some(n)) => format!(
                            "{:.0} / {:.0} / {:.0}",
                            c.client_s * 1e6 / n as f64,
                            c.server_s * 1e6 / n as f64,
                            c.broker_s * 1e6 / n as f64
                        ),
                        _ => "n/a".into(),
                    },
                    m.foreign_pct.map(|p| format!("{p:.0} %")).unwrap_or_else(|| "n/a".into()),
                    match &m.error {
                        Some(e) => format!("ERROR: {}", e.replace('|', "/").replace('\n', " ")),
                        None => m.note.replace('|', "/"),
                    }
                );
            }
        }
        let busy: Vec<f64> = self.results.values().flatten().filter_map(|m| m.foreign_pct).collect();
        if busy.iter().any(|p| *p > 10.0) {
            let _ = writeln!(
                r,
                "\nWarning: other processes used more than 10 % of the machine during some measurements \
                 (max {:.0} %); absolute figures are disturbed, ratios less so.",
                busy.iter().cloned().fold(0.0, f64::max)
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(r, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(r, "- {n}");
            }
        }
        r
    }
}

struct Summary {
    per_s: Option<f64>,
    median_ms: Option<f64>,
    p99_ms: Option<f64>,
    send_per_s: Option<f64>,
    /// CPU µs per operation: client, server(s), broker.
    cpu_us: [Option<f64>; 3],
}

impl Summary {
    fn cpu(&self) -> String {
        if self.cpu_us.iter().all(Option::is_none) {
            return "n/a".into();
        }
        let f = |x: Option<f64>| x.map(|x| format!("{x:.0}")).unwrap_or_else(|| "?".into());
        let total: f64 = self.cpu_us.iter().flatten().sum();
        format!("{} / {} / {} = {total:.0}", f(self.cpu_us[0]), f(self.cpu_us[1]), f(self.cpu_us[2]))
    }
}
