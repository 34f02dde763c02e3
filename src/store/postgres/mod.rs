//! The PostgreSQL backend: the store several chatd processes share.
//!
//! `database_connections` connections ([`crate::pg::PgConn`]), each a non-blocking
//! socket on the loop's poller. A flush sends the turn's writes as one unit (one
//! transaction, one Sync) and each read as a unit of its own, all pipelined: the loop
//! goes on at once, and the answers arrive with readiness events, in the order sent on
//! each connection. Writes go on one connection, the writer (the first, or another
//! ready one while it is down), so transactions commit in the order of the turns that
//! made them; a read goes there too while writes are in flight on it (it then sees
//! them), and otherwise to the least busy ready connection.
//!
//! Every request has `database_timeout_ms` to be answered, from its submission: after
//! that it is answered `Unavailable` and its late answer, if any, is dropped. A lost
//! connection fails its units (`Failed`: a write whose COMMIT was not seen is never
//! acknowledged) and is made again with a growing, jittered delay; requests submitted
//! while no connection is ready wait for one, within their timeout. A connection that
//! leaves a unit unanswered for [`ABANDON_AFTER_TIMEOUTS`] timeouts is abandoned and
//! made again: TCP alone notices a partition, or a failover behind one address, only
//! after many minutes, and the database may well answer on a new connection. A ready
//! connection that sent nothing for one timeout sends a probe (a Sync alone), so that
//! a database frozen while chatd is idle shows in `/readyz` and a dead connection is
//! found before a request needs it.

mod decode;
mod schema;
mod sql;
mod startup;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

use super::{Failure, NotReady, Op, Outcome, Storage, StoreStats, Ticket};
use crate::pg::{ConnectParams, Event, PgConn, PgError, Statement, Unit, UnitId};

pub use startup::prepare;

/// The first delay before connecting again; doubled up to [`MAX_BACKOFF`], with up to
/// a quarter added at random so that processes do not reconnect in step.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Short enough that service resumes within two seconds of the database being back.
const MAX_BACKOFF: Duration = Duration::from_millis(1000);

/// A connection whose oldest unit has waited this many database timeouts is given up:
/// its requests were answered `Unavailable` one timeout earlier, and a database that is
/// only slow (or frozen for less) still answers them on the connection.
const ABANDON_AFTER_TIMEOUTS: u32 = 2;

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub params: ConnectParams,
    pub connections: usize,
    pub timeout: Duration,
}

/// What a unit in flight answers.
#[derive(Debug)]
struct InFlight {
    /// The requests of the unit, one per query, in order.
    requests: Vec<(Ticket, Op)>,
    sent: Instant,
}

#[derive(Debug)]
enum SlotState {
    /// Connecting and authenticating since then.
    Connecting(Instant),
    Ready,
    /// Connect again at this time.
    Down(Instant),
}

#[derive(Debug)]
struct Slot {
    conn: Option<PgConn>,
    state: SlotState,
    units: HashMap<UnitId, InFlight>,
    /// The next delay before connecting again.
    backoff: Duration,
    /// Whether this slot was ever ready (a later Ready is a reconnect).
    was_ready: bool,
    /// When a unit last went out on this connection (or it became ready): an idle one
    /// is probed one timeout after.
    last_sent: Instant,
}

/// A unit waiting for a ready connection.
#[derive(Debug)]
struct Backlogged {
    requests: Vec<(Ticket, Op)>,
    writes: bool,
}

