//! The PostgreSQL client's one error type: every failure of a URL, a connection or a
//! unit of work, each with a stable snake_case [`PgError::code`] for logs and metrics.
//!
//! Messages are plain English and never contain the password, whatever the server or
//! the URL said.

use std::fmt;
use std::io;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    /// The connection URL or parameters are not usable; the message says which part.
    Url(String),
    /// The server could not be reached: connect refused, reset or failed before the
    /// session was established.
    Unreachable {
        /// The operating system's error kind (ConnectionRefused, NotFound, ...).
        kind: io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// The TLS handshake or the certificate check failed (rustls's message).
    Tls(String),
    /// TLS was required but the server answered the SSLRequest with `N`.
    NoTls,
    /// The server asks for a password and none was configured.
    NoPassword,
    /// The server refused the credentials (e.g. 28P01) or its SCRAM proof was wrong.
    AuthFailed {
        /// The server's (or chatd's) explanation, naming the user.
        message: String,
    },
    /// The server asks for an authentication method chatd does not speak.
    AuthUnsupported {
        /// The method as PostgreSQL names it in pg_hba.conf (md5, password, gss, ...).
        method: &'static str,
    },
    /// An ErrorResponse of the server.
    Server {
        /// The five-character SQLSTATE, e.g. 23505.
        sqlstate: String,
        /// The server's primary message.
        message: String,
        /// ERROR, FATAL or PANIC.
        severity: String,
    },
    /// A parameter could not be encoded for its declared type; the unit was not sent.
    Encode(String),
    /// The connection ended while the unit was in flight or queued: its outcome is
    /// unknown (it may or may not have committed).
    ConnectionLost,
    /// The server sent something the protocol does not allow at that point.
    Protocol(String),
    /// A result value could not be read as the type asked for (wrong type, NULL, index).
    Decode(String),
}

impl PgError {
    /// The stable wire code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            PgError::Url(_) => "bad_url",
            PgError::Unreachable { .. } => "unreachable",
            PgError::Tls(_) => "tls",
            PgError::NoTls => "no_tls",
            PgError::NoPassword => "no_password",
            PgError::AuthFailed { .. } => "auth_failed",
            PgError::AuthUnsupported { .. } => "auth_unsupported",
            PgError::Server { .. } => "server",
            PgError::Encode(_) => "encode",
            PgError::ConnectionLost => "connection_lost",
            PgError::Protocol(_) => "protocol",
            PgError::Decode(_) => "decode",
        }
    }

    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Server { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    /// A unique constraint was violated (23505): the row already exists.
    pub fn is_unique_violation(&self) -> bool {
        self.sqlstate() == Some("23505")
    }

    /// An I/O failure before the session was established.
    pub fn unreachable(e: &io::Error) -> PgError {
        PgError::Unreachable {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Url(m) => write!(f, "bad PostgreSQL URL: {m}"),
            PgError::Unreachable { kind, message } => {
                write!(f, "cannot reach PostgreSQL ({kind:?}): {message}")
            }
            PgError::Tls(m) => write!(f, "TLS with PostgreSQL failed: {m}"),
            PgError::NoTls => f.write_str(
                "the server does not offer TLS, and the connection requires it (tls mode \
                 require or verify-full)",
            ),
            PgError::NoPassword => {
                f.write_str("the server asks for a password and none is configured")
            }
            PgError::AuthFailed { message } => write!(f, "authentication failed: {message}"),
            PgError::AuthUnsupported { method } => write!(
                f,
                "the server asks for {method} authentication; chatd supports scram-sha-256 \
                 and trust"
            ),
            PgError::Server {
                sqlstate,
                message,
                severity,
            } => write!(f, "PostgreSQL {severity} {sqlstate}: {message}"),
            PgError::Encode(m) => write!(f, "cannot encode a query parameter: {m}"),
            PgError::ConnectionLost => {
                f.write_str("the connection to PostgreSQL was lost; the outcome is unknown")
            }
            PgError::Protocol(m) => write!(f, "PostgreSQL protocol error: {m}"),
            PgError::Decode(m) => write!(f, "cannot decode a result value: {m}"),
        }
    }
}

impl std::error::Error for PgError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_messages_clear() {
        let unique = PgError::Server {
            sqlstate: "23505".into(),
            message: "duplicate key".into(),
            severity: "ERROR".into(),
        };
        assert!(unique.is_unique_violation());
        assert_eq!(unique.code(), "server");
        assert!(!PgError::ConnectionLost.is_unique_violation());
        let md5 = PgError::AuthUnsupported { method: "md5" };
        assert_eq!(md5.code(), "auth_unsupported");
        assert_eq!(
            md5.to_string(),
            "the server asks for md5 authentication; chatd supports scram-sha-256 and trust"
        );
        assert_eq!(PgError::NoTls.code(), "no_tls");
        assert!(PgError::NoTls.to_string().contains("does not offer TLS"));
        let refused = PgError::unreachable(&io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.code(), "unreachable");
        assert!(refused.to_string().contains("ConnectionRefused"));
    }
}
