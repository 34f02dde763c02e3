//! The soak scenario: thousands of clients churn against one chatd for a long time.
//!
//! Each client connects (full TLS handshake; a cached token, or now and then a login of
//! its own first), opens a WebSocket, joins and leaves rooms of a pool, sends, and
//! disconnects and comes back, cleanly or abruptly. A client stays in its rooms across
//! a reconnect: on its return it joins them again and asks each for `history after` the
//! last id it saw, and every message acknowledged to its sender in such a room while the
//! client was away must then be seen exactly once (history and live events together).
//! A few sessions misbehave (garbage and oversized frames, bad JSON, a half frame and a
//! vanished peer) and a few slow readers stop reading until chatd closes them. chatd's
//! memory, descriptors and gauges are sampled throughout, and again once every client
//! has gone: what a long run must show is that none of them keeps growing and that all
//! come back to idle.
//!
//! Membership of a room is checked per *stint*: from the join a client sends until the
//! leave it sends (or the end of the run), across any number of reconnects. A stint
//! owes every message acknowledged in its room after the join was sent whose id is above
//! the room's newest acknowledged id at that moment (anything older was handled before
//! the join reached chatd), up to the moment the leave was sent. Every join, the first
//! one included, is followed by `history after` the newest id the stint has seen, so a
//! message chatd handled just before the join and acknowledged just after it is owed
//! too, and found there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Ctx, figure};
use crate::measure::round3;
use crate::net::{Handler, Kind, Net, Out};
use crate::{procstat, scrape};

/// The room the slow readers ask for: filled once at the start with large messages, so
/// that a few history requests make answers far larger than the kernel buffers.
const ARCHIVE: &str = "soak-archive";
const ARCHIVE_MESSAGES: usize = 100;
/// Characters of each archive message (chatd's default `max_text_chars` is 4,000).
const ARCHIVE_TEXT: usize = 3000;
/// History requests a slow reader sends before it stops reading: 40 answers of about
/// 300 KB, ten times what chatd's `max_outbound_bytes` and the kernel buffers hold.
const SLOW_REQUESTS: usize = 40;
/// The slow reader's kernel receive buffer: small, so chatd's queue is what fills.
const SLOW_RECV_BUFFER: usize = 4096;
/// How long a slow reader keeps from reading (chatd closes it within a turn or two of
/// its requests); then it is dropped.
const SLOW_PAUSE_NS: u64 = 15_000_000_000;
/// How long a misbehaving session may stay open.
const MISBEHAVE_WAIT_NS: u64 = 15_000_000_000;
/// How long chatd may take to answer our close frame (its linger is 2 s).
const CLOSE_WAIT_NS: u64 = 5_000_000_000;
/// How long a connection may take from connect to 101.
const CONNECT_WAIT_NS: u64 = 30_000_000_000;
const HISTORY_PAGE: u32 = 100;
/// The warm-up: RSS growth is measured from the first sample after it.
const WARMUP_SHARE: f64 = 0.2;
/// chatd's RSS may grow this much (percent) from the first sample after the warm-up to
/// the last sample under load.
const MAX_RSS_GROWTH_PCT: f64 = 10.0;
/// Once every client has gone, chatd's RSS must be back within this share of its RSS
/// before the load, or within `IDLE_RSS_MIN_MIB`, whichever is larger: allocator
/// arenas and SQLite's page cache keep a little of what a load touched.
const IDLE_RSS_SHARE: f64 = 0.5;
const IDLE_RSS_MIN_MIB: f64 = 16.0;
/// Timer entries chatd may hold above its idle count once every client has gone: the
/// `/metrics` connections of the last seconds, each with a deadline or two still armed.
/// A heap that kept an entry per closed connection would be thousands above.
const TIMER_SLACK: u64 = 10;

/// xorshift64*: the soak's choices, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A duration spread evenly over [0.5, 1.5] × `mean_s`, in ns.
    fn around_ns(&mut self, mean_s: f64) -> u64 {
        ((0.5 + self.unit()) * mean_s * 1e9) as u64
    }
}

/// How a misbehaving session misbehaves, and how chatd must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehave {
    /// A frame with the reserved bits set: closed with 1002.
    Garbage,
    /// A frame header announcing 16 MiB, over `max_message_bytes`: closed with 1009.
    Oversized,
    /// A text that is not JSON: a `bad_request` reply; the client then closes cleanly.
    BadJson,
    /// Half a frame, then the TCP connection dropped without a close.
    Abrupt,
    /// Asks for large answers and stops reading: chatd closes it (1013, its queue full).
    Slow,
}

impl Misbehave {
    const CHURN: [Misbehave; 4] = [
        Misbehave::Garbage,
        Misbehave::Oversized,
        Misbehave::BadJson,
        Misbehave::Abrupt,
    ];

