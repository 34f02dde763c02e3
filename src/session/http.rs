//! One connection's HTTP/1.1 protocol state: requests in, answers and decisions out.
//!
//! [`HttpSession::on_input`] parses every complete request at the front of the input
//! and answers each in order (pipelining) through the handler it is given, until the
//! answers queued pass [`OUTPUT_HIGH_WATER`] (input then pauses: a client pipelining
//! without reading must not grow memory), a close is decided, or an upgrade is
//! accepted (the rest of the input is WebSocket frames). The deadlines of an HTTP
//! connection (the header timeout from the first byte of a request, the idle timeout
//! between requests, the bounded wait for a last answer to go out) come from
//! [`HttpSession::deadline`] and are decided by [`HttpSession::on_deadline`].

use std::time::{Duration, Instant};

use crate::api::{Handled, Step, Waiting, WsSession as Upgraded};
use crate::http::{self, Body, Response};
use crate::store::Ticket;

/// Queued output above which a connection's further requests wait unread.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// How long a close decided by the idle timeout may take to go out (the client may
/// still be reading towards it, the rest of a large answer) before the connection is
/// dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long a request may wait for storage at most, whatever the timeouts: storage
/// answers every request within the database timeout, so this only bounds a bug.
pub const PARKED_BACKSTOP: Duration = Duration::from_secs(60);

/// The configured durations of an HTTP connection's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// TLS handshake plus a complete request must arrive within this (slowloris).
    pub header: Duration,
    /// A keep-alive connection with no request in progress closes after this.
    pub idle: Duration,
}

/// What the server tells a session about the moment, besides the time.
#[derive(Debug, Clone, Copy)]
pub struct HttpContext<'a> {
    pub limits: http::RequestLimits,
    /// The `Date` header value of this second.
    pub date: &'a str,
    /// A graceful shutdown has begun: every answer closes its connection.
    pub shutting_down: bool,
}

/// One answer, serialised head first, in the order of the requests.
#[derive(Debug)]
pub struct Answer {
    pub head: Vec<u8>,
    /// Empty for HEAD, 304 and `100 Continue`.
    pub body: Body,
    pub status: u16,
    /// Whether a handler produced it (false for `100 Continue` and for refusals of
    /// requests that could not be parsed).
    pub handled: bool,
}

/// What one call to [`HttpSession::on_input`] did.
#[derive(Debug, Default)]
pub struct HttpTurn {
    /// Bytes of the input used; the rest is a request still arriving, requests waiting
    /// behind paused input, or (after an upgrade) WebSocket frames.
    pub consumed: usize,
    pub answers: Vec<Answer>,
    /// Close once the answers are sent (`Connection: close`, HTTP/1.0, an error, a
    /// shutdown in progress).
    pub close: bool,
    /// The last answer accepted a WebSocket upgrade.
    pub upgrade: Option<Upgraded>,
    /// The last request waits for storage: the requests after it wait unread until
    /// [`HttpSession::on_answer`].
    pub parked: Option<(Ticket, Waiting)>,
}

/// What an HTTP deadline that passed calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDeadline {
    /// Not due yet (the deadline moved since it was armed): arm again.
    NotYet,
    /// A request did not arrive complete within the header timeout: drop.
    HeaderTimeout,
    /// A close was decided but the answer before it has not moved for the idle
    /// timeout: the client stopped reading, and the close cannot be sent either. Drop.
    AnswerNotTaken,
    /// The idle timeout passed between requests: send what is queued and close, within
    /// CLOSE_GRACE.
    IdleClose,
    /// The grace given to that close is over: drop.
    CloseNotDelivered,
}

/// The HTTP state of one connection.
#[derive(Debug, Clone)]
pub struct HttpSession {
    /// When the request now arriving began (from accept for the first one); None
    /// between requests and while input is paused. Its deadline is `header` later.
    request_started: Option<Instant>,
    /// Set when the idle timeout decided the close: what is queued must be sent by
    /// then, or the connection is dropped.
    close_deadline: Option<Instant>,
    /// Input processing stopped because too much output is queued; resumes once the
    /// queue has drained to half the high-water mark.
    paused: bool,
    /// `100 Continue` was sent for the request now arriving.
    continue_sent: bool,
    /// A request waits for storage: whether its connection stays open after the answer,
    /// and since when it waits.
    parked: Option<Parked>,
    pub requests_served: u64,
}

