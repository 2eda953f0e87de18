//! `replication`: what log replication to a peer (issue #8) costs at ingest. For each ack mode
//! (`replication.ack = "local"`, the replica attached and streamed to asynchronously, then
//! `"peer"`, every ACK after the replica's fsync too), a fresh replica and primary on loopback
//! (same operator key, master key, replication secret and shard count), the bed on the primary,
//! then the `latency` scenario's open-loop rates (1k and 5k req/s: ACK p50/p99/p99.9) and the
//! `max-ingest` scenario's closed loop (best fsynced ACKs/s over 64/256 connections, endpoints
//! paused so the run measures ingest alone), then both nodes stopped. One row shows the modes
//! side by side; the JSON line holds each mode's figures.
//!
//! During every run the primary's `GET /v1/admin/replication` is polled for the replica's lag
//! (records and estimated bytes, summed over the shards; the largest sample is kept), and after
//! it the bench waits for the replica to catch up: every shard's and the metadata stream's
//! `peer_acked_offset` at its `next_offset`, connected.
//!
//! No SPEC.md target: the verdict is `info`, unless the replica did not catch up within
//! `--catch-up-timeout-s` after a run, or, with `--smoke`, an open-loop run got a 5xx (or no
//! 2xx at all), which fail.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Bed, BedOptions, Common, emit, factory_for, load_config, ms, run_load};
use crate::load::{LoadConfig, LoadResult, Pace};
use crate::mgmt::Api;
use crate::report::{Row, Verdict};
use crate::server_proc::{self, ServerProc};

/// `HOOKRELAY_MASTER_KEY` of both nodes (base64 of 32 `k` bytes): the replica unseals the
/// replicated tenant keys with it, so the nodes must share it.
const MASTER_KEY_B64: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";
/// `HOOKRELAY_REPLICATION_SECRET` of both nodes.
const REPLICATION_SECRET: &str = "hookrelay-bench-replication-secret";
/// How often the replica's lag is sampled during a run.
const LAG_POLL: Duration = Duration::from_millis(250);
/// How often the catch-up and connection waits poll.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// How long the primary's streams to the replica may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a smoke run (open or closed loop) lasts.
const SMOKE_RUN_MAX: Duration = Duration::from_secs(3);

/// `replication.ack` of the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Answer after the local fsync; the replica is streamed to asynchronously.
    Local,
    /// Answer after the local and the replica's fsync.
    Peer,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Local => "local",
            AckMode::Peer => "peer",
        }
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Args, Clone, Debug)]
pub struct ReplicationArgs {
    #[command(flatten)]
    pub common: Common,
    /// The primary's `replication.ack` modes to measure, one pair of nodes each.
    #[arg(long, value_delimiter = ',', default_value = "local,peer")]
    pub acks: Vec<AckMode>,
    /// Open-loop rates, req/s.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rates: Vec<u64>,
    /// Length of each open-loop run [default: 30; --quick 10; --smoke 3].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Left out of the figures at the start of each open-loop run (none with --smoke, so
    /// every answer is checked).
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    /// Connections of the open-loop runs.
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Closed-loop connection counts, comma-separated; each mode is credited with its best
    /// [--smoke: the first only].
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub closed_connections: Vec<usize>,
    /// Length of each closed-loop run [default: 20; --quick 10; --smoke 3].
    #[arg(long)]
    pub closed_duration_s: Option<u64>,
    /// Left out of the figures at the start of each closed-loop run.
    #[arg(long, default_value_t = 3)]
    pub closed_warmup_s: u64,
    /// Deliver to the receiver during the closed loop (default: its endpoints are paused,
    /// ingest alone, as in `max-ingest`).
    #[arg(long)]
    pub with_delivery: bool,
    /// How long after each run the replica may take to catch up (lag 0) before the scenario
    /// fails.
    #[arg(long, default_value_t = 30)]
    pub catch_up_timeout_s: u64,
}

