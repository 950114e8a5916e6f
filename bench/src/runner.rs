//! `oslo-bench run`: every driver, side by side with its raw transport crate (and, on RabbitMQ,
//! Python oslo.messaging), in one run on one machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;

use crate::common::{
    cpu_snap, cpu_use, err, fmt_ms, fmt_rate, log_tail, pids_by_comm, run_bounded, vmhwm_kb, Measurement, Res, ServerProc,
};
use crate::raw;
use crate::report;
use crate::worker::{Cmd, Reply};

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Drivers to run, in order (`rabbit`, `amqp1`, `zmq`, `fake`).
    pub drivers: Vec<Driver>,
    /// Our rabbit driver's URL.
    pub url: String,
    /// Raw lapin's URL.
    pub amqp_url: String,
    /// Our amqp1 driver's URL, also the raw fe2o3-amqp baseline's.
    pub amqp1_url: String,
    /// Our zmq driver's URL.
    pub zmq_url: String,
    /// Our fake driver's URL (the run id is appended to the bus name).
    pub fake_url: String,
    pub reps: usize,
    pub n: usize,
    pub warmup: usize,
    /// Calls in flight for scenario b, one measurement each.
    pub inflight: Vec<usize>,
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
    /// At most this many Python client threads in scenario b (one per call in flight).
    pub py_threads: usize,
    /// Payload sizes (length of the echo string), one set of measurements each.
    pub payloads: Vec<usize>,
    /// Counts (calls, casts, notifications) are divided by this for payloads above 4 KiB.
    pub big_divisor: u64,
    pub poll_ms: f64,
    pub timeout: f64,
    pub quiet_wait: f64,
    pub quiet_pct: f64,
    pub no_python: bool,
    pub no_ours: bool,
    pub no_refs: bool,
    pub raw_oslo_props: bool,
    /// Exit non-zero when a measurement failed or an implementation was skipped (for CI).
    pub strict: bool,
    /// Scenarios to run, by letter (`abcde`).
    pub only: String,
    pub python: Option<PathBuf>,
    pub out: PathBuf,
    pub command_line: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            drivers: vec![Driver::Rabbit, Driver::Amqp1, Driver::Zmq, Driver::Fake],
            url: "rabbit://guest:guest@127.0.0.1:5672/".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            amqp1_url: "amqp://guest:guest@127.0.0.1:5672/".into(),
            zmq_url: "zmq+redis://127.0.0.1:6379".into(),
            fake_url: "fake://obench".into(),
            reps: 2,
            n: 1000,
            warmup: 100,
            inflight: vec![1, 16, 64],
            inflight_warmup: 0.5,
            duration: 2.0,
            casts: 10_000,
            fanout_casts: 5000,
            py_casts: 1000,
            py_fanout_casts: 1000,
            notifications: 5000,
            py_notifications: 1000,
            cast_window: 64,
            wide_window: 1000,
            py_threads: 64,
            payloads: vec![100, 65536],
            big_divisor: 4,
            poll_ms: 2.0,
            timeout: 10.0,
            quiet_wait: 0.0,
            quiet_pct: 10.0,
            no_python: false,
            no_ours: false,
            no_refs: false,
            raw_oslo_props: false,
            strict: false,
            only: "abcde".into(),
            python: None,
            out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest.md")),
            command_line: String::new(),
        }
    }
}

/// A driver of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Driver {
    Rabbit,
    Amqp1,
    Zmq,
    Fake,
}

impl Driver {
    /// Parse a `--drivers` entry.
    pub fn parse(s: &str) -> Res<Driver> {
        match s.trim() {
            "rabbit" => Ok(Driver::Rabbit),
            "amqp1" => Ok(Driver::Amqp1),
            "zmq" => Ok(Driver::Zmq),
            "fake" => Ok(Driver::Fake),
            other => Err(format!("unknown driver {other:?} (rabbit, amqp1, zmq, fake)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Driver::Rabbit => "rabbit",
            Driver::Amqp1 => "amqp1",
            Driver::Zmq => "zmq",
            Driver::Fake => "fake",
        }
    }

    /// The raw transport crate's column title.
    pub fn raw_label(self) -> &'static str {
        match self {
            Driver::Rabbit => "raw lapin",
            Driver::Amqp1 => "raw fe2o3-amqp",
            Driver::Zmq => "raw zeromq",
            Driver::Fake => "raw (none)",
        }
    }
}

/// The scenarios, by letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    Seq,
    Inflight,
    Cast,
    Fanout,
    Notify,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Seq,
        Scenario::Inflight,
        Scenario::Cast,
        Scenario::Fanout,
        Scenario::Notify,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Seq => "a) sequential call",
            Scenario::Inflight => "b) calls in flight",
            Scenario::Cast => "c) casts",
            Scenario::Fanout => "d) fanout casts",
            Scenario::Notify => "e) notifications",
        }
    }

    fn letter(self) -> char {
        self.label().chars().next().unwrap_or('?')
    }

    fn command(self) -> &'static str {
        match self {
            Scenario::Seq => "seq",
            Scenario::Inflight => "inflight",
            Scenario::Cast => "cast",
            Scenario::Fanout => "fanout",
            Scenario::Notify => "notify",
        }
    }
}

