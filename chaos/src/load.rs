//! Signed ingest load from 127.0.0.1: `concurrency` workers, each sending one request at a time
//! (closed loop, optionally paced to a total rate), bounded by a request count and a duration.
//!
//! Every request is signed in the contract's `generic` mode and carries a unique
//! `Idempotency-Key`. A 2xx answer with a `delivery_id` is an ACK: HookRelay promised that
//! delivery is durable, and the suite holds it to that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::api::Endpoint;
use crate::http::Http;
use crate::signing::{sign_generic, unix_now};

/// Error messages kept as examples.
const EXAMPLES_MAX: usize = 5;
/// Pause after a refused or failed request, so a dead server is not hammered in a hot loop.
const BACKOFF_AFTER_ERROR: Duration = Duration::from_millis(25);

/// What to send.
#[derive(Clone)]
pub struct LoadSpec {
    pub base_url: String,
    pub endpoints: Vec<Endpoint>,
    pub concurrency: usize,
    pub body_bytes: usize,
    pub requests_max: u64,
    pub duration_max: Duration,
    /// Total requests per second over all workers; `None` = as fast as answers come.
    pub rate_per_s: Option<f64>,
    /// Unique per load run: the idempotency keys are `<tag>-<n>`.
    pub tag: String,
    /// Added to the signature timestamp (clock-skew signs "in the server's time").
    pub ts_offset_s: i64,
    pub timeout: Duration,
}

impl LoadSpec {
    pub fn new(base_url: String, endpoints: Vec<Endpoint>, tag: &str) -> Self {
        Self {
            base_url,
            endpoints,
            concurrency: 16,
            body_bytes: 256,
            requests_max: 1_000,
            duration_max: Duration::from_secs(10),
            rate_per_s: None,
            tag: tag.to_string(),
            ts_offset_s: 0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What the load saw.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Delivery ids answered 2xx.
    pub acked: BTreeSet<String>,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Problem `code`s of non-2xx answers.
    pub codes: BTreeMap<String, u64>,
    /// Requests without a complete answer (refused, reset, timed out).
    pub errors: u64,
    /// Requests sent.
    pub sent: u64,
    /// Latency of each 2xx answer, in microseconds.
    pub ack_latencies_us: Vec<u64>,
    /// Latency of every answer (any status), in microseconds.
    pub answer_latencies_us: Vec<u64>,
    pub examples: Vec<String>,
}

impl LoadStats {
    pub fn merge(&mut self, other: LoadStats) {
        self.acked.extend(other.acked);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.codes {
            *self.codes.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        self.sent += other.sent;
        self.ack_latencies_us.extend(other.ack_latencies_us);
        self.answer_latencies_us.extend(other.answer_latencies_us);
        for e in other.examples {
            if self.examples.len() < EXAMPLES_MAX {
                self.examples.push(e);
            }
        }
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// 2xx answers.
    pub fn ok_answers(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// `statuses` and errors as `202:120 503:4 err:2`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect();
        if self.errors > 0 {
            parts.push(format!("err:{}", self.errors));
        }
        if parts.is_empty() {
            "nothing sent".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Percentile (0..=100) of microsecond samples, in milliseconds.
pub fn percentile_ms(samples: &[u64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<LoadStats>>,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Self {
        assert!(!spec.endpoints.is_empty(), "load needs an endpoint");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let next = Arc::new(AtomicU64::new(0));
        let http = Http::new(spec.base_url.clone(), spec.concurrency, spec.timeout);
        let started = Instant::now();
        let spec = Arc::new(spec);
        let workers = (0..spec.concurrency.max(1))
            .map(|_| {
                tokio::spawn(worker(
                    spec.clone(),
                    http.clone(),
                    next.clone(),
                    stop.clone(),
                    stats.clone(),
                    started,
                ))
            })
            .collect();
        Self {
            stop,
            workers,
            stats,
        }
    }

    /// A copy of the stats so far.
    pub fn snapshot(&self) -> LoadStats {
        lock(&self.stats).clone()
    }

    /// Whether every worker has finished (count or duration reached).
    pub fn is_done(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Stops the workers (each finishes its request in flight) and returns the stats.
    pub async fn stop(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        self.wait().await
    }

    /// Waits for the workers to reach their bounds and returns the stats.
    pub async fn wait(mut self) -> LoadStats {
        for w in std::mem::take(&mut self.workers) {
            let _ = w.await;
        }
        lock(&self.stats).clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn worker(
    spec: Arc<LoadSpec>,
    http: Http,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    started: Instant,
) {
    let pad = "x".repeat(spec.body_bytes.saturating_sub(96));
    while !stop.load(Ordering::SeqCst) && started.elapsed() < spec.duration_max {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= spec.requests_max {
            break;
        }
        if let Some(rate) = spec.rate_per_s.filter(|r| *r > 0.0) {
            // Request n is due at n / rate seconds after the start.
            let due = Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                if started.elapsed() + wait >= spec.duration_max {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
        let endpoint = &spec.endpoints[(n as usize) % spec.endpoints.len()];
        let body = json!({"chaos": spec.tag, "n": n, "pad": pad}).to_string();
        let mut headers: Vec<(String, String)> = sign_generic(
            &endpoint.secret,
            body.as_bytes(),
            unix_now() + spec.ts_offset_s,
        )
        .into();
        headers.push(("content-type".into(), "application/json".into()));
        headers.push(("idempotency-key".into(), format!("{}-{n}", spec.tag)));
        let sent_at = Instant::now();
        let result = http
            .send(
                Method::POST,
                &format!("/ingest/{}", endpoint.id),
                Bytes::from(body),
                &headers,
            )
            .await;
        let latency_us = sent_at.elapsed().as_micros() as u64;
        let mut pause = Duration::ZERO;
        {
            let mut s = lock(&stats);
            s.sent += 1;
            match result {
                Ok(r) => {
                    *s.statuses.entry(r.status).or_default() += 1;
                    s.answer_latencies_us.push(latency_us);
                    let v = r.json().unwrap_or_default();
                    if (200..300).contains(&r.status) {
                        match v["delivery_id"].as_str() {
                            Some(id) => {
                                s.acked.insert(id.to_string());
                                s.ack_latencies_us.push(latency_us);
                            }
                            None => {
                                if s.examples.len() < EXAMPLES_MAX {
                                    s.examples
                                        .push(format!("2xx without delivery_id: {}", r.text()));
                                }
                            }
                        }
                    } else {
                        let code = v["code"].as_str().unwrap_or("-").to_string();
                        *s.codes.entry(code).or_default() += 1;
                        pause = BACKOFF_AFTER_ERROR;
                    }
                }
                Err(e) => {
                    s.errors += 1;
                    if s.examples.len() < EXAMPLES_MAX {
                        s.examples.push(format!("{e:#}"));
                    }
                    pause = BACKOFF_AFTER_ERROR;
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.0), 1.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert!((percentile_ms(&v, 50.0) - 50.0).abs() <= 1.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
    }
}
