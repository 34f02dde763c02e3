//! Limits end to end: connection limits and the connection rate at accept (before TLS),
//! per-IP HTTP and login rates, the server-wide password-hash budget, the header timeout
//! (slowloris, slow handshake, slow body) and the idle timeout, each with its `/metrics`
//! counter.

mod common;

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Asserts that a fresh TCP connection is closed by the server before any byte of TLS
/// (we send nothing, and EOF or a reset arrives with no data).
fn assert_refused_at_accept(server: &TestServer) {
    let mut sock = server.tcp();
    let data = read_until_eof(&mut sock, Duration::from_secs(5))
        .expect("a refused connection is closed at once");
    assert!(data.is_empty(), "refused connection sent {data:?}");
    // A TLS handshake on a refused connection fails too.
    let err = server
        .try_connect()
        .err()
        .expect("TLS on a refused connection must fail");
    assert_ne!(err.kind(), ErrorKind::InvalidData, "{err}");
}

#[test]
fn per_ip_connection_limit_closes_extra_connections_before_tls() {
    let server = TestServer::start("max_connections_per_ip = 3");
    let mut open: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    for c in &mut open {
        assert_eq!(c.get("/healthz").status, 200);
    }
    assert_refused_at_accept(&server);
    // The first three still work, and the refusals were counted.
    for c in &mut open {
        assert_eq!(c.get("/healthz").status, 200);
    }
    let text = open[0].get("/metrics").text();
    assert_eq!(
        metric_value(
            &text,
            "chatd_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        2
    );
    assert_eq!(
        metric_value(
            &text,
            "chatd_connections_refused_total{reason=\"max_connections\"}"
        ),
        0
    );
    assert_eq!(metric_value(&text, "chatd_open_connections"), 3);
    assert_eq!(metric_value(&text, "chatd_connections_accepted_total"), 3);

    // Closing one makes room for a new one.
    open.pop().expect("a connection").close();
    let reconnected = wait_until(Duration::from_secs(5), || {
        server.try_connect().is_ok_and(|mut c| {
            c.try_send(&c.build_request("GET", "/healthz", &[], b""))
                .is_ok()
                && c.try_read_any_response("GET")
                    .is_ok_and(|r| r.status == 200)
        })
    });
    assert!(reconnected, "no room after closing a connection");
}

#[test]
fn max_connections_limit_is_counted_under_its_own_reason() {
    // A per-address limit above the server-wide one is redundant, not an error: the
    // server starts, says so, and the smaller limit decides.
    let server = TestServer::start("max_connections = 2\nmax_connections_per_ip = 5");
    assert!(
        server.wait_for_log("`max_connections_per_ip` = 5 (", Duration::from_secs(10)),
        "no warning about the redundant limit: {}",
        server.log()
    );
    let mut a = server.connect();
    let mut b = server.connect();
    assert_eq!(a.get("/healthz").status, 200);
    assert_eq!(b.get("/healthz").status, 200);
    assert_refused_at_accept(&server);
    let text = b.get("/metrics").text();
    assert_eq!(
        metric_value(
            &text,
            "chatd_connections_refused_total{reason=\"max_connections\"}"
        ),
        2
    );
    assert_eq!(a.get("/healthz").status, 200);
}

#[test]
fn http_rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start_with_env("", &[("CHATD_HTTP_RATE_PER_IP", "2/s burst 3")]);
    let mut c = server.connect();
    // Five requests in one write are handled within microseconds: the burst of three
    // passes, the next two are refused (nothing refills in between).
    let mut batch = Vec::new();
    for path in [
        "/healthz",
        "/healthz",
        "/healthz",
        "/healthz",
        "/index.html",
    ] {
        batch.extend(c.build_request("GET", path, &[], b""));
    }
    c.send(&batch);
    for _ in 0..3 {
        assert_eq!(c.read_response().status, 200);
    }
    let r = c.read_response();
    assert_error(&r, 429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(!r.closes(), "429 must not close");
    // Static files and the API count alike.
    let r = c.read_response();
    assert_error(&r, 429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));

    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(c.get("/healthz").status, 200, "the budget refills");
    let r = c.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        metric_value(
            &r.text(),
            "chatd_rate_limited_total{limit=\"http_rate_per_ip\"}"
        ),
        2
    );
}