/// An implementation measured within a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Impl {
    Ours,
    Raw,
    /// Raw lapin speaking oslo's protocol: topic exchange, oslo's properties, `mandatory`,
    /// every publish confirmed (the floor of any oslo-compatible implementation on lapin).
    RawOslo,
    /// Raw lapin casts with `wide_window` confirms outstanding.
    RawWide,
    Python,
}

impl Impl {
    pub fn label(self, driver: Driver) -> String {
        match self {
            Impl::Ours => "ours".into(),
            Impl::Raw => driver.raw_label().into(),
            Impl::RawOslo => "raw lapin, oslo's protocol".into(),
            Impl::RawWide => "raw lapin, wide confirm window".into(),
            Impl::Python => "Python oslo.messaging".into(),
        }
    }
}

/// Key of one measured cell: driver, scenario, payload, calls in flight (b only, else 0), impl.
pub type Key = (Driver, Scenario, usize, usize, Impl);

/// One participant of a driver's run: its servers and its client process.
struct Participant {
    kind: Impl,
    servers: Vec<ServerProc>,
    /// `None` for Python (one client process per measurement).
    worker: Option<ServerProc>,
    /// Set once it failed for good (later measurements are skipped).
    dead: Option<String>,
    worker_peak_kb: Option<u64>,
}

/// What one driver's run left for the report.
#[derive(Debug, Clone, Default)]
pub struct DriverInfo {
    /// Implementations that could not take part, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Peak RSS in KiB by (implementation label, "client" / "server a" / "server b").
    pub rss: BTreeMap<(String, String), Option<u64>>,
    /// Notes (e.g. servers run in the client process).
    pub notes: Vec<String>,
    pub ran: bool,
}

pub struct Runner {
    pub opts: Opts,
    pub run_id: String,
    logdir: PathBuf,
    python: Option<PathBuf>,
    script: PathBuf,
    /// The broker of the driver being measured (RabbitMQ, or Redis for zmq's matchmaker).
    broker_pids: Vec<u32>,
    pub results: BTreeMap<Key, Vec<Measurement>>,
    pub drivers: BTreeMap<Driver, DriverInfo>,
    /// Queues and exchanges to delete at the end.
    queues: Vec<String>,
    exchanges: Vec<String>,
    pub py_client_peak_kb: Option<u64>,
    pub py_version: Option<String>,
    pub notes: Vec<String>,
    ours_enabled: bool,
    progress: MultiProgress,
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
    let mut notes = Vec::new();
    let python = if opts.no_python || !opts.drivers.contains(&Driver::Rabbit) {
        None
    } else {
        let py = opts.python.clone().unwrap_or_else(default_python);
        if py.exists() {
            Some(py)
        } else {
            notes.push(format!(
                "Python oslo.messaging skipped: {} does not exist (create it with `bash interop/setup-venv.sh`, or pass --python PATH)",
                py.display()
            ));
            None
        }
    };
    let ours_enabled = cfg!(feature = "ours") && !opts.no_ours;
    let mut runner = Runner {
        opts,
        run_id,
        logdir,
        python,
        script: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/py_bench.py")),
        broker_pids: Vec::new(),
        results: BTreeMap::new(),
        drivers: BTreeMap::new(),
        queues: Vec::new(),
        exchanges: Vec::new(),
        py_client_peak_kb: None,
        py_version: None,
        notes,
        ours_enabled,
        progress: MultiProgress::new(),
    };
    runner.log(&format!(
        "oslo-bench: run {} (logs in {}); drivers {:?}; ours={} python={}",
        runner.run_id,
        runner.logdir.display(),
        runner.opts.drivers.iter().map(|d| d.name()).collect::<Vec<_>>(),
        runner.ours_enabled,
        runner.python.is_some()
    ));
    runner.exe()?;
    let drivers = runner.opts.drivers.clone();
    let overall = runner.progress.add(ProgressBar::new(drivers.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} drivers, {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    overall.set_prefix("suite");
    let mut interrupted = false;
    for driver in drivers {
        overall.set_message(driver.name());
        // Ctrl-C ends the run early but still stops every process and cleans the broker: the
        // driver's participants are dropped with its future (ServerProc's Drop stops them).
        tokio::select! {
            _ = runner.run_driver(driver) => {}
            _ = tokio::signal::ctrl_c() => interrupted = true,
        }
        if interrupted {
            runner
                .notes
                .push(format!("interrupted (Ctrl-C) during driver {}: partial results", driver.name()));
            break;
        }
        overall.inc(1);
    }
    overall.finish_and_clear();
    runner.cleanup_broker().await;
    let _ = std::fs::remove_file(runner.logdir.join("oslo-bench"));
    let elapsed = started.elapsed();
    let report = report::markdown(&runner, elapsed);
    println!("{report}");
    if let Some(dir) = runner.opts.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&runner.opts.out, &report).map_err(err("write the report"))?;
    let svg_path = runner.opts.out.with_extension("svg");
    match report::svg(&runner, &svg_path) {
        Ok(()) => runner.log(&format!("oslo-bench: wrote {}", svg_path.display())),
        Err(e) => runner.log(&format!("oslo-bench: chart not written: {e}")),
    }
    if runner.notes.iter().all(|n| !n.contains("killed") && !n.contains("failure")) {
        let _ = std::fs::remove_dir_all(&runner.logdir);
    }
    runner.log(&format!(
        "oslo-bench: wrote {} in {:.0} s",
        runner.opts.out.display(),
        elapsed.as_secs_f64()
    ));
    if runner.opts.strict {
        let failed = runner.results.values().flatten().filter(|m| m.error.is_some()).count();
        let skipped: Vec<String> = runner
            .drivers
            .iter()
            .flat_map(|(d, i)| i.skipped.iter().map(move |(who, why)| format!("{} {who}: {why}", d.name())))
            .collect();
        if failed > 0 || !skipped.is_empty() || interrupted {
            return Err(format!("--strict: {failed} measurement(s) failed; skipped: {skipped:?}"));
        }
    }
    Ok(())
}

impl Runner {
    fn log(&self, line: &str) {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.progress.println(line);
        }
    }

