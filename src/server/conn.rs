//! One client connection: its socket, rustls state, buffers, phase and deadlines.
//!
//! The methods here move bytes between the socket, rustls and the plaintext buffers;
//! they never interpret the plaintext. Writes go on until `WouldBlock`; reads until
//! `WouldBlock` or a short read (the socket buffer is empty: any later byte raises a new
//! edge), except once the peer has closed its side, when they go on to the EOF. A
//! budget cuts both short; the event loop then comes back without waiting for an edge.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::ServerConnection;

use super::outq::OutQueue;
use super::timers::ConnRef;
use crate::session::{HttpSession, HttpTimeouts, WsSession, WsTimeouts};

/// Largest plaintext handed to rustls at once: one full TLS record.
pub const MAX_RECORD: usize = 16 * 1024;

/// How long a closing connection may keep its socket open to drain the client's
/// unread input (so the kernel does not reset the connection before the client has
/// read our last response).
pub const LINGER: Duration = Duration::from_secs(2);

/// The configured durations a connection's deadlines are made of.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub http: HttpTimeouts,
    pub ws: WsTimeouts,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TLS handshake and HTTP/1.1 requests.
    Http,
    /// Upgraded: WebSocket frames both ways; the protocol state is in `Conn::ws`.
    WebSocket,
    /// Our side is finished: close_notify sent and the write half shut down. Input is
    /// read and discarded until EOF or the linger deadline.
    Closing,
}

/// How a read pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket returned `WouldBlock`: wait for the next readable edge.
    Drained,
    /// The read budget ran out with data possibly left: come back this or next turn.
    Budget,
    /// The peer closed its side (TCP FIN or TLS close_notify).
    Eof,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStatus {
    /// Nothing left to send.
    Done,
    /// The socket is full: wait for the writable edge.
    Blocked,
    /// The write budget ran out with the socket still taking more: flush again next
    /// turn (no edge will come for a socket that never filled).
    Budget,
}

/// Why a connection must be dropped at once.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    Tls(rustls::Error),
    /// The first byte was not a TLS handshake record: plain HTTP on the TLS port.
    NotTls,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "i/o: {e}"),
            ConnError::Tls(e) => write!(f, "tls: {e}"),
            ConnError::NotTls => f.write_str("not TLS"),
        }
    }
}

/// The socket as rustls reads it: remembers whether the last read came back short and
/// what the first byte of the first read was.
struct SocketReader<'a> {
    socket: &'a mut TcpStream,
    short: bool,
    first_byte: Option<u8>,
}

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.read(buf)?;
        self.short = n < buf.len();
        if n > 0 && self.first_byte.is_none() {
            self.first_byte = Some(buf[0]);
        }
        Ok(n)
    }
}

/// The socket as rustls writes to it. `send`/`sendmsg` rather than the `write`/`writev`
/// a `TcpStream` uses: on Linux the socket calls skip the file layer (`vfs_writev`,
/// `fdget_pos`), a measurable share of every small write when one broadcast becomes a
/// write per recipient (BENCHMARKS.md).
struct SocketWriter<'a>(&'a TcpStream);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send_with_flags(buf, libc::MSG_NOSIGNAL)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match bufs {
            [one] => self.write(one),
            _ => socket2::SockRef::from(self.0).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A client connection.
#[derive(Debug)]
pub struct Conn {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub tls: ServerConnection,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub generation: u32,
    pub phase: Phase,
    /// Decrypted input not yet consumed by the protocol.
    pub inbuf: Vec<u8>,
    /// Plaintext output not yet handed to rustls.
    pub out: OutQueue,
    /// The HTTP protocol state: requests, pipelining, the request and idle timers.
    pub http: HttpSession,
    /// Last time plaintext arrived or bytes were sent; the idle deadline counts from
    /// here. Bytes of a TLS record still incomplete do not count: a client sending a
    /// record a byte at a time has sent nothing yet.
    pub last_active: Instant,
    /// The deadline this connection has in the timer heap, if any.
    pub armed: Option<Instant>,
    /// End of the linger period once closing.
    pub linger_until: Option<Instant>,
    /// The first byte was checked to be a TLS handshake record.
    pub tls_checked: bool,
    /// Close once everything queued has been sent.
    pub close_when_flushed: bool,
    /// Already in the turn's list of connections to flush.
    pub in_flush_list: bool,
    /// A readiness event said the peer closed its side (or the socket failed). The FIN
    /// raises no edge of its own after that event, so reads go on past a short read
    /// until they see the EOF (or `WouldBlock`).
    pub peer_closed: bool,
    /// Set once upgraded; boxed so plain HTTP connections stay small.
    pub ws: Option<Box<WsSession>>,
}

impl Conn {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        tls: ServerConnection,
        generation: u32,
        now: Instant,
    ) -> Self {
        Conn {
            socket,
            peer,
            tls,
            generation,
            phase: Phase::Http,
            inbuf: Vec::new(),
            out: OutQueue::default(),
            http: HttpSession::new(now),
            last_active: now,
            armed: None,
            linger_until: None,
            tls_checked: false,
            close_when_flushed: false,
            in_flush_list: false,
            peer_closed: false,
            ws: None,
        }
    }

