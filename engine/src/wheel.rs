//! A hierarchical timer wheel: the shard's schedule of retry attempts (ARCHITECTURE.md, "The
//! engine").
//!
//! [`LEVELS`] levels of [`SLOTS`] slots at 1 ms resolution: level `L` has slots `64^L` ms wide and
//! spans `64^(L+1)` ms, so six levels reach 2^36 ms (about 795 days). Timers further out wait in an
//! overflow list that is re-sorted into the wheel when the clock reaches their top-level window.
//!
//! How it works: a timer due at `due` lives at the level of the highest 6-bit digit in which `due`
//! differs from the wheel's clock, in the slot named by `due`'s digit at that level. When the clock
//! reaches a slot's start the slot is emptied: timers that are due fire, the others move down a
//! level. Each timer moves at most [`LEVELS`] times, and an occupancy bitmap per level finds the
//! next non-empty slot in O(1), so the work of [`Wheel::advance`] is proportional to the timers it
//! touches, not to the time that passed.
//!
//! Not here: persistence. The wheel is rebuilt from the log on recovery. Each shard owns one wheel;
//! it is single-threaded and has no locks.

/// Number of levels below the overflow list.
pub const LEVELS: usize = 6;
/// Slots per level (64, so a level's occupancy fits one `u64` bitmap).
pub const SLOTS: usize = 64;
/// Bits of the clock addressed by one level.
const SLOT_BITS: u32 = 6;
/// Milliseconds covered by the whole wheel; due times further from the clock overflow.
pub const WHEEL_SPAN_MS: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// Hard ceiling on live timers in one wheel. Timers are for in-flight retries, not backlog
/// (invariant 5), so the engine keeps its own, smaller limit and uses [`Wheel::try_insert`].
pub const MAX_TIMERS: usize = 1 << 26;
/// Default cap on timers fired by one [`Wheel::advance`] call (see [`Wheel::with_fire_limit`]).
pub const DEFAULT_FIRE_LIMIT: usize = 4096;

/// Index meaning "no entry" in the intrusive lists.
const NIL: u32 = u32::MAX;
/// List holding timers already due when inserted (or left over when a fire limit was hit).
const LIST_READY: usize = LEVELS * SLOTS;
/// List holding timers beyond the wheel's span.
const LIST_OVERFLOW: usize = LEVELS * SLOTS + 1;
/// Number of lists: the slots of every level, then ready, then overflow.
const LIST_COUNT: usize = LEVELS * SLOTS + 2;

/// Handle of a scheduled timer, for [`Wheel::cancel`]. A handle of a timer that fired or was
/// cancelled never matches a later timer (a generation counter guards slot reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

impl TimerId {
    fn new(index: u32, generation: u32) -> Self {
        Self((u64::from(generation) << 32) | u64::from(index))
    }

    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// One timer's storage in the slab; also a node of the doubly linked list of its slot.
#[derive(Debug)]
struct Entry<T> {
    /// `None` while the entry is on the free list.
    item: Option<T>,
    due_ms: u64,
    generation: u32,
    /// Which list (slot, ready or overflow) the entry is on; meaningless when free.
    list: u16,
    prev: u32,
    next: u32,
}

/// A hierarchical timer wheel holding items of type `T` due at millisecond times.
///
/// Guarantees: an item never fires before its due time; an item fires on the first
/// [`advance`](Wheel::advance) whose `now_ms` is at or past its due time, unless that call hit its
/// fire limit (then on a later call); items due in the past fire on the next advance.
#[derive(Debug)]
pub struct Wheel<T> {
    /// The wheel's clock: every timer still in a slot is due strictly after it.
    now_ms: u64,
    entries: Vec<Entry<T>>,
    /// Head of the free list of `entries`, linked through `next`.
    free_head: u32,
    heads: Box<[u32; LIST_COUNT]>,
    /// Bit `s` of `occupied[l]` is set when slot `s` of level `l` is non-empty.
    occupied: [u64; LEVELS],
    /// Lower bound of the due times in the ready list (exact until a cancel).
    ready_min_ms: u64,
    /// Lower bound of the due times in the overflow list (exact until a cancel).
    overflow_min_ms: u64,
    len: usize,
    fire_limit: usize,
}

impl<T> Wheel<T> {
    /// An empty wheel whose clock reads `now_ms`, firing at most [`DEFAULT_FIRE_LIMIT`] items per
    /// [`advance`](Wheel::advance).
    pub fn new(now_ms: u64) -> Self {
        Self::with_fire_limit(now_ms, DEFAULT_FIRE_LIMIT)
    }