    fn name(self) -> &'static str {
        match self {
            Misbehave::Garbage => "garbage_frame",
            Misbehave::Oversized => "oversized_frame",
            Misbehave::BadJson => "bad_json",
            Misbehave::Abrupt => "abrupt_disconnect",
            Misbehave::Slow => "slow_reader",
        }
    }

    /// The close chatd must send, for those it must close.
    fn close_code(self) -> Option<u16> {
        match self {
            Misbehave::Garbage => Some(1002),
            Misbehave::Oversized => Some(1009),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offline,
    /// `POST /login` on an HTTP connection of its own, before the WebSocket.
    LoggingIn,
    /// The login was answered: its connection is closed and the WebSocket opened next.
    LoggedIn,
    Connecting,
    Open,
    /// We sent a close frame and wait for chatd's.
    Closing,
}

/// One client's membership of one room, across reconnects (see the module docs).
#[derive(Default)]
struct Stint {
    /// When the stint's first join was sent: nothing acknowledged before is owed.
    join_send_ns: u64,
    /// The room's newest acknowledged id when that join was sent.
    l_start: u64,
    /// `history after` this id in the current catch-up.
    base: u64,
    max_seen: u64,
    seen: HashSet<u64>,
    /// Ids seen as live events in this stint.
    live: HashSet<u64>,
    /// Ids the current catch-up's history returned.
    catch_up: HashSet<u64>,
    /// Joins sent: more than one makes a catch-up a resume.
    joins: u32,
    started: bool,
    joined: bool,
    caught_up: bool,
    /// The leave was sent at this time; the stint is checked when it is answered.
    leave_send_ns: Option<u64>,
}

struct Client {
    user: usize,
    /// The token of this client's own last login; the cached one of its user before.
    token: Option<String>,
    conn: Option<usize>,
    phase: Phase,
    misbehave: Option<Misbehave>,
    /// A slow reader: one session at a given time, never a reconnect.
    once: bool,
    rooms: BTreeMap<usize, Stint>,
    reconnect_ns: u64,
    session_end_ns: u64,
    next_send_ns: u64,
    next_room_ns: u64,
    /// Connecting, closing or misbehaving: the end of what the session may take.
    deadline_ns: u64,
    /// Requests sent on this session and not answered yet.
    pending: u32,
    sessions: u64,
}

#[derive(Debug, Clone, Copy)]
enum Request {
    Join(usize),
    History(usize),
    Send(usize),
    Leave(usize),
}

struct Pending {
    client: usize,
    conn: usize,
    what: Request,
}

#[derive(Default)]
struct Room {
    /// (time the ok was read, id), in the order they were read.
    acked: Vec<(u64, u64)>,
    max_acked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sessions: u64,
    reconnects: u64,
    logins: u64,
    failed_logins: u64,
    failed_connections: u64,
    unexpected_closes: u64,
    clean_closes: u64,
    closes_unanswered: u64,
    abrupt_disconnects: u64,
    sends: u64,
    acked: u64,
    error_replies: u64,
    joins: u64,
    leaves: u64,
    live_messages: u64,
    history_messages: u64,
    outside_membership: u64,
    lost: u64,
    duplicates: u64,
    deliveries_checked: u64,
    resumes_checked: u64,
    stints_checked: u64,
    stints_dropped: u64,
    misbehaving_closed_as_expected: u64,
    misbehaving_not_closed: u64,
    slow_started: u64,
    slow_dropped: u64,
    bad_frames: u64,
}

struct Params {
    rooms: usize,
    rooms_per_client: usize,
    send_every_s: f64,
    room_every_s: f64,
    online_s: f64,
    offline_s: f64,
    misbehave: f64,
    abrupt: f64,
    login_share: f64,
    size: usize,
    concurrency: usize,
}

struct Soak {
    base: Instant,
    p: Params,
    clients: Vec<Client>,
    owner: HashMap<usize, usize>,
    rooms: Vec<Room>,
    pending: HashMap<u64, Pending>,
    next_ref: u64,
    rng: Rng,
    tokens: Vec<String>,
    host: String,
    ws_path: String,
    connecting: usize,
    /// The end of the run: no sends, no churn, every client back and caught up.
    stopping: bool,
    c: Counters,
    unexpected: BTreeMap<String, u64>,
    error_codes: BTreeMap<String, u64>,
    misbehaved: BTreeMap<&'static str, u64>,
    /// Slow readers to stop reading after this turn (their requests are on the wire).
    to_pause: Vec<usize>,
}

fn room_name(room: usize) -> String {
    format!("soak-r{room}")
}

fn room_index(name: &str) -> Option<usize> {
    name.strip_prefix("soak-r")?.parse().ok()
}

impl Soak {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn take_ref(&mut self, client: usize, conn: usize, what: Request) -> u64 {
        self.next_ref += 1;
        self.pending
            .insert(self.next_ref, Pending { client, conn, what });
        self.clients[client].pending += 1;
        self.next_ref
    }

    fn join_frame(&mut self, client: usize, conn: usize, room: usize) -> Vec<u8> {
        let r = self.take_ref(client, conn, Request::Join(room));
        self.c.joins += 1;
        json!({"type": "join", "room": room_name(room), "ref": r})
            .to_string()
            .into_bytes()
    }

    fn history_frame(&mut self, client: usize, conn: usize, room: usize, after: u64) -> Vec<u8> {
        let r = self.take_ref(client, conn, Request::History(room));
        json!({"type": "history", "room": room_name(room), "after": after,
               "limit": HISTORY_PAGE, "ref": r})
        .to_string()
        .into_bytes()
    }

    /// The session ended (whoever ended it): its requests are forgotten, its rooms wait
    /// for the next session, a leave in flight leaves its stint unchecked.
    fn go_offline(&mut self, c: usize, now: u64) {
        if let Some(conn) = self.clients[c].conn.take() {
            self.owner.remove(&conn);
            self.pending.retain(|_, p| p.conn != conn);
        }
        let offline = self.rng.around_ns(self.p.offline_s);
        let client = &mut self.clients[c];
        client.pending = 0;
        client.phase = Phase::Offline;
        client.misbehave = None;
        let before = client.rooms.len();
        client.rooms.retain(|_, s| s.leave_send_ns.is_none());
        self.c.stints_dropped += (before - client.rooms.len()) as u64;
        for stint in client.rooms.values_mut() {
            stint.joined = false;
            stint.caught_up = false;
        }
        client.reconnect_ns = if client.once {
            u64::MAX
        } else if self.stopping {
            now
        } else {
            now + offline
        };
    }

    fn connect(&mut self, net: &mut Net, c: usize, now: u64) {
        let misbehave = if self.clients[c].once {
            Some(Misbehave::Slow)
        } else if !self.stopping && self.rng.chance(self.p.misbehave) {
            Some(Misbehave::CHURN[self.rng.below(Misbehave::CHURN.len())])
        } else {
            None
        };
        let token = match &self.clients[c].token {
            Some(token) => token,
            None => &self.tokens[self.clients[c].user % self.tokens.len()],
        };
        let request = crate::http::upgrade(&self.ws_path, &self.host, Some(token));
        let client = &mut self.clients[c];
        if client.sessions > 0 {
            self.c.reconnects += 1;
        }
        client.sessions += 1;
        match net.connect(Kind::WebSocket, &request) {
            Ok(id) => {
                if misbehave == Some(Misbehave::Slow)
                    && let Err(e) = net.shrink_recv_buffer(id, SLOW_RECV_BUFFER)
                {
                    eprintln!("chatbench soak: SO_RCVBUF: {e}");
                }
                client.conn = Some(id);
                client.phase = Phase::Connecting;
                client.misbehave = misbehave;
                client.deadline_ns = now + CONNECT_WAIT_NS;
                self.owner.insert(id, c);
                self.connecting += 1;
                if let Some(kind) = misbehave {
                    *self.misbehaved.entry(kind.name()).or_default() += 1;
                }
            }
            Err(e) => {
                self.c.failed_connections += 1;
                *self.unexpected.entry(format!("connect: {e}")).or_default() += 1;
                self.go_offline(c, now);
            }
        }
    }

    /// `POST /login` as the client's user on a connection of its own (an argon2id
    /// verification on chatd's thread); the WebSocket follows with the new token.
    fn login(&mut self, net: &mut Net, c: usize, now: u64) {
        let user = self.clients[c].user % self.tokens.len();
        match net.connect(Kind::Http, &crate::setup::login_request(&self.host, user)) {
            Ok(id) => {
                let client = &mut self.clients[c];
                client.conn = Some(id);
                client.phase = Phase::LoggingIn;
                client.deadline_ns = now + CONNECT_WAIT_NS;
                self.owner.insert(id, c);
                self.connecting += 1;
            }
            Err(e) => {
                self.c.failed_logins += 1;
                *self
                    .unexpected
                    .entry(format!("login connect: {e}"))
                    .or_default() += 1;
                self.go_offline(c, now);
            }
        }
    }

    /// Everything due for the clients at `now`: reconnects, sends, room churn, the ends
    /// of sessions, misbehaving sessions that outstay their welcome.
    fn tick(&mut self, net: &mut Net, now: u64) {
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            match (client.phase, client.misbehave) {
                (Phase::Offline, _) => {
                    if now >= client.reconnect_ns && self.connecting < self.p.concurrency {
                        if !client.once && !self.stopping && self.rng.chance(self.p.login_share) {
                            self.login(net, c, now);
                        } else {
                            self.connect(net, c, now);
                        }
                    }
                }
                (Phase::LoggedIn, _) => {
                    if let Some(id) = self.clients[c].conn.take() {
                        net.close(id);
                        self.owner.remove(&id);
                    }
                    self.connect(net, c, now);
                }
                (Phase::LoggingIn, _) | (Phase::Connecting, _) | (Phase::Closing, _) => {
                    if now >= client.deadline_ns {
                        if client.phase == Phase::LoggingIn {
                            self.c.failed_logins += 1;
                            self.connecting -= 1;
                            *self
                                .unexpected
                                .entry("login not answered within 30 s".into())
                                .or_default() += 1;
                        } else if client.phase == Phase::Connecting {
                            self.c.failed_connections += 1;
                            self.connecting -= 1;
                            *self
                                .unexpected
                                .entry("no 101 within 30 s".into())
                                .or_default() += 1;
                        } else {
                            self.c.closes_unanswered += 1;
                        }
                        if let Some(id) = client.conn {
                            net.close(id);
                        }
                        self.go_offline(c, now);
                    }
                }
                (Phase::Open, Some(Misbehave::Abrupt)) => {
                    // Its half frame left with the last turn's flush.
                    if let Some(id) = client.conn {
                        net.close(id);
                    }
                    self.c.misbehaving_closed_as_expected += 1;
                    self.go_offline(c, now);
                }
                (Phase::Open, Some(Misbehave::Slow)) => {
                    // chatd closed it long ago (its /metrics counts that), but the
                    // kernel still holds what chatd queued and backs off its
                    // retransmissions: this end would see the close only much later.
                    if now >= client.deadline_ns {
                        if let Some(id) = client.conn {
                            net.close(id);
                        }
                        self.c.slow_dropped += 1;
                        self.go_offline(c, now);
                    }
                }
                (Phase::Open, Some(_)) => {
                    if now >= client.deadline_ns {
                        self.c.misbehaving_not_closed += 1;
                        if let Some(id) = client.conn {
                            net.close(id);
                        }
                        self.go_offline(c, now);
                    }
                }
                (Phase::Open, None) => self.act(net, c, now),
            }
        }
    }

    /// A normal open session: once every room has caught up, send, churn rooms, end.
    fn act(&mut self, net: &mut Net, c: usize, now: u64) {
        let Some(id) = self.clients[c].conn else {
            return;
        };
        if self.stopping
            || !self.clients[c]
                .rooms
                .values()
                .all(|s| s.caught_up && s.leave_send_ns.is_none())
        {
            return;
        }
        if now >= self.clients[c].session_end_ns {
            if self.clients[c].pending > 0 {
                return;
            }
            if self.rng.chance(self.p.abrupt) {
                net.close(id);
                self.c.abrupt_disconnects += 1;
                self.go_offline(c, now);
            } else {
                net.send_close(id, 1000);
                let client = &mut self.clients[c];
                client.phase = Phase::Closing;
                client.deadline_ns = now + CLOSE_WAIT_NS;
            }
            return;
        }
        if now >= self.clients[c].next_send_ns {
            let gap = self.rng.around_ns(self.p.send_every_s);
            self.clients[c].next_send_ns = now + gap;
            let rooms: Vec<usize> = self.clients[c].rooms.keys().copied().collect();
            if !rooms.is_empty() {
                let room = rooms[self.rng.below(rooms.len())];
                let r = self.take_ref(c, id, Request::Send(room));
                let text = format!("soak c{c} r{r} {}", "x".repeat(self.p.size));
                let frame =
                    json!({"type": "send", "room": room_name(room), "text": text, "ref": r});
                net.send_text(id, frame.to_string().as_bytes());
                self.c.sends += 1;
            }
        }
        if now >= self.clients[c].next_room_ns {
            let gap = self.rng.around_ns(self.p.room_every_s);
            self.clients[c].next_room_ns = now + gap;
            let held = self.clients[c].rooms.len();
            let leave = held > 1 && (held >= self.p.rooms_per_client || self.rng.chance(0.5));
            if leave {
                let rooms: Vec<usize> = self.clients[c].rooms.keys().copied().collect();
                let room = rooms[self.rng.below(rooms.len())];
                let r = self.take_ref(c, id, Request::Leave(room));
                if let Some(stint) = self.clients[c].rooms.get_mut(&room) {
                    stint.leave_send_ns = Some(now);
                }
                self.c.leaves += 1;
                let frame = json!({"type": "leave", "room": room_name(room), "ref": r});
                net.send_text(id, frame.to_string().as_bytes());
            } else if held < self.p.rooms_per_client {
                let room = self.rng.below(self.p.rooms);
                if self.clients[c].rooms.contains_key(&room) {
                    return;
                }
                let stint = self.start_stint(room, now);
                self.clients[c].rooms.insert(room, stint);
                let frame = self.join_frame(c, id, room);
                net.send_text(id, &frame);
            }
        }
    }

    fn start_stint(&self, room: usize, now: u64) -> Stint {
        let l_start = self.rooms[room].max_acked;
        Stint {
            join_send_ns: now,
            l_start,
            base: l_start,
            joins: 1,
            started: true,
            ..Stint::default()
        }
    }

    /// What a stint owes (see the module docs) against what it saw.
    fn check_stint(&mut self, room: usize, stint: &Stint, end_ns: u64) {
        let acked = &self.rooms[room].acked;
        let from = acked.partition_point(|&(ns, _)| ns < stint.join_send_ns);
        for &(ns, id) in &acked[from..] {
            if ns >= end_ns {
                break;
            }
            if id <= stint.l_start {
                continue;
            }
            self.c.deliveries_checked += 1;
            if !stint.seen.contains(&id) {
                self.c.lost += 1;
            }
        }
        self.c.stints_checked += 1;
    }

    fn on_message(&mut self, c: usize, v: &Value) {
        let (Some(room), Some(id)) = (v["room"].as_str().and_then(room_index), v["id"].as_u64())
        else {
            return;
        };
        self.c.live_messages += 1;
        let Some(stint) = self.clients[c].rooms.get_mut(&room) else {
            self.c.outside_membership += 1;
            return;
        };
        let again = !stint.live.insert(id);
        if again || (stint.seen.contains(&id) && !stint.catch_up.contains(&id)) {
            self.c.duplicates += 1;
        }
        stint.seen.insert(id);
        stint.max_seen = stint.max_seen.max(id);
    }

    fn on_reply(&mut self, c: usize, conn: usize, v: &Value, now: u64, out: &mut Out<'_>) {
        let ok = v["ok"].as_bool() == Some(true);
        let code = v["error"]["code"].as_str().unwrap_or("").to_string();
        let Some(r) = v["ref"].as_u64() else {
            if self.clients[c].misbehave == Some(Misbehave::BadJson) && code == "bad_request" {
                self.c.misbehaving_closed_as_expected += 1;
                out.close(1000);
                let client = &mut self.clients[c];
                client.phase = Phase::Closing;
                client.deadline_ns = now + CLOSE_WAIT_NS;
            } else {
                self.c.error_replies += 1;
                *self.error_codes.entry(code).or_default() += 1;
            }
            return;
        };
        let Some(p) = self.pending.remove(&r) else {
            return;
        };
        self.clients[p.client].pending = self.clients[p.client].pending.saturating_sub(1);
        if !ok {
            self.c.error_replies += 1;
            *self.error_codes.entry(code).or_default() += 1;
            return;
        }
        match p.what {
            Request::Send(room) => {
                if let Some(id) = v["data"]["id"].as_u64() {
                    let r = &mut self.rooms[room];
                    r.acked.push((now, id));
                    r.max_acked = r.max_acked.max(id);
                    self.c.acked += 1;
                }
            }
            Request::Join(room) => {
                let Some(stint) = self.clients[c].rooms.get_mut(&room) else {
                    return;
                };
                stint.joined = true;
                stint.base = stint.l_start.max(stint.max_seen);
                stint.catch_up.clear();
                let after = stint.base;
                let frame = self.history_frame(c, conn, room, after);
                out.text(&frame);
            }
            Request::History(room) => {
                let Some(stint) = self.clients[c].rooms.get_mut(&room) else {
                    return;
                };
                let mut last = None;
                for m in v["data"]["messages"].as_array().into_iter().flatten() {
                    let Some(id) = m["id"].as_u64() else {
                        continue;
                    };
                    self.c.history_messages += 1;
                    last = Some(id);
                    if id <= stint.base || !stint.catch_up.insert(id) {
                        self.c.duplicates += 1;
                    }
                    stint.seen.insert(id);
                    stint.max_seen = stint.max_seen.max(id);
                }
                let more = v["data"]["more"].as_bool() == Some(true);
                match (more, last) {
                    (true, Some(after)) => {
                        let frame = self.history_frame(c, conn, room, after);
                        out.text(&frame);
                    }
                    _ => {
                        stint.caught_up = true;
                        if stint.joins > 1 {
                            self.c.resumes_checked += 1;
                        }
                    }
                }
            }
            Request::Leave(room) => {
                if let Some(stint) = self.clients[c].rooms.remove(&room) {
                    let end = stint.leave_send_ns.unwrap_or(now);
                    self.check_stint(room, &stint, end);
                }
            }
        }
    }

    /// Every client back, caught up, nothing in flight (the end of the run).
    fn settled(&self) -> bool {
        self.clients.iter().all(|c| {
            if c.once {
                return c.phase == Phase::Offline;
            }
            c.phase == Phase::Open
                && c.misbehave.is_none()
                && c.pending == 0
                && c.rooms.values().all(|s| s.caught_up)
        })
    }
}