pub struct PgStore {
    config: PgConfig,
    catalogue: Arc<[Statement]>,
    registry: Option<Registry>,
    first_token: usize,
    slots: Vec<Slot>,
    submitted: Vec<(Ticket, Op)>,
    /// Requests submitted while a transaction is committing, in order: they go out
    /// together once it is answered. PostgreSQL syncs its WAL once per commit, so
    /// sending a transaction per loop turn while earlier ones still commit would make
    /// commits follow the loop's turns rather than what the disk can take; held, the
    /// writes of every turn meanwhile share the next commit (group commit across turns).
    held: Vec<(Ticket, Op)>,
    backlog: VecDeque<Backlogged>,
    answers: Vec<(Ticket, Outcome)>,
    /// Tickets not yet answered and when they time out, in submission order.
    deadlines: VecDeque<(Instant, Ticket)>,
    /// Tickets still owed an answer.
    open: std::collections::HashSet<Ticket>,
    stats: StoreStats,
    /// Why the last connection attempt or connection failed.
    last_error: Option<String>,
    /// Since when the database has left a request unanswered, while the connections
    /// given up for it are made again: a database that accepts connections and says
    /// nothing is stalled, not unreachable, for `/readyz`. Cleared by a connection
    /// becoming ready, or failing in a way that says the database is gone.
    stalled_since: Option<Instant>,
    /// A small xorshift state for the reconnect jitter.
    jitter: u64,
    /// The connection writes go on.
    writer: usize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("connections", &self.slots.len())
            .field("open", &self.open.len())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store that connects once [`Storage::attach`] gives it the poller.
    pub fn new(config: PgConfig) -> PgStore {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
            | 1;
        PgStore {
            catalogue: Arc::from(sql::CATALOGUE.to_vec()),
            registry: None,
            first_token: 0,
            slots: Vec::new(),
            submitted: Vec::new(),
            held: Vec::new(),
            backlog: VecDeque::new(),
            answers: Vec::new(),
            deadlines: VecDeque::new(),
            open: std::collections::HashSet::new(),
            stats: StoreStats::default(),
            last_error: None,
            stalled_since: None,
            jitter: seed ^ u64::from(std::process::id()),
            writer: 0,
            config,
        }
    }

    fn connect(&mut self, index: usize, now: Instant) {
        let Some(registry) = &self.registry else {
            return;
        };
        let token = Token(self.first_token + index);
        let slot = &mut self.slots[index];
        match PgConn::connect(&self.config.params, self.catalogue.clone(), registry, token) {
            Ok(conn) => {
                slot.conn = Some(conn);
                slot.state = SlotState::Connecting(now);
            }
            Err(e) => {
                let error = e.to_string();
                self.stalled_since = None;
                self.slot_down(index, error, now);
            }
        }
    }

    /// The connection of `index` is gone: try again after the backoff.
    fn slot_down(&mut self, index: usize, error: String, now: Instant) {
        let jitter = self.next_jitter();
        let slot = &mut self.slots[index];
        if let (Some(conn), Some(registry)) = (slot.conn.as_mut(), &self.registry) {
            // Units in flight were reported before Closed; any the connection still
            // holds (sent after it ended) are failed below.
            let _ = conn.close(registry);
        }
        slot.conn = None;
        let lost: Vec<InFlight> = slot.units.drain().map(|(_, unit)| unit).collect();
        let delay = slot.backoff + slot.backoff.mul_f64(jitter * 0.25);
        slot.state = SlotState::Down(now + delay);
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        if self.last_error.as_deref() != Some(error.as_str()) {
            log::warn!("database connection {index}: {error}; connecting again");
        }
        self.last_error = Some(error);
        for unit in lost {
            self.answer_unit(unit, Err(PgError::ConnectionLost), now);
        }
        if index == self.writer {
            self.choose_writer();
        }
    }

    /// Writes go on one connection (so transactions commit in turn order); when it is
    /// down, another ready one takes over. The old one's units have all been answered
    /// (failed) by then, so no write can overtake an earlier one.
    fn choose_writer(&mut self) {
        if self.is_ready(self.writer) {
            return;
        }
        let idle = |slot: &Slot| {
            slot.units
                .values()
                .all(|u| u.requests.iter().all(|(_, op)| !op.is_write()))
        };
        if !idle(&self.slots[self.writer]) {
            return;
        }
        if let Some(index) = (0..self.slots.len()).find(|&i| self.is_ready(i)) {
            self.writer = index;
        }
    }

