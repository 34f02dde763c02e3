//! The HTTP request parser and the router: bytes in, responses or a refusal out.
//!
//! Input: one byte of flags (client address loopback or not, shutting down or not),
//! then a byte stream parsed as pipelined requests, each routed through the real
//! `api::handle` against one app built once per process: an in-memory database with
//! one account, a static directory in a temporary folder, argon2 at its smallest
//! parameters and no HTTP rate limit to speak of, so an execution stays fast.
//! Checked: a complete request written out again parses to the same request; refusals
//! carry one of the statuses that close the connection; every response is
//! well-formed HTTP whose length matches its body, and error bodies name their code.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chatd::api::{self, Client};
use chatd::app::App;
use chatd::auth::Passwords;
use chatd::config::{Config, Rate};
use chatd::http::{MAX_HEADERS, ParseStatus, Request, RequestLimits, Response, parse_request};
use chatd::store::{Op, SqliteStore, Storage, Ticket};
use chatd::time::Now;

/// The JWT secret of the fixture app (the seeds' tokens are signed with it).
pub const SECRET: &[u8] = b"chatd fuzzing secret, not a real one!";

/// Most requests taken from one input: pipelining more adds nothing new.
const MAX_REQUESTS: usize = 8;

const LIMITS: RequestLimits = RequestLimits {
    max_header_bytes: 8192,
    max_body_bytes: 65_536,
};

/// The app and the directory its static files live in (removed with it).
struct Fixture {
    app: App,
    _public: tempfile::TempDir,
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn fixture() -> Fixture {
    let public = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(public.path().join("index.html"), "<p>chatd</p>").expect("index.html");
    std::fs::create_dir(public.path().join("js")).expect("js/");
    std::fs::write(public.path().join("js/app.js"), "export {};").expect("app.js");
    let config = Config {
        public_dir: public.path().to_path_buf(),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        argon2_parallelism: 1,
        http_rate_per_ip: Rate {
            count: 1_000_000,
            per: Duration::from_secs(1),
            burst: 1_000_000,
        },
        allowed_origins: vec!["https://chat.example".to_string()],
        ..Config::default()
    };
    let mut store = SqliteStore::open_in_memory().expect("an in-memory database");
    let mut passwords = Passwords::new(8, 1, 1).expect("argon2 parameters");
    let hash = passwords.hash("correct horse").expect("a hash");
    // id 1, password version 0: the account the seeds' tokens name.
    store.submit(
        Ticket(0),
        Op::CreateUser {
            username: "alice".into(),
            password_hash: hash,
            created_at: 0,
        },
    );
    store.flush(std::time::Instant::now());
    store.take_answers(&mut Vec::new());
    let app = App::new(config, Box::new(store), Vec::new(), SECRET).expect("the fixture app");
    Fixture {
        app,
        _public: public,
    }
}

pub fn check(data: &[u8]) {
    let [flags, stream @ ..] = data else {
        return;
    };
    let client = Client {
        ip: if flags & 1 == 0 {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
        },
        now: Now::read(),
        shutting_down: flags & 2 != 0,
    };
    FIXTURE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let fixture = cell.get_or_insert_with(fixture);
        serve(&mut fixture.app, stream, client);
    });
}

/// Parses and answers requests from the front of `stream` as a connection would.
fn serve(app: &mut App, stream: &[u8], client: Client) {
    let mut offset = 0;
    for _ in 0..MAX_REQUESTS {
        let rest = &stream[offset..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(rest, &mut headers, LIMITS) {
            Ok(ParseStatus::Partial { .. }) => return,
            Err(e) => {
                let status = e.code.status();
                assert!(
                    [400, 413, 431, 501].contains(&status),
                    "a parse refusal with status {status}"
                );
                let response = Response::error(&e);
                assert!(response.close, "a parse refusal keeps the connection");
                check_response(&response, false);
                return;
            }
            Ok(ParseStatus::Complete(parsed)) => {
                assert!(
                    parsed.len > 0 && parsed.len <= rest.len(),
                    "a request of {} bytes from {}",
                    parsed.len,
                    rest.len()
                );
                check_round_trip(&parsed.request);
                let step = api::handle(app, &parsed.request, client);
                let handled = api::complete(app, step, client);
                check_response(&handled.response, parsed.request.method == "HEAD");
                if handled.upgrade.is_some() {
                    assert_eq!(handled.response.status, 101, "an upgrade without 101");
                }
                app.effects.clear();
                offset += parsed.len;
            }
        }
    }
}

/// The request as a client would send it again: request line, headers, body.
pub fn serialise(req: &Request<'_, '_>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_bytes());
    if let Some(query) = req.query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(format!(" HTTP/1.{}\r\n", req.minor_version).as_bytes());
    for h in req.headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
    out
}

