//! s3-outage: HookRelay's DLQ is a bucket of a real S3-compatible server (s3s-fs, installed by
//! `scripts/s3-server`), and the receiver never succeeds, so every delivery ends in the DLQ
//! (half `failed` by a 400, half `exhausted` by 503s). Mid-load the S3 server is killed; load
//! goes on, shipping backs off and the backlog grows; then the server comes back. Every ACKed
//! delivery must end up as an object in the bucket: lost = 0.
//!
//! The bucket is named `dlq` and s3s-fs keeps objects as files under `<root>/dlq/`, so the
//! ledger counts dead letters by scanning `<root>` exactly as it scans a data dir.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::Http;
use crate::ledger::{self, Policy};
use crate::load::Load;
use crate::receiver::Action;
use crate::rng::hash_str;
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture, endpoint_spec};
use crate::server::{free_port, problem_lines};

pub const SCENARIO: Scenario = Scenario {
    name: "s3-outage",
    about: "the S3 DLQ store goes down mid-load and comes back; every failure ends up in the bucket",
    needs_root: false,
    budget_quick: Duration::from_secs(60),
    budget_full: Duration::from_secs(180),
    run: start,
};

/// The bucket; also the directory the ledger scans under the s3s-fs root.
const BUCKET: &str = "dlq";
const ACCESS_KEY: &str = "hookrelay-chaos";
const SECRET_KEY: &str = "hookrelay-chaos-secret";
const MAX_ATTEMPTS: u64 = 2;

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

/// Where s3s-fs is: `$HOOKRELAY_S3S_FS`, else `<repo>/target/tools/bin/s3s-fs`.
fn s3s_fs_path() -> PathBuf {
    match std::env::var_os("HOOKRELAY_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/s3s-fs"),
    }
}

/// s3s-fs on a fixed port and root, stopped and started again at will.
struct S3Server {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl S3Server {
    async fn start(bin: PathBuf, dir: &Path) -> anyhow::Result<S3Server> {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(BUCKET)).context("creating the bucket")?;
        let mut s = S3Server {
            bin,
            root,
            port: free_port()?,
            log: dir.join("s3s-fs.log"),
            child: None,
        };
        s.start_again().await?;
        Ok(s)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start_again(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("s3s-fs exited during start-up: {status}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("s3s-fs did not listen on port {} within 20 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of an unlabelled series of `/metrics`.
async fn metric(http: &Http, name: &str) -> Option<f64> {
    let r = http.get("/metrics", None).await.ok()?;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let bin = s3s_fs_path();
    if !bin.is_file() {
        // A missing test server is a failure, never a skip: CI must run this.
        out.failures.push(format!(
            "the S3-compatible server is missing at {}: run `scripts/s3-server install` \
             (scripts/test does) or set HOOKRELAY_S3S_FS",
            bin.display()
        ));
        return Ok(out);
    }
    let mut s3 = S3Server::start(bin, &ctx.dir).await?;
    let seed = ctx.seed;
    let env = [
        ("HOOKRELAY_DLQ_BACKEND", "s3"),
        ("HOOKRELAY_DLQ_BUCKET", BUCKET),
        ("HOOKRELAY_DLQ_PREFIX", "chaos/"),
        ("HOOKRELAY_DLQ_ENDPOINT_URL", &s3.url()),
        ("HOOKRELAY_DLQ_FORCE_PATH_STYLE", "true"),
        ("HOOKRELAY_DLQ_REGION", "us-east-1"),
        // Back off at most 1 s, so shipping resumes within a second of the store's return.
        ("HOOKRELAY_DLQ_RETRY_MAX_DELAY_MS", "1000"),
        ("HOOKRELAY_DLQ_MAX_CONCURRENT_PUTS", "4"),
        // The receiver never succeeds: an open circuit would let through one probe a second
        // and hold the rest queued, far from the DLQ. Keep it closed.
        ("HOOKRELAY_DELIVERY_CIRCUIT_FAILURES_TO_OPEN", "1000000"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut endpoint = endpoint_spec();
    endpoint["retry"]["max_attempts"] = MAX_ATTEMPTS.into();
    endpoint["retry"]["base_delay_ms"] = 100.into();
    let rig = Rig::start(
        ctx,
        RigOptions {
            env,
            endpoint,
            // Never a success: half the deliveries fail at once, half are exhausted.
            policy: Arc::new(move |id: &str, _attempt: u32| {
                if hash_str(seed, id).is_multiple_of(2) {
                    Action::status(400)
                } else {
                    Action::status(503)
                }
            }),
            ..RigOptions::default()
        },
    )
    .await?;
    let http = Http::new(rig.server.base_url(), 1, Duration::from_secs(5));

    let mut spec = rig.load_spec(&format!("s3o-{seed}"));
    spec.concurrency = 8;
    spec.requests_max = ctx.pick(400, 5_000);
    spec.duration_max = Duration::from_secs(ctx.pick(6, 30));
    spec.rate_per_s = Some(ctx.pick(100.0, 200.0));
    let load = Load::start(spec);
    let down_after = Duration::from_millis(ctx.rng.range(1_000, ctx.pick(2_500, 8_000)));
    tokio::time::sleep(down_after).await;
    s3.stop();
    let down_at = Instant::now();
    let stats = load.wait().await;
    out.note(format!(
        "S3 down after {} ms of load; ingest answers {}; {} ACKed",
        down_after.as_millis(),
        stats.summary(),
        stats.acked.len()
    ));
    if stats.acked.is_empty() {
        out.failures
            .push(format!("nothing was ACKed: {:?}", stats.examples));
    }
    // Let the outage last a little past the load, so shipping is seen backing off.
    let outage = Duration::from_secs(ctx.pick(3, 10));
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let failures = metric(&http, "hookrelay_dlq_ship_failures_total").await;
    let backlog = metric(&http, "hookrelay_dlq_backlog").await;
    let age = metric(&http, "hookrelay_dlq_backlog_oldest_age_seconds").await;
    out.note(format!(
        "during the outage ({} ms): ship failures {failures:?}, backlog {backlog:?}, oldest {age:?} s",
        down_at.elapsed().as_millis()
    ));
    if failures.unwrap_or(0.0) < 1.0 || backlog.unwrap_or(0.0) < 1.0 {
        out.failures.push(format!(
            "the outage went unnoticed: ship failures {failures:?}, backlog {backlog:?}"
        ));
    }
    s3.start_again().await?;
    out.note("S3 back");

    let acked: BTreeSet<String> = stats.acked;
    let tally = ledger::settle(
        &rig.api,
        &acked,
        &rig.receiver,
        &s3.root,
        Duration::from_secs(ctx.pick(30, 90)),
        Policy {
            max_attempts: Some(MAX_ATTEMPTS),
        },
    )
    .await;
    // The object is stored a moment before its shipment is recorded and leaves the backlog.
    let drained_by = Instant::now() + Duration::from_secs(10);
    let mut backlog = metric(&http, "hookrelay_dlq_backlog").await;
    while backlog != Some(0.0) && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(200)).await;
        backlog = metric(&http, "hookrelay_dlq_backlog").await;
    }
    let shipped = metric(&http, "hookrelay_dlq_shipped_total").await;
    out.note(format!("after: shipped {shipped:?}, backlog {backlog:?}"));
    if backlog != Some(0.0) {
        out.failures.push(format!(
            "the DLQ backlog did not drain after the outage: {backlog:?}"
        ));
    }
    for line in problem_lines(&rig.server.stderr()).iter().take(3) {
        out.note(format!("server log: {line}"));
    }
    out.tally = tally;
    Ok(out)
}
