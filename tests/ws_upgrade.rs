//! The WebSocket upgrade: both ways of presenting the token, refusals (401, 400, 403),
//! and the three duplicate-session policies.

mod common;

use std::time::Duration;

use common::TestServer;
use common::ws::{self, Ended};
use serde_json::json;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn bearer_header_and_subprotocol_both_work() {
    let server = TestServer::start("");
    server.register("alice", "password-123");
    let token = server.login("alice", "password-123");

    let (mut a, welcome) = ws::connect(&server, &token);
    assert_eq!(welcome["user"]["username"], "alice");
    assert_eq!(welcome["rooms"], json!(["lobby"]));
    for key in [
        "max_message_bytes",
        "max_text_chars",
        "ws_rate",
        "ws_burst",
        "ws_ping_secs",
        "history_max",
        "max_rooms_per_connection",
        "max_subscriptions",
    ] {
        assert!(
            welcome["limits"][key].is_number(),
            "limits.{key}: {welcome}"
        );
    }
    assert!(a.response.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(a.ok(json!({"type":"ping"})), json!({}));

    let protocols = format!("chat.v1, bearer.{token}");
    let mut b = ws::try_connect(&server, &[("Sec-WebSocket-Protocol", &protocols)]).unwrap();
    assert_eq!(
        b.response.headers()["sec-websocket-protocol"],
        "chat.v1",
        "the token is not echoed back"
    );
    assert_eq!(b.recv()["type"], "welcome");
    assert_eq!(b.ok(json!({"type":"ping"})), json!({}));
}

#[test]
fn missing_or_bad_tokens_get_401_without_upgrade() {
    let server = TestServer::start_with_env("", &[("SECRET_KEY", common::TEST_SECRET)]);
    let user = server.register("alice", "password-123");
    let refused = ws::try_connect(&server, &[]).unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "unauthorized"));
    let refused = ws::try_connect(&server, &[("Authorization", "Bearer not.a.token")]).unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "unauthorized"));

    let now = common::unix_now();
    let id = user["id"].as_i64().unwrap().to_string();
    let claims = json!({"sub": id, "name": "alice", "iat": now - 100, "exp": now - 10, "jti": "x", "ver": 0});
    let expired = common::sign_hs256(&claims, common::TEST_SECRET.as_bytes());
    let refused =
        ws::try_connect(&server, &[("Authorization", &format!("Bearer {expired}"))]).unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "token_expired"));

    let mut claims = claims;
    claims["exp"] = json!(now + 100);
    let foreign = common::sign_hs256(&claims, b"some-other-secret-that-is-long-enough!!");
    let refused =
        ws::try_connect(&server, &[("Authorization", &format!("Bearer {foreign}"))]).unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, "unauthorized"));
    let refused = ws::try_connect(
        &server,
        &[("Sec-WebSocket-Protocol", "chat.v1, bearer.junk")],
    )
    .unwrap_err();
    assert_eq!(refused.status, 401);
}

