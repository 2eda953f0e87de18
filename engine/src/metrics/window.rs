//! Time windows of one endpoint's delivery events: per-minute slots for the last hour and
//! per-hour slots for the last 7 days, in rings that reuse a slot once its time has passed.
//!
//! An event counts in a window while its slot is inside it: the 1 h window is the current
//! minute and the 59 before it, the 24 h window the current hour and the 23 before, the 7 d
//! window the current hour and the 167 before. So an event leaves a window between
//! `window - slot` and `window` after it happened (a minute early at most for 1 h, an hour for
//! 24 h and 7 d). Time is passed in (`now_ms`, `at_ms`), never read here, so tests drive it.
//!
//! Memory: a ring is allocated on the endpoint's first event (60 or 168 slot pointers, 8 bytes
//! each); a slot is boxed on its first event (~64 bytes) and holds a sparse latency histogram
//! (8 bytes per non-empty bucket, at most [`super::histogram::BUCKETS`]) and up to
//! [`FAILURE_CLASSES_PER_SLOT_MAX`] failure classes.

use super::histogram::{Histogram, SparseHistogram};

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;
/// Slots of the minute ring (the 1 h window).
pub const MINUTE_SLOTS: usize = 60;
/// Slots of the hour ring (the 24 h and 7 d windows).
pub const HOUR_SLOTS: usize = 168;
/// Distinct failure classes one slot keeps; more count under [`OTHER_CLASS`].
pub const FAILURE_CLASSES_PER_SLOT_MAX: usize = 16;
/// The class id failures past the per-slot limit are counted under.
pub const OTHER_CLASS: u16 = 0;

/// The windows of `GET /v1/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Week,
}

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "1h" => Some(Window::Hour),
            "24h" => Some(Window::Day),
            "7d" => Some(Window::Week),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }
    /// The window's length.
    pub fn span_ms(self) -> u64 {
        match self {
            Window::Hour => HOUR_MS,
            Window::Day => 24 * HOUR_MS,
            Window::Week => 7 * 24 * HOUR_MS,
        }
    }
}

/// One delivery event, as the windows count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A delivery was ingested.
    Created,
    /// A delivery reached a final status.
    Success,
    Failed,
    Exhausted,
    /// An attempt was made; `latency_ms` counts for successful ones.
    Attempt {
        success: bool,
        latency_ms: u64,
    },
    /// An attempt failed with this (interned) error class.
    Failure {
        class: u16,
    },
}

/// Counts of one slot, or of a whole window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub success: u64,
    pub failed: u64,
    pub exhausted: u64,
    pub attempts: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.created += o.created;
        self.success += o.success;
        self.failed += o.failed;
        self.exhausted += o.exhausted;
        self.attempts += o.attempts;
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// The minute or hour (since the epoch) this slot holds.
    index: u64,
    created: u32,
    success: u32,
    failed: u32,
    exhausted: u32,
    attempts: u32,
    failures: Vec<(u16, u32)>,
    latency: SparseHistogram,
}

impl Slot {
    fn reset(&mut self, index: u64) {
        *self = Slot {
            index,
            failures: std::mem::take(&mut self.failures),
            latency: std::mem::take(&mut self.latency),
            ..Slot::default()
        };
        self.failures.clear();
        self.latency.clear();
    }

    fn record(&mut self, event: Event) {
        let bump = |c: &mut u32| *c = c.saturating_add(1);
        match event {
            Event::Created => bump(&mut self.created),
            Event::Success => bump(&mut self.success),
            Event::Failed => bump(&mut self.failed),
            Event::Exhausted => bump(&mut self.exhausted),
            Event::Attempt {
                success,
                latency_ms,
            } => {
                bump(&mut self.attempts);
                if success {
                    self.latency.record(latency_ms);
                }
            }
            Event::Failure { class } => {
                // One entry stays free for OTHER_CLASS, so a slot never holds more than the max.
                let class = if self.failures.iter().any(|(c, _)| *c == class)
                    || self.failures.len() < FAILURE_CLASSES_PER_SLOT_MAX - 1
                {
                    class
                } else {
                    OTHER_CLASS
                };
                match self.failures.iter_mut().find(|(c, _)| *c == class) {
                    Some((_, n)) => bump(n),
                    None => self.failures.push((class, 1)),
                }
            }
        }
    }
}

