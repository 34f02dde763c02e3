//! The end-to-end harness: starts the real `chatd` binary on port 0 in a temporary
//! directory and talks to it over real, verified TLS.
//!
//! - [`TestServer`]: config file, public folder, database and certificates in a
//!   `TempDir`; start, restart, signal, wait for exit, read the captured stderr log.
//! - [`Client`]: one TLS connection with a small HTTP/1.1 client on top (keep-alive,
//!   pipelining, raw bytes, 1xx, EOF detection). Every read and write has a timeout and
//!   every wait polls against a deadline, so no test can hang.
//! - Token helpers forge JWTs (expired, foreign key, `alg: none`) for the auth tests.
//!
//! WebSocket tests can send the upgrade request with [`Client::request`], read the
//! `101` with [`Client::read_response`] and continue on [`Client::into_parts`].
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

pub mod postgres;
pub mod ws;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use tempfile::TempDir;

/// How long the server may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Read and write timeout of every client socket: nothing blocks longer than this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A known JWT secret (at least 32 bytes) for tests that forge tokens.
pub const TEST_SECRET: &str = "chatd-test-secret-0123456789-abcdefghijklmnop";

/// The content of the file placed next to `public/`; no response may ever contain it.
pub const SECRET_FILE_CONTENT: &str = "TOP-SECRET-7f3a9c do not serve";

/// The content of `public/index.html`.
pub const INDEX_HTML: &str = "<!doctype html><title>chatd</title><p>hello from chatd</p>\n";

/// Files created in `public/` (path, content).
pub const PUBLIC_FILES: &[(&str, &str)] = &[
    ("index.html", INDEX_HTML),
    ("style.css", "body { color: #222; }\n"),
    ("app.js", "console.log('chatd');\n"),
    ("docs/readme.txt", "plain text readme\n"),
    ("docs/index.html", "<p>docs index</p>\n"),
    ("data.bin", "\u{1}\u{2}\u{3}binary"),
    (".hidden", "hidden dot-file\n"),
];

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// A running `chatd` in its own temporary directory. Dropping it kills the process
/// (SIGKILL) if it still runs, and prints the server log if the test is failing.
pub struct TestServer {
    /// Holds server.conf, public/, the database, certs/ and the log; removed on drop.
    dir: TempDir,
    /// The test's own configuration lines (the harness adds its defaults around them).
    conf_lines: String,
    /// Environment variables given to every start (restarts included).
    env: Vec<(String, String)>,
    /// None once the process has exited and been reaped.
    child: Option<Child>,
    /// Parsed from the `listening on https://...` line of the current run.
    addr: SocketAddr,
    /// As printed on stdout at start: `AB:CD:...`.
    fingerprint: String,
    /// Lines the server printed on stdout after the `listening on` line (none expected).
    stdout: Option<Receiver<String>>,
    /// Every stdout line read so far, over all starts.
    stdout_lines: Vec<String>,
    /// Applied to the command before every start (extra environment, `pre_exec`).
    customize: Option<Customize>,
    /// The `database` URL the harness sets when the tests run on PostgreSQL and the
    /// test's own configuration names no database.
    database: Option<String>,
    /// This server's own PostgreSQL: outlives every restart of chatd, and is dropped
    /// after it (fields drop after `Drop::drop` has killed chatd).
    pg: Option<postgres::PgServer>,
}

/// A change made to the chatd command before it is spawned.
type Customize = Box<dyn Fn(&mut Command)>;

impl TestServer {
    /// Starts chatd with these extra `server.conf` lines.
    pub fn start(conf_lines: &str) -> TestServer {
        TestServer::start_with_env(conf_lines, &[])
    }

    /// Starts chatd with extra configuration lines and environment variables.
    pub fn start_with_env(conf_lines: &str, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_inner(conf_lines, env, None)
    }

    /// Starts chatd with extra configuration lines and a function that adjusts the
    /// command before every start (restarts included): variables that are not UTF-8,
    /// limits or a umask set in `pre_exec`.
    pub fn start_customized(
        conf_lines: &str,
        customize: impl Fn(&mut Command) + 'static,
    ) -> TestServer {
        TestServer::start_inner(conf_lines, &[], Some(Box::new(customize)))
    }

