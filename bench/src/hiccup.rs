//! The machine's own stalls during a run, measured as jHiccup measures them: a thread sleeps
//! [`TICK`] over and over and records how much later than asked it woke up.
//!
//! A latency figure mixes what HookRelay does with what the machine does to it. On a virtual
//! machine whose CPU time is capped by its host (a CFS bandwidth quota shared by the vCPUs and
//! the host's I/O threads), every vCPU can be frozen until the end of the host's period. The
//! guest sees nothing of it (no steal time), only time that passes without any thread running
//! (BENCHMARKS.md §2, "The 5k tail is the host's CPU quota"). The probe makes that visible in
//! every run's report.
//!
//! The probe asks for real-time priority (`SCHED_FIFO`, the lowest level), so that it runs as
//! soon as it is due whatever the server and the generator are doing: what it then sees is the
//! machine (the host, interrupts, non-preemptible kernel work), not the run queue that the
//! server's own CPU use makes. Without the privilege it runs at normal priority and says so; its
//! figures then also hold the guest's scheduling delays.
//!
//! A stall of `n` ticks is recorded with hdrhistogram's correction for coordinated omission (as
//! the load generator's latencies are), so that the hiccup quantiles are fractions of time, not
//! of wake-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hist::{LatencyHist, Summary, fmt_ms};

/// How long the probe sleeps between two looks at the clock.
pub const TICK: Duration = Duration::from_millis(1);
/// A wake-up at least this late counts as a stall: above any scheduler's wake-up slack and a
/// few times the time a server takes to answer at the rates the bench judges.
pub const STALL: Duration = Duration::from_millis(3);

/// What the probe saw over a window.
pub struct Hiccups {
    /// How late each wake-up was (corrected for the wake-ups a stall swallowed).
    hist: LatencyHist,
    /// Length of the window the probe recorded.
    window: Duration,
    /// Wake-ups at least [`STALL`] late.
    stalls: u64,
    /// The lateness of those wake-ups, summed: time in which nothing ran when due.
    lost: Duration,
    /// Whether the probe ran at real-time priority.
    realtime: bool,
}

/// The figures a report shows.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HiccupSummary {
    pub window_s: f64,
    /// Stalls of at least `stall_ms`.
    pub stalls: u64,
    pub stall_ms: f64,
    pub stalls_per_s: f64,
    /// Milliseconds lost to those stalls, and their share of the window.
    pub lost_ms: f64,
    pub lost_pct: f64,
    /// Lateness of the probe's wake-ups.
    pub hiccup: Summary,
    /// True when the probe ran at real-time priority (it then sees the machine alone).
    pub realtime: bool,
}

impl Hiccups {
    fn new(realtime: bool) -> Self {
        Hiccups {
            hist: LatencyHist::new(),
            window: Duration::ZERO,
            stalls: 0,
            lost: Duration::ZERO,
            realtime,
        }
    }

    /// One wake-up, `late` after it was due.
    fn record(&mut self, late: Duration) {
        self.hist.record_corrected(late, TICK);
        if late >= STALL {
            self.stalls += 1;
            self.lost += late;
        }
    }

    pub fn summary(&self) -> HiccupSummary {
        let secs = self.window.as_secs_f64();
        let per = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        HiccupSummary {
            window_s: secs,
            stalls: self.stalls,
            stall_ms: STALL.as_secs_f64() * 1e3,
            stalls_per_s: per(self.stalls as f64),
            lost_ms: self.lost.as_secs_f64() * 1e3,
            lost_pct: per(self.lost.as_secs_f64()) * 100.0,
            hiccup: self.hist.summary(),
            realtime: self.realtime,
        }
    }
}

impl HiccupSummary {
    /// `stalls ≥ 3 ms: 58 (9.7/s), 442 ms lost (7.4 % of the window); hiccup p99 9.12 / max
    /// 11.2 ms (real-time probe)`.
    pub fn line(&self) -> String {
        format!(
            "stalls ≥ {} ms: {} ({:.1}/s), {} ms lost ({:.1} % of the window); hiccup p99 {} / max {} ms ({})",
            fmt_ms(self.stall_ms),
            self.stalls,
            self.stalls_per_s,
            fmt_ms(self.lost_ms),
            self.lost_pct,
            fmt_ms(self.hiccup.p99_ms),
            fmt_ms(self.hiccup.max_ms),
            if self.realtime {
                "real-time probe"
            } else {
                "normal-priority probe: includes run-queue waits"
            }
        )
    }
}

