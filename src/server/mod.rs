//! The event loop: the only code that touches sockets, the poller, signals and the clock.
//!
//! One thread, one `mio::Poll`, edge-triggered. A turn of the loop:
//! 1. wait for readiness, no longer than the earliest deadline, then read the clock
//!    once: that `Now` is passed to everything the turn does;
//! 2. accept until `WouldBlock`; read every readable connection until it is drained
//!    (or its read budget is spent) and hand complete requests and frames to the
//!    protocol code;
//! 3. fire due deadlines, all from one heap (`timers`): the connections' (request,
//!    idle, ping, token, linger) and the server's own (housekeeping, pruning, an accept
//!    retry, the end of a shutdown's grace period);
//! 4. flush storage (the turn's writes go in one transaction: group commit) and carry
//!    on with whatever it answered, in this turn (SQLite) or a later one (PostgreSQL,
//!    whose sockets are polled here too): parked HTTP requests resume, and chat
//!    frames waiting for an answer are released in order;
//! 5. flush every connection that has output, until `WouldBlock`, and remove those
//!    that finished closing.
//!
//! Connections cut short by a budget wait in `ready` and are served next turn without
//! waiting for an edge that will never come. HTTP handling is in `serve_http`, the
//! WebSocket side in `serve_ws`.

mod conn;
mod outq;
mod serve_http;
mod serve_ws;
mod timers;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::api::Waiting;
use crate::app::App;
use crate::chat::Output;
use crate::limits::Refusal;
use crate::store::Ticket;
use crate::time::Now;
use crate::ws::Close;
use conn::{Conn, ConnError, FlushStatus, Phase, ReadStatus, Timeouts};
use timers::{ConnRef, ServerTimer, TimerKey, Timers};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// Storage's sockets (database connections) use the tokens from here on; connection
/// slots never come near.
const STORAGE_TOKENS: usize = usize::MAX / 2;

/// Bytes read from one connection before the loop serves the others.
const READ_BUDGET: usize = 64 * 1024;

/// Bytes written to one connection per turn before the loop serves the others (what
/// Redis calls NET_MAX_WRITES_PER_EVENT): a large answer, or many of them pipelined,
/// goes out over several turns instead of holding the thread while megabytes are
/// encrypted into a socket buffer a slow reader may never empty.
const WRITE_BUDGET: usize = 256 * 1024;

/// How long a graceful shutdown waits for in-flight responses and close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// After `accept` fails for lack of file descriptors, retry this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How often housekeeping looks whether a load has passed (collections that a load left
/// mostly empty are shrunk and freed memory handed back to the system).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// How often idle rate-limiter entries are dropped and an unused argon2 work area freed.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The plain-text answer to plain HTTP on the TLS port.
const PLAINTEXT_REPLY: &[u8] = b"HTTP/1.0 400 Bad Request\r\ncontent-type: text/plain\r\n\
content-length: 23\r\nconnection: close\r\n\r\nthis port speaks HTTPS\n";

/// Pending connections the kernel may queue while the loop is busy (the kernel caps it
/// at `net.core.somaxconn`): a burst of thousands of clients must not overflow it.
const LISTEN_BACKLOG: i32 = 4096;

/// The kernel send buffer of every connection (Linux doubles the value for its own
/// bookkeeping). Left alone, Linux grows it up to `net.ipv4.tcp_wmem`'s maximum (4 MiB
/// by default) for a peer that reads slowly, and every byte chatd puts there was
/// encrypted on the only thread first: 400 slow readers of a large file cost over a
/// gigabyte of encryption nobody reads, and stalled everyone else. What chatd serves
/// is small (the web client, JSON, chat frames); the price is throughput on long, fast
/// links (about 256 KiB per round trip for one download). For a WebSocket it also means
/// a slow consumer pins little kernel memory besides its `max_outbound_bytes` queue and
/// reaches that cap sooner.
const SEND_BUFFER: usize = 128 * 1024;