impl Handler for Soak {
    fn on_response(&mut self, id: usize, status: u16, body: &[u8], _: u64, _: &mut Out<'_>) {
        let Some(&c) = self.owner.get(&id) else {
            return;
        };
        if self.clients[c].phase != Phase::LoggingIn {
            return;
        }
        self.connecting = self.connecting.saturating_sub(1);
        let token = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["token"].as_str().map(String::from));
        match (status, token) {
            (200, Some(token)) => {
                self.c.logins += 1;
                self.clients[c].token = Some(token);
            }
            _ => {
                self.c.failed_logins += 1;
                *self
                    .unexpected
                    .entry(format!("login answered {status}"))
                    .or_default() += 1;
            }
        }
        self.clients[c].phase = Phase::LoggedIn;
    }

    fn on_open(&mut self, id: usize, _: u64, now: u64, out: &mut Out<'_>) {
        let Some(&c) = self.owner.get(&id) else {
            return;
        };
        self.connecting = self.connecting.saturating_sub(1);
        self.c.sessions += 1;
        let online = self.rng.around_ns(self.p.online_s);
        let send = self.rng.around_ns(self.p.send_every_s);
        let churn = self.rng.around_ns(self.p.room_every_s);
        let client = &mut self.clients[c];
        client.phase = Phase::Open;
        client.deadline_ns = now + MISBEHAVE_WAIT_NS;
        match client.misbehave {
            Some(Misbehave::Garbage) => out.raw(&[0xF1, 0x80, 0, 0, 0, 0]),
            Some(Misbehave::Oversized) => {
                let mut header = vec![0x81, 0xFF];
                header.extend_from_slice(&(16u64 << 20).to_be_bytes());
                header.extend_from_slice(&[1, 2, 3, 4]);
                out.raw(&header);
            }
            Some(Misbehave::BadJson) => out.text(b"{\"type\":\"send\",\"room\":"),
            Some(Misbehave::Abrupt) => out.raw(&[0x81, 0x85, 1, 2]),
            Some(Misbehave::Slow) => {
                client.deadline_ns = now + SLOW_PAUSE_NS;
                self.c.slow_started += 1;
                for _ in 0..SLOW_REQUESTS {
                    let frame = json!({"type": "history", "room": ARCHIVE, "limit": HISTORY_PAGE});
                    out.text(frame.to_string().as_bytes());
                }
                self.to_pause.push(id);
            }
            None => {
                client.session_end_ns = now + online;
                client.next_send_ns = now + send;
                client.next_room_ns = now + churn;
                let rooms: Vec<usize> = client.rooms.keys().copied().collect();
                for room in rooms {
                    let fresh = self.start_stint(room, now);
                    let Some(stint) = self.clients[c].rooms.get_mut(&room) else {
                        continue;
                    };
                    if stint.started {
                        stint.joins += 1;
                    } else {
                        *stint = fresh;
                    }
                    let frame = self.join_frame(c, id, room);
                    out.text(&frame);
                }
            }
        }
    }

    fn on_text(&mut self, id: usize, payload: &[u8], now: u64, out: &mut Out<'_>) {
        let Some(&c) = self.owner.get(&id) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            self.c.bad_frames += 1;
            return;
        };
        match v["type"].as_str() {
            Some("message") => self.on_message(c, &v),
            Some("reply") => self.on_reply(c, id, &v, now, out),
            _ => {}
        }
    }

    fn on_closed(&mut self, id: usize, reason: &str) {
        let Some(&c) = self.owner.get(&id) else {
            return;
        };
        let now = self.now_ns();
        let client = &self.clients[c];
        let code = reason
            .strip_prefix("websocket close ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|code| code.parse::<u16>().ok());
        match (client.phase, client.misbehave) {
            (Phase::LoggingIn, _) => {
                self.connecting = self.connecting.saturating_sub(1);
                self.c.failed_logins += 1;
                *self
                    .unexpected
                    .entry(format!("login: {reason}"))
                    .or_default() += 1;
            }
            (Phase::LoggedIn, _) => {}
            (Phase::Connecting, _) => {
                self.connecting = self.connecting.saturating_sub(1);
                self.c.failed_connections += 1;
                *self.unexpected.entry(reason.to_string()).or_default() += 1;
            }
            (Phase::Closing, _) => self.c.clean_closes += 1,
            (Phase::Open, Some(kind))
                if kind.close_code().is_some() && kind.close_code() == code =>
            {
                self.c.misbehaving_closed_as_expected += 1;
            }
            _ => {
                self.c.unexpected_closes += 1;
                let what = client.misbehave.map_or("", Misbehave::name);
                *self
                    .unexpected
                    .entry(format!("{what} {reason}").trim().to_string())
                    .or_default() += 1;
            }
        }
        self.go_offline(c, now);
    }
}

