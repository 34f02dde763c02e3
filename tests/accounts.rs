//! The accounts API end to end: register, login, `/me`, password changes, `/refresh`,
//! tokens (HS256 only; expired, foreign-key, `alg: none`, revoked by a password change)
//! and closed registration.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Generous login limits for tests that make many attempts (the defaults are real).
const MANY_LOGINS: &str = "login_rate_per_ip = 100/s burst 100\npassword_hashes_per_sec = 100";

fn creds(username: &str, password: &str) -> Value {
    json!({"username": username, "password": password})
}

#[test]
fn register_creates_an_account() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let r = c.post_json("/register", &creds("alice", "alice-password"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_security_headers(&r);
    let user = r.json();
    assert_user(&user, "alice");
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));

    let second = c.register("bob.b-o_b", "bob-password");
    assert_user(&second, "bob.b-o_b");
    assert_ne!(second["id"], user["id"]);
}

#[test]
fn usernames_are_3_to_32_of_the_allowed_characters() {
    let server = TestServer::start(MANY_LOGINS);
    for ok in ["abc", &"x".repeat(32), "A.b-C_9", "123"] {
        server.register(ok, "good-password");
    }
    for bad in [
        "ab",
        "",
        &"y".repeat(33),
        "with space",
        "semi;colon",
        "slash/name",
        "üser",
        "at@sign",
    ] {
        let mut c = server.connect();
        let r = c.post_json("/register", &creds(bad, "good-password"));
        assert_error_and_close(&mut c, &r, 400, "invalid_username");
    }
    // Missing or mistyped fields are a bad request.
    for body in [
        json!({"username": "nopassword"}),
        json!({"password": "nousername"}),
        json!({"username": 12345, "password": "good-password"}),
        json!("alice:good-password"),
    ] {
        let mut c = server.connect();
        let r = c.post_json("/register", &body);
        assert_error_and_close(&mut c, &r, 400, "bad_request");
    }
}

#[test]
fn usernames_are_unique_ignoring_case() {
    let server = TestServer::start("");
    server.register("Alice", "alice-password");
    let mut c = server.connect();
    for taken in ["Alice", "alice", "ALICE", "aLiCe"] {
        let r = c.post_json("/register", &creds(taken, "other-password"));
        assert_error(&r, 409, "username_taken");
        assert!(!r.closes());
    }
}

#[test]
fn passwords_are_8_to_1024_bytes() {
    let server = TestServer::start(MANY_LOGINS);
    // Bytes, not characters: four two-byte letters are 8 bytes.
    for (i, ok) in ["12345678", "éééé", &"p".repeat(1024)].iter().enumerate() {
        server.register(&format!("okpw{i}"), ok);
        server.login(&format!("okpw{i}"), ok);
    }
    for (i, bad) in ["", "1234567", "ééé", &"p".repeat(1025)].iter().enumerate() {
        let mut c = server.connect();
        let r = c.post_json("/register", &creds(&format!("badpw{i}"), bad));
        assert_error_and_close(&mut c, &r, 400, "weak_password");
    }
}

#[test]
fn login_returns_a_signed_bearer_token() {
    let server = TestServer::start_with_env("jwt_ttl_secs = 1234", &[("SECRET_KEY", TEST_SECRET)]);
    let user = server.register("carol", "carol-password");
    let mut c = server.connect();
    let r = c.post_json("/login", &creds("carol", "carol-password"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_security_headers(&r);
    let body = r.json();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["expires_in", "token", "token_type", "user"]);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 1234);
    assert_user(&body["user"], "carol");
    assert_eq!(body["user"]["id"], user["id"]);

    let token = body["token"].as_str().unwrap();
    assert_eq!(token_header(token)["alg"], "HS256");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(TEST_SECRET.as_bytes()),
        &validation,
    )
    .expect("the token is signed with SECRET_KEY");
    let claims = data.claims;
    assert_eq!(claims["sub"], user["id"].to_string());
    assert_eq!(claims["name"], "carol");
    let iat = claims["iat"].as_i64().expect("iat");
    assert!((iat - unix_now()).abs() <= 60, "iat {iat}");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 1234));
    assert!(!claims["jti"].as_str().expect("jti").is_empty());
    assert!(claims["ver"].is_i64(), "ver: {claims}");

    let r = c.get_auth("/me", token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), body["user"]);
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_401() {
    let server = TestServer::start(MANY_LOGINS);
    server.register("dave", "dave-password");
    let mut c = server.connect();
    let mut bodies = Vec::new();
    for (user, pw) in [
        ("dave", "wrong-password"),
        ("nobody", "dave-password"),
        ("dave", ""),
        ("x", "not-a-valid-username"),
    ] {
        let r = c.post_json("/login", &creds(user, pw));
        assert_error(&r, 401, "invalid_credentials");
        assert!(!r.closes());
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "bodies differ");
    // The right password still works after the failures.
    let token = c.login("dave", "dave-password");
    assert_eq!(c.get_auth("/me", &token).status, 200);
}

