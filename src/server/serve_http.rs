//! The HTTP side of the loop: the connection's session decides, this carries out.
//!
//! The session ([`crate::session::HttpSession`]) answers the complete requests in the
//! input in order (pipelining) through the API handlers; this queues the answers,
//! counts and logs them, starts the WebSocket side after an accepted upgrade (the rest
//! of the input is frames), and acts on the HTTP deadlines the session decides.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{ConnRef, ParkedHttp, Server, conn::Phase};
use crate::api::{self, Client, Step};
use crate::app::Effect;
use crate::http::{self, Body};
use crate::session::{HttpContext, HttpDeadline};
use crate::store::{Outcome, Ticket};
use crate::time::Now;
use crate::ws::Close;

impl Server {
    /// Parses and answers every complete request in the connection's input, in order.
    /// Returns true if the connection became a WebSocket.
    pub(super) fn process_http(&mut self, conn_ref: ConnRef, now: Now) -> bool {
        let shutting_down = self.shutting_down;
        let context = self.http_context();
        let access_log = self.app.config.access_log;
        let Server {
            conns, app, date, ..
        } = self;
        let Some(conn) = conns
            .get_mut(conn_ref.key)
            .filter(|c| c.generation == conn_ref.generation)
        else {
            return false;
        };
        if conn.phase != Phase::Http {
            return conn.phase == Phase::WebSocket;
        }
        if conn.close_when_flushed {
            conn.inbuf = Vec::new();
            return false;
        }
        let ip = conn.peer.ip();
        let mut asked = None;
        let turn = conn.http.on_input(
            &conn.inbuf,
            conn.out.len(),
            HttpContext {
                limits: context,
                date: &date.1,
                shutting_down,
            },
            now.instant,
            |request| {
                // Handler time for the access log: a measurement, so the real clock.
                let started = access_log.then(Instant::now);
                let client = Client {
                    ip,
                    now,
                    shutting_down,
                };
                let step = api::handle(app, request, client);
                asked = Some((request.method.to_string(), request.path.to_string()));
                if let (Some(started), Step::Done(handled)) = (started, &step) {
                    log_answer(ip, request.method, request.path, handled, started.elapsed());
                }
                step
            },
        );
        if turn.consumed > 0 {
            conn.inbuf.drain(..turn.consumed);
        }
        if let Some((ticket, waiting)) = turn.parked {
            let (method, path) = asked.unwrap_or_default();
            self.http_waiting.insert(
                ticket,
                ParkedHttp {
                    conn: conn_ref,
                    waiting,
                    method,
                    path,
                    started: now.instant,
                },
            );
        }
        self.after_http_turn(conn_ref, turn.answers, turn.close, turn.upgrade, now)
    }

