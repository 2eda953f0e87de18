//! disk-full: the data dir lives on a small tmpfs the suite mounts (root only); under load the
//! suite fills it. Ingest must answer 503 `unavailable` instead of ACKing, nothing ACKed may be
//! lost, and once the space is freed the server should take ingest again without a restart.
//! The scenario reports exactly what the product does at each step.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::http::Http;
use crate::ledger::Policy;
use crate::load::{Load, LoadSpec, LoadStats};
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::server::problem_lines;
use crate::tmpfs::{Tmpfs, is_root};

pub const SCENARIO: Scenario = Scenario {
    name: "disk-full",
    about: "fill the data dir's filesystem (a tmpfs the suite mounts) under load: 503, no loss, recovery",
    needs_root: true,
    budget_quick: Duration::from_secs(90),
    budget_full: Duration::from_secs(180),
    run: start,
};

/// What each shard preallocates at start (state table 40 MiB + one idempotency table 32 MiB,
/// engine/src/state_table.rs and idempotency.rs), plus room for the logs and metadata.
const PER_SHARD_MIB: u64 = 80;
const SPARE_MIB: u64 = 96;
/// Largest filler (the loop ends at ENOSPC long before).
const FILLER_BYTES_MAX: u64 = 64 << 30;

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    if !is_root() {
        return Ok(Outcome::skip(
            "disk-full mounts a tmpfs for the data dir and needs root: run as root (sudo hookrelay-chaos disk-full)",
        ));
    }
    let mount_point = ctx.dir.join("mnt");
    let size_mib = PER_SHARD_MIB * ctx.shards as u64 + SPARE_MIB;
    let fs = match Tmpfs::mount(&mount_point, size_mib) {
        Ok(fs) => fs,
        Err(e) => return Ok(Outcome::skip(format!("cannot mount a tmpfs here: {e:#}"))),
    };
    // The rig (and its server) must go before the mount: declared after it, dropped before it.
    let result = scenario(ctx, &fs).await;
    drop(fs);
    result
}

async fn phase(rig: &Rig, tag: String, secs: u64) -> LoadStats {
    let mut spec: LoadSpec = rig.load_spec(&tag);
    spec.concurrency = 8;
    spec.body_bytes = 2048;
    spec.requests_max = 1_000_000;
    spec.duration_max = Duration::from_secs(secs);
    spec.timeout = Duration::from_secs(5);
    Load::start(spec).wait().await
}

async fn readyz(rig: &Rig) -> String {
    let http = Http::new(rig.server.base_url(), 0, Duration::from_secs(3));
    match http.get("/readyz", None).await {
        Ok(r) => format!("{} {}", r.status, r.text().trim()),
        Err(e) => format!("no answer ({e:#})"),
    }
}

async fn scenario(ctx: &mut Ctx, fs: &Tmpfs) -> anyhow::Result<Outcome> {
    let mut rig = Rig::start(
        ctx,
        RigOptions {
            data_dir: Some(fs.path().join("data")),
            ..RigOptions::default()
        },
    )
    .await?;
    let mut out = Outcome::default();
    let mut acked = BTreeSet::new();
    let seed = ctx.seed;

    let before = phase(&rig, format!("df-{seed}-before"), 2).await;
    out.note(format!("before: ingest answers {}", before.summary()));
    acked.extend(before.acked);

    let filler = fs.path().join("filler");
    let filled = fill(&filler)?;
    out.note(format!(
        "filled the tmpfs (size {} MiB) with a {} MiB file",
        fs.size_mib(),
        filled >> 20
    ));
    let full = phase(&rig, format!("df-{seed}-full"), ctx.pick(4, 8)).await;
    let ready_full = readyz(&rig).await;
    out.note(format!(
        "disk full: ingest answers {} (codes {:?}); /readyz: {ready_full}",
        full.summary(),
        full.codes
    ));
    if !rig.server.is_running() {
        out.failures.push(format!(
            "the server died when the disk filled; stderr tail:\n{}",
            rig.server.stderr_tail(20)
        ));
    }
    let unavailable = full.codes.get("unavailable").copied().unwrap_or(0);
    let other_errors: u64 = full
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s) && **s != 503)
        .map(|(_, n)| n)
        .sum();
    if unavailable == 0 {
        out.gaps.push(format!(
            "with the disk full ingest never answered 503 unavailable (answers: {})",
            full.summary()
        ));
    }
    if other_errors > 0 || full.errors > 0 {
        out.gaps.push(format!(
            "with the disk full ingest also answered {other_errors} non-503 errors and {} dropped/timed-out requests",
            full.errors
        ));
    }
    if !ready_full.starts_with("503") {
        out.gaps.push(format!(
            "/readyz did not report the full disk: {ready_full}"
        ));
    }
    acked.extend(full.acked);

    std::fs::remove_file(&filler)?;
    let freed_at = Instant::now();
    let mut recovered = None;
    let window = Duration::from_secs(ctx.pick(8, 15));
    let mut after = LoadStats::default();
    while freed_at.elapsed() < window && rig.server.is_running() {
        let stats = phase(&rig, format!("df-{seed}-freed-{}", after.sent), 1).await;
        let ok = stats.ok_answers() > 0;
        after.merge(stats);
        if ok {
            recovered = Some(freed_at.elapsed());
            break;
        }
    }
    out.note(format!(
        "space freed: ingest answers {} ; /readyz: {}",
        after.summary(),
        readyz(&rig).await
    ));
    acked.extend(after.acked.iter().cloned());
    match recovered {
        Some(t) => out.note(format!(
            "ingest ACKed again {} ms after the space was freed, without a restart",
            t.as_millis()
        )),
        None => {
            out.gaps.push(format!(
                "after the space was freed ingest still refused for {} s: recovery needs a restart",
                window.as_secs()
            ));
            match rig.restart().await {
                Ok(t) => {
                    let again = phase(&rig, format!("df-{seed}-restarted"), 2).await;
                    out.note(format!(
                        "restarted on the same data dir: ready in {} ms; ingest answers {}",
                        t.as_millis(),
                        again.summary()
                    ));
                    acked.extend(again.acked);
                }
                Err(e) => out.failures.push(format!(
                    "the server could not restart after the space was freed: {}",
                    e.to_string().lines().next().unwrap_or_default()
                )),
            }
        }
    }
    let drain = if rig.server.is_running() {
        Duration::from_secs(ctx.pick(40, 60))
    } else {
        Duration::from_secs(2)
    };
    let tally = rig.settle(&acked, drain, Policy::default()).await;
    for line in problem_lines(&rig.server.stderr()).iter().take(6) {
        out.note(format!(
            "server log: {}",
            line.chars().take(400).collect::<String>()
        ));
    }
    out.tally = tally;
    drop(rig);
    Ok(out)
}

/// Writes `path` until the filesystem is full (1 MiB, then 4 KiB chunks); returns its size.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1usize << 20, 4096, 512] {
        let buf = vec![0xC5u8; chunk];
        while written < FILLER_BYTES_MAX {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(written)
}
