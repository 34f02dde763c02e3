//! One upgraded connection's protocol state: frames in, requests and decisions out.
//!
//! [`WsSession::on_input`] decodes what arrived, passes each text message through the
//! request rate and the flood count, answers pings and decides a close; the event loop
//! hands the requests to the chat core and queues what the session says. Deadlines
//! (a ping due, the idle timeout, token expiry, the wait for our close frame to go
//! out) come from [`WsSession::deadline`] and are decided by
//! [`WsSession::on_deadline`]. Time is always the caller's `now`.

use std::time::{Duration, Instant};

use super::TokenBucket;
use crate::chat::ConnId;
use crate::config::Rate;
use crate::ws::frame::pong_frame;
use crate::ws::{Close, Decoder, WsEvent};

/// How long our close frame may take to go out before the connection is dropped.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The configured durations of a WebSocket's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsTimeouts {
    /// Ping a connection not heard from for this long.
    pub ping: Duration,
    /// Close (4000) a connection not heard from for this long.
    pub idle: Duration,
}

/// What one call to [`WsSession::on_input`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input used; the rest waits for more.
    pub consumed: usize,
    /// Text messages within the request rate, for the chat core, in order.
    pub requests: Vec<String>,
    /// Text messages over the rate: each gets a `rate_limited` reply.
    pub refused: Vec<String>,
    /// Pong frames answering the pings, to queue (they count against the outbound cap).
    pub pongs: Vec<u8>,
    /// The connection must close with this code after the replies to what came
    /// before: a protocol violation, flooding, or the client's own close (echoed).
    pub close: Option<Close>,
}

/// What a deadline that passed calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsDeadline {
    /// Not due yet (the deadline moved since it was armed): arm again.
    NotYet,
    /// Send a ping; the next deadline follows.
    Ping,
    /// Close with this code.
    Close(Close),
    /// Our close frame did not go out in time: drop the connection.
    Drop,
}

/// The WebSocket state of one connection.
#[derive(Debug)]
pub struct WsSession {
    /// The chat's name for this connection.
    pub id: ConnId,
    decoder: Decoder,
    /// `ws_rate`: chat requests allowed from this connection.
    limiter: TokenBucket,
    /// `ws_rate`'s burst: the flood count that closes the connection.
    burst: u32,
    /// The flood count: each refused request adds one, each allowed one takes one off;
    /// at the burst size the client is considered flooding and closed with 1008.
    refusals: u32,
    /// Last time a complete message, ping, pong or close arrived: the idle deadline
    /// counts from here. Bytes or fragments of one still incomplete do not count, or a
    /// client trickling one in, a byte now and then, would never be idle.
    last_heard: Instant,
    /// Last ping sent.
    last_ping: Instant,
    /// When the token presented (or renewed with `auth`) expires: close with 4002.
    token_expires: Instant,
    /// A close was decided while reading (protocol error, flooding, the client's own
    /// close): no more input is processed; the close frame follows the replies
    /// already produced.
    closing: bool,
    /// When our close frame was queued; nothing else may follow it, and the peer has
    /// CLOSE_LINGER to take it before the connection is dropped.
    close_sent_at: Option<Instant>,
}

impl WsSession {
    pub fn new(
        id: ConnId,
        max_message: usize,
        rate: Rate,
        token_expires: Instant,
        now: Instant,
    ) -> Self {
        WsSession {
            id,
            decoder: Decoder::new(max_message),
            limiter: TokenBucket::new(rate),
            burst: rate.burst,
            refusals: 0,
            last_heard: now,
            last_ping: now,
            token_expires,
            closing: false,
            close_sent_at: None,
        }
    }

    /// A close is decided or under way: input is no longer read.
    pub fn is_closing(&self) -> bool {
        self.closing || self.close_sent_at.is_some()
    }

    /// Our close frame is queued: nothing may follow it.
    pub fn close_sent(&self) -> bool {
        self.close_sent_at.is_some()
    }

    /// Records that our close frame is queued at `now`. False if one already was (a
    /// connection sends one close frame).
    pub fn begin_close(&mut self, now: Instant) -> bool {
        if self.close_sent_at.is_some() {
            return false;
        }
        self.close_sent_at = Some(now);
        true
    }

    /// An `auth` request renewed the token.
    pub fn renew_token(&mut self, expires: Instant) {
        self.token_expires = expires;
    }

