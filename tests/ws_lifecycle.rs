//! WebSocket limits and lifetimes: token expiry and renewal, password changes, flooding,
//! slow consumers, frame limits, keepalive, shutdown and crash durability.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::TestServer;
use common::ws::{self, Ended};
use serde_json::json;
use tungstenite::Message;

#[test]
fn auth_renews_the_token_and_expiry_closes_with_4002() {
    let server = TestServer::start("jwt_ttl_secs = 3");
    let (mut renewed, token) = ws::user(&server, "alice");
    let (mut left_alone, _) = ws::connect(&server, &token);
    let expires = common::token_claims(&token)["exp"].as_i64().unwrap();
    // Refresh over HTTP, then hand the fresh token to the open socket.
    let mut c = server.connect();
    let resp = c.request(
        "POST",
        "/refresh",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(resp.status, 200);
    let fresh = resp.json()["token"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1100));
    let refresh2 = c.request(
        "POST",
        "/refresh",
        &[("Authorization", &format!("Bearer {fresh}"))],
        b"",
    );
    let fresher = refresh2.json()["token"].as_str().unwrap().to_string();
    let data = renewed.ok(json!({"type":"auth","token":fresher}));
    let expires_at = data["expires_at"].as_i64().unwrap();
    assert!(expires_at > common::unix_now() * 1000, "{data}");
    assert_eq!(
        renewed.error(json!({"type":"auth","token":"junk"})),
        "unauthorized"
    );

    assert_eq!(
        left_alone.ended(Duration::from_secs(6)),
        Ended::Close(4002, "token expired".into())
    );
    assert!(common::unix_now() >= expires, "not before the token's exp");
    // The renewed connection outlives the first token.
    assert_eq!(renewed.ok(json!({"type":"ping"})), json!({}));
    assert_eq!(
        renewed.ended(Duration::from_secs(6)),
        Ended::Close(4002, "token expired".into()),
        "and expires with the renewed one"
    );
}

#[test]
fn auth_with_an_expired_token_or_one_expiring_sooner() {
    let server = TestServer::start_with_env("", &[("SECRET_KEY", common::TEST_SECRET)]);
    let id = server.register("alice", "password-123")["id"]
        .as_i64()
        .unwrap();
    let token = server.login("alice", "password-123"); // valid for an hour
    let (mut a, _) = ws::connect(&server, &token);
    let now = common::unix_now();
    let sign = |iat: i64, exp: i64| {
        common::sign_hs256(
            &common::claims_for(id, "alice", iat, exp, 0),
            common::TEST_SECRET.as_bytes(),
        )
    };
    assert_eq!(
        a.error(json!({"type":"auth","token":sign(now - 7200, now - 3600)})),
        "token_expired"
    );
    assert_eq!(a.ok(json!({"type":"ping"})), json!({}), "still open");
    // A renewal may shorten the session: the close comes at the new expiry, not at
    // the next deadline armed before it (a keepalive ping 25 s later).
    let data = a.ok(json!({"type":"auth","token":sign(now, now + 2)}));
    assert_eq!(data["expires_at"], (now + 2) * 1000);
    assert_eq!(
        a.ended(Duration::from_secs(6)),
        Ended::Close(4002, "token expired".into())
    );
    assert!(common::unix_now() >= now + 2, "not before the token's exp");
}

#[test]
fn auth_with_another_users_token_is_refused() {
    let server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    server.register("bob", "password-123");
    let bob = server.login("bob", "password-123");
    assert_eq!(a.error(json!({"type":"auth","token":bob})), "unauthorized");
}

#[test]
fn password_change_closes_the_users_sockets_with_4003() {
    let server = TestServer::start("");
    let (mut a, token) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    let mut c = server.connect();
    let resp = c.send_json(
        "PUT",
        "/me",
        &json!({"current_password":"password-123","new_password":"password-456"}),
        Some(&token),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        a.ended(Duration::from_secs(5)),
        Ended::Close(4003, "credentials changed".into())
    );
    assert_eq!(b.ok(json!({"type":"ping"})), json!({}), "others unaffected");
}

