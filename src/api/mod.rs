//! Request routing: `(app, request, client) -> Step`, with no socket in sight.
//!
//! The per-IP HTTP rate limit applies to every request before routing. The API paths
//! answer JSON; everything else is a static file. A request that needs storage (every
//! account path, and the token check of an upgrade) comes back as [`Step::Wait`]: the
//! connection parks it, and [`resume`] goes on once the answer is in. The connection
//! code turns the final answer into bytes and decides about keep-alive.

mod accounts;

use std::net::IpAddr;

pub use accounts::{AfterToken, Waiting, token_account, valid_username};

use accounts::Reply;

use crate::app::App;
use crate::chat::SessionUser;
use crate::config::{DuplicateSessions, MetricsAccess};
use crate::http::static_files::etag_matches;
use crate::http::{ApiError, Body, ErrorCode, Request, Response};
use crate::limits::retry_after_secs;
use crate::store::{Outcome, Ticket, User};
use crate::time::Now;

/// Who sent the request, and when it is being handled.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub now: Now,
    /// A graceful shutdown has begun: new WebSockets are refused, since the server is
    /// about to close them and they would miss the 1001 the others were sent.
    pub shutting_down: bool,
}

/// An accepted WebSocket upgrade: who is connecting, and until when their token holds.
#[derive(Debug, Clone)]
pub struct WsSession {
    pub user: SessionUser,
    /// Unix seconds at which the token presented at the upgrade expires.
    pub token_expires_at: i64,
}

/// The answer to a request, and the session to start if it was an accepted upgrade.
#[derive(Debug)]
pub struct Handled {
    pub response: Response,
    pub upgrade: Option<WsSession>,
}

/// What handling a request came to.
#[derive(Debug)]
pub enum Step {
    Done(Handled),
    /// Waiting for storage's answer to this ticket; then [`resume`].
    Wait(Ticket, Waiting),
}

impl Step {
    fn of(result: Result<Reply, ApiError>) -> Step {
        match result {
            Ok(Reply::Now(response)) => Step::Done(Handled {
                response,
                upgrade: None,
            }),
            Ok(Reply::Upgraded(response, session)) => Step::Done(Handled {
                response,
                upgrade: Some(session),
            }),
            Ok(Reply::Wait(ticket, waiting)) => Step::Wait(ticket, waiting),
            Err(e) => Step::Done(Handled {
                response: Response::error(&e),
                upgrade: None,
            }),
        }
    }
}

/// Answers one request, or says what it waits for.
pub fn handle(app: &mut App, req: &Request<'_, '_>, client: Client) -> Step {
    let mut step = if let Err(wait) = app.limits.check_http(client.ip) {
        app.metrics.rate_limited_http += 1;
        let error = ApiError::rate_limited(retry_after_secs(wait));
        Step::of(Err(error))
    } else if req.path == "/ws" {
        Step::of(upgrade(app, req, client))
    } else {
        Step::of(route(app, req, client))
    };
    // A HEAD answer never carries a body, errors included: the client would read the
    // stray bytes as the start of the next response.
    if let Step::Done(handled) = &mut step
        && req.method == "HEAD"
    {
        handled.response.omit_body = true;
    }
    step
}

/// Goes on with a request that waited for storage.
pub fn resume(app: &mut App, waiting: Waiting, outcome: Outcome, client: Client) -> Step {
    Step::of(accounts::resume(app, waiting, outcome, client))
}

/// Runs a request to its answer for a store that answers within its flush (SQLite,
/// memory): what the event loop does over several steps, in one call, for tests and
/// fuzzing. A store that does not answer gives 503 `unavailable`.
pub fn complete(app: &mut App, mut step: Step, client: Client) -> Handled {
    let mut answers = Vec::new();
    loop {
        match step {
            Step::Done(handled) => return handled,
            Step::Wait(ticket, waiting) => {
                app.store.flush(client.now.instant);
                app.store.take_answers(&mut answers);
                let outcome = match answers.iter().position(|(t, _)| *t == ticket) {
                    Some(i) => answers.swap_remove(i).1,
                    None => Err(crate::store::Failure::Unavailable),
                };
                step = resume(app, waiting, outcome, client);
            }
        }
    }
}

/// `GET /ws`: handshake checks, then the token (its account is checked by storage),
/// then the duplicate-session policy.
fn upgrade(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
    allow(req.method, &["GET"])?;
    if client.shutting_down {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down; reconnect later",
        ));
    }
    let upgrade = crate::ws::handshake::check(req, &app.config.allowed_origins)?;
    let response = crate::ws::handshake::switching_protocols(&upgrade);
    accounts::authenticate_token(app, upgrade.token, client, AfterToken::Upgrade(response))
}

