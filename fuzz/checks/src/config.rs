//! The configuration parser: `server.conf` text and `CHATD_*` variables in, a validated
//! [`Config`] or an error out. The environment is a value handed to `Config::parse`, so
//! nothing here reads or changes the process's environment or any file.
//!
//! Input: a mode byte, then raw text (no environment) or, in structured mode, lines of
//! known keys with values of the shapes those keys take (numbers near their bounds,
//! rates, addresses, origins, words), comments, blank and stray lines, plus variables.
//! Checked: whatever parses satisfies every documented cross-key check and per-key
//! range, its paths are resolved against the base directory, and a variable overrides
//! the file.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use chatd::config::{ARGON2_FLOOR, Config, KEYS};

/// Directory relative paths resolve against.
const BASE: &str = "/etc/chatd";

pub fn check(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        if let Ok(config) = parse(&text, Vec::new()) {
            check_config(&config);
        }
        return;
    }
    let Ok(generated) = Generated::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let (text, env) = generated.render();
    let result = parse(&text, env.clone());
    if let Ok(config) = result {
        check_config(&config);
        check_override(&text, &env, &config);
    }
}

fn parse(text: &str, env: Vec<(String, String)>) -> Result<Config, chatd::config::ConfigError> {
    Config::parse(text, Path::new("fuzz.conf"), Path::new(BASE), env)
}

/// The checks docs/server.conf promise of any configuration chatd starts with.
fn check_config(c: &Config) {
    // A per-address limit above the server-wide one is redundant: accepted, and named
    // in a warning.
    let warned = c
        .warnings
        .iter()
        .any(|w| w.contains("`max_connections_per_ip`"));
    assert_eq!(
        warned,
        c.max_connections_per_ip > c.max_connections,
        "{:?}",
        c.warnings
    );
    assert!(c.max_text_chars <= c.max_message_bytes);
    assert!(c.ws_idle_timeout > c.ws_ping_interval);
    assert!(
        ARGON2_FLOOR
            .iter()
            .any(|&(m, t)| c.argon2_memory_kib >= m && c.argon2_iterations >= t),
        "argon2 m={} t={} below the floor",
        c.argon2_memory_kib,
        c.argon2_iterations
    );
    let within = |n: u64, lo: u64, hi: u64, key: &str| {
        assert!((lo..=hi).contains(&n), "{key} = {n} outside {lo}-{hi}");
    };
    within(c.max_connections as u64, 1, 1_000_000, "max_connections");
    within(c.header_timeout.as_secs(), 1, 3600, "header_timeout_secs");
    within(c.idle_timeout.as_secs(), 1, 86_400, "idle_timeout_secs");
    within(c.max_header_bytes as u64, 1024, 1 << 20, "max_header_bytes");
    within(c.max_body_bytes as u64, 256, 16 << 20, "max_body_bytes");
    within(
        c.password_hashes_per_sec.into(),
        2,
        1000,
        "password_hashes_per_sec",
    );
    within(
        c.argon2_memory_kib.into(),
        7168,
        4 << 20,
        "argon2_memory_kib",
    );
    within(c.argon2_iterations.into(), 1, 100, "argon2_iterations");
    within(c.argon2_parallelism.into(), 1, 16, "argon2_parallelism");
    within(c.jwt_ttl.as_secs(), 1, 30 * 86_400, "jwt_ttl_secs");
    within(
        c.max_message_bytes as u64,
        256,
        16 << 20,
        "max_message_bytes",
    );
    within(c.max_text_chars as u64, 1, 1 << 20, "max_text_chars");
    within(
        c.max_outbound_bytes as u64,
        4096,
        1 << 30,
        "max_outbound_bytes",
    );
    within(
        c.max_rooms_per_connection as u64,
        1,
        10_000,
        "max_rooms_per_connection",
    );
    within(c.max_rooms as u64, 1, 1_000_000, "max_rooms");
    within(c.max_subscriptions as u64, 1, 100_000, "max_subscriptions");
    for rate in [
        c.conn_rate_per_ip,
        c.http_rate_per_ip,
        c.login_rate_per_ip,
        c.ws_rate,
    ] {
        within(rate.count.into(), 1, 1_000_000, "a rate's count");
        within(rate.burst.into(), 1, 1_000_000, "a rate's burst");
        assert!(!rate.interval().is_zero(), "{rate:?}");
    }
    for path in [
        &c.cert_file,
        &c.key_file,
        &c.secret_file,
        &c.db_path,
        &c.public_dir,
    ] {
        assert!(path.is_absolute(), "{} is not resolved", path.display());
    }
    for origin in &c.allowed_origins {
        assert!(
            origin.starts_with("https://") || origin.starts_with("http://"),
            "{origin}"
        );
        assert_eq!(*origin, origin.to_ascii_lowercase());
    }
}