#[test]
fn a_flooding_client_is_rate_limited_then_closed_with_1008() {
    // One request refills every 12 s: the forty pings are all read long before, however
    // slow the machine, so the counts below are exact.
    let server = TestServer::start("ws_rate = 5/min burst 5");
    let (mut flood, _) = ws::user(&server, "flood");
    let (mut calm, _) = ws::user(&server, "calm");
    for i in 0..40 {
        flood.send_json(&json!({"type":"ping","ref":i}));
    }
    let mut ok = 0;
    let mut limited = 0;
    let end = loop {
        match flood.socket.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "reply" {
                    if v["ok"] == true {
                        ok += 1;
                    } else {
                        assert_eq!(v["error"]["code"], "rate_limited");
                        limited += 1;
                    }
                }
            }
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("read: {e}"),
        }
    };
    assert_eq!(end, Some(1008));
    assert_eq!(ok, 5, "the burst went through, then the limit");
    // The fifth refusal reaches the burst and closes instead of being answered.
    assert_eq!(limited, 4, "rate_limited replies before the close");
    assert_eq!(calm.ok(json!({"type":"ping"})), json!({}));
    assert_eq!(server.metric("chatd_ws_rate_limited_total"), 5);
}

#[test]
fn a_steady_flood_is_closed_with_1008_and_the_allowed_rate_never_is() {
    let server = TestServer::start("ws_rate = 2/s burst 10");
    let (mut flood, _) = ws::user(&server, "flood");
    let (mut calm, _) = ws::user(&server, "calm");
    let start = Instant::now();
    let flood_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The calm client asks at most every 600 ms, below ws_rate (a slow machine only
    // spaces its requests further), until the flood is closed and a while after:
    // never refused.
    let calm = std::thread::spawn({
        let flood_closed = flood_closed.clone();
        move || {
            let mut answered = 0;
            while answered < 5 || !flood_closed.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "the flood was never closed"
                );
                assert_eq!(calm.ok(json!({"type":"ping"})), json!({}));
                answered += 1;
                std::thread::sleep(Duration::from_millis(600));
            }
            assert_eq!(calm.ok(json!({"type":"ping"})), json!({}));
            answered + 1
        }
    });
    // The flood is 10/s, five times ws_rate, evenly spread (a late send is not caught
    // up): between two allowed requests come only four refused ones, never a burst's
    // worth in a row, yet it must be closed. A tenth of a second between sends is kept
    // even by a busy machine.
    let gap = Duration::from_millis(100);
    let mut next_send = start;
    let (mut allowed, mut limited) = (0, 0);
    let close = 'flood: loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a steady flood at five times ws_rate was never closed \
             ({allowed} allowed, {limited} rate_limited)"
        );
        let now = Instant::now();
        if now >= next_send {
            flood.send_json(&json!({"type":"ping"}));
            next_send = now + gap;
        }
        let wait = next_send.saturating_duration_since(Instant::now());
        flood
            .socket
            .get_mut()
            .sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        loop {
            match flood.socket.read() {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "reply" {
                        if v["ok"] == true {
                            allowed += 1;
                        } else {
                            assert_eq!(v["error"]["code"], "rate_limited");
                            limited += 1;
                        }
                    }
                }
                Ok(Message::Close(frame)) => break 'flood frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if common::is_timeout(&e) => {
                    break;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    };
    flood_closed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(close, Some(1008));
    // The refusal that reaches the burst closes instead of being answered.
    assert!(
        limited + 1 >= 10,
        "refused at least a burst in all: {limited} answered"
    );
    assert!(allowed >= 10, "the burst went through first: {allowed}");
    let answered = calm
        .join()
        .expect("the calm client was never refused or closed");
    assert!(answered >= 6, "{answered}");
}

