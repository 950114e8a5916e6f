//! Statistics, process helpers and /proc readers shared by the benchmark's parts.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Errors are reported as text: this is a benchmark, not a library.
pub type Res<T> = Result<T, String>;

/// Turn any displayable error into the benchmark's error type, with context.
pub fn err<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// Nearest-rank percentile of sorted values (same rule as `py_bench.py`).
pub fn percentile(sorted: &[f64], pct: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Median of unsorted values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// One measurement of one implementation in one scenario.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// Calls/s or casts/s (end to end).
    pub per_s: Option<f64>,
    /// Median latency in ms (calls only).
    pub median_ms: Option<f64>,
    /// 99th percentile latency in ms (calls only).
    pub p99_ms: Option<f64>,
    /// Casts: the send-only rate.
    pub send_per_s: Option<f64>,
    /// Free text: threads, errors, processed counts.
    pub note: String,
    /// CPU used by processes outside the benchmark, in % of the machine, during the measurement.
    pub foreign_pct: Option<f64>,
    /// CPU used by the client, the servers and the broker during the measurement.
    pub cpu: Option<CpuUse>,
    /// Operations done during the CPU window (warm-up included), for CPU per operation.
    pub ops: Option<u64>,
    /// The client's CPU seconds as it measured them itself (Python: without interpreter start-up).
    pub client_cpu_s: Option<f64>,
    /// Set when the measurement failed.
    pub error: Option<String>,
}

impl Measurement {
    /// A failed measurement.
    pub fn failed(error: String) -> Self {
        Measurement {
            error: Some(error),
            ..Default::default()
        }
    }

    /// Fill median/p99 from latencies in seconds.
    pub fn with_latencies(mut self, latencies_s: &mut [f64]) -> Self {
        latencies_s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        self.median_ms = percentile(latencies_s, 50.0).map(|s| s * 1e3);
        self.p99_ms = percentile(latencies_s, 99.0).map(|s| s * 1e3);
        self
    }
}

/// A receiver that fires when stdin reaches EOF (the parent closed it or died).
pub fn stdin_eof() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        })
        .expect("spawn stdin watcher");
    rx
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn vmhwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// (busy, total) jiffies of the whole machine.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 5 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields[4];
    Some((total - idle, total))
}

/// utime+stime (plus waited-for children's if `children`) of a process, in jiffies.
fn process_jiffies(pid: &str, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let mut sum = f.get(11)? + f.get(12)?;
    if children {
        sum += f.get(13)? + f.get(14)?;
    }
    Some(sum)
}

/// Pids of processes whose comm is `name` (e.g. RabbitMQ's `beam.smp`).
pub fn pids_by_comm(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                if comm.trim() == name {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// A snapshot of machine CPU and of the benchmark's own processes' CPU, in jiffies.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnap {
    busy: u64,
    total: u64,
    /// The client processes (or this process with its waited-for children: the Python clients).
    client: u64,
    /// The servers of the implementation being measured.
    servers: u64,
    /// The other servers (idle during the measurement).
    others: u64,
    /// RabbitMQ.
    broker: u64,
}

/// Snapshot the machine and the processes taking part.
pub fn cpu_snap(clients: &[u32], servers: &[u32], others: &[u32], broker: &[u32]) -> Option<CpuSnap> {
    let (busy, total) = machine_jiffies()?;
    let sum = |pids: &[u32]| {
        pids.iter()
            .map(|p| process_jiffies(&p.to_string(), false).unwrap_or(0))
            .sum::<u64>()
    };
    Some(CpuSnap {
        busy,
        total,
        client: if clients.is_empty() {
            process_jiffies("self", true)?
        } else {
            sum(clients)
        },
        servers: sum(servers),
        others: sum(others),
        broker: sum(broker),
    })
}

/// CPU used during a measurement.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct CpuUse {
    /// CPU used by processes outside the benchmark and the broker, in % of the machine.
    pub foreign_pct: f64,
    /// CPU seconds of the client process.
    pub client_s: f64,
    /// CPU seconds of the measured implementation's servers.
    pub server_s: f64,
    /// CPU seconds of RabbitMQ.
    pub broker_s: f64,
}

