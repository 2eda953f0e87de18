//! Runs the real `hookrelay` binary as a child process, by PID, on 127.0.0.1 and a free port.
//!
//! Output goes to `stdout.log` / `stderr.log` in the scenario's directory, appended across
//! restarts with a `=== chaos: start #n ===` marker in stderr, so a scenario can read what one
//! start logged (e.g. what recovery cut). The child gets `PR_SET_PDEATHSIG = SIGKILL`, so it
//! never outlives the suite, and [`Server`]'s `Drop` kills and reaps it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::Http;

/// How long a start may take to answer 200 on `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The operator key every chaos server is started with.
pub const ROOT_KEY: &str = "hr_root_chaossuiteoperatorkey0123456789abcd";

/// How to start the server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// Where `stdout.log` / `stderr.log` go.
    pub log_dir: PathBuf,
    pub port: u16,
    pub shards: usize,
    /// Extra environment, set last.
    pub env: Vec<(String, String)>,
}

/// A running (or stopped) `hookrelay serve`.
pub struct Server {
    spec: ServerSpec,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    /// Spawns the binary (does not wait for readiness).
    pub fn spawn(spec: ServerSpec) -> anyhow::Result<Self> {
        let mut server = Self {
            spec,
            child: None,
            starts: 0,
        };
        server.start()?;
        Ok(server)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Starts the process again on the same data dir and port (it must not be running).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("start: hookrelay is already running");
        }
        self.starts += 1;
        let spec = &self.spec;
        let stdout = open_log(&spec.log_dir.join("stdout.log"), None)?;
        let stderr = open_log(&spec.log_dir.join("stderr.log"), Some(self.starts))?;
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", spec.port))
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--shards")
            .arg(spec.shards.to_string());
        // The suite's own environment (a developer's HOOKRELAY_* settings) must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOOKRELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOOKRELAY_ROOT_KEY", ROOT_KEY)
            .env("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "true")
            .env("RUST_BACKTRACE", "1");
        for (key, value) in &spec.env {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: prctl is async-signal-safe; if the suite dies without running Drop the kernel
        // kills the server, so no hookrelay outlives its chaos run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", spec.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for `/readyz` = 200; an error if the process exits or the timeout passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_ok("/readyz", "ready", timeout).await
    }

    /// Waits for `/healthz` = 200: the process is up. A replica never answers 200 on `/readyz`
    /// (it takes no ingest), so a replica's start is waited for with this.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_ok("/healthz", "healthy", timeout).await
    }

    /// Polls `path` until it answers 200; an error if the process exits or `timeout` passes.
    async fn wait_ok(
        &mut self,
        path: &str,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let http = Http::new(self.base_url(), 0, Duration::from_secs(2));
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "hookrelay exited during start-up ({status}); stderr tail:\n{}",
                    self.stderr_tail(25)
                );
            }
            if let Ok(r) = http.get(path, None).await
                && r.status == 200
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                bail!(
                    "hookrelay not {what} within {timeout:?}; stderr tail:\n{}",
                    self.stderr_tail(25)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Some(status)` once the child has exited (it is then reaped and forgotten).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// SIGKILL and reap. No-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL after it). Returns the exit
    /// status (`None` if it had to be killed) and how long the exit took.
    pub async fn sigterm(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(Option<ExitStatus>, Duration)> {
        let Some(mut child) = self.child.take() else {
            bail!("sigterm: hookrelay is not running");
        };
        let started = Instant::now();
        send_signal(&child, libc::SIGTERM);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((Some(status), started.elapsed()));
            }
            if started.elapsed() >= timeout {
                send_signal(&child, libc::SIGKILL);
                let _ = child.wait();
                return Ok((None, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the server wrote to stderr, across starts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.spec.log_dir.join("stderr.log")).unwrap_or_default()
    }

    /// What start number `start` wrote to stderr (1-based).
    pub fn stderr_of_start(&self, start: u32) -> String {
        let all = self.stderr();
        let marker = format!("=== chaos: start #{start} ===");
        let Some(begin) = all.find(&marker) else {
            return String::new();
        };
        let rest = &all[begin + marker.len()..];
        let end = rest.find("=== chaos: start #").unwrap_or(rest.len());
        rest[..end].to_string()
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        let all = self.stderr();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident memory of the process in KiB (from /proc), if running.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn open_log(path: &Path, start: Option<u32>) -> anyhow::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if let Some(n) = start {
        writeln!(file, "=== chaos: start #{n} ===")?;
    }
    Ok(file)
}

fn send_signal(child: &Child, signal: libc::c_int) {
    // The pid is still ours: the child has not been reaped (reaping takes it out of `self`).
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own unreaped child; no memory involved.
    unsafe {
        libc::kill(pid, signal);
    }
}

pub use hookrelay_harness::free_port;

/// `truncated_bytes` of every "log opened" line of the log crate, by log directory.
pub fn recovery_cuts(stderr: &str) -> Vec<(String, u64)> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["message"] == "log opened" && v["dir"].is_string())
        .map(|v| {
            (
                v["dir"].as_str().unwrap_or_default().to_string(),
                v["truncated_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Lines at level WARN or ERROR (or panics), for the scenario's notes.
pub fn problem_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("\"level\":\"ERROR\"")
                || l.contains("\"level\":\"WARN\"")
                || l.contains("panicked")
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recovery_cuts() {
        let log = r#"{"message":"log opened","dir":"/d/shards/000/log","truncated_bytes":17}
{"message":"log opened","shard":0,"truncated_bytes":17}
not json"#;
        assert_eq!(recovery_cuts(log), vec![("/d/shards/000/log".into(), 17)]);
    }
}