    /// Bytes of a fragmented message held while its other fragments arrive.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Decodes every complete frame at the front of `input`. Nothing is decoded once a
    /// close is decided.
    pub fn on_input(&mut self, input: &[u8], now: Instant) -> Decoded {
        let mut decoded = Decoded::default();
        if self.is_closing() {
            decoded.consumed = input.len();
            return decoded;
        }
        while decoded.close.is_none() {
            let (event, used) = match self.decoder.decode(&input[decoded.consumed..]) {
                Ok(step) => step,
                Err(close) => {
                    decoded.close = Some(close);
                    break;
                }
            };
            decoded.consumed += used;
            let Some(event) = event else {
                break;
            };
            self.last_heard = now;
            match event {
                WsEvent::Text(text) => {
                    let allowed = self.limiter.check(now);
                    self.refusals = flood_count(self.refusals, allowed);
                    if allowed {
                        decoded.requests.push(text);
                    } else if self.refusals >= self.burst {
                        decoded.close = Some(Close::Policy);
                    } else {
                        decoded.refused.push(text);
                    }
                }
                WsEvent::Ping(payload) => decoded.pongs.extend_from_slice(&pong_frame(&payload)),
                WsEvent::Pong => {}
                // Echo the client's code, as RFC 6455 suggests.
                WsEvent::Close { code, .. } => {
                    decoded.close = Some(Close::Echo(code.unwrap_or(1000)))
                }
            }
        }
        if decoded.close.is_some() {
            self.closing = true;
            // What follows a close is never read.
            decoded.consumed = input.len();
        }
        decoded
    }

    /// The earliest moment something must happen to this connection.
    pub fn deadline(&self, timeouts: &WsTimeouts) -> Instant {
        if let Some(sent) = self.close_sent_at {
            return sent + CLOSE_LINGER;
        }
        let idle = self.last_heard + timeouts.idle;
        let ping = self.last_heard.max(self.last_ping) + timeouts.ping;
        idle.min(ping).min(self.token_expires)
    }

    /// Decides what the deadline that passed at `now` calls for.
    pub fn on_deadline(&mut self, now: Instant, timeouts: &WsTimeouts) -> WsDeadline {
        if self.deadline(timeouts) > now {
            return WsDeadline::NotYet;
        }
        if self.close_sent_at.is_some() {
            WsDeadline::Drop
        } else if now >= self.token_expires {
            WsDeadline::Close(Close::TokenExpired)
        } else if now >= self.last_heard + timeouts.idle {
            WsDeadline::Close(Close::IdleTimeout)
        } else {
            self.last_ping = now;
            WsDeadline::Ping
        }
    }
}