#[test]
fn a_client_that_never_reads_is_cut_at_max_outbound_bytes() {
    let server = TestServer::start("max_outbound_bytes = 65536\nws_rate = 1000/s burst 1000");
    let (mut sender, _) = ws::user(&server, "sender");
    let (mut reader, _) = ws::user(&server, "reader");
    let (mut sleeper, _) = ws::user(&server, "sleeper");
    // The sleeper never reads; its kernel buffers fill, then its queue passes the cap.
    let text = "x".repeat(3900);
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while server.metric("chatd_ws_closed_total{reason=\"slow_consumer\"}") == 0 {
        assert!(Instant::now() < deadline, "the sleeper was never cut off");
        for _ in 0..50 {
            sender.send_json(&json!({"type":"send","room":"lobby","text":text}));
            sent += 1;
        }
        // The reader keeps up and keeps receiving everything; so does the sender, which
        // is in the room too (a client that reads nothing is the sleeper alone).
        while received < sent {
            reader.next_of_type("message");
            sender.next_of_type("message");
            received += 1;
        }
    }
    // Read at once, within the linger the server grants the close frame: behind what
    // the buffers already hold comes the close, not a reset.
    let (ended, buffered) = sleeper.ended_after(Duration::from_secs(10));
    assert_eq!(ended, Ended::Close(1013, "too slow to read".into()));
    // What the kernel held for the sleeper: a WebSocket's send buffer is capped, so a
    // client that stops reading pins a bounded amount of kernel memory too (Linux
    // would otherwise let the buffer grow to several MiB).
    eprintln!("bytes buffered for the sleeper when it was cut: {buffered}");
    assert!(
        buffered < 1536 * 1024,
        "{buffered} bytes were buffered for a client that did not read"
    );
    sender.ok(json!({"type":"send","room":"lobby","text":"still flowing"}));
    assert_eq!(reader.next_of_type("message")["text"], "still flowing");
}

#[test]
fn a_history_page_larger_than_max_outbound_bytes_is_delivered_to_a_reading_client() {
    let server = TestServer::start("ws_rate = 1000/s burst 1000");
    let (mut alice, _) = ws::user(&server, "alice");
    // 100 texts of 4000 four-byte characters: each request fits max_message_bytes, the
    // page of all of them is 1.6 MB, more than the 1 MiB max_outbound_bytes. The cap
    // bounds a backlog; one answer the protocol allows must still go out whole.
    let text = "\u{1F600}".repeat(4000);
    for _ in 0..100 {
        alice.ok(json!({"type":"send","room":"lobby","text":text}));
    }
    let page = alice.ok(json!({"type":"history","room":"lobby","limit":100}));
    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 100);
    assert!(messages.iter().all(|m| m["text"] == text));
    assert_eq!(
        alice.ok(json!({"type":"ping"})),
        json!({}),
        "still connected"
    );
}

#[test]
fn a_client_that_pings_without_reading_is_cut_at_max_outbound_bytes() {
    let server = TestServer::start("max_outbound_bytes = 65536");
    let (mut flood, _) = ws::user(&server, "flood");
    let (mut calm, _) = ws::user(&server, "calm");
    let slow = "chatd_ws_closed_total{reason=\"slow_consumer\"}";
    // Every ping asks for a pong of the same size; the flooder reads none of them, so
    // once the kernel buffers are full the pongs queue up in the server.
    let payload = vec![7u8; 125];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pings = 0u64;
    'flood: while server.metric(slow) == 0 {
        assert!(
            Instant::now() < deadline,
            "the ping flooder was never cut off ({pings} pings)"
        );
        // Batches, and a pause: /metrics has the HTTP rate limit.
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..5000 {
            if flood
                .socket
                .write(Message::Ping(payload.clone().into()))
                .is_err()
            {
                break 'flood;
            }
            pings += 1;
        }
        if flood.socket.flush().is_err() {
            break;
        }
    }
    // Read at once, within the linger: the pongs already in the buffers, then the close.
    assert_eq!(
        flood.ended(Duration::from_secs(10)),
        Ended::Close(1013, "too slow to read".into())
    );
    assert_eq!(server.metric(slow), 1, "closed as a slow consumer");
    assert_eq!(
        calm.ok(json!({"type":"ping"})),
        json!({}),
        "others are served"
    );
}

