//! Turning a connection's decrypted input into HTTP requests and queued responses.
//!
//! Requests are answered in order (pipelining) as soon as each is complete; an accepted
//! WebSocket upgrade switches the connection to frames in the middle of its input.

use std::time::Instant;

use super::{ConnRef, Server, conn::Phase};
use crate::api::{self, Client};
use crate::app::Effect;
use crate::http::{self, Body, Response};
use crate::time::Now;
use crate::ws::Close;

/// Queued output above which a connection's further requests wait (HTTP pipelining
/// without reading the answers must not grow memory).
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

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
        let mut consumed = 0;
        let mut answered = false;
        let mut session = None;
        while !conn.close_when_flushed {
            if conn.out.len() > OUTPUT_HIGH_WATER {
                conn.input_paused = true;
                break;
            }
            let input = &conn.inbuf[consumed..];
            if input.is_empty() {
                break;
            }
            let mut headers = [httparse::EMPTY_HEADER; http::MAX_HEADERS];
            // Handler time for the access log: a measurement, so the real clock.
            let started = access_log.then(Instant::now);
            let (response, method, path, len) =
                match http::parse_request(input, &mut headers, limits) {
                    Ok(http::ParseStatus::Partial { expects_continue }) => {
                        if expects_continue && !conn.continue_sent {
                            conn.continue_sent = true;
                            conn.out
                                .push_owned(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
                            answered = true;
                        }
                        break;
                    }
                    Ok(http::ParseStatus::Complete(parsed)) => {
                        let client = Client {
                            ip: conn.peer.ip(),
                            now,
                            shutting_down,
                        };
                        let handled = api::handle(app, &parsed.request, client);
                        let mut response = handled.response;
                        session = handled.upgrade;
                        if session.is_none() && (!parsed.request.keep_alive() || shutting_down) {
                            response.close = true;
                        }
                        (
                            response,
                            parsed.request.method,
                            parsed.request.path,
                            parsed.len,
                        )
                    }
                    Err(e) => {
                        let mut response = Response::error(&e);
                        response.close = true;
                        (response, "-", "-", 0)
                    }
                };
            let mut head = Vec::with_capacity(512);
            response.write_head(&date.1, &mut head);
            conn.out.push_owned(head);
            let body_bytes = if response.sends_body() {
                let n = response.body.len();
                match response.body {
                    Body::Empty => {}
                    Body::Owned(bytes) => conn.out.push_owned(bytes),
                    Body::Shared(bytes) => conn.out.push_shared(bytes),
                }
                n
            } else {
                0
            };
            app.metrics.count_response(response.status);
            if access_log {
                log::info!(
                    target: "chatd::access",
                    "{} \"{} {}\" {} {}B {}us",
                    conn.peer.ip(),
                    method,
                    path,
                    response.status,
                    body_bytes,
                    started.map_or(0, |t| t.elapsed().as_micros())
                );
            }
            answered = true;
            consumed += len;
            conn.requests_served += 1;
            conn.continue_sent = false;
            conn.request_started = None;
            if response.close {
                conn.close_when_flushed = true;
            }
            if session.is_some() {
                break;
            }
        }
        if consumed > 0 {
            conn.inbuf.drain(..consumed);
        }
        if conn.close_when_flushed {
            conn.inbuf = Vec::new();
        } else if conn.input_paused {
            // The requests behind the queued answers wait unread: a client taking those
            // answers slowly is not slow to send, and idle_timeout cuts one that stops
            // taking them. The request timer starts again when input resumes.
            conn.request_started = None;
        } else if session.is_none() && !conn.inbuf.is_empty() {
            if conn.request_started.is_none() {
                conn.request_started = Some(now.instant);
            }
        } else {
            conn.release_idle_input();
        }
        if answered {
            conn.last_active = now.instant;
            self.queue_flush(conn_ref);
        }
        self.apply_effects();
        match session {
            Some(session) => {
                self.start_ws(conn_ref, session, now);
                true
            }
            None => false,
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
