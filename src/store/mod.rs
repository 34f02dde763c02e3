//! Durable state behind one seam: accounts, messages, direct conversations and
//! subscriptions, in SQLite (the embedded default), PostgreSQL (shared by several
//! chatd processes, spoken from the loop without blocking) or memory (the chat core's
//! tests).
//!
//! The event loop never waits for storage. A handler that needs it submits an [`Op`]
//! under a [`Ticket`] and parks; at the end of the turn the loop calls
//! [`Storage::flush`], and the [`Outcome`] comes back from [`Storage::take_answers`]
//! with the same ticket, in this turn (SQLite, memory) or a later one (PostgreSQL). The
//! implementation owns the group commit: every write submitted before a flush goes into
//! one transaction, and no write's answer is given before that transaction committed;
//! reads submitted in the same turn run after it, so they see every write acknowledged
//! before them.

pub mod memory;
mod ops;
pub mod postgres;
pub mod sqlite;

use std::time::Instant;

pub use ops::{Answer, Failure, HistoryScope, NewKind, NewMessage, Op, Outcome, Ticket, User};
pub use sqlite::{SqliteStore, StoreError};

/// Why the database cannot take requests now (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// No connection to the database could be made (or kept).
    Unreachable(String),
    /// A request has waited longer than the database timeout: the database is frozen
    /// or overloaded.
    Stalled { waiting_ms: u64 },
}

impl NotReady {
    /// The stable code given in `/readyz`'s JSON.
    pub fn code(&self) -> &'static str {
        match self {
            NotReady::Unreachable(_) => "database_unreachable",
            NotReady::Stalled { .. } => "database_stalled",
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Unreachable(why) => write!(f, "the database is unreachable: {why}"),
            NotReady::Stalled { waiting_ms } => write!(
                f,
                "the database has not answered a request for {waiting_ms} ms"
            ),
        }
    }
}

/// Counters a backend keeps for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Transactions of writes committed.
    pub commits: u64,
    /// Transactions that failed (their requests were answered with an error).
    pub commit_failures: u64,
    /// Writes per committed transaction: sum and count give the mean batch size.
    pub batched_writes: u64,
    /// Connections (re)established after the first (networked backends).
    pub reconnects: u64,
    /// Requests answered with an error: storage failures and timeouts.
    pub errors: u64,
    /// Round-trip times of database requests, in seconds, bucketed as
    /// [`ROUND_TRIP_BUCKETS`] (cumulative counts are made when rendering).
    pub round_trips: [u64; ROUND_TRIP_BUCKETS.len() + 1],
    pub round_trip_sum_secs: f64,
}

/// Upper bounds (seconds) of the round-trip histogram's buckets; one more for +Inf.
pub const ROUND_TRIP_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

impl StoreStats {
    pub fn observe_round_trip(&mut self, secs: f64) {
        let bucket = ROUND_TRIP_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(ROUND_TRIP_BUCKETS.len());
        self.round_trips[bucket] += 1;
        self.round_trip_sum_secs += secs;
    }
}

/// A storage backend driven by the event loop.
pub trait Storage: std::fmt::Debug {
    /// Gives a networked backend the loop's poller: its sockets are registered under
    /// tokens `first_token ..first_token + tokens()`, and their events come back through
    /// [`Storage::on_ready`].
    fn attach(
        &mut self,
        _registry: &mio::Registry,
        _first_token: usize,
        _now: Instant,
    ) -> std::io::Result<()> {
        Ok(())
    }

    /// How many poller tokens the backend uses.
    fn tokens(&self) -> usize {
        0
    }

    /// Queues an operation; its outcome comes back from [`Storage::take_answers`] under
    /// `ticket`, never before the next [`Storage::flush`].
    fn submit(&mut self, ticket: Ticket, op: Op);

    /// Whether operations were submitted since the last flush.
    fn has_submitted(&self) -> bool;

    /// Carries out (or sends) everything submitted since the last flush: the writes in
    /// one transaction, then the reads. Called once at the end of every loop turn.
    fn flush(&mut self, now: Instant);

    /// Moves the outcomes that are known into `out`.
    fn take_answers(&mut self, out: &mut Vec<(Ticket, Outcome)>);

    /// A readiness event for one of the backend's own sockets.
    fn on_ready(&mut self, _token: mio::Token, _now: Instant) {}

    /// When [`Storage::on_deadline`] must next be called (timeouts, reconnects).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn on_deadline(&mut self, _now: Instant) {}

    /// Whether the database answers (`/readyz`).
    fn readiness(&self, _now: Instant) -> Result<(), NotReady> {
        Ok(())
    }

    fn stats(&self) -> StoreStats;

    /// Ends work for a shutdown: what is submitted is flushed, then connections close.
    fn close(&mut self) -> Result<(), String>;
}