#[test]
fn binary_and_oversized_frames_close_with_1003_and_1009() {
    let server = TestServer::start("max_message_bytes = 1024\nmax_text_chars = 1000");
    let (mut a, token) = ws::user(&server, "alice");
    a.socket.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(a.close_code(Duration::from_secs(5)), 1003);
    let (mut b, _) = ws::connect(&server, &token);
    b.send_text(&"x".repeat(2000));
    assert_eq!(b.close_code(Duration::from_secs(5)), 1009);
}

#[test]
fn a_data_frame_inside_a_fragmented_message_closes_with_1002() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let first = Frame::message(b"half".to_vec(), OpCode::Data(Data::Text), false);
    let binary = Frame::message(vec![1, 2], OpCode::Data(Data::Binary), true);
    a.socket.send(Message::Frame(first)).unwrap();
    a.socket.send(Message::Frame(binary)).unwrap();
    assert_eq!(a.close_code(Duration::from_secs(5)), 1002);
}

#[test]
fn registered_close_codes_are_echoed_and_others_are_protocol_errors() {
    use tungstenite::protocol::CloseFrame;
    let server = TestServer::start("");
    let (_, token) = ws::user(&server, "alice");
    for (code, echoed) in [(1014, 1014), (1012, 1012), (3000, 3000), (1015, 1002)] {
        let (mut c, _) = ws::connect(&server, &token);
        c.socket
            .close(Some(CloseFrame {
                code: code.into(),
                reason: "".into(),
            }))
            .unwrap();
        assert_eq!(c.close_code(Duration::from_secs(5)), echoed, "{code}");
    }
}

#[test]
fn pings_keep_a_reading_client_alive_and_silence_closes_with_4000() {
    let server = TestServer::start("ws_ping_secs = 1\nws_idle_timeout_secs = 2");
    let (mut quiet, token) = ws::user(&server, "alice");
    let (mut lively, _) = ws::connect(&server, &token);
    // The lively client keeps reading, so tungstenite answers every ping with a pong,
    // until the quiet one has been closed and it has seen two pings (however long a
    // busy machine takes for either); then it asks something.
    let quiet_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lively = std::thread::spawn({
        let quiet_closed = quiet_closed.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut pings = 0;
            while pings < 2 || !quiet_closed.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "{pings} pings in 60 s");
                lively
                    .socket
                    .get_mut()
                    .sock
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                match lively.socket.read() {
                    Ok(Message::Ping(_)) => pings += 1,
                    Ok(Message::Close(frame)) => panic!("lively client closed: {frame:?}"),
                    _ => {}
                }
                let _ = lively.socket.flush();
            }
            lively
                .socket
                .get_mut()
                .sock
                .set_read_timeout(Some(common::IO_TIMEOUT))
                .unwrap();
            assert_eq!(lively.ok(json!({"type":"ping"})), json!({}));
            pings
        }
    });
    // The quiet client reads nothing (so sends no pong): it is closed. (Reading it
    // before then would answer the pings.)
    let idle_closed = server.wait_for_metric(
        "chatd_ws_closed_total{reason=\"idle\"}",
        1,
        Duration::from_secs(30),
    );
    assert!(idle_closed, "the quiet client was never closed");
    assert_eq!(
        quiet.ended(Duration::from_secs(10)),
        Ended::Close(4000, "idle timeout".into())
    );
    quiet_closed.store(true, std::sync::atomic::Ordering::SeqCst);
    let pings = lively
        .join()
        .expect("the lively client was kept open and answered");
    assert!(pings >= 2, "pinged again and again: {pings}");
}

