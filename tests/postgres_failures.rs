//! chatd on PostgreSQL when things fail, end to end: a real PostgreSQL started by the
//! test (tests/common/postgres.rs) frozen with SIGSTOP, stopped with `pg_ctl stop -m
//! immediate` and started again, served over TLS with certificates made here, or set up
//! to refuse chatd; chatd's own binary on the other side.
//!
//! The password of the database never appears in what chatd writes: every test that
//! gives one checks chatd's log (and `/metrics` where chatd runs) for it.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::{PgAuth, PgOptions, PgServer};
use common::{TestServer, run_expecting_exit, wait_until, ws};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Starting things, freezing them, asking them
// ---------------------------------------------------------------------------------------

fn postgres(auth: PgAuth) -> Option<PgServer> {
    PgServer::start(PgOptions {
        auth,
        ..PgOptions::default()
    })
}

/// chatd on `pg` with these extra configuration lines, the password in
/// CHATD_DATABASE_PASSWORD.
fn chatd_on(pg: &PgServer, extra: &str) -> TestServer {
    let conf = format!("database = {}\n{extra}", pg.url());
    TestServer::start_with_env(&conf, &[("CHATD_DATABASE_PASSWORD", pg.password())])
}

/// A configuration chatd would start with, on this database, plus `extra` lines.
fn startup_conf(url: &str, extra: &str) -> String {
    format!("port = 0\npublic_dir = public\ndb_path = chatd.db\ndatabase = {url}\n{extra}\n")
}

/// Asserts that `password` appears nowhere in chatd's log, `/metrics` or `/readyz`.
fn assert_password_not_shown(server: &TestServer, password: &str) {
    assert!(
        !server.log().contains(password),
        "the database password is in chatd's log"
    );
    for path in ["/metrics", "/readyz"] {
        let text = server.connect().get(path).text();
        assert!(
            !text.contains(password),
            "the database password is in {path}"
        );
    }
}

/// Runs chatd expecting a startup failure: its stderr, after checking that it exited
/// with 1 and never wrote the password.
fn refused_at_startup(conf: &str, password: &str) -> String {
    let (status, stderr) = run_expecting_exit(conf, &[("CHATD_DATABASE_PASSWORD", password)]);
    assert_eq!(status.code(), Some(1), "exit status {status:?}: {stderr}");
    assert!(
        !stderr.contains(password),
        "the database password is in chatd's stderr: {stderr}"
    );
    stderr
}

/// The postmaster and every process it started (backends, checkpointer, walwriter...).
fn cluster_pids(pg: &PgServer) -> Vec<i32> {
    let postmaster = pg.pid().expect("postgres runs") as i32;
    let mut pids = vec![postmaster];
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name (field 2) may hold spaces: the parent pid is the second
        // field after its closing parenthesis.
        let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after_name.split_whitespace().nth(1);
        if ppid.and_then(|p| p.parse::<i32>().ok()) == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill only sends a signal to a process this test started.
        unsafe { libc::kill(pid, signal) };
    }
}

/// PostgreSQL frozen with SIGSTOP, every process of it; SIGCONT on drop, so that a
/// failing test leaves nothing stopped.
struct Frozen {
    pids: Vec<i32>,
    since: Instant,
}

impl Frozen {
    fn new(pg: &PgServer) -> Frozen {
        let pids = cluster_pids(pg);
        assert!(pids.len() > 1, "no PostgreSQL backends to freeze");
        signal_all(&pids, libc::SIGSTOP);
        Frozen {
            pids,
            since: Instant::now(),
        }
    }

    /// SIGCONT; returns how long it was frozen.
    fn thaw(self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_all(&self.pids, libc::SIGCONT);
    }
}

/// The JSON body of `GET /readyz` and its status.
fn readyz(server: &TestServer) -> (u16, Value) {
    let r = server.connect().get("/readyz");
    (r.status, r.json())
}

