//! The WebSocket side of the loop: the connection's session decides, this carries out.
//!
//! The session ([`crate::session::WsSession`]) decodes frames, applies the request rate
//! and the flood count, and decides pings and closes; its requests go to the chat core,
//! whose outputs go to the outbox (in order per connection, behind any storage answer
//! they wait for); what the outbox releases is carried out at the end of the turn, each
//! shared frame queued on its recipients' output queues. A recipient whose
//! queue would pass `max_outbound_bytes` is closed with 1013 instead of growing; pongs
//! count against the same cap, so a client that pings without reading is cut off too.

use std::time::Instant;

use super::conn::Phase;
use super::{ConnRef, Server};
use crate::api::WsSession;
use crate::chat::protocol::Frame;
use crate::chat::{Action, ConnId};
use crate::config::DuplicateSessions;
use crate::session::WsDeadline;
use crate::time::Now;
use crate::ws::Close;
use crate::ws::frame::{close_frame, ping_frame};

/// The chat's id for a connection: slot and generation, so it is never reused.
fn conn_id(conn_ref: ConnRef) -> ConnId {
    ConnId((u64::from(conn_ref.generation) << 32) | conn_ref.key as u64)
}

fn conn_ref(id: ConnId) -> ConnRef {
    ConnRef {
        key: (id.0 & u64::from(u32::MAX)) as usize,
        generation: (id.0 >> 32) as u32,
    }
}

/// The instant at which a Unix time (seconds) is reached, seen from `now` (checked:
/// no `exp` in a token can overflow it).
fn instant_at(unix_secs: i64, now: Now) -> Instant {
    now.instant_at(unix_secs)
}

impl Server {
    /// The upgrade was answered with 101: the connection now speaks WebSocket.
    pub(super) fn start_ws(&mut self, conn_ref: ConnRef, session: WsSession, now: Now) {
        let config = &self.app.config;
        let (rate, max_message) = (config.ws_rate, config.max_message_bytes);
        let replace = config.duplicate_sessions == DuplicateSessions::Replace;
        let id = conn_id(conn_ref);
        let Some(conn) = self.get(conn_ref) else {
            return;
        };
        conn.phase = Phase::WebSocket;
        conn.http.stop_request_timer();
        conn.ws = Some(Box::new(crate::session::WsSession::new(
            id,
            max_message,
            rate,
            instant_at(session.token_expires_at, now),
            now.instant,
        )));
        log::debug!(
            "{} opened a WebSocket as {}",
            conn.peer,
            session.user.username
        );
        self.app.metrics.ws_opened += 1;
        self.app
            .chat
            .connect(id, &session.user, replace, &mut self.chat_outputs);
        self.app.outbox.push(id, &mut self.chat_outputs);
        self.arm(conn_ref);
    }