    /// Whether a transaction of writes has been sent and not answered.
    fn write_in_flight(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.units
                .values()
                .any(|u| u.requests.iter().any(|(_, op)| op.is_write()))
        })
    }

    /// Sends what was held while a transaction was committing: all its writes as the
    /// next transaction, then its reads behind them. Requests that timed out meanwhile
    /// were answered and are not sent.
    fn release_held(&mut self, now: Instant) {
        let open = &self.open;
        let held: Vec<(Ticket, Op)> = std::mem::take(&mut self.held)
            .into_iter()
            .filter(|(ticket, _)| open.contains(ticket))
            .collect();
        let (writes, reads): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, op)| op.is_write());
        if !writes.is_empty() {
            self.dispatch(writes, true, now);
        }
        for read in reads {
            self.dispatch(vec![read], false, now);
        }
    }

    /// A number in [0, 1).
    fn next_jitter(&mut self) -> f64 {
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn is_ready(&self, index: usize) -> bool {
        matches!(self.slots[index].state, SlotState::Ready)
    }

    /// Where a read goes: behind the writes in flight on the writer (so it
    /// sees them), or to the least busy ready connection.
    fn read_slot(&self) -> Option<usize> {
        let writer = self.writer;
        let writes_in_flight = self.slots[writer]
            .units
            .values()
            .any(|u| u.requests.iter().any(|(_, op)| op.is_write()));
        if writes_in_flight {
            return self.is_ready(writer).then_some(writer);
        }
        (0..self.slots.len())
            .filter(|&i| self.is_ready(i))
            .min_by_key(|&i| self.slots[i].units.len())
    }

    /// Sends a unit, or keeps it until a connection is ready.
    fn dispatch(&mut self, requests: Vec<(Ticket, Op)>, writes: bool, now: Instant) {
        // Writes behind an earlier backlogged unit wait with it: order is kept.
        let slot = if writes || !self.backlog.is_empty() {
            (self.backlog.is_empty() && self.is_ready(self.writer)).then_some(self.writer)
        } else {
            self.read_slot()
        };
        let Some(index) = slot else {
            self.backlog.push_back(Backlogged { requests, writes });
            return;
        };
        self.send_on(index, requests, now);
    }

    fn send_on(&mut self, index: usize, requests: Vec<(Ticket, Op)>, now: Instant) {
        let ops: Vec<&Op> = requests.iter().map(|(_, op)| op).collect();
        let queries = decode::unit_queries(&ops);
        let slot = &mut self.slots[index];
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        slot.last_sent = now;
        let id = conn.send(
            Unit {
                queries,
                simple: None,
            },
            now,
        );
        slot.units.insert(
            id,
            InFlight {
                requests,
                sent: now,
            },
        );
    }

    /// Sends what waited for a ready connection, in order.
    fn drain_backlog(&mut self, now: Instant) {
        while let Some(next) = self.backlog.front() {
            let slot = if next.writes {
                self.is_ready(self.writer).then_some(self.writer)
            } else {
                self.read_slot()
            };
            let Some(index) = slot else {
                return;
            };
            if let Some(unit) = self.backlog.pop_front() {
                self.send_on(index, unit.requests, now);
            }
        }
    }

    fn flush_conns(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            let events = match (self.slots[index].conn.as_mut(), &self.registry) {
                (Some(conn), Some(registry)) => conn.flush(registry),
                _ => continue,
            };
            self.on_events(index, events, now);
        }
    }

    fn on_events(&mut self, index: usize, events: Vec<Event>, now: Instant) {
        // A connection that ends reports its lost units first, then Closed: nothing
        // those answers release (held writes) may be sent on it meanwhile.
        if events.iter().any(|e| matches!(e, Event::Closed(_))) {
            self.slots[index].state = SlotState::Down(now);
        }
        for event in events {
            match event {
                Event::Ready => {
                    let slot = &mut self.slots[index];
                    slot.state = SlotState::Ready;
                    slot.last_sent = now;
                    slot.backoff = FIRST_BACKOFF;
                    if slot.was_ready {
                        self.stats.reconnects += 1;
                        log::info!("database connection {index} is back");
                    }
                    slot.was_ready = true;
                    self.last_error = None;
                    self.stalled_since = None;
                    self.choose_writer();
                    self.drain_backlog(now);
                }
                Event::Unit { id, outcome } => {
                    if let Some(unit) = self.slots[index].units.remove(&id) {
                        self.answer_unit(unit, outcome, now);
                    }
                    if !self.held.is_empty() && !self.write_in_flight() {
                        self.release_held(now);
                    }
                }
                Event::Closed(error) => {
                    self.stalled_since = None;
                    self.slot_down(index, describe(&error), now);
                }
            }
        }
    }

    fn answer_unit(
        &mut self,
        unit: InFlight,
        outcome: Result<Vec<crate::pg::Rows>, PgError>,
        now: Instant,
    ) {
        let writes = unit.requests.iter().any(|(_, op)| op.is_write());
        self.stats
            .observe_round_trip(now.saturating_duration_since(unit.sent).as_secs_f64());
        match outcome {
            Ok(results) => {
                if writes {
                    self.stats.commits += 1;
                    self.stats.batched_writes += unit.requests.len() as u64;
                }
                let ops: Vec<&Op> = unit.requests.iter().map(|(_, op)| op).collect();
                let answers = decode::unit_answers(&ops, results);
                for ((ticket, op), answer) in unit.requests.into_iter().zip(answers) {
                    let outcome = match answer {
                        Some(Ok(answer)) => Ok(answer),
                        Some(Err(e)) => {
                            log::error!("database answer to {}: {e}", decode::name(&op));
                            Err(Failure::Failed)
                        }
                        None => Err(Failure::Failed),
                    };
                    self.give(ticket, outcome);
                }
            }
            Err(error) => {
                if writes {
                    self.stats.commit_failures += 1;
                }
                if !matches!(error, PgError::ConnectionLost) {
                    log::error!(
                        "a database {} failed: {}",
                        if writes { "transaction" } else { "read" },
                        describe(&error)
                    );
                }
                for (ticket, _) in unit.requests {
                    self.give(ticket, Err(Failure::Failed));
                }
            }
        }
    }

    /// Answers a ticket unless it was answered already (timed out).
    fn give(&mut self, ticket: Ticket, outcome: Outcome) {
        if self.open.remove(&ticket) {
            if outcome.is_err() {
                self.stats.errors += 1;
            }
            self.answers.push((ticket, outcome));
        }
    }

    /// When the ready connection of `index` is to be given up if its oldest unit is
    /// still unanswered.
    fn abandon_at(&self, index: usize) -> Option<Instant> {
        let slot = &self.slots[index];
        if !matches!(slot.state, SlotState::Ready) {
            return None;
        }
        let since = slot.conn.as_ref()?.oldest_unanswered_since()?;
        Some(since + self.config.timeout * ABANDON_AFTER_TIMEOUTS)
    }

    /// When the ready connection of `index`, idle, is to be probed.
    fn probe_at(&self, index: usize) -> Option<Instant> {
        let slot = &self.slots[index];
        let idle = slot.conn.as_ref()?.oldest_unanswered_since().is_none();
        (matches!(slot.state, SlotState::Ready) && idle)
            .then_some(slot.last_sent + self.config.timeout)
    }

    /// Sends a unit with no query: PostgreSQL answers its Sync with ReadyForQuery,
    /// starting no transaction. Its answer is nobody's; only its absence counts.
    fn probe(&mut self, index: usize, now: Instant) {
        let slot = &mut self.slots[index];
        if let Some(conn) = slot.conn.as_mut() {
            slot.last_sent = now;
            conn.send(Unit::default(), now);
        }
    }

    /// Gives up a connection that stopped answering: its units fail (their requests
    /// were answered `Unavailable` already; a write may still commit, as after any
    /// timeout) and it is made again after the backoff.
    fn abandon(&mut self, index: usize, now: Instant) {
        let since = self.slots[index]
            .conn
            .as_ref()
            .and_then(PgConn::oldest_unanswered_since)
            .unwrap_or(now);
        self.stalled_since = Some(self.stalled_since.map_or(since, |s| s.min(since)));
        let units: Vec<InFlight> = self.slots[index].units.drain().map(|(_, u)| u).collect();
        for unit in units {
            self.answer_unit(unit, Err(PgError::ConnectionLost), now);
        }
        let error = format!(
            "no answer within {ABANDON_AFTER_TIMEOUTS} times database_timeout_ms ({} ms): \
             connection abandoned",
            (self.config.timeout * ABANDON_AFTER_TIMEOUTS).as_millis()
        );
        self.slot_down(index, error, now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, ticket)) = self.deadlines.front() {
            if !self.open.contains(&ticket) {
                self.deadlines.pop_front();
                continue;
            }
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            self.give(ticket, Err(Failure::Unavailable));
        }
        // Backlogged units whose requests all timed out, and held requests that timed
        // out, are dropped: nothing is sent for them.
        let open = &self.open;
        self.backlog
            .retain(|unit| unit.requests.iter().any(|(t, _)| open.contains(t)));
        self.held.retain(|(t, _)| open.contains(t));
    }
}