/// A variable naming `port` wins over the file (the one key checked for it: its value
/// reads back exactly).
fn check_override(text: &str, env: &[(String, String)], config: &Config) {
    let from_env = env
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("CHATD_PORT") && name.starts_with("CHATD_"))
        .max_by(|a, b| a.cmp(b))
        .map(|(_, value)| value.trim());
    if let Some(value) = from_env {
        assert_eq!(
            value.parse::<u16>().ok(),
            Some(config.port),
            "{text:?} {env:?}"
        );
    }
}

/// A configuration made up by the fuzzer: file lines and variables.
#[derive(Debug, Arbitrary)]
struct Generated {
    lines: Vec<Line>,
    env: Vec<(Name, Value)>,
}

#[derive(Debug, Arbitrary)]
enum Line {
    Set {
        key: Name,
        value: Value,
        /// Spaces around `=`, a comment after the value.
        spaced: bool,
        comment: Option<String>,
    },
    Comment(String),
    Blank,
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    /// A known key in capitals (a file key is case-sensitive, a variable's is not).
    Shouted(u8),
    Any(String),
}

impl Name {
    fn key(&self) -> String {
        match self {
            Name::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            Name::Shouted(i) => KEYS[usize::from(*i) % KEYS.len()].to_ascii_uppercase(),
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Value {
    Number(u64),
    /// Near a bound: powers of two and of ten, give or take one.
    Bound {
        power: u8,
        ten: bool,
        delta: i8,
    },
    Rate {
        count: u32,
        unit: u8,
        burst: u32,
    },
    Word(u8),
    Ip([u8; 4], bool),
    Origins(Vec<(bool, String)>),
    Any(String),
}

const WORDS: &[&str] = &[
    "true",
    "false",
    "open",
    "closed",
    "loopback",
    "public",
    "off",
    "full",
    "normal",
    "allow",
    "reject",
    "replace",
    "error",
    "warn",
    "info",
    "debug",
    "trace",
    "certs/x.pem",
    "/abs/path",
    "::1",
    "0.0.0.0",
    "",
];

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Number(n) => n.to_string(),
            Value::Bound { power, ten, delta } => {
                let base: u64 = if *ten { 10 } else { 2 };
                let n = base.saturating_pow(u32::from(*power % 64));
                n.saturating_add_signed(i64::from(*delta % 2)).to_string()
            }
            Value::Rate { count, unit, burst } => {
                let unit = ["s", "min", "h", "d"][usize::from(*unit % 4)];
                format!("{count}/{unit} burst {burst}")
            }
            Value::Word(i) => WORDS[usize::from(*i) % WORDS.len()].to_string(),
            Value::Ip(octets, v6) => {
                if *v6 {
                    std::net::Ipv6Addr::from(u128::from(u32::from_be_bytes(*octets))).to_string()
                } else {
                    std::net::Ipv4Addr::from(*octets).to_string()
                }
            }
            Value::Origins(list) => list
                .iter()
                .map(|(https, host)| format!("{}://{host}", if *https { "https" } else { "http" }))
                .collect::<Vec<_>>()
                .join(", "),
            Value::Any(s) => s.clone(),
        }
    }
}

impl Generated {
    fn render(&self) -> (String, Vec<(String, String)>) {
        let mut text = String::new();
        for line in &self.lines {
            match line {
                Line::Set {
                    key,
                    value,
                    spaced,
                    comment,
                } => {
                    let eq = if *spaced { " = " } else { "=" };
                    text.push_str(&format!("{}{eq}{}", key.key(), value.text()));
                    if let Some(c) = comment {
                        text.push_str(&format!(" # {c}"));
                    }
                }
                Line::Comment(c) => text.push_str(&format!("# {c}")),
                Line::Blank => {}
                Line::Raw(s) => text.push_str(s),
            }
            text.push('\n');
        }
        let env = self
            .env
            .iter()
            .map(|(name, value)| {
                let name = match name {
                    Name::Any(s) => s.clone(),
                    known => format!("CHATD_{}", known.key().to_ascii_uppercase()),
                };
                (name, value.text())
            })
            .collect();
        (text, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_server_conf_passes_the_checks() {
        let text = include_str!("../../../server.conf");
        let config = parse(text, Vec::new()).expect("server.conf parses");
        check_config(&config);
    }
}
