//! Runs the real `hookrelay` binary as a child process.
//!
//! Each [`Server`] owns a temporary directory holding its data dir (unless one is given), its
//! config file and its captured output (`stdout.log`, `stderr.log`, appended across restarts).
//! When a test panics while a server is alive, dropping the server prints the tail of both logs
//! and keeps the directory on disk for a post-mortem.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::api::Api;
use crate::http::Http;

/// How long a start (or restart) may take to answer 200 on `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long SIGTERM may take: the contract's 30 s, plus slack for a loaded test machine.
pub const SIGTERM_TIMEOUT: Duration = Duration::from_secs(35);

/// Log lines printed per stream when a test fails.
pub const LOG_TAIL_LINES: usize = 60;

/// The operator key the harness sets through `HOOKRELAY_ROOT_KEY` by default.
pub const TEST_ROOT_KEY: &str = "hr_root_e2etestoperatorkey0123456789abcdef";

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--shards`.
    pub shards: usize,
    /// `HOOKRELAY_ROOT_KEY`; `None` leaves it unset so the binary generates and prints one.
    pub root_key: Option<String>,
    /// `HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS=true`, needed to deliver to 127.0.0.1.
    pub allow_private_destinations: bool,
    /// Extra environment variables, set last (they win).
    pub env: Vec<(String, String)>,
    /// Written to a file passed with `--config`.
    pub config_toml: Option<String>,
    /// Use this data dir instead of a fresh one.
    pub data_dir: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            shards: 2,
            root_key: Some(TEST_ROOT_KEY.to_string()),
            allow_private_destinations: true,
            env: Vec::new(),
            config_toml: None,
            data_dir: None,
        }
    }
}

impl ServerOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }

    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    pub fn without_root_key(mut self) -> Self {
        self.root_key = None;
        self
    }

    pub fn deny_private_destinations(mut self) -> Self {
        self.allow_private_destinations = false;
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
}

/// A running (or deliberately stopped) `hookrelay serve`.
pub struct Server {
    child: Option<Child>,
    port: u16,
    opts: ServerOptions,
    /// Logs, config and (by default) data live here. `None` once kept for a post-mortem.
    dir: Option<TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    starts: u32,
    http: Http,
}

impl Server {
    /// Starts the binary and waits for `/readyz`; panics (with the log tail) if it does not
    /// become ready within [`READY_TIMEOUT`].
    pub async fn start(opts: ServerOptions) -> Self {
        let mut server = Self::start_unwaited(opts);
        server.wait_ready().await;
        server
    }

    /// Starts the binary and waits only for `/healthz` (the process is up), not `/readyz`: a
    /// replica, or a primary whose `ack = "peer"` has no peer, is up but never ready.
    pub async fn start_healthy(opts: ServerOptions) -> Self {
        let mut server = Self::start_unwaited(opts);
        server.wait_ok("/healthz").await;
        server
    }

    /// Starts the binary without waiting for anything: the caller polls what it needs.
    fn start_unwaited(opts: ServerOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hookrelay-e2e-")
            .tempdir()
            .expect("creating a temp dir");
        let root = dir.path().to_path_buf();
        let data_dir = opts.data_dir.clone().unwrap_or_else(|| root.join("data"));
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            opts,
            dir: Some(dir),
            root,
            data_dir,
            starts: 0,
            http: Http::new(format!("http://127.0.0.1:{port}")),
        };
        server.spawn();
        server
    }

    /// Starts with [`ServerOptions::default`].
    pub async fn start_default() -> Self {
        Self::start(ServerOptions::default()).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.http.url(path)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn http(&self) -> Http {
        self.http.clone()
    }

    /// The management API, with the operator key the server was started with (if set).
    pub fn api(&self) -> Api {
        Api::new(self.http.clone(), self.opts.root_key.clone())
    }

    /// The operator key set through the environment, if any.
    pub fn root_key(&self) -> Option<&str> {
        self.opts.root_key.as_deref()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the binary wrote to stdout, across restarts.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.root.join("stdout.log")).unwrap_or_default()
    }

    /// Everything the binary wrote to stderr, across restarts.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default()
    }

    /// The last lines of both logs, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- hookrelay stdout (last {LOG_TAIL_LINES} lines, {}) ---\n{}\n--- hookrelay stderr (last {LOG_TAIL_LINES} lines) ---\n{}",
            self.root.display(),
            tail(&self.stdout(), LOG_TAIL_LINES),
            tail(&self.stderr(), LOG_TAIL_LINES)
        )
    }

    /// SIGKILL, then reap. No-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit; panics if the process outlives [`SIGTERM_TIMEOUT`].
    pub async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("sigterm: the server is not running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + SIGTERM_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for hookrelay") {
                return status;
            }
            if Instant::now() >= deadline {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
                panic!("hookrelay did not exit within {SIGTERM_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts again on the same data dir and port (kill -9 first if still running) and waits
    /// for `/readyz`.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    /// Like [`Server::restart`], but waits only for `/healthz` (see [`Server::start_healthy`]).
    pub async fn restart_healthy(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ok("/healthz").await;
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn: a child is already running");
        self.starts += 1;
        let bin = binary_path();
        let stdout = self.open_log("stdout.log");
        let stderr = self.open_log("stderr.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--shards")
            .arg(self.opts.shards.to_string());
        if let Some(toml) = &self.opts.config_toml {
            let path = self.root.join("hookrelay.toml");
            fs::write(&path, toml).expect("writing the config file");
            cmd.arg("--config").arg(path);
        }
        // The test process's own HOOKRELAY_* settings (HOOKRELAY_BIN, a developer's shell)
        // must not leak into the server under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOOKRELAY_") {
                cmd.env_remove(key);
            }
        }
        // A panic's message and location fit in the log tail; a full backtrace would push them
        // out of it. A test that wants one sets RUST_BACKTRACE through `ServerOptions::env`.
        cmd.env("RUST_BACKTRACE", "0");
        if let Some(key) = &self.opts.root_key {
            cmd.env("HOOKRELAY_ROOT_KEY", key);
        }
        if self.opts.allow_private_destinations {
            cmd.env("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "true");
        }
        for (key, value) in &self.opts.env {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill the server if the test
        // process dies without running Drop (e.g. a timed-out CI job), so no server outlives it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        self.child = Some(child);
    }

    fn open_log(&self, name: &str) -> File {
        let path = self.root.join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        if name == "stderr.log" {
            // Only in stderr: stdout is checked for what the binary itself prints.
            let _ = writeln!(file, "=== harness: start #{} ===", self.starts);
        }
        file
    }

    async fn wait_ready(&mut self) {
        self.wait_ok("/readyz").await;
    }

    /// Polls `GET path` until it answers 200; panics if the process exits or [`READY_TIMEOUT`]
    /// passes.
    async fn wait_ok(&mut self, path: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                // The log tail follows: Drop prints it while this panic unwinds.
                panic!("hookrelay exited during start-up ({status})");
            }
            if let Ok(response) = self
                .http
                .try_send(hyper::Method::GET, path, bytes::Bytes::new(), &[])
                .await
                && response.status == 200
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "hookrelay did not answer 200 on {path} within {READY_TIMEOUT:?} (127.0.0.1:{})",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
            if let Some(dir) = self.dir.take() {
                eprintln!("(server dir kept for inspection: {})", dir.keep().display());
            }
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // The pid is still ours: the child has not been reaped (reaping takes `self.child`).
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid we own; no memory is involved.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A free loopback port ([`hookrelay_harness::free_port`]); panics when none can be had.
pub fn free_port() -> u16 {
    hookrelay_harness::free_port().expect("binding 127.0.0.1 to find a free port")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the binary is: `$HOOKRELAY_BIN`, else `$CARGO_TARGET_DIR/debug/hookrelay`, else next to
/// this test executable (`<target>/debug/deps/..`), else `<workspace>/target/debug/hookrelay`.
/// Panics with how to build it when none exists.
pub fn binary_path() -> PathBuf {
    let path = locate_binary(
        std::env::var_os("HOOKRELAY_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        std::env::current_exe().ok(),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert!(
        path.is_file(),
        "hookrelay binary not found at {}: build it first: cargo build -p hookrelay-api (or set HOOKRELAY_BIN)",
        path.display()
    );
    path
}

fn locate_binary(
    env_bin: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    current_exe: Option<PathBuf>,
    manifest_dir: &Path,
) -> PathBuf {
    let workspace = manifest_dir.parent().unwrap_or(manifest_dir);
    if let Some(bin) = env_bin {
        return bin;
    }
    if let Some(target) = target_dir {
        let target = if target.is_relative() {
            workspace.join(target)
        } else {
            target
        };
        return target.join("debug").join("hookrelay");
    }
    // <target>/debug/deps/<test-exe> -> <target>/debug/hookrelay
    if let Some(beside) = current_exe
        .as_deref()
        .and_then(Path::parent)
        .filter(|deps| deps.ends_with("deps"))
        .and_then(Path::parent)
        .map(|profile| profile.join("hookrelay"))
        .filter(|p| p.is_file())
    {
        return beside;
    }
    workspace.join("target").join("debug").join("hookrelay")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_location_order() {
        let manifest = Path::new("/ws/tests");
        assert_eq!(
            locate_binary(Some("/x/hr".into()), Some("/t".into()), None, manifest),
            PathBuf::from("/x/hr")
        );
        assert_eq!(
            locate_binary(None, Some("/t".into()), None, manifest),
            PathBuf::from("/t/debug/hookrelay")
        );
        assert_eq!(
            locate_binary(None, Some("tgt".into()), None, manifest),
            PathBuf::from("/ws/tgt/debug/hookrelay")
        );
        assert_eq!(
            locate_binary(
                None,
                None,
                Some("/nowhere/debug/deps/e2e-123".into()),
                manifest
            ),
            PathBuf::from("/ws/target/debug/hookrelay")
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