#[derive(Debug, Clone, Copy)]
struct Parked {
    keep_alive: bool,
    head: bool,
    since: Instant,
}

impl HttpSession {
    /// A connection accepted at `now`: the header timeout runs from here (the TLS
    /// handshake counts).
    pub fn new(now: Instant) -> Self {
        HttpSession {
            request_started: Some(now),
            close_deadline: None,
            paused: false,
            continue_sent: false,
            parked: None,
            requests_served: 0,
        }
    }

    /// Input waits: too much output queued, or a request waiting for storage.
    pub fn is_paused(&self) -> bool {
        self.paused || self.parked.is_some()
    }

    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Whether input may resume with `queued` bytes still to send.
    pub fn try_resume(&mut self, queued: usize) -> bool {
        if self.paused && queued <= OUTPUT_HIGH_WATER / 2 {
            self.paused = false;
        }
        !self.paused && self.parked.is_none()
    }

    /// The connection stops being HTTP (upgraded, or closing): no request timer.
    pub fn stop_request_timer(&mut self) {
        self.request_started = None;
    }

    /// Answers every complete request at the front of `input`, in order, with
    /// `handle`. `queued` is the output already waiting to be sent. A request that
    /// waits for storage ends the turn ([`HttpTurn::parked`]).
    pub fn on_input(
        &mut self,
        input: &[u8],
        mut queued: usize,
        context: HttpContext<'_>,
        now: Instant,
        mut handle: impl FnMut(&http::Request<'_, '_>) -> Step,
    ) -> HttpTurn {
        let mut turn = HttpTurn::default();
        while !turn.close && turn.upgrade.is_none() && self.parked.is_none() {
            if queued > OUTPUT_HIGH_WATER {
                self.paused = true;
                break;
            }
            let rest = &input[turn.consumed..];
            if rest.is_empty() {
                break;
            }
            let mut headers = [httparse::EMPTY_HEADER; http::MAX_HEADERS];
            match http::parse_request(rest, &mut headers, context.limits) {
                Ok(http::ParseStatus::Partial { expects_continue }) => {
                    if expects_continue && !self.continue_sent {
                        self.continue_sent = true;
                        turn.answers.push(Answer {
                            head: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                            body: Body::Empty,
                            status: 100,
                            handled: false,
                        });
                    }
                    break;
                }
                Ok(http::ParseStatus::Complete(parsed)) => {
                    let request = &parsed.request;
                    let keep_alive = request.keep_alive();
                    let head = request.method == "HEAD";
                    let step = handle(request);
                    turn.consumed += parsed.len;
                    self.continue_sent = false;
                    self.request_started = None;
                    match step {
                        Step::Done(handled) => {
                            queued += self.answer(&mut turn, handled, keep_alive, true, context);
                        }
                        Step::Wait(ticket, waiting) => {
                            self.parked = Some(Parked {
                                keep_alive,
                                head,
                                since: now,
                            });
                            turn.parked = Some((ticket, waiting));
                        }
                    }
                }
                Err(e) => {
                    let handled = Handled {
                        response: Response::error(&e),
                        upgrade: None,
                    };
                    self.answer(&mut turn, handled, false, false, context);
                }
            }
        }
        self.after_turn(&turn, input.len(), now);
        turn
    }

    /// The parked request's answer came (or the next thing it waits for): queue it;
    /// the caller then goes on with the input behind it.
    pub fn on_answer(&mut self, step: Step, context: HttpContext<'_>, now: Instant) -> HttpTurn {
        let mut turn = HttpTurn::default();
        let Some(parked) = self.parked else {
            return turn;
        };
        match step {
            Step::Wait(ticket, waiting) => turn.parked = Some((ticket, waiting)),
            Step::Done(mut handled) => {
                self.parked = None;
                if parked.head {
                    handled.response.omit_body = true;
                }
                self.answer(&mut turn, handled, parked.keep_alive, true, context);
                // Input after the parked request is handled by the next `on_input`.
                self.after_turn(&turn, 0, now);
            }
        }
        turn
    }

