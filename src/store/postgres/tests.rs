//! PgStore's bookkeeping without a server: connections that never become ready (a
//! closed loopback port, never polled), units placed and answered by hand. What the
//! wire does is tests/postgres_store.rs's and tests/postgres_failures.rs's.

use std::time::{Duration, Instant};

use mio::Poll;

use super::{PgConfig, PgStore, SlotState};
use crate::pg::{Event, PgError, Rows, parse_url};
use crate::store::{Failure, NotReady, Op, Outcome, Storage, Ticket};

const TIMEOUT: Duration = Duration::from_millis(1000);

/// A store attached to a poller that is never polled, its connections to a port where
/// nothing listens: they stay connecting.
fn store(poll: &Poll, now: Instant) -> PgStore {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let params = parse_url(&format!("postgres://chatd@127.0.0.1:{port}/chat")).expect("url");
    let mut store = PgStore::new(PgConfig {
        params,
        connections: 2,
        timeout: TIMEOUT,
    });
    store.attach(poll.registry(), 10, now).expect("attach");
    store
}

fn read(user: i64) -> Op {
    Op::UserById(user)
}

fn write(user: i64) -> Op {
    Op::SetDisplayName {
        user,
        display_name: format!("user {user}"),
    }
}

fn answers(store: &mut PgStore) -> Vec<(Ticket, Outcome)> {
    let mut out = Vec::new();
    store.take_answers(&mut out);
    out
}

#[test]
fn requests_waiting_for_a_connection_are_answered_unavailable_once_at_their_timeout() {
    let poll = Poll::new().expect("poll");
    let start = Instant::now();
    let mut store = store(&poll, start);
    store.submit(Ticket(1), write(1));
    store.submit(Ticket(2), read(1));
    store.flush(start);
    assert_eq!(store.backlog.len(), 2);
    assert!(answers(&mut store).is_empty());
    assert!(matches!(
        store.readiness(start),
        Err(NotReady::Unreachable(_))
    ));
    // Nothing before the timeout.
    store.on_deadline(start + TIMEOUT - Duration::from_millis(1));
    assert!(answers(&mut store).is_empty());
    assert_eq!(store.next_deadline(), Some(start + TIMEOUT));

    store.on_deadline(start + TIMEOUT);
    let mut got = answers(&mut store);
    got.sort_by_key(|(t, _)| t.0);
    assert_eq!(
        got,
        vec![
            (Ticket(1), Err(Failure::Unavailable)),
            (Ticket(2), Err(Failure::Unavailable))
        ]
    );
    // Nothing is sent for them once a connection is ready, and nothing answers twice.
    assert!(store.backlog.is_empty());
    store.on_deadline(start + TIMEOUT * 3);
    assert!(answers(&mut store).is_empty());
    assert_eq!(store.stats().errors, 2);
}

#[test]
fn the_backlog_goes_out_in_submission_order_once_a_connection_is_ready() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.submit(Ticket(1), write(1));
    store.submit(Ticket(2), read(1));
    store.flush(now);
    store.submit(Ticket(3), write(2));
    store.submit(Ticket(4), read(2));
    store.flush(now);
    assert_eq!(store.backlog.len(), 4);

    // The second connection ready while the first is not: writes move to it (nothing
    // is in flight on the first), and the reads go behind them (a read sees the writes
    // submitted before it).
    store.slots[1].state = SlotState::Ready;
    store.choose_writer();
    assert_eq!(store.writer, 1);
    store.drain_backlog(now);
    assert!(store.backlog.is_empty());
    let mut sent: Vec<_> = store.slots[1].units.iter().collect();
    sent.sort_by_key(|(id, _)| **id);
    let order: Vec<u64> = sent
        .iter()
        .flat_map(|(_, unit)| unit.requests.iter().map(|(t, _)| t.0))
        .collect();
    assert_eq!(order, vec![1, 2, 3, 4]);
    assert!(store.slots[0].units.is_empty());

    // The first coming back does not take the writes away while the second works.
    store.slots[0].state = SlotState::Ready;
    store.choose_writer();
    assert_eq!(store.writer, 1);
}

#[test]
fn writes_stay_on_a_connection_with_writes_in_flight_until_they_are_answered() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.submit(Ticket(1), write(1));
    store.flush(now);
    assert_eq!(store.slots[0].units.len(), 1);
    // The writer stops being ready (reconnecting) with a write unanswered: the next
    // write waits rather than overtake it on another connection.
    store.slots[0].state = SlotState::Connecting(now);
    store.slots[1].state = SlotState::Ready;
    store.choose_writer();
    assert_eq!(store.writer, 0);
    store.submit(Ticket(2), write(2));
    store.flush(now);
    assert_eq!(
        store.held.len(),
        1,
        "held until the write in flight is answered"
    );
    assert!(store.slots[1].units.is_empty());
}