/// What was used between two snapshots.
pub fn cpu_use(a: Option<CpuSnap>, b: Option<CpuSnap>) -> Option<CpuUse> {
    let (a, b) = (a?, b?);
    let total = b.total.checked_sub(a.total)?;
    if total == 0 {
        return None;
    }
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let own = d(a.client, b.client) + d(a.servers, b.servers) + d(a.others, b.others) + d(a.broker, b.broker);
    let busy = d(a.busy, b.busy);
    Some(CpuUse {
        foreign_pct: (busy.saturating_sub(own) as f64 / total as f64) * 100.0,
        client_s: d(a.client, b.client) as f64 / CLK_TCK,
        server_s: d(a.servers, b.servers) as f64 / CLK_TCK,
        broker_s: d(a.broker, b.broker) as f64 / CLK_TCK,
    })
}

/// The last `n` lines of a log file (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A server child process: started, waited for `READY`, stopped by closing its stdin.
pub struct ServerProc {
    /// Display name, e.g. `ours-a`.
    pub label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stderr.
    pub log: PathBuf,
    /// Lines it printed before `READY` (e.g. `ENDPOINT tcp://…`).
    pub banner: Vec<String>,
    /// Its stdout lines after `READY`.
    lines: mpsc::Receiver<String>,
    stopped: bool,
}

impl ServerProc {
    /// Spawn `cmd` and wait (at most `ready_timeout`) for a `READY` line on its stdout.
    pub fn start(label: &str, mut cmd: Command, log: PathBuf, ready_timeout: Duration) -> Res<ServerProc> {
        let log_file = std::fs::File::create(&log).map_err(err("create server log"))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {label} ({cmd:?}): {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel::<String>();
        let thread_label = label.to_string();
        std::thread::Builder::new()
            .name(format!("{thread_label}-stdout"))
            .spawn(move || {
                // Keep draining stdout after READY so the child never blocks on a full pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            })
            .map_err(err("spawn stdout reader"))?;
        let mut server = ServerProc {
            label: label.to_string(),
            child,
            stdin,
            log,
            banner: Vec::new(),
            lines: rx,
            stopped: false,
        };
        let deadline = Instant::now() + ready_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match server.lines.recv_timeout(remaining) {
                Ok(line) if line.trim() == "READY" => return Ok(server),
                Ok(line) => server.banner.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    server.stop(Duration::from_secs(2));
                    return Err(format!(
                        "{label} did not print READY within {ready_timeout:?}; its log ({}):\n{}",
                        server.log.display(),
                        log_tail(&server.log, 20)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    server.stop(Duration::from_secs(2));
                    return Err(format!(
                        "{label} exited before READY; its log ({}):\n{}",
                        server.log.display(),
                        log_tail(&server.log, 20)
                    ));
                }
            }
        }
    }

    /// Send one line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Res<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or_else(|| format!("{} is stopped", self.label))?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("{}: write to stdin: {e}", self.label))
    }

    /// The next line it prints on stdout, waiting at most `timeout`.
    pub fn recv_line(&mut self, timeout: Duration) -> Res<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("{} did not answer within {timeout:?}", self.label)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
                "{} exited; its log ({}):\n{}",
                self.label,
                self.log.display(),
                log_tail(&self.log, 20)
            )),
        }
    }

    /// Close its stdin and return the lines it prints until it exits (at most `timeout`).
    pub fn finish(&mut self, timeout: Duration) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            out.push(line);
        }
        out
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Close its stdin (it stops cleanly), wait at most `timeout`, then kill it.
    /// Returns false when it had to be killed.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("oslo-bench: {} did not stop within {timeout:?}; killing it", self.label);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Run a command to completion with a bound on its run time; returns its stdout.
/// stderr goes to `log` (appended) when given, else is discarded.
pub fn run_bounded(mut cmd: Command, timeout: Duration, log: Option<&Path>) -> Res<String> {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(err("open log"))?,
        ),
        None => Stdio::null(),
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {timeout:?}; killed"));
            }
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status}); stdout: {}", out.trim()));
    }
    Ok(out)
}

/// Format a rate with thousands separators.
pub fn fmt_rate(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) => {
            let n = v.round() as i64;
            let s = n.abs().to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            if n < 0 {
                format!("-{out}")
            } else {
                out
            }
        }
    }
}

/// Format milliseconds.
pub fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.1}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(fmt_rate(Some(18234.4)), "18,234");
        assert_eq!(fmt_rate(Some(999.0)), "999");
    }
}
