//! The server's log counters (`hookrelay_log_*` in `/metrics`), sampled at the end of a run's
//! warm-up and at its end: the fsync rate, the records per group commit and the mean commit
//! time of the measured window. They say what an ACK latency owes to the disk, and how far
//! `log.batch_linger_us` paced it. Two histograms say where a stall of the tail came from:
//! the slowest commit of the window (`hookrelay_log_commit_seconds`: the disk) and the latest
//! a shard's thread got to its timer (`hookrelay_shard_lag_seconds`: the shard's own thread,
//! blocked or waiting for a CPU). Both are known to their bucket's bounds.

use std::time::{Duration, Instant};

use hyper::Method;
use serde::Serialize;
use serde_json::Value;

use crate::load::LoadResult;
use crate::mgmt::Api;

/// A Prometheus histogram's cumulative counts, `(le in seconds, count)` in `le` order
/// (`+Inf` as infinity); series of the same name with other labels are added up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    fn add(&mut self, le: f64, count: f64) {
        match self.0.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => {
                self.0.push((le, count));
                self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// The bounds `(above, up to)` in milliseconds of the bucket holding the largest value
    /// counted between `a` and `b`; `None` when nothing was counted.
    pub fn highest_between(a: &Buckets, b: &Buckets) -> Option<(f64, f64)> {
        let before = |le: f64| a.0.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
        let total = b.0.last().map(|&(le, c)| c - before(le))?;
        if total <= 0.0 {
            return None;
        }
        let mut lower = 0.0;
        for &(le, c) in &b.0 {
            if c - before(le) >= total {
                return Some((lower * 1e3, le * 1e3));
            }
            lower = le;
        }
        None
    }
}

/// Every shard's log counters added up, at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSample {
    pub at: Instant,
    pub appends: f64,
    pub commits: f64,
    pub fsyncs: f64,
    pub commit_seconds: f64,
    pub commit_buckets: Buckets,
    pub lag_buckets: Buckets,
}

impl LogSample {
    /// Reads the counters out of a `/metrics` text; `None` when it has none (a server without
    /// them, or none of its shards has recovered yet).
    pub fn parse(text: &str, at: Instant) -> Option<LogSample> {
        let mut s = LogSample {
            at,
            appends: 0.0,
            commits: 0.0,
            fsyncs: 0.0,
            commit_seconds: 0.0,
            commit_buckets: Buckets::default(),
            lag_buckets: Buckets::default(),
        };
        let mut seen = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            let buckets = match name {
                "hookrelay_log_commit_seconds_bucket" => Some(&mut s.commit_buckets),
                "hookrelay_shard_lag_seconds_bucket" => Some(&mut s.lag_buckets),
                _ => None,
            };
            if let Some(buckets) = buckets {
                if let (Some(le), Ok(n)) = (le_of(series), value.parse::<f64>()) {
                    buckets.add(le, n);
                }
                continue;
            }
            let slot = match name {
                "hookrelay_log_appends_total" => &mut s.appends,
                "hookrelay_log_commits_total" => &mut s.commits,
                "hookrelay_log_fsyncs_total" => &mut s.fsyncs,
                "hookrelay_log_commit_seconds_sum" => &mut s.commit_seconds,
                _ => continue,
            };
            if let Ok(v) = value.parse::<f64>() {
                *slot += v;
                seen = true;
            }
        }
        seen.then_some(s)
    }

    /// Scrapes `api`'s `/metrics`; `None` when that fails or has no log counters.
    pub async fn take(api: &Api) -> Option<LogSample> {
        match api.call(Method::GET, "/metrics", None, None).await {
            Ok((200, Value::String(text))) => LogSample::parse(&text, Instant::now()),
            _ => None,
        }
    }
}

/// The `le` of a histogram bucket's series, in seconds (`+Inf` as infinity).
fn le_of(series: &str) -> Option<f64> {
    let rest = &series[series.find("le=\"")? + 4..];
    let le = &rest[..rest.find('"')?];
    if le == "+Inf" {
        Some(f64::INFINITY)
    } else {
        le.parse().ok()
    }
}

