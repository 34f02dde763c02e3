//! chatd's PostgreSQL client, spoken from the one-thread event loop: no threads, no
//! async runtime, no blocking call (not even a name lookup).
//!
//! - [`url`]: `postgres://` URLs and the [`ConnectParams`] they give.
//! - [`protocol`]: the sans-IO state machine: startup, authentication, the statement
//!   catalogue prepared once, then pipelined [`Unit`]s, each one transaction.
//! - [`conn`]: [`PgConn`], one non-blocking socket (TCP or Unix, TLS through rustls)
//!   driven by mio readiness, feeding the protocol.
//! - [`error`]: [`PgError`] and its stable codes.
//!
//! The owner registers nothing itself: [`PgConn::connect`] registers the socket under
//! the owner's token; the owner calls [`PgConn::on_ready`] for each event of that
//! token and [`PgConn::flush`] after sending, and acts on the [`Event`]s returned.
//! docs/STORAGE.md describes the client for operators.

pub mod error;
pub mod protocol;
pub mod url;

pub use error::PgError;
pub use protocol::{Event, Param, Query, Row, Rows, Statement, Unit, UnitId};
pub use url::{ConnectParams, Target, TlsMode, parse_url};