#[test]
fn an_unknown_user_costs_the_same_password_hash_as_a_wrong_password() {
    // Counted, not timed: each login failure must run exactly one argon2id computation,
    // so the two cannot be told apart by how long they take.
    let server = TestServer::start(MANY_LOGINS);
    let mut c = server.connect();
    let hashes = |c: &mut Client| c.metric("chatd_password_hashes_total");
    assert_eq!(hashes(&mut c), 0);
    c.register("erin", "erin-password");
    assert_eq!(hashes(&mut c), 1, "a registration hashes once");
    for (user, pw) in [
        ("erin", "wrong-password"),
        ("nobody", "erin-password"),
        ("x", "not-a-valid-username"),
        ("erin", "erin-password"),
    ] {
        let before = hashes(&mut c);
        let r = c.post_json("/login", &creds(user, pw));
        assert!(r.status == 200 || r.status == 401, "{}", r.text());
        assert_eq!(hashes(&mut c), before + 1, "login as {user:?} / {pw:?}");
    }
}

#[test]
fn me_refuses_missing_malformed_and_forged_tokens() {
    let server = TestServer::start_with_env("", &[("SECRET_KEY", TEST_SECRET)]);
    let user = server.register("erin", "erin-password");
    let id = user["id"].as_i64().unwrap();
    let good = server.login("erin", "erin-password");
    let now = unix_now();
    let ver = token_claims(&good)["ver"].as_i64().unwrap();
    let fresh = claims_for(id, "erin", now, now + 600, ver);

    // A forged copy of valid claims signed with our key is accepted: the forging
    // helpers are right, so the refusals below are about what they change.
    let mut c = server.connect();
    assert_eq!(
        c.get_auth("/me", &sign_hs256(&fresh, TEST_SECRET.as_bytes()))
            .status,
        200
    );

    let mut tampered_parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut claims = token_claims(&good);
    claims["sub"] = json!((id + 1).to_string());
    tampered_parts[1] = b64url(claims.to_string().as_bytes());
    let tampered = tampered_parts.join(".");
    let foreign = sign_hs256(&fresh, b"another-secret-that-is-long-enough-32+");
    let none = alg_none_token(&fresh);
    let hs512 = sign_with(
        jsonwebtoken::Algorithm::HS512,
        &fresh,
        TEST_SECRET.as_bytes(),
    );
    let unknown_user = sign_hs256(
        &claims_for(id + 1000, "ghost", now, now + 600, 0),
        TEST_SECRET.as_bytes(),
    );
    let no_signature = {
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[2] = "";
        parts.join(".")
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        (
            "basic scheme",
            Some("Basic ZXJpbjplcmluLXBhc3N3b3Jk".into()),
        ),
        ("empty bearer", Some("Bearer ".into())),
        ("bare token", Some(good.clone())),
        ("garbage", Some(bearer("garbage"))),
        ("three garbage parts", Some(bearer("a.b.c"))),
        ("tampered payload", Some(bearer(&tampered))),
        ("foreign key", Some(bearer(&foreign))),
        ("alg none", Some(bearer(&none))),
        ("HS512", Some(bearer(&hs512))),
        ("unknown user", Some(bearer(&unknown_user))),
        ("signature removed", Some(bearer(&no_signature))),
    ];
    for (what, auth) in cases {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let r = c.request("GET", "/me", &headers, b"");
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_error(&r, 401, "unauthorized");
        let www = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{what}"));
        assert!(www.starts_with("Bearer"), "{what}: {www}");
        assert!(!r.closes(), "{what}: 401 must not close");
    }

    // Expired but correctly signed: its own code.
    let expired = sign_hs256(
        &claims_for(id, "erin", now - 7200, now - 3600, ver),
        TEST_SECRET.as_bytes(),
    );
    let r = c.get_auth("/me", &expired);
    assert_error(&r, 401, "token_expired");
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer"), "{www}");
    assert!(www.contains("invalid_token"), "{www}");

    // The real token still works on the same connection.
    let r = c.get_auth("/me", &good);
    assert_eq!(r.status, 200);
    assert_user(&r.json(), "erin");
}