    pub fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            key,
            generation: self.generation,
        }
    }

    /// The earliest moment something must happen to this connection.
    pub fn deadline(&self, timeouts: &Timeouts) -> Instant {
        match self.phase {
            Phase::Closing => self.linger_until.unwrap_or(self.last_active),
            Phase::Http => self.http.deadline(self.last_active, &timeouts.http),
            Phase::WebSocket => match &self.ws {
                Some(ws) => ws.deadline(&timeouts.ws),
                None => self.last_active + timeouts.http.idle,
            },
        }
    }

    /// Reads TLS records until the socket is drained (`WouldBlock`, or a short read
    /// unless `peer_closed`), EOF or `budget` bytes, decrypting into `inbuf`. The very
    /// first byte must start a TLS handshake record (`ConnError::NotTls` otherwise,
    /// before rustls sees it).
    pub fn read_tls(&mut self, budget: usize, now: Instant) -> Result<ReadStatus, ConnError> {
        let mut total = 0;
        loop {
            let mut reader = SocketReader {
                socket: &mut self.socket,
                short: false,
                first_byte: None,
            };
            let result = self.tls.read_tls(&mut reader);
            let (short, first_byte) = (reader.short, reader.first_byte);
            if !self.tls_checked {
                match first_byte {
                    Some(0x16) => self.tls_checked = true,
                    Some(_) => return Err(ConnError::NotTls),
                    None => {}
                }
            }
            match result {
                Ok(0) => return Ok(ReadStatus::Eof),
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnError::Io(e)),
            }
            let state = self.tls.process_new_packets().map_err(ConnError::Tls)?;
            let available = state.plaintext_bytes_to_read();
            let peer_closed = state.peer_has_closed();
            if available > 0 {
                self.last_active = now;
                let start = self.inbuf.len();
                self.inbuf.resize(start + available, 0);
                self.tls
                    .reader()
                    .read_exact(&mut self.inbuf[start..])
                    .map_err(ConnError::Io)?;
            }
            if peer_closed {
                return Ok(ReadStatus::Eof);
            }
            if short && !self.peer_closed {
                // The kernel had less than asked for: the socket is empty now, and any
                // byte arriving later raises a new edge. This saves the read that would
                // only return WouldBlock. A FIN that came with the data raises no edge
                // of its own, hence the exception: read on until the EOF.
                return Ok(ReadStatus::Drained);
            }
            if total >= budget {
                return Ok(ReadStatus::Budget);
            }
        }
    }

    /// Reads and throws away input while closing; returns whether the peer is done.
    pub fn discard_input(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match self.socket.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// Moves queued plaintext through rustls to the socket until everything is sent,
    /// the socket is full or `budget` bytes went out. Several small queued pieces go
    /// out as one TLS record.
    pub fn flush(
        &mut self,
        scratch: &mut Vec<u8>,
        budget: usize,
        now: Instant,
    ) -> io::Result<FlushStatus> {
        let mut sent = 0;
        loop {
            if sent >= budget {
                return Ok(FlushStatus::Budget);
            }
            while !self.out.is_empty() {
                let accepted = if self.out.is_fragmented() {
                    self.out.gather(scratch, MAX_RECORD);
                    self.tls.writer().write(scratch)?
                } else {
                    let front = self.out.front();
                    let front = &front[..front.len().min(4 * MAX_RECORD)];
                    self.tls.writer().write(front)?
                };
                if accepted == 0 {
                    // rustls's buffer is full (Ok(0), not WouldBlock): send some first.
                    break;
                }
                self.out.consume(accepted);
            }
            if !self.tls.wants_write() {
                if self.out.is_empty() {
                    self.out.shrink_if_empty();
                    return Ok(FlushStatus::Done);
                }
                // Plaintext waits for the handshake to finish; more input will move it.
                return Ok(FlushStatus::Blocked);
            }
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut SocketWriter(&self.socket)) {
                    Ok(0) => return Ok(FlushStatus::Blocked),
                    Ok(n) => {
                        sent += n;
                        self.last_active = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(FlushStatus::Blocked);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Whether a flush has anything to do: queued plaintext, TLS records, or a close to
    /// finish.
    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || self.tls.wants_write() || self.close_when_flushed
    }

    /// Starts the two-step close: queue close_notify; the caller flushes, then calls
    /// `shutdown_write` and lingers.
    pub fn begin_close(&mut self, now: Instant) {
        if self.phase != Phase::Closing {
            self.tls.send_close_notify();
            self.phase = Phase::Closing;
            self.linger_until = Some(now + LINGER);
            self.inbuf = Vec::new();
        }
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Write);
    }

    /// Frees the input buffer of an idle connection.
    pub fn release_idle_input(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = Vec::new();
        }
    }
}