    /// An empty wheel whose clock reads `now_ms`, firing at most `fire_limit` (>= 1) items per
    /// [`advance`](Wheel::advance) call.
    ///
    /// The limit bounds the time one call keeps the shard busy when a huge clock jump (a suspended
    /// VM, a stalled shard) makes many timers due at once. Stepping over empty time costs nothing,
    /// whatever the jump; moving a timer down a level is bounded by [`LEVELS`] per timer.
    pub fn with_fire_limit(now_ms: u64, fire_limit: usize) -> Self {
        assert!(
            fire_limit >= 1,
            "a fire limit of 0 would never fire anything"
        );
        Self {
            now_ms,
            entries: Vec::new(),
            free_head: NIL,
            heads: Box::new([NIL; LIST_COUNT]),
            occupied: [0; LEVELS],
            ready_min_ms: u64::MAX,
            overflow_min_ms: u64::MAX,
            len: 0,
            fire_limit,
        }
    }

    /// Number of scheduled items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no item is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's clock: the latest `now_ms` it has advanced to (it never goes back).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Schedules `item` at `due_ms`. A due time at or before the clock fires on the next advance.
    ///
    /// # Panics
    /// When [`MAX_TIMERS`] items are already scheduled; use [`Wheel::try_insert`] to handle that.
    pub fn insert(&mut self, due_ms: u64, item: T) -> TimerId {
        match self.try_insert(due_ms, item) {
            Ok(id) => id,
            Err(_) => panic!("timer wheel holds MAX_TIMERS ({MAX_TIMERS}) items"),
        }
    }

    /// Schedules `item` at `due_ms`, or gives it back when [`MAX_TIMERS`] items are scheduled.
    pub fn try_insert(&mut self, due_ms: u64, item: T) -> Result<TimerId, T> {
        if self.len >= MAX_TIMERS {
            return Err(item);
        }
        let index = if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            debug_assert!(entry.item.is_none(), "free entry {index} holds an item");
            self.free_head = entry.next;
            entry.item = Some(item);
            entry.due_ms = due_ms;
            index
        } else {
            let index = u32::try_from(self.entries.len()).expect("MAX_TIMERS fits u32");
            assert!(index != NIL);
            self.entries.push(Entry {
                item: Some(item),
                due_ms,
                generation: 0,
                list: 0,
                prev: NIL,
                next: NIL,
            });
            index
        };
        self.len += 1;
        self.place(index);
        Ok(TimerId::new(index, self.entries[index as usize].generation))
    }