    /// Queues one answer in `turn`; its size in bytes.
    fn answer(
        &mut self,
        turn: &mut HttpTurn,
        handled: Handled,
        keep_alive: bool,
        from_handler: bool,
        context: HttpContext<'_>,
    ) -> usize {
        let mut response = handled.response;
        turn.upgrade = handled.upgrade;
        if turn.upgrade.is_none() && (!keep_alive || context.shutting_down) {
            response.close = true;
        }
        let mut head = Vec::with_capacity(512);
        response.write_head(context.date, &mut head);
        let body = if response.sends_body() {
            response.body
        } else {
            Body::Empty
        };
        let size = head.len() + body.len();
        turn.answers.push(Answer {
            head,
            body,
            status: response.status,
            handled: from_handler,
        });
        self.requests_served += 1;
        turn.close = response.close;
        size
    }

    fn after_turn(&mut self, turn: &HttpTurn, input_len: usize, now: Instant) {
        if turn.close || turn.upgrade.is_some() {
            self.request_started = None;
        } else if self.paused || self.parked.is_some() {
            // The requests behind the queued answers wait unread: a client taking those
            // answers slowly is not slow to send, and the idle timeout cuts one that
            // stops taking them. The request timer starts again when input resumes.
            self.request_started = None;
        } else if turn.consumed < input_len && self.request_started.is_none() {
            // Part of a request is here: it must be complete within the header timeout.
            self.request_started = Some(now);
        }
    }

    /// The earliest moment something must happen to this connection. `last_active` is
    /// when plaintext last arrived or bytes were last sent.
    pub fn deadline(&self, last_active: Instant, timeouts: &HttpTimeouts) -> Instant {
        match (self.close_deadline, self.request_started, self.parked) {
            (Some(deadline), _, _) => deadline,
            (None, Some(started), _) => started + timeouts.header,
            // Storage answers within the database timeout (an error at worst); the idle
            // timeout does not run meanwhile, only this backstop.
            (None, None, Some(parked)) => parked.since + timeouts.idle.max(PARKED_BACKSTOP),
            (None, None, None) => last_active + timeouts.idle,
        }
    }

    /// Decides what the deadline that passed at `now` calls for. `closing` says a close
    /// was already decided (the answer before it is still queued).
    pub fn on_deadline(
        &mut self,
        now: Instant,
        last_active: Instant,
        closing: bool,
        timeouts: &HttpTimeouts,
    ) -> HttpDeadline {
        if self.deadline(last_active, timeouts) > now {
            return HttpDeadline::NotYet;
        }
        if self.close_deadline.is_some() {
            HttpDeadline::CloseNotDelivered
        } else if self.parked.is_some() {
            HttpDeadline::AnswerNotTaken
        } else if self.request_started.is_some() {
            HttpDeadline::HeaderTimeout
        } else if closing {
            HttpDeadline::AnswerNotTaken
        } else {
            self.close_deadline = Some(now + CLOSE_GRACE);
            HttpDeadline::IdleClose
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const TIMEOUTS: HttpTimeouts = HttpTimeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };
    const LIMITS: http::RequestLimits = http::RequestLimits {
        max_header_bytes: 8192,
        max_body_bytes: 1024,
    };

    /// Answers every request with a body of `size` bytes.
    fn answer(size: usize) -> impl FnMut(&http::Request<'_, '_>) -> Step {
        move |_| {
            Step::Done(Handled {
                response: Response {
                    body: Body::Owned(vec![b'x'; size]),
                    ..Response::new(200)
                },
                upgrade: None,
            })
        }
    }

    fn context(shutting_down: bool) -> HttpContext<'static> {
        HttpContext {
            limits: LIMITS,
            date: "date",
            shutting_down,
        }
    }

    fn feed(s: &mut HttpSession, input: &[u8], queued: usize, now: Instant) -> HttpTurn {
        s.on_input(input, queued, context(false), now, answer(10))
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn slowloris_at_one_byte_a_second_is_cut_at_the_header_timeout_from_accept() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let mut input = Vec::new();
        for (i, &b) in GET[..GET.len() - 1].iter().enumerate() {
            input.push(b);
            let at = t0 + SEC * i as u32;
            let turn = feed(&mut s, &input, 0, at);
            assert!(turn.answers.is_empty());
            // Bytes arriving do not move the deadline.
            assert_eq!(s.deadline(at, &TIMEOUTS), t0 + 10 * SEC);
        }
        let just_before = t0 + 10 * SEC - Duration::from_nanos(1);
        assert_eq!(
            s.on_deadline(just_before, just_before, false, &TIMEOUTS),
            HttpDeadline::NotYet
        );
        assert_eq!(
            s.on_deadline(t0 + 10 * SEC, t0 + 9 * SEC, false, &TIMEOUTS),
            HttpDeadline::HeaderTimeout
        );
    }

