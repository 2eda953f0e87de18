//! Per-shard delivery scheduling: which delivery goes out next, and when.
//!
//! Each endpoint has a queue of deliveries due now (`ready`), deliveries parked on the timer
//! wheel until their backoff ends (`waiting`), and attempts running (`in_flight`). Memory is
//! bounded per endpoint by `cap`: past it, the endpoint *overflows* — new deliveries stay only
//! in the log (status queued in the state table) and the queue remembers the lowest sequence
//! number not in memory (`overflow_from`). When the queue drains, the shard refills it by
//! scanning the state table from that cursor. A receiver down for a day therefore costs a
//! cursor, not millions of timers (ARCHITECTURE.md invariant 5).
//!
//! The circuit breaker: after `failures_to_open` consecutive retryable failures an endpoint's
//! circuit opens; while open, one attempt (a probe) goes out per `probe_interval`, and the
//! other due deliveries wait without spending attempts. A successful probe closes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use crate::wheel::Wheel;

/// One delivery the scheduler knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub ingest_offset: u64,
    pub last_offset: u64,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Limits a queue is scheduled under (from the endpoint's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: u32,
    pub rate_limit_per_s: Option<u32>,
    pub paused: bool,
}

#[derive(Debug, Default)]
pub struct EndpointQueue {
    pub ready: VecDeque<Entry>,
    pub waiting: usize,
    pub in_flight: u32,
    /// Lowest sequence number of this endpoint's queued deliveries that are not in memory.
    pub overflow_from: Option<u64>,
    pub consecutive_failures: u32,
    /// While set, the circuit is open until this time; then one probe may go.
    pub open_until_ms: Option<u64>,
    tokens: f64,
    tokens_at_ms: u64,
}

impl EndpointQueue {
    /// Deliveries this queue holds in memory.
    pub fn in_memory(&self) -> usize {
        self.ready.len() + self.waiting + self.in_flight as usize
    }

    fn take_token(&mut self, rate: Option<u32>, now_ms: u64) -> Result<(), u64> {
        let Some(rate) = rate.filter(|r| *r > 0) else {
            return Ok(());
        };
        let rate = f64::from(rate);
        let elapsed_s = now_ms.saturating_sub(self.tokens_at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed_s * rate).min(rate);
        self.tokens_at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
            Err(now_ms + wait_ms.max(1))
        }
    }
}

/// Where a newly known delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    InMemory,
    /// Left in the log: the endpoint's queue is full.
    Overflow,
}

/// What happened to an attempt, for the scheduler's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Success,
    /// Final without success (failed or exhausted).
    Final {
        retryable_failure: bool,
    },
    /// Try again at `due_ms`.
    Retry {
        due_ms: u64,
    },
}

pub struct Scheduler {
    queues: HashMap<Rc<str>, EndpointQueue>,
    wheel: Wheel<(Rc<str>, Entry)>,
    dirty: VecDeque<Rc<str>>,
    dirty_set: HashSet<Rc<str>>,
    cap: usize,
    failures_to_open: u32,
    probe_interval_ms: u64,
    /// Earliest time a rate-limited or breaker-held queue wants another look.
    wake_at_ms: Option<u64>,
    fired: Vec<(u64, (Rc<str>, Entry))>,
}

impl Scheduler {
    pub fn new(now_ms: u64, cap: usize, failures_to_open: u32, probe_interval_ms: u64) -> Self {
        assert!(cap > 0);
        Scheduler {
            queues: HashMap::new(),
            wheel: Wheel::new(now_ms),
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            cap,
            failures_to_open: failures_to_open.max(1),
            probe_interval_ms,
            wake_at_ms: None,
            fired: Vec::new(),
        }
    }