#[test]
fn login_rate_is_shared_by_login_and_register() {
    let server = TestServer::start("login_rate_per_ip = 1/min burst 3");
    let mut c = server.connect();
    c.register("kate", "kate-password");
    c.login("kate", "kate-password");
    let r = c.post_json(
        "/login",
        &json!({"username": "kate", "password": "wrong-password"}),
    );
    assert_error(&r, 401, "invalid_credentials");

    for (path, body) in [
        (
            "/register",
            json!({"username": "leo", "password": "leo-password"}),
        ),
        (
            "/login",
            json!({"username": "kate", "password": "kate-password"}),
        ),
    ] {
        let r = c.post_json(path, &body);
        assert_error(&r, 429, "rate_limited");
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("whole seconds");
        assert!((50..=60).contains(&retry), "{path}: Retry-After {retry}");
    }
    // Other requests are not affected.
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(
        c.metric("chatd_rate_limited_total{limit=\"login_rate_per_ip\"}"),
        2
    );
}

#[test]
fn password_hash_budget_is_server_wide() {
    let server =
        TestServer::start("password_hashes_per_sec = 2\nlogin_rate_per_ip = 100/s burst 100");
    let mut c = server.connect();
    // Six registrations in one write, handled back to back: a hash takes tens of
    // milliseconds, so the budget (two at once, then one per 500 ms) runs out.
    let names = ["mia", "ned", "ora", "pat", "quin", "rae"];
    let mut batch = Vec::new();
    for name in names {
        let body = json!({"username": name, "password": "some-password"}).to_string();
        batch.extend(c.build_request(
            "POST",
            "/register",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ));
    }
    c.send(&batch);
    let mut refused = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let r = c.read_response();
        if i < 2 {
            assert_eq!(r.status, 201, "{name}: {}", r.text());
        } else if r.status == 429 {
            assert_error(&r, 429, "rate_limited");
            assert_eq!(r.header("retry-after"), Some("1"));
            refused.push(*name);
        } else {
            assert_eq!(r.status, 201, "{name}: {}", r.text());
        }
    }
    assert!(
        !refused.is_empty(),
        "six hashes at once all passed a budget of 2/s"
    );
    assert_eq!(
        c.metric("chatd_rate_limited_total{limit=\"password_hashes_per_sec\"}"),
        refused.len() as u64
    );
    // The budget refills.
    std::thread::sleep(Duration::from_millis(1100));
    c.register(refused[0], "some-password");
}

#[test]
fn a_password_change_fits_the_smallest_hash_budget() {
    // A password change costs two hashes at once (verify the current one, hash the new
    // one): with the smallest budget allowed it succeeds once the budget is full.
    let server =
        TestServer::start("password_hashes_per_sec = 2\nlogin_rate_per_ip = 100/s burst 100");
    let mut c = server.connect();
    c.register("olly", "olly-password");
    let token = c.login("olly", "olly-password");
    std::thread::sleep(Duration::from_millis(1100));
    let change = json!({"current_password": "olly-password", "new_password": "olly-password-2"});
    let r = c.send_json("PUT", "/me", &change, Some(&token));
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(1100));
    c.login("olly", "olly-password-2");
}

/// Sends `bytes` one at a time, `interval` apart, stopping when the server closes the
/// connection; returns the time from `start` to the close (seen at once: we wait for it
/// between bytes), or None if all was sent. Panics once the connection is still open
/// after `limit`.
fn trickle(
    c: &mut Client,
    bytes: &[u8],
    interval: Duration,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    trickle_with(c, bytes, interval, start, limit, |c, b| c.try_send(&[b]))
}

/// Like [`trickle`], each byte sent by `send`: as plaintext, or as a raw byte of TLS.
fn trickle_with(
    c: &mut Client,
    bytes: &[u8],
    interval: Duration,
    start: Instant,
    limit: Duration,
    mut send: impl FnMut(&mut Client, u8) -> std::io::Result<()>,
) -> Option<Duration> {
    for &b in bytes {
        if send(c, b).is_err() {
            return Some(start.elapsed());
        }
        if c.is_closed_within(interval) {
            return Some(start.elapsed());
        }
        assert!(start.elapsed() < limit, "still open after {limit:?}");
    }
    None
}