/// A database error for logs and `/readyz`, never with a password in it (the client's
/// errors carry none).
fn describe(error: &PgError) -> String {
    error.to_string()
}

impl Storage for PgStore {
    fn attach(
        &mut self,
        registry: &Registry,
        first_token: usize,
        now: Instant,
    ) -> std::io::Result<()> {
        self.registry = Some(registry.try_clone()?);
        self.first_token = first_token;
        self.slots = (0..self.config.connections.max(1))
            .map(|_| Slot {
                conn: None,
                state: SlotState::Down(now),
                units: HashMap::new(),
                backoff: FIRST_BACKOFF,
                was_ready: false,
                last_sent: now,
            })
            .collect();
        for index in 0..self.slots.len() {
            self.connect(index, now);
        }
        Ok(())
    }

    fn tokens(&self) -> usize {
        self.config.connections.max(1)
    }

    fn submit(&mut self, ticket: Ticket, op: Op) {
        self.submitted.push((ticket, op));
    }

    fn has_submitted(&self) -> bool {
        !self.submitted.is_empty()
    }

    fn flush(&mut self, now: Instant) {
        let submitted = std::mem::take(&mut self.submitted);
        let timeout = self.config.timeout;
        for (ticket, _) in &submitted {
            self.open.insert(*ticket);
            self.deadlines.push_back((now + timeout, *ticket));
        }
        if self.write_in_flight() {
            // The writes wait for the transaction committing now, and so does every
            // read behind one of them; a read with no held write before it goes out
            // behind the transaction in flight (it sees it).
            for (ticket, op) in submitted {
                if op.is_write() || self.held.iter().any(|(_, held)| held.is_write()) {
                    self.held.push((ticket, op));
                } else {
                    self.dispatch(vec![(ticket, op)], false, now);
                }
            }
        } else {
            self.held.extend(submitted);
            self.release_held(now);
        }
        self.flush_conns(now);
    }

