//! HTTP/1.1 over TLS against the real binary: keep-alive, pipelining, bodies, the
//! error statuses of the protocol layer (400, 405, 413, 415, 431, 501) and which of them
//! close the connection, `Expect: 100-continue`, plain HTTP on the TLS port, HEAD,
//! certificate verification, the TLS versions and suites offered, `Cache-Control` on
//! API answers, tokens in URLs refused, and `/metrics`.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn healthz_answers_ok_with_security_headers() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let r = c.get("/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(!r.closes());
    assert_security_headers(&r);

    let r = c.request("HEAD", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("15"));
    assert!(r.body.is_empty());
    // Nothing stray after the HEAD response: the next answer parses cleanly.
    let r = c.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start("");
    let mut c = server.connect();
    for path in ["/healthz", "/", "/nope", "/healthz", "/style.css"] {
        let r = c.get(path);
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
        assert!(!r.closes(), "{path} closed a keep-alive connection");
    }
    assert_eq!(server.metric("chatd_connections_accepted_total"), 2);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let login = json!({"username": "nobody", "password": "whatever-pw"}).to_string();
    let mut batch = Vec::new();
    batch.extend(c.build_request("GET", "/healthz", &[], b""));
    batch.extend(c.build_request("GET", "/nope", &[], b""));
    batch.extend(c.build_request(
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        login.as_bytes(),
    ));
    batch.extend(c.build_request("GET", "/style.css", &[], b""));
    batch.extend(c.build_request("POST", "/healthz", &[], b""));
    batch.extend(c.build_request("HEAD", "/", &[], b""));
    batch.extend(c.build_request("GET", "/app.js", &[], b""));
    c.send(&batch);

    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
    assert_error(&c.read_response(), 404, "not_found");
    assert_error(&c.read_response(), 401, "invalid_credentials");
    let r = c.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "body { color: #222; }\n")
    );
    let r = c.read_response();
    assert_error(&r, 405, "method_not_allowed");
    let r = c.read_response_to("HEAD");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(INDEX_HTML.len().to_string().as_str())
    );
    let r = c.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "console.log('chatd');\n")
    );
    assert!(
        c.pending().is_empty(),
        "extra bytes after the last response"
    );
    // Still open, and nothing was queued before the answer to a later request.
    let r = c.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
    assert!(c.pending().is_empty());
}

#[test]
fn requests_after_a_400_in_a_pipeline_are_not_answered() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let mut batch = c.build_request("GET", "/healthz", &[], b"");
    batch.extend_from_slice(b"GARBAGE\r\n\r\n");
    batch.extend(c.build_request("GET", "/healthz", &[], b""));
    c.send(&batch);
    assert_eq!(c.read_response().status, 200);
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 400, "bad_request");
}

#[test]
fn a_body_is_framed_by_content_length_even_on_a_get() {
    let server = TestServer::start("");
    let mut c = server.connect();
    // The body looks like a request; it must be skipped, not answered.
    let body = b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut batch = c.build_request("GET", "/healthz", &[], body);
    batch.extend(c.build_request("GET", "/style.css", &[], b""));
    c.send(&batch);
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
    let r = c.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "body { color: #222; }\n")
    );
    // A later request's answer comes next: the body was not answered as a request.
    let r = c.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
    assert!(c.pending().is_empty(), "the body was answered as a request");
}