/// A probe thread recording from `from` until it is finished (or `until`, at the latest).
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Hiccups>,
}

impl Probe {
    /// Starts the probe; it records the wake-ups from `from` on, until [`Probe::finish`] or
    /// `until`, whichever comes first.
    pub fn start(from: Instant, until: Instant) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("bench-hiccup".into())
            .spawn(move || run(from, until, &flag))?;
        Ok(Probe { stop, handle })
    }

    /// Stops the probe (a load may end long before its planned end: a closed loop that sent
    /// its `max_requests`) and returns what it saw.
    pub fn finish(self) -> anyhow::Result<Hiccups> {
        self.stop.store(true, Ordering::Release);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the hiccup probe panicked"))
    }
}

fn run(from: Instant, until: Instant, stop: &AtomicBool) -> Hiccups {
    let mut h = Hiccups::new(ask_realtime());
    crate::load::set_fine_timer_slack();
    // Waits for `from` in steps of at most 50 ms, so that a stop before it is seen.
    while Instant::now() < from {
        if stop.load(Ordering::Acquire) {
            return h;
        }
        std::thread::sleep(
            TICK.max(from.saturating_duration_since(Instant::now()))
                .min(Duration::from_millis(50)),
        );
    }
    let started = Instant::now();
    let mut last = started;
    while last < until && !stop.load(Ordering::Acquire) {
        std::thread::sleep(TICK);
        let now = Instant::now();
        h.record(now.saturating_duration_since(last + TICK));
        last = now;
    }
    h.window = last.saturating_duration_since(started);
    h
}

/// `SCHED_FIFO` at its lowest priority for this thread; false when not permitted.
fn ask_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_counts_its_lateness_and_the_ticks_it_swallowed() {
        let mut h = Hiccups::new(true);
        for _ in 0..1000 {
            h.record(Duration::from_micros(20));
        }
        h.record(Duration::from_millis(10));
        h.record(STALL - Duration::from_micros(1)); // just under: not a stall
        h.window = Duration::from_secs(1);
        let s = h.summary();
        assert_eq!(s.stalls, 1);
        assert!((s.lost_ms - 10.0).abs() < 1e-9, "{s:?}");
        assert!((s.lost_pct - 1.0).abs() < 1e-9, "{s:?}");
        assert!((s.stalls_per_s - 1.0).abs() < 1e-9, "{s:?}");
        // 1,002 wake-ups, plus those the two late ones stand for: 9, 8 .. 1 ms and 1.999 ms.
        assert_eq!(s.hiccup.count, 1002 + 9 + 1);
        assert!((s.hiccup.max_ms - 10.0).abs() < 0.01, "{s:?}");
        assert!(s.line().contains("1 (1.0/s)"), "{}", s.line());
    }

    #[test]
    fn finish_stops_the_probe_long_before_its_planned_end() {
        let from = Instant::now();
        // Planned for an hour; the test would hang if `finish` waited for it.
        let probe = Probe::start(from, from + Duration::from_secs(3600)).expect("spawn");
        std::thread::sleep(Duration::from_millis(20));
        let s = probe.finish().expect("join").summary();
        assert!(s.hiccup.count > 0, "{s:?}");
        assert!(s.window_s < 3600.0, "{s:?}");
        // Stopped before its window even began: nothing recorded.
        let later = Instant::now() + Duration::from_secs(3600);
        let probe = Probe::start(later, later + Duration::from_secs(1)).expect("spawn");
        let s = probe.finish().expect("join").summary();
        assert_eq!(s.hiccup.count, 0, "{s:?}");
    }

    #[test]
    fn the_probe_records_its_window() {
        let from = Instant::now();
        let until = from + Duration::from_millis(50);
        let probe = Probe::start(from, until).expect("spawn");
        // Ends by itself at `until`.
        while Instant::now() < until + Duration::from_millis(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let h = probe.finish().expect("join");
        let s = h.summary();
        assert!(s.hiccup.count > 0, "{s:?}");
        assert!(s.window_s > 0.0, "{s:?}");
        assert!(s.lost_ms <= s.window_s * 1e3, "{s:?}");
    }
}