/// A non-blocking listener with a deep accept queue. TCP_NODELAY and the send buffer
/// size are set on the listener because accepted sockets inherit them (system calls
/// per connection saved): chatd coalesces its own writes, and Nagle would delay the
/// next small frame by a delayed-ACK period.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let SocketAddr::V6(v6) = addr
        && v6.ip().is_unspecified()
    {
        // `::` means every address, IPv4 too (clients then appear as ::ffff:a.b.c.d),
        // whatever the system's net.ipv6.bindv6only default is.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Returns freed heap pages to the system. glibc keeps freed memory inside its heap
/// (only the top can shrink on its own), so after thousands of connections close the
/// process would keep their memory resident; `malloc_trim` releases the free pages.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and only works on glibc's own allocator
    // state, under glibc's internal locks; it frees no memory that is in use, so no
    // pointer held by this program is affected. chatd has one thread anyway.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An HTTP request waiting for storage.
#[derive(Debug)]
struct ParkedHttp {
    conn: ConnRef,
    waiting: Waiting,
    /// For the access log: what was asked, and since when.
    method: String,
    path: String,
    started: Instant,
}

/// The server: listener, connections, timers and the application state.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    /// Boxed: a slot freed after a load costs a pointer, not a whole connection.
    conns: Slab<Box<Conn>>,
    timers: Timers,
    timeouts: Timeouts,
    app: App,
    tls_config: Arc<ServerConfig>,
    next_generation: u32,
    /// Connections with output to flush before the loop sleeps.
    flush_list: Vec<ConnRef>,
    /// Connections to read again next turn (budget exhausted or input resumed).
    ready: Vec<ConnRef>,
    /// Connections to flush again next turn (write budget exhausted).
    flush_again: Vec<ConnRef>,
    /// Chat outputs of the chat call in progress, handed to the outbox after it.
    chat_outputs: Vec<Output>,
    /// HTTP requests parked until storage answers their ticket.
    http_waiting: std::collections::HashMap<Ticket, ParkedHttp>,
    /// The storage deadline in the timer heap, if any.
    storage_armed: Option<Instant>,
    /// Reused buffer for gathering small writes into one TLS record.
    scratch: Vec<u8>,
    /// The Date header value and the second it was made for.
    date: (i64, String),
    /// Set by SIGINT/SIGTERM: no new connections, and the loop ends once every
    /// connection is closed or the grace period is over.
    shutting_down: bool,
    /// The shutdown's grace period is over: the loop ends whatever is still open.
    shutdown_grace_over: bool,
    /// Accepting paused after EMFILE, until the AcceptRetry timer fires.
    accept_paused: bool,
    /// Most connections open since memory was last handed back to the system.
    peak_connections: usize,
}

