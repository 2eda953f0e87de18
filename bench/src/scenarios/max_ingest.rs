//! `max-ingest`: the most fsynced ACKs/s hookrelay sustains (stripe, 1 KiB bodies, closed loop
//! with enough connections), then the same load against the null server in the same run, and
//! the ratio. SPEC.md: at least 1/2 of the null server, aiming for 2/3.
//!
//! The null server runs as a child process (this binary's `null-server`), as hookrelay does,
//! so both share the cores with the generator the same way.
//!
//! By default the endpoints are paused, so the run measures the ingest path alone (verify,
//! idempotency, append, fsync, ACK), which is what the null server is a ceiling for;
//! `--with-delivery` delivers to the receiver at the same time (the `e2e` scenario measures
//! that pipeline). Each server is run with several connection counts (64 and 256 by default)
//! and credited with its best: an fsync-bound server needs many connections in flight (with
//! group commit, a closed loop's throughput is connections / ACK latency), while the null
//! server does best with fewer.
//!
//! Both servers are up for the whole scenario, and their runs alternate (hookrelay then the null
//! server at each connection count, `--rounds` times over): requests/s on a shared machine
//! drift with the hour, and a noisy stretch should hit both sides of the ratio, not one.
//!
//! Each run also reports the server's CPU time per answered request (`/proc/<pid>/stat`, user +
//! system over the measured window): requests/s on a shared 2-core machine move by ±20 % from
//! one run to the next, CPU per request by a few percent, so it is the figure to compare builds
//! with.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, NullChild, emit, load_config, ms, run_load};
use crate::load::{LoadResult, Pace};
use crate::logstats::{self, LogRates};
use crate::mgmt::{Api, EndpointInfo};
use crate::report::{Row, Verdict};
use crate::server_proc::cpu_seconds;

/// Ratio to the null server that passes.
const RATIO_MIN: f64 = 0.5;
/// Failed requests tolerated, as a fraction of all.
const FAILED_FRACTION_MAX: f64 = 0.01;

#[derive(Args, Clone, Debug)]
pub struct MaxIngestArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connection counts to try, comma-separated; each server is credited with its best.
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub connections: Vec<usize>,
    /// Run length per server and connection count [default: 20; --quick 10; --smoke 5].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Left out of the figures at the start of each run.
    #[arg(long, default_value_t = 3)]
    pub warmup_s: u64,
    /// Threads of the null server.
    #[arg(long, default_value_t = 2)]
    pub null_threads: usize,
    /// Deliver to the receiver during the run (default: endpoints paused, ingest alone).
    #[arg(long)]
    pub with_delivery: bool,
    /// Skip the null-server run.
    #[arg(long)]
    pub skip_null: bool,
    /// Times over every connection count, each server alternating with the other; each is
    /// credited with its best run.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