/// Fills the archive room: one connection, `ARCHIVE_MESSAGES` large messages, each
/// acknowledged before the load starts.
struct Filler {
    acked: usize,
    sent: usize,
    error: Option<String>,
}

impl Filler {
    fn send_next(&mut self, out: &mut Out<'_>) {
        if self.sent < ARCHIVE_MESSAGES {
            self.sent += 1;
            let text = format!("archive {} {}", self.sent, "a".repeat(ARCHIVE_TEXT));
            let frame = json!({"type": "send", "room": ARCHIVE, "text": text, "ref": self.sent});
            out.text(frame.to_string().as_bytes());
        }
    }
}

impl Handler for Filler {
    fn on_open(&mut self, _: usize, _: u64, _: u64, out: &mut Out<'_>) {
        out.text(
            json!({"type": "join", "room": ARCHIVE, "ref": 0})
                .to_string()
                .as_bytes(),
        );
        for _ in 0..8 {
            self.send_next(out);
        }
    }

    fn on_text(&mut self, _: usize, payload: &[u8], _: u64, out: &mut Out<'_>) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        if v["type"] != "reply" || v["ref"].as_u64().is_none_or(|r| r == 0) {
            return;
        }
        if v["ok"] == true {
            self.acked += 1;
            self.send_next(out);
        } else {
            self.error = Some(format!("archive send refused: {v}"));
        }
    }

    fn on_closed(&mut self, _: usize, reason: &str) {
        self.error = Some(format!("archive connection closed: {reason}"));
    }
}

