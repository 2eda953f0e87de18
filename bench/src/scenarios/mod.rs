//! The scenarios of SPEC.md "Numbers". Each starts its own hookrelay (temporary data dir, free
//! port) and its own receiver, runs, tears both down, prints one markdown row and appends one
//! JSON line to the results file. What they share lives here: the common flags and the test
//! bed (server + receiver + tenant + endpoints).

pub mod acceptance;
pub mod e2e;
pub mod flaky;
pub mod latency;
pub mod max_ingest;
pub mod memory;
pub mod recovery;
pub mod replication;
pub mod suite;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

use crate::hist::LatencyHist;
use crate::load::{self, Ack, LoadConfig, LoadResult, Pace};
use crate::mgmt::EndpointInfo;
use crate::payload::BodyTemplate;
use crate::receiver::{Behaviour, Book, Receiver};
use crate::report::{Row, Verdict};
use crate::request::{self, RequestFactory, Target};
use crate::server_proc::{self, ServerOptions, ServerProc};
use crate::sign::{Mode, Signer};

/// Per-request timeout of scenario loads.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long late open-loop requests may still go out after a run.
const DRAIN: Duration = Duration::from_secs(10);
/// The longest any smoke phase runs.
pub const SMOKE_PHASE_MAX: Duration = Duration::from_secs(5);

/// Flags every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The hookrelay binary [default: <workspace>/target/release/hookrelay].
    #[arg(long, env = "HOOKRELAY_BENCH_BIN")]
    pub bin: Option<PathBuf>,
    /// `--shards` passed to hookrelay.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Append one JSON line per scenario here.
    #[arg(long, default_value = "bench-results.jsonl")]
    pub results: PathBuf,
    /// Shorter runs (minutes, not tens of minutes).
    #[arg(long)]
    pub quick: bool,
    /// CI smoke: every phase at most a few seconds; verdicts check completion and delivery,
    /// not timings.
    #[arg(long)]
    pub smoke: bool,
    /// Verification mode of the endpoints.
    #[arg(long, default_value = "stripe")]
    pub mode: Mode,
    /// Distinct endpoints the load is spread over (round-robin).
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// Ingest body size.
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Load generator threads (they share the cores with the server).
    #[arg(long, default_value_t = 2)]
    pub gen_threads: usize,
    /// Receiver threads.
    #[arg(long, default_value_t = 1)]
    pub receiver_threads: usize,
    /// Where run directories go [default: the system temp dir].
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Keep the server's run directory (data and logs).
    #[arg(long)]
    pub keep_data: bool,
    /// Extra environment for the server, KEY=VALUE (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    pub server_env: Vec<String>,
}

impl Common {
    /// The hookrelay binary to run.
    pub fn bin(&self) -> PathBuf {
        self.bin
            .clone()
            .unwrap_or_else(|| workspace_root().join("target/release/hookrelay"))
    }

    pub fn server_options(&self) -> anyhow::Result<ServerOptions> {
        let env = self
            .server_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--server-env wants KEY=VALUE, got {kv:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ServerOptions {
            bin: self.bin(),
            shards: self.shards,
            data_root: self.data_root.clone(),
            keep_data: self.keep_data,
            env,
        })
    }

    /// Picks the duration of a phase: the explicit one, else smoke/quick/full defaults. Smoke
    /// caps every phase at [`SMOKE_PHASE_MAX`] unless given explicitly.
    pub fn duration(&self, explicit_s: Option<u64>, full_s: u64, quick_s: u64) -> Duration {
        match explicit_s {
            Some(s) => Duration::from_secs(s),
            None if self.smoke => SMOKE_PHASE_MAX.min(Duration::from_secs(quick_s)),
            None if self.quick => Duration::from_secs(quick_s),
            None => Duration::from_secs(full_s),
        }
    }

    /// A short description of the server setup for the table's Load column.
    pub fn setup_line(&self) -> String {
        let eps = if self.endpoints == 1 {
            String::new()
        } else {
            format!(", {} endpoints", self.endpoints)
        };
        format!(
            "{}, {} B{eps}, {} shards",
            self.mode, self.body_bytes, self.shards
        )
    }
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs a scenario on a small control-plane runtime. The load itself runs on its own threads.
pub fn block_on<F: Future<Output = anyhow::Result<Verdict>>>(fut: F) -> anyhow::Result<Verdict> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-control")
        .enable_all()
        .build()?
        .block_on(fut)
}