    fn start_inner(
        conf_lines: &str,
        env: &[(&str, &str)],
        customize: Option<Customize>,
    ) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("chatd-test-")
            .tempdir()
            .expect("create temp dir");
        create_public_dir(dir.path());
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let names_database = conf_keys(conf_lines).contains(&"database")
            || env.iter().any(|(k, _)| k == "CHATD_DATABASE");
        let (pg, database) = if test_database() == TestDatabase::Postgres && !names_database {
            let pg = postgres::PgServer::start(postgres::PgOptions::default())
                .expect("CHATD_TEST_DATABASE=postgres, but PostgreSQL is not installed");
            // Every other server goes through the Unix socket, so both paths are used.
            let url = if PG_SERVERS.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                pg.url()
            } else {
                pg.unix_url()
            };
            env.push((
                "CHATD_DATABASE_PASSWORD".to_string(),
                pg.password().to_string(),
            ));
            (Some(pg), Some(url))
        } else {
            (None, None)
        };
        let mut server = TestServer {
            dir,
            conf_lines: conf_lines.to_string(),
            env,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fingerprint: String::new(),
            stdout: None,
            stdout_lines: Vec::new(),
            customize,
            database,
            pg,
        };
        server.write_conf();
        server.spawn();
        server
    }

    /// Stops the server with SIGTERM (asserting exit code 0) if it still runs, and
    /// starts it again in the same directory: same database, certificate and JWT secret
    /// file (the port changes).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Like [`TestServer::restart`], with new configuration lines.
    pub fn restart_with(&mut self, conf_lines: &str) {
        if self.child.is_some() {
            self.stop();
        }
        self.conf_lines = conf_lines.to_string();
        self.write_conf();
        self.spawn();
    }

    /// SIGTERM, then waits (bounded) for exit code 0.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10));
        match status {
            Some(s) if s.success() => {}
            other => panic!(
                "chatd did not exit cleanly after SIGTERM: {other:?}\n{}",
                self.log()
            ),
        }
    }

    fn write_conf(&self) {
        fs::write(
            self.conf_path(),
            full_conf(&self.conf_lines, self.database.as_deref()),
        )
        .expect("write server.conf");
    }

    /// The PostgreSQL this server runs on, when the tests run on PostgreSQL.
    pub fn pg(&self) -> Option<&postgres::PgServer> {
        self.pg.as_ref()
    }

    fn spawn(&mut self) {
        if let Some(rx) = self.stdout.take() {
            self.stdout_lines.extend(rx.try_iter());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log file");
        let mut cmd = chatd_command(&self.conf_path(), &self.env);
        if let Some(customize) = &self.customize {
            customize(&mut cmd);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn chatd");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_lines.push(line.clone());
                    if let Some(fp) = line.strip_prefix("certificate SHA-256 fingerprint ") {
                        self.fingerprint = fp.trim().to_string();
                    } else if let Some(addr) = line.strip_prefix("listening on https://") {
                        self.addr = addr.trim().parse().unwrap_or_else(|e| {
                            panic!("cannot parse address in {line:?}: {e}\n{}", self.log())
                        });
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "chatd did not start within {START_TIMEOUT:?}\n{}",
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    panic!(
                        "chatd closed stdout before listening (exit {status:?})\n{}",
                        self.log()
                    );
                }
            }
        }
        self.stdout = Some(rx);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("server.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("chatd.log")
    }

    pub fn public_dir(&self) -> PathBuf {
        self.dir.path().join("public")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("certs/cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("certs/key.pem")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("chatd.db")
    }

    /// The address from the `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fingerprint printed at start.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Sends a signal (`libc::SIGTERM`, `SIGINT`, `SIGHUP`...) to the server process.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit; reaps it and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return None,
                Err(e) => panic!("waiting for chatd: {e}"),
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Every line the server printed on stdout so far (all starts).
    pub fn stdout(&mut self) -> Vec<String> {
        if let Some(rx) = &self.stdout {
            self.stdout_lines.extend(rx.try_iter());
        }
        self.stdout_lines.clone()
    }

    /// Everything the server wrote on stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Polls the log until it contains `needle` (true) or the timeout passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// The JWT secret the server uses: `SECRET_KEY` if the test set it, else the
    /// generated secret file.
    pub fn jwt_secret(&self) -> Vec<u8> {
        if let Some((_, v)) = self.env.iter().find(|(k, _)| k == "SECRET_KEY") {
            return v.as_bytes().to_vec();
        }
        let raw = fs::read(self.dir.path().join("certs/jwt.secret")).expect("read jwt.secret");
        raw.trim_ascii().to_vec()
    }

    /// A client configuration trusting the server's current certificate file only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config_trusting(&fs::read(self.cert_path()).expect("read certs/cert.pem"))
    }

    /// A new TLS connection, verified against the certificate for `localhost`.
    pub fn connect(&self) -> Client {
        self.try_connect()
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}\n{}", self.addr, self.log()))
    }

    pub fn try_connect(&self) -> io::Result<Client> {
        Client::connect(self.addr, self.client_config(), "localhost")
    }

    /// A plain TCP connection (no TLS) with timeouts.
    pub fn tcp(&self) -> TcpStream {
        tcp_connect(self.addr).expect("tcp connect")
    }

    /// `POST /register`, asserting 201; returns the user object.
    pub fn register(&self, username: &str, password: &str) -> Value {
        self.connect().register(username, password)
    }

    /// `POST /login`, asserting 200; returns the token.
    pub fn login(&self, username: &str, password: &str) -> String {
        self.connect().login(username, password)
    }

    /// The value of one sample of `GET /metrics`, e.g.
    /// `chatd_connections_refused_total{reason="max_connections_per_ip"}`.
    pub fn metric(&self, sample: &str) -> u64 {
        self.connect().metric(sample)
    }

    /// Polls one sample of `/metrics` until it equals `value` (true) or `timeout` passes
    /// (false). One kept-alive connection asked every 100 ms: well within the
    /// connection and request rates, however long the wait.
    pub fn wait_for_metric(&self, sample: &str, value: u64, timeout: Duration) -> bool {
        let mut c = self.connect();
        let deadline = Instant::now() + timeout;
        loop {
            if c.metric(sample) == value {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU time (user + system) the server process has used so far, from
    /// `/proc/PID/stat`: a loop that spins shows up here, however little it sends.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc/PID/stat");
        // The command name (field 2) is in parentheses and may contain spaces: count
        // the fields after it, where field 3 (the state) comes first.
        let after_name = &stat[stat.rfind(')').expect("command name") + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf only reads a system constant.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let per_sec = u64::try_from(per_sec).expect("clock ticks per second");
        Duration::from_millis(ticks * 1000 / per_sec)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- chatd log ({}) ----\n{}---- end of chatd log ----",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// The keys a block of configuration lines sets.
fn conf_keys(conf_lines: &str) -> Vec<&str> {
    conf_lines
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .collect()
}

/// The configuration the harness writes: its defaults for every key the test's lines
/// do not set (port 0, loopback, the temp public folder and database, debug logs, and
/// the PostgreSQL URL when the tests run there).
fn full_conf(conf_lines: &str, database: Option<&str>) -> String {
    let set_by_test = conf_keys(conf_lines);
    let mut text = String::from("# written by the chatd test harness\n");
    for (key, value) in [
        ("port", "0"),
        ("host", "127.0.0.1"),
        ("public_dir", "public"),
        ("db_path", "chatd.db"),
        ("log_level", "debug"),
    ]
    .into_iter()
    .chain(database.map(|url| ("database", url)))
    {
        if !set_by_test.contains(&key) {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text.push_str(conf_lines);
    text.push('\n');
    text
}

/// `chatd --config PATH` with a clean environment (no inherited `CHATD_*`,
/// `SECRET_KEY` or `RUST_LOG`, then the test's variables), run from an empty `cwd/`
/// next to the config file: relative paths must resolve against the config file's
/// directory, never the working directory.
pub fn chatd_command(conf_path: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.arg("--config").arg(conf_path).stdin(Stdio::null());
    if let Some(dir) = conf_path.parent() {
        let cwd = dir.join("cwd");
        fs::create_dir_all(&cwd).expect("create cwd");
        cmd.current_dir(cwd);
    }
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CHATD_") || n == "SECRET_KEY" || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs chatd with a configuration expected to be refused: returns the exit status
/// and stderr. Fails the test if it is still running after 10 s (it started).
pub fn run_expecting_exit(conf_text: &str, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("server.conf");
    fs::write(&conf, conf_text).expect("write conf");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    run_command_expecting_exit(chatd_command(&conf, &env))
}

/// Runs a prepared chatd command to its exit (bounded: 10 s); returns status and stderr.
pub fn run_command_expecting_exit(mut cmd: Command) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let err_path = dir.path().join("stderr");
    cmd.stdout(Stdio::null()).stderr(Stdio::from(
        fs::File::create(&err_path).expect("stderr file"),
    ));
    let mut child = cmd.spawn().expect("spawn chatd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chatd kept running (expected it to refuse the configuration)\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, fs::read_to_string(&err_path).unwrap_or_default())
}

/// Fills `dir/public` with [`PUBLIC_FILES`], and places traps for path traversal:
/// `dir/secret.txt` (outside the root), `public/leak.txt` (symlink to it) and
/// `public/outside` (symlink to the parent directory).
fn create_public_dir(dir: &Path) {
    let public = dir.join("public");
    for (path, content) in PUBLIC_FILES {
        let full = public.join(path);
        fs::create_dir_all(full.parent().expect("parent")).expect("mkdir public");
        fs::write(full, content).expect("write public file");
    }
    fs::write(dir.join("secret.txt"), SECRET_FILE_CONTENT).expect("write secret");
    std::os::unix::fs::symlink(dir.join("secret.txt"), public.join("leak.txt"))
        .expect("symlink leak.txt");
    std::os::unix::fs::symlink(dir, public.join("outside")).expect("symlink outside");
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this machine has an IPv6 loopback address.
pub fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// The database the end-to-end tests run chatd on, from `CHATD_TEST_DATABASE`
/// (chatd itself never sees the variable: [`chatd_command`] removes every `CHATD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDatabase {
    /// The default: `database = sqlite`, the file in the server's temp dir.
    Sqlite,
    /// A PostgreSQL of the server's own, started by [`TestServer`].
    Postgres,
}

/// `CHATD_TEST_DATABASE=sqlite|postgres` (sqlite when unset); anything else fails.
pub fn test_database() -> TestDatabase {
    match std::env::var("CHATD_TEST_DATABASE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => TestDatabase::Sqlite,
        Ok("postgres") => TestDatabase::Postgres,
        Ok(other) => panic!("CHATD_TEST_DATABASE={other:?}: expected sqlite or postgres"),
    }
}

/// Servers started on PostgreSQL so far: even ones get the TCP URL, odd ones the
/// Unix socket.
static PG_SERVERS: AtomicUsize = AtomicUsize::new(0);

/// For a test about SQLite alone (its file, its pragmas): true, with a note saying
/// why, when the tests run on PostgreSQL, and the test returns. The same test runs in
/// the SQLite pass.
pub fn sqlite_only(why: &str) -> bool {
    if test_database() == TestDatabase::Sqlite {
        return false;
    }
    eprintln!("NOTE: SQLite only, not run on PostgreSQL: {why}");
    true
}

/// Whether every test must run in full: set by CI (`CI=true`), or by hand with
/// `REQUIRE_ALL_TESTS=1`. A test that cannot run here then fails instead of
/// passing with a note.
pub fn all_tests_required() -> bool {
    let set = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    set("CI", "true") || set("REQUIRE_ALL_TESTS", "1")
}

/// A test (or part of one) that this machine cannot run, for `reason`: a note outside
/// CI, a failure under it (see [`all_tests_required`]), so that a green CI run means
/// every test ran.
pub fn skip_unless_required(reason: &str) {
    assert!(
        !all_tests_required(),
        "cannot run here: {reason} (required because CI=true or REQUIRE_ALL_TESTS=1)"
    );
    eprintln!("NOTE: skipped: {reason}");
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// A rustls client configuration whose only trust anchor is the PEM certificate given
/// (the server's self-signed certificate). Names are verified for real.
pub fn client_config_trusting(cert_pem: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .expect("parse certificate PEM");
    assert!(!certs.is_empty(), "no certificate in PEM");
    for cert in certs {
        roots.add(cert).expect("add trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The DER of the first certificate in a PEM file.
pub fn cert_der_from_pem(pem: &[u8]) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .as_ref()
        .to_vec()
}

/// SHA-256 of DER bytes as `AB:CD:...`, the format chatd prints.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A new self-signed certificate and key (PEM) for the names chatd's own covers.
pub fn new_self_signed_pair() -> (String, String) {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).expect("rcgen");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A TCP connection with [`IO_TIMEOUT`] on reads and writes.
pub fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// Like [`tcp_connect`], with the receive buffer set to `bytes` before connecting, so the
/// window the server sees is small from the first segment on (set later, it would only
/// shrink after the kernel advertised a large one). A client that reads nothing then
/// holds a few KiB: what the server cannot send stays queued in the server.
pub fn tcp_connect_small_window(addr: SocketAddr, bytes: usize) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_recv_buffer_size(bytes)?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let sock: TcpStream = socket.into();
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// Encrypts `plaintext` with the connection's keys into TLS records (one per 16 KiB,
/// so one for a short request) and returns their bytes instead of sending them: a test
/// can then deliver a record in pieces, or not at all.
pub fn seal(conn: &mut ClientConnection, plaintext: &[u8]) -> Vec<u8> {
    conn.writer().write_all(plaintext).expect("encrypt");
    let mut records = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut records).expect("take the records");
    }
    records
}

/// Whether an I/O error means "the peer closed or reset the connection".
fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A read that ran out of time (the socket's read timeout), not a failure.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads a plain TCP socket until EOF (or reset) within `timeout`; returns what arrived,
/// or None if the connection was still open when the time ran out.
pub fn read_until_eof(sock: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        match sock.read(&mut chunk) {
            Ok(0) => return Some(data),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if is_closed_error(&e) => return Some(data),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 over TLS
// ---------------------------------------------------------------------------------------

/// One HTTP response as received.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Header names in lower case, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of this header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (fails the test if it is not JSON).
    pub fn json(&self) -> Value {
        json(self)
    }

    /// Whether the response announces `connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// The body of a response as JSON.
pub fn json(resp: &Response) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "response {} is not JSON ({e}): {:?}",
            resp.status,
            resp.text()
        )
    })
}

/// A TLS connection to the server and an HTTP/1.1 client on it.
pub struct Client {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
    /// Received plaintext not yet consumed as a response.
    buf: Vec<u8>,
    /// Value of the Host header sent.
    host: String,
    /// Set by [`Client::read_slowly`]: at most this many bytes per read, then a pause.
    throttle: Option<(usize, Duration)>,
}

impl Client {
    /// Connects and completes the TLS handshake (errors surface here, not later).
    pub fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<Client> {
        Client::handshake(tcp_connect(addr)?, config, server_name)
    }

    /// Completes a TLS handshake over an open TCP connection (see [`tcp_connect`]).
    pub fn handshake(
        sock: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<Client> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        let deadline = Instant::now() + IO_TIMEOUT;
        while tls.conn.is_handshaking() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake did not complete",
                ));
            }
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Client {
            tls,
            buf: Vec::new(),
            host: server_name.to_string(),
            throttle: None,
        })
    }

    /// The DER of the certificate the server presented.
    pub fn peer_cert_der(&self) -> Vec<u8> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("server certificate")
            .as_ref()
            .to_vec()
    }

    /// Writes raw bytes (several pipelined requests, a partial request...).
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write to server");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Serialises a request: Host, the given headers, Content-Length when there is a
    /// body (or the method is POST/PUT), then the body.
    pub fn build_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends one request and reads its (final) response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let raw = self.build_request(method, path, headers, body);
        self.send(&raw);
        self.read_response_to(method)
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// GET with `Authorization: Bearer <token>`.
    pub fn get_auth(&mut self, path: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        self.request("GET", path, &[("Authorization", &auth)], b"")
    }

    /// POST (or another method) with a JSON body and an optional bearer token.
    pub fn send_json(
        &mut self,
        method: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        self.request(method, path, &headers, body.to_string().as_bytes())
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> Response {
        self.send_json("POST", path, body, None)
    }

    /// `POST /register`, asserting 201; returns the user object.
    pub fn register(&mut self, username: &str, password: &str) -> Value {
        let r = self.post_json(
            "/register",
            &serde_json::json!({"username": username, "password": password}),
        );
        assert_eq!(r.status, 201, "register {username}: {}", r.text());
        r.json()
    }

    /// `POST /login`, asserting 200; returns the token.
    pub fn login(&mut self, username: &str, password: &str) -> String {
        let r = self.post_json(
            "/login",
            &serde_json::json!({"username": username, "password": password}),
        );
        assert_eq!(r.status, 200, "login {username}: {}", r.text());
        r.json()["token"]
            .as_str()
            .expect("token is a string")
            .to_string()
    }

    /// One sample of `GET /metrics` (see [`TestServer::metric`]).
    pub fn metric(&mut self, sample: &str) -> u64 {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        metric_value(&r.text(), sample)
    }

    /// Reads the next final response (interim 1xx responses are skipped; `101
    /// Switching Protocols` is final), for a request that was not HEAD.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
    }

    /// Reads the next final response to a request with this method (HEAD responses
    /// have no body whatever their Content-Length says).
    pub fn read_response_to(&mut self, method: &str) -> Response {
        loop {
            let r = self.read_any_response(method);
            if r.status == 101 || !(100..200).contains(&r.status) {
                return r;
            }
        }
    }

    /// The TLS stream and the bytes already received after the last response: after a
    /// `101 Switching Protocols`, a WebSocket client takes over from here.
    pub fn into_parts(self) -> (StreamOwned<ClientConnection, TcpStream>, Vec<u8>) {
        (self.tls, self.buf)
    }

    /// Reads the next response, interim (1xx) ones included.
    pub fn read_any_response(&mut self, method: &str) -> Response {
        self.try_read_any_response(method)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    pub fn try_read_any_response(&mut self, method: &str) -> io::Result<Response> {
        loop {
            if let Some(head_len) = find_head_end(&self.buf) {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(&self.buf[..head_len]) {
                    Ok(httparse::Status::Complete(_)) => {}
                    other => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "bad response head ({other:?}): {:?}",
                                String::from_utf8_lossy(&self.buf[..head_len])
                            ),
                        ));
                    }
                }
                let status = parsed.code.unwrap_or(0);
                let version = format!("HTTP/1.{}", parsed.version.unwrap_or(1));
                let reason = parsed.reason.unwrap_or("").to_string();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                let content_length = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map(|(_, v)| v.parse::<usize>().expect("numeric content-length"));
                let has_body = method != "HEAD"
                    && !(100..200).contains(&status)
                    && status != 204
                    && status != 304;
                let body_len = if has_body {
                    content_length.expect("every chatd response with a body has content-length")
                } else {
                    0
                };
                while self.buf.len() < head_len + body_len {
                    if !self.read_more()? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the middle of a response body",
                        ));
                    }
                }
                let body = self.buf[head_len..head_len + body_len].to_vec();
                self.buf.drain(..head_len + body_len);
                return Ok(Response {
                    version,
                    status,
                    reason,
                    headers,
                    body,
                });
            }
            if !self.read_more()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// From now on reads at most `chunk` bytes at a time and pauses `pause` after each
    /// read: a client that reads slowly but steadily.
    pub fn read_slowly(&mut self, chunk: usize, pause: Duration) {
        self.throttle = Some((chunk, pause));
    }

    /// Reads whatever arrives into the buffer; false on EOF.
    fn read_more(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let (max, pause) = self
            .throttle
            .map_or((chunk.len(), Duration::ZERO), |(max, pause)| {
                (max.min(chunk.len()), pause)
            });
        loop {
            match self.tls.read(&mut chunk[..max]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    std::thread::sleep(pause);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes received but not consumed as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Waits up to `timeout` for the server to close the connection (TLS close_notify,
    /// TCP FIN or reset): true if it did, false if it was still open. Bytes that arrive
    /// meanwhile are kept in the buffer.
    pub fn is_closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            self.tls
                .sock
                .set_read_timeout(Some(left))
                .expect("set timeout");
            match self.read_more() {
                Ok(false) => break true,
                Ok(true) => {}
                Err(e) if is_closed_error(&e) => break true,
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("unexpected error while waiting for close: {e}"),
            }
        };
        let _ = self.tls.sock.set_read_timeout(Some(IO_TIMEOUT));
        closed
    }

    /// Asserts the server closes the connection within 5 s with nothing more sent.
    pub fn assert_closed(&mut self) {
        assert!(
            self.is_closed_within(Duration::from_secs(5)),
            "server did not close the connection"
        );
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Asserts the connection is still open: nothing (no EOF) arrives within `wait`.
    pub fn assert_open(&mut self, wait: Duration) {
        assert!(
            !self.is_closed_within(wait),
            "server closed a connection that should stay open"
        );
    }

    /// Sends our TLS close_notify and shuts the socket down.
    pub fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.conn.complete_io(&mut self.tls.sock);
        let _ = self.tls.sock.shutdown(Shutdown::Both);
    }
}

/// The end of the response head (after the blank line), if it is all here.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The value of one sample line in a Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().expect("numeric sample"))
        })
        .unwrap_or_else(|| panic!("no sample {sample} in metrics:\n{text}"))
}

