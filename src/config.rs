//! `server.conf` and `CHATD_*` overrides turned into one validated [`Config`].
//!
//! The file is `key = value` lines with `#` comments. Every key has a default, so an
//! empty file is a valid configuration. Each `CHATD_<KEY>` environment variable
//! overrides the key of the same name. Anything unknown or malformed stops startup with
//! an error that names the key, where it came from and what is allowed: a typo in a
//! limit must never silently fall back to a default.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A rate: `count` events per `per`, with bursts of up to `burst` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Rate {
    /// The steady interval between two events allowed by this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{} burst {}", self.count, unit, self.burst)
    }
}

/// Whether `POST /register` creates accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Open,
    Closed,
}

/// What happens when a user opens a second WebSocket while one is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateSessions {
    /// Several connections per user (tabs, devices).
    Allow,
    /// The new upgrade is refused with 409 already_connected.
    Reject,
    /// The older connections are closed with 4001 "replaced".
    Replace,
}

/// SQLite's `synchronous` setting for the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSynchronous {
    /// Every commit reaches the disk (fsync) before anything depending on it is sent:
    /// acknowledged messages survive a power cut.
    Full,
    /// Commits survive a crash of chatd but not of the machine; no fsync per commit.
    Normal,
}

/// Where chatd keeps its data.
#[derive(Debug, Clone)]
pub enum Database {
    /// The SQLite file at `db_path`, held by this process alone.
    Sqlite,
    /// A PostgreSQL database several chatd processes may share: the parsed URL (never
    /// with a password: that comes from `CHATD_DATABASE_PASSWORD` or
    /// `database_password_file`).
    Postgres(crate::pg::ConnectParams),
}

/// How the connection to PostgreSQL is encrypted. Unset in the file: by where it goes
/// ([`default_tls`]), resolved when the configuration is validated.
pub type DatabaseTls = Option<crate::pg::TlsMode>;

/// The TLS mode of a database connection when `database_tls` is not set: none over a
/// Unix socket or to this machine, verify-full to any other host.
pub fn default_tls(params: &crate::pg::ConnectParams) -> crate::pg::TlsMode {
    let local = match &params.target {
        crate::pg::Target::Unix { .. } => true,
        crate::pg::Target::Tcp { .. } => params
            .target
            .socket_addr()
            .ok()
            .flatten()
            .is_some_and(|addr| addr.ip().is_loopback()),
    };
    if local {
        crate::pg::TlsMode::Disable
    } else {
        crate::pg::TlsMode::VerifyFull
    }
}

/// The environment variable holding the PostgreSQL password: a secret, read like
/// `SECRET_KEY`, not a configuration key (although it has the `CHATD_` prefix).
pub const DATABASE_PASSWORD_VAR: &str = "CHATD_DATABASE_PASSWORD";

/// Who may read `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Only clients connecting from a loopback address (the default: counters reveal load).
    Loopback,
    /// Anyone who can reach the port.
    Public,
    /// Nobody: the endpoint answers 404.
    Off,
}

/// Every setting of chatd, validated. Paths are already resolved against the directory
/// of the configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    /// 0 asks the kernel for any free port (the real one is printed at start).
    pub port: u16,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Where the JWT secret is kept when `SECRET_KEY` is not set.
    pub secret_file: PathBuf,
    pub db_path: PathBuf,
    pub public_dir: PathBuf,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// New connections per client address, checked at accept: each one that gets
    /// through costs a TLS handshake on the only thread.
    pub conn_rate_per_ip: Rate,
    /// TLS handshake plus a complete request must arrive within this time (slowloris).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress closes after this time.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub http_rate_per_ip: Rate,
    /// Shared by `/login` and `/register`, on top of `http_rate_per_ip`.
    pub login_rate_per_ip: Rate,
    /// Server-wide budget of argon2id hashes: each one stalls the only thread.
    pub password_hashes_per_sec: u32,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub jwt_ttl: Duration,
    pub log_level: log::LevelFilter,
    pub access_log: bool,
    pub registration: Registration,
    pub metrics: MetricsAccess,
    pub db_synchronous: DbSynchronous,
    pub database: Database,
    pub database_tls: DatabaseTls,
    /// Trust anchors (PEM) for `database_tls = verify-full`.
    pub database_ca_file: Option<PathBuf>,
    /// Where the PostgreSQL password is kept when `CHATD_DATABASE_PASSWORD` is not set.
    pub database_password_file: Option<PathBuf>,
    /// Connections to PostgreSQL per process.
    pub database_connections: usize,
    /// How long a request may wait for the database before it is answered `unavailable`
    /// (and how long a connection attempt may take).
    pub database_timeout: Duration,
    /// Origins allowed to open a WebSocket besides `https://` + the request's Host.
    pub allowed_origins: Vec<String>,
    pub duplicate_sessions: DuplicateSessions,
    /// Largest WebSocket frame or message from a client; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Longest chat text, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Chat requests per connection; over it: rate_limited replies, then 1008.
    pub ws_rate: Rate,
    /// Bytes queued for one client before it is closed as a slow consumer (1013).
    pub max_outbound_bytes: usize,
    /// Idle WebSockets are pinged this often.
    pub ws_ping_interval: Duration,
    /// A WebSocket that sends nothing for this long is closed (4000).
    pub ws_idle_timeout: Duration,
    /// Largest page of a history request.
    pub history_max: usize,
    /// Rooms one connection may be in at once, the lobby included: each membership
    /// costs memory, so joins alone must not grow the server without bound.
    pub max_rooms_per_connection: usize,
    /// Rooms that exist at once (a room exists while it has a member): bounds the
    /// room table and the `rooms` reply whatever the number of connections.
    pub max_rooms: usize,
    /// Users one account may be subscribed to: bounds the stored subscriptions, the
    /// in-memory index and the `subscriptions` reply per account.
    pub max_subscriptions: usize,
    /// Settings that are accepted but worth a word (e.g. a limit another one makes
    /// redundant); logged once logging is set up.
    pub warnings: Vec<String>,
}