    /// The binary the servers and clients run: a private copy made at start, so that a rebuild
    /// of `target/release/oslo-bench` during the run cannot break it.
    fn exe(&self) -> Res<PathBuf> {
        let copy = self.logdir.join("oslo-bench");
        if !copy.exists() {
            let current = std::env::current_exe().map_err(err("current_exe"))?;
            std::fs::copy(&current, &copy).map_err(|e| format!("copy {} to {}: {e}", current.display(), copy.display()))?;
        }
        Ok(copy)
    }

    fn spawn(&self, label: &str, cmd: Command, ready: Duration) -> Res<ServerProc> {
        let log = self.logdir.join(format!("{label}.log"));
        ServerProc::start(label, cmd, log, ready)
    }

    fn name(&self, driver: Driver, what: &str) -> String {
        format!("{}-{}-{what}", self.run_id, driver.name())
    }

    /// The URL our implementation uses for `driver`.
    fn ours_url(&self, driver: Driver) -> String {
        match driver {
            Driver::Rabbit => self.opts.url.clone(),
            Driver::Amqp1 => self.opts.amqp1_url.clone(),
            Driver::Zmq => self.opts.zmq_url.clone(),
            Driver::Fake => format!("{}-{}", self.opts.fake_url.trim_end_matches('/'), self.run_id),
        }
    }

    /// Start our servers and client for `driver`.
    fn start_ours(&mut self, driver: Driver) -> Res<Participant> {
        #[cfg(feature = "ours")]
        {
            let url = self.ours_url(driver);
            // Preflight in this process: a driver that is not built (yet) says why here.
            let transport = oslo_messaging::get_transport(&url).map_err(|e| format!("get_transport({url}): {e}"))?;
            drop(transport);
        }
        let url = self.ours_url(driver);
        let topic = self.name(driver, "ours");
        let exe = self.exe()?;
        let mut servers = Vec::new();
        let mut worker = Command::new(&exe);
        worker.args([
            "client",
            "--kind",
            "ours",
            "--url",
            &url,
            "--topic",
            &topic,
            "--timeout",
            &self.opts.timeout.to_string(),
        ]);
        if driver == Driver::Fake {
            // The fake driver's bus lives in one process: the servers run in the client's.
            worker.args(["--in-process-servers", "a,b"]);
        } else {
            for name in ["a", "b"] {
                let mut cmd = Command::new(&exe);
                cmd.args(["serve-ours", &topic, name, "--url", &url]);
                servers.push(self.spawn(&format!("{}-ours-{name}", driver.name()), cmd, Duration::from_secs(30))?);
            }
        }
        if driver == Driver::Rabbit {
            self.queues.extend([topic.clone(), format!("{topic}.a"), format!("{topic}.b")]);
            self.queues.push(format!("{}.info", self.name(driver, "ours-notify")));
            self.exchanges.push(format!("{topic}_fanout"));
        }
        let worker = self.spawn(&format!("{}-ours-client", driver.name()), worker, Duration::from_secs(30))?;
        Ok(Participant {
            kind: Impl::Ours,
            servers,
            worker: Some(worker),
            dead: None,
            worker_peak_kb: None,
        })
    }

