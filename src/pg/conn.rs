//! One PostgreSQL connection driven by mio readiness: a non-blocking socket (TCP or
//! Unix), rustls on it when TLS is wanted, and the sans-IO [`Protocol`] fed with the
//! plaintext. All protocol decisions are the protocol's; this file moves bytes.
//!
//! The socket is registered once, readable and writable (edge-triggered), under the
//! owner's token. On each event of that token the owner calls [`PgConn::on_ready`],
//! which reads and writes until the kernel says WouldBlock; after sending units it
//! calls [`PgConn::flush`]. Bytes that did not fit go out on the next writable edge.
//!
//! With TLS the first bytes are the SSLRequest; the server's one-byte answer decides
//! (`S`: the rustls handshake, then startup inside TLS; `N`: [`PgError::NoTls`]), and
//! anything received after the `S` before the handshake is refused (see
//! [`protocol::check_tls_answer`]). `require` accepts any certificate yet still checks
//! the handshake signatures, like libpq's sslmode=require: it stops listeners, not an
//! active man in the middle; `verify-full` checks the certificate against the
//! caller's roots and the URL's host (an IP address must be in the certificate's
//! IP SANs). Unix sockets never use TLS (PostgreSQL offers none there; the socket's
//! file permissions protect it), whatever the mode, as with libpq.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

use super::protocol::{self, Event, Protocol, Statement, Unit, UnitId};
use super::{ConnectParams, PgError, Target, TlsMode};

/// Plaintext read from rustls or the socket in one go.
const READ_CHUNK: usize = 16 * 1024;

/// The socket, TCP or Unix.
#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Socket::Tcp(s) => s.take_error(),
            Socket::Unix(s) => s.take_error(),
        }
    }

    /// Whether a non-blocking connect has completed (`NotConnected`: not yet).
    fn is_connected(&self) -> io::Result<bool> {
        let peer = match self {
            Socket::Tcp(s) => s.peer_addr().map(drop),
            Socket::Unix(s) => s.peer_addr().map(drop),
        };
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Socket::Tcp(s) => registry.register(s, token, interest),
            Socket::Unix(s) => registry.register(s, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => registry.deregister(s),
            Socket::Unix(s) => registry.deregister(s),
        }
    }

    fn shutdown(&self) {
        // Already gone is fine: the point is only that the server sees the end.
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the connection is, below the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The non-blocking connect has not completed.
    Connecting,
    /// SSLRequest sent (or being sent); waiting for the server's one byte.
    TlsAnswer,
    /// rustls carries the protocol (handshake included).
    Tls,
    /// The protocol goes straight on the socket.
    Plain,
    /// Over: deregistered, nothing more read or written.
    Closed,
}

