//! torn-write: kill the server under load, then damage the active segment the way a power
//! loss can — cut it at a random byte inside its last frames, or flip a byte in its last
//! frame — and restart. Damage is only ever put after the last frame holding an ACKed
//! delivery (a torn write can only hit what was not yet fsynced, and ACK comes after fsync);
//! recovery must report exactly the bytes of the torn frames and nothing ACKed may be lost.
//! A last run flips a byte inside an ACKed frame that valid frames follow: that is corruption,
//! not a torn tail, and the server must refuse it rather than skip it (the byte is then put
//! back and the server restarted).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ledger::Policy;
use crate::load::Load;
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::segment::{self, Frame};
use crate::server::{problem_lines, recovery_cuts};

pub const SCENARIO: Scenario = Scenario {
    name: "torn-write",
    about: "kill, cut or flip bytes in the un-ACKed tail of the active segment, restart; recovery cuts only that",
    needs_root: false,
    budget_quick: Duration::from_secs(75),
    budget_full: Duration::from_secs(300),
    run: start,
};

/// How long a start with a corrupt segment is watched for refusing to become ready.
const CORRUPT_WATCH: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug)]
enum Damage {
    Cut,
    Flip,
}

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let runs = ctx.pick(2, 6);
    let mut rig = Rig::start(ctx, RigOptions::default()).await?;
    let mut out = Outcome::default();
    let mut acked = BTreeSet::new();
    let mut cut_ids = Vec::new();
    for run in 0..runs {
        let damage = if run % 2 == 0 {
            Damage::Cut
        } else {
            Damage::Flip
        };
        let mut spec = rig.load_spec(&format!("tw-{}-{run}", ctx.seed));
        spec.concurrency = 48;
        spec.requests_max = 1_000_000;
        spec.duration_max = Duration::from_secs(60);
        let load = Load::start(spec);
        tokio::time::sleep(Duration::from_millis(ctx.rng.range(500, 1_500))).await;
        rig.server.kill9();
        let stats = load.stop().await;
        acked.extend(stats.acked);
        let data_dir = rig.server.data_dir().to_path_buf();
        let plan = plan_damage(ctx, &data_dir, &acked, damage)?;
        out.note(format!("run {run}: {}", plan.describe));
        cut_ids.extend(plan.removed_ids.iter().cloned());
        rig.restart().await?;
        let logged = recovery_cuts(&rig.server.stderr_of_start(rig.server.starts()));
        let reported = logged
            .iter()
            .find(|(dir, _)| Path::new(dir) == plan.log_dir)
            .map(|(_, n)| *n);
        match reported {
            Some(n) if n == plan.expected_truncated => out.note(format!(
                "run {run}: recovery reported truncated_bytes={n} for {} (expected {})",
                plan.log_dir.display(),
                plan.expected_truncated
            )),
            other => out.failures.push(format!(
                "run {run}: recovery reported truncated_bytes={other:?} for {}, expected {} ({})",
                plan.log_dir.display(),
                plan.expected_truncated,
                plan.describe
            )),
        }
        for (dir, n) in &logged {
            if Path::new(dir) != plan.log_dir && *n != 0 {
                out.note(format!(
                    "run {run}: undamaged log {dir} also reported truncated_bytes={n}"
                ));
            }
        }
    }

    // Corruption in the middle: must be refused, never skipped.
    rig.server.kill9();
    match corrupt_middle(ctx, &mut rig, &acked).await? {
        Corruption::Refused(how) => out.note(format!("corrupt frame before valid ones: {how}")),
        Corruption::Accepted(what) => out.failures.push(format!(
            "a flipped byte in an ACKed frame followed by valid frames was not refused (invariant 4): {what}"
        )),
        Corruption::NoCandidate => {
            out.note("corrupt-middle check skipped: no active segment with an ACKed frame before another frame")
        }
    }
    if !rig.server.is_running() {
        rig.restart().await?;
    }

    // A delivery whose Ingested record was cut never existed for the server: its id must be
    // unknown (404), even after later deliveries took its sequence number.
    let mut answers = std::collections::BTreeMap::<String, Vec<String>>::new();
    for id in &cut_ids {
        let state = rig.api.delivery(id).await.state;
        answers
            .entry(state.name().to_string())
            .or_default()
            .push(id.clone());
    }
    if !cut_ids.is_empty() {
        let summary: Vec<String> = answers
            .iter()
            .map(|(k, v)| format!("{k}:{}", v.len()))
            .collect();
        out.note(format!(
            "GET /v1/deliveries/{{id}} of the {} cut (un-ACKed) ingests: {}",
            cut_ids.len(),
            summary.join(" ")
        ));
        for (state, ids) in &answers {
            if state != "not_found" {
                out.failures.push(format!(
                    "GET of {} deliveries whose Ingested record was cut answers {state} instead of 404: {}",
                    ids.len(),
                    ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }

    let tally = rig
        .settle(
            &acked,
            Duration::from_secs(ctx.pick(40, 90)),
            Policy::default(),
        )
        .await;
    for line in problem_lines(&rig.server.stderr()).iter().take(8) {
        out.note(format!("server log: {line}"));
    }
    out.tally = tally;
    Ok(out)
}

/// What was done to which segment, and what recovery must report.
struct Plan {
    log_dir: PathBuf,
    /// Delivery ids of the whole `Ingested` frames the damage removed.
    removed_ids: Vec<String>,
    expected_truncated: u64,
    describe: String,
}

/// Frames after the last frame holding an ACKed delivery: all of them un-ACKed.
fn unacked_tail(frames: &[Frame], acked: &BTreeSet<String>) -> usize {
    frames
        .iter()
        .rposition(|f| f.delivery_id.as_ref().is_some_and(|id| acked.contains(id)))
        .map_or(0, |i| i + 1)
}

fn plan_damage(
    ctx: &mut Ctx,
    data_dir: &Path,
    acked: &BTreeSet<String>,
    damage: Damage,
) -> anyhow::Result<Plan> {
    // The shard whose active segment has the longest un-ACKed tail.
    let mut best: Option<(PathBuf, PathBuf, segment::Scan, usize)> = None;
    for log_dir in segment::shard_log_dirs(data_dir) {
        let Some(seg) = segment::active_segment(&log_dir) else {
            continue;
        };
        let scan = segment::scan(&seg)?;
        if scan.valid_end != scan.data_end {
            anyhow::bail!(
                "{} already has {} invalid trailing bytes after kill -9 (a kill must not tear a write)",
                seg.display(),
                scan.data_end - scan.valid_end
            );
        }
        let first = unacked_tail(&scan.frames, acked);
        let tail = scan.frames.len() - first;
        let better = match &best {
            None => true,
            Some((_, _, b, bf)) => tail > b.frames.len() - bf,
        };
        if better {
            best = Some((log_dir, seg, scan, first));
        }
    }
    let Some((log_dir, seg, scan, first)) = best else {
        anyhow::bail!("no shard log under {}", data_dir.display());
    };
    let tail = &scan.frames[first..];
    let name = seg
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if tail.is_empty() {
        // Every frame is ACKed: tear a write that never finished instead — a prefix of a copy
        // of the last frame (or of a header) appended after it.
        let bytes = match scan.frames.last() {
            Some(last) => segment::frame_bytes(&seg, last)?,
            None => vec![0xA5; 64],
        };
        let k = ctx.rng.range(1, bytes.len() as u64) as usize;
        segment::write_torn(&seg, scan.valid_end, &bytes[..k])?;
        return Ok(Plan {
            log_dir,
            removed_ids: Vec::new(),
            expected_truncated: segment::nonzero_len(&bytes[..k]),
            describe: format!(
                "{damage:?}: no un-ACKed frame at the tail of {name}; appended a torn {k}-byte partial frame"
            ),
        });
    }
    let unacked_ids = |from: &[Frame]| from.iter().filter(|f| f.delivery_id.is_some()).count();
    match damage {
        Damage::Cut => {
            let i = ctx.rng.range(0, tail.len() as u64) as usize;
            let f = &tail[i];
            let at = f.pos + ctx.rng.range(1, f.len);
            segment::cut(&seg, at)?;
            let removed = &tail[i..];
            Ok(Plan {
                log_dir,
                removed_ids: removed
                    .iter()
                    .filter_map(|f| f.delivery_id.clone())
                    .collect(),
                expected_truncated: segment::torn_len(&seg, f.pos)?,
                describe: format!(
                    "Cut {name} at byte {at} (inside frame offset {}, {} of {} frames after the last ACKed one removed: {} un-ACKed ingests, {} other records)",
                    f.offset,
                    removed.len(),
                    tail.len(),
                    unacked_ids(removed),
                    removed.len() - unacked_ids(removed)
                ),
            })
        }
        Damage::Flip => {
            let f = tail.last().expect("tail is not empty");
            let at = f.pos + ctx.rng.range(0, f.len);
            let mask = ctx.rng.range(1, 256) as u8;
            segment::flip(&seg, at, mask)?;
            Ok(Plan {
                log_dir,
                removed_ids: f.delivery_id.iter().cloned().collect(),
                expected_truncated: segment::torn_len(&seg, f.pos)?,
                describe: format!(
                    "Flip {name} byte {at} ^ {mask:#04x} in the last frame (offset {}, {} bytes, un-ACKed {})",
                    f.offset,
                    f.len,
                    if f.delivery_id.is_some() {
                        "ingest"
                    } else {
                        "record"
                    }
                ),
            })
        }
    }
}

enum Corruption {
    Refused(String),
    Accepted(String),
    NoCandidate,
}

/// Flips a payload byte of an ACKed frame that other frames follow, starts the server and
/// watches it refuse; then restores the byte. Leaves the server stopped.
async fn corrupt_middle(
    ctx: &mut Ctx,
    rig: &mut Rig,
    acked: &BTreeSet<String>,
) -> anyhow::Result<Corruption> {
    let mut target = None;
    for log_dir in segment::shard_log_dirs(rig.server.data_dir()) {
        let Some(seg) = segment::active_segment(&log_dir) else {
            continue;
        };
        let scan = segment::scan(&seg)?;
        let n = scan.frames.len();
        let candidates: Vec<&Frame> = scan.frames[..n.saturating_sub(1)]
            .iter()
            .filter(|f| f.delivery_id.as_ref().is_some_and(|id| acked.contains(id)))
            .collect();
        if !candidates.is_empty() {
            let f = candidates[ctx.rng.range(0, candidates.len() as u64) as usize].clone();
            target = Some((seg, f));
            break;
        }
    }
    let Some((seg, f)) = target else {
        return Ok(Corruption::NoCandidate);
    };
    // A payload byte past the delivery id, so the frame is clearly damaged, not short.
    let at =
        f.pos + segment::FRAME_HEADER_BYTES + ctx.rng.range(0, f.len - segment::FRAME_HEADER_BYTES);
    let original = segment::flip(&seg, at, 0x5A)?;
    let name = seg.display().to_string();
    rig.server.start()?;
    let verdict = match rig.server.wait_ready(CORRUPT_WATCH).await {
        Ok(_) => Corruption::Accepted(format!(
            "{name} byte {at} (frame offset {}) flipped, yet /readyz answered 200",
            f.offset
        )),
        Err(_) => {
            let log = rig.server.stderr_of_start(rig.server.starts());
            let said = log
                .lines()
                .find(|l| l.to_lowercase().contains("corrupt"))
                .map(|l| l.chars().take(300).collect::<String>())
                .unwrap_or_else(|| "no log line mentions corruption".into());
            let state = if rig.server.is_running() {
                "process up, /readyz not 200"
            } else {
                "process exited"
            };
            Corruption::Refused(format!(
                "{name} byte {at} flipped (frame offset {}): {state}; log: {said}",
                f.offset
            ))
        }
    };
    rig.server.kill9();
    segment::restore(&seg, at, original)?;
    Ok(verdict)
}
