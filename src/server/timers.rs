//! Connection deadlines in one min-heap, with lazy deletion.
//!
//! Each connection computes its own next deadline from its state (handshake, request,
//! idle, ping, linger...). The heap only holds "look at connection K at time T" entries:
//! an entry is pushed when a connection's deadline moves earlier than the one it has
//! armed, and a popped entry whose connection has since moved its deadline is simply
//! re-armed or dropped. Firing is O(log n) per due entry; nothing scans all connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Identifies a connection across slab-slot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnRef {
    pub key: usize,
    pub generation: u32,
}

/// Pending wake-ups, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, ConnRef)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, conn: ConnRef) {
        self.heap.push(Reverse((at, conn)));
    }

    /// The earliest pending wake-up.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Returns the memory of a heap much larger than what it holds now.
    pub fn shrink(&mut self) {
        if self.heap.len() * 4 < self.heap.capacity() {
            self.heap.shrink_to_fit();
        }
    }

    /// Removes and returns one entry due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, ConnRef)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let c = |key| ConnRef { key, generation: 0 };
        t.push(t0 + Duration::from_secs(3), c(3));
        t.push(t0 + Duration::from_secs(1), c(1));
        t.push(t0 + Duration::from_secs(2), c(2));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert!(t.pop_due(t0).is_none());
        let now = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(now).unwrap().1, c(1));
        assert_eq!(t.pop_due(now).unwrap().1, c(2));
        assert!(t.pop_due(now).is_none());
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(3)));
    }
}