/// Polls `GET /readyz` on one kept-alive connection (within the request rates) every
/// 50 ms until `until` holds for its status and body; the last answer, if it held.
fn poll_readyz(
    server: &TestServer,
    timeout: Duration,
    until: impl Fn(u16, &Value) -> bool,
) -> Option<(u16, Value)> {
    let mut c = server.connect();
    let deadline = Instant::now() + timeout;
    loop {
        let r = c.get("/readyz");
        let body = r.json();
        if until(r.status, &body) {
            return Some((r.status, body));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `/readyz` until it answers 200, asserting it does within 10 s.
fn wait_ready(server: &TestServer) {
    assert!(
        poll_readyz(server, Duration::from_secs(10), |status, _| status == 200).is_some(),
        "/readyz is not ready: {:?}",
        readyz(server)
    );
}

/// A WebSocket ping frame answered by its pong: how long that took.
fn ws_ping(ws: &mut ws::Ws) -> Duration {
    use tungstenite::Message;
    let payload = b"liveness".to_vec();
    let start = Instant::now();
    ws.socket
        .send(Message::Ping(payload.clone().into()))
        .expect("send ping");
    loop {
        match ws.socket.read().expect("read pong") {
            Message::Pong(p) if p.as_ref() == payload.as_slice() => return start.elapsed(),
            Message::Pong(_) => {}
            other => panic!("unexpected frame while waiting for a pong: {other:?}"),
        }
    }
}

/// The worst latency of each kind of request that needs no database, over `rounds`
/// rounds: a new TLS connection with GET /healthz, a static file on it, a WebSocket
/// ping frame, and chat between `bob` and `dave`, both in room `dev` (ping, rooms,
/// users, dave leaving and joining again with bob seeing both presence events).
fn liveness(
    server: &TestServer,
    bob: &mut ws::Ws,
    dave: &mut ws::Ws,
    rounds: usize,
) -> Vec<(&'static str, Duration)> {
    let mut worst: HashMap<&'static str, Duration> = HashMap::new();
    let mut note = |what: &'static str, took: Duration| {
        let entry = worst.entry(what).or_default();
        *entry = (*entry).max(took);
    };
    for _ in 0..rounds {
        let start = Instant::now();
        let mut c = server.connect();
        let r = c.get("/healthz");
        assert_eq!(r.status, 200);
        note("tls handshake + /healthz", start.elapsed());
        let start = Instant::now();
        let r = c.get("/index.html");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), common::INDEX_HTML);
        note("static file", start.elapsed());
        note("websocket ping frame", ws_ping(bob));
        let start = Instant::now();
        assert_eq!(bob.request(json!({"type":"ping"}))["ok"], true);
        note("chat ping", start.elapsed());
        let start = Instant::now();
        let rooms = bob.ok(json!({"type":"rooms"}));
        assert!(rooms["rooms"].to_string().contains("dev"), "{rooms}");
        note("chat rooms", start.elapsed());
        let start = Instant::now();
        let users = bob.ok(json!({"type":"users"}));
        assert!(users["users"].to_string().contains("dave"), "{users}");
        note("chat users", start.elapsed());
        let start = Instant::now();
        dave.ok(json!({"type":"leave","room":"dev"}));
        note("chat leave", start.elapsed());
        let event = bob.next_of_type("presence");
        assert_eq!(
            (&event["user"], &event["event"]),
            (&json!("dave"), &json!("leave"))
        );
        note("presence event", start.elapsed());
        let start = Instant::now();
        dave.ok(json!({"type":"join","room":"dev"}));
        note("chat join", start.elapsed());
        let event = bob.next_of_type("presence");
        assert_eq!(
            (&event["user"], &event["event"]),
            (&json!("dave"), &json!("join"))
        );
        note("presence event", start.elapsed());
    }
    let mut worst: Vec<_> = worst.into_iter().collect();
    worst.sort();
    worst
}

/// The longest a request that needs no database may take while PostgreSQL is frozen.
/// The loop answers them in a few milliseconds; one that waited for the database would
/// take the freeze or the database timeout, a second or more.
const LIVENESS_BOUND: Duration = Duration::from_millis(100);