#[test]
fn a_late_answer_is_dropped_and_an_answer_in_time_is_not_followed_by_unavailable() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    // Reads, pipelined on the one ready connection (writes would wait for each other).
    store.slots[0].state = SlotState::Ready;
    store.submit(Ticket(1), read(1));
    store.flush(now);
    store.submit(Ticket(2), read(2));
    store.flush(now + TIMEOUT / 2);
    let mut ids: Vec<_> = store.slots[0].units.keys().copied().collect();
    ids.sort();
    assert_eq!(ids.len(), 2);

    // The first times out; its answer comes late and is dropped.
    store.on_deadline(now + TIMEOUT);
    assert_eq!(
        answers(&mut store),
        vec![(Ticket(1), Err(Failure::Unavailable))]
    );
    let late = Event::Unit {
        id: ids[0],
        outcome: Err(PgError::ConnectionLost),
    };
    store.on_events(0, vec![late], now + TIMEOUT);
    assert!(answers(&mut store).is_empty());

    // The second is answered in time; its own deadline then passes without a word.
    let in_time = Event::Unit {
        id: ids[1],
        outcome: Err(PgError::ConnectionLost),
    };
    store.on_events(0, vec![in_time], now + TIMEOUT);
    assert_eq!(answers(&mut store), vec![(Ticket(2), Err(Failure::Failed))]);
    store.on_deadline(now + TIMEOUT * 2);
    assert!(answers(&mut store).is_empty());
}

#[test]
fn an_idle_connection_is_probed_and_one_that_stops_answering_is_abandoned() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    for slot in &mut store.slots {
        slot.state = SlotState::Ready;
        slot.last_sent = now;
    }
    assert!(store.readiness(now).is_ok());
    // Idle for one timeout: each connection gets a probe, owed to nobody.
    assert_eq!(store.next_deadline(), Some(now + TIMEOUT));
    store.on_deadline(now + TIMEOUT);
    assert!(answers(&mut store).is_empty());
    for slot in &store.slots {
        assert_eq!(
            slot.conn.as_ref().and_then(|c| c.oldest_unanswered_since()),
            Some(now + TIMEOUT)
        );
    }
    // Unanswered past the timeout: stalled; past two, the connections are given up.
    assert!(matches!(
        store.readiness(now + TIMEOUT * 2 + Duration::from_millis(1)),
        Err(NotReady::Stalled { .. })
    ));
    let abandon = now + TIMEOUT * 3;
    assert_eq!(store.next_deadline(), Some(abandon));
    store.on_deadline(abandon);
    assert!(
        store
            .slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Down(at) if at > abandon) && s.conn.is_none())
    );
    // Still stalled, not unreachable, while they are made again: the database took
    // the connections and said nothing.
    assert!(matches!(
        store.readiness(abandon),
        Err(NotReady::Stalled { waiting_ms }) if waiting_ms == 2000
    ));
    store.on_deadline(abandon + TIMEOUT * 3);
    assert!(matches!(
        store.readiness(abandon + TIMEOUT * 3),
        Err(NotReady::Stalled { waiting_ms }) if waiting_ms == 5000
    ));
}

#[test]
fn a_request_still_waiting_on_an_abandoned_connection_fails() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.submit(Ticket(1), read(1));
    store.flush(now);
    store.on_deadline(now + TIMEOUT);
    assert_eq!(
        answers(&mut store),
        vec![(Ticket(1), Err(Failure::Unavailable))]
    );
    store.submit(Ticket(2), read(2));
    store.flush(now + TIMEOUT * 3 / 2);
    // The first unit has waited two timeouts: the connection goes, and the second
    // request, whose outcome is now unknown, fails rather than waiting out its time.
    store.on_deadline(now + TIMEOUT * 2);
    assert_eq!(answers(&mut store), vec![(Ticket(2), Err(Failure::Failed))]);
    assert!(store.slots[0].units.is_empty());
    store.on_deadline(now + TIMEOUT * 3);
    assert!(answers(&mut store).is_empty());
}

/// The units in flight on a connection, oldest first, as their tickets.
fn sent(store: &PgStore, slot: usize) -> Vec<Vec<u64>> {
    let mut units: Vec<_> = store.slots[slot].units.iter().collect();
    units.sort_by_key(|(id, _)| **id);
    units
        .into_iter()
        .map(|(_, unit)| unit.requests.iter().map(|(t, _)| t.0).collect())
        .collect()
}