// ---------------------------------------------------------------------------------------
// Contract assertions
// ---------------------------------------------------------------------------------------

/// The security headers every response carries.
pub fn assert_security_headers(r: &Response) {
    let hsts = r
        .header("strict-transport-security")
        .unwrap_or_else(|| panic!("no Strict-Transport-Security on {}", r.status));
    assert!(hsts.starts_with("max-age="), "HSTS: {hsts}");
    let max_age: u64 = hsts["max-age=".len()..]
        .split(';')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .expect("numeric max-age");
    assert!(max_age >= 31_536_000, "HSTS max-age too short: {hsts}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("no Content-Security-Policy on {}", r.status));
    assert!(csp.contains("default-src 'none'"), "CSP: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp}");
}

/// Asserts the error contract: status, JSON content type, body exactly
/// `{"error":"<code>","message":"<text>"}` with a non-empty message, and the security
/// headers.
pub fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (status, Some(code)),
        "expected {status} {code}, got {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let prefix = format!("{{\"error\":\"{code}\",\"message\":\"");
    assert!(
        r.text().starts_with(&prefix) && r.text().ends_with("\"}"),
        "error body not exactly {{\"error\",\"message\"}}: {}",
        r.text()
    );
    let body = r.json();
    let obj = body.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 2, "error body has extra fields: {}", r.text());
    let message = obj["message"].as_str().expect("message is a string");
    assert!(!message.is_empty(), "empty error message");
    assert_security_headers(r);
}