/// What a window query adds up.
#[derive(Debug, Default, Clone)]
pub struct WindowSum {
    pub counts: Counts,
    pub latency: Histogram,
    /// `(class id, count)`, unsorted, one entry per class.
    pub failures: Vec<(u16, u64)>,
}

impl WindowSum {
    fn add_slot(&mut self, s: &Slot) {
        self.counts.add(&Counts {
            created: u64::from(s.created),
            success: u64::from(s.success),
            failed: u64::from(s.failed),
            exhausted: u64::from(s.exhausted),
            attempts: u64::from(s.attempts),
        });
        self.latency.merge_sparse(&s.latency);
        for (class, n) in &s.failures {
            match self.failures.iter_mut().find(|(c, _)| c == class) {
                Some((_, total)) => *total += u64::from(*n),
                None => self.failures.push((*class, u64::from(*n))),
            }
        }
    }
}

/// A ring of `len` slots of `slot_ms` each.
#[derive(Debug)]
struct Ring {
    slot_ms: u64,
    len: usize,
    slots: Vec<Option<Box<Slot>>>,
}

impl Ring {
    fn new(slot_ms: u64, len: usize) -> Ring {
        Ring {
            slot_ms,
            len,
            slots: Vec::new(),
        }
    }

    /// Counts `event` at `at_ms`, unless the ring already moved past that time (the event is
    /// older than the whole ring, so no window could show it).
    fn record(&mut self, at_ms: u64, event: Event) {
        if self.slots.is_empty() {
            self.slots.resize_with(self.len, || None);
        }
        let index = at_ms / self.slot_ms;
        let pos = (index % self.len as u64) as usize;
        let slot = self.slots[pos].get_or_insert_with(|| {
            Box::new(Slot {
                index,
                ..Slot::default()
            })
        });
        if slot.index < index {
            slot.reset(index);
        } else if slot.index > index {
            return;
        }
        slot.record(event);
    }

    /// Adds the slots of the last `count` slot periods up to `now_ms` into `sum`. Slots ahead
    /// of `now_ms` (the clock stepped back) still count: their events happened.
    fn sum(&self, now_ms: u64, count: usize, sum: &mut WindowSum) {
        let now_index = now_ms / self.slot_ms;
        for slot in self.slots.iter().flatten() {
            if slot.index + count as u64 > now_index {
                sum.add_slot(slot);
            }
        }
    }

    /// Frees slots whose time has left the ring; true when nothing is left.
    fn trim(&mut self, now_ms: u64) -> bool {
        let now_index = now_ms / self.slot_ms;
        for s in self.slots.iter_mut() {
            if s.as_ref()
                .is_some_and(|slot| slot.index + self.len as u64 <= now_index)
            {
                *s = None;
            }
        }
        if self.slots.iter().all(Option::is_none) {
            self.slots = Vec::new();
            true
        } else {
            false
        }
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<Box<Slot>>>()
            + self
                .slots
                .iter()
                .flatten()
                .map(|s| {
                    std::mem::size_of::<Slot>()
                        + s.latency.heap_bytes()
                        + s.failures.capacity() * std::mem::size_of::<(u16, u32)>()
                })
                .sum::<usize>()
    }
}

/// The minute and hour rings of one endpoint.
#[derive(Debug)]
pub struct Windows {
    minutes: Ring,
    hours: Ring,
}

impl Default for Windows {
    fn default() -> Self {
        Windows::new()
    }
}

impl Windows {
    pub fn new() -> Windows {
        Windows {
            minutes: Ring::new(MINUTE_MS, MINUTE_SLOTS),
            hours: Ring::new(HOUR_MS, HOUR_SLOTS),
        }
    }

    /// Counts `event` that happened at `at_ms`; `now_ms` drops events already out of every
    /// window (so a replay of old records allocates nothing for them).
    pub fn record(&mut self, now_ms: u64, at_ms: u64, event: Event) {
        if at_ms + Window::Week.span_ms() <= now_ms {
            return;
        }
        if at_ms + Window::Hour.span_ms() > now_ms {
            self.minutes.record(at_ms, event);
        }
        self.hours.record(at_ms, event);
    }

    /// Adds the window ending at `now_ms` into `sum`.
    pub fn sum(&self, window: Window, now_ms: u64, sum: &mut WindowSum) {
        match window {
            Window::Hour => self.minutes.sum(now_ms, MINUTE_SLOTS, sum),
            Window::Day => self.hours.sum(now_ms, 24, sum),
            Window::Week => self.hours.sum(now_ms, HOUR_SLOTS, sum),
        }
    }