/// The log's work between two samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LogRates {
    pub fsyncs_per_s: f64,
    pub records_per_commit: f64,
    pub commit_mean_ms: f64,
    /// The bucket `[above, up to]` (ms) of the slowest commit of the window.
    pub slowest_commit_ms: Option<(f64, f64)>,
    /// The bucket `[above, up to]` (ms) of the latest any shard's thread got to its timer.
    pub shard_lag_max_ms: Option<(f64, f64)>,
}

impl LogRates {
    /// `None` when `b` is not after `a` or no commit happened in between (a restarted log
    /// counts from 0 again, which also lands here).
    pub fn between(a: &LogSample, b: &LogSample) -> Option<LogRates> {
        let secs = b.at.checked_duration_since(a.at)?.as_secs_f64();
        let commits = b.commits - a.commits;
        if secs <= 0.0 || commits <= 0.0 || b.fsyncs < a.fsyncs {
            return None;
        }
        Some(LogRates {
            fsyncs_per_s: (b.fsyncs - a.fsyncs) / secs,
            records_per_commit: (b.appends - a.appends) / commits,
            commit_mean_ms: (b.commit_seconds - a.commit_seconds) * 1e3 / commits,
            slowest_commit_ms: Buckets::highest_between(&a.commit_buckets, &b.commit_buckets),
            shard_lag_max_ms: Buckets::highest_between(&a.lag_buckets, &b.lag_buckets),
        })
    }

    /// "2310 fsyncs/s, 2.2 records/commit, commit 0.42 ms (slowest ≤ 2.5), shard lag ≤ 5 ms".
    pub fn text(&self) -> String {
        let mut t = format!(
            "{:.0} fsyncs/s, {:.1} records/commit, commit {:.2} ms",
            self.fsyncs_per_s, self.records_per_commit, self.commit_mean_ms
        );
        if let Some(b) = self.slowest_commit_ms {
            t.push_str(&format!(" (slowest {})", bucket_text(b)));
        }
        if let Some(b) = self.shard_lag_max_ms {
            t.push_str(&format!(", shard lag {} ms", bucket_text(b)));
        }
        t
    }
}

/// "≤ 2.5", or "> 1000" for the overflow bucket.
fn bucket_text((above, up_to): (f64, f64)) -> String {
    if up_to.is_finite() {
        format!("≤ {up_to}")
    } else {
        format!("> {above}")
    }
}