fn fill_archive(net: &mut Net, token: &str, host: &str, ws_path: &str) -> Result<(), String> {
    let mut filler = Filler {
        acked: 0,
        sent: 0,
        error: None,
    };
    let id = net
        .connect(
            Kind::WebSocket,
            &crate::http::upgrade(ws_path, host, Some(token)),
        )
        .map_err(|e| format!("connect: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while filler.acked < ARCHIVE_MESSAGES {
        if let Some(e) = filler.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err("the archive room was not filled in 60 s".into());
        }
        net.turn(&mut filler, Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
    }
    net.close(id);
    Ok(())
}

/// chatd's state at one moment: memory, descriptors and the gauges of `/metrics`.
#[derive(Debug, Clone, Default)]
struct Sample {
    t_s: f64,
    rss_kib: Option<u64>,
    fds: Option<u64>,
    open_connections: Option<u64>,
    open_websockets: Option<u64>,
    rate_limiter_keys: Option<u64>,
    timer_entries: Option<u64>,
    clients_online: usize,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "t_s": round3(self.t_s),
            "rss_mib": self.rss_kib.map(|k| round3(k as f64 / 1024.0)),
            "fds": self.fds,
            "open_connections": self.open_connections,
            "open_websockets": self.open_websockets,
            "rate_limiter_keys": self.rate_limiter_keys,
            "timer_entries": self.timer_entries,
            "clients_online": self.clients_online,
        })
    }
}

