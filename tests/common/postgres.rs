//! A real PostgreSQL from Debian's packages, started for one test in a temporary
//! directory: a copy of a cluster initdb'd once per test process (superuser `chatd`,
//! a password file, a database `chat`), `postgres` on a free loopback port and a
//! socket directory of its own.
//!
//! As root the server runs as `nobody` (PostgreSQL refuses root), through `setpriv`,
//! which execs: the child's pid is the postmaster's. Dropping the server shuts it
//! down by its pid (SIGQUIT, then SIGKILL) and removes the directory. Without the
//! binaries [`PgServer::start`] returns None after `skip_unless_required`.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use super::skip_unless_required;

/// How long PostgreSQL may take to accept connections after its start.
pub const PG_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The superuser initdb creates, and the owner of the test database.
pub const PG_USER: &str = "chatd";

/// The database created for the test.
pub const PG_DB: &str = "chat";

/// pg_hba.conf's method for every connection, Unix socket and TCP alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgAuth {
    ScramSha256,
    Trust,
    /// The password is stored as an md5 hash, so the server really asks for md5.
    Md5,
    /// Cleartext password.
    Password,
}

impl PgAuth {
    fn hba(self) -> &'static str {
        match self {
            PgAuth::ScramSha256 => "scram-sha-256",
            PgAuth::Trust => "trust",
            PgAuth::Md5 => "md5",
            PgAuth::Password => "password",
        }
    }
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub auth: PgAuth,
    /// A certificate and key (PEM) to serve TLS with (`ssl=on`).
    pub tls: Option<(String, String)>,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            auth: PgAuth::ScramSha256,
            tls: None,
            settings: Vec::new(),
        }
    }
}

/// A running PostgreSQL. See the module documentation.
pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    options: PgOptions,
    child: Option<Child>,
}