#[test]
fn large_pipelined_answers_arrive_complete_and_in_order() {
    let server = TestServer::start("");
    let files: Vec<(String, Vec<u8>)> = (0..3u8)
        .map(|i| {
            let body: Vec<u8> = (0..100_000u32).map(|n| b'a' + i + (n % 7) as u8).collect();
            let name = format!("big{i}.bin");
            std::fs::write(server.public_dir().join(&name), &body).unwrap();
            (name, body)
        })
        .collect();
    let mut c = server.connect();
    // 2.4 MB of answers to requests sent before reading any: far more than the
    // server queues per connection, so it must pause and resume reading them.
    let mut batch = Vec::new();
    for n in 0..24 {
        batch.extend(c.build_request("GET", &format!("/{}", files[n % 3].0), &[], b""));
    }
    batch.extend(c.build_request("GET", "/healthz", &[], b""));
    c.send(&batch);
    for n in 0..24 {
        let r = c.read_response();
        assert_eq!(r.status, 200, "answer {n}");
        assert!(r.body == files[n % 3].1, "answer {n} has the wrong body");
    }
    assert_eq!(c.read_response().text(), r#"{"status":"ok"}"#);
}

#[test]
fn a_slow_but_steady_reader_of_pipelined_answers_is_not_cut_by_the_header_timeout() {
    let server = TestServer::start("header_timeout_secs = 1\nidle_timeout_secs = 5");
    // Larger than what the kernel buffers of both ends take (a send buffer can grow to
    // MiBs), so that each answer waits in the server's queue for a while.
    let body: Vec<u8> = (0..6u32 << 20).map(|n| (n % 253) as u8).collect();
    std::fs::write(server.public_dir().join("big.bin"), &body).unwrap();
    let sock = tcp_connect_small_window(server.addr(), 16 * 1024).expect("connect");
    let mut c = Client::handshake(sock, server.client_config(), "localhost").expect("TLS");
    let mut batch = Vec::new();
    for _ in 0..2 {
        batch.extend(c.build_request("GET", "/big.bin", &[], b""));
    }
    batch.extend(c.build_request("GET", "/healthz", &[], b""));
    c.send(&batch);
    // About 3 MB/s: each answer takes about two seconds to drain, twice the header
    // timeout, while the requests behind it wait in the server, read but not answered
    // (its queue is over the high-water mark). The client makes progress all along:
    // nothing may cut it.
    let start = Instant::now();
    c.read_slowly(16 * 1024, Duration::from_millis(5));
    for n in 0..2 {
        let r = c
            .try_read_any_response("GET")
            .unwrap_or_else(|e| panic!("answer {n} after {:?}: {e}", start.elapsed()));
        assert_eq!(r.status, 200, "answer {n}");
        assert!(r.body == body, "answer {n} has the wrong body");
    }
    assert_eq!(c.read_response().text(), r#"{"status":"ok"}"#);
    assert_eq!(
        server.metric("chatd_connection_errors_total{reason=\"header_timeout\"}"),
        0
    );
}

#[test]
fn pipelined_requests_then_close_notify_are_all_answered() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let mut batch = Vec::new();
    for path in ["/healthz", "/style.css", "/nope"] {
        batch.extend(c.build_request("GET", path, &[], b""));
    }
    c.send(&batch);
    // We are done sending: TLS close_notify right behind the requests.
    c.tls.conn.send_close_notify();
    c.tls
        .conn
        .complete_io(&mut c.tls.sock)
        .expect("send close_notify");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 404);
    c.assert_closed();
}

#[test]
fn a_body_of_the_default_maximum_is_read_completely() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let mut body = json!({"username": "big", "password": "big-password"}).to_string();
    body.push_str(&" ".repeat(65_536 - body.len()));
    let r = c.request(
        "POST",
        "/register",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(c.get("/healthz").status, 200, "in sync after a 64 KiB body");
}

#[test]
fn concurrent_clients_are_all_served() {
    // 160 requests from one address: above the default per-IP rate, so raise it.
    let server = TestServer::start("http_rate_per_ip = 1000/s burst 1000");
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.addr();
            let config = server.client_config();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, config, "localhost").expect("connect");
                (0..10)
                    .map(|i| {
                        let path = if i % 2 == 0 { "/healthz" } else { "/app.js" };
                        c.get(path).status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("client thread"), vec![200; 10]);
    }
}

#[test]
fn a_body_sent_in_pieces_is_assembled_by_content_length() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let body = json!({"username": "pieces", "password": "pieces-password"}).to_string();
    let head = format!(
        "POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    // The head itself split mid-line, then the body in three writes.
    let (h1, h2) = head.split_at(20);
    c.send(h1.as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    c.send(h2.as_bytes());
    for part in body.as_bytes().chunks(body.len() / 3 + 1) {
        std::thread::sleep(Duration::from_millis(50));
        c.send(part);
    }
    let r = c.read_response();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_user(&r.json(), "pieces");
}

#[test]
fn transfer_encoding_is_501_and_closes() {
    let server = TestServer::start("");
    let mut c = server.connect();
    c.send(
        b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 501, "not_implemented");
}

#[test]
fn oversized_body_is_413_decided_from_content_length_alone() {
    let server = TestServer::start("max_body_bytes = 1024");
    // The head alone, announcing one byte too many: the answer comes without the body.
    let mut c = server.connect();
    c.send(
        b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 1025\r\n\r\n",
    );
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 413, "payload_too_large");

    // Exactly the limit is accepted and the body is used.
    let mut c = server.connect();
    let mut body = json!({"username": "exactly", "password": "exactly-1024"}).to_string();
    body.push_str(&" ".repeat(1024 - body.len()));
    assert_eq!(body.len(), 1024);
    let r = c.request(
        "POST",
        "/register",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // A client that sends its too-large body anyway still gets to read the 413.
    let mut c = server.connect();
    let mut raw =
        b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 200000\r\n\r\n"
            .to_vec();
    raw.extend(std::iter::repeat_n(b' ', 200_000));
    let _ = c.try_send(&raw);
    let r = c.read_response();
    assert_error(&r, 413, "payload_too_large");
    assert!(r.closes());
    assert!(c.is_closed_within(Duration::from_secs(5)));

    // A huge announced length with Expect: 100-continue gets 413, never 100.
    let mut c = server.connect();
    c.send(
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Expect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
    );
    let r = c.read_any_response("POST");
    assert_error_and_close(&mut c, &r, 413, "payload_too_large");
}

/// A GET whose header block (request line to the blank line) is exactly `len` bytes.
fn get_with_head_len(len: usize) -> Vec<u8> {
    let start = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "a".repeat(pad)).into_bytes()
}