/// The flood count after one more request: a refused request adds one, an allowed one
/// takes one off (never below zero). At `ws_burst` the connection is closed with 1008,
/// so it is never refused more than a burst of requests beyond those it was allowed: a
/// client that keeps sending at more than twice its rate is closed however its requests
/// are spread, one that slows down when refused is not.
fn flood_count(count: u32, allowed: bool) -> u32 {
    if allowed {
        count.saturating_sub(1)
    } else {
        count.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::client_frame;

    const SEC: Duration = Duration::from_secs(1);
    const TIMEOUTS: WsTimeouts = WsTimeouts {
        ping: Duration::from_secs(25),
        idle: Duration::from_secs(60),
    };

    fn session(t0: Instant, rate: u32, burst: u32) -> WsSession {
        let rate = Rate {
            count: rate,
            per: SEC,
            burst,
        };
        WsSession::new(ConnId(1), 1024, rate, t0 + 3600 * SEC, t0)
    }

    fn text(s: &str) -> Vec<u8> {
        client_frame(0x81, s.as_bytes())
    }

    fn texts(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| text(&i.to_string())).collect()
    }

    #[test]
    fn a_burst_passes_then_refusals_then_1008_at_the_burst_count() {
        let t0 = Instant::now();
        let mut s = session(t0, 5, 5);
        let input = texts(12);
        let d = s.on_input(&input, t0);
        assert_eq!(d.requests, ["0", "1", "2", "3", "4"]);
        assert_eq!(
            d.refused,
            ["5", "6", "7", "8"],
            "refused, answered rate_limited"
        );
        assert_eq!(d.close, Some(Close::Policy), "the fifth refusal in a row");
        assert_eq!(d.consumed, input.len(), "nothing after the close is read");
        assert!(s.is_closing());
        assert_eq!(
            s.on_input(&texts(1), t0 + SEC),
            Decoded {
                consumed: text("0").len(),
                ..Decoded::default()
            }
        );
    }

    /// Requests `per_tick` to a tick of `tick` for `ticks`: how many were allowed and
    /// whether the connection was closed for flooding.
    fn flood(rate: u32, burst: u32, tick: Duration, per_tick: usize, ticks: u32) -> (usize, bool) {
        let t0 = Instant::now();
        let mut s = session(t0, rate, burst);
        let mut allowed = 0;
        for i in 0..ticks {
            let d = s.on_input(&texts(per_tick), t0 + tick * i);
            allowed += d.requests.len();
            if d.close == Some(Close::Policy) {
                return (allowed, true);
            }
        }
        (allowed, false)
    }

    #[test]
    fn a_steady_flood_is_closed_and_the_allowed_rate_never_is() {
        let ms = Duration::from_millis;
        // Five times the rate, evenly spread: never a burst of refusals in a row, yet
        // the flood count reaches the burst.
        assert!(flood(10, 10, ms(20), 1, 1000).1, "50/s against 10/s");
        assert!(flood(10, 10, ms(40), 1, 1000).1, "2.5 times the rate");
        // The allowed rate, and even twice it, is never closed.
        assert_eq!(flood(10, 10, ms(100), 1, 1000), (1000, false));
        assert!(!flood(10, 10, ms(50), 1, 1000).1, "twice the rate");
        assert_eq!(flood_count(0, true), 0);
        assert_eq!(flood_count(u32::MAX, false), u32::MAX);
    }

    #[test]
    fn pings_when_quiet_and_closes_4000_at_the_idle_timeout_exactly() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        assert_eq!(s.deadline(&TIMEOUTS), t0 + 25 * SEC);
        let just_before = t0 + 25 * SEC - Duration::from_nanos(1);
        assert_eq!(s.on_deadline(just_before, &TIMEOUTS), WsDeadline::NotYet);
        assert_eq!(s.on_deadline(t0 + 25 * SEC, &TIMEOUTS), WsDeadline::Ping);
        assert_eq!(s.deadline(&TIMEOUTS), t0 + 50 * SEC);
        assert_eq!(s.on_deadline(t0 + 50 * SEC, &TIMEOUTS), WsDeadline::Ping);
        // The next ping would be at 75 s: the idle timeout comes first.
        assert_eq!(s.deadline(&TIMEOUTS), t0 + 60 * SEC);
        assert_eq!(
            s.on_deadline(t0 + 60 * SEC, &TIMEOUTS),
            WsDeadline::Close(Close::IdleTimeout)
        );
    }

    #[test]
    fn a_pong_or_any_complete_frame_counts_as_heard_and_a_trickled_one_does_not() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        let pong = client_frame(0x8A, b"");
        s.on_input(&pong, t0 + 30 * SEC);
        assert_eq!(
            s.deadline(&TIMEOUTS),
            t0 + 55 * SEC,
            "ping 25 s after the pong"
        );
        // A frame arriving a byte at a time: nothing is heard until it is complete.
        let frame = text("hello");
        let mut held = Vec::new();
        for (i, &b) in frame.iter().enumerate() {
            held.push(b);
            let at = t0 + 31 * SEC + SEC * i as u32;
            let d = s.on_input(&held, at);
            held.drain(..d.consumed);
            if i + 1 < frame.len() {
                assert_eq!(s.deadline(&TIMEOUTS), t0 + 55 * SEC, "byte {i}");
            } else {
                assert_eq!(d.requests, ["hello"]);
                assert_eq!(s.deadline(&TIMEOUTS), at + 25 * SEC);
            }
        }
    }

    #[test]
    fn pings_are_answered_with_pongs() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        let mut input = client_frame(0x89, b"a");
        input.extend(client_frame(0x89, b"bc"));
        let d = s.on_input(&input, t0);
        let mut pongs = pong_frame(b"a");
        pongs.extend(pong_frame(b"bc"));
        assert_eq!(d.pongs, pongs);
        assert!(d.requests.is_empty() && d.close.is_none());
    }

    #[test]
    fn the_token_expiry_closes_with_4002_at_its_instant_and_auth_moves_it() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        s.renew_token(t0 + 10 * SEC);
        assert_eq!(s.deadline(&TIMEOUTS), t0 + 10 * SEC);
        assert_eq!(
            s.on_deadline(t0 + 10 * SEC, &TIMEOUTS),
            WsDeadline::Close(Close::TokenExpired)
        );
        s.renew_token(t0 + 3600 * SEC);
        assert_eq!(s.deadline(&TIMEOUTS), t0 + 25 * SEC);
    }

    #[test]
    fn the_clients_close_is_echoed_and_nothing_after_it_is_read() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        let mut input = text("before");
        input.extend(client_frame(0x88, &1014u16.to_be_bytes()));
        input.extend(text("after"));
        let d = s.on_input(&input, t0);
        assert_eq!(d.requests, ["before"]);
        assert_eq!(d.close, Some(Close::Echo(1014)));
        assert_eq!(d.consumed, input.len());
        assert!(s.on_input(&text("later"), t0).requests.is_empty());
    }

    #[test]
    fn a_violation_closes_after_the_requests_before_it() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        let mut input = text("ok");
        input.extend(client_frame(0x82, b"binary"));
        let d = s.on_input(&input, t0);
        assert_eq!(d.requests, ["ok"]);
        assert_eq!(d.close, Some(Close::Unsupported));
        let mut s = session(t0, 100, 100);
        let d = s.on_input(&client_frame(0x81, &[b'x'; 2000]), t0);
        assert_eq!(d.close, Some(Close::TooBig), "over max_message_bytes");
    }

    #[test]
    fn our_close_frame_has_two_seconds_to_go_out_and_is_sent_once() {
        let t0 = Instant::now();
        let mut s = session(t0, 100, 100);
        assert!(s.begin_close(t0 + SEC));
        assert!(!s.begin_close(t0 + 2 * SEC), "one close frame");
        assert!(s.close_sent() && s.is_closing());
        assert_eq!(s.deadline(&TIMEOUTS), t0 + 3 * SEC);
        assert_eq!(
            s.on_deadline(t0 + 3 * SEC - Duration::from_nanos(1), &TIMEOUTS),
            WsDeadline::NotYet
        );
        assert_eq!(s.on_deadline(t0 + 3 * SEC, &TIMEOUTS), WsDeadline::Drop);
        assert!(s.on_input(&text("late"), t0 + 3 * SEC).requests.is_empty());
    }
}
