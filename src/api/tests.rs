//! Routing tests without sockets: requests as bytes in, responses as values out.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::*;
use crate::app::Effect;
use crate::chat::ConnId;
use crate::config::Config;
use crate::http::{MAX_HEADERS, ParseStatus, RequestLimits, parse_request};
use crate::store::memory::MemoryStore;
use crate::store::{Failure, NotReady, SqliteStore};

const SECRET: &[u8] = b"an api test secret of at least 32 bytes";

fn app(conf: &str) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    std::fs::write(dir.path().join("public/index.html"), "<p>hi</p>").unwrap();
    let config = Config::parse(conf, "t.conf".as_ref(), dir.path(), Vec::new()).unwrap();
    let store = Box::new(SqliteStore::open_in_memory().unwrap());
    let app = App::new(config, store, Vec::new(), SECRET).unwrap();
    (app, dir)
}

/// An app over the in-memory store, set up by `store`.
fn app_over(store: MemoryStore) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("", "t.conf".as_ref(), dir.path(), Vec::new()).unwrap();
    let app = App::new(config, Box::new(store), Vec::new(), SECRET).unwrap();
    (app, dir)
}

fn client(ip: &str) -> Client {
    Client {
        ip: ip.parse::<IpAddr>().unwrap(),
        now: Now::read(),
        shutting_down: false,
    }
}

