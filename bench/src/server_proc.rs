//! Runs `hookrelay serve` as a child process for a scenario: a temporary run directory (data
//! dir and captured logs), a free port, the operator key and private destinations allowed
//! through the environment; readiness, kill -9, restart, RSS. Dropping it kills the process
//! (by PID) and removes the run directory unless asked to keep it.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mgmt::Api;

/// How long a start may take to answer 200 on `/readyz` (recovery of a large log included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long SIGTERM may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Readiness polling interval: the recovery scenario's resolution.
const READY_POLL: Duration = Duration::from_millis(10);
/// The operator key set through `HOOKRELAY_ROOT_KEY`.
pub const ROOT_KEY: &str = "hr_root_benchoperatorkey0123456789abcdef";

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub bin: PathBuf,
    pub shards: usize,
    /// Where run directories go (default: the system temp dir).
    pub data_root: Option<PathBuf>,
    /// Keep the run directory at the end.
    pub keep_data: bool,
    /// Extra environment, set last.
    pub env: Vec<(String, String)>,
}

/// A running (or killed) hookrelay.
pub struct ServerProc {
    opts: ServerOptions,
    child: Option<Child>,
    port: u16,
    run_dir: PathBuf,
    data_dir: PathBuf,
    api: Api,
    starts: u32,
}

impl ServerProc {
    /// Starts the server and waits for `/readyz`.
    pub async fn start(opts: ServerOptions) -> anyhow::Result<Self> {
        let mut server = Self::prepare(opts)?;
        server.spawn()?;
        server.wait_ready(READY_TIMEOUT).await?;
        Ok(server)
    }

    /// Starts the server and waits for `/healthz` only: for a node that is up but answers
    /// `/readyz` 503 by design (a replication replica).
    pub async fn start_healthy(opts: ServerOptions) -> anyhow::Result<Self> {
        let mut server = Self::prepare(opts)?;
        server.spawn()?;
        server.wait_healthy(READY_TIMEOUT).await?;
        Ok(server)
    }

    /// The run directory and port of a server not started yet.
    fn prepare(opts: ServerOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            opts.bin.exists(),
            "no hookrelay binary at {} (build it with `cargo build --release -p hookrelay-api`, or pass --bin)",
            opts.bin.display()
        );
        let root = opts.data_root.clone().unwrap_or_else(std::env::temp_dir);
        let run_dir = root.join(format!(
            "hookrelay-bench-{}-{}",
            std::process::id(),
            crate::request::run_nonce()
        ));
        fs::create_dir_all(&run_dir)?;
        let port = free_port()?;
        Ok(Self {
            data_dir: run_dir.join("data"),
            run_dir,
            port,
            api: Api::new(SocketAddr::from(([127, 0, 0, 1], port))),
            child: None,
            opts,
            starts: 0,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (again, on the same data dir and port); does not wait.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the server is already running");
        self.starts += 1;
        let log = |name: &str| -> anyhow::Result<File> {
            Ok(fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.run_dir.join(name))?)
        };
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr().to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--shards")
            .arg(self.opts.shards.to_string());
        // The caller's HOOKRELAY_* settings must not leak into the server under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOOKRELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOOKRELAY_ROOT_KEY", ROOT_KEY)
            .env("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "true");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?);
        // SAFETY: prctl is async-signal-safe; the kernel kills the server if the bench dies
        // without running Drop, so no server outlives its run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawning {}: {e}", self.opts.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `/readyz` until 200; answers how long that took from now.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_status("/readyz", "ready", timeout).await
    }

    /// Polls `/healthz` until 200 (the process is up, ready or not); answers how long that
    /// took from now.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_status("/healthz", "healthy", timeout).await
    }

    /// Polls `path` until 200; `what` names that state in errors.
    async fn wait_status(
        &mut self,
        path: &str,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            if let Ok(200) = self.api.status(path).await {
                return Ok(t0.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                anyhow::bail!(
                    "hookrelay exited ({status}) before it was {what}\n{}",
                    self.log_tail()
                );
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "hookrelay not {what} within {timeout:?}\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// SIGKILL and reap; no-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the process outlives [`STOP_TIMEOUT`].
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("hookrelay did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Resident memory of the process, with its anonymous and file-backed parts.
    pub fn rss(&self) -> anyhow::Result<Rss> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("the server is not running"))?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        Rss::parse(&status).ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
    }

    /// Bytes stored under the data dir.
    pub fn data_bytes(&self) -> u64 {
        dir_bytes(&self.data_dir)
    }

    /// The last lines of the server's stderr and stdout.
    pub fn log_tail(&self) -> String {
        let tail = |name: &str| {
            let text = fs::read_to_string(self.run_dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- {} stderr (tail) ---\n{}\n--- stdout (tail) ---\n{}",
            self.run_dir.display(),
            tail("stderr.log"),
            tail("stdout.log")
        )
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
        if self.opts.keep_data {
            eprintln!("kept the run directory {}", self.run_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// CPU time (user + system, every thread) the process `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat`. `None` when the process is gone or the file does not parse.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may itself hold spaces and parentheses: fields are counted after the
/// last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (the state): utime is the 12th field of it, stime the 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory from /proc/<pid>/status, in KiB: VmRSS and its anonymous (heap, stacks) and
/// file-backed (mapped files, e.g. mmapped log segments) parts.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Rss {
    pub total_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

impl Rss {
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some(Self {
            total_kib: field("VmRSS:")?,
            anon_kib: field("RssAnon:").unwrap_or(0),
            file_kib: field("RssFile:").unwrap_or(0),
        })
    }

    /// `123 MiB (anon 100)`.
    pub fn text(&self) -> String {
        format!(
            "{:.0} MiB (anon {:.0})",
            mib(self.total_kib),
            mib(self.anon_kib)
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub use hookrelay_harness::free_port;

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let r = Rss::parse("Name:\tx\nVmHWM:\t  900 kB\nVmRSS:\t  1234 kB\nRssAnon:\t 1000 kB\nRssFile:\t 200 kB\n").unwrap();
        assert_eq!((r.total_kib, r.anon_kib, r.file_kib), (1234, 1000, 200));
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(Rss::parse(&own).unwrap().total_kib > 0);
        assert!(Rss::parse("Name: x\n").is_none());
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let line = "4242 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 20 0 1 0";
        assert_eq!(parse_cpu_ticks(line), Some(333));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        // This very process has used some CPU by now, and the reading only grows.
        let before = cpu_seconds(std::process::id()).unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(std::process::id()).unwrap() >= before);
    }
}