#[test]
fn slowloris_is_cut_off_at_the_header_timeout_while_other_clients_are_served() {
    let header_timeout = Duration::from_secs(2);
    let server = TestServer::start("header_timeout_secs = 2");
    let start = Instant::now();
    let mut slow = server.connect();
    // At one byte a second the head would be complete only after more than a minute.
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1234567890123456\r\n\r\n";

    // A normal client is served while the slow one dribbles, not after it is gone.
    let other = std::thread::spawn({
        let addr = server.addr();
        let config = server.client_config();
        move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut c = Client::connect(addr, config, "localhost").expect("connect");
            let r = c.get("/healthz");
            (r.status, start.elapsed())
        }
    });
    // The timeout runs from accept, just after `start`; a loaded machine may fire it
    // late, hence the wide margin (the head would take more than a minute to arrive).
    let limit = header_timeout + Duration::from_secs(30);
    let closed_after = trickle(&mut slow, head, Duration::from_secs(1), start, limit)
        .expect("the slow client was never cut off");
    assert!(
        closed_after >= header_timeout - Duration::from_millis(100),
        "cut off before the header timeout: {closed_after:?}"
    );
    assert!(
        closed_after <= limit,
        "cut off at {closed_after:?}, long after the header timeout"
    );
    assert!(slow.pending().is_empty(), "no response for a slow request");
    let (status, served_after) = other.join().expect("other client");
    assert_eq!(status, 200);
    assert!(
        served_after < closed_after,
        "the normal client was served at {served_after:?}, only after the slow one was \
         cut off at {closed_after:?}"
    );
    // It was the header timeout that cut it, by the server's own account.
    assert_eq!(
        server.metric("chatd_connection_errors_total{reason=\"header_timeout\"}"),
        1
    );
    assert!(server.log().contains("request not complete in time"));
}