/// Prints and records a scenario's row; answers its verdict.
pub fn emit(common: &Common, row: &Row) -> anyhow::Result<Verdict> {
    row.emit(&common.results, &crate::report::build_commit(&common.bin()))?;
    Ok(row.verdict)
}

/// Where the endpoints of a bed send.
#[derive(Clone, Debug)]
pub enum Destination {
    /// The bed's own receiver.
    Receiver(Behaviour),
    /// A port nobody listens on: every attempt fails to connect.
    Dead,
}

/// How to set up a bed.
#[derive(Clone, Debug)]
pub struct BedOptions {
    pub destination: Destination,
    /// The endpoint's `retry` object (contract defaults when `None`).
    pub retry: Option<Value>,
    pub max_in_flight: u32,
    /// Pause the endpoints after creating them (ingest only, nothing delivered).
    pub paused: bool,
}

impl Default for BedOptions {
    fn default() -> Self {
        Self {
            destination: Destination::Receiver(Behaviour::default()),
            retry: None,
            max_in_flight: 256,
            paused: false,
        }
    }
}

/// A scenario's world: a hookrelay, maybe a receiver, a tenant and its endpoints.
pub struct Bed {
    pub server: ServerProc,
    pub receiver: Option<Receiver>,
    pub admin_key: String,
    pub endpoints: Vec<EndpointInfo>,
    pub mode: Mode,
    pub body_bytes: usize,
}

impl Bed {
    pub async fn start(common: &Common, opts: BedOptions) -> anyhow::Result<Self> {
        let receiver = match &opts.destination {
            Destination::Receiver(b) => Some(Receiver::start(
                "127.0.0.1:0".parse().expect("literal address"),
                common.receiver_threads,
                b.clone(),
            )?),
            Destination::Dead => None,
        };
        let server = ServerProc::start(common.server_options()?).await?;
        let api = server.api().clone();
        let admin_key = api.create_tenant(server_proc::ROOT_KEY, "bench").await?;
        let mut bed = Self {
            server,
            receiver,
            admin_key,
            endpoints: Vec::new(),
            mode: common.mode,
            body_bytes: common.body_bytes,
        };
        for _ in 0..common.endpoints.max(1) {
            let ep = bed.add_endpoint(&opts).await?;
            bed.endpoints.push(ep);
        }
        Ok(bed)
    }

    /// Creates one more endpoint (not added to `endpoints`).
    pub async fn add_endpoint(&self, opts: &BedOptions) -> anyhow::Result<EndpointInfo> {
        let destination = match (&opts.destination, &self.receiver) {
            (Destination::Receiver(_), Some(r)) => format!("http://{}/hooks", r.addr()),
            (Destination::Receiver(_), None) => anyhow::bail!("this bed has no receiver"),
            (Destination::Dead, _) => {
                format!("http://127.0.0.1:{}/hooks", server_proc::free_port()?)
            }
        };
        let mut spec = json!({
            "name": "bench",
            "destination_url": destination,
            "verification": {"mode": self.mode.as_str(), "secret": self.mode.default_secret()},
            "max_in_flight": opts.max_in_flight,
        });
        if let Some(retry) = &opts.retry {
            spec["retry"] = retry.clone();
        }
        let api = self.server.api();
        let mut ep = api.create_endpoint(&self.admin_key, &spec).await?;
        if ep.secret.is_empty() {
            ep.secret = self.mode.default_secret();
        }
        if opts.paused {
            api.pause(&self.admin_key, &ep.id).await?;
        }
        Ok(ep)
    }

    pub fn book(&self) -> Option<&Arc<Book>> {
        self.receiver.as_ref().map(Receiver::book)
    }

    /// A request factory spreading requests over `endpoints`.
    pub fn factory(&self, endpoints: &[EndpointInfo]) -> anyhow::Result<Arc<RequestFactory>> {
        factory_for(self.server.addr(), self.mode, endpoints, self.body_bytes)
    }

    /// A load against this bed's endpoints.
    pub fn load(
        &self,
        common: &Common,
        pace: Pace,
        duration: Duration,
        connections: usize,
    ) -> anyhow::Result<LoadConfig> {
        Ok(load_config(
            self.server.addr(),
            self.factory(&self.endpoints)?,
            common,
            pace,
            duration,
            connections,
        ))
    }

    /// Stops the server (SIGTERM, bounded) and the receiver.
    pub async fn stop(mut self) {
        self.server.stop().await;
        if let Some(r) = self.receiver.take() {
            r.stop();
        }
    }
}