/// The newest /usr/lib/postgresql/*/bin holding `postgres` and `initdb`.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as the unprivileged user when the tests run as root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Whether every directory above `path` lets others through (o+x): the server user
/// must reach its directory.
fn traversable_by_others(path: &Path) -> bool {
    path.ancestors().skip(1).all(|dir| {
        fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// Space /dev/shm must have free before clusters go there: a Docker container's
/// default 64 MiB would not hold two of them.
const SHM_MIN_FREE: u64 = 1 << 30;

/// /dev/shm when it is a roomy memory file system everyone may write to: a cluster
/// is copied for every test, which on a busy disk costs a second or more, and in
/// memory a few milliseconds.
fn shm_dir() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    let meta = fs::metadata(&shm).ok()?;
    if !meta.is_dir() || meta.permissions().mode() & 0o1777 != 0o1777 {
        return None;
    }
    let path = std::ffi::CString::new("/dev/shm").ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    (free >= SHM_MIN_FREE).then_some(shm)
}

/// Where the server's temporary directory goes: /dev/shm when it fits, else the usual
/// temp dir, or /tmp when running as root and the server user could not reach the
/// temp dir.
fn parent_dir() -> PathBuf {
    if let Some(shm) = shm_dir() {
        return shm;
    }
    let temp = std::env::temp_dir();
    if !is_root() || traversable_by_others(&temp.join("x")) {
        return temp;
    }
    let fallback = PathBuf::from("/tmp");
    assert!(
        traversable_by_others(&fallback.join("x")),
        "neither {} nor /tmp can be traversed by the PostgreSQL server user",
        temp.display()
    );
    fallback
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn new_password() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("pw-{}-{nanos:x}", std::process::id())
}

/// initdb into `data` as the server user, superuser [`PG_USER`] with `password`.
fn initdb(bin: &Path, dir: &Path, data: &Path, auth: &str, password: &str) {
    let pwfile = dir.join("pwfile");
    fs::write(&pwfile, format!("{password}\n")).expect("pwfile");
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown the PostgreSQL directory");
    }
    let out = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-U", PG_USER, "-E", "UTF8", "--no-locale", "--no-sync"])
        // 1 MiB WAL segments instead of 16: less to copy for every test.
        .arg("--wal-segsize=1")
        .arg(format!("--auth={auth}"))
        .arg(format!("--pwfile={}", pwfile.display()))
        .env("HOME", dir)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One initdb'd cluster per test process, with the test database already created,
/// that every server copies: initdb costs seconds, a copy a fraction of one.
struct Template {
    /// `chatd-pg-template-PID`, removed when the process exits.
    dir: PathBuf,
    password: String,
}

impl Template {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

static TEMPLATE: OnceLock<Template> = OnceLock::new();

/// The template's directory, for the exit hook (a static is never dropped).
static TEMPLATE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_template() {
    if let Some(dir) = TEMPLATE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// The process's template, made by the first server that needs it.
fn template(bin: &Path) -> &'static Template {
    TEMPLATE.get_or_init(|| {
        let dir = parent_dir().join(format!("chatd-pg-template-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("template dir");
        if TEMPLATE_DIR.set(dir.clone()).is_ok() {
            // SAFETY: registers a plain function without captures; the test harness
            // ends with exit(3), which runs it once.
            unsafe { libc::atexit(remove_template) };
        }
        let password = new_password();
        let data = dir.join("data");
        initdb(bin, &dir, &data, "scram-sha-256", &password);
        // Single-user mode creates the database without a port or a socket.
        let mut child = as_server_user(&bin.join("postgres"))
            .args(["--single", "-D"])
            .arg(&data)
            .arg("postgres")
            .env("HOME", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run postgres --single");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("CREATE DATABASE {PG_DB};\n").as_bytes())
            .expect("write to postgres --single");
        let out = child.wait_with_output().expect("postgres --single");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("ERROR"),
            "CREATE DATABASE in single-user mode failed: {stderr}"
        );
        Template { dir, password }
    })
}

impl PgServer {
    /// A copy of this process's template cluster (or a fresh initdb for md5), started
    /// and answering, with the database created. None (after `skip_unless_required`)
    /// when PostgreSQL is not installed.
    pub fn start(options: PgOptions) -> Option<PgServer> {
        let Some(bin) = find_bin() else {
            skip_unless_required("PostgreSQL is not installed (Debian package postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("chatd-pg-")
            .tempdir_in(parent_dir())
            .expect("temp dir");
        fs::create_dir(dir.path().join("sock")).expect("socket dir");
        if let Some((cert, key)) = &options.tls {
            fs::write(dir.path().join("server.crt"), cert).expect("cert");
            fs::write(dir.path().join("server.key"), key).expect("key");
            fs::set_permissions(
                dir.path().join("server.key"),
                fs::Permissions::from_mode(0o600),
            )
            .expect("key mode");
        }
        let data = dir.path().join("data");
        let password = if options.auth == PgAuth::Md5 {
            // The md5 case stores its password as md5 once started, from a trust
            // cluster of its own.
            let password = new_password();
            initdb(&bin, dir.path(), &data, "trust", &password);
            password
        } else {
            // pg_hba.conf is written at every start, so one template serves the other
            // methods; `cp -a` keeps the server user's ownership.
            let template = template(&bin);
            let status = Command::new("cp")
                .arg("-a")
                .arg(template.data())
                .arg(&data)
                .status()
                .expect("run cp");
            assert!(status.success(), "copy the template cluster");
            template.password.clone()
        };
        if is_root() {
            // The temp dir is 0700 root: the server user must own it to get in.
            let status = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the PostgreSQL directory");
        }
        let mut server = PgServer {
            dir,
            bin,
            port: free_port(),
            password,
            options,
            child: None,
        };
        server.start_on_a_free_port();
        if server.options.auth == PgAuth::Md5 {
            server.psql_in("postgres", &format!("CREATE DATABASE {PG_DB}"));
            let password = server.password.clone();
            server.psql(&format!(
                "SET password_encryption = 'md5'; ALTER ROLE {PG_USER} PASSWORD '{password}'"
            ));
            server.write_hba(PgAuth::Md5);
            server.psql("SELECT pg_reload_conf()");
            // The reload is asynchronous: wait until a TCP login is asked for md5.
            let deadline = Instant::now() + PG_START_TIMEOUT;
            while server.psql_tcp_without_password().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(server)
    }

    fn write_hba(&self, auth: PgAuth) {
        let method = auth.hba();
        let hba = format!(
            "local all all {method}\nhost all all 127.0.0.1/32 {method}\nhost all all ::1/128 {method}\n"
        );
        fs::write(self.data().join("pg_hba.conf"), hba).expect("pg_hba.conf");
    }

    /// Some(stderr) once a TCP login without password is refused for a password.
    fn psql_tcp_without_password(&self) -> Option<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-w", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", PG_USER, "-d", PG_DB, "-c", "SELECT 1"])
            .env("HOME", self.dir.path())
            .env_remove("PGPASSWORD")
            .output()
            .ok()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && stderr.contains("password")).then_some(stderr)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's temporary directory (data, socket, log), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://chatd@127.0.0.1:PORT/chat`
    pub fn url(&self) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{PG_DB}", self.port)
    }

    /// `postgres://chatd@/chat?host=SOCKETDIR&port=PORT`
    pub fn unix_url(&self) -> String {
        format!(
            "postgres://{PG_USER}@/{PG_DB}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The postmaster's pid, for signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The first start: a port found free may be taken by another process before
    /// postgres binds it (tests run in parallel), so a new one is tried then.
    fn start_on_a_free_port(&mut self) {
        for _ in 0..10 {
            match self.launch() {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") => self.port = free_port(),
                Err(log) => panic!("postgres exited: {log}"),
            }
        }
        panic!("no free port for postgres after 10 tries: {}", self.log());
    }

    /// Starts the server (again) on the same data directory and port, and waits
    /// until it answers a query. The port, freed by the stop, may be held for a moment
    /// by another process: the start is then tried again for a few seconds.
    pub fn start_again(&mut self) {
        for _ in 0..50 {
            match self.launch() {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("postgres exited: {log}"),
            }
        }
        panic!("port {} stayed taken: {}", self.port, self.log());
    }

    /// Starts postgres and waits until it answers; Err with its log if it exited.
    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the server is running");
        if self.options.auth != PgAuth::Md5 || !self.data().join("pg_hba.conf").exists() {
            self.write_hba(match self.options.auth {
                PgAuth::Md5 => PgAuth::Trust,
                other => other,
            });
        }
        let log = fs::File::create(self.dir.path().join("postgres.log")).expect("log file");
        let mut command = as_server_user(&self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=40"]);
        if self.options.tls.is_some() {
            command.args(["-c", "ssl=on"]);
            command
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    self.dir.path().join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    self.dir.path().join("server.key").display()
                ));
        }
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let child = command
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + PG_START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("{status}: {}", self.log()));
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                && self.try_psql_in("postgres", "SELECT 1").is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept within {PG_START_TIMEOUT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// `pg_ctl stop -m immediate` as the server user, then reaps the postmaster.
    pub fn stop_immediate(&mut self) {
        let out = as_server_user(&self.bin.join("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30"])
            .env("HOME", self.dir.path())
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.reap(PG_START_TIMEOUT);
    }

    /// Waits for the postmaster to exit, up to `limit`; true if it did.
    fn reap(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(child) = &mut self.child {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Runs SQL in the test database through the Unix socket; the output unaligned,
    /// tuples only. Panics on an error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(PG_DB, sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    fn try_psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = as_server_user(&self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", PG_USER, "-d", db, "-c", sql])
            .env("HOME", self.dir.path())
            .env("PGPASSWORD", &self.password)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SIGQUIT is the immediate shutdown: the postmaster takes its backends down.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            if !self.reap(Duration::from_secs(10))
                && let Some(child) = &mut self.child
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL log ---\n{}", self.log());
        }
    }
}