/// Why the configuration was refused. The message says where (file line or environment
/// variable), which key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// OWASP's minimum argon2id parameter rows (memory KiB, iterations), all with p=1.
/// A configuration must reach at least one row.
pub const ARGON2_FLOOR: [(u32, u32); 5] = [
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

/// Every key the file may hold, in the order `server.conf` documents them.
pub const KEYS: &[&str] = &[
    "host",
    "port",
    "cert_file",
    "key_file",
    "secret_file",
    "db_path",
    "public_dir",
    "max_connections",
    "max_connections_per_ip",
    "conn_rate_per_ip",
    "header_timeout_secs",
    "idle_timeout_secs",
    "max_header_bytes",
    "max_body_bytes",
    "http_rate_per_ip",
    "login_rate_per_ip",
    "password_hashes_per_sec",
    "argon2_memory_kib",
    "argon2_iterations",
    "argon2_parallelism",
    "jwt_ttl_secs",
    "log_level",
    "access_log",
    "registration",
    "metrics",
    "db_synchronous",
    "database",
    "database_tls",
    "database_ca_file",
    "database_password_file",
    "database_connections",
    "database_timeout_ms",
    "allowed_origins",
    "duplicate_sessions",
    "max_message_bytes",
    "max_text_chars",
    "ws_rate",
    "max_outbound_bytes",
    "ws_ping_secs",
    "ws_idle_timeout_secs",
    "history_max",
    "max_rooms_per_connection",
    "max_rooms",
    "max_subscriptions",
];

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8443,
            cert_file: PathBuf::from("certs/cert.pem"),
            key_file: PathBuf::from("certs/key.pem"),
            secret_file: PathBuf::from("certs/jwt.secret"),
            db_path: PathBuf::from("chatd.db"),
            public_dir: PathBuf::from("public"),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            conn_rate_per_ip: Rate {
                count: 20,
                per: Duration::from_secs(1),
                burst: 100,
            },
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 8192,
            max_body_bytes: 65_536,
            http_rate_per_ip: Rate {
                count: 50,
                per: Duration::from_secs(1),
                burst: 100,
            },
            login_rate_per_ip: Rate {
                count: 10,
                per: Duration::from_secs(60),
                burst: 20,
            },
            password_hashes_per_sec: 20,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            jwt_ttl: Duration::from_secs(3600),
            log_level: log::LevelFilter::Info,
            access_log: true,
            registration: Registration::Open,
            metrics: MetricsAccess::Loopback,
            db_synchronous: DbSynchronous::Full,
            database: Database::Sqlite,
            database_tls: None,
            database_ca_file: None,
            database_password_file: None,
            database_connections: 2,
            database_timeout: Duration::from_millis(5000),
            allowed_origins: Vec::new(),
            duplicate_sessions: DuplicateSessions::Allow,
            max_message_bytes: 16_384,
            max_text_chars: 4000,
            ws_rate: Rate {
                count: 10,
                per: Duration::from_secs(1),
                burst: 20,
            },
            max_outbound_bytes: 1_048_576,
            ws_ping_interval: Duration::from_secs(25),
            ws_idle_timeout: Duration::from_secs(60),
            history_max: 100,
            max_rooms_per_connection: 100,
            max_rooms: 10_000,
            max_subscriptions: 1000,
            warnings: Vec::new(),
        }
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin<'a> {
    File { path: &'a Path, line: usize },
    Env { var: &'a str },
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{} line {}", path.display(), line),
            Origin::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

/// Where each key that was set got its value, so that a check across several keys can
/// say where to change them.
#[derive(Debug, Default)]
struct Origins(HashMap<&'static str, String>);

impl Origins {
    fn record(&mut self, key: &str, origin: &Origin<'_>) {
        if let Some(known) = KEYS.iter().find(|k| **k == key) {
            self.0.insert(known, origin.to_string());
        }
    }

    /// "`key` = value (where it was set)", for one key of a cross-key message.
    fn describe(&self, key: &str, value: impl fmt::Display) -> String {
        let origin = self.0.get(key).map_or("the default", String::as_str);
        format!("`{key}` = {value} ({origin})")
    }
}

impl Config {
    /// Reads the file at `path` (if `required` is false, a missing file means "all
    /// defaults"), then applies `CHATD_*` variables from `env`, then validates.
    pub fn load(
        path: &Path,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => {
                return Err(ConfigError(format!(
                    "cannot read configuration file {}: {e}",
                    path.display()
                )));
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, base, env)
    }

    /// Parses configuration text. `path` is only used in messages; relative paths in
    /// values are resolved against `base`.
    pub fn parse(
        text: &str,
        path: &Path,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut origins = Origins::default();
        let mut seen: Vec<&str> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let origin = Origin::File {
                path,
                line: index + 1,
            };
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError(format!(
                    "{origin}: expected `key = value`, found `{line}`"
                )));
            };
            let key = key.trim();
            if seen.contains(&key) {
                return Err(ConfigError(format!("{origin}: key `{key}` is set twice")));
            }
            config.set(key, value.trim(), &origin)?;
            origins.record(key, &origin);
            seen.push(key);
        }
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("CHATD_") && name != DATABASE_PASSWORD_VAR)
            .collect();
        overrides.sort();
        for (name, value) in &overrides {
            let key = name["CHATD_".len()..].to_ascii_lowercase();
            let origin = Origin::Env { var: name };
            config.set(&key, value.trim(), &origin)?;
            origins.record(&key, &origin);
        }
        config.resolve_paths(base);
        config.validate(&origins)?;
        config.warn_redundant(&origins);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for path in [
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.secret_file,
            &mut self.db_path,
            &mut self.public_dir,
        ]
        .into_iter()
        .chain(self.database_ca_file.as_mut())
        .chain(self.database_password_file.as_mut())
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    fn set(&mut self, key: &str, value: &str, origin: &Origin<'_>) -> Result<(), ConfigError> {
        let bad = |allowed: &str| {
            ConfigError(format!(
                "{origin}: key `{key}` has invalid value `{value}`; allowed: {allowed}"
            ))
        };
        match key {
            "host" => self.host = value.parse().map_err(|_| bad("an IPv4 or IPv6 address"))?,
            "port" => self.port = value.parse().map_err(|_| bad("a port 0-65535"))?,
            "cert_file" => self.cert_file = parse_path(value).ok_or_else(|| bad("a path"))?,
            "key_file" => self.key_file = parse_path(value).ok_or_else(|| bad("a path"))?,
            "secret_file" => self.secret_file = parse_path(value).ok_or_else(|| bad("a path"))?,
            "db_path" => self.db_path = parse_path(value).ok_or_else(|| bad("a path"))?,
            "public_dir" => self.public_dir = parse_path(value).ok_or_else(|| bad("a path"))?,
            "max_connections" => {
                self.max_connections =
                    parse_count(value, 1, 1_000_000).ok_or_else(|| bad("an integer 1-1000000"))?;
            }
            "max_connections_per_ip" => {
                self.max_connections_per_ip =
                    parse_count(value, 1, 1_000_000).ok_or_else(|| bad("an integer 1-1000000"))?;
            }
            "conn_rate_per_ip" => {
                self.conn_rate_per_ip = parse_rate(value)
                    .ok_or_else(|| bad("`<count>/<s|min|h> burst <n>`, e.g. `20/s burst 100`"))?;
            }
            "header_timeout_secs" => {
                self.header_timeout =
                    parse_secs(value, 1, 3600).ok_or_else(|| bad("whole seconds 1-3600"))?;
            }
            "idle_timeout_secs" => {
                self.idle_timeout =
                    parse_secs(value, 1, 86_400).ok_or_else(|| bad("whole seconds 1-86400"))?;
            }
            "max_header_bytes" => {
                self.max_header_bytes =
                    parse_count(value, 1024, 1 << 20).ok_or_else(|| bad("bytes 1024-1048576"))?;
            }
            "max_body_bytes" => {
                self.max_body_bytes =
                    parse_count(value, 256, 16 << 20).ok_or_else(|| bad("bytes 256-16777216"))?;
            }
            "http_rate_per_ip" => {
                self.http_rate_per_ip = parse_rate(value)
                    .ok_or_else(|| bad("`<count>/<s|min|h> burst <n>`, e.g. `50/s burst 100`"))?;
            }
            "login_rate_per_ip" => {
                self.login_rate_per_ip = parse_rate(value)
                    .ok_or_else(|| bad("`<count>/<s|min|h> burst <n>`, e.g. `10/min burst 20`"))?;
            }
            "password_hashes_per_sec" => {
                // At least 2: a password change needs two hashes at once (verify the
                // current password, hash the new one); a budget of 1 could never grant it.
                self.password_hashes_per_sec = parse_u32(value, 2, 1000)
                    .ok_or_else(|| bad("an integer 2-1000 (a password change takes two hashes)"))?;
            }
            "argon2_memory_kib" => {
                self.argon2_memory_kib = parse_u32(value, 7168, 4 << 20)
                    .ok_or_else(|| bad("KiB 7168-4194304 (see the OWASP floor)"))?;
            }
            "argon2_iterations" => {
                self.argon2_iterations =
                    parse_u32(value, 1, 100).ok_or_else(|| bad("an integer 1-100"))?;
            }
            "argon2_parallelism" => {
                self.argon2_parallelism =
                    parse_u32(value, 1, 16).ok_or_else(|| bad("an integer 1-16"))?;
            }
            "jwt_ttl_secs" => {
                self.jwt_ttl = parse_secs(value, 1, 30 * 86_400)
                    .ok_or_else(|| bad("whole seconds 1-2592000"))?;
            }
            "log_level" => {
                self.log_level = match value {
                    "off" => log::LevelFilter::Off,
                    "error" => log::LevelFilter::Error,
                    "warn" => log::LevelFilter::Warn,
                    "info" => log::LevelFilter::Info,
                    "debug" => log::LevelFilter::Debug,
                    "trace" => log::LevelFilter::Trace,
                    _ => return Err(bad("off|error|warn|info|debug|trace")),
                };
            }
            "access_log" => self.access_log = parse_bool(value).ok_or_else(|| bad("true|false"))?,
            "registration" => {
                self.registration = match value {
                    "open" => Registration::Open,
                    "closed" => Registration::Closed,
                    _ => return Err(bad("open|closed")),
                };
            }
            "metrics" => {
                self.metrics = match value {
                    "loopback" => MetricsAccess::Loopback,
                    "public" => MetricsAccess::Public,
                    "off" => MetricsAccess::Off,
                    _ => return Err(bad("loopback|public|off")),
                };
            }
            "db_synchronous" => {
                self.db_synchronous = match value {
                    "full" => DbSynchronous::Full,
                    "normal" => DbSynchronous::Normal,
                    _ => return Err(bad("full|normal")),
                };
            }
            "database" => {
                self.database = match value {
                    "sqlite" => Database::Sqlite,
                    url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                        // The value is not echoed: it could hold a password.
                        let params = crate::pg::parse_url(url)
                            .map_err(|e| ConfigError(format!("{origin}: key `database`: {e}")))?;
                        Database::Postgres(params)
                    }
                    _ => {
                        return Err(ConfigError(format!(
                            "{origin}: key `database` must be `sqlite`, \
                             postgres://USER@HOST:PORT/DBNAME or \
                             postgres://USER@/DBNAME?host=/socket/dir"
                        )));
                    }
                };
            }
            "database_tls" => {
                self.database_tls = Some(match value {
                    "disable" => crate::pg::TlsMode::Disable,
                    "require" => crate::pg::TlsMode::Require,
                    "verify-full" => crate::pg::TlsMode::VerifyFull,
                    _ => return Err(bad("disable|require|verify-full")),
                });
            }
            "database_ca_file" => {
                self.database_ca_file = Some(parse_path(value).ok_or_else(|| bad("a path"))?);
            }
            "database_password_file" => {
                self.database_password_file = Some(parse_path(value).ok_or_else(|| bad("a path"))?);
            }
            "database_connections" => {
                self.database_connections =
                    parse_count(value, 1, 64).ok_or_else(|| bad("an integer 1-64"))?;
            }
            "database_timeout_ms" => {
                self.database_timeout = parse_u64(value, 100, 600_000)
                    .map(Duration::from_millis)
                    .ok_or_else(|| bad("milliseconds 100-600000"))?;
            }
            "allowed_origins" => {
                self.allowed_origins = parse_origins(value)
                    .ok_or_else(|| bad("comma-separated origins like https://chat.example.com"))?;
            }
            "duplicate_sessions" => {
                self.duplicate_sessions = match value {
                    "allow" => DuplicateSessions::Allow,
                    "reject" => DuplicateSessions::Reject,
                    "replace" => DuplicateSessions::Replace,
                    _ => return Err(bad("allow|reject|replace")),
                };
            }
            "max_message_bytes" => {
                self.max_message_bytes =
                    parse_count(value, 256, 16 << 20).ok_or_else(|| bad("bytes 256-16777216"))?;
            }
            "max_text_chars" => {
                self.max_text_chars =
                    parse_count(value, 1, 1 << 20).ok_or_else(|| bad("an integer 1-1048576"))?;
            }
            "ws_rate" => {
                self.ws_rate = parse_rate(value)
                    .ok_or_else(|| bad("`<count>/<s|min|h> burst <n>`, e.g. `10/s burst 20`"))?;
            }
            "max_outbound_bytes" => {
                self.max_outbound_bytes = parse_count(value, 4096, 1 << 30)
                    .ok_or_else(|| bad("bytes 4096-1073741824"))?;
            }
            "ws_ping_secs" => {
                self.ws_ping_interval =
                    parse_secs(value, 1, 3600).ok_or_else(|| bad("whole seconds 1-3600"))?;
            }
            "ws_idle_timeout_secs" => {
                self.ws_idle_timeout =
                    parse_secs(value, 1, 86_400).ok_or_else(|| bad("whole seconds 1-86400"))?;
            }
            "history_max" => {
                self.history_max =
                    parse_count(value, 1, 1000).ok_or_else(|| bad("an integer 1-1000"))?;
            }
            "max_rooms_per_connection" => {
                // At least 1: every connection starts in the lobby.
                self.max_rooms_per_connection =
                    parse_count(value, 1, 10_000).ok_or_else(|| bad("an integer 1-10000"))?;
            }
            "max_rooms" => {
                self.max_rooms =
                    parse_count(value, 1, 1_000_000).ok_or_else(|| bad("an integer 1-1000000"))?;
            }
            "max_subscriptions" => {
                self.max_subscriptions =
                    parse_count(value, 1, 100_000).ok_or_else(|| bad("an integer 1-100000"))?;
            }
            _ => {
                return Err(ConfigError(format!(
                    "{origin}: unknown key `{key}`; known keys: {}",
                    KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Checks that need several keys at once; the message says where each was set.
    fn validate(&mut self, origins: &Origins) -> Result<(), ConfigError> {
        if let Database::Postgres(params) = &self.database {
            let mode = self.database_tls.unwrap_or_else(|| default_tls(params));
            self.database_tls = Some(mode);
            if mode == crate::pg::TlsMode::VerifyFull && self.database_ca_file.is_none() {
                let source = match origins.0.get("database_tls") {
                    Some(origin) => format!("`database_tls` = verify-full ({origin})"),
                    None => format!(
                        "TLS with verify-full (the default for a database on another host, {})",
                        origins
                            .0
                            .get("database")
                            .map_or("the default", String::as_str)
                    ),
                };
                return Err(ConfigError(format!(
                    "{source} needs `database_ca_file`: the CA certificate the database's \
                     certificate chains to (or set `database_tls`)"
                )));
            }
        }
        if self.max_text_chars > self.max_message_bytes {
            return Err(ConfigError(format!(
                "key {} is larger than {}: such a text could never arrive",
                origins.describe("max_text_chars", self.max_text_chars),
                origins.describe("max_message_bytes", self.max_message_bytes)
            )));
        }
        if self.ws_idle_timeout <= self.ws_ping_interval {
            return Err(ConfigError(format!(
                "key {} must be longer than {}, or idle clients are closed before they can \
                 answer a ping",
                origins.describe("ws_idle_timeout_secs", self.ws_idle_timeout.as_secs()),
                origins.describe("ws_ping_secs", self.ws_ping_interval.as_secs())
            )));
        }
        let meets_floor = ARGON2_FLOOR
            .iter()
            .any(|&(m, t)| self.argon2_memory_kib >= m && self.argon2_iterations >= t);
        if !meets_floor {
            let rows: Vec<String> = ARGON2_FLOOR
                .iter()
                .map(|(m, t)| format!("m={m} t={t}"))
                .collect();
            return Err(ConfigError(format!(
                "keys {} and {} are below OWASP's minimum for argon2id; reach one of: {}",
                origins.describe("argon2_memory_kib", self.argon2_memory_kib),
                origins.describe("argon2_iterations", self.argon2_iterations),
                rows.join(", ")
            )));
        }
        Ok(())
    }
}

impl Config {
    /// Overlapping limits are not mistakes (nginx and Redis accept them too): the
    /// smaller one simply decides. They are named so the operator knows which.
    fn warn_redundant(&mut self, origins: &Origins) {
        if matches!(self.database, Database::Sqlite) {
            for key in [
                "database_tls",
                "database_ca_file",
                "database_password_file",
                "database_connections",
                "database_timeout_ms",
            ] {
                if let Some(origin) = origins.0.get(key) {
                    self.warnings.push(format!(
                        "key `{key}` ({origin}) applies to PostgreSQL only and is ignored \
                         with `database = sqlite`"
                    ));
                }
            }
        }
        if self.max_connections_per_ip > self.max_connections {
            self.warnings.push(format!(
                "key {} is larger than {}: the server-wide limit applies to one address too",
                origins.describe("max_connections_per_ip", self.max_connections_per_ip),
                origins.describe("max_connections", self.max_connections)
            ));
        }
    }
}

/// Drops a comment: a line starting with `#`, or ` #...` after a value.
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] == b'#' && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

fn parse_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty() && !value.contains('\0')).then(|| PathBuf::from(value))
}

fn parse_u64(value: &str, min: u64, max: u64) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = value.parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

fn parse_u32(value: &str, min: u32, max: u32) -> Option<u32> {
    parse_u64(value, min.into(), max.into()).and_then(|n| u32::try_from(n).ok())
}

fn parse_count(value: &str, min: usize, max: usize) -> Option<usize> {
    parse_u64(value, min as u64, max as u64).and_then(|n| usize::try_from(n).ok())
}

fn parse_secs(value: &str, min: u64, max: u64) -> Option<Duration> {
    parse_u64(value, min, max).map(Duration::from_secs)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Comma-separated `scheme://host[:port]` origins (no path); empty means none.
fn parse_origins(value: &str) -> Option<Vec<String>> {
    let mut origins = Vec::new();
    for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (scheme, rest) = origin.split_once("://")?;
        let valid = matches!(scheme, "https" | "http")
            && !rest.is_empty()
            && !rest.contains(['/', '?', '#', ' ', '@']);
        if !valid {
            return None;
        }
        origins.push(origin.to_ascii_lowercase());
    }
    Some(origins)
}

/// The environment as [`Config::load`] takes it, from `std::env::vars_os()`. A `CHATD_*`
/// variable whose name or value is not UTF-8 is an error naming it (it is meant for
/// chatd and cannot be read); any other variable that is not UTF-8 is none of chatd's
/// business and is left out.
pub fn utf8_environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in vars {
        let ours = name.as_bytes().starts_with(b"CHATD_");
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => env.push((name, value)),
            _ if !ours => {}
            (Ok(name), Err(_)) => {
                return Err(ConfigError(format!(
                    "environment variable {name}: the value is not valid UTF-8"
                )));
            }
            (Err(name), _) => {
                return Err(ConfigError(format!(
                    "environment variable {}: the name is not valid UTF-8",
                    name.to_string_lossy()
                )));
            }
        }
    }
    Ok(env)
}

