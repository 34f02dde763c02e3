//! WebSocket members and paced senders: the state behind the idle, fanout, rooms and
//! login-storm scenarios, and the [`Handler`] that updates it from server frames.
//!
//! Each member connection belongs to at most one bench room. Senders are members that
//! also send, each at its own fixed interval (paced from a schedule, not in bursts).
//! Every received message is checked against its sender's sequence, so loss,
//! duplicates and reordering are counted per (message, member), not estimated.
//! Slow members (the slow scenario) stay in their room on the server but are left out
//! of every count: what they get is tallied apart, once they read again. A member that
//! closed mid-run stays in the counts: what it did not receive is lost, so a server that
//! drops connections cannot report a clean run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use crate::measure::PeakRss;
use crate::net::{Handler, Kind, Net, Out};
use crate::payload::{self, Stamp};
use crate::stats::Latencies;
use crate::storm::Storm;

/// The protocol spoken to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// chatd: bearer-token upgrade, welcome frame, join/send requests, message events.
    Chatd,
    /// A plain broadcast WebSocket server: no auth, every text frame goes to everyone.
    Raw,
}

/// The `ref` of join requests (send refs are sequence + 1).
const JOIN_REF: u64 = 0;

/// One member connection.
#[derive(Debug, Default)]
pub struct Member {
    /// Bench room index, if any.
    pub room: Option<usize>,
    /// The welcome frame (chatd) or the 101 answer (raw) has arrived.
    pub ready: bool,
    /// The join was acknowledged (always true in raw mode).
    pub joined: bool,
    pub closed: bool,
    /// Next expected sequence number per sender of the room (by the sender's index in it).
    next_seq: Vec<u32>,
    pub received: u64,
    /// Bench clock at the TCP connect (for the connect-to-welcome latency).
    pub connect_ns: u64,
    /// A member that stopped reading: not expected to receive anything.
    pub slow: bool,
    /// Frames and payload bytes a slow member got (once it read again).
    pub slow_frames: u64,
    pub slow_bytes: u64,
    /// How the connection ended, if it did.
    pub end: Option<String>,
}

/// A bench room.
#[derive(Debug, Default)]
pub struct Room {
    pub name: String,
    pub members: Vec<usize>,
    /// Sender indexes (into `Load::senders`).
    pub senders: Vec<usize>,
    /// Messages the server acknowledged (chatd) or that were sent (raw).
    pub accepted: u64,
}

/// A member that sends.
#[derive(Debug)]
pub struct Sender {
    pub conn: usize,
    pub room: usize,
    /// The sender's index within its room.
    pub local: u32,
    pub seq: u32,
    pub interval_ns: u64,
    pub next_due_ns: u64,
}

/// Everything counted while a phase runs; reset between phases.
#[derive(Debug, Default)]
pub struct PhaseCounters {
    pub latency: Latencies,
    pub received: u64,
    pub sent: u64,
    pub acked: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub send_errors: BTreeMap<String, u64>,
    pub closed: BTreeMap<String, u64>,
    /// How late the schedule's sends went out (client lag), worst case.
    pub max_send_lag_ns: u64,
    pub last_receive_ns: u64,
    /// Bench clock at the start of the phase.
    pub start_ns: u64,
    /// Latencies by second of the phase (only when `Load::timeline` is set).
    pub timeline: Vec<Latencies>,
}