fn assert_live(samples: &[(&'static str, Duration)]) {
    for (what, worst) in samples {
        eprintln!(
            "while PostgreSQL is frozen: {what} answered within {:.1} ms",
            worst.as_secs_f64() * 1000.0,
        );
    }
    for (what, worst) in samples {
        assert!(
            *worst < LIVENESS_BOUND,
            "{what} took {worst:?} while PostgreSQL was frozen"
        );
    }
}

/// Every stored message, as (id, text), by id.
fn stored_messages(pg: &PgServer) -> Vec<(i64, String)> {
    pg.psql("SELECT id, text FROM messages ORDER BY id")
        .lines()
        .filter_map(|line| {
            let (id, text) = line.split_once('|')?;
            Some((id.parse().ok()?, text.to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Startup: authentication, reachability, schema, TLS, the password
// ---------------------------------------------------------------------------------------

#[test]
fn a_wrong_password_is_refused_at_startup_naming_the_user() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let wrong = format!("{}-wrong", pg.password());
    let stderr = refused_at_startup(&startup_conf(&pg.url(), ""), &wrong);
    assert!(
        stderr.contains("password authentication failed for user \"chatd\""),
        "{stderr}"
    );
    assert!(!stderr.contains(pg.password()), "{stderr}");
}

#[test]
fn no_password_for_a_server_that_asks_for_one_is_refused_at_startup() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let (status, stderr) = run_expecting_exit(&startup_conf(&pg.url(), ""), &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the server asks for a password and none is configured"),
        "{stderr}"
    );
}

#[test]
fn tls_required_of_a_server_without_it_is_refused_at_startup() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let stderr = refused_at_startup(
        &startup_conf(&pg.url(), "database_tls = require"),
        pg.password(),
    );
    assert!(stderr.contains("TLS"), "{stderr}");
}

#[test]
fn md5_and_cleartext_authentication_are_refused_naming_the_method() {
    for (auth, method) in [(PgAuth::Md5, "md5"), (PgAuth::Password, "cleartext")] {
        let Some(pg) = postgres(auth) else {
            return;
        };
        let stderr = refused_at_startup(&startup_conf(&pg.url(), ""), pg.password());
        assert!(
            stderr.contains(method) && stderr.contains("scram-sha-256"),
            "{method}: {stderr}"
        );
    }
}

#[test]
fn an_unreachable_database_is_refused_promptly_and_clearly() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("postgres://chatd@127.0.0.1:{port}/chat");
    let start = Instant::now();
    let stderr = refused_at_startup(
        &startup_conf(&url, "database_timeout_ms = 2000"),
        "unused-password-5b1e",
    );
    let took = start.elapsed();
    assert!(
        stderr.contains(&format!(
            "cannot open database postgres://chatd@127.0.0.1:{port}/chat"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[test]
fn a_database_that_does_not_answer_is_refused_within_the_timeout() {
    // A listener that accepts and never answers: the startup waits database_timeout_ms.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("postgres://chatd@127.0.0.1:{port}/chat");
    let start = Instant::now();
    let stderr = refused_at_startup(
        &startup_conf(&url, "database_timeout_ms = 1000"),
        "unused-password-5b1e",
    );
    let took = start.elapsed();
    drop(listener);
    assert!(
        stderr.contains("no answer within database_timeout_ms (1000 ms)"),
        "{stderr}"
    );
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(8),
        "took {took:?}"
    );
}

#[test]
fn a_newer_schema_is_refused_at_startup() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    pg.psql(
        "CREATE TABLE schema_version (version INTEGER NOT NULL); \
         INSERT INTO schema_version VALUES (999)",
    );
    let stderr = refused_at_startup(&startup_conf(&pg.url(), ""), pg.password());
    assert!(
        stderr.contains("database schema version 999 is newer than this chatd knows"),
        "{stderr}"
    );
}

#[test]
fn the_password_file_is_read_warned_about_when_exposed_and_refused_when_empty() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("postgres.password");
    fs::write(&file, format!("{}\n", pg.password())).expect("write");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let conf = format!(
        "database = {}\ndatabase_password_file = {}",
        pg.url(),
        file.display()
    );
    let server = TestServer::start(&conf);
    // Ready once the loop's connections are up (they connect after the listener).
    wait_ready(&server);
    server.register("alice", "password-123");
    assert!(
        server.log().contains("accessible to group or others"),
        "{}",
        server.log()
    );
    assert_password_not_shown(&server, pg.password());
    drop(server);

    fs::write(&file, "").expect("empty");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let (status, stderr) = run_expecting_exit(
        &startup_conf(
            &pg.url(),
            &format!("database_password_file = {}", file.display()),
        ),
        &[],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("database_password_file") && stderr.contains("is empty"),
        "{stderr}"
    );
}

/// A CA and a server certificate it signed for 127.0.0.1: (CA PEM, certificate PEM,
/// key PEM).
fn make_certificates(ca_name: &str) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("sign");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_to_postgres_verify_full_and_require_work_and_a_wrong_ca_is_refused() {
    let (ca, cert, key) = make_certificates("chatd test CA");
    let (other_ca, _, _) = make_certificates("another CA");
    let Some(pg) = PgServer::start(PgOptions {
        tls: Some((cert, key)),
        ..PgOptions::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    let other_ca_file = dir.path().join("other-ca.pem");
    fs::write(&ca_file, &ca).expect("ca");
    fs::write(&other_ca_file, &other_ca).expect("other ca");

    for tls in [
        format!(
            "database_tls = verify-full\ndatabase_ca_file = {}",
            ca_file.display()
        ),
        "database_tls = require".to_string(),
    ] {
        let server = chatd_on(&pg, &tls);
        let (mut alice, _) = ws::user(&server, &format!("alice{}", tls.len()));
        alice.ok(json!({"type":"join","room":"tls"}));
        let sent = alice.ok(json!({"type":"send","room":"tls","text":tls}));
        assert!(sent["id"].as_i64().is_some(), "{sent}");
        assert_password_not_shown(&server, pg.password());
        // chatd's connections are encrypted: PostgreSQL says so per backend.
        let by_ssl = pg.psql(
            "SELECT ssl, count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'chatd' GROUP BY ssl",
        );
        assert_eq!(by_ssl, "t|2", "{tls}");
    }

    let stderr = refused_at_startup(
        &startup_conf(
            &pg.url(),
            &format!(
                "database_tls = verify-full\ndatabase_ca_file = {}",
                other_ca_file.display()
            ),
        ),
        pg.password(),
    );
    assert!(stderr.contains("TLS"), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// PostgreSQL frozen (SIGSTOP)
// ---------------------------------------------------------------------------------------

/// Reads and drops whatever is queued for `ws` (presence of earlier joins): the reply
/// to a ping comes after it.
fn drain(ws: &mut ws::Ws) {
    assert_eq!(ws.request(json!({"type":"ping"}))["ok"], true);
    while ws.recv_within(Duration::from_millis(1)).is_some() {}
}

/// The next reply for `ws` within `timeout`, skipping events (presence of the others'
/// comings and goings is not held behind a request that waits).
fn reply_within(ws: &mut ws::Ws, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = ws.recv_within(left.max(Duration::from_millis(1)))?;
        if frame["type"] == "reply" {
            return Some(frame);
        }
        if left.is_zero() {
            return None;
        }
    }
}

/// Asserts that nothing but presence is due to `ws`: no reply, no message. The reply
/// to a ping sent now comes after whatever was queued before it.
fn assert_only_presence_pending(ws: &mut ws::Ws) {
    assert_eq!(ws.request(json!({"type":"ping"}))["ok"], true);
    while let Some(frame) = ws.recv_within(Duration::from_millis(1)) {
        assert_eq!(frame["type"], "presence", "unexpected frame: {frame}");
    }
}

/// Three members of room `dev`, nothing queued for them: alice (whose requests will
/// need the database), bob and dave (who chat without it); and alice's token.
fn three_members(server: &TestServer) -> (ws::Ws, ws::Ws, ws::Ws, String) {
    let (mut alice, token) = ws::user(server, "alice");
    let (mut bob, _) = ws::user(server, "bob");
    let (mut dave, _) = ws::user(server, "dave");
    for member in [&mut alice, &mut bob, &mut dave] {
        member.ok(json!({"type":"join","room":"dev"}));
    }
    for member in [&mut alice, &mut bob, &mut dave] {
        drain(member);
    }
    (alice, bob, dave, token)
}

/// An HTTP request answered on a thread of its own: its response, how long it took
/// from being sent, when it was answered, and the connection for more.
type Answered = (common::Response, Duration, Instant, common::Client);

fn http_in_background(
    server: &TestServer,
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    token: Option<String>,
) -> std::thread::JoinHandle<Answered> {
    let mut client = server.connect();
    std::thread::spawn(move || {
        let start = Instant::now();
        let body = body.unwrap_or_else(|| json!({}));
        let r = client.send_json(method, path, &body, token.as_deref());
        (r, start.elapsed(), Instant::now(), client)
    })
}

/// Asserts that the next answer on `client` is the one to a GET /healthz sent now: a
/// second answer to an earlier request would come first.
fn assert_answered_once(client: &mut common::Client) {
    let healthz = client.get("/healthz");
    assert_eq!(
        (healthz.status, healthz.text()),
        (200, r#"{"status":"ok"}"#.to_string()),
        "the answer to GET /healthz"
    );
}

#[test]
fn frozen_for_3_s_the_rest_answers_and_database_requests_complete_after_sigcont() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let server = chatd_on(&pg, "database_timeout_ms = 5000");
    let (mut alice, mut bob, mut dave, token) = three_members(&server);

    let frozen = Frozen::new(&pg);
    alice.send_json(&json!({"type":"send","room":"dev","text":"sent while frozen","ref":"frozen"}));
    let me = http_in_background(&server, "GET", "/me", None, Some(token));
    let register = http_in_background(
        &server,
        "POST",
        "/register",
        Some(json!({"username":"erin","password":"password-123"})),
        None,
    );
    let samples = liveness(&server, &mut bob, &mut dave, 5);
    assert_live(&samples);
    assert_eq!(
        reply_within(&mut alice, Duration::from_millis(50)),
        None,
        "answered while PostgreSQL was frozen"
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(frozen.since.elapsed()));
    let thawed_at = Instant::now();
    let held = frozen.thaw();

    let reply = reply_within(&mut alice, Duration::from_secs(5)).expect("a reply");
    let after_thaw = thawed_at.elapsed();
    assert_eq!(
        (&reply["ref"], &reply["ok"]),
        (&json!("frozen"), &json!(true)),
        "{reply}"
    );
    let id = reply["data"]["id"].as_i64().expect("an id");
    eprintln!(
        "frozen {} ms: the send was acknowledged {} ms after SIGCONT",
        held.as_millis(),
        after_thaw.as_millis()
    );
    let mut clients = Vec::new();
    for (request, expected) in [(me, 200), (register, 201)] {
        let (r, took, answered, client) = request.join().expect("HTTP thread");
        assert_eq!(r.status, expected, "{}", r.text());
        assert!(answered >= thawed_at, "answered {took:?} after its request");
        clients.push(client);
    }
    for member in [&mut alice, &mut bob] {
        let event = member.next_of_type("message");
        assert_eq!(
            (&event["id"], &event["text"]),
            (&json!(id), &json!("sent while frozen"))
        );
    }

    // Past the request's timeout: still no second answer, and no second event.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(held) + Duration::from_millis(500));
    assert_only_presence_pending(&mut alice);
    bob.assert_nothing_pending();
    for client in &mut clients {
        assert_answered_once(client);
    }
    assert_eq!(
        stored_messages(&pg),
        vec![(id, "sent while frozen".to_string())]
    );
    let (status, body) = readyz(&server);
    assert_eq!(status, 200, "{body}");
    assert_password_not_shown(&server, pg.password());
}

#[test]
fn frozen_past_the_timeout_requests_get_unavailable_once_and_late_answers_are_dropped() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let server = chatd_on(&pg, "database_timeout_ms = 1000");
    let (mut alice, mut bob, mut dave, token) = three_members(&server);
    let (status, body) = readyz(&server);
    assert_eq!(status, 200, "{body}");

    let frozen = Frozen::new(&pg);
    let sent = Instant::now();
    alice.send_json(&json!({"type":"send","room":"dev","text":"timed out","ref":"late"}));
    let me = http_in_background(&server, "GET", "/me", None, Some(token.clone()));
    let samples = liveness(&server, &mut bob, &mut dave, 5);
    assert_live(&samples);

    let reply = reply_within(&mut alice, Duration::from_secs(5)).expect("a reply");
    let took = sent.elapsed();
    assert_eq!(
        (&reply["ref"], &reply["ok"], &reply["error"]["code"]),
        (&json!("late"), &json!(false), &json!("unavailable")),
        "{reply}"
    );
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
        "unavailable after {took:?}"
    );
    let (r, took, _, mut me_client) = me.join().expect("HTTP thread");
    common::assert_error(&r, 503, "unavailable");
    assert!(took >= Duration::from_millis(1000), "503 after {took:?}");
    assert_answered_once(&mut me_client);
    let (status, body) = readyz(&server);
    assert_eq!(
        (status, &body["status"], &body["reason"]),
        (503, &json!("unavailable"), &json!("database_stalled")),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(frozen.since.elapsed()));
    let thawed_at = Instant::now();
    frozen.thaw();

    wait_ready(&server);
    eprintln!(
        "/readyz answered 200 again {} ms after SIGCONT",
        thawed_at.elapsed().as_millis()
    );
    // The late answers arrived and were dropped: nobody hears of them.
    assert_only_presence_pending(&mut alice);
    bob.assert_nothing_pending();
    assert_answered_once(&mut me_client);
    // The write's outcome was unknown when it was answered: it committed after all.
    let stored = stored_messages(&pg);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1, "timed out");
    // And service goes on.
    let sent = alice.ok(json!({"type":"send","room":"dev","text":"after"}));
    assert!(sent["id"].as_i64().expect("an id") > stored[0].0);
    assert_eq!(bob.next_of_type("message")["text"], "after");
    let mut c = server.connect();
    assert_eq!(c.get_auth("/me", &token).status, 200);
    assert_password_not_shown(&server, pg.password());
}

// ---------------------------------------------------------------------------------------
// PostgreSQL stopped (`pg_ctl stop -m immediate`) and started again
// ---------------------------------------------------------------------------------------

/// One `send` of the loop: what it sent and what came back when.
#[derive(Debug, Clone)]
struct Sent {
    text: String,
    answered: Instant,
    /// The id acknowledged, or the error code.
    outcome: Result<i64, String>,
}

/// Senders posting to room `dev` one request at a time each, until `stop` (bounded in
/// count and time), every answer recorded.
fn send_loop(
    mut ws: ws::Ws,
    name: &'static str,
    log: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        for i in 0..20_000 {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return;
            }
            let text = format!("{name}-{i}");
            let reply = ws.request(json!({"type":"send","room":"dev","text":text}));
            let outcome = if reply["ok"] == true {
                Ok(reply["data"]["id"].as_i64().expect("an id"))
            } else {
                Err(reply["error"]["code"].as_str().unwrap_or("").to_string())
            };
            log.lock().expect("log").push(Sent {
                text,
                answered: Instant::now(),
                outcome,
            });
        }
    })
}

fn acknowledged_after(log: &Mutex<Vec<Sent>>, after: Instant) -> usize {
    log.lock()
        .expect("log")
        .iter()
        .filter(|s| s.answered > after && s.outcome.is_ok())
        .count()
}

#[test]
fn an_immediate_stop_and_start_loses_nothing_acknowledged_and_service_resumes() {
    let Some(mut pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let server = chatd_on(
        &pg,
        "database_timeout_ms = 2000\nws_rate = 10000/s burst 10000",
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut token = String::new();
    for name in ["alice", "bob", "carol"] {
        let (mut member, member_token) = ws::user(&server, name);
        token = member_token;
        member.ok(json!({"type":"join","room":"dev"}));
        senders.push(send_loop(member, name, log.clone(), stop.clone()));
    }
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || acknowledged_after(
            &log, started
        ) >= 100),
        "the send loop did not get going"
    );

    let stopped_at = Instant::now();
    pg.stop_immediate();
    let (_, down) = poll_readyz(&server, Duration::from_secs(10), |status, _| status == 503)
        .expect("/readyz stayed ready with PostgreSQL down");
    assert_eq!(
        (&down["status"], &down["reason"]),
        (&json!("unavailable"), &json!("database_unreachable")),
        "{down}"
    );
    let me = http_in_background(&server, "GET", "/me", None, Some(token.clone()));
    let (r, took, _, mut me_client) = me.join().expect("HTTP thread");
    common::assert_error(&r, 503, "unavailable");
    assert!(took >= Duration::from_millis(2000), "503 after {took:?}");
    assert_answered_once(&mut me_client);
    // Down long enough for requests to wait and time out.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped_at.elapsed()));
    let starting_at = Instant::now();
    pg.start_again();
    let back_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || acknowledged_after(
            &log, back_at
        ) > 0),
        "no send acknowledged within 10 s of PostgreSQL being back"
    );
    let resumed = log
        .lock()
        .expect("log")
        .iter()
        .filter(|s| s.answered > back_at && s.outcome.is_ok())
        .map(|s| s.answered - back_at)
        .min()
        .expect("an acknowledged send");
    assert!(
        wait_until(Duration::from_secs(20), || acknowledged_after(
            &log, back_at
        ) >= 100),
        "the send loop did not go on"
    );
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("sender");
    }

    let log = log.lock().expect("log").clone();
    let stored: HashMap<i64, String> = stored_messages(&pg).into_iter().collect();
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut acknowledged = 0;
    for sent in &log {
        match &sent.outcome {
            Ok(id) => {
                acknowledged += 1;
                assert_eq!(
                    stored.get(id),
                    Some(&sent.text),
                    "acknowledged as {id} but not stored"
                );
            }
            Err(code) => *errors.entry(code.clone()).or_default() += 1,
        }
    }
    eprintln!(
        "{} sends, {acknowledged} acknowledged and all stored, errors {errors:?}; \
         the first acknowledged {} ms after PostgreSQL accepted again ({} ms after it \
         was started, down {} ms)",
        log.len(),
        resumed.as_millis(),
        (back_at - starting_at + resumed).as_millis(),
        (starting_at - stopped_at).as_millis(),
    );
    for code in errors.keys() {
        assert!(
            code == "internal_error" || code == "unavailable",
            "unexpected error {code}: {errors:?}"
        );
    }
    assert!(
        !errors.is_empty(),
        "no request met the stopped database: {}",
        log.len()
    );
    let (status, body) = readyz(&server);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.connect().get_auth("/me", &token).status, 200);
    let reconnects = server.metric("chatd_db_reconnects_total");
    eprintln!("chatd_db_reconnects_total {reconnects}");
    assert!(reconnects >= 1);
    assert_password_not_shown(&server, pg.password());
}