/// Sends a request from loopback and returns (status, headers, JSON body or Null).
fn call(app: &mut App, raw: &str) -> (u16, Vec<(&'static str, String)>, Value) {
    call_from(app, raw, "127.0.0.1").0
}

type Answer = (u16, Vec<(&'static str, String)>, Value);

fn call_from(app: &mut App, raw: &str, ip: &str) -> (Answer, bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let limits = RequestLimits {
        max_header_bytes: 8192,
        max_body_bytes: 65536,
    };
    let ParseStatus::Complete(parsed) =
        parse_request(raw.as_bytes(), &mut headers, limits).unwrap()
    else {
        panic!("incomplete request");
    };
    let client = client(ip);
    let step = handle(app, &parsed.request, client);
    let handled = complete(app, step, client);
    let r = handled.response;
    let body = match (&r.body, r.omit_body) {
        (Body::Owned(b), false) => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    ((r.status, r.headers, body), handled.upgrade.is_some())
}

fn post(path: &str, body: &Value, token: Option<&str>) -> String {
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: h\r\n{auth}\r\n")
}

fn login(app: &mut App, name: &str) -> String {
    let creds = json!({"username": name, "password": "password-123"});
    assert_eq!(call(app, &post("/register", &creds, None)).0, 201);
    let (status, _, body) = call(app, &post("/login", &creds, None));
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

#[test]
fn health_and_method_rules() {
    let (mut app, _dir) = app("");
    let (status, _, body) = call(&mut app, &get("/healthz", None));
    assert_eq!((status, body), (200, json!({"status":"ok"})));
    let (status, headers, body) = call(&mut app, "DELETE /healthz HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status, 405);
    assert_eq!(body["error"], "method_not_allowed");
    assert!(headers.contains(&("allow", "GET, HEAD".to_string())));
    let (status, headers, _) = call(&mut app, &get("/login", None));
    assert_eq!(status, 405);
    assert!(headers.contains(&("allow", "POST".to_string())));
    let (status, _, body) = call(&mut app, "HEAD /nothing HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(
        (status, body),
        (404, Value::Null),
        "HEAD errors carry no body"
    );
}

#[test]
fn account_flow_and_token_revocation() {
    let (mut app, _dir) = app("");
    let token = login(&mut app, "alice");
    let (status, _, me) = call(&mut app, &get("/me", Some(&token)));
    assert_eq!(status, 200);
    assert_eq!(me["username"], "alice");
    let (status, _, refreshed) = call(&mut app, &post("/refresh", &json!({}), Some(&token)));
    assert_eq!(status, 200);
    assert_eq!(refreshed["token_type"], "Bearer");

    let change = json!({"current_password":"password-123","new_password":"password-456"});
    let raw = post("/me", &change, Some(&token)).replacen("POST", "PUT", 1);
    assert_eq!(call(&mut app, &raw).0, 200);
    assert_eq!(
        app.effects,
        vec![Effect::CredentialsChanged(me["id"].as_i64().unwrap())]
    );
    for old in [&token, refreshed["token"].as_str().unwrap()] {
        let (status, _, body) = call(&mut app, &get("/me", Some(old)));
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized"))
        );
    }
}

#[test]
fn content_type_and_registration_closed() {
    let (mut app, _dir) = app("");
    let raw = "POST /register HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}";
    let (status, _, body) = call(&mut app, raw);
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let raw = "POST /register HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n[\"alice\",\"password-123\"]";
    let (status, _, body) = call(&mut app, raw);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "arrays are not objects"
    );
    let (mut closed, _dir2) = self::app("registration = closed");
    let creds = json!({"username": "alice", "password": "password-123"});
    let (status, _, body) = call(&mut closed, &post("/register", &creds, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("registration_closed"))
    );
}

#[test]
fn metrics_are_loopback_only_by_default() {
    let (mut app, _dir) = app("");
    assert_eq!(
        call_from(&mut app, &get("/metrics", None), "127.0.0.1").0.0,
        200
    );
    assert_eq!(call_from(&mut app, &get("/metrics", None), "::1").0.0, 200);
    assert_eq!(
        call_from(&mut app, &get("/metrics", None), "10.1.2.3").0.0,
        404
    );
    let (mut public, _dir2) = self::app("metrics = public");
    assert_eq!(
        call_from(&mut public, &get("/metrics", None), "10.1.2.3")
            .0
            .0,
        200
    );
}

#[test]
fn websocket_upgrade_decisions() {
    let (mut app, _dir) = app("duplicate_sessions = reject");
    let token = login(&mut app, "alice");
    let upgrade = |token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
        )
    };
    let ((status, _, body), upgraded) = call_from(&mut app, &upgrade(None), "127.0.0.1");
    assert_eq!(
        (status, body["error"].as_str(), upgraded),
        (401, Some("unauthorized"), false)
    );
    let ((status, headers, _), upgraded) = call_from(&mut app, &upgrade(Some(&token)), "127.0.0.1");
    assert_eq!((status, upgraded), (101, true));
    assert!(headers.contains(&(
        "sec-websocket-accept",
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
    )));

    // Once the user is online, `reject` refuses a second session.
    let user = crate::chat::SessionUser {
        id: 1,
        username: "alice".into(),
        display_name: "alice".into(),
    };
    app.chat.connect(ConnId(1), &user, false, &mut Vec::new());
    let ((status, _, body), upgraded) = call_from(&mut app, &upgrade(Some(&token)), "127.0.0.1");
    assert_eq!(
        (status, body["error"].as_str(), upgraded),
        (409, Some("already_connected"), false)
    );
}

#[test]
fn readiness_follows_the_database_and_liveness_does_not() {
    let (mut app, _dir) = app("");
    let (status, _, body) = call(&mut app, &get("/readyz", None));
    assert_eq!((status, body), (200, json!({"status":"ready"})));
    let mut store = MemoryStore::default();
    store.not_ready = Some(NotReady::Stalled { waiting_ms: 5200 });
    let (mut app, _dir) = app_over(store);
    let (status, headers, body) = call(&mut app, &get("/readyz", None));
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["reason"], "database_stalled");
    assert_eq!(
        body["message"],
        "the database has not answered a request for 5200 ms"
    );
    assert!(headers.contains(&("retry-after", "1".to_string())));
    assert_eq!(call(&mut app, &get("/healthz", None)).0, 200);
    let (status, _, _) = call(&mut app, "POST /readyz HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status, 405);
}

#[test]
fn a_database_that_does_not_answer_gives_503_and_a_failed_write_500() {
    let creds = json!({"username": "alice", "password": "password-123"});
    let mut store = MemoryStore::default();
    store.fail_reads = Some(Failure::Unavailable);
    let (mut app, _dir) = app_over(store);
    let (status, _, body) = call(&mut app, &post("/login", &creds, None));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    let (status, _, body) = call(&mut app, &post("/register", &creds, None));
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));

    let mut store = MemoryStore::default();
    store.fail_writes = Some(Failure::Failed);
    let (mut app, _dir) = app_over(store);
    let (status, _, body) = call(&mut app, &post("/register", &creds, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("internal_error"))
    );
}