/// The load's state; the [`Handler`] for its connections.
pub struct Load {
    pub mode: Mode,
    pub members: Vec<Option<Member>>,
    pub rooms: Vec<Room>,
    pub senders: Vec<Sender>,
    schedule: BinaryHeap<Reverse<(u64, usize)>>,
    pub counters: PhaseCounters,
    /// Members that became ready, and that closed, since the load began.
    ready_total: usize,
    closed_total: usize,
    /// Time from connect to the 101 answer, per connection.
    pub handshake: Latencies,
    /// Time from connect to the welcome frame (chatd), per connection.
    pub welcome: Latencies,
    /// The server's RSS, sampled by the loops that open members and run phases.
    pub peak_rss: Option<PeakRss>,
    pub text_size: usize,
    scratch: Vec<u8>,
    /// Logins sharing the loop (the login-storm scenario), with their own connections.
    pub storm: Option<Storm>,
    /// All senders send at the same instants (bursts of one message per sender) instead
    /// of being spread evenly over the interval.
    pub aligned: bool,
    /// Also keep the latencies by second of the phase, to see when they moved.
    pub timeline: bool,
}

impl Load {
    pub fn new(mode: Mode, text_size: usize) -> Load {
        Load {
            mode,
            members: Vec::new(),
            rooms: Vec::new(),
            senders: Vec::new(),
            schedule: BinaryHeap::new(),
            counters: PhaseCounters::default(),
            ready_total: 0,
            closed_total: 0,
            handshake: Latencies::default(),
            welcome: Latencies::default(),
            peak_rss: None,
            text_size,
            scratch: Vec::with_capacity(512),
            storm: None,
            aligned: false,
            timeline: false,
        }
    }

    fn member(&mut self, id: usize) -> Option<&mut Member> {
        self.members.get_mut(id).and_then(Option::as_mut)
    }

    /// Samples the server's RSS if it is being watched and a sample is due.
    pub fn poll_rss(&mut self) {
        if let Some(peak) = self.peak_rss.as_mut() {
            peak.poll();
        }
    }

    /// Marks a member as one that stopped reading: it leaves the expected counts (the
    /// server still has it in the room).
    pub fn set_slow(&mut self, id: usize) {
        let Some(m) = self.member(id) else {
            return;
        };
        m.slow = true;
        if let Some(room) = m.room {
            self.rooms[room].members.retain(|&member| member != id);
        }
    }

    pub fn ready_count(&self) -> usize {
        self.members
            .iter()
            .flatten()
            .filter(|m| m.ready && !m.closed)
            .count()
    }

    /// Opens `count` WebSocket members, at most `concurrency` handshakes at a time,
    /// the i-th with `tokens[i % tokens.len()]`. Returns their ids in order and the
    /// seconds from the first connect to the last member ready.
    pub fn open_members(
        &mut self,
        net: &mut Net,
        count: usize,
        tokens: &[String],
        path: &str,
        concurrency: usize,
        deadline: Instant,
    ) -> Result<(Vec<usize>, f64), String> {
        let start = Instant::now();
        let mut ids = Vec::with_capacity(count);
        let mut requests: Vec<Vec<u8>> = Vec::new();
        let host = net.target().host.clone();
        if self.mode == Mode::Chatd {
            for token in tokens {
                requests.push(crate::http::upgrade(path, &host, Some(token)));
            }
        } else {
            requests.push(crate::http::upgrade(path, &host, None));
        }
        let mut last_ready = start;
        let settled_before = self.ready_total + self.closed_total;
        let mut done_before = 0;
        while Instant::now() < deadline {
            let done = self.ready_total + self.closed_total - settled_before;
            if done > done_before {
                last_ready = Instant::now();
                done_before = done;
            }
            let in_flight = ids.len() - done;
            if ids.len() < count && in_flight < concurrency {
                for _ in 0..(concurrency - in_flight).min(count - ids.len()) {
                    let request = &requests[ids.len() % requests.len()];
                    let connect_ns = net.now_ns();
                    let id = net
                        .connect(Kind::WebSocket, request)
                        .map_err(|e| format!("connect: {e}"))?;
                    if self.members.len() <= id {
                        self.members.resize_with(id + 1, || None);
                    }
                    self.members[id] = Some(Member {
                        connect_ns,
                        ..Member::default()
                    });
                    ids.push(id);
                }
            } else if ids.len() == count && done == count {
                break;
            }
            net.turn(self, Duration::from_millis(5))
                .map_err(|e| format!("poll: {e}"))?;
            self.poll_rss();
        }
        Ok((ids, last_ready.duration_since(start).as_secs_f64()))
    }