/// Descriptors a process holds (`/proc/PID/fd`).
fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Samples chatd. The descriptors are counted before `/metrics` is asked, so that the
/// connection asking is not among them; it is among `open_connections`, every time.
fn sample(ctx: &Ctx, started: Instant, clients_online: usize) -> Sample {
    let pid = ctx.pids.first().copied();
    let mut s = Sample {
        t_s: started.elapsed().as_secs_f64(),
        rss_kib: pid.and_then(procstat::rss_kib),
        fds: pid.and_then(open_fds),
        clients_online,
        ..Sample::default()
    };
    if let Some(target) = ctx.target.as_ref() {
        match scrape::fetch(target, ctx.base) {
            Ok(text) => {
                s.open_connections = scrape::sample(&text, scrape::OPEN_CONNECTIONS);
                s.open_websockets = scrape::sample(&text, "chatd_open_websockets");
                s.rate_limiter_keys = scrape::sample(&text, "chatd_rate_limiter_keys");
                s.timer_entries = scrape::sample(&text, "chatd_timer_entries");
            }
            Err(e) => eprintln!("chatbench soak: {e}"),
        }
    }
    s
}

/// Whether every gauge is back at its idle value (or below it).
fn at_idle(now: &Sample, idle: &Sample) -> bool {
    let back = |a: Option<u64>, b: Option<u64>| matches!((a, b), (Some(a), Some(b)) if a <= b);
    back(now.fds, idle.fds)
        && back(now.open_connections, idle.open_connections)
        && back(
            now.timer_entries,
            idle.timer_entries.map(|t| t + TIMER_SLACK),
        )
        && back(now.rate_limiter_keys, idle.rate_limiter_keys)
}

/// The figure with the bound `chatbench check` holds it to.
fn bounded(name: &str, value: f64, unit: &str, max: f64) -> Value {
    let mut f = figure(name, value, unit, "lower");
    f["max"] = json!(max);
    f
}

fn above(after: Option<u64>, idle: Option<u64>) -> f64 {
    match (after, idle) {
        (Some(a), Some(b)) => a.saturating_sub(b) as f64,
        _ => f64::NAN,
    }
}

