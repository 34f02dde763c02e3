//! Every deadline of the server in one min-heap, with lazy deletion.
//!
//! Each connection computes its own next deadline from its state (handshake, request,
//! idle, ping, linger...); the server's own deadlines (housekeeping, pruning, the end
//! of a graceful shutdown, an accept retry) live in the same heap, so the loop sleeps
//! until the earliest of all of them and nothing else reads a schedule. The heap only
//! holds "look at K at time T" entries: an entry is pushed when a deadline moves earlier
//! than the one armed, and a popped entry whose owner has since moved its deadline is
//! simply re-armed or dropped. Firing is O(log n) per due entry; nothing scans all
//! connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Identifies a connection across slab-slot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnRef {
    pub key: usize,
    pub generation: u32,
}

/// The server's own deadlines, besides the connections'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerTimer {
    /// Shrink what a load left mostly empty and hand freed memory back (periodic).
    Housekeeping,
    /// Drop idle rate-limiter entries and an unused argon2 work area (periodic).
    Prune,
    /// Accepting paused after the process ran out of descriptors: try again.
    AcceptRetry,
    /// The graceful shutdown's grace period is over: close what is left.
    ShutdownGrace,
    /// Storage's next deadline (a request's timeout, a reconnect, a connect timeout).
    Storage,
}

/// Whose deadline an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    Conn(ConnRef),
    Server(ServerTimer),
}

/// Pending wake-ups, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, key: TimerKey) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest pending wake-up.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Entries in the heap, stale ones included (the `chatd_timer_entries` gauge: lazy
    /// deletion must not let it grow with churn).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Returns the memory of a heap much larger than what it holds now.
    pub fn shrink(&mut self) {
        if self.heap.len() * 4 < self.heap.capacity() {
            self.heap.shrink_to_fit();
        }
    }

    /// Removes and returns one entry due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
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
        let c = |key| TimerKey::Conn(ConnRef { key, generation: 0 });
        t.push(t0 + Duration::from_secs(3), c(3));
        t.push(t0 + Duration::from_secs(1), c(1));
        t.push(
            t0 + Duration::from_secs(2),
            TimerKey::Server(ServerTimer::Housekeeping),
        );
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert!(t.pop_due(t0).is_none());
        let now = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(now).unwrap().1, c(1));
        assert_eq!(
            t.pop_due(now).unwrap().1,
            TimerKey::Server(ServerTimer::Housekeeping)
        );
        assert!(t.pop_due(now).is_none());
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(3)));
    }
}