#[test]
fn oversized_header_block_is_431_and_closes() {
    let server = TestServer::start("max_header_bytes = 1024");
    let mut c = server.connect();
    let r = c.request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    c.send(&get_with_head_len(1024));
    let r = c.read_response();
    assert_eq!(r.status, 200, "a header block of exactly the limit is fine");

    let mut c = server.connect();
    c.send(&get_with_head_len(1025));
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 431, "headers_too_large");

    // A header block that never ends is refused as soon as it passes the limit.
    let mut c = server.connect();
    let mut endless = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: ".to_vec();
    endless.extend(std::iter::repeat_n(b'b', 2000));
    c.send(&endless);
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 431, "headers_too_large");
}

#[test]
fn more_than_48_headers_is_431() {
    let server = TestServer::start("");
    let with_headers = |n: usize| {
        let mut raw = String::from("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
        for i in 1..n {
            raw.push_str(&format!("X-H{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        raw.into_bytes()
    };
    let mut c = server.connect();
    c.send(&with_headers(48));
    let r = c.read_response();
    assert_eq!(r.status, 200, "48 headers are allowed");

    let mut c = server.connect();
    c.send(&with_headers(49));
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 431, "headers_too_large");
}

#[test]
fn bad_syntax_is_400_and_closes() {
    let server = TestServer::start("");
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: localhost\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12x\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"GET http://localhost/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let mut c = server.connect();
        c.send(raw);
        let r = c.read_response();
        let what = String::from_utf8_lossy(raw);
        assert_eq!(r.status, 400, "{what:?}: {}", r.text());
        assert_error_and_close(&mut c, &r, 400, "bad_request");
    }

    // Invalid JSON in an API body is a 400 too, and closes as well.
    let mut c = server.connect();
    let r = c.request(
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        b"{\"username\": ",
    );
    assert_error_and_close(&mut c, &r, 400, "bad_request");
}

#[test]
fn method_not_allowed_has_allow_and_keeps_the_connection() {
    let server = TestServer::start("");
    let mut c = server.connect();
    for (method, path, allow) in [
        ("GET", "/login", "POST"),
        ("PUT", "/register", "POST"),
        ("GET", "/refresh", "POST"),
        ("DELETE", "/me", "GET, PUT"),
        ("POST", "/me", "GET, PUT"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET"),
        ("PUT", "/index.html", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
    ] {
        let r = c.request(method, path, &[], b"");
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert!(!r.closes(), "405 must not close");
    }
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn a_body_that_is_not_json_is_415() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let body = json!({"username": "alice", "password": "alice-password"}).to_string();
    for headers in [
        &[("Content-Type", "text/plain")][..],
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &[],
    ] {
        let r = c.request("POST", "/register", headers, body.as_bytes());
        assert_error(&r, 415, "unsupported_media_type");
        assert!(!r.closes());
    }
    // Parameters after the media type are fine.
    let r = c.request(
        "POST",
        "/register",
        &[("Content-Type", "application/json; charset=utf-8")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let token = server.login("alice", "alice-password");
    let auth = format!("Bearer {token}");
    let r = c.request(
        "PUT",
        "/me",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        br#"{"display_name":"x"}"#,
    );
    assert_error(&r, 415, "unsupported_media_type");
}

#[test]
fn unknown_paths_are_404() {
    let server = TestServer::start("");
    let mut c = server.connect();
    for path in ["/nope", "/api/v1/users", "/healthz/extra", "/me/"] {
        let r = c.get(path);
        assert_error(&r, 404, "not_found");
        assert!(!r.closes());
    }
}

#[test]
fn head_responses_never_carry_a_body() {
    let server = TestServer::start("");
    let mut c = server.connect();
    // Pipelined so that a stray body after a HEAD answer would be read as the start
    // of the next response.
    let mut batch = Vec::new();
    batch.extend(c.build_request("HEAD", "/missing.html", &[], b""));
    batch.extend(c.build_request("HEAD", "/me", &[], b""));
    batch.extend(c.build_request("HEAD", "/style.css", &[], b""));
    batch.extend(c.build_request("GET", "/healthz", &[], b""));
    c.send(&batch);
    let r = c.read_response_to("HEAD");
    assert_eq!(r.status, 404);
    assert_security_headers(&r);
    let r = c.read_response_to("HEAD");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PUT"));
    let r = c.read_response_to("HEAD");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("22"));
    let r = c.read_response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, r#"{"status":"ok"}"#),
        "the answer after HEAD responses is out of sync"
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let body = json!({"username": "patient", "password": "patient-password"}).to_string();
    let head = format!(
        "POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes());
    let interim = c.read_any_response("POST");
    assert_eq!(interim.status, 100);
    assert_eq!(interim.version, "HTTP/1.1");
    assert_eq!(interim.reason, "Continue");
    assert!(c.pending().is_empty());
    c.send(body.as_bytes());
    let r = c.read_any_response("POST");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_user(&r.json(), "patient");

    // The next request on the connection gets its own 100.
    let body = json!({"username": "patient", "password": "patient-password"}).to_string();
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes());
    assert_eq!(c.read_any_response("POST").status, 100);
    c.send(body.as_bytes());
    assert_eq!(c.read_any_response("POST").status, 200);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_plaintext_400_and_is_closed() {
    let server = TestServer::start("");
    let mut sock = server.tcp();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let reply = read_until_eof(&mut sock, Duration::from_secs(5))
        .expect("the server closes the plaintext connection");
    let text = String::from_utf8(reply).expect("plaintext reply");
    assert!(text.starts_with("HTTP/1.0 400 "), "{text:?}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    assert_eq!(body.trim_end(), "this port speaks HTTPS");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    assert_eq!(length, body.len());
    assert_eq!(
        server.metric("chatd_connection_errors_total{reason=\"plaintext_http\"}"),
        1
    );
}

#[test]
fn connection_close_and_http_1_0_close_after_the_response() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let r = c.request("GET", "/healthz", &[("Connection", "close")], b"");
    assert_eq!(r.status, 200);
    assert!(r.closes());
    c.assert_closed();

    let mut c = server.connect();
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.closes());
    c.assert_closed();

    let mut c = server.connect();
    c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn the_client_verifies_the_certificate_for_real() {
    let server = TestServer::start("");
    let cert_pem = std::fs::read(server.cert_path()).expect("cert");
    let der = cert_der_from_pem(&cert_pem);
    assert_eq!(server.fingerprint(), fingerprint(&der));

    // By name and by IP address: both are in the certificate.
    for name in ["localhost", "127.0.0.1"] {
        let mut c = Client::connect(server.addr(), server.client_config(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.peer_cert_der(), der);
        assert_eq!(c.get("/healthz").status, 200);
    }
    // A name the certificate does not cover, and a certificate we do not trust.
    let e = Client::connect(server.addr(), server.client_config(), "example.com")
        .err()
        .expect("wrong name must fail");
    assert!(e.to_string().contains("certificate"), "{e}");
    let (other_cert, _) = new_self_signed_pair();
    let e = Client::connect(
        server.addr(),
        client_config_trusting(other_cert.as_bytes()),
        "localhost",
    )
    .err()
    .expect("untrusted certificate must fail");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn metrics_are_prometheus_text_and_can_be_turned_off() {
    let server = TestServer::start("");
    server.register("counted", "counted-password");
    let mut c = server.connect();
    let r = c.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_security_headers(&r);
    let text = r.text();
    assert!(
        text.contains("# TYPE chatd_open_connections gauge"),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("sample line");
        assert!(name.starts_with("chatd_"), "{line}");
        // Counts are integers; a histogram's sum is in seconds.
        if name.ends_with("_seconds_sum") {
            let secs = value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
            assert!(secs.is_finite() && secs >= 0.0, "{line}");
        } else {
            value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }
    assert_eq!(metric_value(&text, "chatd_registrations_total"), 1);
    // This client's address is held by the per-address HTTP limiter.
    assert!(
        metric_value(&text, "chatd_rate_limiter_keys") >= 1,
        "{text}"
    );
    // Housekeeping, pruning and this connection's own deadline at least.
    assert!(metric_value(&text, "chatd_timer_entries") >= 3, "{text}");
    // The registering connection is gone (once the server has seen it close).
    assert!(wait_until(Duration::from_secs(5), || c
        .metric("chatd_open_connections")
        == 1));

    let off = TestServer::start("metrics = off");
    assert_error(&off.connect().get("/metrics"), 404, "not_found");
}

#[test]
fn a_request_arriving_with_the_fin_is_answered_and_the_connection_closed_at_once() {
    let server = TestServer::start(
        "idle_timeout_secs = 60\nlogin_rate_per_ip = 100/s burst 100\npassword_hashes_per_sec = 100",
    );
    let mut busy = server.connect();
    let mut c = server.connect();
    // Five logins in one write keep the loop hashing for a while, so that the next
    // request and the FIN behind it are both waiting when it looks at `c` again: one
    // readable edge for both.
    let login = json!({"username": "nobody", "password": "whatever-pw"}).to_string();
    let mut batch = Vec::new();
    for _ in 0..5 {
        batch.extend(busy.build_request(
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            login.as_bytes(),
        ));
    }
    busy.send(&batch);
    std::thread::sleep(Duration::from_millis(20));
    let request = c.build_request("GET", "/healthz", &[], b"");
    c.send(&request);
    c.tls
        .sock
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let sent = std::time::Instant::now();
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        c.is_closed_within(Duration::from_secs(5)),
        "a half-closed client was kept open (until the idle timeout)"
    );
    assert!(sent.elapsed() < Duration::from_secs(5));
    for _ in 0..5 {
        assert_error(&busy.read_response(), 401, "invalid_credentials");
    }
}

/// The access-log lines in a server log: `(level, message)`.
fn access_lines(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|line| {
            let (head, message) = line.split_once("chatd::access] ")?;
            let level = head.split_whitespace().nth(1)?.to_string();
            Some((level, message.to_string()))
        })
        .collect()
}

#[test]
fn the_access_log_has_one_info_line_per_request_and_never_a_query_string() {
    let mut server = TestServer::start("access_log = true");
    let mut c = server.connect();
    let r = c.get("/healthz?token=QUERY-SECRET-1");
    assert_eq!(r.status, 200);
    let healthz_bytes = r.body.len();
    assert_eq!(c.get("/nope?x=QUERY-SECRET-2").status, 404);
    // The line is written before the response is sent: no waiting needed.
    let log = server.log();
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 2, "{log}");
    for ((level, message), (path, status, bytes)) in lines.iter().zip([
        ("/healthz", "200", Some(healthz_bytes)),
        ("/nope", "404", None),
    ]) {
        assert_eq!(level, "INFO", "{message}");
        // peer "METHOD PATH" STATUS BYTESB MICROSECONDSus
        let words: Vec<&str> = message.split_whitespace().collect();
        assert_eq!(words.len(), 6, "{message}");
        assert_eq!(words[0], "127.0.0.1", "{message}");
        assert_eq!((words[1], words[2]), ("\"GET", &*format!("{path}\"")));
        assert_eq!(words[3], status, "{message}");
        let body: usize = words[4]
            .strip_suffix('B')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bytes in {message}"));
        if let Some(expected) = bytes {
            assert_eq!(body, expected, "{message}");
        }
        words[5]
            .strip_suffix("us")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("microseconds in {message}"));
    }
    assert!(
        !log.contains("QUERY-SECRET"),
        "a query string was logged:\n{log}"
    );

    server.restart_with("access_log = false");
    let before = access_lines(&server.log()).len();
    let mut c = server.connect();
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(c.get("/nope").status, 404);
    assert_eq!(
        access_lines(&server.log()).len(),
        before,
        "access_log = false still logs requests"
    );
}

#[test]
fn metrics_count_logins_and_responses_by_status_class() {
    let server =
        TestServer::start("login_rate_per_ip = 100/s burst 100\npassword_hashes_per_sec = 100");
    let mut c = server.connect();
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let read = |c: &mut Client| {
        let text = c.get("/metrics").text();
        let mut values: Vec<u64> = classes
            .iter()
            .map(|class| {
                metric_value(
                    &text,
                    &format!("chatd_http_responses_total{{class=\"{class}\"}}"),
                )
            })
            .collect();
        values.push(metric_value(&text, "chatd_logins_total{result=\"ok\"}"));
        values.push(metric_value(&text, "chatd_logins_total{result=\"failed\"}"));
        values
    };
    let before = read(&mut c); // itself a 2xx, counted once it is sent
    c.register("mona", "mona-password"); // 201
    c.login("mona", "mona-password"); // 200, login ok
    for (user, pw) in [("mona", "wrong-password"), ("nobody", "mona-password")] {
        let r = c.post_json("/login", &json!({"username": user, "password": pw}));
        assert_error(&r, 401, "invalid_credentials"); // login failed
    }
    assert_eq!(c.get("/nope").status, 404);
    let r = c.get("/style.css"); // 200
    let etag = r.header("etag").expect("etag").to_string();
    let r = c.request("GET", "/style.css", &[("If-None-Match", &etag)], b"");
    assert_eq!(r.status, 304);
    let after = read(&mut c);
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // 1xx 2xx 3xx 4xx 5xx, logins ok, logins failed
    assert_eq!(delta, [0, 4, 1, 3, 0, 1, 2]);
}

/// A client configuration trusting the server's certificate that offers only `version`.
fn client_config_for(
    server: &TestServer,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(server.cert_path()).expect("read cert");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("PEM")).expect("trust anchor");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

#[test]
fn tls_1_3_is_the_default_and_tls_1_2_works_with_an_aead_ecdhe_suite() {
    let server = TestServer::start("");
    let mut c = server.connect();
    assert_eq!(
        c.tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(c.get("/healthz").status, 200);

    // A client that speaks only TLS 1.2 (rustls cannot offer 1.1 or lower, nor can
    // chatd accept them) gets an ECDHE key exchange and an AEAD cipher.
    let config = client_config_for(&server, &rustls::version::TLS12);
    let mut c = Client::connect(server.addr(), config, "localhost").expect("TLS 1.2 handshake");
    assert_eq!(
        c.tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!(
        "{:?}",
        c.tls
            .conn
            .negotiated_cipher_suite()
            .expect("a suite")
            .suite()
    );
    assert!(
        suite.starts_with("TLS_ECDHE_")
            && (suite.ends_with("_GCM_SHA256")
                || suite.ends_with("_GCM_SHA384")
                || suite.ends_with("_CHACHA20_POLY1305_SHA256")),
        "TLS 1.2 suite {suite}"
    );
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn api_answers_are_not_stored_and_static_files_are_revalidated() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let user = c.register("cache", "cache-password");
    assert_user(&user, "cache");
    let r = c.post_json(
        "/login",
        &serde_json::json!({"username": "cache", "password": "cache-password"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"), "/login");
    let token = r.json()["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");
    let answers = [
        c.request("GET", "/me", &[("Authorization", &auth)], b""),
        c.request("POST", "/refresh", &[("Authorization", &auth)], b""),
        c.post_json(
            "/register",
            &serde_json::json!({"username": "cache", "password": "cache-password"}),
        ),
        c.get("/me"),
        c.get("/healthz"),
        c.get("/metrics"),
        c.get("/no-such-file"),
        c.request("DELETE", "/me", &[], b""),
    ];
    for r in &answers {
        assert_eq!(
            r.header_all("cache-control"),
            ["no-store"],
            "{} {}",
            r.status,
            r.text()
        );
    }
    // Static files may be cached, but are checked again each time (ETag).
    let r = c.get("/index.html");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(r.header("etag").is_some());
}

#[test]
fn a_token_in_the_url_is_not_accepted() {
    let server = TestServer::start("");
    server.register("urly", "urly-password");
    let token = server.login("urly", "urly-password");
    let mut c = server.connect();
    for query in ["access_token", "token", "bearer", "jwt"] {
        let r = c.get(&format!("/me?{query}={token}"));
        assert_error(&r, 401, "unauthorized");
        let r = c.request(
            "GET",
            &format!("/ws?{query}={token}"),
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            b"",
        );
        assert_error(&r, 401, "unauthorized");
    }
    // The same token in the header is fine, and the access log never shows a query.
    assert_eq!(c.get_auth("/me?x=1", &token).status, 200);
    assert!(server.wait_for_log("\"GET /me\" 200", Duration::from_secs(5)));
    let log = server.log();
    assert!(!log.contains(&token), "the token is in the log");
    assert!(
        !log.contains("access_token"),
        "a query string is in the log"
    );
}