pub async fn run(a: MaxIngestArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

/// The best of a server's runs, and every run's figures.
struct Sweep {
    best: LoadResult,
    /// The server's CPU time per answered request during the best run (µs), when measured.
    best_cpu_us: Option<f64>,
    /// The server's log work during the best run (HookRelay only).
    best_log: Option<LogRates>,
    runs: Vec<serde_json::Value>,
}

/// A server's runs so far.
#[derive(Default)]
struct Tally {
    best: Option<(LoadResult, Option<f64>, Option<LogRates>)>,
    runs: Vec<serde_json::Value>,
}

impl Tally {
    fn add(
        &mut self,
        conns: usize,
        round: usize,
        r: LoadResult,
        cpu_us: Option<f64>,
        log: Option<LogRates>,
    ) {
        self.runs.push(json!({"connections": conns, "round": round, "ok_per_s": r.ok_per_s(), "ack": r.ack.summary(), "errors": r.errors_line(), "server_cpu_us_per_request": cpu_us, "log": log}));
        if self
            .best
            .as_ref()
            .is_none_or(|(b, _, _)| r.ok_per_s() > b.ok_per_s())
        {
            self.best = Some((r, cpu_us, log));
        }
    }

    fn finish(self) -> anyhow::Result<Sweep> {
        let (best, best_cpu_us, best_log) = self
            .best
            .ok_or_else(|| anyhow::anyhow!("--connections lists no count"))?;
        Ok(Sweep {
            best,
            best_cpu_us,
            best_log,
            runs: self.runs,
        })
    }
}

/// The server's CPU seconds from `/proc/<pid>/stat` at the end of the warm-up and at the end of
/// the run, per request answered in between: a figure that, unlike requests/s, hardly moves
/// with what else the shared machine is doing.
async fn cpu_per_request_us<T>(
    pid: Option<u32>,
    warmup: Duration,
    load: impl std::future::Future<Output = anyhow::Result<(LoadResult, T)>>,
) -> anyhow::Result<((LoadResult, T), Option<f64>)> {
    let sample = async {
        tokio::time::sleep(warmup).await;
        pid.and_then(cpu_seconds)
    };
    let (result, start) = tokio::join!(load, sample);
    let result = result?;
    let end = pid.and_then(cpu_seconds);
    let answered = result.0.ok() + result.0.failed();
    let per_request = match (start, end) {
        (Some(s), Some(e)) if answered > 0 => Some((e - s) * 1e6 / answered as f64),
        _ => None,
    };
    Ok((result, per_request))
}

/// The server a sweep loads.
struct Target<'a> {
    /// Its name in the progress lines.
    who: &'a str,
    /// Its process, for its CPU time.
    pid: Option<u32>,
    /// HookRelay's API, for its log counters; `None` for the null server.
    api: Option<&'a Api>,
    addr: SocketAddr,
}

/// What every run of a scenario shares.
struct Plan<'a> {
    a: &'a MaxIngestArgs,
    endpoints: &'a [EndpointInfo],
    duration: Duration,
    warmup: Duration,
}

/// One closed-loop run against `t` with `conns` connections, added to `tally`.
async fn one_run(
    p: &Plan<'_>,
    t: &Target<'_>,
    conns: usize,
    round: usize,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let Plan {
        a,
        endpoints,
        duration,
        warmup,
    } = *p;
    let c = &a.common;
    let factory = super::factory_for(t.addr, c.mode, endpoints, c.body_bytes)?;
    let mut cfg = load_config(t.addr, factory, c, Pace::Closed, duration, conns);
    cfg.warmup = warmup;
    cfg.record_acks = false;
    eprintln!(
        "max-ingest: {}, closed loop, {conns} connections, {} s (round {round})",
        t.who,
        duration.as_secs()
    );
    let load = logstats::during(t.api, warmup, run_load(cfg));
    let ((r, log), cpu_us) = cpu_per_request_us(t.pid, warmup, load).await?;
    eprintln!("{}", r.describe());
    tally.add(conns, round, r, cpu_us, log);
    Ok(())
}

/// Every round, every connection count: hookrelay, then the null server when there is one.
async fn alternate(
    p: &Plan<'_>,
    hr: Target<'_>,
    null: Option<Target<'_>>,
) -> anyhow::Result<(Sweep, Option<Sweep>)> {
    let mut hr_tally = Tally::default();
    let mut null_tally = Tally::default();
    for round in 1..=p.a.rounds.max(1) {
        for &conns in &p.a.connections {
            one_run(p, &hr, conns, round, &mut hr_tally).await?;
            if let Some(null) = &null {
                one_run(p, null, conns, round, &mut null_tally).await?;
            }
        }
    }
    let null = null.map(|_| null_tally.finish()).transpose()?;
    Ok((hr_tally.finish()?, null))
}