#[test]
fn tokens_expire_for_real() {
    let server = TestServer::start("jwt_ttl_secs = 3");
    server.register("frank", "frank-password");
    let mut c = server.connect();
    let r = c.post_json("/login", &creds("frank", "frank-password"));
    assert_eq!(r.json()["expires_in"], 3);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let exp = token_claims(&token)["exp"].as_i64().unwrap();
    // Each answer is checked against the server's own clock (its Date header): valid
    // strictly before `exp`, token_expired from `exp` on.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut accepted = 0;
    loop {
        let r = c.get_auth("/me", &token);
        let date = parse_http_date(r.header("date").expect("Date")).expect("HTTP date");
        if r.status == 200 {
            assert!(date < exp, "accepted at {date}, expired at {exp}");
            accepted += 1;
        } else {
            assert_error(&r, 401, "token_expired");
            assert!(date >= exp, "refused at {date}, before expiry at {exp}");
            break;
        }
        assert!(Instant::now() < deadline, "the token never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(accepted > 0, "the token was never accepted");
}

#[test]
fn put_me_changes_the_display_name() {
    let server = TestServer::start("");
    server.register("gina", "gina-password");
    let token = server.login("gina", "gina-password");
    let mut c = server.connect();
    let r = c.send_json(
        "PUT",
        "/me",
        &json!({"display_name": "Gina Ünïcode 名前"}),
        Some(&token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_user(&r.json(), "gina");
    assert_eq!(r.json()["display_name"], "Gina Ünïcode 名前");
    let r = c.get_auth("/me", &token);
    assert_eq!(r.json()["display_name"], "Gina Ünïcode 名前");
    // An empty change is fine and changes nothing.
    let r = c.send_json("PUT", "/me", &json!({}), Some(&token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["display_name"], "Gina Ünïcode 名前");

    for bad in [
        json!(""),
        json!("x".repeat(65)),
        json!("tab\there"),
        json!("gina\u{200B}"),
        json!("\u{202E}anig"),
        json!(42),
    ] {
        let mut c = server.connect();
        let r = c.send_json("PUT", "/me", &json!({"display_name": bad}), Some(&token));
        assert_error_and_close(&mut c, &r, 400, "bad_request");
    }
    let mut c = server.connect();
    let r = c.send_json("PUT", "/me", &json!({"display_name": "nope"}), None);
    assert_error(&r, 401, "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
}

#[test]
fn password_change_needs_the_right_current_password() {
    let server = TestServer::start(MANY_LOGINS);
    server.register("hank", "hank-password");
    let token = server.login("hank", "hank-password");

    let mut c = server.connect();
    let r = c.send_json(
        "PUT",
        "/me",
        &json!({"new_password": "new-hank-password"}),
        Some(&token),
    );
    assert_error_and_close(&mut c, &r, 400, "bad_request");

    let mut c = server.connect();
    let r = c.send_json(
        "PUT",
        "/me",
        &json!({"current_password": "wrong-password", "new_password": "new-hank-password"}),
        Some(&token),
    );
    assert_error(&r, 403, "invalid_credentials");
    assert!(!r.closes(), "403 must not close");
    let r = c.send_json(
        "PUT",
        "/me",
        &json!({"current_password": "hank-password", "new_password": "short"}),
        Some(&token),
    );
    assert_error_and_close(&mut c, &r, 400, "weak_password");

    // None of that changed anything.
    let mut c = server.connect();
    assert_eq!(c.get_auth("/me", &token).status, 200);
    server.login("hank", "hank-password");
}

#[test]
fn a_password_change_revokes_older_tokens_even_in_the_same_second() {
    let server = TestServer::start_with_env(MANY_LOGINS, &[("SECRET_KEY", TEST_SECRET)]);
    let user = server.register("ivy", "ivy-password-0");
    let id = user["id"].as_i64().unwrap();
    let mut c = server.connect();
    let old_token = c.login("ivy", "ivy-password-0");
    let old_ver = token_claims(&old_token)["ver"].as_i64().unwrap();
    let r = c.send_json(
        "PUT",
        "/me",
        &json!({"current_password": "ivy-password-0", "new_password": "ivy-password-1"}),
        Some(&old_token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_user(&r.json(), "ivy");
    let changed_at = parse_http_date(r.header("date").expect("Date")).expect("HTTP date");

    // The old token is dead for /me and /refresh.
    let r = c.get_auth("/me", &old_token);
    assert_error(&r, 401, "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = c.send_json("POST", "/refresh", &json!({}), Some(&old_token));
    assert_error(&r, 401, "unauthorized");

    // So is one of the old password issued in the very second of the change, or even
    // after it (signed with the server's key, as a login racing the change would be):
    // revocation goes by the password version, so no second can slip through, whatever
    // the clock says. Logging in and changing the password within one real second
    // would prove the same only on a machine fast enough to do it.
    for iat in [changed_at - 1, changed_at, changed_at + 1] {
        let forged = sign_hs256(
            &claims_for(id, "ivy", iat, iat + 60, old_ver),
            TEST_SECRET.as_bytes(),
        );
        let r = c.get_auth("/me", &forged);
        assert_error(&r, 401, "unauthorized");
    }

    // The old password is gone; the new one works, and so does a token of the new
    // version issued in the second of the change.
    let r = c.post_json("/login", &creds("ivy", "ivy-password-0"));
    assert_error(&r, 401, "invalid_credentials");
    let token = c.login("ivy", "ivy-password-1");
    assert_eq!(c.get_auth("/me", &token).status, 200);
    let new_ver = token_claims(&token)["ver"].as_i64().unwrap();
    assert_ne!(new_ver, old_ver);
    let same_second = sign_hs256(
        &claims_for(id, "ivy", changed_at, changed_at + 60, new_ver),
        TEST_SECRET.as_bytes(),
    );
    assert_eq!(c.get_auth("/me", &same_second).status, 200);
}

#[test]
fn refresh_issues_a_new_token() {
    let server = TestServer::start_with_env("", &[("SECRET_KEY", TEST_SECRET)]);
    let user = server.register("judy", "judy-password");
    let token = server.login("judy", "judy-password");
    let mut c = server.connect();
    let auth = format!("Bearer {token}");
    // No body at all is fine: the token is the whole request.
    let r = c.request("POST", "/refresh", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_user(&body["user"], "judy");
    assert_eq!(body["user"]["id"], user["id"]);
    let fresh = body["token"].as_str().unwrap();
    assert_ne!(fresh, token);
    assert_ne!(token_claims(fresh)["jti"], token_claims(&token)["jti"]);
    assert_eq!(c.get_auth("/me", fresh).status, 200);

    let r = c.request("POST", "/refresh", &[], b"");
    assert_error(&r, 401, "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));

    let now = unix_now();
    let id = user["id"].as_i64().unwrap();
    let expired = sign_hs256(
        &claims_for(id, "judy", now - 100, now - 10, 0),
        TEST_SECRET.as_bytes(),
    );
    let r = c.send_json("POST", "/refresh", &json!({}), Some(&expired));
    assert_error(&r, 401, "token_expired");
    let r = c.send_json(
        "POST",
        "/refresh",
        &json!({}),
        Some(&alg_none_token(&claims_for(id, "judy", now, now + 60, 0))),
    );
    assert_error(&r, 401, "unauthorized");
}

#[test]
fn registration_can_be_closed() {
    let mut server = TestServer::start("");
    server.register("early", "early-password");
    server.restart_with("registration = closed");
    let mut c = server.connect();
    let r = c.post_json("/register", &creds("late", "late-password"));
    assert_error(&r, 403, "registration_closed");
    assert!(!r.closes());
    // Existing accounts still log in.
    let token = c.login("early", "early-password");
    assert_eq!(c.get_auth("/me", &token).status, 200);

    // The same through the environment.
    let server = TestServer::start_with_env("", &[("CHATD_REGISTRATION", "closed")]);
    let r = server
        .connect()
        .post_json("/register", &creds("late", "late-password"));
    assert_error(&r, 403, "registration_closed");
}