/// Asserts an error that closes the connection: `connection: close`, then EOF.
pub fn assert_error_and_close(c: &mut Client, r: &Response, status: u16, code: &str) {
    assert_error(r, status, code);
    assert!(r.closes(), "{status} {code} without connection: close");
    c.assert_closed();
}

/// Asserts a user object: exactly id, username, display_name, created_at (RFC 3339
/// UTC, within two minutes of now).
pub fn assert_user(user: &Value, username: &str) {
    let obj = user.as_object().expect("user is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["created_at", "display_name", "id", "username"],
        "{user}"
    );
    assert!(user["id"].is_i64() || user["id"].is_u64(), "id: {user}");
    assert_eq!(user["username"], username);
    assert!(user["display_name"].is_string(), "{user}");
    let created = user["created_at"].as_str().expect("created_at string");
    let secs = parse_rfc3339_utc(created)
        .unwrap_or_else(|| panic!("created_at is not RFC 3339 UTC: {created}"));
    assert!(
        (secs - unix_now()).abs() <= 120,
        "created_at {created} is not now"
    );
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `YYYY-MM-DDTHH:MM:SSZ` (optionally with fractional seconds) to Unix seconds.
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &s[19..s.len() - 1];
    if !(frac.is_empty()
        || (frac.len() > 1
            && frac.starts_with('.')
            && frac[1..].bytes().all(|c| c.is_ascii_digit())))
    {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, the Date header) to Unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let d: i64 = parts[1].parse().ok()?;
    let mo = MONTHS.iter().position(|m| *m == parts[2])? as i64 + 1;
    let y: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

/// URL-safe base64 without padding, as JWT uses.
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes URL-safe base64 without padding.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = A.iter().position(|&a| a == c).expect("base64url character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The claims of a JWT, decoded without any verification (to look at them).
pub fn token_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three-part JWT");
    serde_json::from_slice(&b64url_decode(payload)).expect("claims are JSON")
}

/// The header of a JWT, decoded without verification.
pub fn token_header(token: &str) -> Value {
    let header = token.split('.').next().expect("JWT");
    serde_json::from_slice(&b64url_decode(header)).expect("header is JSON")
}

/// Signs `claims` with HS256 and `secret` (the way chatd does, or with a foreign key).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    sign_with(jsonwebtoken::Algorithm::HS256, claims, secret)
}

/// Signs `claims` with any HMAC algorithm of jsonwebtoken.
pub fn sign_with(alg: jsonwebtoken::Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign token")
}

/// An unsigned `alg: none` token: header `{"alg":"none","typ":"JWT"}`, the claims and an
/// empty signature.
pub fn alg_none_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// Claims like chatd's for a user, with the given times and password version.
pub fn claims_for(user_id: i64, name: &str, iat: i64, exp: i64, ver: i64) -> Value {
    serde_json::json!({
        "sub": user_id.to_string(),
        "name": name,
        "iat": iat,
        "exp": exp,
        "jti": format!("forged-{iat}-{exp}-{ver}"),
        "ver": ver,
    })
}
