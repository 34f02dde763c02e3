//! The client event loop: one mio `Poll`, edge-triggered, driving many non-blocking
//! rustls client connections, each either a WebSocket or a keep-alive HTTP client.
//!
//! Sockets are read and written until `WouldBlock`. Frames and requests queued during a
//! turn are gathered per connection and handed to rustls once, so a turn's output to a
//! connection becomes as few TLS records and writes as possible. Pings are answered
//! here; everything else the peer sends goes to the scenario's [`Handler`].
//!
//! Two kinds of misbehaving client for the robustness scenarios: a connection whose
//! reading is paused (its kernel receive buffer fills, the server's queue grows), and a
//! silent TCP connection that never sends a byte (only its end is recorded).

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use crate::frame::{self, MaskRng};
use crate::http;

/// Largest server frame payload accepted.
const MAX_FRAME: usize = 1 << 20;

/// Tokens of silent connections have this bit set (the others are indexes of `conns`).
const SILENT: usize = 1 << (usize::BITS - 2);

/// Where connections go and how they are secured.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Host header value.
    pub host: String,
}

/// What a new connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Upgrades to a WebSocket with this request, then speaks frames.
    WebSocket,
    /// Keep-alive HTTP: the scenario sends requests and gets responses.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 101 answer.
    Upgrading,
    /// WebSocket frames both ways.
    Open,
    /// HTTP requests and responses.
    Http,
}

/// One client connection.
struct Conn {
    socket: TcpStream,
    tls: ClientConnection,
    phase: Phase,
    /// The TCP connection is established (writes may start).
    connected: bool,
    /// Received plaintext not yet parsed; `in_start` is where the unparsed part begins.
    inbuf: Vec<u8>,
    in_start: usize,
    /// Plaintext queued this turn, handed to rustls at the flush.
    outbuf: Vec<u8>,
    in_flush_list: bool,
    /// When the connection was started (for the handshake latency).
    started_ns: u64,
    /// Readable events are ignored: the client behaves as one that stopped reading.
    reading_paused: bool,
    /// Set `reading_paused` as soon as the TLS handshake completes (the stuck scenario:
    /// a client that sends its request and never reads the answer).
    pause_after_handshake: bool,
}

/// A TCP connection that never sends a byte: a client stuck before its TLS handshake.
struct SilentConn {
    socket: TcpStream,
    started_ns: u64,
}

/// How a silent connection ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentEnd {
    pub id: usize,
    /// From the connect call to the end.
    pub after_ns: u64,
    /// `eof` (the server closed it), `reset`, or what else happened.
    pub how: String,
}

/// Lets a handler queue output on the connection it is being told about.
pub struct Out<'a> {
    buf: &'a mut Vec<u8>,
    rng: &'a mut MaskRng,
}

impl Out<'_> {
    /// Queues a masked text frame.
    pub fn text(&mut self, payload: &[u8]) {
        let mask = self.rng.next_mask();
        frame::encode_masked(self.buf, frame::OP_TEXT, payload, mask);
    }

    /// Queues a masked close frame with this status code.
    pub fn close(&mut self, code: u16) {
        let mask = self.rng.next_mask();
        frame::encode_masked(self.buf, frame::OP_CLOSE, &code.to_be_bytes(), mask);
    }

    /// Queues raw bytes (an HTTP request).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// What the scenario is told. `now_ns` is the bench clock when the bytes were read.
