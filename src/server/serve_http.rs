//! The HTTP side of the loop: the connection's session decides, this carries out.
//!
//! The session ([`crate::session::HttpSession`]) answers the complete requests in the
//! input in order (pipelining) through the API handlers; this queues the answers,
//! counts and logs them, starts the WebSocket side after an accepted upgrade (the rest
//! of the input is frames), and acts on the HTTP deadlines the session decides.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{ConnRef, Server, conn::Phase};
use crate::api::{self, Client};
use crate::app::Effect;
use crate::http::{self, Body};
use crate::session::{HttpContext, HttpDeadline};
use crate::time::Now;
use crate::ws::Close;

impl Server {
    /// Parses and answers every complete request in the connection's input, in order.
    /// Returns true if the connection became a WebSocket.
    pub(super) fn process_http(&mut self, conn_ref: ConnRef, now: Now) -> bool {
        let limits = http::RequestLimits {
            max_header_bytes: self.app.config.max_header_bytes,
            max_body_bytes: self.app.config.max_body_bytes,
        };
        let shutting_down = self.shutting_down;
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
        let turn = conn.http.on_input(
            &conn.inbuf,
            conn.out.len(),
            HttpContext {
                limits,
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
                let handled = api::handle(app, request, client);
                if let Some(started) = started {
                    let response = &handled.response;
                    let body = if response.sends_body() {
                        response.body.len()
                    } else {
                        0
                    };
                    access_line(
                        ip,
                        request.method,
                        request.path,
                        response.status,
                        body,
                        started.elapsed(),
                    );
                }
                handled
            },
        );
        let answered = !turn.answers.is_empty();
        for answer in turn.answers {
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
        if turn.consumed > 0 {
            conn.inbuf.drain(..turn.consumed);
        }
        if turn.close {
            conn.close_when_flushed = true;
            conn.inbuf = Vec::new();
        } else if turn.upgrade.is_none() && !conn.http.is_paused() && conn.inbuf.is_empty() {
            conn.release_idle_input();
        }
        if answered {
            conn.last_active = now.instant;
            self.queue_flush(conn_ref);
        }
        self.apply_effects();
        match turn.upgrade {
            Some(session) => {
                self.start_ws(conn_ref, session, now);
                true
            }
            None => false,
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
                    self.app.chat.disconnect_user(
                        user,
                        Close::CredentialsChanged,
                        &mut self.chat_outputs,
                    );
                }
            }
        }
    }
}

/// One line of the access log.
fn access_line(ip: IpAddr, method: &str, path: &str, status: u16, body: usize, took: Duration) {
    log::info!(
        target: "chatd::access",
        "{ip} \"{method} {path}\" {status} {body}B {}us",
        took.as_micros()
    );
}