impl Server {
    /// Binds the listener and registers it and the signals with a new poller.
    pub fn bind(app: App, tls_config: Arc<ServerConfig>) -> io::Result<Server> {
        let poll = Poll::new()?;
        let addr = SocketAddr::new(app.config.host, app.config.port);
        let mut listener = listen(addr)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut app = app;
        app.store
            .attach(poll.registry(), STORAGE_TOKENS, Instant::now())?;
        let timeouts = Timeouts {
            http: crate::session::HttpTimeouts {
                header: app.config.header_timeout,
                idle: app.config.idle_timeout,
            },
            ws: crate::session::WsTimeouts {
                ping: app.config.ws_ping_interval,
                idle: app.config.ws_idle_timeout,
            },
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            conns: Slab::new(),
            timers: Timers::default(),
            timeouts,
            app,
            tls_config,
            next_generation: 0,
            flush_list: Vec::new(),
            ready: Vec::new(),
            flush_again: Vec::new(),
            chat_outputs: Vec::new(),
            http_waiting: std::collections::HashMap::new(),
            storage_armed: None,
            scratch: Vec::with_capacity(conn::MAX_RECORD),
            date: (i64::MIN, String::new()),
            shutting_down: false,
            shutdown_grace_over: false,
            accept_paused: false,
            peak_connections: 0,
        })
    }

    /// The address actually bound (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until SIGINT/SIGTERM, then closes every connection and the database.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        self.timers.push(
            start + HOUSEKEEPING_INTERVAL,
            TimerKey::Server(ServerTimer::Housekeeping),
        );
        self.timers
            .push(start + PRUNE_INTERVAL, TimerKey::Server(ServerTimer::Prune));
        loop {
            // The one clock reading outside a turn: how long the poll may sleep.
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Now::read();
            self.update_date(now);
            // Stored at the start of every turn, so a `/metrics` answered in this turn
            // shows the heap as the previous turn left it (the heap lives here, the
            // rendering in `api`).
            self.app.metrics.timer_entries = self.timers.len();
            self.app.metrics.http_waiting = self.http_waiting.len();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    SIGNALS => self.handle_signals(now),
                    Token(t) if t >= STORAGE_TOKENS => {
                        self.app.store.on_ready(event.token(), now.instant)
                    }
                    Token(key) => {
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        let conn_ref = conn.conn_ref(key);
                        if event.is_read_closed() || event.is_error() {
                            conn.peer_closed = true;
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(conn_ref, now);
                        }
                        // Writable edges come with every ACK that frees send buffer;
                        // only a connection with something left to send needs a flush.
                        if event.is_writable()
                            && self.get(conn_ref).is_some_and(|c| c.has_pending_output())
                        {
                            self.queue_flush(conn_ref);
                        }
                    }
                }
            }
            let again = std::mem::take(&mut self.ready);
            for conn_ref in again {
                self.on_readable(conn_ref, now);
            }
            for conn_ref in std::mem::take(&mut self.flush_again) {
                self.queue_flush(conn_ref);
            }
            self.fire_timers(now);
            self.settle_storage(now);
            self.arm_storage();
            self.flush_all(now);
            if self.shutting_down && (self.conns.is_empty() || self.shutdown_grace_over) {
                break;
            }
        }
        self.finish()
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        // Chat actions left after the turn's dispatch (a WebSocket dropped by a failed
        // write during the flush leaves its rooms) go out next turn, which is now; so
        // does storage work submitted since the flush.
        if !self.ready.is_empty()
            || !self.flush_again.is_empty()
            || self.app.outbox.has_actions()
            || self.app.store.has_submitted()
        {
            return Some(Duration::ZERO);
        }
        // Round up so a deadline is never checked a hair too early and spun on.
        self.timers
            .next()
            .map(|at| at.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn update_date(&mut self, now: Now) {
        let secs = now.unix_secs();
        if self.date.0 != secs {
            self.date = (secs, crate::http::response::http_date(secs));
        }
    }

    fn accept_all(&mut self, now: Now) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut socket, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the pending connection stays in the backlog;
                    // with edge triggering no new event will come for it, so retry soon.
                    log::warn!("accept failed: {e}; retrying in {ACCEPT_RETRY:?}");
                    self.accept_paused = true;
                    self.timers.push(
                        now.instant + ACCEPT_RETRY,
                        TimerKey::Server(ServerTimer::AcceptRetry),
                    );
                    return;
                }
            };
            if let Err(refusal) = self.app.limits.open_connection(peer.ip()) {
                match refusal {
                    Refusal::TooManyConnections => self.app.metrics.refused_max_connections += 1,
                    Refusal::TooManyFromAddress => self.app.metrics.refused_per_ip += 1,
                    Refusal::TooFastFromAddress => self.app.metrics.refused_conn_rate += 1,
                }
                log::debug!("refused connection from {peer}: {refusal:?}");
                drop(socket);
                continue;
            }
            self.app.metrics.connections_accepted += 1;
            let tls = match rustls::ServerConnection::new(self.tls_config.clone()) {
                Ok(tls) => tls,
                Err(e) => {
                    log::error!("cannot start TLS: {e}");
                    self.app.limits.close_connection(peer.ip());
                    continue;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::error!("cannot register connection: {e}");
                self.app.limits.close_connection(peer.ip());
                continue;
            }
            self.next_generation = self.next_generation.wrapping_add(1);
            let conn = entry.insert(Box::new(Conn::new(
                socket,
                peer,
                tls,
                self.next_generation,
                now.instant,
            )));
            let conn_ref = conn.conn_ref(key);
            self.peak_connections = self.peak_connections.max(self.conns.len());
            self.arm(conn_ref);
        }
    }

    /// Periodic clean-up after a load: without it a burst of connections would keep its
    /// memory (collection capacities, freed heap pages) for good.
    fn housekeeping(&mut self) {
        let open = self.conns.len();
        if open * 2 >= self.peak_connections {
            return;
        }
        // Down to less than half of the peak: shrink what the load grew.
        self.conns.shrink_to_fit();
        self.timers.shrink();
        self.app.chat.shrink();
        self.app.limits.shrink();
        for list in [&mut self.flush_list, &mut self.ready] {
            if list.is_empty() {
                *list = Vec::new();
            }
        }
        if self.chat_outputs.is_empty() {
            self.chat_outputs = Vec::new();
        }
        if self.http_waiting.is_empty() {
            self.http_waiting = std::collections::HashMap::new();
        }
        release_free_memory();
        log::debug!(
            "housekeeping: {open} connections (peak {}), memory released",
            self.peak_connections
        );
        self.peak_connections = open;
    }

    fn handle_signals(&mut self, now: Now) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGHUP => self.reload_certificate(now),
                SIGINT | SIGTERM => self.begin_shutdown(now),
                _ => {}
            }
        }
    }

    fn reload_certificate(&mut self, now: Now) {
        let config = &self.app.config;
        match crate::tls::load_server_config(&config.cert_file, &config.key_file) {
            Ok((tls_config, fingerprint)) => {
                self.tls_config = tls_config;
                log::info!("SIGHUP: certificate reloaded, SHA-256 fingerprint {fingerprint}");
                crate::tls::log_expiry(&config.cert_file, now.unix_secs());
            }
            Err(e) => log::error!("SIGHUP: keeping the current certificate: {e}"),
        }
    }

    /// Stops accepting, sends 1001 to every WebSocket, lets in-flight requests finish
    /// and closes idle connections.
    fn begin_shutdown(&mut self, now: Now) {
        if self.shutting_down {
            return;
        }
        log::info!("shutting down: no new connections, finishing in-flight requests");
        self.shutting_down = true;
        self.timers.push(
            now.instant + SHUTDOWN_GRACE,
            TimerKey::Server(ServerTimer::ShutdownGrace),
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let refs: Vec<ConnRef> = self.conns.iter().map(|(k, c)| c.conn_ref(k)).collect();
        for conn_ref in refs {
            let Some(conn) = self.get(conn_ref) else {
                continue;
            };
            match conn.phase {
                Phase::WebSocket => self.close_ws(conn_ref, Close::GoingAway, now),
                // A request already arriving or waiting for storage may finish (its
                // response will close the connection); idle connections and handshakes
                // in progress close now.
                Phase::Http if conn.inbuf.is_empty() && !conn.http.is_parked() => {
                    conn.close_when_flushed = true;
                    self.queue_flush(conn_ref);
                }
                Phase::Http | Phase::Closing => {}
            }
        }
    }

    fn finish(mut self) -> io::Result<()> {
        let open = self.conns.len();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove(key);
        }
        if open > 0 {
            log::info!("closed {open} connections");
        }
        match self.app.store.close() {
            Ok(()) => log::info!("database closed; bye"),
            Err(e) => log::error!("closing the database: {e}"),
        }
        Ok(())
    }

    fn get(&mut self, conn_ref: ConnRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(conn_ref.key)
            .filter(|c| c.generation == conn_ref.generation)
            .map(|c| &mut **c)
    }

    /// Schedules a flush of this connection before the loop sleeps.
    fn queue_flush(&mut self, conn_ref: ConnRef) {
        if let Some(conn) = self.get(conn_ref)
            && !conn.in_flush_list
        {
            conn.in_flush_list = true;
            self.flush_list.push(conn_ref);
        }
    }

    /// Makes sure the timer heap holds an entry no later than the connection's deadline.
    fn arm(&mut self, conn_ref: ConnRef) {
        let timeouts = self.timeouts;
        let Some(conn) = self.get(conn_ref) else {
            return;
        };
        let deadline = conn.deadline(&timeouts);
        if conn.armed.is_none_or(|armed| deadline < armed) {
            conn.armed = Some(deadline);
            self.timers.push(deadline, TimerKey::Conn(conn_ref));
        }
    }

    fn on_readable(&mut self, conn_ref: ConnRef, now: Now) {
        let Some(conn) = self.get(conn_ref) else {
            return;
        };
        if conn.phase == Phase::Closing {
            if conn.discard_input() {
                self.remove(conn_ref.key);
            }
            return;
        }
        if conn.http.is_paused() {
            return;
        }
        let status = match conn.read_tls(READ_BUDGET, now.instant) {
            Ok(status) => status,
            Err(ConnError::NotTls) => {
                self.reject_plaintext(conn_ref.key, now);
                return;
            }
            Err(e) => {
                self.drop_on_error(conn_ref, &e, now);
                return;
            }
        };
        if conn.tls.wants_write() {
            // Handshake messages to send.
            self.queue_flush(conn_ref);
        }
        if self.process_http(conn_ref, now) {
            self.process_ws(conn_ref, now);
        }
        let Some(conn) = self.get(conn_ref) else {
            return;
        };
        match status {
            ReadStatus::Eof if conn.http.is_paused() => {
                // Answer what is already buffered first; the EOF is seen again later.
            }
            ReadStatus::Eof if conn.phase == Phase::WebSocket => {
                let closing = conn.ws.as_ref().is_some_and(|ws| ws.is_closing());
                if !closing {
                    // The client vanished without a close frame.
                    self.drop_ws(conn_ref);
                    return;
                }
                // The close was decided (the client's close frame, a violation) when
                // the input ended: the turn goes on, so the replies to what came before
                // and our close frame still go out (the client can still read), then
                // the close finishes as usual.
                self.queue_flush(conn_ref);
            }
            ReadStatus::Eof => {
                if conn.inbuf.is_empty() || conn.close_when_flushed {
                    conn.close_when_flushed = true;
                    conn.inbuf = Vec::new();
                    self.queue_flush(conn_ref);
                } else {
                    // A truncated request: nothing more will come to complete it.
                    self.remove(conn_ref.key);
                    return;
                }
            }
            ReadStatus::Budget if !conn.http.is_paused() && !conn.close_when_flushed => {
                self.ready.push(conn_ref);
            }
            _ => {}
        }
        self.arm(conn_ref);
    }

    /// Answers plain HTTP on the TLS port with a short plaintext 400 and closes.
    fn reject_plaintext(&mut self, key: usize, now: Now) {
        self.app.metrics.plaintext_rejected += 1;
        if let Some(conn) = self.conns.get_mut(key) {
            use std::io::Write;
            let _ = conn.socket.write(PLAINTEXT_REPLY);
            conn.shutdown_write();
            conn.phase = Phase::Closing;
            conn.linger_until = Some(now.instant + conn::LINGER);
            let conn_ref = conn.conn_ref(key);
            if conn.discard_input() {
                self.remove(key);
            } else {
                self.arm(conn_ref);
            }
        }
    }

    fn drop_on_error(&mut self, conn_ref: ConnRef, error: &ConnError, now: Now) {
        if let ConnError::Tls(_) = error {
            self.app.metrics.tls_errors += 1;
        }
        log::debug!("connection {} dropped: {error}", conn_ref.key);
        if let Some(conn) = self.get(conn_ref) {
            // Best effort: send the alert rustls queued, then close.
            let mut scratch = Vec::new();
            let _ = conn.flush(&mut scratch, WRITE_BUDGET, now.instant);
        }
        self.remove(conn_ref.key);
    }

    /// Flushes every connection that has output, then closes those that are done.
    fn flush_all(&mut self, now: Now) {
        let list = std::mem::take(&mut self.flush_list);
        for conn_ref in list {
            if let Some(conn) = self.get(conn_ref) {
                conn.in_flush_list = false;
            }
            self.flush_now(conn_ref, now);
        }
    }

    /// Flushes one connection within the write budget; finishes its close when
    /// everything is out.
    pub(super) fn flush_now(&mut self, conn_ref: ConnRef, now: Now) {
        self.flush_with_budget(conn_ref, WRITE_BUDGET, now);
    }

    /// Flushes one connection, at most `budget` bytes; one cut short by the budget is
    /// flushed again next turn.
    pub(super) fn flush_with_budget(&mut self, conn_ref: ConnRef, budget: usize, now: Now) {
        let Server {
            conns,
            scratch,
            flush_again,
            ..
        } = self;
        let Some(conn) = conns
            .get_mut(conn_ref.key)
            .filter(|c| c.generation == conn_ref.generation)
        else {
            return;
        };
        let status = match conn.flush(scratch, budget, now.instant) {
            Ok(status) => status,
            Err(e) => {
                log::debug!("write to {} failed: {e}", conn.peer);
                self.remove_any(conn_ref);
                return;
            }
        };
        if status == FlushStatus::Budget {
            flush_again.push(conn_ref);
        }
        if status == FlushStatus::Done {
            if conn.phase == Phase::Closing {
                conn.shutdown_write();
                if conn.discard_input() {
                    self.remove_any(conn_ref);
                    return;
                }
            } else if conn.close_when_flushed {
                // Everything is out: send close_notify, then shut down and linger.
                conn.begin_close(now.instant);
                return self.flush_with_budget(conn_ref, budget, now);
            }
        }
        if conn.http.is_paused() && conn.http.try_resume(conn.out.len()) {
            self.ready.push(conn_ref);
        }
        // A WebSocket's deadlines count from what the peer sends, never from our
        // writes: after a broadcast flush there is nothing to re-arm.
        if conn.phase == Phase::WebSocket && conn.armed.is_some() {
            return;
        }
        self.arm(conn_ref);
    }

    /// Handles every deadline that has passed.
    fn fire_timers(&mut self, now: Now) {
        let timeouts = self.timeouts;
        while let Some((at, key)) = self.timers.pop_due(now.instant) {
            let conn_ref = match key {
                TimerKey::Conn(conn_ref) => conn_ref,
                TimerKey::Server(timer) => {
                    self.server_timer(timer, now);
                    continue;
                }
            };
            let Some(conn) = self.get(conn_ref) else {
                continue;
            };
            if conn.armed != Some(at) {
                continue; // superseded by an earlier entry
            }
            conn.armed = None;
            if conn.deadline(&timeouts) > now.instant {
                self.arm(conn_ref);
                continue;
            }
            match conn.phase {
                Phase::Closing => self.remove(conn_ref.key),
                Phase::Http => self.http_deadline(conn_ref, now),
                Phase::WebSocket => self.ws_deadline(conn_ref, now),
            }
        }
    }

    /// One of the server's own deadlines passed.
    fn server_timer(&mut self, timer: ServerTimer, now: Now) {
        match timer {
            ServerTimer::Housekeeping => {
                self.housekeeping();
                self.timers.push(
                    now.instant + HOUSEKEEPING_INTERVAL,
                    TimerKey::Server(ServerTimer::Housekeeping),
                );
            }
            ServerTimer::Prune => {
                self.app.limits.prune();
                self.app.passwords.release_if_unused();
                self.timers.push(
                    now.instant + PRUNE_INTERVAL,
                    TimerKey::Server(ServerTimer::Prune),
                );
            }
            ServerTimer::AcceptRetry => {
                self.accept_paused = false;
                self.accept_all(now);
            }
            ServerTimer::ShutdownGrace => self.shutdown_grace_over = true,
            ServerTimer::Storage => {
                self.storage_armed = None;
                self.app.store.on_deadline(now.instant);
            }
        }
    }

    /// Puts storage's next deadline in the heap if it is earlier than the one there.
    fn arm_storage(&mut self) {
        if let Some(at) = self.app.store.next_deadline()
            && self.storage_armed.is_none_or(|armed| at < armed)
        {
            self.storage_armed = Some(at);
            self.timers.push(at, TimerKey::Server(ServerTimer::Storage));
        }
    }

    /// Removes a connection for good, telling the chat if it was a WebSocket.
    fn remove_any(&mut self, conn_ref: ConnRef) {
        if self
            .get(conn_ref)
            .is_some_and(|c| c.phase == Phase::WebSocket)
        {
            self.drop_ws(conn_ref);
        } else {
            self.remove(conn_ref.key);
        }
    }

    /// Removes a connection for good.
    fn remove(&mut self, key: usize) {
        if let Some(conn) = self.conns.try_remove(key) {
            if let Some(ws) = &conn.ws {
                // Normally already done; a connection must never stay in the chat.
                self.app.chat.disconnect(ws.id, &mut self.chat_outputs);
            }
            self.app.limits.close_connection(conn.peer.ip());
            // Dropping the socket closes its descriptor, which removes it from the
            // epoll set: an explicit deregister would only cost a system call.
            drop(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &std::path::Path) -> Server {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        crate::tls::ensure_certificate(&cert, &key, crate::time::Now::read().unix_secs()).unwrap();
        let (tls_config, _) = crate::tls::load_server_config(&cert, &key).unwrap();
        let config = crate::config::Config {
            port: 0,
            public_dir: dir.to_path_buf(),
            ..Default::default()
        };
        let store = crate::store::SqliteStore::open_in_memory().unwrap();
        let app = App::new(config, Box::new(store), Vec::new(), &[7; 32]).unwrap();
        Server::bind(app, tls_config).unwrap()
    }

    #[test]
    fn pending_chat_actions_and_storage_work_wake_the_loop_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = server(dir.path());
        let now = Instant::now();
        assert_eq!(server.poll_timeout(now), None, "nothing to wait for");
        let mut outputs = vec![Output::Close {
            conn: crate::chat::ConnId(1),
            close: Close::GoingAway,
        }];
        server.app.outbox.push(crate::chat::ConnId(1), &mut outputs);
        assert_eq!(server.poll_timeout(now), Some(Duration::ZERO));
        server.app.outbox.take_actions();
        assert_eq!(server.poll_timeout(now), None);
        server.app.submit(crate::store::Op::UserById(1));
        assert_eq!(server.poll_timeout(now), Some(Duration::ZERO));
    }
}