#[test]
fn a_client_ping_gets_a_pong_with_the_same_payload() {
    let server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    for payload in [&b"hello"[..], b"", &[0xA5; 125]] {
        a.socket
            .send(Message::Ping(payload.to_vec().into()))
            .unwrap();
        let pong = loop {
            match a.socket.read().expect("read") {
                Message::Pong(p) => break p,
                Message::Text(t) => panic!("unexpected frame {t}"),
                _ => {}
            }
        };
        assert_eq!(&pong[..], payload);
    }
    assert_eq!(a.ok(json!({"type":"ping"})), json!({}));
}

/// A client frame (masked, as RFC 6455 requires) with this opcode and payload.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The complete server frames at the start of `bytes`: (opcode, payload).
fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let (len, head) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if rest.len() < head + len {
            break;
        }
        frames.push((rest[0] & 0x0f, rest[head..head + len].to_vec()));
        rest = &rest[head + len..];
    }
    frames
}

/// The code of the first close frame among `frames`, if there is one.
fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames
        .iter()
        .find(|(opcode, _)| *opcode == 8)
        .map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Reads decrypted bytes into `received` for `wait`; true once the server has closed
/// (close_notify, FIN or reset).
fn receive_for(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    received: &mut Vec<u8>,
    wait: Duration,
) -> bool {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.sock.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if common::is_timeout(&e) => {}
            Err(_) => return true,
        }
    }
}

#[test]
fn a_frame_trickled_in_a_record_per_byte_runs_into_the_idle_timeout() {
    let ws_idle = Duration::from_secs(3);
    let server = TestServer::start("ws_ping_secs = 1\nws_idle_timeout_secs = 3");
    let (mut a, _) = ws::user(&server, "alice");
    let opened = Instant::now();
    // One request frame, each byte in a TLS record of its own, four records a second:
    // about 15 s for the frame. Records keep arriving and their bytes reach the frame
    // decoder, but no frame is complete before the idle timeout, and the server's
    // pings are not answered: as far as the protocol goes the client is silent.
    let frame = client_frame(
        0x1,
        br#"{"type":"ping","ref":"one byte at a time, four a second"}"#,
    );
    let stream = a.socket.get_mut();
    let mut received = Vec::new();
    let mut closed = false;
    for &b in &frame {
        let record = common::seal(&mut stream.conn, &[b]);
        closed = stream.sock.write_all(&record).is_err()
            || receive_for(stream, &mut received, Duration::from_millis(250));
        // No upper bound in time: a late close on a busy machine is still the idle
        // timeout's, as long as the frame never completed (checked below).
        if closed || close_code(&server_frames(&received)).is_some() {
            break;
        }
    }
    let closed_after = opened.elapsed();
    let frames = server_frames(&received);
    assert_eq!(
        close_code(&frames),
        Some(4000),
        "no idle close (server closed the connection: {closed}, frames: {frames:?})"
    );
    assert!(
        closed_after >= ws_idle - Duration::from_millis(500),
        "closed before the idle timeout: {closed_after:?}"
    );
    assert!(
        frames.iter().all(|(opcode, _)| *opcode != 0x1),
        "the frame never completed, so nothing was answered: {frames:?}"
    );
    assert_eq!(server.metric("chatd_ws_closed_total{reason=\"idle\"}"), 1);
}