#[test]
fn a_tls_handshake_that_never_comes_is_cut_off() {
    let server = TestServer::start("header_timeout_secs = 2");
    let start = Instant::now();
    let mut sock = server.tcp();
    let data = read_until_eof(&mut sock, Duration::from_secs(30))
        .expect("a silent connection is closed by the header timeout");
    assert!(data.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    // A finished handshake followed by silence: the first request is due within the
    // header timeout too (the idle timeout, 60 s, does not apply before it).
    let start = Instant::now();
    let mut c = server.connect();
    assert!(
        c.is_closed_within(Duration::from_secs(30)),
        "silent TLS client kept open"
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));

    // Half a handshake is no better: a TLS record header that never completes.
    let start = Instant::now();
    let mut sock = server.tcp();
    sock.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .expect("write");
    let data = read_until_eof(&mut sock, Duration::from_secs(30))
        .expect("a stalled handshake is closed by the header timeout");
    assert!(data.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn a_body_that_trickles_in_is_cut_off() {
    let server = TestServer::start("header_timeout_secs = 2");
    let mut c = server.connect();
    // A first request is fine; the clock starts again for the second one.
    assert_eq!(c.get("/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    c.send(
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 64\r\n\r\n",
    );
    let closed_after = trickle(
        &mut c,
        &[b' '; 64],
        Duration::from_millis(500),
        start,
        Duration::from_secs(25),
    )
    .expect("the slow body was never cut off");
    assert!(
        closed_after >= Duration::from_millis(1500),
        "{closed_after:?}"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = TestServer::start("idle_timeout_secs = 1");
    let mut c = server.connect();
    assert_eq!(c.get("/healthz").status, 200);
    let answered = Instant::now();
    assert!(
        c.is_closed_within(Duration::from_secs(30)),
        "idle connection kept open"
    );
    assert!(
        answered.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        answered.elapsed()
    );
    assert!(c.pending().is_empty());
    assert_eq!(
        server.metric("chatd_connection_errors_total{reason=\"idle_timeout\"}"),
        1
    );
}

#[test]
fn a_tls_record_trickled_in_after_a_request_runs_into_the_idle_timeout() {
    let idle_timeout = Duration::from_secs(3);
    let server = TestServer::start("header_timeout_secs = 2\nidle_timeout_secs = 3");
    let mut c = server.connect();
    assert_eq!(c.get("/healthz").status, 200);
    let answered = Instant::now();
    // The next request, encrypted into one TLS record sent a byte a second: bytes keep
    // arriving, but no plaintext before the whole record is in, a minute later. No
    // request has begun, so it is the idle timeout that must cut the client.
    let request = c.build_request("GET", "/healthz", &[], b"");
    let record = seal(&mut c.tls.conn, &request);
    // Wide: the record would take about a minute to arrive.
    let limit = idle_timeout + Duration::from_secs(30);
    let closed_after = trickle_with(
        &mut c,
        &record,
        Duration::from_secs(1),
        answered,
        limit,
        |c, b| c.tls.sock.write_all(&[b]),
    )
    .expect("the trickling client was never cut off");
    assert!(
        closed_after >= idle_timeout - Duration::from_millis(100),
        "cut off before the idle timeout: {closed_after:?}"
    );
    assert!(
        c.pending().is_empty(),
        "no response for a record never completed"
    );
    assert_eq!(
        server.metric("chatd_connection_errors_total{reason=\"idle_timeout\"}"),
        1
    );
    assert_eq!(
        server.metric("chatd_connection_errors_total{reason=\"header_timeout\"}"),
        0
    );
}

#[test]
fn clients_that_stop_reading_a_large_response_are_closed_once_without_spinning() {
    let idle_timeout = Duration::from_secs(2);
    let server = TestServer::start("idle_timeout_secs = 2");
    // Several MiB: far more than the kernel buffers of both ends hold.
    let body: Vec<u8> = (0..6u32 << 20).map(|n| (n % 251) as u8).collect();
    std::fs::write(server.public_dir().join("big.bin"), &body).expect("write big.bin");
    // One asks to keep the connection, the other asks for it to be closed after the
    // answer: either way the close depends on an answer that cannot be sent.
    let mut stuck: Vec<Client> = (0..2)
        .map(|_| {
            let sock = tcp_connect_small_window(server.addr(), 4096).expect("connect");
            Client::handshake(sock, server.client_config(), "localhost").expect("TLS")
        })
        .collect();
    // Asks every 200 ms, which keeps its own connection from going idle.
    let mut watcher = server.connect();
    let idle = "chatd_connection_errors_total{reason=\"idle_timeout\"}";
    let sent = Instant::now();
    let keep_alive = stuck[0].build_request("GET", "/big.bin", &[], b"");
    stuck[0].send(&keep_alive);
    let close = stuck[1].build_request("GET", "/big.bin", &[("Connection", "close")], b"");
    stuck[1].send(&close);
    // They never read: the answers stay stuck in the server's queues. The idle timeout
    // closes both; the one whose close it decided is given the linger period (2 s) to
    // send it, which it cannot, then dropped.
    let limit = idle_timeout + Duration::from_secs(2) + Duration::from_secs(2);
    while watcher.metric("chatd_open_connections") > 1 {
        assert!(
            sent.elapsed() < limit,
            "stuck connections still open after {:?} (idle timeouts counted: {})",
            sent.elapsed(),
            watcher.metric(idle)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed_after = sent.elapsed();
    assert!(
        closed_after >= idle_timeout - Duration::from_millis(100),
        "closed before the idle timeout: {closed_after:?}"
    );
    assert_eq!(
        watcher.metric(idle),
        2,
        "one idle timeout each, counted once"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(watcher.metric(idle), 2);
}

#[test]
fn a_busy_keep_alive_connection_is_not_idle() {
    let server = TestServer::start("idle_timeout_secs = 2\nheader_timeout_secs = 2");
    let mut c = server.connect();
    // Requests every 0.5 s for 3.5 s: longer than both timeouts, never idle that long.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        let r = c.get("/healthz");
        assert_eq!(r.status, 200);
        assert!(!r.closes());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn connections_opened_too_fast_are_closed_before_tls() {
    // One connection refills every 5 s: the ten connections opened at once are all
    // accepted before that, however busy the machine, so exactly five are refused. (The
    // exact refill boundary is a unit test of the limiter with a fake clock.)
    let server = TestServer::start("conn_rate_per_ip = 12/min burst 5");
    let socks: Vec<std::net::TcpStream> = (0..10).map(|_| server.tcp()).collect();
    for (i, mut sock) in socks.into_iter().enumerate() {
        if i < 5 {
            let mut c = Client::handshake(sock, server.client_config(), "localhost")
                .unwrap_or_else(|e| panic!("connection {}: {e}", i + 1));
            assert_eq!(c.get("/healthz").status, 200);
        } else {
            // Closed at accept: nothing was sent, not even a TLS alert.
            let data = read_until_eof(&mut sock, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("connection {} was kept open", i + 1));
            assert!(data.is_empty(), "refused connection sent {data:?}");
        }
    }
    // After a pause the budget has refilled (a lower bound in time: never too short).
    std::thread::sleep(Duration::from_millis(5500));
    let mut c = server.connect();
    assert_eq!(c.get("/healthz").status, 200);
    let text = c.get("/metrics").text();
    assert_eq!(
        metric_value(
            &text,
            "chatd_connections_refused_total{reason=\"conn_rate_per_ip\"}"
        ),
        5
    );
    assert_eq!(
        metric_value(
            &text,
            "chatd_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        0
    );
    assert_eq!(metric_value(&text, "chatd_connections_accepted_total"), 6);
}