    /// Storage answered a parked request: go on with it, and once it is answered, with
    /// the requests behind it.
    pub(super) fn resume_http(&mut self, ticket: Ticket, outcome: Outcome, now: Now) {
        let Some(parked) = self.http_waiting.remove(&ticket) else {
            return;
        };
        let conn_ref = parked.conn;
        let ip = match self.get(conn_ref) {
            Some(conn) => conn.peer.ip(),
            // The client left; what the request changed is stored and its effects (a
            // password change closing sessions) still apply.
            None => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let client = Client {
            ip,
            now,
            shutting_down: self.shutting_down,
        };
        let step = api::resume(&mut self.app, parked.waiting, outcome, client);
        let limits = self.http_context();
        let shutting_down = self.shutting_down;
        let Server { conns, date, .. } = self;
        let Some(conn) = conns
            .get_mut(conn_ref.key)
            .filter(|c| c.generation == conn_ref.generation)
        else {
            self.apply_effects();
            return;
        };
        if let (true, Step::Done(handled)) = (self.app.config.access_log, &step) {
            let took = now.instant.saturating_duration_since(parked.started);
            log_answer(ip, &parked.method, &parked.path, handled, took);
        }
        let turn = conn.http.on_answer(
            step,
            HttpContext {
                limits,
                date: &date.1,
                shutting_down,
            },
            now.instant,
        );
        if let Some((ticket, waiting)) = turn.parked {
            self.http_waiting
                .insert(ticket, ParkedHttp { waiting, ..parked });
            return;
        }
        let upgraded = self.after_http_turn(conn_ref, turn.answers, turn.close, turn.upgrade, now);
        if upgraded {
            // Frames that came with the upgrade request, or after it.
            self.process_ws(conn_ref, now);
        }
        // The input behind the parked request, and what the socket holds unread.
        self.ready.push(conn_ref);
    }

    fn http_context(&self) -> http::RequestLimits {
        http::RequestLimits {
            max_header_bytes: self.app.config.max_header_bytes,
            max_body_bytes: self.app.config.max_body_bytes,
        }
    }

    /// Queues the answers of a turn, counts them, and starts the WebSocket side after an
    /// accepted upgrade. Returns true if the connection became a WebSocket.
    fn after_http_turn(
        &mut self,
        conn_ref: ConnRef,
        answers: Vec<crate::session::http::Answer>,
        close: bool,
        upgrade: Option<api::WsSession>,
        now: Now,
    ) -> bool {
        let access_log = self.app.config.access_log;
        let Server { conns, app, .. } = self;
        let Some(conn) = conns
            .get_mut(conn_ref.key)
            .filter(|c| c.generation == conn_ref.generation)
        else {
            return false;
        };
        let ip = conn.peer.ip();
        let answered = !answers.is_empty();
        for answer in answers {
            let body_bytes = answer.body.len();
            conn.out.push_owned(answer.head);
            match answer.body {
                Body::Empty => {}
                Body::Owned(bytes) => conn.out.push_owned(bytes),
                Body::Shared(bytes) => conn.out.push_shared(bytes),
            }
            if answer.status == 100 {
                continue; // not an answer to a request yet
            }
            app.metrics.count_response(answer.status);
            if access_log && !answer.handled {
                // A request that could not be parsed never reached a handler.
                access_line(ip, "-", "-", answer.status, body_bytes, Duration::ZERO);
            }
        }
        if close {
            conn.close_when_flushed = true;
            conn.inbuf = Vec::new();
        } else if upgrade.is_none() && !conn.http.is_paused() && conn.inbuf.is_empty() {
            conn.release_idle_input();
        }
        if answered {
            conn.last_active = now.instant;
            self.queue_flush(conn_ref);
        }
        self.apply_effects();
        match upgrade {
            Some(session) => {
                self.start_ws(conn_ref, session, now);
                true
            }
            None => {
                self.arm(conn_ref);
                false
            }
        }
    }

    /// An HTTP deadline passed; the session says which.
    pub(super) fn http_deadline(&mut self, conn_ref: ConnRef, now: Now) {
        let timeouts = self.timeouts.http;
        let Some(conn) = self.get(conn_ref) else {
            return;
        };
        let decision = conn.http.on_deadline(
            now.instant,
            conn.last_active,
            conn.close_when_flushed,
            &timeouts,
        );
        match decision {
            HttpDeadline::NotYet => self.arm(conn_ref),
            HttpDeadline::CloseNotDelivered => {
                // The idle timeout (already counted) gave the close this long.
                log::debug!("{}: close not delivered in time; dropping", conn.peer);
                self.remove(conn_ref.key);
            }
            HttpDeadline::HeaderTimeout => {
                log::debug!("{}: request not complete in time; closing", conn.peer);
                self.app.metrics.header_timeouts += 1;
                self.remove(conn_ref.key);
            }
            HttpDeadline::AnswerNotTaken => {
                log::debug!("{}: answer not taken in time; dropping", conn.peer);
                self.app.metrics.idle_timeouts += 1;
                self.remove(conn_ref.key);
            }
            HttpDeadline::IdleClose => {
                // A close the client may still be reading towards (the rest of a
                // large answer) gets a bounded time to go out.
                conn.close_when_flushed = true;
                self.app.metrics.idle_timeouts += 1;
                self.queue_flush(conn_ref);
                self.arm(conn_ref);
            }
        }
    }

    /// Carries out what request handlers asked for.
    fn apply_effects(&mut self) {
        for effect in std::mem::take(&mut self.app.effects) {
            match effect {
                Effect::CredentialsChanged(user) => {
                    for conn in self.app.chat.connections_of(user).to_vec() {
                        self.app.chat.disconnect(conn, &mut self.chat_outputs);
                        self.chat_outputs.push(crate::chat::Output::Close {
                            conn,
                            close: Close::CredentialsChanged,
                        });
                        self.app.outbox.push(conn, &mut self.chat_outputs);
                    }
                }
            }
        }
    }
}

/// The access log line of a handled request.
fn log_answer(ip: IpAddr, method: &str, path: &str, handled: &api::Handled, took: Duration) {
    let response = &handled.response;
    let body = if response.sends_body() {
        response.body.len()
    } else {
        0
    };
    access_line(ip, method, path, response.status, body, took);
}

/// One line of the access log.
fn access_line(ip: IpAddr, method: &str, path: &str, status: u16, body: usize, took: Duration) {
    log::info!(
        target: "chatd::access",
        "{ip} \"{method} {path}\" {status} {body}B {}us",
        took.as_micros()
    );
}