    /// Puts members into a bench room; in chatd mode sends the join requests (awaited
    /// with `wait_joined`, so many rooms are joined at once).
    pub fn join(&mut self, net: &mut Net, room_name: &str, member_ids: &[usize]) -> usize {
        let room = self.rooms.len();
        self.rooms.push(Room {
            name: room_name.to_string(),
            members: member_ids.to_vec(),
            ..Room::default()
        });
        let join = format!(r#"{{"type":"join","room":"{room_name}","ref":{JOIN_REF}}}"#);
        for &id in member_ids {
            let mode = self.mode;
            if let Some(m) = self.member(id) {
                m.room = Some(room);
                if mode == Mode::Raw {
                    m.joined = true;
                } else {
                    net.send_text(id, join.as_bytes());
                }
            }
        }
        room
    }

    /// Runs the loop until every live member of a room has joined.
    pub fn wait_joined(&mut self, net: &mut Net, deadline: Instant) -> Result<(), String> {
        loop {
            let pending = self
                .members
                .iter()
                .flatten()
                .filter(|m| m.room.is_some() && !m.joined && !m.closed)
                .count();
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{pending} joins unanswered in time"));
            }
            net.turn(self, Duration::from_millis(5))
                .map_err(|e| format!("poll: {e}"))?;
            self.poll_rss();
        }
    }

    /// Makes `conn` a sender of its room.
    pub fn add_sender(&mut self, conn: usize) {
        let Some(room) = self
            .members
            .get(conn)
            .and_then(Option::as_ref)
            .and_then(|m| m.room)
        else {
            return;
        };
        let index = self.senders.len();
        let local = self.rooms[room].senders.len() as u32;
        self.rooms[room].senders.push(index);
        self.senders.push(Sender {
            conn,
            room,
            local,
            seq: 0,
            interval_ns: u64::MAX,
            next_due_ns: u64::MAX,
        });
        for &member in &self.rooms[room].members {
            if let Some(m) = self.members.get_mut(member).and_then(Option::as_mut) {
                m.next_seq.push(0);
            }
        }
    }

    /// Sets every sender's rate and starts the schedule at `start_ns`: senders spread
    /// evenly over one interval so the total is paced too, or, with `aligned`, all at the
    /// same instants.
    pub fn start_schedule(&mut self, rate_per_sender: f64, start_ns: u64) {
        let interval_ns = (1e9 / rate_per_sender.max(1e-3)) as u64;
        let n = self.senders.len().max(1) as u64;
        let spread = if self.aligned { 0 } else { interval_ns / n };
        self.schedule.clear();
        for (i, s) in self.senders.iter_mut().enumerate() {
            s.interval_ns = interval_ns.max(1);
            s.next_due_ns = start_ns + spread * i as u64;
            self.schedule.push(Reverse((s.next_due_ns, i)));
        }
    }

    pub fn stop_schedule(&mut self) {
        self.schedule.clear();
    }