#[test]
fn turns_submitted_while_a_transaction_commits_share_the_next_one() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.slots[1].state = SlotState::Ready;
    store.submit(Ticket(1), write(1));
    store.flush(now);
    assert_eq!(sent(&store, 0), vec![vec![1]]);
    // Three more turns while the first transaction commits: held, in order.
    for turn in 0..3 {
        store.submit(Ticket(10 + turn * 2), write(2));
        store.submit(Ticket(11 + turn * 2), read(2));
        store.flush(now);
    }
    assert_eq!(
        sent(&store, 0),
        vec![vec![1]],
        "nothing more sent meanwhile"
    );
    assert!(
        sent(&store, 1).is_empty(),
        "reads wait behind the held writes"
    );
    let first = *store.slots[0].units.keys().next().expect("a unit");
    let answered = Event::Unit {
        id: first,
        outcome: Ok(vec![Rows::default()]),
    };
    store.on_events(0, vec![answered], now);
    assert_eq!(
        sent(&store, 0),
        vec![vec![10, 12, 14], vec![11], vec![13], vec![15]],
        "the held writes as one transaction, then the reads behind them"
    );
}

#[test]
fn a_read_with_no_held_write_before_it_goes_out_behind_the_transaction_in_flight() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.slots[1].state = SlotState::Ready;
    store.submit(Ticket(1), write(1));
    store.flush(now);
    store.submit(Ticket(2), read(1));
    store.flush(now);
    assert_eq!(
        sent(&store, 0),
        vec![vec![1], vec![2]],
        "pipelined on the writer, behind the write it must see"
    );
    assert!(store.held.is_empty());
}

#[test]
fn a_held_write_waits_for_the_writer_when_the_one_in_flight_failed_with_it() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.submit(Ticket(1), write(1));
    store.flush(now);
    store.submit(Ticket(2), write(2));
    store.flush(now);
    // The writer's connection is lost: its unit fails, the held write is released
    // and waits for a ready connection (none) in the backlog, not lost.
    let first = *store.slots[0].units.keys().next().expect("a unit");
    store.slots[0].state = SlotState::Connecting(now);
    let lost = Event::Unit {
        id: first,
        outcome: Err(PgError::ConnectionLost),
    };
    store.on_events(0, vec![lost], now);
    assert_eq!(answers(&mut store), vec![(Ticket(1), Err(Failure::Failed))]);
    assert!(store.held.is_empty());
    assert_eq!(store.backlog.len(), 1);
}

#[test]
fn a_held_request_that_times_out_is_answered_once_and_never_sent() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.submit(Ticket(1), write(1));
    store.flush(now);
    store.submit(Ticket(2), write(2));
    store.flush(now + TIMEOUT / 2);
    store.on_deadline(now + TIMEOUT + TIMEOUT / 2);
    let mut got = answers(&mut store);
    got.sort_by_key(|(t, _)| t.0);
    assert_eq!(
        got,
        vec![
            (Ticket(1), Err(Failure::Unavailable)),
            (Ticket(2), Err(Failure::Unavailable))
        ]
    );
    assert!(store.held.is_empty());
    let first = *store.slots[0].units.keys().next().expect("a unit");
    let late = Event::Unit {
        id: first,
        outcome: Ok(vec![Rows::default()]),
    };
    store.on_events(0, vec![late], now + TIMEOUT * 2);
    assert!(answers(&mut store).is_empty(), "the late answer is dropped");
    assert!(
        store.slots[0].units.is_empty(),
        "the held write was never sent"
    );
}

#[test]
fn writes_released_by_a_lost_connection_are_not_sent_on_it() {
    let poll = Poll::new().expect("poll");
    let now = Instant::now();
    let mut store = store(&poll, now);
    store.slots[0].state = SlotState::Ready;
    store.submit(Ticket(1), write(1));
    store.flush(now);
    store.submit(Ticket(2), write(2));
    store.flush(now);
    let first = *store.slots[0].units.keys().next().expect("a unit");
    // The connection ends: its lost unit, then Closed, in one batch of events.
    let events = vec![
        Event::Unit {
            id: first,
            outcome: Err(PgError::ConnectionLost),
        },
        Event::Closed(PgError::ConnectionLost),
    ];
    store.on_events(0, events, now);
    assert_eq!(answers(&mut store), vec![(Ticket(1), Err(Failure::Failed))]);
    assert!(
        store.slots[0].units.is_empty(),
        "nothing sent on the lost one"
    );
    assert_eq!(
        store.backlog.len(),
        1,
        "the held write waits for a connection"
    );
    assert!(!store.write_in_flight());
    // Once a connection is ready it goes out.
    store.slots[1].state = SlotState::Ready;
    store.choose_writer();
    store.drain_backlog(now);
    assert_eq!(sent(&store, 1), vec![vec![2]]);
}