/// `<count>/<s|min|h> burst <n>`; the burst must be at least 1.
pub fn parse_rate(value: &str) -> Option<Rate> {
    let mut words = value.split_whitespace();
    let (count, unit) = words.next()?.split_once('/')?;
    if words.next()? != "burst" {
        return None;
    }
    let burst = parse_u32(words.next()?, 1, 1_000_000)?;
    if words.next().is_some() {
        return None;
    }
    let count = parse_u32(count, 1, 1_000_000)?;
    let per = match unit {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { count, per, burst })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse(text, Path::new("test.conf"), Path::new("/base"), env)
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.port, 8443);
        assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_ip, 64);
        assert_eq!(c.conn_rate_per_ip, parse_rate("20/s burst 100").unwrap());
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_header_bytes, 8192);
        assert_eq!(c.max_body_bytes, 65_536);
        assert_eq!(c.http_rate_per_ip, parse_rate("50/s burst 100").unwrap());
        assert_eq!(c.login_rate_per_ip, parse_rate("10/min burst 20").unwrap());
        assert_eq!(c.password_hashes_per_sec, 20);
        assert_eq!(c.jwt_ttl, Duration::from_secs(3600));
        assert_eq!(c.secret_file, PathBuf::from("/base/certs/jwt.secret"));
        assert_eq!(c.registration, Registration::Open);
    }

    #[test]
    fn shipped_server_conf_parses_and_documents_every_key() {
        let text = include_str!("../server.conf");
        let c = parse(text, &[]).unwrap();
        assert_eq!(c.port, 8443);
        // Keys without a useful default with the shipped settings (PostgreSQL's, with
        // `database = sqlite`) are documented by a commented example.
        for key in KEYS {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} =")))
                    || (key.starts_with("database_")
                        && text.lines().any(|l| l.starts_with(&format!("# {key} =")))),
                "server.conf does not set `{key}`"
            );
        }
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn values_comments_and_ipv6() {
        let c = parse(
            "# comment\nhost = ::1   # trailing comment\nport = 0\n\nregistration = closed\naccess_log = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.host, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.port, 0);
        assert_eq!(c.registration, Registration::Closed);
        assert!(!c.access_log);
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("10/min burst 20"),
            Some(Rate {
                count: 10,
                per: Duration::from_secs(60),
                burst: 20
            })
        );
        assert_eq!(
            parse_rate("3/h burst 1").unwrap().per,
            Duration::from_secs(3600)
        );
        for bad in [
            "",
            "10",
            "10/s",
            "10/s burst",
            "10/s burst 0",
            "0/s burst 1",
            "10/d burst 2",
            "10/s burst 2 x",
            "-1/s burst 2",
            "10/s bust 2",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_rate("50/s burst 100").unwrap().interval(),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn errors_name_key_line_and_allowed_values() {
        let e = parse("host = 127.0.0.1\nport = eighty\n", &[])
            .unwrap_err()
            .0;
        assert!(e.contains("test.conf line 2"), "{e}");
        assert!(e.contains("`port`"), "{e}");
        assert!(e.contains("0-65535"), "{e}");

        let e = parse("prot = 1\n", &[]).unwrap_err().0;
        assert!(
            e.contains("unknown key `prot`") && e.contains("line 1"),
            "{e}"
        );

        let e = parse("port\n", &[]).unwrap_err().0;
        assert!(e.contains("expected `key = value`"), "{e}");

        let e = parse("port = 1\nport = 2\n", &[]).unwrap_err().0;
        assert!(e.contains("set twice"), "{e}");

        for (text, key) in [
            ("max_connections = 0", "max_connections"),
            ("max_connections = 1e4", "max_connections"),
            ("header_timeout_secs = 1.5", "header_timeout_secs"),
            ("access_log = yes", "access_log"),
            ("registration = maybe", "registration"),
            ("log_level = loud", "log_level"),
            ("max_header_bytes = 10", "max_header_bytes"),
            ("jwt_ttl_secs = -5", "jwt_ttl_secs"),
            ("password_hashes_per_sec = 1", "password_hashes_per_sec"),
        ] {
            let e = parse(text, &[]).unwrap_err().0;
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }

    #[test]
    fn environment_overrides_and_unknown_variables() {
        let c = parse("port = 1\n", &[("CHATD_PORT", "9443"), ("OTHER", "x")]).unwrap();
        assert_eq!(c.port, 9443);
        let c = parse("", &[("CHATD_HTTP_RATE_PER_IP", "5/s burst 5")]).unwrap();
        assert_eq!(c.http_rate_per_ip.count, 5);

        let e = parse("", &[("CHATD_PROT", "1")]).unwrap_err().0;
        assert!(
            e.contains("CHATD_PROT") && e.contains("unknown key `prot`"),
            "{e}"
        );
        let e = parse("", &[("CHATD_PORT", "x")]).unwrap_err().0;
        assert!(e.contains("environment variable CHATD_PORT"), "{e}");
    }

    #[test]
    fn environment_that_is_not_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let os = |b: &[u8]| OsString::from_vec(b.to_vec());
        let env = utf8_environment([
            (os(b"CHATD_PORT"), os(b"9443")),
            (os(b"OTHER"), os(b"\xff")),
            (os(b"\xffNAME"), os(b"x")),
            (os(b"SECRET_KEY"), os(b"\xfe")),
        ])
        .unwrap();
        assert_eq!(env, vec![("CHATD_PORT".to_string(), "9443".to_string())]);
        let e = utf8_environment([(os(b"CHATD_PORT"), os(b"94\xff"))])
            .unwrap_err()
            .0;
        assert!(
            e.contains("CHATD_PORT") && e.contains("not valid UTF-8"),
            "{e}"
        );
        let e = utf8_environment([(os(b"CHATD_P\xffRT"), os(b"1"))])
            .unwrap_err()
            .0;
        assert!(e.contains("CHATD_P\u{FFFD}RT") && e.contains("name"), "{e}");
    }

    #[test]
    fn websocket_keys() {
        let c = parse(
            "allowed_origins = https://a.example, http://localhost:3000\nduplicate_sessions = replace\nws_rate = 5/s burst 7\ndb_synchronous = normal\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.allowed_origins,
            vec![
                "https://a.example".to_string(),
                "http://localhost:3000".to_string()
            ]
        );
        assert_eq!(c.duplicate_sessions, DuplicateSessions::Replace);
        assert_eq!(c.ws_rate.burst, 7);
        assert_eq!(c.db_synchronous, DbSynchronous::Normal);
        let d = parse("", &[]).unwrap();
        assert_eq!(d.max_message_bytes, 16_384);
        assert_eq!(d.max_text_chars, 4000);
        assert_eq!(d.max_outbound_bytes, 1_048_576);
        assert_eq!(d.ws_ping_interval, Duration::from_secs(25));
        assert_eq!(d.ws_idle_timeout, Duration::from_secs(60));
        assert_eq!(d.history_max, 100);
        assert_eq!(d.max_rooms_per_connection, 100);
        assert_eq!(d.max_rooms, 10_000);
        assert_eq!(parse("max_rooms = 1", &[]).unwrap().max_rooms, 1);
        assert_eq!(d.max_subscriptions, 1000);
        assert_eq!(
            parse("max_subscriptions = 5", &[])
                .unwrap()
                .max_subscriptions,
            5
        );
        assert_eq!(d.duplicate_sessions, DuplicateSessions::Allow);
        assert_eq!(
            parse("max_rooms_per_connection = 3", &[])
                .unwrap()
                .max_rooms_per_connection,
            3
        );
        for bad in [
            "allowed_origins = example.com",
            "allowed_origins = https://a.example/path",
            "duplicate_sessions = maybe",
            "ws_idle_timeout_secs = 10\nws_ping_secs = 10",
            "max_text_chars = 20000",
            "max_rooms_per_connection = 0",
            "max_rooms_per_connection = 10001",
            "max_rooms = 0",
            "max_rooms = 1000001",
            "max_subscriptions = 0",
            "max_subscriptions = 100001",
        ] {
            assert!(parse(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let c = parse("db_path = data/chat.db\ncert_file = /abs/cert.pem\n", &[]).unwrap();
        assert_eq!(c.db_path, PathBuf::from("/base/data/chat.db"));
        assert_eq!(c.cert_file, PathBuf::from("/abs/cert.pem"));
    }

    #[test]
    fn argon2_floor_and_cross_key_checks() {
        assert!(parse("argon2_memory_kib = 47104\nargon2_iterations = 1\n", &[]).is_ok());
        assert!(parse("argon2_memory_kib = 7168\nargon2_iterations = 5\n", &[]).is_ok());
        let e = parse("argon2_memory_kib = 8192\nargon2_iterations = 1\n", &[])
            .unwrap_err()
            .0;
        assert!(e.contains("OWASP"), "{e}");
        assert!(parse("argon2_memory_kib = 1024\n", &[]).is_err());
    }

    #[test]
    fn a_redundant_limit_is_accepted_with_a_warning() {
        let c = parse("max_connections = 10\nmax_connections_per_ip = 11\n", &[]).unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_ip), (10, 11));
        assert_eq!(
            c.warnings,
            vec![
                "key `max_connections_per_ip` = 11 (test.conf line 2) is larger than \
                 `max_connections` = 10 (test.conf line 1): the server-wide limit applies to \
                 one address too"
                    .to_string()
            ]
        );
        assert!(parse("", &[]).unwrap().warnings.is_empty());
    }

    #[test]
    fn cross_key_errors_say_where_each_key_was_set() {
        let e = parse("max_message_bytes = 1000\nmax_text_chars = 1001\n", &[])
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            "key `max_text_chars` = 1001 (test.conf line 2) is larger than \
             `max_message_bytes` = 1000 (test.conf line 1): such a text could never arrive"
        );
        // The environment overrides the file, and says so; an unset key is a default.
        let c = parse(
            "# limits\nmax_connections_per_ip = 5\n",
            &[("CHATD_MAX_CONNECTIONS_PER_IP", "20000")],
        )
        .unwrap();
        let w = c.warnings.join("\n");
        assert!(
            w.contains(
                "`max_connections_per_ip` = 20000 (environment variable \
                 CHATD_MAX_CONNECTIONS_PER_IP)"
            ) && w.contains("`max_connections` = 10000 (the default)"),
            "{w}"
        );
        let e = parse(
            "\nargon2_memory_kib = 8192\n",
            &[("CHATD_ARGON2_ITERATIONS", "1")],
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("`argon2_memory_kib` = 8192 (test.conf line 2)")
                && e.contains(
                    "`argon2_iterations` = 1 (environment variable CHATD_ARGON2_ITERATIONS)"
                )
                && e.contains("OWASP"),
            "{e}"
        );
        let e = parse("ws_ping_secs = 60\n", &[]).unwrap_err().0;
        assert!(
            e.contains("`ws_idle_timeout_secs` = 60 (the default)")
                && e.contains("`ws_ping_secs` = 60 (test.conf line 1)"),
            "{e}"
        );
        let e = parse("max_text_chars = 20000\n", &[]).unwrap_err().0;
        assert!(
            e.contains("`max_text_chars` = 20000 (test.conf line 1)")
                && e.contains("`max_message_bytes` = 16384 (the default)"),
            "{e}"
        );
    }

    #[test]
    fn database_keys() {
        let c = parse("", &[]).unwrap();
        assert!(matches!(c.database, Database::Sqlite));
        assert_eq!(c.database_connections, 2);
        assert_eq!(c.database_timeout, Duration::from_millis(5000));
        let c = parse(
            "database = postgres://chat@127.0.0.1:5433/chatdb\ndatabase_tls = require\n\
             database_ca_file = ca.pem\ndatabase_password_file = pw\n\
             database_connections = 4\ndatabase_timeout_ms = 250\n",
            &[],
        )
        .unwrap();
        let Database::Postgres(params) = &c.database else {
            panic!("{:?}", c.database)
        };
        assert_eq!(
            (params.user.as_str(), params.dbname.as_str()),
            ("chat", "chatdb")
        );
        assert_eq!(c.database_tls, Some(crate::pg::TlsMode::Require));
        assert_eq!(c.database_ca_file, Some(PathBuf::from("/base/ca.pem")));
        assert_eq!(c.database_password_file, Some(PathBuf::from("/base/pw")));
        assert_eq!(c.database_connections, 4);
        assert_eq!(c.database_timeout, Duration::from_millis(250));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse(
            "database = postgres://chat@/chatdb?host=/run/postgresql\n",
            &[],
        )
        .unwrap();
        assert!(matches!(c.database, Database::Postgres(_)));
    }

    #[test]
    fn a_database_password_never_comes_from_the_url_nor_shows_in_errors() {
        let e = parse(
            "database = postgres://chat:hunter2secret@127.0.0.1/chat\n",
            &[],
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("test.conf line 1") && e.contains("`database`"),
            "{e}"
        );
        assert!(!e.contains("hunter2secret"), "the password is echoed: {e}");
        let e = parse(
            "",
            &[(
                "CHATD_DATABASE",
                "postgres://chat:hunter2secret@127.0.0.1/chat",
            )],
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("CHATD_DATABASE") && !e.contains("hunter2secret"),
            "{e}"
        );
        // The password's own variable is a secret, not an unknown key.
        let c = parse(
            "database = postgres://chat@127.0.0.1/chat\n",
            &[("CHATD_DATABASE_PASSWORD", "hunter2secret")],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2secret"));
    }

    #[test]
    fn database_key_errors_name_the_key_and_where() {
        for (line, allowed) in [
            ("database = mysql://x", "must be `sqlite`"),
            ("database_tls = prefer", "disable|require|verify-full"),
            ("database_connections = 0", "an integer 1-64"),
            ("database_connections = 65", "an integer 1-64"),
            ("database_timeout_ms = 99", "milliseconds 100-600000"),
            ("database_ca_file = ", "a path"),
        ] {
            let e = parse(&format!("{line}\n"), &[]).unwrap_err().0;
            assert!(
                e.contains("test.conf line 1") && e.contains(allowed),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn postgres_keys_with_sqlite_are_warned_about() {
        let c = parse(
            "database_connections = 3\n",
            &[("CHATD_DATABASE_TIMEOUT_MS", "900")],
        )
        .unwrap();
        let w = c.warnings.join("\n");
        assert!(
            w.contains("`database_connections` (test.conf line 1)")
                && w.contains(
                    "`database_timeout_ms` (environment variable CHATD_DATABASE_TIMEOUT_MS)"
                )
                && w.contains("ignored with `database = sqlite`"),
            "{w}"
        );
    }
}