/// What a request says, owned, for comparing two parses.
type Summary = (
    String,
    String,
    Option<String>,
    u8,
    Vec<(String, Vec<u8>)>,
    Vec<u8>,
);

fn summary(req: &Request<'_, '_>) -> Summary {
    (
        req.method.to_string(),
        req.path.to_string(),
        req.query.map(str::to_string),
        req.minor_version,
        req.headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        req.body.to_vec(),
    )
}

fn check_round_trip(req: &Request<'_, '_>) {
    let again = serialise(req);
    // The rewritten head may be longer than the original (one space after each colon).
    let limits = RequestLimits {
        max_header_bytes: again.len(),
        max_body_bytes: LIMITS.max_body_bytes,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_request(&again, &mut headers, limits) {
        Ok(ParseStatus::Complete(parsed)) => {
            assert_eq!(
                parsed.len,
                again.len(),
                "{:?}",
                String::from_utf8_lossy(&again)
            );
            assert_eq!(summary(&parsed.request), summary(req), "written out again");
        }
        other => panic!(
            "{:?} written out again does not parse: {other:?}",
            summary(req)
        ),
    }
}

/// The response on the wire parses as HTTP/1.1 with its status, a Content-Length equal
/// to the body, and, for an error with a body, `{"error","message"}`.
fn check_response(response: &Response, head: bool) {
    assert!(
        (100..=599).contains(&response.status),
        "status {}",
        response.status
    );
    let mut out = Vec::new();
    response.write_head("Thu, 01 Jan 1970 00:00:00 GMT", &mut out);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("response head does not parse: {other:?}"),
    };
    assert_eq!(head_len, out.len(), "bytes after the response head");
    assert_eq!(parsed.code, Some(response.status));
    if response.status != 101 && response.status != 304 {
        let length = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.parse::<usize>().ok());
        assert_eq!(length, Some(response.body.len()), "content-length");
    }
    if head {
        assert!(!response.sends_body(), "a HEAD answer with a body");
    }
    let is_json = response
        .content_type
        .is_some_and(|ct| ct.starts_with("application/json"));
    if response.status >= 400 && is_json {
        let body = body_bytes(response);
        let value: serde_json::Value =
            serde_json::from_slice(&body).expect("an error body is JSON");
        let code = value["error"].as_str().expect("an error code");
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "error code {code:?}"
        );
        assert!(value["message"].is_string(), "an error message");
    }
}

fn body_bytes(response: &Response) -> Vec<u8> {
    match &response.body {
        chatd::http::Body::Owned(bytes) => bytes.clone(),
        chatd::http::Body::Shared(bytes) => bytes.to_vec(),
        chatd::http::Body::Empty => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_written_out_again_is_the_same_request() {
        let raw = b"POST /login?x=1 HTTP/1.1\r\nHost:h\r\nContent-Length:  2\r\n\r\nab";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(ParseStatus::Complete(parsed)) = parse_request(raw, &mut headers, LIMITS) else {
            panic!("does not parse");
        };
        assert_eq!(
            serialise(&parsed.request),
            b"POST /login?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
        );
        check_round_trip(&parsed.request);
    }

    /// The seeds' token names the fixture's account, so they reach the authenticated
    /// handlers and the upgrade rather than stopping at 401.
    #[test]
    fn the_seed_token_is_accepted() {
        for (seed, status) in [("me", 200), ("ws", 101)] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/http_request/");
            let data = std::fs::read(format!("{path}{seed}")).expect("the seed");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Ok(ParseStatus::Complete(parsed)) = parse_request(&data[1..], &mut headers, LIMITS)
            else {
                panic!("{seed} does not parse");
            };
            let client = Client {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                now: Now::read(),
                shutting_down: false,
            };
            let got = FIXTURE.with(|cell| {
                let mut cell = cell.borrow_mut();
                let fixture = cell.get_or_insert_with(fixture);
                let step = api::handle(&mut fixture.app, &parsed.request, client);
                api::complete(&mut fixture.app, step, client)
                    .response
                    .status
            });
            assert_eq!(got, status, "{seed}");
        }
    }

    #[test]
    fn routed_requests_pass_the_checks() {
        check(b"\0GET /healthz HTTP/1.1\r\nHost: h\r\n\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
        check(b"\x01GET /metrics HTTP/1.1\r\nHost: h\r\n\r\nGET /me HTTP/1.0\r\n\r\n");
    }
}