    /// Unschedules the timer and returns its item, or `None` when it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let index = id.index();
        let entry = self.entries.get(index)?;
        if entry.generation != id.generation() || entry.item.is_none() {
            return None;
        }
        let index = index as u32;
        self.unlink(index);
        Some(self.release(index).1)
    }

    /// Moves the clock to `now_ms` and appends to `out` every item due at or before it, with its
    /// due time; returns how many it appended.
    ///
    /// An older `now_ms` (clock skew) is a no-op: the clock never goes back and nothing fires early.
    /// Items come out in due order, except that items already overdue before this call come first.
    /// At most the wheel's fire limit is appended; when the limit stops a call, the clock stays
    /// where firing stopped, [`next_due`](Wheel::next_due) is at or before `now_ms`, and the next
    /// call carries on.
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<(u64, T)>) -> usize {
        if now_ms < self.now_ms {
            return 0;
        }
        let mut fired = 0;
        // Items that were due before this call (inserted late, or left by a fire limit).
        while self.heads[LIST_READY] != NIL {
            if fired == self.fire_limit {
                return fired;
            }
            let index = self.heads[LIST_READY];
            self.unlink(index);
            out.push(self.release(index));
            fired += 1;
        }
        self.ready_min_ms = u64::MAX;

        // Visit non-empty slots in time order. The loop ends: every pass either fires, moves
        // timers down a level (bounded per timer) or breaks.
        while let Some((list, start_ms)) = self.next_expiration() {
            if start_ms > now_ms {
                break;
            }
            debug_assert!(
                start_ms >= self.now_ms,
                "slot start {start_ms} is in the past"
            );
            self.now_ms = start_ms;
            if list == LIST_OVERFLOW {
                self.overflow_min_ms = u64::MAX;
            } else {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
            // Detach the whole list, then re-place or fire each entry.
            let mut index = std::mem::replace(&mut self.heads[list], NIL);
            while index != NIL {
                let next = self.entries[index as usize].next;
                let due_ms = self.entries[index as usize].due_ms;
                // Fire only what is due at the slot start, so that items come out in due order;
                // the rest move down a level. Over the limit, due items go to the ready list.
                if due_ms <= self.now_ms && fired < self.fire_limit {
                    out.push(self.release(index));
                    fired += 1;
                } else {
                    self.place(index);
                }
                index = next;
            }
            if fired == self.fire_limit && self.heads[LIST_READY] != NIL {
                // The clock stays at the slot start so that leftovers are not "overdue" early.
                return fired;
            }
        }
        self.now_ms = now_ms;
        fired
    }

    /// A lower bound of the earliest due time of the scheduled items, `None` when empty.
    ///
    /// Never later than the real earliest due time. It is exact for items due within the next 64
    /// ms and for overdue items; for items further out it may be the start of the slot that holds
    /// them (the shard wakes up, the wheel moves them down a level, and `next_due` gets sharper).
    /// After a cancel it may be earlier than needed, never later.
    pub fn next_due(&self) -> Option<u64> {
        if self.heads[LIST_READY] != NIL {
            return Some(self.ready_min_ms);
        }
        match self.next_expiration() {
            Some((LIST_OVERFLOW, _)) => Some(self.overflow_min_ms),
            Some((list, start_ms)) if list < SLOTS => {
                // Level 0: every item of the slot is due exactly at the slot's start.
                Some(start_ms)
            }
            Some((_, start_ms)) => Some(start_ms.max(self.now_ms + 1)),
            None => None,
        }
    }

    /// The earliest non-empty slot (or the overflow list) and the clock time at which it must be
    /// processed. Lower levels always expire before higher ones: every timer at level `l` is due
    /// within the clock's current level-`l` window, every timer above it after that window.
    fn next_expiration(&self) -> Option<(usize, u64)> {
        for level in 0..LEVELS {
            let bits = self.occupied[level];
            if bits == 0 {
                continue;
            }
            let slot = bits.trailing_zeros() as usize;
            let shift = SLOT_BITS * level as u32;
            let window_mask = (1u64 << (shift + SLOT_BITS)) - 1;
            let start_ms = (self.now_ms & !window_mask) + ((slot as u64) << shift);
            return Some((level * SLOTS + slot, start_ms));
        }
        if self.heads[LIST_OVERFLOW] != NIL {
            // Re-sort the overflow list when the clock enters the top-level window of its
            // earliest item; all of the wheel is empty by then.
            let start_ms = (self.overflow_min_ms & !(WHEEL_SPAN_MS - 1)).max(self.now_ms);
            return Some((LIST_OVERFLOW, start_ms));
        }
        None
    }

    /// Puts a detached entry on the list its due time calls for, relative to the clock.
    fn place(&mut self, index: u32) {
        let due_ms = self.entries[index as usize].due_ms;
        let list = if due_ms <= self.now_ms {
            self.ready_min_ms = self.ready_min_ms.min(due_ms);
            LIST_READY
        } else {
            // The highest 6-bit digit in which due and clock differ; due's digit there is larger.
            let differing = (due_ms ^ self.now_ms) | (SLOTS as u64 - 1);
            let level = ((63 - differing.leading_zeros()) / SLOT_BITS) as usize;
            if level >= LEVELS {
                self.overflow_min_ms = self.overflow_min_ms.min(due_ms);
                LIST_OVERFLOW
            } else {
                let slot = ((due_ms >> (SLOT_BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
                self.occupied[level] |= 1 << slot;
                level * SLOTS + slot
            }
        };
        let head = self.heads[list];
        {
            let entry = &mut self.entries[index as usize];
            entry.list = list as u16;
            entry.prev = NIL;
            entry.next = head;
        }
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[list] = index;
    }

    /// Takes an entry off its list, clearing the slot's occupancy bit when the list empties.
    fn unlink(&mut self, index: u32) {
        let (list, prev, next) = {
            let entry = &self.entries[index as usize];
            (entry.list as usize, entry.prev, entry.next)
        };
        if prev == NIL {
            debug_assert_eq!(self.heads[list], index);
            self.heads[list] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[list] == NIL && list < LEVELS * SLOTS {
            self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        }
    }

    /// Frees a detached entry and returns its due time and item.
    fn release(&mut self, index: u32) -> (u64, T) {
        let entry = &mut self.entries[index as usize];
        let item = entry.item.take().expect("released entry holds an item");
        entry.generation = entry.generation.wrapping_add(1);
        entry.next = self.free_head;
        entry.prev = NIL;
        self.free_head = index;
        self.len -= 1;
        (entry.due_ms, item)
    }

    /// Checks the structural invariants; for tests.
    #[cfg(test)]
    fn assert_invariants(&self) {
        let mut seen = 0;
        for list in 0..LIST_COUNT {
            let mut prev = NIL;
            let mut index = self.heads[list];
            if list < LEVELS * SLOTS {
                let bit = self.occupied[list / SLOTS] & (1 << (list % SLOTS)) != 0;
                assert_eq!(bit, index != NIL, "occupancy bit of list {list}");
            }
            while index != NIL {
                let entry = &self.entries[index as usize];
                assert!(entry.item.is_some());
                assert_eq!(entry.list as usize, list);
                assert_eq!(entry.prev, prev);
                let due = entry.due_ms;
                match list {
                    LIST_READY => assert!(due <= self.now_ms),
                    LIST_OVERFLOW => {
                        assert!(due > self.now_ms);
                        assert!(self.overflow_min_ms <= due);
                    }
                    _ => {
                        let (level, slot) = (list / SLOTS, (list % SLOTS) as u64);
                        let shift = SLOT_BITS * level as u32;
                        assert!(
                            due > self.now_ms,
                            "slot item due {due} <= clock {}",
                            self.now_ms
                        );
                        assert_eq!(
                            due >> (shift + SLOT_BITS),
                            self.now_ms >> (shift + SLOT_BITS)
                        );
                        assert_eq!((due >> shift) & 63, slot);
                        assert!(slot > (self.now_ms >> shift) & 63);
                    }
                }
                seen += 1;
                prev = index;
                index = entry.next;
            }
        }
        assert_eq!(seen, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: a list of (due, id) with a clock that never goes back.
    #[derive(Default)]
    struct Model {
        now_ms: u64,
        items: Vec<(u64, u32)>,
    }

    impl Model {
        fn advance(&mut self, now_ms: u64) -> Vec<(u64, u32)> {
            if now_ms < self.now_ms {
                return Vec::new();
            }
            self.now_ms = now_ms;
            let (mut due, keep): (Vec<_>, Vec<_>) =
                self.items.iter().partition(|(d, _)| *d <= now_ms);
            self.items = keep;
            due.sort_unstable();
            due
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert at clock + offset (may be negative: overdue).
        Insert(i64),
        /// Cancel the n-th id handed out (modulo), possibly already gone.
        Cancel(usize),
        /// Advance by a delta (may be negative: clock skew).
        Advance(i64),
    }

    fn span() -> impl Strategy<Value = i64> {
        prop_oneof![
            -100..100i64,
            0..5_000i64,
            0..300_000i64,
            0..100_000_000i64,
            0..(1i64 << 38),
            -(1i64 << 20)..0i64,
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => span().prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Cancel),
            3 => span().prop_map(Op::Advance),
        ]
    }

    fn shift(base: u64, delta: i64) -> u64 {
        base.saturating_add_signed(delta)
    }

    fn run_against_model(start: u64, ops: &[Op], fire_limit: usize) {
        let mut wheel = Wheel::with_fire_limit(start, fire_limit);
        let mut model = Model {
            now_ms: start,
            items: Vec::new(),
        };
        let mut ids = Vec::new();
        let mut next_item = 0u32;
        for op in ops {
            match *op {
                Op::Insert(delta) => {
                    let due = shift(model.now_ms, delta);
                    ids.push((wheel.insert(due, next_item), next_item));
                    model.items.push((due, next_item));
                    next_item += 1;
                }
                Op::Cancel(n) if !ids.is_empty() => {
                    let (id, item) = ids[n % ids.len()];
                    let expected = model.items.iter().position(|&(_, i)| i == item);
                    let got = wheel.cancel(id);
                    match expected {
                        Some(pos) => {
                            model.items.swap_remove(pos);
                            assert_eq!(got, Some(item));
                        }
                        None => assert_eq!(got, None),
                    }
                }
                Op::Cancel(_) => {}
                Op::Advance(delta) => {
                    let now = shift(model.now_ms, delta);
                    let expected = model.advance(now);
                    let mut got = Vec::new();
                    // Call again while the fire limit stopped it; never with a later clock.
                    loop {
                        let before = got.len();
                        let n = wheel.advance(now, &mut got);
                        assert_eq!(n, got.len() - before);
                        assert!(n <= fire_limit);
                        if n < fire_limit {
                            break;
                        }
                    }
                    for &(due, _) in &got {
                        assert!(due <= now, "fired {due} early at {now}");
                    }
                    got.sort_unstable();
                    assert_eq!(got, expected);
                }
            }
            wheel.assert_invariants();
            assert_eq!(wheel.len(), model.items.len());
            let earliest = model.items.iter().map(|&(d, _)| d).min();
            match (wheel.next_due(), earliest) {
                (None, None) => {}
                (Some(bound), Some(real)) => assert!(bound <= real, "next_due {bound} > {real}"),
                other => panic!("next_due mismatch {other:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_matches_sorted_list_model(
            start in prop_oneof![0..1_000u64, 1_600_000_000_000..1_800_000_000_000u64],
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            run_against_model(start, &ops, usize::MAX);
        }

        #[test]
        fn prop_small_fire_limit_still_fires_everything_in_time(
            start in 0..1_000_000u64,
            limit in 1..5usize,
            ops in proptest::collection::vec(op(), 1..150),
        ) {
            run_against_model(start, &ops, limit);
        }

        #[test]
        fn prop_fires_in_due_order(
            dues in proptest::collection::vec(0..10_000_000u64, 1..300),
        ) {
            let mut wheel = Wheel::new(0);
            for (i, &due) in dues.iter().enumerate() {
                wheel.insert(due + 1, i);
            }
            let mut out = Vec::new();
            wheel.advance(u64::MAX, &mut out);
            let fired: Vec<u64> = out.iter().map(|&(d, _)| d).collect();
            let mut sorted = fired.clone();
            sorted.sort_unstable();
            prop_assert_eq!(fired, sorted);
            prop_assert_eq!(out.len(), dues.len());
        }
    }

    #[test]
    fn fires_at_due_time_not_before() {
        let mut wheel = Wheel::new(1_000);
        wheel.insert(1_005, "a");
        wheel.insert(1_000 + 70_000, "b");
        let mut out = Vec::new();
        assert_eq!(wheel.advance(1_004, &mut out), 0);
        assert_eq!(wheel.next_due(), Some(1_005));
        assert_eq!(wheel.advance(1_005, &mut out), 1);
        assert_eq!(out, [(1_005, "a")]);
        out.clear();
        assert_eq!(wheel.advance(71_000 - 1, &mut out), 0);
        assert_eq!(wheel.next_due(), Some(71_000));
        assert_eq!(wheel.advance(71_000, &mut out), 1);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_due(), None);
    }

    #[test]
    fn overdue_items_fire_on_next_advance_and_clock_skew_is_a_no_op() {
        let mut wheel = Wheel::new(10_000);
        wheel.insert(9_000, 1);
        wheel.insert(10_000, 2);
        wheel.insert(10_001, 3);
        assert_eq!(wheel.next_due(), Some(9_000));
        let mut out = Vec::new();
        assert_eq!(
            wheel.advance(5_000, &mut out),
            0,
            "backwards clock fires nothing"
        );
        assert_eq!(wheel.now_ms(), 10_000);
        assert_eq!(wheel.advance(10_000, &mut out), 2);
        out.sort_unstable();
        assert_eq!(out, [(9_000, 1), (10_000, 2)]);
    }

    #[test]
    fn cancel_returns_item_once_and_stale_ids_do_not_match() {
        let mut wheel = Wheel::new(0);
        let a = wheel.insert(100, 'a');
        assert_eq!(wheel.cancel(a), Some('a'));
        assert_eq!(wheel.cancel(a), None);
        let b = wheel.insert(100, 'b'); // reuses a's slab entry
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(wheel.len(), 1);
        let mut out = Vec::new();
        wheel.advance(100, &mut out);
        assert_eq!(wheel.cancel(b), None, "fired timers cannot be cancelled");
        assert_eq!(out, [(100, 'b')]);
    }

    #[test]
    fn far_future_items_go_through_overflow() {
        let mut wheel = Wheel::new(0);
        let far = 3 * WHEEL_SPAN_MS + 12_345;
        wheel.insert(far, "far");
        wheel.insert(u64::MAX, "end of time");
        wheel.assert_invariants();
        assert!(wheel.next_due().unwrap() <= far);
        let mut out = Vec::new();
        assert_eq!(wheel.advance(far - 1, &mut out), 0);
        wheel.assert_invariants();
        assert_eq!(wheel.advance(far, &mut out), 1);
        assert_eq!(wheel.advance(u64::MAX, &mut out), 1);
        assert_eq!(out, [(far, "far"), (u64::MAX, "end of time")]);
    }

    #[test]
    fn fire_limit_bounds_a_huge_jump() {
        let mut wheel = Wheel::with_fire_limit(0, 100);
        for i in 0..1_000u64 {
            wheel.insert(i * 86_400_000 / 1_000 + 1, i);
        }
        let mut out = Vec::new();
        let mut calls = 0;
        while !wheel.is_empty() {
            let n = wheel.advance(10 * 86_400_000, &mut out);
            assert!(n <= 100);
            assert!(wheel.next_due().is_none_or(|d| d <= 10 * 86_400_000));
            calls += 1;
        }
        assert_eq!(calls, 10);
        assert_eq!(out.len(), 1_000);
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn many_timers_in_one_slot() {
        let mut wheel = Wheel::new(0);
        let ids: Vec<_> = (0..10_000).map(|i| wheel.insert(5_000, i)).collect();
        for id in ids.iter().step_by(2) {
            assert!(wheel.cancel(*id).is_some());
        }
        let mut out = Vec::new();
        wheel.advance(5_000, &mut out);
        assert_eq!(out.len(), DEFAULT_FIRE_LIMIT);
        wheel.advance(5_000, &mut out);
        assert_eq!(out.len(), 5_000);
        assert!(out.iter().all(|&(d, i)| d == 5_000 && i % 2 == 1));
    }
}