#[test]
fn bad_handshakes_get_400() {
    let server = TestServer::start("");
    server.register("alice", "password-123");
    let token = server.login("alice", "password-123");
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (what, headers) in [
        (
            "no key",
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                .to_string(),
        ),
        (
            "bad key",
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n".to_string(),
        ),
        (
            "no version",
            format!("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"),
        ),
        (
            "version 8",
            format!(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n"
            ),
        ),
        (
            "no upgrade",
            format!(
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
            ),
        ),
    ] {
        let mut c = server.connect();
        c.send(format!("GET /ws HTTP/1.1\r\nHost: localhost\r\n{auth}{headers}\r\n").as_bytes());
        let resp = c.read_response();
        assert_eq!(resp.status, 400, "{what}");
        assert_eq!(resp.json()["error"], "bad_request", "{what}");
    }
    let mut c = server.connect();
    let resp = c.request(
        "POST",
        "/ws",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(resp.status, 405);
}

#[test]
fn foreign_origins_are_refused() {
    let server = TestServer::start("allowed_origins = https://app.example.com");
    server.register("alice", "password-123");
    let token = server.login("alice", "password-123");
    let auth = format!("Bearer {token}");
    let port = server.addr().port();

    let refused = ws::try_connect(
        &server,
        &[("Authorization", &auth), ("Origin", "https://evil.example")],
    )
    .unwrap_err();
    assert_eq!((refused.status, refused.code()), (403, "forbidden"));
    let plain = format!("http://localhost:{port}");
    let refused =
        ws::try_connect(&server, &[("Authorization", &auth), ("Origin", &plain)]).unwrap_err();
    assert_eq!(refused.status, 403, "http:// is another origin");

    let same = format!("https://localhost:{port}");
    assert!(ws::try_connect(&server, &[("Authorization", &auth), ("Origin", &same)]).is_ok());
    assert!(
        ws::try_connect(
            &server,
            &[
                ("Authorization", &auth),
                ("Origin", "https://app.example.com")
            ]
        )
        .is_ok()
    );
    // Without an Origin (not a browser) the token alone decides.
    assert!(ws::try_connect(&server, &[("Authorization", &auth)]).is_ok());
    // Two Origins (the first one allowed) are refused: no check may pick one.
    let refused = ws::try_connect(
        &server,
        &[
            ("Authorization", &auth),
            ("Origin", &same),
            ("Origin", "https://evil.example"),
        ],
    )
    .unwrap_err();
    assert_eq!((refused.status, refused.code()), (400, "bad_request"));
    let refused = ws::try_connect(
        &server,
        &[("Authorization", &auth), ("Authorization", "Bearer x")],
    )
    .unwrap_err();
    assert_eq!((refused.status, refused.code()), (400, "bad_request"));
}

#[test]
fn duplicate_sessions_allow() {
    let server = TestServer::start("duplicate_sessions = allow");
    let (mut a1, token) = ws::user(&server, "alice");
    let (mut a2, _) = ws::connect(&server, &token);
    assert_eq!(a1.ok(json!({"type":"ping"})), json!({}));
    assert_eq!(a2.ok(json!({"type":"ping"})), json!({}));
    assert_eq!(a1.ok(json!({"type":"users"}))["users"], json!(["alice"]));
}

#[test]
fn duplicate_sessions_reject() {
    let server = TestServer::start("duplicate_sessions = reject");
    let (mut a1, token) = ws::user(&server, "alice");
    let refused =
        ws::try_connect(&server, &[("Authorization", &format!("Bearer {token}"))]).unwrap_err();
    assert_eq!((refused.status, refused.code()), (409, "already_connected"));
    assert_eq!(
        a1.ok(json!({"type":"ping"})),
        json!({}),
        "the first is untouched"
    );
    a1.socket.close(None).unwrap();
    assert_eq!(
        a1.ended(Duration::from_secs(5)),
        Ended::Close(1000, String::new())
    );
    // Once the first has gone, a new session is allowed.
    assert!(common::wait_until(Duration::from_secs(5), || {
        ws::try_connect(&server, &[("Authorization", &format!("Bearer {token}"))]).is_ok()
    }));
}

#[test]
fn duplicate_sessions_replace() {
    let server = TestServer::start("duplicate_sessions = replace");
    let (mut b, _) = ws::user(&server, "bob");
    let (mut a1, token) = ws::user(&server, "alice");
    assert_eq!(b.next_of_type("presence")["user"], "alice");
    let (mut a2, _) = ws::connect(&server, &token);
    assert_eq!(
        a1.ended(Duration::from_secs(5)),
        Ended::Close(4001, "replaced".to_string())
    );
    assert_eq!(a2.ok(json!({"type":"ping"})), json!({}));
    // Bob saw alice neither leave nor join again.
    b.assert_nothing_pending();
}