    fn take_answers(&mut self, out: &mut Vec<(Ticket, Outcome)>) {
        out.append(&mut self.answers);
        // Deadlines of answered requests leave from the front, so the next deadline is
        // found without walking past them.
        while self
            .deadlines
            .front()
            .is_some_and(|(_, ticket)| !self.open.contains(ticket))
        {
            self.deadlines.pop_front();
        }
    }

    fn on_ready(&mut self, token: Token, now: Instant) {
        let Some(index) = token.0.checked_sub(self.first_token) else {
            return;
        };
        let events = match (
            self.slots.get_mut(index).and_then(|s| s.conn.as_mut()),
            &self.registry,
        ) {
            (Some(conn), Some(registry)) => conn.on_ready(registry),
            _ => return,
        };
        self.on_events(index, events, now);
        // Units that went out on Ready, or were held by a full socket.
        self.flush_conns(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.config.timeout;
        let slots = self.slots.iter().filter_map(|slot| match slot.state {
            SlotState::Down(at) => Some(at),
            SlotState::Connecting(since) => Some(since + timeout),
            SlotState::Ready => None,
        });
        let stalls =
            (0..self.slots.len()).filter_map(|i| self.abandon_at(i).or_else(|| self.probe_at(i)));
        let requests = self
            .deadlines
            .iter()
            .find(|(_, t)| self.open.contains(t))
            .map(|(at, _)| *at);
        slots.chain(stalls).chain(requests).min()
    }

    fn on_deadline(&mut self, now: Instant) {
        self.expire(now);
        let timeout = self.config.timeout;
        for index in 0..self.slots.len() {
            match self.slots[index].state {
                SlotState::Down(at) if at <= now => self.connect(index, now),
                SlotState::Connecting(since) if since + timeout <= now => {
                    let error = format!(
                        "no answer within database_timeout_ms ({} ms) while connecting",
                        timeout.as_millis()
                    );
                    self.slot_down(index, error, now);
                }
                SlotState::Ready if self.abandon_at(index).is_some_and(|at| at <= now) => {
                    self.abandon(index, now);
                }
                SlotState::Ready if self.probe_at(index).is_some_and(|at| at <= now) => {
                    self.probe(index, now);
                }
                _ => {}
            }
        }
        self.flush_conns(now);
    }

    fn readiness(&self, now: Instant) -> Result<(), NotReady> {
        if !(0..self.slots.len()).any(|i| self.is_ready(i)) {
            if let Some(since) = self.stalled_since {
                let waiting = now.saturating_duration_since(since);
                return Err(NotReady::Stalled {
                    waiting_ms: u64::try_from(waiting.as_millis()).unwrap_or(u64::MAX),
                });
            }
            let why = self
                .last_error
                .clone()
                .unwrap_or_else(|| "connecting".to_string());
            return Err(NotReady::Unreachable(why));
        }
        let oldest = self
            .slots
            .iter()
            .filter_map(|s| s.conn.as_ref()?.oldest_unanswered_since())
            .min();
        if let Some(since) = oldest {
            let waiting = now.saturating_duration_since(since);
            if waiting > self.config.timeout {
                return Err(NotReady::Stalled {
                    waiting_ms: u64::try_from(waiting.as_millis()).unwrap_or(u64::MAX),
                });
            }
        }
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        self.stats.clone()
    }

    fn close(&mut self) -> Result<(), String> {
        if let Some(registry) = &self.registry {
            for slot in &mut self.slots {
                if let Some(conn) = slot.conn.as_mut() {
                    let _ = conn.close(registry);
                }
            }
        }
        Ok(())
    }
}
