//! A blocking WebSocket client for the end-to-end tests: tungstenite over the harness's
//! verified TLS connection, with timeouts on every read.
//!
//! [`Ws::request`] sends a request with a fresh `ref` and returns its reply; events that
//! arrive meanwhile are kept, in order, for [`Ws::event`].

use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response as HandshakeResponse;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::{Client, IO_TIMEOUT, TestServer};

type Stream = StreamOwned<ClientConnection, TcpStream>;

/// An open WebSocket to chatd.
pub struct Ws {
    pub socket: WebSocket<Stream>,
    /// The 101 response (for header checks).
    pub response: HandshakeResponse,
    /// Frames received while waiting for a reply, oldest first.
    events: VecDeque<Value>,
    next_ref: u64,
}

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ws")
            .field("status", &self.response.status())
            .field("kept_events", &self.events.len())
            .finish()
    }
}

/// A refused upgrade: HTTP status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl Refused {
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// Opens a WebSocket with `Authorization: Bearer <token>` and reads the welcome frame.
pub fn connect(server: &TestServer, token: &str) -> (Ws, Value) {
    let auth = format!("Bearer {token}");
    let mut ws = try_connect(server, &[("Authorization", &auth)])
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}\n{}", server.log()));
    let welcome = ws.recv();
    assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
    (ws, welcome)
}

/// Registers `name` (password "password-123"), logs in and connects.
pub fn user(server: &TestServer, name: &str) -> (Ws, String) {
    server.register(name, "password-123");
    let token = server.login(name, "password-123");
    let (ws, _) = connect(server, &token);
    (ws, token)
}

/// Attempts an upgrade with these extra headers; Err holds the refusal.
pub fn try_connect(server: &TestServer, headers: &[(&str, &str)]) -> Result<Ws, Refused> {
    let url = format!("wss://localhost:{}/ws", server.addr().port());
    let mut request = url.into_client_request().expect("request");
    // Appended, not inserted: a header named twice is sent twice.
    for (name, value) in headers {
        request.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let client = Client::connect(server.addr(), server.client_config(), "localhost")
        .expect("TLS connection");
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
    match tungstenite::client::client_with_config(request, client.tls, Some(config)) {
        Ok((socket, response)) => Ok(Ws {
            socket,
            response,
            events: VecDeque::new(),
            next_ref: 0,
        }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(Refused { status, body })
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Ws {
    fn set_timeout(&mut self, timeout: Duration) {
        self.socket
            .get_mut()
            .sock
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    /// Sends one text frame.
    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .expect("send WebSocket frame");
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string());
    }

    /// The next text frame from the socket (not from the kept events), as JSON.
    fn read_frame(&mut self, timeout: Duration) -> Option<Value> {
        self.set_timeout(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    self.set_timeout(IO_TIMEOUT);
                    return Some(serde_json::from_str(&text).expect("frames are JSON"));
                }
                Ok(Message::Close(frame)) => panic!("unexpected close: {frame:?}"),
                Ok(Message::Binary(_)) => panic!("unexpected binary frame"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if super::is_timeout(&e) => {
                    self.set_timeout(IO_TIMEOUT);
                    return None;
                }
                Err(e) => panic!("WebSocket read failed: {e}"),
            }
            if Instant::now() >= deadline {
                self.set_timeout(IO_TIMEOUT);
                return None;
            }
        }
    }

    /// The next frame: a kept event first, else from the socket (panics after 5 s).
    pub fn recv(&mut self) -> Value {
        if let Some(event) = self.events.pop_front() {
            return event;
        }
        self.read_frame(IO_TIMEOUT)
            .expect("no frame within the timeout")
    }

    /// The next frame like [`Ws::recv`], or None if none arrives within `timeout`.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        self.read_frame(timeout)
    }

    /// Alias of [`Ws::recv`] for readability where an event is expected.
    pub fn event(&mut self) -> Value {
        self.recv()
    }

    /// The next frame of this type, skipping others (presence, say).
    pub fn next_of_type(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let frame = self.recv();
            if frame["type"] == kind {
                return frame;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} frame within the timeout"
            );
        }
    }

    /// Asserts that no frame is due to this client: the reply to a `ping` sent now is
    /// the next frame. A connection's frames leave in the order they were queued, and
    /// whatever a request answered earlier (another client's, say) queued for this
    /// client was queued before the ping is read, so it would arrive first. Unlike
    /// waiting a while for nothing, this cannot pass because the server was slow.
    pub fn assert_nothing_pending(&mut self) {
        if let Some(event) = self.events.pop_front() {
            panic!("unexpected frame: {event}");
        }
        let reply = self.request(json!({"type": "ping"}));
        assert_eq!(reply["ok"], true, "ping -> {reply}");
        if let Some(event) = self.events.pop_front() {
            panic!("unexpected frame before the reply to a ping: {event}");
        }
    }

    /// Sends `request` with a new `ref` and returns the reply carrying it; other frames
    /// received meanwhile are kept for [`Ws::recv`].
    pub fn request(&mut self, mut request: Value) -> Value {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        request["ref"] = json!(reference);
        self.send_json(&request);
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .read_frame(left)
                .unwrap_or_else(|| panic!("no reply to {request}"));
            if frame["type"] == "reply" && frame["ref"] == json!(reference) {
                return frame;
            }
            self.events.push_back(frame);
        }
    }

    /// The `data` of an ok reply (panics on an error reply).
    pub fn ok(&mut self, request: Value) -> Value {
        let reply = self.request(request.clone());
        assert_eq!(reply["ok"], true, "{request} -> {reply}");
        reply["data"].clone()
    }

    /// The error code of an error reply (panics on an ok reply).
    pub fn error(&mut self, request: Value) -> String {
        let reply = self.request(request.clone());
        assert_eq!(reply["ok"], false, "{request} -> {reply}");
        reply["error"]["code"].as_str().expect("code").to_string()
    }

    /// Reads until the connection ends (within `timeout`), skipping data frames.
    pub fn ended(&mut self, timeout: Duration) -> Ended {
        self.ended_after(timeout).0
    }

    /// Like `ended`, also counting the bytes of the data frames skipped on the way.
    pub fn ended_after(&mut self, timeout: Duration) -> (Ended, usize) {
        let deadline = Instant::now() + timeout;
        let mut skipped = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "connection still open after {timeout:?}");
            self.set_timeout(left);
            match self.socket.read() {
                Ok(Message::Close(Some(frame))) => {
                    let code = u16::from(frame.code);
                    return (Ended::Close(code, frame.reason.to_string()), skipped);
                }
                Ok(Message::Close(None)) => return (Ended::Close(1005, String::new()), skipped),
                Ok(message) => skipped += message.len(),
                Err(tungstenite::Error::Io(e)) if super::is_timeout(&e) => {}
                Err(_) => return (Ended::Dropped, skipped),
            }
        }
    }

    /// Waits for a close frame and returns its code.
    pub fn close_code(&mut self, timeout: Duration) -> u16 {
        match self.ended(timeout) {
            Ended::Close(code, _) => code,
            Ended::Dropped => panic!("connection dropped without a close frame"),
        }
    }
}