// ---------------------------------------------------------------------------------------
// Connections that go silent (a partition, a failover behind one address)
// ---------------------------------------------------------------------------------------

/// A TCP relay to PostgreSQL that can make the connections it carries go silent
/// without closing them, as a partition or a failover behind one address does, while
/// new connections get through. Its threads end with it.
struct Relay {
    port: u16,
    /// Connections numbered below this forward nothing more.
    silenced_below: Arc<std::sync::atomic::AtomicUsize>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(target_port: u16) -> Relay {
        use std::sync::atomic::AtomicUsize;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let relay = Relay {
            port,
            silenced_below: Arc::new(AtomicUsize::new(0)),
            next: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (silenced_below, next, stop) = (
            relay.silenced_below.clone(),
            relay.next.clone(),
            relay.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let number = next.fetch_add(1, Ordering::Relaxed);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (silenced_below, stop) = (silenced_below.clone(), stop.clone());
                    std::thread::spawn(move || {
                        relay_one_way(from, to, number, &silenced_below, &stop)
                    });
                }
            }
        });
        relay
    }

    /// Every connection open now forwards nothing more; later ones work.
    fn silence_open_connections(&self) {
        self.silenced_below
            .store(self.next.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn url(&self) -> String {
        format!("postgres://chatd@127.0.0.1:{}/chat", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay_one_way(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    number: usize,
    silenced_below: &std::sync::atomic::AtomicUsize,
    stop: &AtomicBool,
) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A silenced connection swallows what it carries and stays open.
                if number >= silenced_below.load(Ordering::Relaxed)
                    && to.write_all(&buf[..n]).is_err()
                {
                    break;
                }
            }
            Err(e) if common::is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_connection_that_goes_silent_is_abandoned_and_made_again() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let relay = Relay::start(pg.port());
    let conf = format!("database = {}\ndatabase_timeout_ms = 1000", relay.url());
    let server = TestServer::start_with_env(&conf, &[("CHATD_DATABASE_PASSWORD", pg.password())]);
    let (mut alice, _) = ws::user(&server, "alice");
    alice.ok(json!({"type":"join","room":"dev"}));
    alice.ok(json!({"type":"send","room":"dev","text":"before"}));

    relay.silence_open_connections();
    let silenced_at = Instant::now();
    assert_eq!(
        alice.error(json!({"type":"send","room":"dev","text":"into the void"})),
        "unavailable"
    );
    // The database itself is fine: a new connection gets through at once.
    let mut recovered = None;
    while silenced_at.elapsed() < Duration::from_secs(15) {
        let reply = alice.request(json!({"type":"send","room":"dev","text":"again"}));
        if reply["ok"] == true {
            recovered = Some(silenced_at.elapsed());
            break;
        }
        // Unavailable after the timeout, or internal_error for a unit still waiting
        // on the connection when it was given up (its outcome is unknown).
        let code = &reply["error"]["code"];
        assert!(code == "unavailable" || code == "internal_error", "{reply}");
    }
    let recovered = recovered.expect("chatd never left the silent connection");
    eprintln!(
        "a silent connection (database_timeout_ms 1000) was replaced {} ms after it went silent",
        recovered.as_millis()
    );
    // Ready again once no connection holds a request past the timeout.
    wait_ready(&server);
    assert!(server.metric("chatd_db_reconnects_total") >= 1);
    assert!(
        server.wait_for_log("connection abandoned", Duration::from_secs(1)),
        "{}",
        server.log()
    );
    assert_password_not_shown(&server, pg.password());
}

#[test]
fn readyz_notices_a_frozen_database_without_traffic() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let server = chatd_on(&pg, "database_timeout_ms = 1000");
    wait_ready(&server);
    // Idle for several timeouts: the probes of idle connections are answered, nothing
    // is made again.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(readyz(&server).0, 200);
    assert_eq!(server.metric("chatd_db_reconnects_total"), 0);

    let frozen = Frozen::new(&pg);
    let (_, seen) = poll_readyz(&server, Duration::from_secs(10), |status, _| status == 503)
        .expect("/readyz stayed ready with PostgreSQL frozen and no traffic");
    eprintln!(
        "/readyz said {} {} ms after PostgreSQL froze, without traffic",
        seen["reason"],
        frozen.since.elapsed().as_millis()
    );
    assert_eq!(seen["reason"], "database_stalled", "{seen}");
    // Frozen on, past the point where chatd gives its connections up and makes them
    // again (two timeouts): still stalled, not unreachable.
    let mut c = server.connect();
    while frozen.since.elapsed() < Duration::from_millis(5000) {
        let r = c.get("/readyz");
        assert_eq!(
            (r.status, &r.json()["reason"]),
            (503, &json!("database_stalled")),
            "{} ms after the freeze",
            frozen.since.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.log().contains("connection abandoned"),
        "{}",
        server.log()
    );
    let thawed_at = Instant::now();
    frozen.thaw();
    wait_ready(&server);
    eprintln!(
        "/readyz said ready {} ms after SIGCONT",
        thawed_at.elapsed().as_millis()
    );
    let (mut alice, _) = ws::user(&server, "alice");
    alice.ok(json!({"type":"join","room":"dev"}));
    alice.ok(json!({"type":"send","room":"dev","text":"after"}));
}

/// The pids of chatd's backends (its connections, by application_name).
fn chatd_backends(pg: &PgServer) -> Vec<i32> {
    pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'chatd'")
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[test]
fn requests_on_a_connection_lost_mid_unit_get_internal_error_once_and_nothing_is_stored() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let server = chatd_on(&pg, "database_timeout_ms = 5000");
    let (mut alice, token) = ws::user(&server, "alice");
    alice.ok(json!({"type":"join","room":"dev"}));
    alice.ok(json!({"type":"send","room":"dev","text":"kept"}));
    let backends = chatd_backends(&pg);
    assert_eq!(backends.len(), 2, "chatd's connections: {backends:?}");

    // The backends stop before reading the units: they are in flight, not run. Then
    // they die, and PostgreSQL ends every connection to recover.
    signal_all(&backends, libc::SIGSTOP);
    alice.send_json(&json!({"type":"send","room":"dev","text":"lost","ref":"lost"}));
    let me = http_in_background(&server, "GET", "/me", None, Some(token.clone()));
    assert!(
        wait_until(Duration::from_secs(5), || server
            .metric("chatd_storage_waiting")
            == 2),
        "the requests did not reach the database"
    );
    let killed_at = Instant::now();
    signal_all(&backends, libc::SIGKILL);

    let reply = reply_within(&mut alice, Duration::from_secs(5)).expect("a reply");
    assert_eq!(
        (&reply["ref"], &reply["ok"], &reply["error"]["code"]),
        (&json!("lost"), &json!(false), &json!("internal_error")),
        "{reply}"
    );
    let (r, _, _, mut me_client) = me.join().expect("HTTP thread");
    common::assert_error(&r, 500, "internal_error");
    assert!(
        killed_at.elapsed() < Duration::from_secs(4),
        "answered at the timeout"
    );
    assert_answered_once(&mut me_client);

    // Service resumes once PostgreSQL has recovered; nothing of the lost unit is stored,
    // and no second answer comes for it.
    let resumed = wait_until(Duration::from_secs(20), || {
        alice.request(json!({"type":"send","room":"dev","text":"after"}))["ok"] == true
    });
    assert!(resumed, "no send acknowledged after the recovery");
    let texts: Vec<String> = stored_messages(&pg).into_iter().map(|(_, t)| t).collect();
    assert!(!texts.contains(&"lost".to_string()), "{texts:?}");
    assert_eq!(texts.first().map(String::as_str), Some("kept"));
    assert_eq!(texts.last().map(String::as_str), Some("after"));
    assert_eq!(alice.next_of_type("message")["text"], "after");
    assert_only_presence_pending(&mut alice);
    assert_answered_once(&mut me_client);
    wait_ready(&server);
    assert_password_not_shown(&server, pg.password());
}

#[test]
fn a_graceful_shutdown_is_not_held_up_by_a_frozen_database() {
    let Some(pg) = postgres(PgAuth::ScramSha256) else {
        return;
    };
    let mut server = chatd_on(&pg, "database_timeout_ms = 30000");
    let (mut alice, token) = ws::user(&server, "alice");
    alice.ok(json!({"type":"join","room":"dev"}));
    let frozen = Frozen::new(&pg);
    alice.send_json(&json!({"type":"send","room":"dev","text":"parked","ref":"parked"}));
    let mut me = server.connect();
    let auth = format!("Bearer {token}");
    let request = me.build_request("GET", "/me", &[("Authorization", &auth)], b"");
    me.send(&request);
    assert!(
        wait_until(Duration::from_secs(5), || server
            .metric("chatd_storage_waiting")
            == 2),
        "the requests did not park"
    );
    let stopping = Instant::now();
    server.stop();
    let took = stopping.elapsed();
    eprintln!(
        "SIGTERM with PostgreSQL frozen: chatd exited in {} ms",
        took.as_millis()
    );
    // Its grace period (3 s), not the database timeout (30 s).
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    // The parked request's connection was closed with the rest, unanswered.
    assert!(me.try_read_any_response("GET").is_err());
    // The WebSocket with a send waiting was told the server is going away.
    let ended = alice.ended(Duration::from_secs(5));
    assert!(matches!(ended, ws::Ended::Close(1001, _)), "{ended:?}");
    drop(frozen);
}
