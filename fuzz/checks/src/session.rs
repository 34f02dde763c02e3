//! The connection session (chatd::session): HTTP requests, an upgrade, then WebSocket
//! frames, fed as a sequence of steps (plaintext arriving, time passing, the queued
//! output draining) the way the event loop drives it, with a fake clock.
//!
//! Checked: a session never reads past its input; nothing is answered or decoded once
//! a close is decided; a deadline that passed is always acted on (never "not yet") and
//! the deadline after it is in the future, so the loop can never spin on one; the
//! WebSocket side never holds more than `max_message_bytes` of a fragmented message;
//! input pauses only above the high-water mark; an upgrade is the last answer of its
//! turn.

use std::time::{Duration, Instant};

use chatd::api::{Handled, Step as Handling, WsSession as Upgraded};
use chatd::chat::{ConnId, SessionUser};
use chatd::config::Rate;
use chatd::http::{Body, RequestLimits, Response};
use chatd::session::http::OUTPUT_HIGH_WATER;
use chatd::session::{
    HttpContext, HttpDeadline, HttpSession, HttpTimeouts, WsDeadline, WsSession, WsTimeouts,
};

/// Small enough for fuzzed frames to reach.
const MAX_MESSAGE: usize = 256;

const HTTP: HttpTimeouts = HttpTimeouts {
    header: Duration::from_secs(10),
    idle: Duration::from_secs(60),
};

const WS: WsTimeouts = WsTimeouts {
    ping: Duration::from_secs(25),
    idle: Duration::from_secs(60),
};

/// One step of the input, read from the bytes: `0 n b1..bn` plaintext arrives (n
/// bytes), `1 hi lo` time passes (milliseconds, up to about 65 s; due deadlines fire),
/// `2` the client takes what is queued for it. A plain format rather than `arbitrary`,
/// so that seeds (a request, an upgrade, frames) are written by hand.
#[derive(Debug)]
enum Step<'a> {
    Input(&'a [u8]),
    Wait(u16),
    Drain,
}

/// The steps in `data`, at most `MAX_STEPS`; a truncated last step is dropped.
fn steps(mut data: &[u8]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    while steps.len() < MAX_STEPS {
        let step = match data {
            [0, n, rest @ ..] if rest.len() >= usize::from(*n) => {
                let (bytes, rest) = rest.split_at(usize::from(*n));
                data = rest;
                Step::Input(bytes)
            }
            [1, hi, lo, rest @ ..] => {
                data = rest;
                Step::Wait(u16::from_be_bytes([*hi, *lo]))
            }
            [op, rest @ ..] if op % 3 == 2 => {
                data = rest;
                Step::Drain
            }
            [_, rest @ ..] => {
                data = rest;
                continue;
            }
            [] => break,
        };
        steps.push(step);
    }
    steps
}

/// Steps run per input: enough for a request, an upgrade, frames and timeouts.
const MAX_STEPS: usize = 256;

enum Phase {
    Http(HttpSession),
    Ws(Box<WsSession>),
    Closed,
}

struct Driver {
    phase: Phase,
    now: Instant,
    input: Vec<u8>,
    /// Bytes queued for the client and not yet taken.
    queued: usize,
    last_active: Instant,
    /// A close was decided: only the queued output may still go out.
    closing: bool,
    reached: Reached,
}

pub fn check(data: &[u8]) {
    run(data);
}

/// How far an input took the session: what the seeds are checked to reach.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reached {
    pub answers: usize,
    pub upgraded: bool,
    pub ws_requests: usize,
    pub pings: usize,
    /// How the connection ended, if it did.
    pub ended: Option<&'static str>,
}

/// Runs the steps of `data`, checking every invariant on the way.
pub fn run(data: &[u8]) -> Reached {
    let start = Instant::now();
    let mut d = Driver {
        phase: Phase::Http(HttpSession::new(start)),
        now: start,
        input: Vec::new(),
        queued: 0,
        last_active: start,
        closing: false,
        reached: Reached::default(),
    };
    for step in steps(data) {
        match step {
            Step::Input(bytes) => {
                d.input.extend_from_slice(bytes);
                d.last_active = d.now;
                d.read();
            }
            Step::Wait(ms) => d.advance(Duration::from_millis(u64::from(ms))),
            Step::Drain => {
                d.queued = 0;
                if let Phase::Http(http) = &mut d.phase
                    && http.is_paused()
                    && http.try_resume(0)
                {
                    d.read();
                }
            }
        }
        if matches!(d.phase, Phase::Closed) {
            break;
        }
    }
    d.reached
}