    fn key(&mut self, endpoint_id: &str) -> Rc<str> {
        match self.queues.get_key_value(endpoint_id) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Rc<str> = Rc::from(endpoint_id);
                self.queues.insert(k.clone(), EndpointQueue::default());
                k
            }
        }
    }

    fn mark_dirty(&mut self, k: &Rc<str>) {
        if self.dirty_set.insert(k.clone()) {
            self.dirty.push_back(k.clone());
        }
    }

    /// Marks every queue for a look (after a metadata change such as resume).
    pub fn mark_all_dirty(&mut self) {
        let keys: Vec<Rc<str>> = self.queues.keys().cloned().collect();
        for k in keys {
            self.mark_dirty(&k);
        }
    }

    pub fn queue(&self, endpoint_id: &str) -> Option<&EndpointQueue> {
        self.queues.get(endpoint_id)
    }

    /// Endpoints whose queues overflowed into the log and now have room to refill.
    pub fn wants_refill(&self) -> Vec<(Rc<str>, u64)> {
        self.queues
            .iter()
            .filter_map(|(k, q)| {
                let from = q.overflow_from?;
                (q.in_memory() <= self.cap / 2).then(|| (k.clone(), from))
            })
            .collect()
    }

    /// Room left in memory for an endpoint's queue.
    pub fn room(&self, endpoint_id: &str) -> usize {
        self.cap
            .saturating_sub(self.queues.get(endpoint_id).map_or(0, |q| q.in_memory()))
    }

    /// Moves a refilled cursor: deliveries below `next_from` are in memory now, or none left.
    pub fn set_overflow(&mut self, endpoint_id: &str, from: Option<u64>) {
        if let Some(q) = self.queues.get_mut(endpoint_id) {
            q.overflow_from = from;
        }
    }

    /// A delivery that should go out at `due_ms` (or now). Honours the per-endpoint cap.
    pub fn admit(
        &mut self,
        endpoint_id: &str,
        entry: Entry,
        due_ms: Option<u64>,
        now_ms: u64,
    ) -> Admit {
        let k = self.key(endpoint_id);
        let cap = self.cap;
        let q = self.queues.get_mut(&k).expect("queue exists");
        if let Some(from) = q.overflow_from {
            // Everything at or above the cursor stays in the log; keep the cursor lowest.
            q.overflow_from = Some(from.min(entry.seq));
            return Admit::Overflow;
        }
        if q.in_memory() >= cap {
            q.overflow_from = Some(entry.seq);
            return Admit::Overflow;
        }
        self.place(k, entry, due_ms, now_ms);
        Admit::InMemory
    }

    /// Like [`Scheduler::admit`] for the refill scan, which has checked the room itself.
    pub fn admit_refilled(
        &mut self,
        endpoint_id: &str,
        entry: Entry,
        due_ms: Option<u64>,
        now_ms: u64,
    ) {
        let k = self.key(endpoint_id);
        self.place(k, entry, due_ms, now_ms);
    }

    fn place(&mut self, k: Rc<str>, entry: Entry, due_ms: Option<u64>, now_ms: u64) {
        let q = self.queues.get_mut(&k).expect("queue exists");
        match due_ms.filter(|d| *d > now_ms) {
            Some(due) => {
                q.waiting += 1;
                self.wheel.insert(due, (k, entry));
            }
            None => {
                q.ready.push_back(entry);
                self.mark_dirty(&k);
            }
        }
    }

    /// Moves every timer due by `now_ms` to its endpoint's ready queue.
    pub fn advance(&mut self, now_ms: u64) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(now_ms, &mut fired);
        for (_, (k, entry)) in fired.drain(..) {
            if let Some(q) = self.queues.get_mut(&k) {
                q.waiting -= 1;
                q.ready.push_back(entry);
                self.mark_dirty(&k);
            }
        }
        self.fired = fired;
        if self.wake_at_ms.is_some_and(|w| w <= now_ms) {
            self.wake_at_ms = None;
            self.mark_all_dirty();
        }
    }

    /// When the scheduler next has something to do without outside events.
    pub fn next_wake_ms(&self) -> Option<u64> {
        match (self.wheel.next_due(), self.wake_at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn wake_at(&mut self, at_ms: u64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    /// Takes the attempts that may start now, at most `slots` of them. `limits` gives each
    /// endpoint's limits, or `None` when the endpoint no longer exists; such entries are
    /// returned in `orphans` so the shard can finalize them.
    pub fn take_dispatchable(
        &mut self,
        now_ms: u64,
        mut slots: usize,
        limits: impl Fn(&str) -> Option<Limits>,
        out: &mut Vec<(Rc<str>, Entry)>,
        orphans: &mut Vec<(Rc<str>, Entry)>,
    ) {
        let mut still_dirty = Vec::new();
        while slots > 0 {
            let Some(k) = self.dirty.pop_front() else {
                break;
            };
            self.dirty_set.remove(&k);
            let Some(lim) = limits(&k) else {
                if let Some(q) = self.queues.get_mut(&k) {
                    orphans.extend(q.ready.drain(..).map(|e| (k.clone(), e)));
                }
                continue;
            };
            let mut wake = None;
            let q = self.queues.get_mut(&k).expect("dirty queues exist");
            if lim.paused {
                continue;
            }
            while slots > 0 && !q.ready.is_empty() && q.in_flight < lim.max_in_flight.max(1) {
                if let Some(until) = q.open_until_ms {
                    // Open circuit: only one probe at a time, and only after the interval.
                    if q.in_flight > 0 {
                        break;
                    }
                    if now_ms < until {
                        wake = Some(until);
                        break;
                    }
                }
                if let Err(at) = q.take_token(lim.rate_limit_per_s, now_ms) {
                    wake = Some(at);
                    break;
                }
                let entry = q.ready.pop_front().expect("checked non-empty");
                q.in_flight += 1;
                slots -= 1;
                out.push((k.clone(), entry));
                if q.open_until_ms.is_some() {
                    break;
                }
            }
            if let Some(at) = wake {
                self.wake_at(at);
            } else if slots == 0 {
                still_dirty.push(k);
            }
        }
        for k in still_dirty {
            self.mark_dirty(&k);
        }
    }

    /// Records the end of an attempt of `entry` (already updated: attempts, last_offset).
    pub fn done(&mut self, endpoint_id: &str, entry: Entry, done: Done, now_ms: u64) {
        let k = self.key(endpoint_id);
        let failures_to_open = self.failures_to_open;
        let probe_interval_ms = self.probe_interval_ms;
        let q = self.queues.get_mut(&k).expect("queue exists");
        assert!(q.in_flight > 0, "attempt finished that never started");
        q.in_flight -= 1;
        let failure = match done {
            Done::Success => false,
            Done::Retry { .. } => true,
            Done::Final { retryable_failure } => retryable_failure,
        };
        if done == Done::Success {
            q.consecutive_failures = 0;
            q.open_until_ms = None;
        } else if failure {
            q.consecutive_failures = q.consecutive_failures.saturating_add(1);
            if q.consecutive_failures >= failures_to_open {
                q.open_until_ms = Some(now_ms + probe_interval_ms);
            }
        }
        if let Done::Retry { due_ms } = done {
            self.place(k.clone(), entry, Some(due_ms), now_ms);
        }
        self.mark_dirty(&k);
    }

    /// Drops the queue of an endpoint that has nothing left in memory or in the log.
    pub fn forget_if_idle(&mut self, endpoint_id: &str) {
        if self
            .queues
            .get(endpoint_id)
            .is_some_and(|q| q.in_memory() == 0 && q.overflow_from.is_none())
        {
            self.queues.remove(endpoint_id);
        }
    }

    /// Counts an entry handed out as an orphan as in flight, so that its `done` balances.
    pub fn count_in_flight(&mut self, endpoint_id: &str) {
        let k = self.key(endpoint_id);
        if let Some(q) = self.queues.get_mut(&k) {
            q.in_flight += 1;
        }
    }

    pub fn in_flight_total(&self) -> usize {
        self.queues.values().map(|q| q.in_flight as usize).sum()
    }

    /// The lowest sequence number among deliveries due and waiting for a slot (every ready
    /// entry: a retry re-enters behind newer ones) and overflow cursors. For the queue-age
    /// gauge; costs O(deliveries in memory), bounded by `cap` per endpoint.
    pub fn oldest_waiting_seq(&self) -> Option<u64> {
        self.queues
            .values()
            .flat_map(|q| q.ready.iter().map(|e| e.seq).chain(q.overflow_from))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64) -> Entry {
        Entry {
            seq,
            ingest_offset: seq,
            last_offset: seq,
            attempts: 0,
        }
    }
    fn lim(max: u32) -> Option<Limits> {
        Some(Limits {
            max_in_flight: max,
            rate_limit_per_s: None,
            paused: false,
        })
    }

    #[test]
    fn honours_max_in_flight_and_retries_later() {
        let mut s = Scheduler::new(0, 100, 5, 1000);
        for i in 0..5 {
            assert_eq!(s.admit("ep", e(i), None, 0), Admit::InMemory);
        }
        let (mut out, mut orphans) = (Vec::new(), Vec::new());
        s.take_dispatchable(0, 100, |_| lim(2), &mut out, &mut orphans);
        assert_eq!(out.len(), 2);
        s.take_dispatchable(0, 100, |_| lim(2), &mut out, &mut orphans);
        assert_eq!(out.len(), 2, "no new slot until one finishes");
        let (_, first) = out[0];
        s.done("ep", first, Done::Retry { due_ms: 50 }, 0);
        s.take_dispatchable(0, 100, |_| lim(2), &mut out, &mut orphans);
        assert_eq!(out.len(), 3);
        assert_eq!(s.next_wake_ms().map(|w| w <= 50), Some(true));
        s.advance(49);
        assert_eq!(s.queue("ep").unwrap().waiting, 1);
        s.advance(50);
        assert_eq!(s.queue("ep").unwrap().waiting, 0);
        assert_eq!(s.queue("ep").unwrap().ready.len(), 3);
    }

    #[test]
    fn overflow_keeps_a_cursor_and_refill_is_requested() {
        let mut s = Scheduler::new(0, 4, 5, 1000);
        for i in 0..4 {
            assert_eq!(s.admit("ep", e(i), None, 0), Admit::InMemory);
        }
        assert_eq!(s.admit("ep", e(4), None, 0), Admit::Overflow);
        assert_eq!(s.admit("ep", e(5), None, 0), Admit::Overflow);
        assert_eq!(s.queue("ep").unwrap().overflow_from, Some(4));
        assert_eq!(s.queue("ep").unwrap().in_memory(), 4);
        assert!(s.wants_refill().is_empty());
        let (mut out, mut orphans) = (Vec::new(), Vec::new());
        s.take_dispatchable(0, 100, |_| lim(10), &mut out, &mut orphans);
        for (_, en) in out.drain(..) {
            s.done("ep", en, Done::Success, 0);
        }
        assert_eq!(s.wants_refill().len(), 1);
        assert_eq!(s.room("ep"), 4);
    }

    #[test]
    fn paused_endpoints_hold_and_deleted_ones_are_orphaned() {
        let mut s = Scheduler::new(0, 10, 5, 1000);
        s.admit("p", e(1), None, 0);
        s.admit("gone", e(2), None, 0);
        let (mut out, mut orphans) = (Vec::new(), Vec::new());
        s.take_dispatchable(
            0,
            10,
            |k| {
                if k == "p" {
                    Some(Limits {
                        max_in_flight: 5,
                        rate_limit_per_s: None,
                        paused: true,
                    })
                } else {
                    None
                }
            },
            &mut out,
            &mut orphans,
        );
        assert!(out.is_empty());
        assert_eq!(orphans.len(), 1);
        s.mark_all_dirty();
        s.take_dispatchable(0, 10, |_| lim(5), &mut out, &mut orphans);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn breaker_opens_after_failures_and_probes_one_at_a_time() {
        let mut s = Scheduler::new(0, 100, 2, 1000);
        for i in 0..10 {
            s.admit("ep", e(i), None, 0);
        }
        let (mut out, mut orphans) = (Vec::new(), Vec::new());
        s.take_dispatchable(0, 100, |_| lim(2), &mut out, &mut orphans);
        assert_eq!(out.len(), 2);
        for (_, en) in out.drain(..) {
            s.done("ep", en, Done::Retry { due_ms: 10 }, 0);
        }
        assert_eq!(s.queue("ep").unwrap().open_until_ms, Some(1000));
        s.take_dispatchable(500, 100, |_| lim(2), &mut out, &mut orphans);
        assert!(out.is_empty(), "open circuit holds deliveries");
        s.advance(1000);
        s.take_dispatchable(1000, 100, |_| lim(2), &mut out, &mut orphans);
        assert_eq!(out.len(), 1, "one probe");
        let (_, probe) = out.pop().unwrap();
        s.done("ep", probe, Done::Success, 1001);
        s.take_dispatchable(1001, 100, |_| lim(2), &mut out, &mut orphans);
        assert_eq!(out.len(), 2, "closed again");
    }

    #[test]
    fn rate_limit_spaces_attempts() {
        let mut s = Scheduler::new(0, 100, 5, 1000);
        for i in 0..10 {
            s.admit("ep", e(i), None, 0);
        }
        let l = || {
            Some(Limits {
                max_in_flight: 100,
                rate_limit_per_s: Some(2),
                paused: false,
            })
        };
        let (mut out, mut orphans) = (Vec::new(), Vec::new());
        // The bucket starts empty and fills at 2/s.
        s.take_dispatchable(0, 100, |_| l(), &mut out, &mut orphans);
        assert!(out.is_empty());
        let wake = s.next_wake_ms().unwrap();
        assert!(wake > 0 && wake <= 500);
        s.advance(1000);
        s.take_dispatchable(1000, 100, |_| l(), &mut out, &mut orphans);
        assert_eq!(out.len(), 2);
    }
}