pub fn factory_for(
    addr: SocketAddr,
    mode: Mode,
    endpoints: &[EndpointInfo],
    body_bytes: usize,
) -> anyhow::Result<Arc<RequestFactory>> {
    let targets = endpoints
        .iter()
        .map(|ep| {
            Ok(Target {
                path: format!("/ingest/{}", ep.id),
                signer: Signer::new(mode, &ep.secret)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(RequestFactory::new(
        &addr.to_string(),
        targets,
        BodyTemplate::new(body_bytes)?,
        request::run_nonce(),
    )))
}

pub fn load_config(
    addr: SocketAddr,
    factory: Arc<RequestFactory>,
    common: &Common,
    pace: Pace,
    duration: Duration,
    connections: usize,
) -> LoadConfig {
    LoadConfig {
        addr,
        factory,
        connections,
        threads: common.gen_threads,
        pace,
        duration,
        warmup: Duration::ZERO,
        timeout: REQUEST_TIMEOUT,
        drain: DRAIN,
        max_requests: None,
        record_acks: true,
        progress: (duration >= Duration::from_secs(30)).then_some(Duration::from_secs(10)),
    }
}

/// Runs a load off the control runtime.
pub async fn run_load(cfg: LoadConfig) -> anyhow::Result<LoadResult> {
    tokio::task::spawn_blocking(move || load::run(cfg)).await?
}

/// Where the acknowledged deliveries of a run stand at the receiver.
pub struct DeliveryCheck {
    pub acked: usize,
    pub delivered: usize,
    /// Some of the acknowledged deliveries that never arrived (at most 10).
    pub missing_sample: Vec<String>,
    /// Ingest send → first successful arrival, per delivered ack.
    pub latency: LatencyHist,
    /// First and last successful arrival among the acks.
    pub span: Option<(Instant, Instant)>,
    /// How long the check waited for the last arrivals.
    pub waited: Duration,
}

impl DeliveryCheck {
    pub fn all_delivered(&self) -> bool {
        self.delivered == self.acked
    }
}

/// Waits (up to `timeout`) until every ack has arrived at the receiver, then measures.
pub async fn check_delivered(book: &Book, acks: &[Ack], timeout: Duration) -> DeliveryCheck {
    let t0 = Instant::now();
    // Poll on the first not-yet-delivered ack; acks arrive roughly in order.
    let mut cursor = 0;
    while cursor < acks.len() && t0.elapsed() < timeout {
        match book.get(&acks[cursor].delivery_id) {
            Some(a) if a.success.is_some() => cursor += 1,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut latency = LatencyHist::new();
    let mut delivered = 0;
    let mut missing_sample = Vec::new();
    let mut span: Option<(Instant, Instant)> = None;
    for ack in acks {
        match book.get(&ack.delivery_id).and_then(|a| a.success) {
            Some(at) => {
                delivered += 1;
                latency.record(at.saturating_duration_since(ack.sent));
                span = Some(match span {
                    None => (at, at),
                    Some((a, b)) => (a.min(at), b.max(at)),
                });
            }
            None => {
                if missing_sample.len() < 10 {
                    missing_sample.push(ack.delivery_id.to_string());
                }
            }
        }
    }
    DeliveryCheck {
        acked: acks.len(),
        delivered,
        missing_sample,
        latency,
        span,
        waited: t0.elapsed(),
    }
}

/// A row for a scenario that could not run.
pub fn error_row(scenario: &str, e: &anyhow::Error) -> Row {
    let first = format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .replace('|', "/");
    Row {
        scenario: scenario.into(),
        load: "-".into(),
        result: format!("error: {first}"),
        target: "-".into(),
        verdict: Verdict::Fail,
        metrics: json!({"error": format!("{e:#}")}),
    }
}

/// Milliseconds, formatted for tables.
pub fn ms(v: f64) -> String {
    crate::hist::fmt_ms(v)
}

/// A null server (this binary's `null-server`) run as a child process, as hookrelay is, so both
/// share the cores with the generator the same way. Killed when dropped.
pub struct NullChild {
    child: std::process::Child,
    addr: SocketAddr,
}

impl NullChild {
    /// Starts one with `threads` threads on a free loopback port and waits until it accepts.
    pub async fn start(threads: usize) -> anyhow::Result<NullChild> {
        let port = crate::server_proc::free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "null-server",
                "--listen",
                &addr.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut null = NullChild { child, addr };
        let t0 = std::time::Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "the null server did not start"
            );
            if let Ok(Some(status)) = null.child.try_wait() {
                anyhow::bail!("the null server exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(null)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NullChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
