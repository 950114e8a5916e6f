//! Running the built `oslo-msg` binary from tests: one-shot commands, and long-running ones
//! (`serve`, `listen`) as child processes that are killed on every path.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A command for the binary under test, with a clean environment for the URL and colors.
pub fn oslo_msg() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oslo-msg"));
    command.env_remove("OSLO_TRANSPORT_URL").env_remove("RUST_LOG").env("NO_COLOR", "1");
    command
}

/// Run to completion with `args`.
pub fn run(args: &[&str]) -> Output {
    oslo_msg().args(args).output().expect("the oslo-msg binary runs")
}

/// Stdout, stderr and the exit code of a finished command.
pub fn texts(output: &Output) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.code().unwrap_or(-1),
    )
}

/// A random name for topics and queues, so runs and tests never share them.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A child `oslo-msg` process whose output lines arrive on channels; killed when dropped.
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub stderr_seen: Vec<String>,
}

impl Running {
    /// Start `oslo-msg args...`.
    pub fn spawn(args: &[&str]) -> Running {
        let mut child = oslo_msg()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the oslo-msg binary starts");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Wait for a stderr line containing `needle`; panics with what was seen after `within`.
    pub fn wait_stderr(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {needle:?} within {within:?}; stderr so far: {:#?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Wait for a stdout line containing `needle` and return it.
    pub fn wait_stdout(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no stdout line with {needle:?} within {within:?}; stdout so far: {seen:#?}"),
            }
        }
    }

    /// Wait for the process to exit by itself; returns (stdout, stderr, exit code).
    pub fn finish(mut self, within: Duration) -> (String, String, i32) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                panic!("oslo-msg did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout: Vec<String> = self.stdout.try_iter().collect();
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        // The reader threads end at EOF; give them a moment to deliver the last lines.
        let grace = Instant::now() + Duration::from_secs(2);
        let mut stdout = stdout;
        while Instant::now() < grace {
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        stderr.extend(self.stderr.try_iter());
        (stdout.join("\n"), stderr.join("\n"), status.code().unwrap_or(-1))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