impl Driver {
    fn read(&mut self) {
        if self.closing {
            return;
        }
        match &mut self.phase {
            Phase::Http(http) => {
                if http.is_paused() {
                    return;
                }
                let context = HttpContext {
                    limits: RequestLimits {
                        max_header_bytes: 1024,
                        max_body_bytes: 256,
                    },
                    date: "Thu, 01 Jan 2026 00:00:00 GMT",
                    shutting_down: false,
                };
                let turn = http.on_input(&self.input, self.queued, context, self.now, answer);
                assert!(turn.consumed <= self.input.len(), "read past the input");
                if let Some(last) = turn.answers.last()
                    && turn.upgrade.is_some()
                {
                    assert_eq!(last.status, 101, "the upgrade is the last answer");
                }
                for a in &turn.answers {
                    self.queued += a.head.len() + a.body.len();
                }
                if !turn.answers.is_empty() {
                    self.last_active = self.now;
                }
                self.reached.answers += turn.answers.len();
                if http.is_paused() {
                    assert!(self.queued > OUTPUT_HIGH_WATER, "paused below the mark");
                }
                self.input.drain(..turn.consumed);
                self.closing = turn.close;
                if turn.upgrade.is_some() {
                    assert!(!turn.close, "an upgrade that closes");
                    let rate = Rate {
                        count: 5,
                        per: Duration::from_secs(1),
                        burst: 5,
                    };
                    let ws = WsSession::new(
                        ConnId(1),
                        MAX_MESSAGE,
                        rate,
                        self.now + WS.idle * 4,
                        self.now,
                    );
                    self.phase = Phase::Ws(Box::new(ws));
                    self.reached.upgraded = true;
                    self.read();
                }
            }
            Phase::Ws(ws) => {
                let was_closing = ws.is_closing();
                let decoded = ws.on_input(&self.input, self.now);
                assert!(decoded.consumed <= self.input.len(), "read past the input");
                if was_closing {
                    assert!(
                        decoded.requests.is_empty()
                            && decoded.refused.is_empty()
                            && decoded.pongs.is_empty()
                            && decoded.close.is_none(),
                        "decoded after the close"
                    );
                }
                assert!(
                    ws.buffered() <= MAX_MESSAGE,
                    "holds {} bytes",
                    ws.buffered()
                );
                for text in decoded.requests.iter().chain(&decoded.refused) {
                    assert!(text.len() <= MAX_MESSAGE, "a message over the limit");
                }
                self.queued += decoded.pongs.len();
                self.reached.ws_requests += decoded.requests.len();
                self.input.drain(..decoded.consumed);
                if decoded.close.is_some() {
                    assert!(ws.is_closing());
                    assert!(ws.begin_close(self.now), "a second close frame");
                    self.closing = true;
                }
            }
            Phase::Closed => {}
        }
    }

    /// Lets time pass, firing every deadline reached on the way, as the loop's timer
    /// heap does.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        // Each firing must move the deadline forward or end the connection; more
        // than this many in one wait would be a loop spinning on a deadline.
        for _ in 0..1000 {
            let Some(deadline) = self.deadline() else {
                self.now = until;
                return;
            };
            if deadline > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(deadline);
            self.fire();
            if let Some(next) = self.deadline() {
                assert!(next > self.now, "the next deadline is not in the future");
            }
        }
        panic!("deadlines fired without end");
    }

    fn end(&mut self, how: &'static str) {
        self.phase = Phase::Closed;
        self.reached.ended = Some(how);
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Http(http) => Some(http.deadline(self.last_active, &HTTP)),
            Phase::Ws(ws) => Some(ws.deadline(&WS)),
            Phase::Closed => None,
        }
    }

    fn fire(&mut self) {
        match &mut self.phase {
            Phase::Http(http) => {
                match http.on_deadline(self.now, self.last_active, self.closing, &HTTP) {
                    HttpDeadline::NotYet => panic!("a deadline that passed is not yet"),
                    HttpDeadline::IdleClose => self.closing = true,
                    HttpDeadline::HeaderTimeout => self.end("header timeout"),
                    HttpDeadline::AnswerNotTaken => self.end("answer not taken"),
                    HttpDeadline::CloseNotDelivered => self.end("close not delivered"),
                }
            }
            Phase::Ws(ws) => match ws.on_deadline(self.now, &WS) {
                WsDeadline::NotYet => panic!("a deadline that passed is not yet"),
                WsDeadline::Ping => {
                    self.queued += 2;
                    self.reached.pings += 1;
                }
                WsDeadline::Close(_) => {
                    assert!(ws.begin_close(self.now), "a second close frame");
                    self.closing = true;
                }
                WsDeadline::Drop => self.end("close frame not delivered"),
            },
            Phase::Closed => {}
        }
    }
}

/// The handler: `/ws` is an accepted upgrade, anything else a small answer.
fn answer(request: &chatd::http::Request<'_, '_>) -> Handling {
    if request.path == "/ws" {
        return Handling::Done(Handled {
            response: Response::new(101),
            upgrade: Some(Upgraded {
                user: SessionUser {
                    id: 1,
                    username: "alice".into(),
                    display_name: "Alice".into(),
                },
                token_expires_at: 0,
            }),
        });
    }
    Handling::Done(Handled {
        response: Response {
            body: Body::Owned(vec![b'x'; 64]),
            ..Response::new(200)
        },
        upgrade: None,
    })
}