    /// Frees what has aged out; true when the endpoint has no events left in any window.
    pub fn trim(&mut self, now_ms: u64) -> bool {
        let minutes_empty = self.minutes.trim(now_ms);
        self.hours.trim(now_ms) && minutes_empty
    }

    /// Bytes of heap held, for the memory bound's test and the `/metrics` gauge.
    pub fn heap_bytes(&self) -> usize {
        self.minutes.heap_bytes() + self.hours.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_790_000_000_000;

    fn counts(w: &Windows, window: Window, now: u64) -> Counts {
        let mut s = WindowSum::default();
        w.sum(window, now, &mut s);
        s.counts
    }

    #[test]
    fn events_age_out_of_each_window() {
        let mut w = Windows::new();
        w.record(T0, T0, Event::Success);
        for window in [Window::Hour, Window::Day, Window::Week] {
            assert_eq!(counts(&w, window, T0).success, 1);
            // Still in at the end of the window minus one slot...
            let slot = if window == Window::Hour {
                MINUTE_MS
            } else {
                HOUR_MS
            };
            let start = T0 - T0 % slot;
            assert_eq!(
                counts(&w, window, start + window.span_ms() - 1).success,
                1,
                "{window:?}"
            );
            // ...and out once the slot has left it.
            assert_eq!(
                counts(&w, window, start + window.span_ms()).success,
                0,
                "{window:?}"
            );
        }
    }

    #[test]
    fn old_events_are_ignored_and_slots_reused() {
        let mut w = Windows::new();
        w.record(T0, T0 - 8 * 24 * HOUR_MS, Event::Created);
        assert_eq!(
            w.heap_bytes(),
            0,
            "an event out of every window allocates nothing"
        );
        w.record(T0, T0, Event::Created);
        let later = T0 + 2 * HOUR_MS;
        w.record(later, later, Event::Created); // reuses the minute slot of T0's minute position
        assert_eq!(counts(&w, Window::Hour, later).created, 1);
        assert_eq!(counts(&w, Window::Day, later).created, 2);
        assert!(!w.trim(later));
        assert!(w.trim(later + 8 * 24 * HOUR_MS));
        assert_eq!(w.heap_bytes(), 0);
    }

    #[test]
    fn failure_classes_are_bounded_per_slot() {
        let mut w = Windows::new();
        for class in 1..=40u16 {
            w.record(T0, T0, Event::Failure { class });
        }
        let mut s = WindowSum::default();
        w.sum(Window::Hour, T0, &mut s);
        assert_eq!(s.failures.len(), FAILURE_CLASSES_PER_SLOT_MAX);
        assert_eq!(s.failures.iter().map(|(_, n)| n).sum::<u64>(), 40);
        assert!(s.failures.contains(&(OTHER_CLASS, 40 - 15)));
    }

    #[test]
    fn memory_of_a_busy_week_is_bounded() {
        // Every minute of a week, with latencies spread over three powers of two.
        let mut w = Windows::new();
        let mut t = T0;
        while t < T0 + 7 * 24 * HOUR_MS {
            for lat in [40, 80, 120, 250, 310] {
                w.record(
                    t,
                    t,
                    Event::Attempt {
                        success: true,
                        latency_ms: lat,
                    },
                );
            }
            t += MINUTE_MS;
        }
        let bytes = w.heap_bytes();
        assert!(bytes < 64 * 1024, "{bytes} bytes");
    }

    proptest! {
        /// Against a list model: a window holds exactly the events whose slot is within it.
        #[test]
        fn windows_match_a_list_model(offsets in proptest::collection::vec(0u64..9 * 24 * HOUR_MS, 0..200),
                                      probe in 0u64..10 * 24 * HOUR_MS) {
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            let mut w = Windows::new();
            for off in &sorted {
                let at = T0 + off;
                w.record(at, at, Event::Created);
            }
            let last = sorted.last().map_or(T0, |o| T0 + o);
            let now = last.max(T0 + probe);
            for window in [Window::Hour, Window::Day, Window::Week] {
                let slot = if window == Window::Hour { MINUTE_MS } else { HOUR_MS };
                let n = window.span_ms() / slot;
                let expected = sorted.iter().filter(|o| (T0 + **o) / slot + n > now / slot).count() as u64;
                prop_assert_eq!(counts(&w, window, now).created, expected, "{:?}", window);
            }
        }
    }
}