    /// Hands the connection's input to its session and carries out what it decided:
    /// requests to the chat core, pongs, a close after the replies already produced.
    pub(super) fn process_ws(&mut self, conn_ref: ConnRef, now: Now) {
        let Server {
            conns,
            app,
            chat_outputs,
            ..
        } = self;
        let Some(conn) = conns
            .get_mut(conn_ref.key)
            .filter(|c| c.generation == conn_ref.generation)
        else {
            return;
        };
        let Some(ws) = conn.ws.as_mut().filter(|_| conn.phase == Phase::WebSocket) else {
            return;
        };
        let decoded = ws.on_input(&conn.inbuf, now.instant);
        let id = ws.id;
        app.metrics.ws_messages_in += (decoded.requests.len() + decoded.refused.len()) as u64;
        for text in &decoded.requests {
            let (chat, mut backend) = app.backend();
            chat.handle(id, text, &mut backend, now.unix_ms, chat_outputs);
            app.outbox.push(id, chat_outputs);
        }
        app.metrics.ws_rate_limited += decoded.refused.len() as u64;
        for text in &decoded.refused {
            app.chat.reject_rate_limited(id, text, chat_outputs);
            app.outbox.push(id, chat_outputs);
        }
        if let Some(close) = decoded.close {
            match close {
                Close::Policy => {
                    app.metrics.ws_messages_in += 1;
                    app.metrics.ws_rate_limited += 1;
                    log::info!("{}: closing WebSocket for flooding", conn.peer);
                }
                Close::Echo(_) => {}
                _ => log::debug!("{}: closing WebSocket: {}", conn.peer, close.reason()),
            }
            // Leave the chat now; the close frame goes out after the replies owed to
            // this connection (the outbox keeps them in order).
            app.chat.disconnect(id, chat_outputs);
            chat_outputs.push(crate::chat::Output::Close { conn: id, close });
            app.outbox.push(id, chat_outputs);
            conn.inbuf = Vec::new();
        } else if decoded.consumed > 0 {
            conn.inbuf.drain(..decoded.consumed);
        }
        conn.release_idle_input();
        let pongs = decoded.pongs;
        if !pongs.is_empty() && self.make_room(conn_ref, pongs.len(), now) {
            if let Some(conn) = self.get(conn_ref) {
                conn.out.push_owned(pongs);
            }
            self.queue_flush(conn_ref);
        }
    }

    /// Queues a close frame with this code as the last thing the connection sends, and
    /// ends its chat session. A slow consumer's queued frames are dropped first, except
    /// one already partly sent.
    pub(super) fn close_ws(&mut self, conn_ref: ConnRef, close: Close, now: Now) {
        let Some(conn) = self.get(conn_ref) else {
            return;
        };
        let Some(ws) = conn.ws.as_mut() else {
            return;
        };
        if !ws.begin_close(now.instant) {
            return;
        }
        let id = ws.id;
        if close == Close::SlowConsumer {
            conn.out.drop_unstarted();
        }
        conn.out.push_owned(close_frame(close));
        conn.close_when_flushed = true;
        conn.inbuf = Vec::new();
        self.app.chat.disconnect(id, &mut self.chat_outputs);
        self.app.outbox.push(id, &mut self.chat_outputs);
        self.queue_flush(conn_ref);
        self.arm(conn_ref);
    }

    /// The client is gone without a close handshake.
    pub(super) fn drop_ws(&mut self, conn_ref: ConnRef) {
        if let Some(ws) = self.get(conn_ref).and_then(|c| c.ws.as_ref()) {
            let id = ws.id;
            self.app.chat.disconnect(id, &mut self.chat_outputs);
            self.app.outbox.push(id, &mut self.chat_outputs);
        }
        self.remove(conn_ref.key);
    }

    /// A WebSocket deadline passed: token expiry, idle timeout, a ping due, or the end
    /// of the wait for a close frame to go out; the session decides which.
    pub(super) fn ws_deadline(&mut self, conn_ref: ConnRef, now: Now) {
        let timeouts = self.timeouts.ws;
        let Some(ws) = self.get(conn_ref).and_then(|c| c.ws.as_mut()) else {
            return;
        };
        match ws.on_deadline(now.instant, &timeouts) {
            WsDeadline::NotYet => self.arm(conn_ref),
            // Our close frame could not be delivered in time: give up on the peer.
            WsDeadline::Drop => self.drop_ws(conn_ref),
            WsDeadline::Close(close) => {
                if close == Close::IdleTimeout {
                    self.app.metrics.ws_idle_closed += 1;
                }
                self.close_ws(conn_ref, close, now);
            }
            WsDeadline::Ping => {
                if let Some(conn) = self.get(conn_ref) {
                    conn.out.push_owned(ping_frame(b""));
                }
                self.queue_flush(conn_ref);
                self.arm(conn_ref);
            }
        }
    }