    /// Declare the raw AMQP 1.0 baseline's topology over AMQP 0-9-1 (see raw_amqp1.rs).
    async fn declare_amqp1_topology(&mut self, queues: &[String], reply: &str, fanout: &str) -> Res<()> {
        let conn = raw::connect(&self.opts.amqp_url).await?;
        let ch = conn.create_channel().await.map_err(err("create channel"))?;
        self.exchanges.push(fanout.to_string());
        for q in queues.iter().map(String::as_str).chain([reply]) {
            self.queues.push(q.to_string());
            ch.queue_declare(q.into(), QueueDeclareOptions::default(), FieldTable::default())
                .await
                .map_err(err("queue.declare"))?;
        }
        ch.exchange_declare(
            fanout.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("exchange.declare"))?;
        for q in queues {
            ch.queue_bind(
                q.as_str().into(),
                fanout.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("queue.bind"))?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
        Ok(())
    }

    /// Start the raw transport's servers and client for `driver`.
    async fn start_raw(&mut self, driver: Driver) -> Res<Participant> {
        let exe = self.exe()?;
        let d = driver.name();
        let timeout = self.opts.timeout.to_string();
        let mut servers = Vec::new();
        let mut worker = Command::new(&exe);
        worker.args(["client", "--timeout", &timeout]);
        match driver {
            Driver::Rabbit => {
                let (qa, qb, fanout, topic) = (
                    self.name(driver, "raw.a"),
                    self.name(driver, "raw.b"),
                    self.name(driver, "raw_fanout"),
                    self.name(driver, "raw_topic"),
                );
                self.queues.extend([qa.clone(), qb.clone()]);
                self.exchanges.extend([fanout.clone(), topic.clone()]);
                for (name, q) in [("a", &qa), ("b", &qb)] {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["serve-raw", q, "--fanout-exchange", &fanout, "--topic-exchange", &topic]);
                    cmd.args(["--amqp-url", &self.opts.amqp_url]);
                    if self.opts.raw_oslo_props {
                        cmd.arg("--oslo-props");
                    }
                    servers.push(self.spawn(&format!("{d}-raw-{name}"), cmd, Duration::from_secs(30))?);
                }
                worker.args([
                    "--kind",
                    "raw-lapin",
                    "--url",
                    &self.opts.amqp_url,
                    "--fanout",
                    &fanout,
                    "--topic-exchange",
                    &topic,
                ]);
                worker.args(["--server", &format!("a={qa}"), "--server", &format!("b={qb}")]);
                if self.opts.raw_oslo_props {
                    worker.arg("--oslo-props");
                }
            }
            Driver::Amqp1 => {
                let (qa, qb) = (self.name(driver, "raw.a"), self.name(driver, "raw.b"));
                let (reply, fanout) = (self.name(driver, "raw.reply"), self.name(driver, "raw_fanout"));
                self.declare_amqp1_topology(&[qa.clone(), qb.clone()], &reply, &fanout).await?;
                for (name, q) in [("a", &qa), ("b", &qb)] {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["serve-raw-amqp1", q, "--url", &self.opts.amqp1_url]);
                    servers.push(self.spawn(&format!("{d}-raw-{name}"), cmd, Duration::from_secs(30))?);
                }
                worker.args([
                    "--kind",
                    "raw-amqp1",
                    "--url",
                    &self.opts.amqp1_url,
                    "--fanout",
                    &fanout,
                    "--reply-queue",
                    &reply,
                ]);
                worker.args(["--server", &format!("a={qa}"), "--server", &format!("b={qb}")]);
            }
            Driver::Zmq => {
                worker.args(["--kind", "raw-zmq"]);
                for name in ["a", "b"] {
                    let mut cmd = Command::new(&exe);
                    cmd.arg("serve-raw-zmq");
                    let server = self.spawn(&format!("{d}-raw-{name}"), cmd, Duration::from_secs(30))?;
                    let endpoint = server
                        .banner
                        .iter()
                        .find_map(|l| l.strip_prefix("ENDPOINT "))
                        .ok_or("raw zmq server printed no ENDPOINT")?
                        .to_string();
                    worker.args(["--server", &format!("{name}={endpoint}")]);
                    servers.push(server);
                }
            }
            Driver::Fake => return Err("the fake driver has no raw transport".into()),
        }
        let worker = self.spawn(&format!("{d}-raw-client"), worker, Duration::from_secs(30))?;
        Ok(Participant {
            kind: Impl::Raw,
            servers,
            worker: Some(worker),
            dead: None,
            worker_peak_kb: None,
        })
    }

    fn start_python(&mut self, driver: Driver) -> Res<Participant> {
        let py = self.python.clone().ok_or("no python")?;
        let topic = self.name(driver, "py");
        self.queues.extend([topic.clone(), format!("{topic}.a"), format!("{topic}.b")]);
        self.queues.push(format!("{}.info", self.name(driver, "py-notify")));
        self.exchanges.push(format!("{topic}_fanout"));
        let mut servers = Vec::new();
        for name in ["a", "b"] {
            let mut cmd = Command::new(&py);
            cmd.arg(&self.script).args(["serve", &topic, name, "--url", &self.opts.url]);
            servers.push(self.spawn(&format!("{}-python-{name}", driver.name()), cmd, Duration::from_secs(90))?);
        }
        Ok(Participant {
            kind: Impl::Python,
            servers,
            worker: None,
            dead: None,
            worker_peak_kb: None,
        })
    }

    /// Whether `kind` takes part in this cell.
    fn applies(&self, driver: Driver, kind: Impl, sc: Scenario, payload: usize, k: usize) -> bool {
        let smallest = self.opts.payloads.iter().copied().min().unwrap_or(payload);
        let widest = self.opts.inflight.iter().copied().max().unwrap_or(k);
        match kind {
            Impl::Ours => true,
            Impl::Python => true,
            Impl::Raw => sc != Scenario::Notify,
            Impl::RawOslo => {
                driver == Driver::Rabbit
                    && !self.opts.no_refs
                    && payload == smallest
                    && (sc == Scenario::Seq || sc == Scenario::Cast || (sc == Scenario::Inflight && k == widest))
            }
            Impl::RawWide => driver == Driver::Rabbit && !self.opts.no_refs && payload == smallest && sc == Scenario::Cast,
        }
    }

    /// The cells of one driver, in run order.
    fn plan(&self) -> Vec<(Scenario, usize, usize)> {
        let mut cells = Vec::new();
        for sc in Scenario::ALL {
            if !self.opts.only.contains(sc.letter()) {
                continue;
            }
            for &payload in &self.opts.payloads {
                if sc == Scenario::Inflight {
                    for &k in &self.opts.inflight {
                        cells.push((sc, payload, k));
                    }
                } else {
                    cells.push((sc, payload, 0));
                }
            }
        }
        cells
    }

    async fn run_driver(&mut self, driver: Driver) {
        let mut info = DriverInfo::default();
        let mut participants: Vec<Participant> = Vec::new();
        self.broker_pids = match driver {
            Driver::Rabbit | Driver::Amqp1 => pids_by_comm("beam.smp"),
            Driver::Zmq => pids_by_comm("redis-server"),
            Driver::Fake => Vec::new(),
        };
        self.log(&format!("oslo-bench: driver {}: starting servers and clients", driver.name()));
        if self.ours_enabled {
            match self.start_ours(driver) {
                Ok(p) => participants.push(p),
                Err(e) => info.skipped.push(("ours".into(), first_line(&e))),
            }
        } else {
            info.skipped
                .push(("ours".into(), "disabled (--no-ours or built without the `ours` feature)".into()));
        }
        if driver != Driver::Fake {
            match self.start_raw(driver).await {
                Ok(p) => participants.push(p),
                Err(e) => info.skipped.push((driver.raw_label().into(), first_line(&e))),
            }
        }
        if driver == Driver::Rabbit && self.python.is_some() {
            match self.start_python(driver) {
                Ok(p) => participants.push(p),
                Err(e) => info.skipped.push(("Python oslo.messaging".into(), first_line(&e))),
            }
        }
        if driver == Driver::Fake {
            info.notes.push(
                "fake: in-memory bus, so our servers run inside the client process (its peak RSS covers both); no raw baseline".into(),
            );
        }
        for (who, why) in &info.skipped {
            self.log(&format!("oslo-bench: driver {}: {who} skipped: {why}", driver.name()));
        }
        if participants.is_empty() {
            self.drivers.insert(driver, info);
            return;
        }
        info.ran = true;
        // Expand participants into measured implementations (the raw worker also serves the
        // lapin reference variants).
        let mut kinds: Vec<(Impl, usize)> = Vec::new();
        for (i, p) in participants.iter().enumerate() {
            kinds.push((p.kind, i));
            if p.kind == Impl::Raw && driver == Driver::Rabbit {
                kinds.push((Impl::RawOslo, i));
                kinds.push((Impl::RawWide, i));
            }
        }
        let cells = self.plan();
        let total: usize = cells
            .iter()
            .map(|&(sc, payload, k)| kinds.iter().filter(|(kind, _)| self.applies(driver, *kind, sc, payload, k)).count() * self.opts.reps)
            .sum();
        let bar = self.progress.add(ProgressBar::new(total as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(driver.name());
        for (sc, payload, k) in cells {
            let cell_kinds: Vec<(Impl, usize)> = kinds
                .iter()
                .copied()
                .filter(|(kind, _)| self.applies(driver, *kind, sc, payload, k))
                .collect();
            for rep in 0..self.opts.reps {
                let mut order = cell_kinds.clone();
                let len = order.len().max(1);
                order.rotate_left(rep % len);
                for (kind, i) in order {
                    bar.set_message(format!(
                        "{} | {} B{} | {} | rep {}",
                        sc.label(),
                        payload,
                        if k > 0 { format!(" | {k} in flight") } else { String::new() },
                        kind.label(driver),
                        rep + 1
                    ));
                    let m = self.measure(driver, &mut participants, i, kind, sc, payload, k).await;
                    self.log(&format!(
                        "oslo-bench: {} | {} | {} B{} | {} | rep {} -> {}/s, median {} ms, p99 {} ms{}",
                        driver.name(),
                        sc.label(),
                        payload,
                        if k > 0 { format!(" | {k} in flight") } else { String::new() },
                        kind.label(driver),
                        rep + 1,
                        fmt_rate(m.per_s),
                        fmt_ms(m.median_ms),
                        fmt_ms(m.p99_ms),
                        m.error.as_deref().map(|e| format!(" ERROR: {}", first_line(e))).unwrap_or_default()
                    ));
                    self.results.entry((driver, sc, payload, k, kind)).or_default().push(m);
                    bar.inc(1);
                }
            }
        }
        bar.finish_and_clear();
        self.stop_participants(driver, &mut participants, &mut info);
        self.drivers.insert(driver, info);
    }

    /// The counts of one cell (smaller for big payloads).
    fn count(&self, base: u64, payload: usize) -> u64 {
        if payload > 4096 {
            (base / self.opts.big_divisor.max(1)).max(1)
        } else {
            base
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn measure(
        &mut self,
        driver: Driver,
        participants: &mut [Participant],
        i: usize,
        kind: Impl,
        sc: Scenario,
        payload: usize,
        k: usize,
    ) -> Measurement {
        // The client exchange below blocks this task (block_in_place), so yield here: the
        // Ctrl-C branch of `run` gets polled between measurements.
        tokio::task::yield_now().await;
        if let Some(why) = &participants[i].dead {
            return Measurement::failed(format!("not measured: {why}"));
        }
        for p in participants.iter_mut() {
            for s in &mut p.servers {
                if !s.alive() && p.dead.is_none() {
                    p.dead = Some(format!("server {} died; log: {}", s.label, log_tail(&s.log, 5)));
                }
            }
        }
        if let Some(why) = &participants[i].dead {
            return Measurement::failed(why.clone());
        }
        self.wait_quiet(participants).await;
        let mine: Vec<u32> = participants[i].servers.iter().map(ServerProc::pid).collect();
        let others: Vec<u32> = participants
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, p)| p.servers.iter().map(ServerProc::pid).chain(p.worker.as_ref().map(ServerProc::pid)))
            .collect();
        let client: Vec<u32> = participants[i].worker.as_ref().map(ServerProc::pid).into_iter().collect();
        let before = cpu_snap(&client, &mine, &others, &self.broker_pids);
        let mut m = if kind == Impl::Python {
            self.python_measure(driver, sc, payload, k)
                .await
                .unwrap_or_else(Measurement::failed)
        } else {
            self.worker_measure(&mut participants[i], kind, sc, payload, k, driver).await
        };
        m.cpu = cpu_use(before, cpu_snap(&client, &mine, &others, &self.broker_pids));
        if let (Some(cpu), Some(client)) = (m.cpu.as_mut(), m.client_cpu_s) {
            cpu.client_s = client;
        }
        m.foreign_pct = m.cpu.map(|c| c.foreign_pct);
        m
    }

    fn cmd(&self, driver: Driver, kind: Impl, sc: Scenario, payload: usize, k: usize) -> Cmd {
        let o = &self.opts;
        let (count, window) = match sc {
            Scenario::Cast => (
                self.count(o.casts, payload),
                if kind == Impl::RawWide { o.wide_window } else { o.cast_window },
            ),
            Scenario::Fanout => (self.count(o.fanout_casts, payload), o.cast_window),
            Scenario::Notify => (self.count(o.notifications, payload), o.cast_window),
            _ => (0, 0),
        };
        Cmd {
            scenario: sc.command().into(),
            payload,
            n: self.count(o.n as u64, payload) as usize,
            warmup: self.count(o.warmup as u64, payload) as usize,
            inflight: k,
            warmup_s: o.inflight_warmup,
            duration_s: o.duration,
            count,
            window,
            oslo_protocol: kind == Impl::RawOslo,
            notify_topic: self.name(driver, "ours-notify"),
            poll_ms: o.poll_ms,
            bound_s: 120.0,
            timeout_s: o.timeout,
        }
    }

    async fn worker_measure(&self, p: &mut Participant, kind: Impl, sc: Scenario, payload: usize, k: usize, driver: Driver) -> Measurement {
        let cmd = self.cmd(driver, kind, sc, payload, k);
        let bound = Duration::from_secs_f64(match sc {
            Scenario::Seq => 60.0 + (cmd.n + cmd.warmup) as f64 * self.opts.timeout.min(0.05),
            Scenario::Inflight => 30.0 + cmd.warmup_s + cmd.duration_s + cmd.timeout_s,
            _ => cmd.bound_s + 30.0,
        });
        let Some(worker) = p.worker.as_mut() else {
            return Measurement::failed("no client process".into());
        };
        let line = match serde_json::to_string(&cmd) {
            Ok(l) => l,
            Err(e) => return Measurement::failed(format!("encode command: {e}")),
        };
        let answer = tokio::task::block_in_place(|| {
            worker.send_line(&line)?;
            worker.recv_line(bound)
        });
        match answer.and_then(|l| serde_json::from_str::<Reply>(&l).map_err(|e| format!("bad client answer {l:?}: {e}"))) {
            Ok(reply) => {
                if reply.vmhwm_kb.is_some() {
                    p.worker_peak_kb = reply.vmhwm_kb;
                }
                reply.measurement
            }
            Err(e) => {
                p.dead = Some(first_line(&e));
                Measurement::failed(e)
            }
        }
    }

    /// With `--quiet-wait S`: wait (at most S seconds) for a 0.5 s window in which processes
    /// outside the benchmark use less than `--quiet-pct` of the machine.
    async fn wait_quiet(&self, participants: &[Participant]) {
        if self.opts.quiet_wait <= 0.0 {
            return;
        }
        let all: Vec<u32> = participants
            .iter()
            .flat_map(|p| p.servers.iter().map(ServerProc::pid).chain(p.worker.as_ref().map(ServerProc::pid)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs_f64(self.opts.quiet_wait);
        loop {
            let a = cpu_snap(&[], &[], &all, &self.broker_pids);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let foreign = cpu_use(a, cpu_snap(&[], &[], &all, &self.broker_pids)).map(|c| c.foreign_pct);
            if foreign.is_none_or(|f| f < self.opts.quiet_pct) || Instant::now() >= deadline {
                return;
            }
        }
    }

    fn stop_participants(&mut self, driver: Driver, participants: &mut Vec<Participant>, info: &mut DriverInfo) {
        for p in participants.iter_mut() {
            let label = p.kind.label(driver);
            for s in &p.servers {
                let which = s.label.rsplit('-').next().unwrap_or("?").to_string();
                info.rss.insert((label.clone(), format!("server {which}")), vmhwm_kb(s.pid()));
            }
            if let Some(w) = p.worker.as_mut() {
                let peak = vmhwm_kb(w.pid()).or(p.worker_peak_kb);
                info.rss.insert((label.clone(), "client".into()), peak);
                for line in w.finish(Duration::from_secs(20)) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        for q in v["reply_queues"].as_array().into_iter().flatten().filter_map(|q| q.as_str()) {
                            self.queues.push(q.to_string());
                        }
                    }
                }
                if !w.stop(Duration::from_secs(5)) {
                    self.notes.push(format!("client {} had to be killed", w.label));
                }
            } else if p.kind == Impl::Python {
                info.rss.insert((label.clone(), "client".into()), self.py_client_peak_kb);
            }
            for s in &mut p.servers {
                if !s.stop(Duration::from_secs(20)) {
                    self.notes
                        .push(format!("server {} had to be killed (did not stop within 20 s)", s.label));
                }
            }
        }
        participants.clear();
    }

    async fn python_measure(&mut self, driver: Driver, sc: Scenario, payload: usize, k: usize) -> Res<Measurement> {
        let o = self.opts.clone();
        let py = self.python.clone().ok_or("no python")?;
        let topic = if sc == Scenario::Notify {
            self.name(driver, "py-notify")
        } else {
            self.name(driver, "py")
        };
        let mut args: Vec<String> = vec![
            self.script.display().to_string(),
            "client".into(),
            sc.command().into(),
            "--topic".into(),
            topic,
            "--url".into(),
            o.url.clone(),
            "--payload".into(),
            payload.to_string(),
            "--timeout".into(),
            o.timeout.to_string(),
            "--poll-ms".into(),
            o.poll_ms.to_string(),
        ];
        let bound = match sc {
            Scenario::Seq => {
                let (n, w) = (self.count(o.n as u64, payload), self.count(o.warmup as u64, payload));
                args.extend(["--n".into(), n.to_string(), "--warmup".into(), w.to_string()]);
                60.0 + (n + w) as f64 * 0.05
            }
            Scenario::Inflight => {
                let threads = k.min(o.py_threads).max(1);
                args.extend([
                    "--threads".into(),
                    threads.to_string(),
                    "--duration".into(),
                    o.duration.to_string(),
                    "--warmup-secs".into(),
                    o.inflight_warmup.to_string(),
                ]);
                60.0 + o.duration + o.inflight_warmup + o.timeout
            }
            Scenario::Cast | Scenario::Fanout => {
                let base = if sc == Scenario::Cast { o.py_casts } else { o.py_fanout_casts };
                let count = self.count(base, payload);
                args.extend(["--servers".into(), "a,b".into(), "--count".into(), count.to_string()]);
                60.0 + count as f64 * 0.05
            }
            Scenario::Notify => {
                let count = self.count(o.py_notifications, payload);
                args.extend(["--count".into(), count.to_string()]);
                60.0 + count as f64 * 0.05
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
            self.queues.push(q.to_string());
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
            let _ = write!(note, "{c} notifications, sequential; listener counted {}", v["received"]);
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

    /// Delete every queue and exchange the run created (by name), then whatever else carries the
    /// run id (what servers and drivers created under the run's topic names).
    async fn cleanup_broker(&mut self) {
        let needs_broker = self.opts.drivers.iter().any(|d| matches!(d, Driver::Rabbit | Driver::Amqp1));
        if !needs_broker {
            return;
        }
        let (queues, exchanges) = (self.queues.clone(), self.exchanges.clone());
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
            match tokio::time::timeout(Duration::from_secs(5), ch.queue_delete(q.as_str().into(), Default::default())).await {
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
            match tokio::time::timeout(Duration::from_secs(5), ch.exchange_delete(x.as_str().into(), Default::default())).await {
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
            None => self.notes.push("rabbitmqctl not usable: no scan for leftover queues".into()),
        }
        // Verify: nothing with the run id is left.
        if let Some((q, x)) = self.scan_leftovers(&[], &[]) {
            if !q.is_empty() || !x.is_empty() {
                self.notes
                    .push(format!("still on the broker after cleanup: queues {q:?}, exchanges {x:?}"));
            }
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
}

/// The first line of an error, for one-line reasons.
pub fn first_line(e: &str) -> String {
    e.lines().next().unwrap_or("").to_string()
}

/// Format the options line of the report.
pub fn describe_counts(o: &Opts) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "a) {} warm-up + {} timed calls; b) {:.1} s warm-up + {:.1} s timed with {:?} calls in flight (Python: as many threads, at most {}); \
         c) {} casts ({} concurrent; Python {} sequential); d) {} fanout casts to 2 servers (Python {}); \
         e) {} notifications (Python {}); payloads {:?} bytes; counts divided by {} for payloads above 4 KiB; {} repetition(s), median shown.",
        o.warmup,
        o.n,
        o.inflight_warmup,
        o.duration,
        o.inflight,
        o.py_threads,
        o.casts,
        o.cast_window,
        o.py_casts,
        o.fanout_casts,
        o.py_fanout_casts,
        o.notifications,
        o.py_notifications,
        o.payloads,
        o.big_divisor,
        o.reps
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_every_scenario_payload_and_inflight_level() {
        let runner_opts = Opts::default();
        let cells: usize = Scenario::ALL
            .iter()
            .map(|sc| runner_opts.payloads.len() * if *sc == Scenario::Inflight { runner_opts.inflight.len() } else { 1 })
            .sum();
        assert_eq!(cells, 2 * (1 + 3 + 1 + 1 + 1));
        assert_eq!(Driver::parse("zmq").unwrap(), Driver::Zmq);
        assert!(Driver::parse("nats").is_err());
    }
}
