//! The per-connection protocol, sans-IO: plaintext and the turn's `now` in, decisions
//! out. No socket, no clock, no TLS: the event loop in `server/` reads and writes, and
//! asks a session what the bytes mean and what a deadline that passed calls for, the
//! way quinn-proto's `Connection` works. Tests drive a session with a fake clock.
//!
//! - [`http`]: HTTP/1.1 requests answered in order (pipelining, keep-alive, pausing
//!   input behind queued answers, `100 Continue`), the header and idle timeouts.
//! - [`ws`]: an upgraded connection: frames, the request rate and flood count, pings,
//!   the idle timeout, token expiry and the close handshake.
//! - [`rate`]: the exact token bucket a WebSocket's requests pass through.

pub mod http;
pub mod rate;
pub mod ws;

pub use http::{HttpContext, HttpDeadline, HttpSession, HttpTimeouts, HttpTurn};
pub use rate::TokenBucket;
pub use ws::{Decoded, WsDeadline, WsSession, WsTimeouts};