    #[test]
    fn keep_alive_idles_between_requests_and_each_request_has_its_own_timer() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let turn = feed(&mut s, GET, 0, t0 + SEC);
        assert_eq!(turn.answers.len(), 1);
        assert!(!turn.close);
        // Between requests: the idle timeout from the last activity.
        assert_eq!(s.deadline(t0 + SEC, &TIMEOUTS), t0 + 61 * SEC);
        // Half a request at 30 s: its own header timeout from there.
        let turn = feed(&mut s, &GET[..5], 0, t0 + 30 * SEC);
        assert_eq!(turn.consumed, 0);
        assert_eq!(s.deadline(t0 + 30 * SEC, &TIMEOUTS), t0 + 40 * SEC);
        let turn = feed(&mut s, GET, 0, t0 + 35 * SEC);
        assert_eq!((turn.answers.len(), s.requests_served), (1, 2));
        assert_eq!(s.deadline(t0 + 35 * SEC, &TIMEOUTS), t0 + 95 * SEC);
    }

    #[test]
    fn the_idle_timeout_closes_with_a_bounded_grace_then_drops() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        feed(&mut s, GET, 0, t0);
        let idle_at = t0 + 60 * SEC;
        assert_eq!(
            s.on_deadline(idle_at - Duration::from_nanos(1), t0, false, &TIMEOUTS),
            HttpDeadline::NotYet
        );
        assert_eq!(
            s.on_deadline(idle_at, t0, false, &TIMEOUTS),
            HttpDeadline::IdleClose
        );
        // The close has two seconds to go out, whatever moves meanwhile.
        assert_eq!(s.deadline(idle_at + SEC, &TIMEOUTS), idle_at + 2 * SEC);
        assert_eq!(
            s.on_deadline(idle_at + 2 * SEC, idle_at + SEC, true, &TIMEOUTS),
            HttpDeadline::CloseNotDelivered
        );
    }

    #[test]
    fn a_close_whose_answer_is_never_taken_is_dropped_at_the_idle_timeout() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let turn = feed(
            &mut s,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            0,
            t0,
        );
        assert!(turn.close);
        assert_eq!(
            s.on_deadline(t0 + 60 * SEC, t0, true, &TIMEOUTS),
            HttpDeadline::AnswerNotTaken
        );
    }

    #[test]
    fn a_pipelined_flood_pauses_at_the_high_water_mark_and_resumes_at_half() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let input: Vec<u8> = GET.repeat(1000);
        // Answers of 64 KiB and a head: four pass the 256 KiB mark, the rest wait
        // unread.
        let turn = s.on_input(&input, 0, context(false), t0, answer(64 * 1024));
        assert_eq!(turn.answers.len(), 4);
        assert_eq!(turn.consumed, 4 * GET.len());
        assert!(s.is_paused());
        // Requests waiting behind queued answers run no request timer: the idle
        // timeout applies while the client takes its answers.
        assert_eq!(s.deadline(t0 + SEC, &TIMEOUTS), t0 + 61 * SEC);
        assert!(!s.try_resume(OUTPUT_HIGH_WATER / 2 + 1));
        assert!(s.try_resume(OUTPUT_HIGH_WATER / 2));
        let rest = &input[turn.consumed..];
        let turn = s.on_input(rest, 0, context(false), t0 + 2 * SEC, answer(64 * 1024));
        assert_eq!(turn.answers.len(), 4);
        assert_eq!(s.requests_served, 8);
    }

    #[test]
    fn http_1_0_errors_and_shutdown_close_and_nothing_after_a_close_is_answered() {
        let t0 = Instant::now();
        for (input, shutting_down) in [
            (&b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n"[..], false),
            (
                &b"GARBAGE\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
                false,
            ),
            (
                &b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
                true,
            ),
        ] {
            let mut s = HttpSession::new(t0);
            let turn = s.on_input(input, 0, context(shutting_down), t0, answer(1));
            assert!(turn.close, "{}", String::from_utf8_lossy(input));
            assert_eq!(turn.answers.len(), 1, "{}", String::from_utf8_lossy(input));
        }
        let mut s = HttpSession::new(t0);
        let turn = feed(&mut s, b"GARBAGE\r\n\r\n", 0, t0);
        assert_eq!(
            (turn.answers[0].status, turn.answers[0].handled),
            (400, false)
        );
    }

    #[test]
    fn expect_100_continue_is_answered_once_per_request() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let head =
            b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let turn = feed(&mut s, head, 0, t0);
        assert_eq!(turn.answers.len(), 1);
        assert_eq!(turn.answers[0].status, 100);
        assert_eq!(turn.consumed, 0);
        assert!(feed(&mut s, head, 0, t0).answers.is_empty(), "sent once");
        let mut full = head.to_vec();
        full.extend_from_slice(b"{}");
        let turn = feed(&mut s, &full, 0, t0);
        assert_eq!(turn.answers[0].status, 200);
        assert_eq!(
            feed(&mut s, head, 0, t0).answers[0].status,
            100,
            "the next request"
        );
    }

    #[test]
    fn an_accepted_upgrade_stops_the_requests_and_leaves_the_frames() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let mut input = b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        let upgrade_len = input.len();
        input.extend_from_slice(b"\x81\x80frames");
        let turn = s.on_input(&input, 0, context(false), t0, |_| {
            Step::Done(Handled {
                response: Response::new(101),
                upgrade: Some(Upgraded {
                    user: crate::chat::SessionUser {
                        id: 1,
                        username: "alice".into(),
                        display_name: "Alice".into(),
                    },
                    token_expires_at: 0,
                }),
            })
        });
        assert!(turn.upgrade.is_some() && !turn.close);
        assert_eq!(turn.consumed, upgrade_len);
        assert_eq!(s.deadline(t0, &TIMEOUTS), t0 + 60 * SEC, "no request timer");
    }

    #[test]
    fn a_request_waiting_for_storage_holds_the_ones_behind_it_until_answered() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let mut input = GET.to_vec();
        input.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let mut first = true;
        let turn = s.on_input(&input, 0, context(false), t0, |_| {
            assert!(first, "nothing behind the parked request is handled");
            first = false;
            Step::Wait(Ticket(7), Waiting::RegisterCreate)
        });
        assert_eq!(turn.consumed, GET.len(), "the second request waits unread");
        assert!(turn.answers.is_empty());
        assert!(matches!(turn.parked, Some((Ticket(7), _))));
        assert!(s.is_parked() && s.is_paused());
        // Input arriving meanwhile is not handled either.
        let turn = feed(&mut s, &input[GET.len()..], 0, t0 + SEC);
        assert_eq!((turn.consumed, turn.answers.len()), (0, 0));
        // The idle timeout does not run while the request waits.
        assert!(s.deadline(t0, &TIMEOUTS) >= t0 + TIMEOUTS.idle);
        assert_eq!(
            s.on_deadline(t0 + TIMEOUTS.idle - SEC, t0, false, &TIMEOUTS),
            HttpDeadline::NotYet
        );
        // A second wait (the next step of the same request) keeps it parked.
        let turn = s.on_answer(
            Step::Wait(Ticket(8), Waiting::RegisterCreate),
            context(false),
            t0,
        );
        assert!(turn.answers.is_empty() && s.is_parked());
        let done = Step::Done(Handled {
            response: Response::new(200),
            upgrade: None,
        });
        let turn = s.on_answer(done, context(false), t0 + 2 * SEC);
        assert_eq!(turn.answers.len(), 1);
        assert!(!turn.close, "keep-alive as the request asked");
        assert!(!s.is_parked() && !s.is_paused());
        let turn = feed(&mut s, &input[GET.len()..], 0, t0 + 2 * SEC);
        assert_eq!(turn.answers.len(), 1);
        assert!(turn.close);
    }

    #[test]
    fn a_request_that_storage_never_answers_is_dropped_at_the_backstop() {
        let t0 = Instant::now();
        let mut s = HttpSession::new(t0);
        let turn = s.on_input(GET, 0, context(false), t0, |_| {
            Step::Wait(Ticket(1), Waiting::RegisterCreate)
        });
        assert!(turn.parked.is_some());
        let at = s.deadline(t0, &TIMEOUTS);
        assert_eq!(at, t0 + TIMEOUTS.idle.max(PARKED_BACKSTOP));
        assert_eq!(
            s.on_deadline(at, t0, false, &TIMEOUTS),
            HttpDeadline::AnswerNotTaken
        );
    }
}
