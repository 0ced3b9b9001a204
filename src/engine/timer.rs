//! Connection timers: a binary heap of `(when, slot, conn id, generation)`.
//! Activity only moves a connection's deadline field; an entry that fires
//! early is re-armed at the real deadline, and entries whose generation is
//! stale are skipped, so no heap work happens per command.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The timer heap of one shard.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64, u64)>>,
}

impl Timers {
    /// Queues a wakeup for connection `id` in `slot` at `when`.
    pub fn push(&mut self, when: Instant, slot: usize, id: u64, generation: u64) {
        self.heap.push(Reverse((when, slot, id, generation)));
    }

    /// The earliest queued wakeup.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((when, ..))| *when)
    }

    /// Pops one entry that is due at `now`: (slot, id, generation).
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u64, u64)> {
        match self.heap.peek() {
            Some(Reverse((when, ..))) if *when <= now => {
                let Reverse((_, slot, id, generation)) = self.heap.pop().expect("peeked");
                Some((slot, id, generation))
            }
            _ => None,
        }
    }
}

/// How long a pump may wait: until the earliest of `deadlines` (timers,
/// an accept retry, the end of a shutdown), or forever when there is none.
pub fn wait_for(now: Instant, deadlines: [Option<Instant>; 3]) -> Option<std::time::Duration> {
    deadlines
        .into_iter()
        .flatten()
        .min()
        .map(|when| when.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.push(t0 + Duration::from_millis(30), 3, 30, 1);
        t.push(t0 + Duration::from_millis(10), 1, 10, 1);
        t.push(t0 + Duration::from_millis(20), 2, 20, 1);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_millis(25);
        assert_eq!(t.pop_due(now), Some((1, 10, 1)));
        assert_eq!(t.pop_due(now), Some((2, 20, 1)));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(30)));
    }
}