#[test]
fn a_request_then_a_close_frame_then_the_fin_get_the_reply_and_the_close_echo() {
    let server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    assert_eq!(a.next_of_type("presence")["user"], "bob");
    let request = json!({"type":"send","room":"lobby","text":"last words","ref":"last"});
    let mut bytes = client_frame(0x1, request.to_string().as_bytes());
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    bytes.extend(client_frame(0x8, &close));
    let stream = a.socket.get_mut();
    // Corked, the request, the close frame and the FIN leave in one segment: the
    // server reads them in one pass, and sees the end of the input at once.
    let cork: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream.sock),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&cork as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_CORK");
    stream.write_all(&bytes).unwrap();
    stream.flush().unwrap();
    stream.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut received = Vec::new();
    let closed = receive_for(stream, &mut received, Duration::from_secs(5));
    let frames = server_frames(&received);
    let texts: Vec<serde_json::Value> = frames
        .iter()
        .filter(|(opcode, _)| *opcode == 0x1)
        .map(|(_, payload)| serde_json::from_slice(payload).unwrap())
        .collect();
    let reply = texts
        .iter()
        .find(|t| t["type"] == "reply")
        .unwrap_or_else(|| panic!("no reply before the close; frames: {frames:?}"));
    assert_eq!(reply["ref"], "last");
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        texts
            .iter()
            .any(|t| t["type"] == "message" && t["text"] == "last words"),
        "{texts:?}"
    );
    assert_eq!(
        close_code(&frames),
        Some(1000),
        "the close is echoed: {frames:?}"
    );
    assert_eq!(
        frames.last().map(|(opcode, _)| *opcode),
        Some(8),
        "close comes last"
    );
    assert!(
        closed,
        "the server closed the connection after the close frame"
    );
    // The message was stored and fanned out.
    assert_eq!(b.next_of_type("message")["text"], "last words");
    assert_eq!(b.next_of_type("presence")["event"], "leave");
}

#[test]
fn an_upgrade_that_completes_during_shutdown_is_refused_with_503() {
    let mut server = TestServer::start("");
    server.register("alice", "password-123");
    let token = server.login("alice", "password-123");
    let mut c = server.connect();
    let auth = format!("Bearer {token}");
    let request = c.build_request(
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            ("Authorization", &auth),
        ],
        b"",
    );
    let (first, rest) = request.split_at(request.len() / 2);
    c.send(first);
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    // The listener goes away when the shutdown begins.
    let addr = server.addr();
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
        }),
        "still accepting after SIGTERM"
    );
    // The rest of the upgrade arrives after the WebSockets were sent 1001: a new one
    // would not get it, and would be cut when the server exits.
    c.send(rest);
    let r = c.read_response();
    common::assert_error(&r, 503, "unavailable");
    assert!(r.closes(), "a refused upgrade closes the connection");
    c.assert_closed();
    let status = server.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_sends_1001_to_every_websocket() {
    let mut server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    server.signal(libc::SIGTERM);
    assert_eq!(
        a.ended(Duration::from_secs(5)),
        Ended::Close(1001, "going away".into())
    );
    assert_eq!(
        b.ended(Duration::from_secs(5)),
        Ended::Close(1001, "going away".into())
    );
    let status = server.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
}

#[test]
fn kill_9_after_acknowledged_sends_loses_nothing() {
    let mut server = TestServer::start("ws_rate = 1000/s burst 1000");
    let (mut a, _) = ws::user(&server, "alice");
    server.register("bob", "password-123");
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let request = if i % 3 == 0 {
            json!({"type":"direct","to":"bob","text":format!("d{i}")})
        } else {
            json!({"type":"send","room":"lobby","text":format!("m{i}")})
        };
        acknowledged.push(a.ok(request)["id"].as_i64().unwrap());
    }
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(5)).expect("killed");
    server.restart();
    let token = server.login("alice", "password-123");
    let (mut a, _) = ws::connect(&server, &token);
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = a.ok(json!({"type":"history","room":"lobby","after":after,"limit":100}));
        for m in page["messages"].as_array().unwrap() {
            stored.push(m["id"].as_i64().unwrap());
        }
        after = *stored.last().unwrap_or(&after);
        if page["more"] == false {
            break;
        }
    }
    let dms = a.ok(json!({"type":"history","with":"bob","limit":100}));
    stored.extend(
        dms["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap()),
    );
    stored.sort_unstable();
    assert_eq!(stored, acknowledged);
}