    /// The end of the turn's work: storage flushes what was submitted (the writes in
    /// one transaction), its answers resume parked HTTP requests and release the chat
    /// outputs that waited for them, in order; then the released chat actions are
    /// carried out. Repeats while that submits more (a request's next step), which with
    /// SQLite is answered in the same turn.
    pub(super) fn settle_storage(&mut self, now: Now) {
        let mut answers = Vec::new();
        loop {
            if self.app.store.has_submitted() {
                self.app.store.flush(now.instant);
            }
            self.app.store.take_answers(&mut answers);
            for (ticket, outcome) in answers.drain(..) {
                if self.http_waiting.contains_key(&ticket) {
                    self.resume_http(ticket, outcome, now);
                } else {
                    self.app.outbox.answer(ticket, outcome);
                }
            }
            self.app.outbox.settle(&mut self.app.chat);
            self.carry_out_chat_actions(now);
            if !self.app.store.has_submitted() {
                break;
            }
        }
    }

    /// Carries out what the outbox released; closing a connection makes it leave the
    /// chat, which may release more (presence): go on until nothing is left.
    fn carry_out_chat_actions(&mut self, now: Now) {
        while self.app.outbox.has_actions() {
            for action in self.app.outbox.take_actions() {
                match action {
                    Action::Send { to, frame } => {
                        for &id in to.as_slice() {
                            self.queue_frame(id, &frame, now);
                        }
                    }
                    Action::Close { conn, close } => {
                        self.close_ws(conn_ref(conn), close, now);
                    }
                    Action::TokenRenewed { conn, expires_at } => {
                        let conn_ref = conn_ref(conn);
                        if let Some(ws) = self.get(conn_ref).and_then(|c| c.ws.as_mut()) {
                            ws.renew_token(instant_at(expires_at, now));
                            // The new token may expire before the deadline armed now
                            // (arm adds the earlier one); a later deadline is picked up
                            // when the armed entry fires.
                            self.arm(conn_ref);
                        }
                    }
                }
            }
        }
    }

    /// Queues a shared frame for one connection, or closes it as a slow consumer.
    fn queue_frame(&mut self, id: ConnId, frame: &Frame, now: Now) {
        let conn_ref = conn_ref(id);
        if !self.make_room(conn_ref, frame.len(), now) {
            return;
        }
        if let Some(conn) = self.get(conn_ref) {
            conn.out.push_shared(frame.clone());
        }
        self.app.metrics.ws_messages_out += 1;
        self.queue_flush(conn_ref);
    }

    /// Whether `extra` more bytes may be queued for an open WebSocket: they fit under
    /// `max_outbound_bytes`, or do once the socket has taken what it can. Otherwise the
    /// connection is closed as a slow consumer (1013). The cap bounds a backlog: one
    /// frame larger than the cap (a history page of long texts can be) is still taken
    /// when nothing else waits, so what a connection holds stays below the cap plus one
    /// frame, and a client that reads gets every answer the protocol allows.
    fn make_room(&mut self, conn_ref: ConnRef, extra: usize, now: Now) -> bool {
        let cap = self.app.config.max_outbound_bytes;
        let fits = |queued: usize| queued == 0 || queued + extra <= cap;
        let Some(conn) = self.get(conn_ref) else {
            return false;
        };
        if conn.ws.as_ref().is_none_or(|ws| ws.close_sent()) {
            return false;
        }
        if fits(conn.out.len()) {
            return true;
        }
        // Over the cap only counts if the socket cannot take what is queued: no write
        // budget here, or a client that reads would count as slow.
        self.flush_with_budget(conn_ref, usize::MAX, now);
        let Some(conn) = self.get(conn_ref) else {
            return false;
        };
        if fits(conn.out.len()) {
            return true;
        }
        log::info!(
            "{}: closing slow WebSocket consumer ({} bytes queued)",
            conn.peer,
            conn.out.len()
        );
        self.app.metrics.ws_slow_consumers += 1;
        self.close_ws(conn_ref, Close::SlowConsumer, now);
        false
    }
}