pub trait Handler {
    /// The WebSocket upgrade was answered with 101; `since_start_ns` is the time from
    /// the TCP connect to the answer (TCP + TLS handshake + upgrade).
    fn on_open(&mut self, id: usize, since_start_ns: u64, now_ns: u64, out: &mut Out<'_>);
    /// A text (or binary) frame from the server.
    fn on_text(&mut self, id: usize, payload: &[u8], now_ns: u64, out: &mut Out<'_>);
    /// An HTTP response on a keep-alive connection.
    fn on_response(
        &mut self,
        _id: usize,
        _status: u16,
        _body: &[u8],
        _now_ns: u64,
        _out: &mut Out<'_>,
    ) {
    }
    /// The connection failed or was closed by the server; it is gone.
    fn on_closed(&mut self, id: usize, reason: &str);
}

/// Counters kept by the loop itself.
#[derive(Debug, Default, Clone)]
pub struct NetCounters {
    pub pings_answered: u64,
    pub frames_in: u64,
}

/// The connections and the poller.
pub struct Net {
    poll: Poll,
    events: Events,
    target: Target,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    flush_list: Vec<usize>,
    rng: MaskRng,
    base: Instant,
    open: usize,
    /// This turn's readiness (token, readable, writable), reused across turns.
    ready: Vec<(usize, bool, bool)>,
    pub counters: NetCounters,
    silent: Vec<Option<SilentConn>>,
    /// Silent connections that ended, in the order they did.
    pub silent_ends: Vec<SilentEnd>,
    /// TLS client states made ahead of a burst, so `connect` is only the system call.
    spare_tls: Vec<ClientConnection>,
}

impl Net {
    pub fn new(target: Target, base: Instant) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            target,
            conns: Vec::new(),
            free: Vec::new(),
            flush_list: Vec::new(),
            rng: MaskRng::new(0x5DEE_CE66_D1CE_4E5B ^ u64::from(std::process::id())),
            base,
            open: 0,
            ready: Vec::new(),
            counters: NetCounters::default(),
            silent: Vec::new(),
            silent_ends: Vec::new(),
            spare_tls: Vec::new(),
        })
    }

    /// Nanoseconds since the run started, on the monotonic clock.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    fn new_tls(&self) -> io::Result<ClientConnection> {
        let mut tls =
            ClientConnection::new(self.target.tls.clone(), self.target.server_name.clone())
                .map_err(io::Error::other)?;
        // Our own output is bounded by the scenarios (pacing, windows); never Ok(0).
        tls.set_buffer_limit(None);
        Ok(tls)
    }

    /// Makes the TLS state (key share, ClientHello) of the next `n` connections now, so
    /// that a burst of connects is issued as fast as the system calls go.
    pub fn prepare_tls(&mut self, n: usize) -> io::Result<()> {
        self.spare_tls.reserve(n);
        for _ in 0..n {
            let tls = self.new_tls()?;
            self.spare_tls.push(tls);
        }
        Ok(())
    }

    /// Starts a connection: TCP connect, then the TLS handshake with `first` (the
    /// upgrade request, or a first HTTP request) queued behind it.
    pub fn connect(&mut self, kind: Kind, first: &[u8]) -> io::Result<usize> {
        let mut socket = TcpStream::connect(self.target.addr)?;
        socket.set_nodelay(true)?;
        let tls = match self.spare_tls.pop() {
            Some(tls) => tls,
            None => self.new_tls()?,
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.poll.registry().register(
            &mut socket,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let phase = match kind {
            Kind::WebSocket => Phase::Upgrading,
            Kind::Http => Phase::Http,
        };
        self.conns[id] = Some(Conn {
            socket,
            tls,
            phase,
            connected: false,
            inbuf: Vec::new(),
            in_start: 0,
            outbuf: first.to_vec(),
            in_flush_list: false,
            started_ns: self.now_ns(),
            reading_paused: false,
            pause_after_handshake: false,
        });
        self.open += 1;
        Ok(id)
    }

    /// Starts an HTTP connection that sends `request` once its TLS handshake is done and
    /// then never reads again, with a receive buffer of about `recv_buffer` bytes: the
    /// answer stays stuck in the server's queue instead of in this kernel's buffers.
    pub fn connect_stuck(&mut self, request: &[u8], recv_buffer: usize) -> io::Result<usize> {
        let id = self.connect(Kind::Http, request)?;
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            conn.pause_after_handshake = true;
        }
        self.shrink_recv_buffer(id, recv_buffer)?;
        Ok(id)
    }

    /// Asks for a kernel receive buffer of about `size` bytes on a connection, so that a
    /// client that stops reading leaves what it is sent in the server's queue rather
    /// than in this kernel's buffers.
    pub fn shrink_recv_buffer(&mut self, id: usize, size: usize) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return Ok(());
        };
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads one int through the pointer, which points at `size`;
        // the descriptor is the connection's open socket.
        let rc = unsafe {
            libc::setsockopt(
                conn.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Opens a TCP connection that will never send anything; the server is expected to
    /// close it (its end lands in `silent_ends`). Returns its id among silent ones.
    pub fn connect_silent(&mut self) -> io::Result<usize> {
        let mut socket = TcpStream::connect(self.target.addr)?;
        let id = self.silent.len();
        self.poll
            .registry()
            .register(&mut socket, Token(SILENT | id), Interest::READABLE)?;
        self.silent.push(Some(SilentConn {
            socket,
            started_ns: self.now_ns(),
        }));
        Ok(id)
    }

    /// Silent connections not ended yet.
    pub fn silent_open(&self) -> usize {
        self.silent.iter().flatten().count()
    }

    /// Closes every silent connection still open (without recording an end).
    pub fn close_silent(&mut self) {
        for slot in &mut self.silent {
            if let Some(mut conn) = slot.take() {
                let _ = self.poll.registry().deregister(&mut conn.socket);
            }
        }
    }

    /// Reads from a silent connection that became readable: only its end matters.
    fn silent_event(&mut self, id: usize) {
        let Some(conn) = self.silent.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let mut sink = [0u8; 512];
        let how = loop {
            match conn.socket.read(&mut sink) {
                Ok(0) => break "eof".to_string(),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset".to_string(),
                Err(e) => break format!("read: {e}"),
            }
        };
        let started_ns = conn.started_ns;
        let after_ns = self.now_ns().saturating_sub(started_ns);
        if let Some(mut conn) = self.silent[id].take() {
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
        self.silent_ends.push(SilentEnd { id, after_ns, how });
    }

    /// Stops reading a connection: the server's frames pile up in the kernel's buffers,
    /// then in the server's queue for it. Pings go unanswered too.
    pub fn pause_reading(&mut self, id: usize) {
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            conn.reading_paused = true;
        }
    }

    /// Reads again, at once: the edges that came while paused are gone.
    pub fn resume_reading(&mut self, id: usize, handler: &mut dyn Handler) {
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            conn.reading_paused = false;
            self.read(id, handler);
        }
    }

    /// Bytes waiting in a connection's kernel receive buffer (`FIONREAD`).
    pub fn unread_bytes(&self, id: usize) -> Option<u64> {
        let conn = self.conns.get(id).and_then(Option::as_ref)?;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points at `n`; the
        // descriptor is the connection's open socket.
        let rc = unsafe { libc::ioctl(conn.socket.as_raw_fd(), libc::FIONREAD, &mut n) };
        (rc == 0).then_some(n.max(0) as u64)
    }

    /// Queues a masked text frame on an open WebSocket.
    pub fn send_text(&mut self, id: usize, payload: &[u8]) {
        let mask = self.rng.next_mask();
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            frame::encode_masked(&mut conn.outbuf, frame::OP_TEXT, payload, mask);
            queue_flush(&mut self.flush_list, conn, id);
        }
    }

    /// Queues a masked close frame with this status code (the server answers with its
    /// own close and ends the connection, which the handler then hears of).
    pub fn send_close(&mut self, id: usize, code: u16) {
        let mask = self.rng.next_mask();
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            frame::encode_masked(&mut conn.outbuf, frame::OP_CLOSE, &code.to_be_bytes(), mask);
            queue_flush(&mut self.flush_list, conn, id);
        }
    }

    /// Queues raw bytes (an HTTP request).
    pub fn send_raw(&mut self, id: usize, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            conn.outbuf.extend_from_slice(bytes);
            queue_flush(&mut self.flush_list, conn, id);
        }
    }

    /// Closes a connection (TCP FIN; the server sees the end of its stream).
    pub fn close(&mut self, id: usize) {
        if let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.socket);
            self.free.push(id);
            self.open -= 1;
        }
    }

    /// One turn: wait for readiness up to `timeout`, serve every ready connection,
    /// then flush everything queued (by handlers and by the caller before this call).
    pub fn turn(&mut self, handler: &mut dyn Handler, timeout: Duration) -> io::Result<()> {
        self.flush_all(handler);
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token().0,
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable(),
            )
        }));
        for &(id, readable, writable) in &ready {
            if id & SILENT != 0 {
                if readable {
                    self.silent_event(id & !SILENT);
                }
                continue;
            }
            let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            if !conn.connected {
                match conn.socket.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        self.fail(id, handler, &format!("connect: {e}"));
                        continue;
                    }
                    Ok(None) => {}
                }
                match conn.socket.peer_addr() {
                    Ok(_) => conn.connected = true,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => {
                        self.fail(id, handler, &format!("connect: {e}"));
                        continue;
                    }
                }
                queue_flush(&mut self.flush_list, conn, id);
            }
            if readable && !conn.reading_paused {
                self.read(id, handler);
            }
            if writable && let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
                queue_flush(&mut self.flush_list, conn, id);
            }
        }
        self.ready = ready;
        self.flush_all(handler);
        Ok(())
    }

    fn fail(&mut self, id: usize, handler: &mut dyn Handler, reason: &str) {
        self.close(id);
        handler.on_closed(id, reason);
    }

    /// Reads and decrypts until `WouldBlock`, then hands complete input to the handler.
    fn read(&mut self, id: usize, handler: &mut dyn Handler) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let mut eof = false;
        loop {
            let mut probe = ShortReadProbe {
                socket: &mut conn.socket,
                short: false,
            };
            let drained = match conn.tls.read_tls(&mut probe) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => probe.short,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let reason = format!("read: {e}");
                    return self.fail(id, handler, &reason);
                }
            };
            let state = match conn.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    let reason = format!("tls: {e}");
                    return self.fail(id, handler, &reason);
                }
            };
            if conn.pause_after_handshake && !conn.tls.is_handshaking() {
                conn.pause_after_handshake = false;
                conn.reading_paused = true;
                break;
            }
            let available = state.plaintext_bytes_to_read();
            let closed = state.peer_has_closed();
            if available > 0 {
                if conn.in_start > 0 && conn.in_start == conn.inbuf.len() {
                    conn.inbuf.clear();
                    conn.in_start = 0;
                }
                let start = conn.inbuf.len();
                conn.inbuf.resize(start + available, 0);
                if let Err(e) = conn.tls.reader().read_exact(&mut conn.inbuf[start..]) {
                    let reason = format!("tls read: {e}");
                    return self.fail(id, handler, &reason);
                }
            }
            if closed {
                eof = true;
                break;
            }
            if drained {
                break;
            }
        }
        let now_ns = self.now_ns();
        if let Err(reason) = self.parse(id, handler, now_ns) {
            return self.fail(id, handler, &reason);
        }
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            if conn.tls.wants_write() || !conn.outbuf.is_empty() {
                queue_flush(&mut self.flush_list, conn, id);
            }
            if eof {
                self.fail(id, handler, "closed by server");
            }
        }
    }

    /// Hands every complete response or frame in the input to the handler.
    fn parse(&mut self, id: usize, handler: &mut dyn Handler, now_ns: u64) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return Ok(());
        };
        let mut pos = conn.in_start;
        loop {
            let buf = &conn.inbuf[pos..];
            if buf.is_empty() {
                break;
            }
            match conn.phase {
                Phase::Upgrading | Phase::Http => {
                    let head = match http::parse_head(buf) {
                        Ok(Some(head)) => head,
                        Ok(None) => break,
                        Err(e) => return Err(e.0.to_string()),
                    };
                    let total = head.head_len + head.body_len;
                    if buf.len() < total {
                        break;
                    }
                    let body = &buf[head.head_len..total];
                    let mut out = Out {
                        buf: &mut conn.outbuf,
                        rng: &mut self.rng,
                    };
                    if conn.phase == Phase::Http {
                        handler.on_response(id, head.status, body, now_ns, &mut out);
                    } else if head.status == 101 {
                        conn.phase = Phase::Open;
                        let since = now_ns.saturating_sub(conn.started_ns);
                        handler.on_open(id, since, now_ns, &mut out);
                    } else {
                        let body = String::from_utf8_lossy(body);
                        let code = crate::payload::error_code(body.as_bytes());
                        return Err(format!("upgrade refused: {} {code}", head.status));
                    }
                    pos += total;
                }
                Phase::Open => {
                    let frame = match frame::decode_server(buf, MAX_FRAME) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => return Err(format!("websocket: {e}")),
                    };
                    let payload =
                        &buf[frame.payload_start..frame.payload_start + frame.payload_len];
                    self.counters.frames_in += 1;
                    match frame.opcode {
                        frame::OP_TEXT | frame::OP_BINARY => {
                            let mut out = Out {
                                buf: &mut conn.outbuf,
                                rng: &mut self.rng,
                            };
                            handler.on_text(id, payload, now_ns, &mut out);
                        }
                        frame::OP_PING => {
                            let mask = self.rng.next_mask();
                            frame::encode_masked(&mut conn.outbuf, frame::OP_PONG, payload, mask);
                            self.counters.pings_answered += 1;
                        }
                        frame::OP_CLOSE => {
                            let code = if payload.len() >= 2 {
                                u16::from_be_bytes([payload[0], payload[1]])
                            } else {
                                1005
                            };
                            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                            return Err(format!("websocket close {code} {reason}"));
                        }
                        _ => {}
                    }
                    pos += frame.total_len;
                }
            }
        }
        if pos == conn.inbuf.len() {
            conn.inbuf.clear();
            conn.in_start = 0;
            if conn.inbuf.capacity() > 64 * 1024 {
                conn.inbuf = Vec::new();
            }
        } else if pos > 64 * 1024 {
            conn.inbuf.drain(..pos);
            conn.in_start = 0;
        } else {
            conn.in_start = pos;
        }
        Ok(())
    }

    fn flush_all(&mut self, handler: &mut dyn Handler) {
        // Flushing never queues more flushes (a failure only closes), so one pass does.
        let mut list = std::mem::take(&mut self.flush_list);
        for &id in &list {
            if let Err(reason) = self.flush(id) {
                self.fail(id, handler, &reason);
            }
        }
        list.clear();
        self.flush_list = list;
    }

    /// Hands queued plaintext to rustls and writes TLS records until `WouldBlock`.
    fn flush(&mut self, id: usize) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return Ok(());
        };
        conn.in_flush_list = false;
        if !conn.outbuf.is_empty() {
            use std::io::Write;
            conn.tls
                .writer()
                .write_all(&conn.outbuf)
                .map_err(|e| format!("tls write: {e}"))?;
            conn.outbuf.clear();
            if conn.outbuf.capacity() > 64 * 1024 {
                conn.outbuf = Vec::new();
            }
        }
        if !conn.connected {
            return Ok(());
        }
        while conn.tls.wants_write() {
            match conn.tls.write_tls(&mut conn.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }
}