/// The upgrade's account checked out: apply the duplicate-session policy and start the
/// session with the 101.
fn accept_upgrade(
    app: &App,
    user: User,
    token_expires_at: i64,
    response: Response,
) -> Result<Reply, ApiError> {
    if app.config.duplicate_sessions == DuplicateSessions::Reject && app.chat.is_online(user.id) {
        return Err(ApiError::new(
            ErrorCode::AlreadyConnected,
            "this user already has an open WebSocket",
        ));
    }
    let session = WsSession {
        user: SessionUser {
            id: user.id,
            username: user.username,
            display_name: user.display_name,
        },
        token_expires_at,
    };
    Ok(Reply::Upgraded(response, session))
}

fn route(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
    let method = req.method;
    match req.path {
        "/healthz" => {
            allow(method, &["GET", "HEAD"])?;
            let mut r = Response::json(200, &serde_json::json!({"status": "ok"}));
            r.omit_body = method == "HEAD";
            Ok(Reply::Now(r))
        }
        "/readyz" => {
            allow(method, &["GET", "HEAD"])?;
            Ok(Reply::Now(readiness(app, client)))
        }
        "/metrics" => {
            allow(method, &["GET"])?;
            metrics(app, client).map(Reply::Now)
        }
        "/register" => {
            allow(method, &["POST"])?;
            accounts::register(app, req, client)
        }
        "/login" => {
            allow(method, &["POST"])?;
            accounts::login(app, req, client)
        }
        "/refresh" => {
            allow(method, &["POST"])?;
            accounts::refresh(app, req, client)
        }
        "/me" => match method {
            "GET" => accounts::get_me(app, req, client),
            "PUT" => accounts::put_me(app, req, client),
            _ => Err(ApiError::method_not_allowed("GET, PUT")),
        },
        _ => {
            allow(method, &["GET", "HEAD"])?;
            static_file(app, req, client).map(Reply::Now)
        }
    }
}

/// `GET /readyz`: 200 while the database answers, 503 with the reason otherwise (a
/// load balancer sends no one here then). Liveness is `/healthz`.
fn readiness(app: &App, client: Client) -> Response {
    match app.store.readiness(client.now.instant) {
        Ok(()) => Response::json(200, &serde_json::json!({"status": "ready"})),
        Err(why) => Response::json(
            503,
            &serde_json::json!({
                "status": "unavailable",
                "reason": why.code(),
                "message": why.to_string(),
            }),
        )
        .header("retry-after", "1"),
    }
}

/// 405 with the Allow header unless the method is one of `methods`.
fn allow(method: &str, methods: &'static [&'static str]) -> Result<(), ApiError> {
    if methods.contains(&method) {
        return Ok(());
    }
    let allow = match methods {
        ["GET", "HEAD"] => "GET, HEAD",
        ["GET"] => "GET",
        ["POST"] => "POST",
        _ => "GET",
    };
    Err(ApiError::method_not_allowed(allow))
}

fn metrics(app: &App, client: Client) -> Result<Response, ApiError> {
    let allowed = match app.config.metrics {
        MetricsAccess::Public => true,
        MetricsAccess::Loopback => is_loopback(client.ip),
        MetricsAccess::Off => false,
    };
    if !allowed {
        return Err(ApiError::new(ErrorCode::NotFound, "no such resource"));
    }
    let text = app.metrics.render(
        crate::metrics::Gauges {
            open_connections: app.limits.open_connections(),
            open_websockets: app.chat.connection_count(),
            online_users: app.chat.online_count(),
            rooms: app.chat.room_count(),
            rate_limiter_keys: app.limits.tracked_keys(),
            password_hashes: app.passwords.operations(),
            storage_waiting: app.outbox.waiting() + app.metrics.http_waiting,
        },
        &app.store.stats(),
    );
    let mut r = Response::new(200);
    r.content_type = Some("text/plain; version=0.0.4; charset=utf-8");
    r.body = Body::Owned(text.into_bytes());
    Ok(r.header("cache-control", "no-store"))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn static_file(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such resource");
    let file = app
        .static_files
        .get(req.path, client.now.instant)
        .ok_or_else(not_found)?;
    let fresh = req
        .header_str("if-none-match")
        .is_some_and(|v| etag_matches(v, &file.etag));
    let mut r = Response::new(if fresh { 304 } else { 200 });
    r.content_type = Some(file.content_type);
    r.headers.push(("etag", file.etag.clone()));
    r.headers.push(("cache-control", "no-cache".to_string()));
    if !fresh {
        r.body = Body::Shared(file.body.clone());
        r.omit_body = req.method == "HEAD";
    }
    Ok(r)
}

#[cfg(test)]
mod tests;
