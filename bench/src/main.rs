//! `hookrelay-bench`: HookRelay's bench suite. Signed open/closed-loop ingest load, a recording
//! receiver, a null server (the ceiling), and the scenarios of SPEC.md "Numbers", each printing
//! a markdown table row and appending a JSON line to a results file.
//!
//! Architecture Invariant: the bench talks to hookrelay over HTTP only (and to its process by
//! PID); it never links the product's crates, so it measures what a user would see.

/// The same allocator as `hookrelay` (mimalloc), so the null server it is compared with and the
/// generator sharing its cores do not pay glibc's malloc where the product does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod hiccup;
mod hist;
mod http1;
mod listen;
mod load;
mod logstats;
mod mgmt;
mod null_server;
mod payload;
mod receiver;
mod report;
mod request;
mod scenarios;
mod server_proc;
mod sign;

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::load::{LoadConfig, Pace};
use crate::payload::BodyTemplate;
use crate::report::{Row, Verdict};
use crate::request::{RequestFactory, Target};
use crate::sign::{Mode, Signer};

#[derive(Parser)]
#[command(
    name = "hookrelay-bench",
    version,
    about = "HookRelay's bench suite: load generator, receiver, null server and scenarios."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Signed ingest load against a running server (open loop at --rate, or --closed).
    Load(LoadArgs),
    /// A receiver that records deliveries and can fail, slow down or hang on purpose.
    Receiver(ReceiverArgs),
    /// A bare hyper server answering 202: the ceiling for ingest on this machine.
    NullServer(NullArgs),
    /// 1,000 req/s stripe for 10 min (--quick: 60 s); passes if ACK p95 <= 250 ms.
    Acceptance(scenarios::acceptance::AcceptanceArgs),
    /// Max sustained fsynced ACKs/s (closed loop), then the null server with the same load.
    MaxIngest(scenarios::max_ingest::MaxIngestArgs),
    /// ACK p50/p99/p99.9 at fixed rates (1k, 5k, 10k req/s).
    Latency(scenarios::latency::LatencyArgs),
    /// Deliveries/s to a local receiver, and passthrough latency at 1k req/s.
    E2e(scenarios::e2e::E2eArgs),
    /// A receiver failing 30% at random: success within the retry policy, nothing unaccounted.
    Flaky(scenarios::flaky::FlakyArgs),
    /// Time back to /readyz after kill -9 with a large log.
    Recovery(scenarios::recovery::RecoveryArgs),
    /// RSS with N vs 100xN stored deliveries, and with a backlog.
    Memory(scenarios::memory::MemoryArgs),
    /// Ingest ACK latency and max ACKs/s with a replica attached, ack = local vs peer.
    Replication(scenarios::replication::ReplicationArgs),
    /// Every scenario; writes the table into BENCHMARKS.md.
    Suite(scenarios::suite::SuiteArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// Ingest URL(s), e.g. http://127.0.0.1:8080/ingest/ep_...; several = round-robin.
    #[arg(long, required = true)]
    target: Vec<String>,
    /// Verification mode to sign with.
    #[arg(long, default_value = "stripe")]
    mode: Mode,
    /// Verification secret (default: the bench's fixed secret for the mode).
    #[arg(long)]
    secret: Option<String>,
    /// Open loop at this many requests per second.
    #[arg(long, conflicts_with = "closed")]
    rate: Option<u64>,
    /// Closed loop: each connection sends as soon as it is answered.
    #[arg(long)]
    closed: bool,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[arg(long, default_value_t = 0)]
    warmup_s: u64,
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Append a JSON line here.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Args)]
struct ReceiverArgs {
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Fraction of attempts answered with --fail-status, at random.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Fraction of attempts never answered.
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// Delay before every answer.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[derive(Args)]
struct NullArgs {
    #[arg(long, default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// Threads (one runtime and one SO_REUSEPORT socket each).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Don't pin thread i to core i (the product pins its shards).
    #[arg(long)]
    no_pin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Load(a) => cmd_load(a),
        Cmd::Receiver(a) => cmd_receiver(a),
        Cmd::NullServer(a) => cmd_null(a),
        Cmd::Acceptance(a) => scenarios::block_on(scenarios::acceptance::run(a)),
        Cmd::MaxIngest(a) => scenarios::block_on(scenarios::max_ingest::run(a)),
        Cmd::Latency(a) => scenarios::block_on(scenarios::latency::run(a)),
        Cmd::E2e(a) => scenarios::block_on(scenarios::e2e::run(a)),
        Cmd::Flaky(a) => scenarios::block_on(scenarios::flaky::run(a)),
        Cmd::Recovery(a) => scenarios::block_on(scenarios::recovery::run(a)),
        Cmd::Memory(a) => scenarios::block_on(scenarios::memory::run(a)),
        Cmd::Replication(a) => scenarios::block_on(scenarios::replication::run(a)),
        Cmd::Suite(a) => scenarios::block_on(scenarios::suite::run(a)),
    };
    match outcome {
        Ok(Verdict::Fail) => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `http://host:port/path` → (address, `host:port`, path).
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{authority} resolves to nothing"))?;
    Ok((addr, authority.to_string(), path))
}

fn cmd_load(a: LoadArgs) -> anyhow::Result<Verdict> {
    let secret = a.secret.unwrap_or_else(|| a.mode.default_secret());
    let mut addr = None;
    let mut host = String::new();
    let mut targets = Vec::new();
    for url in &a.target {
        let (ad, h, path) = parse_url(url)?;
        anyhow::ensure!(
            addr.is_none_or(|x| x == ad),
            "every --target must be on the same server"
        );
        addr = Some(ad);
        host = h;
        targets.push(Target {
            path,
            signer: Signer::new(a.mode, &secret)?,
        });
    }
    let addr = addr.expect("clap requires a target");
    let pace = match (a.rate, a.closed) {
        (Some(rate), false) => Pace::Open { rate },
        (None, true) => Pace::Closed,
        _ => anyhow::bail!("give --rate N (open loop) or --closed"),
    };
    let factory = RequestFactory::new(
        &host,
        targets,
        BodyTemplate::new(a.body_bytes)?,
        request::run_nonce(),
    );
    let cfg = LoadConfig {
        addr,
        factory: Arc::new(factory),
        connections: a.connections,
        threads: a.threads,
        pace,
        duration: Duration::from_secs(a.duration_s),
        warmup: Duration::from_secs(a.warmup_s),
        timeout: Duration::from_millis(a.timeout_ms),
        drain: Duration::from_secs(5),
        max_requests: None,
        record_acks: false,
        progress: (a.duration_s >= 20).then_some(Duration::from_secs(5)),
    };
    let r = load::run(cfg)?;
    println!("{}", r.describe());
    if let Some(path) = a.results {
        let s = r.ack.summary();
        Row {
            scenario: "load".into(),
            load: format!(
                "{:?}, {} conns, {} B, {}",
                r.pace,
                r.connections,
                r.body_bytes,
                a.target.join(" ")
            ),
            result: format!("{:.0} 2xx/s; {}", r.ok_per_s(), s.line()),
            target: "-".into(),
            verdict: Verdict::Info,
            metrics: json!({"ok_per_s": r.ok_per_s(), "ack": s, "errors": r.errors_line()}),
        }
        // The target may be any server (a null server, another build): no commit to name.
        .emit(&path, "n/a")?;
    }
    Ok(Verdict::Info)
}

fn cmd_receiver(a: ReceiverArgs) -> anyhow::Result<Verdict> {
    let r = receiver::Receiver::start(
        a.listen,
        a.threads,
        receiver::Behaviour {
            fail_rate: a.fail_rate,
            fail_status: a.fail_status,
            hang_rate: a.hang_rate,
            delay: Duration::from_millis(a.delay_ms),
            record_ids: true,
        },
    )?;
    eprintln!("receiver listening on http://{}", r.addr());
    let book = r.book().clone();
    let mut last = (0u64, 0u64);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = (
            book.requests.load(std::sync::atomic::Ordering::Relaxed),
            book.succeeded.load(std::sync::atomic::Ordering::Relaxed),
        );
        if now != last {
            eprintln!(
                "{} requests/s, {} succeeded/s (total {} requests, {} deliveries succeeded)",
                now.0 - last.0,
                now.1 - last.1,
                now.0,
                book.delivered()
            );
            last = now;
        }
    }
}

fn cmd_null(a: NullArgs) -> anyhow::Result<Verdict> {
    let group = null_server::start(a.listen, a.threads, !a.no_pin)?;
    eprintln!(
        "null server listening on http://{} ({} threads)",
        group.addr(),
        a.threads
    );
    group.join();
    Ok(Verdict::Info)
}
