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
//! token and [`PgConn::flush`] after [`PgConn::send`] (once per loop turn is enough),
//! and acts on the [`Event`]s returned, in order:
//! - `Ready` once; units sent before it are held and go out then.
//! - `Unit { id, outcome }` for every unit sent, exactly once, in the order sent
//!   (a unit that cannot be encoded fails at once, possibly before earlier ones).
//! - `Closed(error)` last, after every unit still in flight got `ConnectionLost`.
//!
//! The clock comes in only through [`PgConn::send`] (`now` = when the unit was
//! submitted, which [`PgConn::oldest_unanswered_since`] reports for the owner's
//! database timeout); connect and query deadlines are the owner's.
//! docs/STORAGE.md describes the client for operators.

pub mod conn;
pub mod error;
pub mod protocol;
pub mod url;

pub use conn::PgConn;
pub use error::PgError;
pub use protocol::{Event, Param, Query, Row, Rows, Statement, Unit, UnitId};
pub use url::{ConnectParams, Target, TlsMode, parse_url};