pub async fn run(a: ReplicationArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

/// Run lengths and warm-ups, resolved from the flags.
#[derive(Clone, Copy, Debug)]
struct Timing {
    open: Duration,
    open_warmup: Duration,
    closed: Duration,
    closed_warmup: Duration,
    catch_up: Duration,
}

impl Timing {
    fn new(a: &ReplicationArgs) -> Self {
        let c = &a.common;
        let cap = |d: Duration| if c.smoke { d.min(SMOKE_RUN_MAX) } else { d };
        let open = cap(c.duration(a.duration_s, 30, 10));
        let closed = cap(c.duration(a.closed_duration_s, 20, 10));
        Self {
            open,
            open_warmup: if c.smoke {
                Duration::ZERO
            } else {
                Duration::from_secs(a.warmup_s).min(open / 3)
            },
            closed,
            closed_warmup: Duration::from_secs(a.closed_warmup_s).min(closed / 3),
            catch_up: Duration::from_secs(a.catch_up_timeout_s),
        }
    }
}

pub async fn measure(a: &ReplicationArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    anyhow::ensure!(!a.acks.is_empty(), "--acks lists no mode");
    anyhow::ensure!(!a.rates.is_empty(), "--rates lists no rate");
    anyhow::ensure!(
        !a.closed_connections.is_empty(),
        "--closed-connections lists no count"
    );
    let t = Timing::new(a);
    let closed_connections: Vec<usize> = if c.smoke {
        a.closed_connections[..1].to_vec()
    } else {
        a.closed_connections.clone()
    };
    let mut modes = Vec::new();
    for &ack in &a.acks {
        let m = run_mode(a, ack, &t, &closed_connections)
            .await
            .with_context(|| format!("replication.ack = {ack}"))?;
        modes.push(m);
    }

    let caught_up = modes.iter().all(|m| m.caught_up());
    let verdict = if !caught_up
        || (c.smoke
            && modes.iter().any(|m| {
                m.open
                    .iter()
                    .any(|r| r.status_5xx() > 0 || r.load.ok() == 0)
                    || m.closed.best().load.ok() == 0
            })) {
        Verdict::Fail
    } else {
        Verdict::Info
    };
    Ok(Row {
        scenario: if c.smoke {
            "replication (smoke)".into()
        } else {
            "replication".into()
        },
        load: format!(
            "ack {} on a primary + replica on loopback; open loop {} req/s, {} s each (+{} s warm-up), {} conns; closed loop best of {} conns, {} s each (+{} s warm-up){}; {}",
            a.acks
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(" vs "),
            a.rates
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            (t.open - t.open_warmup).as_secs(),
            t.open_warmup.as_secs(),
            a.connections,
            closed_connections
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            (t.closed - t.closed_warmup).as_secs(),
            t.closed_warmup.as_secs(),
            if a.with_delivery {
                ", delivering"
            } else {
                ", endpoints paused"
            },
            c.setup_line()
        ),
        result: modes
            .iter()
            .map(|m| m.text(t.catch_up))
            .collect::<Vec<_>>()
            .join("; "),
        target: if c.smoke {
            format!(
                "info; no 5xx, replica caught up ≤ {} s",
                t.catch_up.as_secs()
            )
        } else {
            format!("info; replica caught up ≤ {} s", t.catch_up.as_secs())
        },
        verdict,
        metrics: json!({
            "modes": modes.iter().map(ModeOutcome::json).collect::<Vec<_>>(),
            "duration_s": t.open.as_secs(),
            "warmup_s": t.open_warmup.as_secs(),
            "connections": a.connections,
            "closed_duration_s": t.closed.as_secs(),
            "closed_warmup_s": t.closed_warmup.as_secs(),
            "closed_connections": closed_connections,
            "delivery_in_closed_loop": a.with_delivery,
            "catch_up_timeout_s": t.catch_up.as_secs(),
        }),
    })
}

/// One ack mode's figures.
struct ModeOutcome {
    ack: AckMode,
    /// How long the primary's streams took to connect after it was ready.
    connected_after: Duration,
    /// One per rate.
    open: Vec<Run>,
    closed: Sweep,
    /// The primary's replication status at the end.
    final_status: Value,
}

impl ModeOutcome {
    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.open.iter().chain(&self.closed.runs)
    }

    fn caught_up(&self) -> bool {
        self.runs().all(|r| r.catch_up.is_some())
    }

    fn max_lag(&self) -> Lag {
        self.runs()
            .fold(Lag::default(), |acc, r| acc.max(r.lag.max))
    }

    /// `local: p99 0.8 ms @1k, 2.1 ms @5k, max 9000 ACKs/s (p99 25 ms), lag ≤ 120 rec`.
    fn text(&self, catch_up_timeout: Duration) -> String {
        let rates = self
            .open
            .iter()
            .map(|r| {
                let mut s = format!(
                    "{} ms @{}k",
                    ms(r.load.ack.summary().p99_ms),
                    r.rate().unwrap_or(0) as f64 / 1000.0
                );
                if r.load.failed() > 0 {
                    s.push_str(&format!(" ({})", r.load.errors_line()));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ");
        let best = &self.closed.best().load;
        let mut text = format!(
            "{}: p99 {rates}, max {:.0} ACKs/s (p99 {} ms{}), lag ≤ {} rec",
            self.ack,
            best.ok_per_s(),
            ms(best.ack.summary().p99_ms),
            if best.failed() > 0 {
                format!(", {}", best.errors_line())
            } else {
                String::new()
            },
            self.max_lag().records
        );
        if !self.caught_up() {
            text.push_str(&format!(
                ", replica NOT caught up within {} s",
                catch_up_timeout.as_secs()
            ));
        }
        text
    }

    fn json(&self) -> Value {
        let best = self.closed.best();
        json!({
            "ack": self.ack,
            "connected_after_ms": self.connected_after.as_millis() as u64,
            "open_loop": self.open.iter().map(Run::json).collect::<Vec<_>>(),
            "closed_loop": {
                "best_ok_per_s": best.load.ok_per_s(),
                "best_connections": best.load.connections,
                "ack": best.load.ack.summary(),
                "errors": best.load.errors_line(),
                "runs": self.closed.runs.iter().map(Run::json).collect::<Vec<_>>(),
            },
            "max_lag": self.max_lag(),
            "caught_up": self.caught_up(),
            "final_status": self.final_status,
        })
    }
}

/// One load run and what the replica did during and after it.
struct Run {
    load: LoadResult,
    lag: LagSeen,
    /// How long after the run the replica took to catch up; `None` = not within the timeout.
    catch_up: Option<Duration>,
    /// The last status (or error) seen while waiting, when it did not catch up.
    catch_up_last: Option<String>,
}

impl Run {
    fn rate(&self) -> Option<u64> {
        match self.load.pace {
            Pace::Open { rate } => Some(rate),
            Pace::Closed => None,
        }
    }

    fn status_5xx(&self) -> u64 {
        self.load
            .statuses
            .iter()
            .filter(|(s, _)| (500..600).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    fn json(&self) -> Value {
        json!({
            "rate": self.rate(),
            "connections": self.load.connections,
            "ok_per_s": self.load.ok_per_s(),
            "ack": self.load.ack.summary(),
            "failed": self.load.failed(),
            "status_5xx": self.status_5xx(),
            "errors": self.load.errors_line(),
            "max_lag": self.lag.max,
            "lag_samples": self.lag.samples,
            "lag_samples_disconnected": self.lag.disconnected,
            "lag_poll_errors": self.lag.errors,
            "catch_up_ms": self.catch_up.map(|d| d.as_millis() as u64),
            "catch_up_last": self.catch_up_last,
        })
    }
}

/// The closed-loop runs of a mode.
struct Sweep {
    runs: Vec<Run>,
}

impl Sweep {
    /// The run with the most ACKs/s (there is at least one).
    fn best(&self) -> &Run {
        self.runs
            .iter()
            .max_by(|x, y| x.load.ok_per_s().total_cmp(&y.load.ok_per_s()))
            .expect("a sweep has at least one run")
    }
}

/// Starts a replica, then a primary with `ack` and the bed on it; measures; stops both.
async fn run_mode(
    a: &ReplicationArgs,
    ack: AckMode,
    t: &Timing,
    closed_connections: &[usize],
) -> anyhow::Result<ModeOutcome> {
    let c = &a.common;
    let (primary_repl, replica_repl) = two_free_addrs()?;
    eprintln!("replication: ack = {ack}: starting the replica, then the primary");
    let replica_common = with_env(c, node_env("replica", replica_repl, primary_repl, ack));
    let mut replica = ServerProc::start_healthy(replica_common.server_options()?)
        .await
        .context("starting the replica")?;
    let primary_common = with_env(c, node_env("primary", primary_repl, replica_repl, ack));
    let bed = match Bed::start(&primary_common, BedOptions::default()).await {
        Ok(bed) => bed,
        Err(e) => {
            eprintln!("{}", replica.log_tail());
            replica.stop().await;
            return Err(e.context("starting the primary"));
        }
    };
    let outcome = measure_mode(a, ack, t, closed_connections, &bed).await;
    if outcome.is_err() {
        eprintln!("{}\n{}", bed.server.log_tail(), replica.log_tail());
    }
    // The primary first: with ack = peer it would answer 503 without its replica.
    bed.stop().await;
    replica.stop().await;
    outcome
}

async fn measure_mode(
    a: &ReplicationArgs,
    ack: AckMode,
    t: &Timing,
    closed_connections: &[usize],
    bed: &Bed,
) -> anyhow::Result<ModeOutcome> {
    let c = &a.common;
    let api = bed.server.api().clone();
    let connected_after = wait_connected(&api, CONNECT_TIMEOUT).await?;
    eprintln!(
        "replication: ack = {ack}: the primary streams to the replica ({} ms after /readyz)",
        connected_after.as_millis()
    );

    let mut open = Vec::new();
    for &rate in &a.rates {
        let mut cfg = bed.load(c, Pace::Open { rate }, t.open, a.connections)?;
        cfg.warmup = t.open_warmup;
        cfg.record_acks = false;
        eprintln!(
            "replication: ack = {ack}: open loop {rate} req/s for {} s",
            t.open.as_secs()
        );
        open.push(measured_run(&api, cfg, t.catch_up).await?);
    }

    let closed_endpoints = if a.with_delivery {
        bed.endpoints.clone()
    } else {
        let paused = BedOptions {
            paused: true,
            ..BedOptions::default()
        };
        let mut eps = Vec::new();
        for _ in 0..c.endpoints.max(1) {
            eps.push(bed.add_endpoint(&paused).await?);
        }
        eps
    };
    let mut closed = Vec::new();
    for &conns in closed_connections {
        let factory = factory_for(bed.server.addr(), c.mode, &closed_endpoints, c.body_bytes)?;
        let mut cfg = load_config(bed.server.addr(), factory, c, Pace::Closed, t.closed, conns);
        cfg.warmup = t.closed_warmup;
        cfg.record_acks = false;
        eprintln!(
            "replication: ack = {ack}: closed loop, {conns} connections, {} s",
            t.closed.as_secs()
        );
        closed.push(measured_run(&api, cfg, t.catch_up).await?);
    }
    let final_status = replication_status(&api)
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    Ok(ModeOutcome {
        ack,
        connected_after,
        open,
        closed: Sweep { runs: closed },
        final_status,
    })
}

/// One load run with the replica's lag sampled throughout, then the wait for it to catch up.
async fn measured_run(
    api: &Api,
    cfg: LoadConfig,
    catch_up_timeout: Duration,
) -> anyhow::Result<Run> {
    let watch = LagWatch::start(api.clone());
    let load = run_load(cfg).await;
    let lag = watch.finish().await;
    let load = load?;
    eprintln!("{}", load.describe());
    let (catch_up, catch_up_last) = match wait_caught_up(api, catch_up_timeout).await {
        Ok(d) => (Some(d), None),
        Err(last) => (None, Some(last)),
    };
    eprintln!(
        "  replica: max lag {} records (~{} KiB) over {} samples{}; {}",
        lag.max.records,
        lag.max.bytes / 1024,
        lag.samples,
        if lag.disconnected > 0 {
            format!(", {} samples with a stream down", lag.disconnected)
        } else {
            String::new()
        },
        match catch_up {
            Some(d) => format!("caught up {} ms after the run", d.as_millis()),
            None => format!(
                "NOT caught up within {} s: {}",
                catch_up_timeout.as_secs(),
                catch_up_last.as_deref().unwrap_or("-")
            ),
        }
    );
    Ok(Run {
        load,
        lag,
        catch_up,
        catch_up_last,
    })
}

/// Two distinct loopback addresses with ports free right now (both held while choosing).
fn two_free_addrs() -> std::io::Result<(SocketAddr, SocketAddr)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// `c` with `env` set on the server before the caller's own `--server-env` (which wins).
fn with_env(c: &Common, env: Vec<(String, String)>) -> Common {
    let mut out = c.clone();
    out.server_env = env
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(c.server_env.iter().cloned())
        .collect();
    out
}

/// The `HOOKRELAY_*` settings of one node of the pair.
fn node_env(
    role: &str,
    listen: SocketAddr,
    peer: SocketAddr,
    ack: AckMode,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOOKRELAY_MASTER_KEY".into(), MASTER_KEY_B64.into()),
        (
            "HOOKRELAY_REPLICATION_SECRET".into(),
            REPLICATION_SECRET.into(),
        ),
        ("HOOKRELAY_REPLICATION_ROLE".into(), role.into()),
        ("HOOKRELAY_REPLICATION_LISTEN".into(), listen.to_string()),
        ("HOOKRELAY_REPLICATION_PEER".into(), peer.to_string()),
    ];
    if role == "primary" {
        env.push(("HOOKRELAY_REPLICATION_ACK".into(), ack.as_str().into()));
    }
    env
}

/// `GET /v1/admin/replication` with the operator key.
async fn replication_status(api: &Api) -> anyhow::Result<Value> {
    let (status, v) = api
        .call(
            Method::GET,
            "/v1/admin/replication",
            Some(server_proc::ROOT_KEY),
            None,
        )
        .await?;
    anyhow::ensure!(status == 200, "GET /v1/admin/replication: {status} {v}");
    Ok(v)
}

/// The replica's lag, summed over the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
struct Lag {
    records: u64,
    /// The primary's estimate (records × average frame size).
    bytes: u64,
}

impl Lag {
    fn max(self, other: Lag) -> Lag {
        Lag {
            records: self.records.max(other.records),
            bytes: self.bytes.max(other.bytes),
        }
    }
}

/// What one `GET /v1/admin/replication` says about the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    lag: Lag,
    /// Every stream (the shards' and the metadata's) connected.
    connected: bool,
    /// Connected, and every stream's acknowledged offset at its end.
    caught_up: bool,
}

impl Snapshot {
    fn parse(v: &Value) -> anyhow::Result<Self> {
        let shards = v["shards"]
            .as_array()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow::anyhow!("no shards in the replication status: {v}"))?;
        let mut lag = Lag::default();
        for s in shards {
            lag.records += s["lag_records"].as_u64().unwrap_or(0);
            lag.bytes += s["lag_bytes"].as_u64().unwrap_or(0);
        }
        let streams = || {
            shards
                .iter()
                .chain(v.get("metadata").filter(|m| m.is_object()))
        };
        let connected = streams().all(|s| s["connected"].as_bool() == Some(true));
        // `lag_records` is 0 while the acknowledged offset is unknown: compare the offsets.
        let at_end = streams().all(|s| {
            matches!(
                (s["peer_acked_offset"].as_u64(), s["next_offset"].as_u64()),
                (Some(acked), Some(next)) if acked >= next
            )
        });
        Ok(Self {
            lag,
            connected,
            caught_up: connected && at_end,
        })
    }
}

/// Waits until every stream of the primary is connected; answers how long that took.
async fn wait_connected(api: &Api, timeout: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let last = match replication_status(api).await {
            Ok(v) => match Snapshot::parse(&v) {
                Ok(s) if s.connected => return Ok(t0.elapsed()),
                Ok(_) => v.to_string(),
                Err(e) => format!("{e:#}"),
            },
            Err(e) => format!("{e:#}"),
        };
        if t0.elapsed() > timeout {
            anyhow::bail!(
                "the primary's streams to the replica did not connect within {timeout:?}: {last}"
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Waits until the replica has caught up; answers how long that took, or the last status (or
/// error) seen when it did not within `timeout`.
async fn wait_caught_up(api: &Api, timeout: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let last = match replication_status(api).await {
            Ok(v) => match Snapshot::parse(&v) {
                Ok(s) if s.caught_up => return Ok(t0.elapsed()),
                Ok(_) => v.to_string(),
                Err(e) => format!("{e:#}"),
            },
            Err(e) => format!("{e:#}"),
        };
        if t0.elapsed() > timeout {
            return Err(last);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The lag samples of one run.
#[derive(Clone, Copy, Debug, Default)]
struct LagSeen {
    /// The largest records and bytes seen (each its own maximum).
    max: Lag,
    samples: u64,
    /// Samples with some stream not connected.
    disconnected: u64,
    /// Polls that failed.
    errors: u64,
}

/// Samples the replica's lag every [`LAG_POLL`] until finished.
struct LagWatch {
    stop: oneshot::Sender<()>,
    task: JoinHandle<LagSeen>,
}

impl LagWatch {
    fn start(api: Api) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut seen = LagSeen::default();
            loop {
                match replication_status(&api)
                    .await
                    .and_then(|v| Snapshot::parse(&v))
                {
                    Ok(s) => {
                        seen.samples += 1;
                        seen.max = seen.max.max(s.lag);
                        if !s.connected {
                            seen.disconnected += 1;
                        }
                    }
                    Err(_) => seen.errors += 1,
                }
                tokio::select! {
                    _ = &mut stopped => return seen,
                    _ = tokio::time::sleep(LAG_POLL) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> LagSeen {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn the_master_key_is_32_bytes() {
        let key = base64::engine::general_purpose::STANDARD
            .decode(MASTER_KEY_B64)
            .unwrap();
        assert_eq!(key, vec![b'k'; 32]);
    }

    #[test]
    fn caught_up_means_every_stream_acked_to_its_end() {
        let status = |acked0: Value, connected1: bool, meta_acked: u64| {
            json!({
                "role": "primary", "epoch": 0, "ack": "peer", "degraded": false,
                "shards": [
                    {"shard": 0, "next_offset": 100, "peer_acked_offset": acked0,
                     "lag_records": 0, "lag_bytes": 0, "connected": true, "last_error": null},
                    {"shard": 1, "next_offset": 50, "peer_acked_offset": 40,
                     "lag_records": 10, "lag_bytes": 11000, "connected": connected1,
                     "last_error": null},
                ],
                "metadata": {"shard": 0, "next_offset": 7, "peer_acked_offset": meta_acked,
                             "lag_records": 0, "lag_bytes": 0, "connected": true,
                             "last_error": null},
            })
        };
        let s = Snapshot::parse(&status(json!(100), true, 7)).unwrap();
        assert_eq!(
            s.lag,
            Lag {
                records: 10,
                bytes: 11000
            }
        );
        assert!(s.connected);
        assert!(!s.caught_up, "shard 1 is 10 records behind");

        let mut v = status(json!(100), true, 7);
        v["shards"][1]["peer_acked_offset"] = json!(50);
        assert!(Snapshot::parse(&v).unwrap().caught_up);

        // An unknown acknowledged offset reports lag 0 but is not caught up.
        let mut v = status(Value::Null, true, 7);
        v["shards"][1]["peer_acked_offset"] = json!(50);
        assert!(!Snapshot::parse(&v).unwrap().caught_up);

        let mut v = status(json!(100), false, 7);
        v["shards"][1]["peer_acked_offset"] = json!(50);
        let s = Snapshot::parse(&v).unwrap();
        assert!(!s.connected && !s.caught_up);

        let mut v = status(json!(100), true, 6);
        v["shards"][1]["peer_acked_offset"] = json!(50);
        assert!(!Snapshot::parse(&v).unwrap().caught_up, "metadata behind");

        assert!(Snapshot::parse(&json!({"shards": []})).is_err());
    }
}