/// The `require` mode's verifier: any certificate, but the handshake signatures are
/// checked, so the session is at least bound to the key of the certificate shown.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls client configuration and server name for a TCP target, or None when
/// the connection is plaintext.
fn tls_setup(
    params: &ConnectParams,
) -> Result<Option<(Arc<ClientConfig>, ServerName<'static>)>, PgError> {
    let Target::Tcp { host, .. } = &params.target else {
        return Ok(None);
    };
    if params.tls == TlsMode::Disable {
        return Ok(None);
    }
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?;
    let config = match params.tls {
        TlsMode::VerifyFull => {
            let roots = params.ca_roots.clone().ok_or_else(|| {
                PgError::Tls("verify-full needs the CA certificates to trust (a CA file)".into())
            })?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| PgError::Url(format!("host {host:?} as a TLS server name: {e}")))?;
    Ok(Some((Arc::new(config), name)))
}

/// One connection to PostgreSQL. See the module documentation.
#[derive(Debug)]
pub struct PgConn {
    socket: Socket,
    phase: Phase,
    protocol: Protocol,
    /// Set when TLS is wanted; taken when the handshake starts.
    tls_setup: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    tls: Option<Box<ClientConnection>>,
    /// The SSLRequest bytes not yet written.
    preamble: BytesMut,
}

impl PgConn {
    /// Starts a non-blocking connect and registers the socket under `token`. Nothing
    /// blocks: the outcome comes through [`PgConn::on_ready`]. A connect deadline is
    /// the owner's (it drops the connection with [`PgConn::close`]).
    pub fn connect(
        params: &ConnectParams,
        catalogue: Arc<[Statement]>,
        registry: &Registry,
        token: Token,
    ) -> Result<PgConn, PgError> {
        let tls_setup = tls_setup(params)?;
        let mut socket = match &params.target {
            Target::Tcp { .. } => {
                let addr = params
                    .target
                    .socket_addr()?
                    .ok_or_else(|| PgError::Url("no TCP address".into()))?;
                Socket::Tcp(TcpStream::connect(addr).map_err(|e| PgError::unreachable(&e))?)
            }
            Target::Unix { path } => {
                Socket::Unix(UnixStream::connect(path).map_err(|e| PgError::unreachable(&e))?)
            }
        };
        socket
            .register(registry, token)
            .map_err(|e| PgError::unreachable(&e))?;
        Ok(PgConn {
            socket,
            phase: Phase::Connecting,
            protocol: Protocol::new(params, catalogue),
            tls_setup,
            tls: None,
            preamble: BytesMut::new(),
        })
    }

    /// Authenticated, catalogue prepared.
    pub fn is_ready(&self) -> bool {
        self.protocol.is_ready()
    }

    /// Over (Closed was reported).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Units sent and not answered.
    pub fn in_flight(&self) -> usize {
        self.protocol.in_flight()
    }

    /// When the oldest unanswered unit was sent: for the owner's database timeout.
    pub fn oldest_unanswered_since(&self) -> Option<Instant> {
        self.protocol.oldest_unanswered_since()
    }

    /// Queues a unit; [`PgConn::flush`] (or the next readiness event) writes it.
    pub fn send(&mut self, unit: Unit, now: Instant) -> UnitId {
        self.protocol.send(unit, now)
    }

    /// Handles a readiness event of this connection's token: connects, reads and
    /// writes until WouldBlock. Returns what happened, in order.
    pub fn on_ready(&mut self, registry: &Registry) -> Vec<Event> {
        if self.phase != Phase::Closed
            && let Err(e) = self.pump()
        {
            self.protocol.fail(e);
        }
        self.finish(registry)
    }

    /// Writes what is queued (units just sent). Returns events as on_ready does
    /// (units that could not be encoded, or the end of the connection).
    pub fn flush(&mut self, registry: &Registry) -> Vec<Event> {
        if matches!(self.phase, Phase::Tls | Phase::Plain)
            && let Err(e) = self.write_out()
        {
            self.protocol.fail(e);
        }
        self.finish(registry)
    }

    /// Ends the connection: a Terminate (and TLS close_notify) is sent as far as the
    /// socket takes it, the socket deregistered. Units in flight are reported lost.
    pub fn close(&mut self, registry: &Registry) -> Vec<Event> {
        let connected = matches!(self.phase, Phase::Tls | Phase::Plain);
        self.protocol.terminate();
        if connected {
            // Best effort: the goodbye is a courtesy, the socket closes anyway.
            let _ = self.write_out();
            if let Some(tls) = &mut self.tls {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut self.socket);
            }
        }
        self.finish(registry)
    }

    /// Collects the protocol's events and, once it is over, closes the socket.
    fn finish(&mut self, registry: &Registry) -> Vec<Event> {
        let events: Vec<Event> = std::iter::from_fn(|| self.protocol.poll_event()).collect();
        if self.protocol.is_closed() && self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            // Deregistering a socket the kernel already dropped can fail; it is closed
            // with this connection either way.
            let _ = self.socket.deregister(registry);
            self.socket.shutdown();
        }
        events
    }

    /// An I/O failure: before the session is up the server was unreachable, after
    /// it the connection was lost.
    fn io_failure(&self, e: &io::Error) -> PgError {
        if self.protocol.is_ready() {
            log::debug!("PostgreSQL connection lost: {e}");
            PgError::ConnectionLost
        } else {
            PgError::unreachable(e)
        }
    }

    fn eof(&self) -> PgError {
        self.io_failure(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ))
    }

    fn pump(&mut self) -> Result<(), PgError> {
        if self.phase == Phase::Connecting {
            if let Some(e) = self.socket.take_error().unwrap_or_else(Some) {
                return Err(PgError::unreachable(&e));
            }
            match self.socket.is_connected() {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) => return Err(PgError::unreachable(&e)),
            }
            if self.tls_setup.is_some() {
                self.preamble = protocol::ssl_request();
                self.phase = Phase::TlsAnswer;
            } else {
                self.phase = Phase::Plain;
            }
        }
        if self.phase == Phase::TlsAnswer {
            while !self.preamble.is_empty() {
                match self.socket.write(&self.preamble) {
                    Ok(n) => self.preamble.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_failure(&e)),
                }
            }
            // More than the one byte is read on purpose: bytes after the answer must
            // be seen, and refused, before the handshake.
            let mut answer = [0u8; 64];
            let n = match self.socket.read(&mut answer) {
                Ok(0) => return Err(self.eof()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.pump(),
                Err(e) => return Err(self.io_failure(&e)),
            };
            protocol::check_tls_answer(&answer[..n])?;
            let (config, name) = self
                .tls_setup
                .take()
                .ok_or_else(|| PgError::Tls("no TLS configuration".into()))?;
            let tls =
                ClientConnection::new(config, name).map_err(|e| PgError::Tls(e.to_string()))?;
            self.tls = Some(Box::new(tls));
            self.phase = Phase::Tls;
        }
        loop {
            self.write_out()?;
            let received = self.read_in()?;
            if !received || self.protocol.is_closed() {
                return Ok(());
            }
        }
    }

    /// Writes the protocol's output until it is all out or the socket is full.
    fn write_out(&mut self) -> Result<(), PgError> {
        if let Some(tls) = &mut self.tls {
            loop {
                let output = self.protocol.output();
                let mut taken = 0;
                if !output.is_empty() {
                    // rustls takes plaintext up to its buffer limit; the rest waits.
                    taken = tls
                        .writer()
                        .write(output)
                        .map_err(|e| PgError::Tls(e.to_string()))?;
                    self.protocol.consume_output(taken);
                }
                if !tls.wants_write() {
                    // Nothing to put on the wire: all taken, or rustls is full until the
                    // handshake moves on.
                    if self.protocol.output().is_empty() || taken == 0 {
                        return Ok(());
                    }
                    continue;
                }
                match tls.write_tls(&mut self.socket) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let failure = if self.protocol.is_ready() {
                            PgError::ConnectionLost
                        } else {
                            PgError::unreachable(&e)
                        };
                        return Err(failure);
                    }
                }
            }
        }
        loop {
            let output = self.protocol.output();
            if output.is_empty() {
                return Ok(());
            }
            match self.socket.write(output) {
                Ok(n) => self.protocol.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failure(&e)),
            }
        }
    }

    /// Reads until WouldBlock, feeding the plaintext to the protocol. Returns whether
    /// anything was received (the protocol may then have something to send).
    fn read_in(&mut self) -> Result<bool, PgError> {
        let mut received = false;
        let mut chunk = vec![0u8; READ_CHUNK];
        let Some(tls) = &mut self.tls else {
            loop {
                match self.socket.read(&mut chunk) {
                    Ok(0) => return Err(self.eof()),
                    Ok(n) => {
                        received = true;
                        self.protocol.receive(&chunk[..n]);
                        if self.protocol.is_closed() {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(received),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_failure(&e)),
                }
            }
        };
        loop {
            let eof = match tls.read_tls(&mut self.socket) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(received),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(if self.protocol.is_ready() {
                        PgError::ConnectionLost
                    } else {
                        PgError::unreachable(&e)
                    });
                }
            };
            if let Err(e) = tls.process_new_packets() {
                // The alert telling the server why, if the socket takes it.
                let _ = tls.write_tls(&mut self.socket);
                return Err(PgError::Tls(e.to_string()));
            }
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        received = true;
                        self.protocol.receive(&chunk[..n]);
                        if self.protocol.is_closed() {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        return Err(if self.protocol.is_ready() {
                            PgError::ConnectionLost
                        } else {
                            PgError::unreachable(&e)
                        });
                    }
                }
            }
            if eof {
                return Err(if self.protocol.is_ready() {
                    PgError::ConnectionLost
                } else {
                    PgError::Unreachable {
                        kind: io::ErrorKind::UnexpectedEof,
                        message: "the server closed the connection".into(),
                    }
                });
            }
            // The handshake may need to answer before more arrives.
            if tls.wants_write() {
                received = true;
            }
        }
    }
}
