//! Connection parameters and the `postgres://` URL they are usually written as.
//!
//! `postgres://USER@HOST:PORT/DBNAME` connects over TCP (port 5432 by default, an IPv6
//! literal in brackets); `postgres://USER@/DBNAME?host=/run/postgresql` over the Unix
//! socket `/run/postgresql/.s.PGSQL.PORT` (`?port=` or 5432). `postgresql://` is the
//! same. `?sslmode=disable|require|verify-full` picks the [`TlsMode`].
//!
//! Refused, each with an error naming the problem: a password in the URL (it would
//! sit in configuration files and process listings; it is given apart, and the error
//! never repeats it), an unknown query parameter, an empty user or database, a bad
//! port, and a host name other than `localhost`: resolving a name blocks, and chatd's
//! loop never blocks, so the host is an IP address or `localhost` (127.0.0.1).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use super::PgError;

/// The PostgreSQL port when the URL names none.
pub const DEFAULT_PORT: u16 = 5432;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP to an IP literal or `localhost`.
    Tcp {
        /// As written in the URL (without brackets): it is also the name the
        /// certificate must carry under verify-full.
        host: String,
        port: u16,
    },
    /// A Unix socket: the full path of `.s.PGSQL.PORT`.
    Unix { path: PathBuf },
}

impl Target {
    /// The socket address of a TCP target, without any name lookup.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, PgError> {
        match self {
            Target::Tcp { host, port } => Ok(Some(SocketAddr::new(ip_of(host)?, *port))),
            Target::Unix { .. } => Ok(None),
        }
    }
}

/// Whether and how the connection is encrypted (TCP only: PostgreSQL offers no TLS on
/// Unix sockets, which file permissions protect, so these are plaintext as with libpq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never send an SSLRequest.
    Disable,
    /// Encrypted, but any certificate is accepted (handshake signatures are still
    /// checked), as libpq's sslmode=require: protects against listeners, not against
    /// an active man in the middle.
    Require,
    /// Encrypted, with the certificate verified against the caller's roots and the
    /// host name (or IP) of the URL.
    VerifyFull,
}

/// Everything needed to open one connection.
#[derive(Clone)]
pub struct ConnectParams {
    pub user: String,
    pub dbname: String,
    pub target: Target,
    /// Never shown by Debug or in any error.
    pub password: Option<String>,
    pub tls: TlsMode,
    /// Trust anchors for [`TlsMode::VerifyFull`] (required there, unused otherwise).
    pub ca_roots: Option<Arc<rustls::RootCertStore>>,
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("target", &self.target)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .field("ca_roots", &self.ca_roots.as_ref().map(|r| r.len()))
            .finish()
    }
}

/// The address of a host that needs no lookup: an IP literal or `localhost`.
fn ip_of(host: &str) -> Result<IpAddr, PgError> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse().map_err(|_| {
        PgError::Url(format!(
            "host {host:?} is not an IP address or localhost (chatd does not resolve names: \
             that would block its event loop)"
        ))
    })
}

fn percent_decode(part: &str, what: &str) -> Result<String, PgError> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgError::Url(format!("bad percent-encoding in the {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text =
        String::from_utf8(out).map_err(|_| PgError::Url(format!("the {what} is not UTF-8")))?;
    if text.contains('\0') {
        return Err(PgError::Url(format!("the {what} contains a NUL byte")));
    }
    Ok(text)
}

fn parse_port(text: &str) -> Result<u16, PgError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(PgError::Url(format!(
            "port {text:?} is not a number from 1 to 65535"
        ))),
    }
}