/// The soak: `--clients` churning for `--secs`, then every client back and checked,
/// then every client gone and chatd watched until it is idle again.
pub fn soak(ctx: &Ctx) -> Result<Value, String> {
    let a = &ctx.args;
    let secs: f64 = a.get("secs", 1800.0)?;
    let clients: usize = a.get("clients", 2000)?;
    let default_every = if secs < 600.0 { 10.0 } else { 60.0 };
    let sample_every: f64 = a.get("sample-every", default_every)?;
    let slow_readers: usize = a.get("slow-readers", 4)?;
    let settle_s: f64 = a.get("settle", 90.0)?;
    let final_s: f64 = a.get("final-timeout", 60.0)?;
    let drain_s: f64 = a.get("drain", 2.0)?;
    let seed: u64 = a.get("seed", 1)?;
    let p = Params {
        rooms: a.get("rooms", 100)?,
        rooms_per_client: a.get("rooms-per-client", 3)?,
        send_every_s: a.get("send-every", 10.0)?,
        room_every_s: a.get("room-every", 15.0)?,
        online_s: a.get("online", 20.0)?,
        offline_s: a.get("offline", 3.0)?,
        misbehave: a.get("misbehave", 0.03)?,
        abrupt: a.get("abrupt", 0.2)?,
        login_share: a.get("login-share", 0.05)?,
        size: a.get("size", 100)?,
        concurrency: a.get("concurrency", 200)?,
    };
    if p.rooms == 0 || p.rooms_per_client == 0 || clients == 0 || secs <= 0.0 {
        return Err("--rooms, --rooms-per-client, --clients and --secs must be positive".into());
    }
    let params = json!({
        "secs": secs, "clients": clients, "users": ctx.users, "rooms": p.rooms,
        "rooms_per_client": p.rooms_per_client, "send_every_s": p.send_every_s,
        "room_every_s": p.room_every_s, "online_s": p.online_s, "offline_s": p.offline_s,
        "misbehave": p.misbehave, "abrupt": p.abrupt, "login_share": p.login_share, "size": p.size,
        "slow_readers": slow_readers, "sample_every_s": sample_every, "seed": seed,
    });
    let target = ctx.target()?.clone();
    let tokens = ctx.tokens()?;
    if tokens.is_empty() {
        return Err("no accounts".into());
    }
    let mut net = ctx.net()?;
    fill_archive(&mut net, &tokens[0], &target.host, &ctx.ws_path)?;
    // The filler's connection and the accounts' are gone before the idle baseline.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let idle = sample(ctx, started, 0);
    // The first slow reader comes within the warm-up, so that the memory chatd needs for
    // a full queue is in the baseline of the growth figure; the others spread after it.
    let slow_at_s = |k: usize| secs * (0.1 + 0.65 * k as f64 / slow_readers.max(1) as f64);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut soak = Soak {
        base: ctx.base,
        clients: Vec::with_capacity(clients + slow_readers),
        owner: HashMap::new(),
        rooms: (0..p.rooms).map(|_| Room::default()).collect(),
        pending: HashMap::new(),
        next_ref: 0,
        rng: Rng(rng.next() | 1),
        tokens,
        host: target.host.clone(),
        ws_path: ctx.ws_path.clone(),
        connecting: 0,
        stopping: false,
        c: Counters::default(),
        unexpected: BTreeMap::new(),
        error_codes: BTreeMap::new(),
        misbehaved: BTreeMap::new(),
        to_pause: Vec::new(),
        p,
    };
    let now = soak.now_ns();
    let slow_before = scrape::read(&target, ctx.base, scrape::SLOW_CONSUMERS);
    for i in 0..clients + slow_readers {
        let once = i >= clients;
        let mut rooms = BTreeMap::new();
        if !once {
            for _ in 0..1 + rng.below(soak.p.rooms_per_client) {
                rooms.insert(rng.below(soak.p.rooms), Stint::default());
            }
        }
        let reconnect_ns = if once {
            now + (slow_at_s(i - clients) * 1e9) as u64
        } else {
            now
        };
        soak.clients.push(Client {
            user: i,
            token: None,
            conn: None,
            phase: Phase::Offline,
            misbehave: None,
            once,
            rooms,
            reconnect_ns,
            session_end_ns: 0,
            next_send_ns: 0,
            next_room_ns: 0,
            deadline_ns: 0,
            pending: 0,
            sessions: 0,
        });
    }

    // --- the load -------------------------------------------------------------------
    let mut samples = vec![sample(ctx, started, 0)];
    let load_end = started + Duration::from_secs_f64(secs);
    let mut next_sample = started + Duration::from_secs_f64(sample_every);
    let mut next_tick = Instant::now();
    let mut peak_online = 0;
    while Instant::now() < load_end {
        net.turn(&mut soak, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
        for id in std::mem::take(&mut soak.to_pause) {
            net.pause_reading(id);
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + Duration::from_millis(50);
            let now = soak.now_ns();
            soak.tick(&mut net, now);
            let online = soak.owner.len();
            peak_online = peak_online.max(online);
        }
        if Instant::now() >= next_sample && Instant::now() < load_end {
            next_sample += Duration::from_secs_f64(sample_every);
            samples.push(sample(ctx, started, soak.owner.len()));
        }
    }
    samples.push(sample(ctx, started, soak.owner.len()));
    let load_samples = samples.len();

    // --- every client back, caught up and checked -------------------------------------
    soak.stopping = true;
    for client in &mut soak.clients {
        if client.phase == Phase::Offline && !client.once {
            client.reconnect_ns = 0;
        }
    }
    let final_deadline = Instant::now() + Duration::from_secs_f64(final_s);
    while !soak.settled() && Instant::now() < final_deadline {
        net.turn(&mut soak, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
        for id in std::mem::take(&mut soak.to_pause) {
            net.pause_reading(id);
        }
        let now = soak.now_ns();
        soak.tick(&mut net, now);
    }
    let drain_until = Instant::now() + Duration::from_secs_f64(drain_s);
    while Instant::now() < drain_until {
        net.turn(&mut soak, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    let end_ns = soak.now_ns();
    let mut not_resumed = 0u64;
    for c in 0..soak.clients.len() {
        if soak.clients[c].once {
            continue;
        }
        let ready = soak.clients[c].phase == Phase::Open
            && soak.clients[c].misbehave.is_none()
            && soak.clients[c].rooms.values().all(|s| s.caught_up);
        if !ready {
            not_resumed += 1;
            continue;
        }
        let rooms = std::mem::take(&mut soak.clients[c].rooms);
        for (room, stint) in &rooms {
            soak.check_stint(*room, stint, end_ns);
        }
    }
    let slow_after = scrape::read(&target, ctx.base, scrape::SLOW_CONSUMERS);

    // --- every client gone; chatd back to idle -----------------------------------------
    let ids: Vec<usize> = soak.owner.keys().copied().collect();
    for &id in &ids {
        net.send_close(id, 1000);
    }
    soak.stopping = true;
    for client in &mut soak.clients {
        client.once = true;
        if client.phase == Phase::Open {
            client.phase = Phase::Closing;
        }
    }
    let close_until = Instant::now() + Duration::from_secs(5);
    while !soak.owner.is_empty() && Instant::now() < close_until {
        net.turn(&mut soak, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    for id in soak.owner.keys().copied().collect::<Vec<_>>() {
        net.close(id);
    }
    let gone = Instant::now();
    let settle_until = gone + Duration::from_secs_f64(settle_s);
    let mut settled = sample(ctx, started, 0);
    while !at_idle(&settled, &idle) && Instant::now() < settle_until {
        std::thread::sleep(Duration::from_secs(1));
        settled = sample(ctx, started, 0);
    }
    // Housekeeping hands memory back once a second after a load has passed.
    std::thread::sleep(Duration::from_secs(2));
    settled = sample(ctx, started, 0);
    let settle_secs = gone.elapsed().as_secs_f64();

    // --- figures ------------------------------------------------------------------------
    let warm_at = secs * WARMUP_SHARE;
    let under_load = &samples[..load_samples];
    let first_warm = under_load.iter().find(|s| s.t_s >= warm_at);
    let last_load = under_load.last();
    let mib = |k: Option<u64>| k.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let growth_pct = match (
        first_warm.and_then(|s| s.rss_kib),
        last_load.and_then(|s| s.rss_kib),
    ) {
        (Some(a), Some(b)) if a > 0 && first_warm.map(|s| s.t_s) < last_load.map(|s| s.t_s) => {
            (b as f64 - a as f64) / a as f64 * 100.0
        }
        _ => f64::NAN,
    };
    let idle_mib = mib(idle.rss_kib);
    let margin_mib = (idle_mib * IDLE_RSS_SHARE).max(IDLE_RSS_MIN_MIB);
    let peak_mib = under_load
        .iter()
        .filter_map(|s| s.rss_kib)
        .max()
        .map_or(f64::NAN, |k| k as f64 / 1024.0);
    let slow_counted = match (slow_before, slow_after) {
        (Some(b), Some(a)) => a.saturating_sub(b),
        _ => 0,
    };
    let cnt = &soak.c;
    let mut r = ctx.result("soak", params);
    r["figures"] = json!([
        figure("lost deliveries", cnt.lost as f64, "", "lower"),
        bounded("duplicate deliveries", cnt.duplicates as f64, "", 0.0),
        figure(
            "unexpected closes",
            cnt.unexpected_closes as f64,
            "",
            "lower"
        ),
        figure(
            "failed connections",
            cnt.failed_connections as f64,
            "",
            "lower"
        ),
        bounded("failed logins", cnt.failed_logins as f64, "", 0.0),
        bounded("error replies", cnt.error_replies as f64, "", 0.0),
        bounded(
            "server frames that are not JSON",
            cnt.bad_frames as f64,
            "",
            0.0
        ),
        bounded(
            "close frames chatd did not answer",
            cnt.closes_unanswered as f64,
            "",
            0.0
        ),
        bounded(
            "deliveries outside membership",
            cnt.outside_membership as f64,
            "",
            0.0
        ),
        bounded(
            "clients not resumed at the end",
            not_resumed as f64,
            "",
            0.0
        ),
        bounded(
            "misbehaving clients not closed",
            cnt.misbehaving_not_closed as f64,
            "",
            0.0
        ),
        bounded(
            "slow readers chatd did not close as slow consumers",
            cnt.slow_started.saturating_sub(slow_counted) as f64,
            "",
            0.0
        ),
        bounded(
            "server RSS growth after warm-up",
            growth_pct,
            "%",
            MAX_RSS_GROWTH_PCT
        ),
        bounded(
            "server RSS above idle once all left",
            mib(settled.rss_kib) - idle_mib,
            "MiB",
            margin_mib
        ),
        bounded(
            "server fds above idle",
            above(settled.fds, idle.fds),
            "",
            0.0
        ),
        bounded(
            "open connections above idle",
            above(settled.open_connections, idle.open_connections),
            "",
            0.0
        ),
        bounded(
            "timer entries above idle",
            above(settled.timer_entries, idle.timer_entries),
            "",
            TIMER_SLACK as f64
        ),
        bounded(
            "rate-limiter keys above idle",
            above(settled.rate_limiter_keys, idle.rate_limiter_keys),
            "",
            0.0
        ),
        figure(
            "deliveries checked",
            cnt.deliveries_checked as f64,
            "",
            "higher"
        ),
        figure("resumes checked", cnt.resumes_checked as f64, "", "higher"),
        figure("reconnects", cnt.reconnects as f64, "", "higher"),
        figure("logins", cnt.logins as f64, "", "higher"),
        figure("messages acknowledged", cnt.acked as f64, "", "higher"),
        figure("server RSS before the load", idle_mib, "MiB", "lower"),
        figure("server RSS peak sample", peak_mib, "MiB", "lower"),
        figure(
            "server RSS once all left",
            mib(settled.rss_kib),
            "MiB",
            "lower"
        ),
    ]);
    r["limited_by"] = json!("offered load");
    r["soak"] = json!({
        "idle": idle.to_json(),
        "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        "settled": settled.to_json(),
        "settle_s": round3(settle_secs),
        "warm_up_s": round3(warm_at),
        "rss_margin_mib": round3(margin_mib),
        "peak_clients_online": peak_online,
        "sessions": cnt.sessions,
        "reconnects": cnt.reconnects,
        "logins": cnt.logins,
        "clean_closes": cnt.clean_closes,
        "closes_unanswered": cnt.closes_unanswered,
        "abrupt_disconnects": cnt.abrupt_disconnects,
        "sends": cnt.sends,
        "acked": cnt.acked,
        "joins": cnt.joins,
        "leaves": cnt.leaves,
        "live_messages": cnt.live_messages,
        "history_messages": cnt.history_messages,
        "deliveries_checked": cnt.deliveries_checked,
        "resumes_checked": cnt.resumes_checked,
        "stints_checked": cnt.stints_checked,
        "stints_dropped_by_a_disconnect": cnt.stints_dropped,
        "misbehaving_sessions": soak.misbehaved,
        "misbehaving_closed_as_expected": cnt.misbehaving_closed_as_expected,
        "slow_readers": {"started": cnt.slow_started, "dropped_by_the_bench": cnt.slow_dropped,
                         "chatd_slow_consumer_closes": slow_counted},
        "unexpected": soak.unexpected,
        "error_codes": soak.error_codes,
        "bad_frames": cnt.bad_frames,
    });
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak_with_one_client(rooms: usize) -> Soak {
        let mut soak = Soak {
            base: Instant::now(),
            p: Params {
                rooms,
                rooms_per_client: 3,
                send_every_s: 1.0,
                room_every_s: 1.0,
                online_s: 1.0,
                offline_s: 1.0,
                misbehave: 0.0,
                abrupt: 0.0,
                login_share: 0.0,
                size: 10,
                concurrency: 1,
            },
            clients: Vec::new(),
            owner: HashMap::new(),
            rooms: (0..rooms).map(|_| Room::default()).collect(),
            pending: HashMap::new(),
            next_ref: 0,
            rng: Rng(3),
            tokens: vec!["t".into()],
            host: "localhost".into(),
            ws_path: "/ws".into(),
            connecting: 0,
            stopping: false,
            c: Counters::default(),
            unexpected: BTreeMap::new(),
            error_codes: BTreeMap::new(),
            misbehaved: BTreeMap::new(),
            to_pause: Vec::new(),
        };
        soak.clients.push(Client {
            user: 0,
            token: None,
            conn: Some(0),
            phase: Phase::Open,
            misbehave: None,
            once: false,
            rooms: BTreeMap::new(),
            reconnect_ns: 0,
            session_end_ns: 0,
            next_send_ns: 0,
            next_room_ns: 0,
            deadline_ns: 0,
            pending: 0,
            sessions: 1,
        });
        soak
    }

    fn message(room: usize, id: u64) -> Value {
        json!({"type": "message", "id": id, "room": room_name(room), "text": "x"})
    }

    #[test]
    fn a_stint_owes_what_was_acknowledged_after_its_join_until_its_leave() {
        let mut soak = soak_with_one_client(2);
        // Acknowledged before the join was sent (id 5), while in the room (6, 7, 9),
        // after the leave was sent (10).
        soak.rooms[1].acked = vec![(50, 5), (150, 6), (160, 7), (300, 9), (500, 10)];
        soak.rooms[1].max_acked = 5;
        let stint = soak.start_stint(1, 100);
        assert_eq!(stint.l_start, 5);
        soak.clients[0].rooms.insert(1, stint);
        for id in [6, 7] {
            soak.on_message(0, &message(1, id));
        }
        // A message for a room the client is not in.
        soak.on_message(0, &message(0, 8));
        assert_eq!(soak.c.outside_membership, 1);
        let stint = soak.clients[0].rooms.remove(&1).unwrap();
        soak.check_stint(1, &stint, 400);
        assert_eq!(
            (soak.c.deliveries_checked, soak.c.lost),
            (3, 1),
            "9 is missing"
        );
        assert_eq!(soak.c.duplicates, 0);
    }

    #[test]
    fn a_message_seen_twice_live_is_a_duplicate() {
        let mut soak = soak_with_one_client(1);
        let stint = soak.start_stint(0, 0);
        soak.clients[0].rooms.insert(0, stint);
        soak.on_message(0, &message(0, 3));
        assert_eq!(soak.c.duplicates, 0);
        soak.on_message(0, &message(0, 3));
        assert_eq!(soak.c.duplicates, 1);
    }

    #[test]
    fn room_names_round_trip_and_others_are_not_rooms() {
        assert_eq!(room_index(&room_name(17)), Some(17));
        assert_eq!(room_index(ARCHIVE), None);
        assert_eq!(room_index("lobby"), None);
    }

    #[test]
    fn spread_stays_within_half_to_one_and_a_half_of_the_mean() {
        let mut rng = Rng(7);
        for _ in 0..1000 {
            let ns = rng.around_ns(2.0);
            assert!((1_000_000_000..=3_000_000_000).contains(&ns), "{ns}");
        }
    }
}