    /// Sends every message due by `now_ns`; returns when the next one is due.
    pub fn send_due(&mut self, net: &mut Net, now_ns: u64) -> Option<u64> {
        while let Some(&Reverse((due, index))) = self.schedule.peek() {
            if due > now_ns {
                return Some(due);
            }
            self.schedule.pop();
            let sender = &mut self.senders[index];
            let closed = self.members[sender.conn].as_ref().is_none_or(|m| m.closed);
            sender.next_due_ns = due + sender.interval_ns;
            if closed {
                continue;
            }
            self.counters.max_send_lag_ns = self.counters.max_send_lag_ns.max(now_ns - due);
            let stamp = Stamp {
                send_ns: now_ns,
                sender: sender.local,
                seq: sender.seq,
            };
            sender.seq += 1;
            self.scratch.clear();
            match self.mode {
                Mode::Chatd => {
                    self.scratch
                        .extend_from_slice(br#"{"type":"send","room":""#);
                    self.scratch
                        .extend_from_slice(self.rooms[sender.room].name.as_bytes());
                    self.scratch.extend_from_slice(br#"","text":""#);
                    payload::write_text(&mut self.scratch, stamp, self.text_size);
                    self.scratch.extend_from_slice(br#"","ref":"#);
                    self.scratch
                        .extend_from_slice(u64::from(stamp.seq + 1).to_string().as_bytes());
                    self.scratch.push(b'}');
                }
                Mode::Raw => {
                    payload::write_text(&mut self.scratch, stamp, self.text_size);
                    self.rooms[sender.room].accepted += 1;
                }
            }
            net.send_text(sender.conn, &self.scratch);
            self.counters.sent += 1;
            self.schedule.push(Reverse((sender.next_due_ns, index)));
        }
        None
    }

    /// Deliveries expected so far: accepted messages times the members of each room,
    /// closed ones included (what a member missed because its connection ended is lost,
    /// not forgotten); slow members have left the room's list.
    pub fn expected(&self) -> u64 {
        self.rooms
            .iter()
            .map(|r| r.accepted * r.members.len() as u64)
            .sum()
    }

    /// Deliveries received so far by the members of bench rooms, closed ones included
    /// (to match [`Load::expected`]), slow ones apart.
    pub fn delivered(&self) -> u64 {
        self.members
            .iter()
            .flatten()
            .filter(|m| !m.slow && m.room.is_some())
            .map(|m| m.received)
            .sum()
    }

    fn mark_ready(&mut self, id: usize, now_ns: u64) {
        if let Some(m) = self.members.get_mut(id).and_then(Option::as_mut)
            && !m.ready
        {
            m.ready = true;
            self.ready_total += 1;
            self.welcome.record_ns(now_ns.saturating_sub(m.connect_ns));
        }
    }

    fn on_message(&mut self, id: usize, stamp: Stamp, now_ns: u64) {
        let Some(member) = self.members.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        member.received += 1;
        let c = &mut self.counters;
        c.received += 1;
        c.last_receive_ns = now_ns;
        let latency_ns = now_ns.saturating_sub(stamp.send_ns);
        c.latency.record_ns(latency_ns);
        if self.timeline {
            let second = (now_ns.saturating_sub(c.start_ns) / 1_000_000_000) as usize;
            if c.timeline.len() <= second {
                c.timeline.resize_with(second + 1, Latencies::default);
            }
            c.timeline[second].record_ns(latency_ns);
        }
        match member.next_seq.get_mut(stamp.sender as usize) {
            Some(next) if stamp.seq == *next => *next += 1,
            Some(next) if stamp.seq > *next => {
                c.gaps += u64::from(stamp.seq - *next);
                *next = stamp.seq + 1;
            }
            _ => c.out_of_order += 1,
        }
    }
}

impl Handler for Load {
    fn on_open(&mut self, id: usize, since_start_ns: u64, now_ns: u64, _out: &mut Out<'_>) {
        self.handshake.record_ns(since_start_ns);
        if self.mode == Mode::Raw {
            self.mark_ready(id, now_ns);
        }
    }

    fn on_text(&mut self, id: usize, text: &[u8], now_ns: u64, _out: &mut Out<'_>) {
        if let Some(m) = self.member(id)
            && m.slow
        {
            m.slow_frames += 1;
            m.slow_bytes += text.len() as u64;
            return;
        }
        if self.mode == Mode::Raw {
            if let Some(stamp) = payload::read_stamp(text) {
                self.on_message(id, stamp, now_ns);
            }
            return;
        }
        match payload::kind(text) {
            payload::Kind::Message => {
                if let Some(stamp) = payload::message_stamp(text) {
                    self.on_message(id, stamp, now_ns);
                }
            }
            payload::Kind::Reply => {
                let Some(reply) = payload::reply(text) else {
                    return;
                };
                if reply.reference == Some(JOIN_REF) {
                    if let Some(m) = self.member(id) {
                        m.joined = reply.ok;
                    }
                    if !reply.ok {
                        let code = format!("join: {}", payload::error_code(text));
                        *self.counters.send_errors.entry(code).or_default() += 1;
                    }
                } else if reply.ok {
                    self.counters.acked += 1;
                    if let Some(room) = self.member(id).and_then(|m| m.room) {
                        self.rooms[room].accepted += 1;
                    }
                } else {
                    let code = payload::error_code(text).to_string();
                    *self.counters.send_errors.entry(code).or_default() += 1;
                }
            }
            payload::Kind::Welcome => self.mark_ready(id, now_ns),
            payload::Kind::Presence | payload::Kind::Other => {}
        }
    }

    fn on_response(
        &mut self,
        id: usize,
        status: u16,
        _body: &[u8],
        now_ns: u64,
        out: &mut Out<'_>,
    ) {
        if let Some(storm) = self.storm.as_mut().filter(|s| s.owns(id)) {
            storm.on_response(id, status, now_ns, out);
        }
    }

    fn on_closed(&mut self, id: usize, reason: &str) {
        if let Some(storm) = self.storm.as_mut().filter(|s| s.owns(id)) {
            return storm.on_closed(id, reason);
        }
        let mut slow = false;
        if let Some(m) = self.member(id)
            && !m.closed
        {
            m.closed = true;
            m.end = Some(reason.to_string());
            slow = m.slow;
            // A member that closes before it was ready settles its opening too.
            if !m.ready {
                self.closed_total += 1;
            }
        }
        if !slow {
            *self.counters.closed.entry(reason.to_string()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load of one room of `n` joined members, every one a sender's audience, with
    /// `accepted` messages acknowledged and received by all.
    fn room_of(n: usize, accepted: u64) -> Load {
        let mut load = Load::new(Mode::Chatd, 64);
        load.rooms.push(Room {
            name: "fan".into(),
            members: (0..n).collect(),
            accepted,
            ..Room::default()
        });
        for _ in 0..n {
            load.members.push(Some(Member {
                room: Some(0),
                ready: true,
                joined: true,
                received: accepted,
                ..Member::default()
            }));
        }
        load
    }

    #[test]
    fn a_member_closed_mid_run_counts_what_it_missed_as_lost() {
        let mut load = room_of(4, 10);
        assert_eq!((load.expected(), load.delivered()), (40, 40));
        load.on_closed(3, "eof");
        // Five more messages acknowledged; the three open members get them.
        load.rooms[0].accepted += 5;
        for id in 0..3 {
            load.members[id].as_mut().unwrap().received += 5;
        }
        assert_eq!(load.expected(), 60);
        assert_eq!(load.delivered(), 55);
        assert_eq!(load.counters.closed.get("eof"), Some(&1));
    }

    #[test]
    fn every_member_closed_cannot_make_the_counts_go_backwards() {
        let mut load = room_of(3, 7);
        let (expected, delivered) = (load.expected(), load.delivered());
        for id in 0..3 {
            load.on_closed(id, "reset");
        }
        assert_eq!(load.expected(), expected);
        assert_eq!(load.delivered(), delivered);
        load.rooms[0].accepted += 1;
        assert_eq!(load.expected() - expected, 3, "all three lost the last one");
    }

    #[test]
    fn slow_members_leave_both_counts_and_their_closes_are_expected() {
        let mut load = room_of(3, 2);
        load.set_slow(2);
        assert_eq!((load.expected(), load.delivered()), (4, 4));
        load.on_closed(2, "1013 too slow to read");
        assert!(load.counters.closed.is_empty());
        assert_eq!((load.expected(), load.delivered()), (4, 4));
    }
}