/// Remembers whether the last read was short. A TCP read that returns less than asked
/// has emptied the receive queue at that moment, and data arriving later raises a new
/// edge: the loop can stop there instead of paying one more `read` for `WouldBlock`.
struct ShortReadProbe<'a> {
    socket: &'a mut TcpStream,
    short: bool,
}

impl Read for ShortReadProbe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

fn queue_flush(list: &mut Vec<usize>, conn: &mut Conn, id: usize) {
    if !conn.in_flush_list {
        conn.in_flush_list = true;
        list.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Handler for Nothing {
        fn on_open(&mut self, _: usize, _: u64, _: u64, _: &mut Out<'_>) {}
        fn on_text(&mut self, _: usize, _: &[u8], _: u64, _: &mut Out<'_>) {}
        fn on_closed(&mut self, _: usize, _: &str) {}
    }

    fn target(addr: SocketAddr) -> Target {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Target {
            addr,
            tls: Arc::new(tls),
            server_name: ServerName::try_from("localhost").unwrap(),
            host: "localhost".into(),
        }
    }

    #[test]
    fn silent_connections_send_nothing_and_record_their_end() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut net = Net::new(target(listener.local_addr().unwrap()), Instant::now()).unwrap();
        let first = net.connect_silent().unwrap();
        let second = net.connect_silent().unwrap();
        assert_eq!(net.silent_open(), 2);
        let (mut a, _) = listener.accept().unwrap();
        let (b, _) = listener.accept().unwrap();
        for _ in 0..20 {
            net.turn(&mut Nothing, Duration::from_millis(10)).unwrap();
        }
        assert!(net.silent_ends.is_empty(), "open and quiet: no end yet");
        a.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        assert!(
            matches!(a.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "a silent connection sends nothing"
        );
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(5);
        while net.silent_ends.is_empty() && Instant::now() < deadline {
            net.turn(&mut Nothing, Duration::from_millis(10)).unwrap();
        }
        assert_eq!(net.silent_ends.len(), 1);
        let end = &net.silent_ends[0];
        assert_eq!((end.id, end.how.as_str()), (second, "eof"));
        assert!(end.after_ns > 0);
        assert_eq!(net.silent_open(), 1);
        net.close_silent();
        assert_eq!(net.silent_open(), 0);
        assert!(net.silent_ends.iter().all(|e| e.id != first));
    }
}