/// Parses a `postgres://` URL. The password and CA roots are given apart
/// (`password: None`, `ca_roots: None` here).
pub fn parse_url(url: &str) -> Result<ConnectParams, PgError> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| PgError::Url("it must start with postgres:// or postgresql://".into()))?;
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = main
        .split_once('/')
        .ok_or_else(|| PgError::Url("no database name (postgres://USER@HOST/DBNAME)".into()))?;
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| PgError::Url("no user name (postgres://USER@HOST/DBNAME)".into()))?;
    if userinfo.contains(':') {
        return Err(PgError::Url(
            "a password in the URL is refused; give it apart (the password file setting)".into(),
        ));
    }
    let user = percent_decode(userinfo, "user name")?;
    if user.is_empty() {
        return Err(PgError::Url("the user name is empty".into()));
    }
    let dbname = percent_decode(path, "database name")?;
    if dbname.is_empty() {
        return Err(PgError::Url("the database name is empty".into()));
    }

    let (mut socket_dir, mut query_port, mut tls) = (None, None, TlsMode::Disable);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "host" => socket_dir = Some(percent_decode(value, "socket directory")?),
            "port" => query_port = Some(parse_port(value)?),
            "sslmode" => {
                tls = match value {
                    "disable" => TlsMode::Disable,
                    "require" => TlsMode::Require,
                    "verify-full" => TlsMode::VerifyFull,
                    _ => {
                        return Err(PgError::Url(format!(
                            "sslmode {value:?} is not disable, require or verify-full"
                        )));
                    }
                }
            }
            _ => {
                return Err(PgError::Url(format!(
                    "unknown query parameter {:?} (known: host, port, sslmode)",
                    percent_decode(key, "parameter name").unwrap_or_default()
                )));
            }
        }
    }

    let target = if hostport.is_empty() {
        let dir = socket_dir.ok_or_else(|| {
            PgError::Url("no host: give HOST[:PORT] or ?host=/socket/directory".into())
        })?;
        if !dir.starts_with('/') {
            return Err(PgError::Url(
                "the socket directory (?host=) must be an absolute path".into(),
            ));
        }
        let port = query_port.unwrap_or(DEFAULT_PORT);
        Target::Unix {
            path: PathBuf::from(dir).join(format!(".s.PGSQL.{port}")),
        }
    } else {
        if socket_dir.is_some() {
            return Err(PgError::Url(
                "both a host and ?host= are given; keep one".into(),
            ));
        }
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| PgError::Url("an IPv6 address lacks its closing ]".into()))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(PgError::Url(format!("{host:?} is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                _ => Some(parse_port(after.strip_prefix(':').ok_or_else(|| {
                    PgError::Url("unexpected text after the IPv6 address".into())
                })?)?),
            };
            (host.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host.to_string(), Some(parse_port(port)?)),
                None => (hostport.to_string(), None),
            }
        };
        if query_port.is_some() && port.is_some() {
            return Err(PgError::Url(
                "the port is given twice (HOST:PORT and ?port=)".into(),
            ));
        }
        ip_of(&host)?;
        Target::Tcp {
            host,
            port: port.or(query_port).unwrap_or(DEFAULT_PORT),
        }
    };
    Ok(ConnectParams {
        user,
        dbname,
        target,
        password: None,
        tls,
        ca_roots: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn tcp_urls() {
        let p = parse_url("postgres://chatd@127.0.0.1:5433/chat").unwrap();
        assert_eq!((p.user.as_str(), p.dbname.as_str()), ("chatd", "chat"));
        assert_eq!(p.target, tcp("127.0.0.1", 5433));
        assert_eq!(p.tls, TlsMode::Disable);
        assert!(p.password.is_none());
        let p = parse_url("postgresql://u@localhost/db?sslmode=verify-full").unwrap();
        assert_eq!(p.target, tcp("localhost", 5432));
        assert_eq!(p.tls, TlsMode::VerifyFull);
        assert_eq!(
            p.target.socket_addr().unwrap(),
            Some("127.0.0.1:5432".parse().unwrap())
        );
        let p = parse_url("postgres://u@[::1]:6000/db?sslmode=require").unwrap();
        assert_eq!(p.target, tcp("::1", 6000));
        assert_eq!(p.tls, TlsMode::Require);
        assert_eq!(
            parse_url("postgres://u@[::1]/db").unwrap().target,
            tcp("::1", 5432)
        );
        let p = parse_url("postgres://u@10.0.0.1/db?port=7000").unwrap();
        assert_eq!(p.target, tcp("10.0.0.1", 7000));
    }

    #[test]
    fn unix_socket_urls() {
        let p = parse_url("postgres://chatd@/chat?host=/run/postgresql").unwrap();
        assert_eq!(
            p.target,
            Target::Unix {
                path: "/run/postgresql/.s.PGSQL.5432".into()
            }
        );
        let p = parse_url("postgres://chatd@/chat?host=%2Ftmp%2Fpg%20x&port=6543").unwrap();
        assert_eq!(
            p.target,
            Target::Unix {
                path: "/tmp/pg x/.s.PGSQL.6543".into()
            }
        );
        assert_eq!(p.target.socket_addr().unwrap(), None);
    }

    #[test]
    fn user_and_database_are_percent_decoded() {
        let p = parse_url("postgres://chat%40d%C3%A9@127.0.0.1/my%20db").unwrap();
        assert_eq!(p.user, "chat@dé");
        assert_eq!(p.dbname, "my db");
    }

    #[test]
    fn a_password_is_refused_without_being_repeated() {
        let e = parse_url("postgres://chatd:hunter2secret@127.0.0.1/chat").unwrap_err();
        assert_eq!(e.code(), "bad_url");
        assert!(e.to_string().contains("password in the URL is refused"));
        assert!(!e.to_string().contains("hunter2secret"));
        assert!(!format!("{e:?}").contains("hunter2secret"));
        let e = parse_url("postgres://chatd:@127.0.0.1/chat").unwrap_err();
        assert!(e.to_string().contains("password"));
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let mut p = parse_url("postgres://u@127.0.0.1/db").unwrap();
        p.password = Some("s3cr3t-value".into());
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("<hidden>"));
    }

    #[test]
    fn hostile_and_broken_urls_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "must start with"),
            ("http://u@127.0.0.1/db", "must start with"),
            ("postgres://", "no database name"),
            ("postgres://127.0.0.1/db", "no user name"),
            ("postgres://@127.0.0.1/db", "user name is empty"),
            ("postgres://u@127.0.0.1/", "database name is empty"),
            ("postgres://u@127.0.0.1", "no database name"),
            ("postgres://u@127.0.0.1:0/db", "port \"0\""),
            ("postgres://u@127.0.0.1:99999/db", "port \"99999\""),
            ("postgres://u@127.0.0.1:+80/db", "port \"+80\""),
            ("postgres://u@127.0.0.1:x/db", "port \"x\""),
            ("postgres://u@db.example.com/db", "does not resolve names"),
            ("postgres://u@[::1/db", "closing ]"),
            ("postgres://u@[nope]/db", "not an IPv6 address"),
            ("postgres://u@[::1]x/db", "after the IPv6"),
            (
                "postgres://u@127.0.0.1/db?foo=1",
                "unknown query parameter \"foo\"",
            ),
            (
                "postgres://u@127.0.0.1/db?sslmode=prefer",
                "sslmode \"prefer\"",
            ),
            (
                "postgres://u@127.0.0.1:5432/db?port=5",
                "port is given twice",
            ),
            ("postgres://u@/db", "no host"),
            ("postgres://u@/db?host=relative", "absolute path"),
            ("postgres://u@127.0.0.1/db?host=/tmp", "both a host"),
            (
                "postgres://u%zz@127.0.0.1/db",
                "percent-encoding in the user name",
            ),
            ("postgres://u%@127.0.0.1/db", "percent-encoding"),
            ("postgres://u%00@127.0.0.1/db", "NUL"),
            ("postgres://u%ff@127.0.0.1/db", "not UTF-8"),
            ("postgres://u@127.0.0.1/d%00b", "NUL"),
        ];
        for (url, expected) in cases {
            let e = parse_url(url).expect_err(url);
            assert_eq!(e.code(), "bad_url", "{url}");
            assert!(e.to_string().contains(expected), "{url}: {e}");
        }
    }
}