pub async fn measure(a: &MaxIngestArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let duration = c.duration(a.duration_s, 20, 10);
    let warmup = Duration::from_secs(a.warmup_s).min(duration / 3);
    let opts = BedOptions {
        paused: !a.with_delivery,
        ..BedOptions::default()
    };
    let bed = Bed::start(c, opts).await?;
    let endpoints = bed.endpoints.clone();
    let null_child = if a.skip_null {
        None
    } else {
        match NullChild::start(a.null_threads).await {
            Ok(n) => Some(n),
            Err(e) => {
                bed.stop().await;
                return Err(e);
            }
        }
    };
    // The same closed-loop loads (same paths, signatures and bodies) against both.
    let plan = Plan {
        a,
        endpoints: &endpoints,
        duration,
        warmup,
    };
    let measured = alternate(
        &plan,
        Target {
            who: "hookrelay",
            pid: bed.server.pid(),
            api: Some(bed.server.api()),
            addr: bed.server.addr(),
        },
        null_child.as_ref().map(|n| Target {
            who: "null server",
            pid: Some(n.pid()),
            api: None,
            addr: n.addr(),
        }),
    )
    .await;
    drop(null_child);
    bed.stop().await;
    let (hr, null) = measured?;
    let h = &hr.best;
    let hs = h.ack.summary();
    let ratio = null
        .as_ref()
        .map(|n| h.ok_per_s() / n.best.ok_per_s().max(1e-9));
    let failed_fraction = h.failed() as f64 / (h.ok() + h.failed()).max(1) as f64;
    let verdict = match ratio {
        _ if c.smoke => Verdict::from_bool(h.ok() > 0 && failed_fraction <= FAILED_FRACTION_MAX),
        Some(r) => Verdict::from_bool(r >= RATIO_MIN && failed_fraction <= FAILED_FRACTION_MAX),
        None => Verdict::Info,
    };
    let cpu_text = |us: Option<f64>| {
        us.map(|us| format!(", {us:.1} µs server CPU/request"))
            .unwrap_or_default()
    };
    let null_text = match &null {
        Some(n) => format!(
            "; null server {:.0}/s ({} conns, p99 {} ms{}) → ratio {:.2}",
            n.best.ok_per_s(),
            n.best.connections,
            ms(n.best.ack.summary().p99_ms),
            cpu_text(n.best_cpu_us),
            ratio.unwrap_or(0.0)
        ),
        None => String::new(),
    };
    let null_json = null.as_ref().map(
        |n| json!({"best_ok_per_s": n.best.ok_per_s(), "server_cpu_us_per_request": n.best_cpu_us, "runs": n.runs, "threads": a.null_threads}),
    );
    Ok(Row {
        scenario: if c.smoke {
            "max-ingest (smoke)".into()
        } else {
            "max-ingest".into()
        },
        load: format!(
            "closed loop, best of {} conns{}, {} s each (+{} s warm-up){}, {}{}",
            a.connections
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            if a.rounds > 1 {
                format!(" × {} rounds", a.rounds)
            } else {
                String::new()
            },
            (duration - warmup).as_secs(),
            warmup.as_secs(),
            if a.skip_null {
                ""
            } else {
                ", alternating with the null server"
            },
            c.setup_line(),
            if a.with_delivery {
                ", delivering to the receiver"
            } else {
                ", endpoints paused (ingest only)"
            }
        ),
        result: format!(
            "{:.0} ACKs/s ({} conns, p50 {} / p99 {} ms, failed {}{}{}){null_text}",
            h.ok_per_s(),
            h.connections,
            ms(hs.p50_ms),
            ms(hs.p99_ms),
            h.errors_line(),
            cpu_text(hr.best_cpu_us),
            hr.best_log
                .map(|l| format!(", {}", l.text()))
                .unwrap_or_default()
        ),
        target: "≥ 0.5 × null server (aim 0.67)".into(),
        verdict,
        metrics: json!({
            "duration_s": duration.as_secs(),
            "warmup_s": warmup.as_secs(),
            "delivery": a.with_delivery,
            "hookrelay": {"best_ok_per_s": h.ok_per_s(), "best_connections": h.connections, "ack": hs, "errors": h.errors_line(), "server_cpu_us_per_request": hr.best_cpu_us, "log": hr.best_log, "runs": hr.runs},
            "null_server": null_json,
            "ratio": ratio,
        }),
    })
}