/// Runs `load`, sampling `api`'s log counters once `warmup` has passed and again at the end.
pub async fn during(
    api: Option<&Api>,
    warmup: Duration,
    load: impl Future<Output = anyhow::Result<LoadResult>>,
) -> anyhow::Result<(LoadResult, Option<LogRates>)> {
    let Some(api) = api else {
        return Ok((load.await?, None));
    };
    let first = async {
        tokio::time::sleep(warmup).await;
        LogSample::take(api).await
    };
    let (result, first) = tokio::join!(load, first);
    let result = result?;
    let last = LogSample::take(api).await;
    let rates = first.zip(last).and_then(|(a, b)| LogRates::between(&a, &b));
    Ok((result, rates))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP hookrelay_log_appends_total Records appended.
# TYPE hookrelay_log_appends_total counter
hookrelay_log_appends_total{shard=\"0\"} 100
hookrelay_log_appends_total{shard=\"1\"} 20
hookrelay_log_commits_total{shard=\"0\"} 40
hookrelay_log_commits_total{shard=\"1\"} 10
hookrelay_log_fsyncs_total{shard=\"0\"} 41
hookrelay_log_fsyncs_total{shard=\"1\"} 10
hookrelay_log_commit_seconds_bucket{le=\"0.0005\"} 45
hookrelay_log_commit_seconds_bucket{le=\"0.001\"} 50
hookrelay_log_commit_seconds_bucket{le=\"0.25\"} 50
hookrelay_log_commit_seconds_bucket{le=\"+Inf\"} 50
hookrelay_log_commit_seconds_sum 0.025
hookrelay_log_commit_seconds_count 50
hookrelay_inflight 3
";

    #[test]
    fn a_sample_adds_up_every_shard() {
        let s = LogSample::parse(TEXT, Instant::now()).unwrap();
        assert_eq!(
            (s.appends, s.commits, s.fsyncs, s.commit_seconds),
            (120.0, 50.0, 51.0, 0.025)
        );
        assert_eq!(
            LogSample::parse("hookrelay_inflight 0\n", Instant::now()),
            None
        );
    }

    #[test]
    fn rates_are_per_second_and_per_commit() {
        let t0 = Instant::now();
        let a = LogSample::parse(TEXT, t0).unwrap();
        let b = LogSample {
            at: t0 + Duration::from_secs(2),
            appends: a.appends + 300.0,
            commits: a.commits + 100.0,
            fsyncs: a.fsyncs + 102.0,
            commit_seconds: a.commit_seconds + 0.05,
            ..a.clone()
        };
        let r = LogRates::between(&a, &b).unwrap();
        assert_eq!(r.fsyncs_per_s, 51.0);
        assert_eq!(r.records_per_commit, 3.0);
        assert!((r.commit_mean_ms - 0.5).abs() < 1e-9, "{r:?}");
        assert_eq!(r.text(), "51 fsyncs/s, 3.0 records/commit, commit 0.50 ms");
        // No commit in between, or the counters went back (a restarted log): no rates.
        assert_eq!(LogRates::between(&a, &a), None);
        let restarted = LogSample { fsyncs: 0.0, ..b };
        assert_eq!(LogRates::between(&a, &restarted), None);
    }

    /// The slowest commit and the worst shard lag of a window are the highest buckets that
    /// counted something in it; series of several shards add up.
    #[test]
    fn the_window_s_slowest_buckets() {
        let t0 = Instant::now();
        let a = LogSample::parse(TEXT, t0).unwrap();
        let later = "\
hookrelay_log_commits_total{shard=\"0\"} 100
hookrelay_log_appends_total{shard=\"0\"} 300
hookrelay_log_fsyncs_total{shard=\"0\"} 101
hookrelay_log_commit_seconds_bucket{le=\"0.0005\"} 90
hookrelay_log_commit_seconds_bucket{le=\"0.001\"} 98
hookrelay_log_commit_seconds_bucket{le=\"0.25\"} 100
hookrelay_log_commit_seconds_bucket{le=\"+Inf\"} 100
hookrelay_log_commit_seconds_sum 0.3
hookrelay_shard_lag_seconds_bucket{le=\"0.001\"} 10
hookrelay_shard_lag_seconds_bucket{le=\"1\"} 10
hookrelay_shard_lag_seconds_bucket{le=\"+Inf\"} 12
";
        let b = LogSample::parse(later, t0 + Duration::from_secs(1)).unwrap();
        let r = LogRates::between(&a, &b).unwrap();
        assert_eq!(r.slowest_commit_ms, Some((1.0, 250.0)));
        assert_eq!(r.shard_lag_max_ms, Some((1000.0, f64::INFINITY)));
        assert_eq!(
            r.text(),
            "50 fsyncs/s, 3.6 records/commit, commit 5.50 ms (slowest ≤ 250), shard lag > 1000 ms"
        );
        // Nothing new in the window: no bucket.
        assert_eq!(
            Buckets::highest_between(&b.lag_buckets, &b.lag_buckets),
            None
        );
        let mut two = Buckets::default();
        two.add(0.001, 1.0);
        two.add(0.001, 2.0);
        two.add(f64::INFINITY, 3.0);
        assert_eq!(
            Buckets::highest_between(&Buckets::default(), &two),
            Some((0.0, 1.0))
        );
    }
}
