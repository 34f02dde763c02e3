//! Attacks on the real chatd binary, run by `make attack` (tests/attack.sh), one check
//! per `#[ignore]` test: the TLS scan (testssl.sh), slowloris, slow body and slow read
//! (slowhttptest), thousands of silent TCP connections, thousands of WebSockets that
//! stop reading while a room is flooded, and a database on a full disk.
//!
//! Each check starts its own chatd on loopback with a configuration suited to it, prints
//! one `PASS <check>: <figures>` or `FAIL <check>: <why>; <figures>` line and fails the
//! test on a failure. The unit tests at the end check the verdict on testssl's findings
//! and run with the ordinary test suite.
//!
//! Figures: `p99` is the latency of a normal client polling `GET /healthz` on a
//! keep-alive connection from 127.0.0.2 while the attack runs; `rss` is chatd's peak
//! resident memory (VmHWM) over the whole check; `lifetime` is how long the server kept
//! an attacking connection established, seen in /proc/net/tcp.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Where the healthz prober connects from: another loopback address than the attackers
/// (127.0.0.1), so that its connection is told apart in /proc/net/tcp and counted
/// against its own per-address limits.
const PROBER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The pause between two healthz requests of the prober.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// The healthz p99 every attack must stay under.
const P99_BOUND: Duration = Duration::from_millis(100);

/// chatd's header and idle timeouts during the slow attacks and the silent connections:
/// short, so that the checks are quick.
const ATTACK_TIMEOUT_SECS: u64 = 5;

/// Slack on a timeout: timers fire on the next loop turn and /proc/net/tcp is sampled
/// every 100 ms.
const TIMEOUT_SLACK: Duration = Duration::from_millis(1500);

/// The file of the slow read: larger than anything chatd's web client has in public/
/// (27 KiB); three answers fit in the kernel's send buffer of a connection.
const SLOW_READ_FILE_BYTES: usize = 32 * 1024;

/// The file of the large slow read: three answers are far more than the kernel's send
/// buffer of a connection takes, so they wait in chatd's queue when the idle timeout
/// passes, and the close it decides has its grace period to go out.
const SLOW_READ_LARGE_FILE_BYTES: usize = 512 * 1024;

/// How long a close decided by the idle timeout may take to go out (README: "a close
/// the idle timeout decides gets 2 s to go out, then the connection is dropped").
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Peak RSS bounds, measured (SECURITY.md gives the figures) with a margin of about 2x.
const RSS_BOUND_SLOW_MIB: u64 = 64;
const RSS_BOUND_SILENT_MIB: u64 = 64;
const RSS_BOUND_WS_MIB: u64 = 256;

/// The common part of every attack configuration: limits per address raised where the
/// attacker (one address, 127.0.0.1) would otherwise be stopped at accept, which would
/// test the accept limits rather than the timeouts and queues under attack.
fn attack_conf(extra: &str) -> String {
    format!(
        "log_level = info\n\
         max_connections_per_ip = 5000\n\
         conn_rate_per_ip = 10000/s burst 10000\n\
         http_rate_per_ip = 10000/s burst 10000\n\
         {extra}"
    )
}

/// The header and idle timeouts of the checks that wait for them.
fn short_timeouts() -> String {
    format!(
        "header_timeout_secs = {ATTACK_TIMEOUT_SECS}\nidle_timeout_secs = {ATTACK_TIMEOUT_SECS}\n"
    )
}

// ---------------------------------------------------------------------------------------
// Verdicts and measurements
// ---------------------------------------------------------------------------------------

/// Prints the check's PASS or FAIL line and fails the test on failures.
fn verdict(check: &str, failures: &[String], figures: &str) {
    if failures.is_empty() {
        println!("PASS {check}: {figures}");
    } else {
        println!("FAIL {check}: {}; {figures}", failures.join("; "));
        panic!("{check} failed");
    }
}

/// chatd's peak resident memory so far, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A TLS client connection from `PROBER_ADDR`.
fn connect_from_prober(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<Client> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((PROBER_ADDR, 0)).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let sock: TcpStream = socket.into();
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    Client::handshake(sock, config, "localhost")
}

/// A normal client polling `GET /healthz` every `PROBE_INTERVAL` on a keep-alive connection
/// (reconnecting when it is closed) until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeResult>,
}

struct ProbeResult {
    /// Latency of every successful request, in order.
    latencies: Vec<Duration>,
    /// Requests that failed or answered anything but 200.
    errors: usize,
}

impl ProbeResult {
    fn p99(&self) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::MAX;
        }
        sorted[(sorted.len() * 99).div_ceil(100) - 1]
    }

    fn max(&self) -> Duration {
        self.latencies
            .iter()
            .copied()
            .max()
            .unwrap_or(Duration::MAX)
    }

    /// The figures and the failures of a probe run.
    fn judge(&self, failures: &mut Vec<String>) -> String {
        let p99 = self.p99();
        if self.latencies.len() < 50 {
            failures.push(format!("only {} healthz answers", self.latencies.len()));
        }
        if self.errors > 0 {
            failures.push(format!("{} healthz requests failed", self.errors));
        }
        if p99 >= P99_BOUND {
            failures.push(format!("healthz p99 {p99:.1?} >= {P99_BOUND:?}"));
        }
        format!(
            "healthz n={} p99={:.1?} max={:.1?} errors={}",
            self.latencies.len(),
            p99,
            self.max(),
            self.errors
        )
    }
}

impl Prober {
    fn start(server: &TestServer) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let addr = server.addr();
        let config = server.client_config();
        let connect = move || connect_from_prober(addr, config.clone());
        let mut client = connect().ok();
        let thread = thread::spawn(move || {
            let mut result = ProbeResult {
                latencies: Vec::new(),
                errors: 0,
            };
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let c = match client.take() {
                    Some(c) => Some(c),
                    None => connect().ok(),
                };
                let answered = c.and_then(|mut c| {
                    let raw = c.build_request("GET", "/healthz", &[], b"");
                    c.try_send(&raw).ok()?;
                    let r = c.try_read_any_response("GET").ok()?;
                    let keep = !r.closes();
                    let ok = r.status == 200;
                    if keep {
                        client = Some(c);
                    }
                    Some(ok)
                });
                match answered {
                    Some(true) => result.latencies.push(started.elapsed()),
                    _ => result.errors += 1,
                }
                thread::sleep(PROBE_INTERVAL);
            }
            result
        });
        Prober { stop, thread }
    }

    fn finish(self) -> ProbeResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober thread")
    }
}

/// Follows the server side of every established connection from 127.0.0.1 to chatd's
/// port in /proc/net/tcp, every 100 ms, until stopped: how many there were, at most at
/// once, and how long each stayed established.
struct ConnWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<WatchResult>,
}

#[derive(Default)]
struct WatchResult {
    /// Connections seen (each remote port counted once per time it was established).
    seen: usize,
    /// Most connections established at once.
    peak: usize,
    /// How long each ended connection stayed established.
    lifetimes: Vec<Duration>,
    /// Connections still established when the watch ended.
    still_open: usize,
}

impl WatchResult {
    fn max_lifetime(&self) -> Duration {
        self.lifetimes.iter().copied().max().unwrap_or_default()
    }
}

/// Remote ports of the server-side sockets established from 127.0.0.1 to `port`.
fn established_from_loopback(port: u16) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    let Ok(text) = fs::read_to_string("/proc/net/tcp") else {
        return out;
    };
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 || fields[3] != "01" {
            continue;
        }
        let (Some((_, local_port)), Some((remote_ip, remote_port))) =
            (fields[1].split_once(':'), fields[2].split_once(':'))
        else {
            continue;
        };
        let (Ok(local_port), Ok(remote_ip), Ok(remote_port)) = (
            u16::from_str_radix(local_port, 16),
            u32::from_str_radix(remote_ip, 16),
            u16::from_str_radix(remote_port, 16),
        ) else {
            continue;
        };
        // The address is printed as the in-memory (network order) word.
        if local_port == port && Ipv4Addr::from(remote_ip.to_ne_bytes()) == Ipv4Addr::LOCALHOST {
            out.insert(remote_port);
        }
    }
    out
}

impl ConnWatch {
    fn start(port: u16) -> ConnWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut result = WatchResult::default();
            let mut open: HashMap<u16, Instant> = HashMap::new();
            loop {
                let stopping = flag.load(Ordering::Relaxed);
                let now = Instant::now();
                let current = established_from_loopback(port);
                open.retain(|remote, since| {
                    let still = current.contains(remote);
                    if !still {
                        result.lifetimes.push(now - *since);
                    }
                    still
                });
                for remote in current {
                    open.entry(remote).or_insert_with(|| {
                        result.seen += 1;
                        now
                    });
                }
                result.peak = result.peak.max(open.len());
                if stopping {
                    result.still_open = open.len();
                    return result;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        ConnWatch { stop, thread }
    }

    fn finish(self) -> WatchResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("watch thread")
    }
}

/// Waits (bounded) until no connection from 127.0.0.1 is established to `port`.
fn wait_attackers_gone(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || established_from_loopback(port).is_empty())
}

/// Runs a command to its end, killing it (by its pid) if it outlives `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> io::Result<(bool, String)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + limit;
    let success = loop {
        if let Some(status) = child.try_wait()? {
            break status.success();
        }
        if Instant::now() >= deadline {
            kill_child(&mut child);
            break false;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let text = out.join().unwrap_or_default();
    Ok((success, text))
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

// ---------------------------------------------------------------------------------------
// 1. TLS: testssl.sh
// ---------------------------------------------------------------------------------------

/// Findings at MEDIUM or above that a self-signed test certificate always produces; they
/// say nothing about chatd's TLS. An operator's real certificate (from a CA, with a
/// normal validity and revocation information) does not raise them.
const ACCEPTED_CERT_FINDINGS: &[(&str, &str)] = &[
    (
        "cert_chain_of_trust",
        "the test certificate is self-signed: no CA vouches for it",
    ),
    (
        "cert_validityPeriod",
        "rcgen's self-signed certificate is valid from 1975 to 4096",
    ),
    (
        "cert_revocation",
        "a self-signed certificate names no CRL or OCSP responder",
    ),
];

/// Warnings about the scanner, not about chatd.
const ACCEPTED_SCANNER_WARNINGS: &[&str] = &["engine_problem"];

/// What each protocol finding must say: only TLS 1.2 and 1.3 offered.
const PROTOCOLS: &[(&str, &str)] = &[
    ("SSLv2", "not offered"),
    ("SSLv3", "not offered"),
    ("TLS1", "not offered"),
    ("TLS1_1", "not offered"),
    ("TLS1_2", "offered"),
    ("TLS1_3", "offered"),
];

/// Cipher classes that must not be offered at all.
const CIPHERLISTS_NOT_OFFERED: &[&str] = &[
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",
];

/// testssl's vulnerability checks: each must be OK.
const VULNERABILITIES: &[&str] = &[
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "BREACH",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
];

/// The verdict on testssl's JSON findings: the failures, and the ciphers offered.
fn judge_testssl(findings: &[Value]) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut ciphers = Vec::new();
    let get = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| (str_of(&f["severity"]), str_of(&f["finding"])))
    };
    for (id, expected) in PROTOCOLS {
        match get(id) {
            // TLS1_3's finding is "offered with final": the first word decides.
            Some((_, finding))
                if finding == *expected
                    || (*expected == "offered" && finding.starts_with("offered with")) => {}
            Some((severity, finding)) => {
                failures.push(format!("{id}: {finding} ({severity}), expected {expected}"))
            }
            None => failures.push(format!("{id}: not reported")),
        }
    }
    for id in CIPHERLISTS_NOT_OFFERED {
        match get(id) {
            Some((_, finding)) if finding == "not offered" => {}
            Some((severity, finding)) => failures.push(format!("{id}: {finding} ({severity})")),
            None => failures.push(format!("{id}: not reported")),
        }
    }
    match get("PFS") {
        Some((severity, finding)) if severity == "OK" && finding == "offered" => {}
        other => failures.push(format!("PFS: {other:?}, expected OK offered")),
    }
    for id in VULNERABILITIES {
        match get(id) {
            Some((severity, _)) if severity == "OK" => {}
            Some((severity, finding)) => failures.push(format!("{id}: {finding} ({severity})")),
            None => failures.push(format!("{id}: not reported")),
        }
    }
    // Every cipher offered, from the per-cipher lines: `x1301 TLS_AES_128_GCM_SHA256
    // ECDH 253 AESGCM 128 ...`: the key exchange must be ephemeral and the
    // encryption AEAD.
    for f in findings {
        let id = str_of(&f["id"]);
        if !id.starts_with("cipher_x") {
            continue;
        }
        let finding = str_of(&f["finding"]);
        let words: Vec<&str> = finding.split_whitespace().collect();
        let (name, kx, enc) = match words.as_slice() {
            [_, name, kx, _, enc, ..] => (*name, *kx, *enc),
            _ => {
                failures.push(format!("{id}: cannot read {finding:?}"));
                continue;
            }
        };
        ciphers.push(name.to_string());
        if !matches!(kx, "ECDH" | "DH") {
            failures.push(format!("{name}: key exchange {kx} has no forward secrecy"));
        }
        if !matches!(enc, "AESGCM" | "ChaCha20" | "AESCCM") {
            failures.push(format!("{name}: {enc} is not an AEAD cipher"));
        }
    }
    if ciphers.is_empty() {
        failures.push("no cipher listed".to_string());
    }
    for f in findings {
        let id = str_of(&f["id"]);
        let severity = str_of(&f["severity"]);
        let finding = str_of(&f["finding"]);
        let serious = matches!(severity.as_str(), "MEDIUM" | "HIGH" | "CRITICAL");
        if serious && !ACCEPTED_CERT_FINDINGS.iter().any(|(a, _)| *a == id) {
            failures.push(format!("{id}: {finding} ({severity})"));
        }
        if (severity == "WARN" || severity == "FATAL")
            && !ACCEPTED_SCANNER_WARNINGS.contains(&id.as_str())
        {
            failures.push(format!("scan problem {id}: {finding} ({severity})"));
        }
    }
    (failures, ciphers)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_tls_testssl() {
    let check = "tls (testssl.sh)";
    if !tool_exists("testssl") {
        verdict(
            check,
            &["testssl not installed (Debian package testssl.sh)".into()],
            "",
        );
    }
    let server = TestServer::start(
        "log_level = warn\nhttp_rate_per_ip = 10000/s burst 10000\nconn_rate_per_ip = 10000/s burst 10000",
    );
    let json_path = server.dir().join("testssl.json");
    let mut cmd = Command::new("testssl");
    cmd.args(["--quiet", "--color", "0", "--warnings", "off", "--jsonfile"])
        .arg(&json_path)
        .arg(format!("127.0.0.1:{}", server.addr().port()));
    let started = Instant::now();
    let (ran, output) = run_bounded(cmd, Duration::from_secs(300)).expect("run testssl");
    let took = started.elapsed();
    let findings: Vec<Value> = fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut failures = Vec::new();
    if !ran {
        failures.push(format!(
            "testssl failed or ran out of time: {}",
            output.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        ));
    }
    if findings.is_empty() {
        failures.push("no findings in testssl's JSON".into());
    }
    let (found, ciphers) = judge_testssl(&findings);
    failures.extend(found);
    let accepted: Vec<&str> = findings
        .iter()
        .filter_map(|f| f["id"].as_str())
        .filter(|id| ACCEPTED_CERT_FINDINGS.iter().any(|(a, _)| a == id))
        .collect();
    verdict(
        check,
        &failures,
        &format!(
            "TLS 1.2 + 1.3 only, {} suites all AEAD with forward secrecy ({}), \
             {} vulnerability checks OK, accepted self-signed certificate findings: {} \
             ({} findings, {:.0?})",
            ciphers.len(),
            ciphers.join(" "),
            VULNERABILITIES.len(),
            accepted.join(" "),
            findings.len(),
            took
        ),
    );
}

// ---------------------------------------------------------------------------------------
// 2. Slow attacks: slowhttptest
// ---------------------------------------------------------------------------------------

/// Runs slowhttptest with these mode arguments against chatd while the prober polls
/// /healthz, and judges latency, memory and how long chatd kept each attacking
/// connection.
/// What a slow attack asks for, and how long chatd may keep one of its connections.
struct SlowTarget<'a> {
    path: &'a str,
    /// Size of /big.bin.
    file_bytes: usize,
    /// Beyond the timeout: the grace of a close the idle timeout decided while
    /// answers were still queued (zero where the connection is dropped at once).
    close_grace: Duration,
}

fn slow_attack(check: &str, mode: &[&str], target: SlowTarget<'_>, connections: usize) {
    if !tool_exists("slowhttptest") {
        verdict(check, &["slowhttptest not installed".into()], "");
    }
    let server = TestServer::start(&attack_conf(&short_timeouts()));
    fs::write(
        server.public_dir().join("big.bin"),
        vec![b'x'; target.file_bytes],
    )
    .expect("big file");
    let port = server.addr().port();
    let watch = ConnWatch::start(port);
    let prober = Prober::start(&server);
    let mut cmd = Command::new("slowhttptest");
    cmd.args(mode)
        .args([
            "-c",
            &connections.to_string(),
            "-r",
            "200",
            "-l",
            "25",
            "-p",
            "3",
        ])
        .arg("-u")
        .arg(format!("https://127.0.0.1:{port}{}", target.path))
        .arg("-o")
        .arg(server.dir().join("slowhttptest"))
        .arg("-g")
        .current_dir(server.dir());
    let (_, output) = run_bounded(cmd, Duration::from_secs(90)).expect("run slowhttptest");
    // Whatever slowhttptest left open must still be cut by chatd's timeouts.
    let gone = wait_attackers_gone(port, Duration::from_secs(ATTACK_TIMEOUT_SECS + 5));
    let probe = prober.finish();
    let watched = watch.finish();
    let rss_mib = peak_rss_kib(server.pid()) / 1024;
    let cpu = server.cpu_time();

    let mut failures = Vec::new();
    let probe_figures = probe.judge(&mut failures);
    let bound = Duration::from_secs(ATTACK_TIMEOUT_SECS) + target.close_grace + TIMEOUT_SLACK;
    let too_long = watched.lifetimes.iter().filter(|l| **l > bound).count();
    if watched.seen < connections / 2 {
        failures.push(format!(
            "only {} attacking connections seen (slowhttptest: {})",
            watched.seen,
            output.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
        ));
    }
    if too_long > 0 {
        failures.push(format!("{too_long} connections outlived {bound:?}"));
    }
    if !gone || watched.still_open > 0 {
        failures.push(format!("{} connections still open", watched.still_open));
    }
    if rss_mib >= RSS_BOUND_SLOW_MIB {
        failures.push(format!("rss {rss_mib} MiB >= {RSS_BOUND_SLOW_MIB} MiB"));
    }
    verdict(
        check,
        &failures,
        &format!(
            "{} connections (peak {} at once), max lifetime {:.1?} (bound {:.1?}), {}, \
             rss {} MiB (bound {} MiB), chatd CPU {:.1?}",
            watched.seen,
            watched.peak,
            watched.max_lifetime(),
            bound,
            probe_figures,
            rss_mib,
            RSS_BOUND_SLOW_MIB,
            cpu
        ),
    );
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_slowloris() {
    // Headers trickled every 2 s, never finished: the header timeout cuts them.
    slow_attack(
        "slowloris",
        &["-H", "-i", "2", "-s", "8192"],
        SlowTarget {
            path: "/",
            file_bytes: SLOW_READ_FILE_BYTES,
            close_grace: Duration::ZERO,
        },
        400,
    );
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_slow_body() {
    // A complete header announcing 8 KiB of JSON, the body trickled 10 bytes every 2 s:
    // the header timeout covers the body of the first request.
    slow_attack(
        "slow body",
        &[
            "-B",
            "-i",
            "2",
            "-s",
            "8192",
            "-t",
            "POST",
            "-f",
            "application/json",
        ],
        SlowTarget {
            path: "/login",
            file_bytes: SLOW_READ_FILE_BYTES,
            close_grace: Duration::ZERO,
        },
        400,
    );
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_slow_read() {
    // The file asked three times (pipelined) over a 512-1024 byte receive window, read
    // 32 bytes every 5 s: the answers stall and the idle timeout cuts the connection.
    slow_attack(
        "slow read",
        &[
            "-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3",
        ],
        SlowTarget {
            path: "/big.bin",
            file_bytes: SLOW_READ_FILE_BYTES,
            close_grace: Duration::ZERO,
        },
        400,
    );
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_slow_read_large() {
    // The same slow read of a 512 KiB file: 1.5 MiB of answers per connection that the
    // kernel's send buffer cannot hold. Every byte chatd sends was encrypted on the only
    // thread, so the send buffer cap and the write budget per turn are what keep the
    // others served.
    slow_attack(
        "slow read, large file",
        &[
            "-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3",
        ],
        SlowTarget {
            path: "/big.bin",
            file_bytes: SLOW_READ_LARGE_FILE_BYTES,
            close_grace: CLOSE_GRACE,
        },
        400,
    );
}

// ---------------------------------------------------------------------------------------
// 3. Resource exhaustion
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "attack: run by make attack"]
fn attack_silent_connections() {
    let check = "silent connections";
    const SILENT: usize = 3000;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let server = TestServer::start(&attack_conf(&short_timeouts()));
    let addr = server.addr();
    let watch = ConnWatch::start(addr.port());
    let prober = Prober::start(&server);

    // TCP connections that never send a ClientHello.
    let started = Instant::now();
    let mut open: Vec<(Instant, TcpStream)> = Vec::with_capacity(SILENT);
    let mut connect_errors = 0;
    for _ in 0..SILENT {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(sock) if sock.set_nonblocking(true).is_ok() => open.push((Instant::now(), sock)),
            _ => connect_errors += 1,
        }
    }
    let opened_in = started.elapsed();
    // A full TLS client (besides the prober) while they are all open.
    let served = connect_from_prober(addr, server.client_config())
        .ok()
        .and_then(|mut c| {
            let raw = c.build_request("GET", "/healthz", &[], b"");
            c.try_send(&raw).ok()?;
            c.try_read_any_response("GET").ok()
        })
        .is_some_and(|r| r.status == 200);

    // Each one must see the server's EOF (or a reset) within the timeout.
    let mut lifetimes = Vec::with_capacity(open.len());
    let deadline =
        Instant::now() + Duration::from_secs(ATTACK_TIMEOUT_SECS) + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    let mut sent_data = 0;
    while !open.is_empty() && Instant::now() < deadline {
        open.retain_mut(|(since, sock)| match sock.read(&mut buf) {
            Ok(0) => {
                lifetimes.push(since.elapsed());
                false
            }
            Ok(_) => {
                sent_data += 1;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(_) => {
                lifetimes.push(since.elapsed());
                false
            }
        });
        thread::sleep(Duration::from_millis(50));
    }
    let still_open = open.len();
    drop(open);
    let probe = prober.finish();
    let watched = watch.finish();
    let timeouts = server.metric("chatd_connection_errors_total{reason=\"header_timeout\"}");
    let rss_mib = peak_rss_kib(server.pid()) / 1024;

    let mut failures = Vec::new();
    let probe_figures = probe.judge(&mut failures);
    let bound = Duration::from_secs(ATTACK_TIMEOUT_SECS) + TIMEOUT_SLACK;
    let max_lifetime = lifetimes.iter().copied().max().unwrap_or_default();
    let min_lifetime = lifetimes.iter().copied().min().unwrap_or_default();
    if connect_errors > 0 {
        failures.push(format!("{connect_errors} connections failed to open"));
    }
    if still_open > 0 {
        failures.push(format!("{still_open} connections never closed"));
    }
    if max_lifetime > bound || watched.max_lifetime() > bound {
        failures.push(format!("a connection lived {max_lifetime:.1?} > {bound:?}"));
    }
    if min_lifetime < Duration::from_secs(ATTACK_TIMEOUT_SECS) - Duration::from_millis(200) {
        failures.push(format!(
            "a connection was closed early ({min_lifetime:.1?})"
        ));
    }
    if sent_data > 0 {
        failures.push(format!(
            "{sent_data} reads returned data to a silent client"
        ));
    }
    if !served {
        failures.push("a TLS client was not served while they were open".into());
    }
    if timeouts < SILENT as u64 {
        failures.push(format!("header_timeout counted {timeouts} < {SILENT}"));
    }
    if rss_mib >= RSS_BOUND_SILENT_MIB {
        failures.push(format!("rss {rss_mib} MiB >= {RSS_BOUND_SILENT_MIB} MiB"));
    }
    verdict(
        check,
        &failures,
        &format!(
            "{SILENT} connections opened in {opened_in:.1?} (peak {} established), closed after \
             {min_lifetime:.1?}..{max_lifetime:.1?} (bound {bound:.1?}), header_timeout count \
             {timeouts}, {probe_figures}, rss {rss_mib} MiB (bound {RSS_BOUND_SILENT_MIB} MiB)",
            watched.peak
        ),
    );
}

type WsStream = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// Opens a WebSocket with a 4 KiB receive window (so a client that stops reading holds
/// little and the server's queue fills), joins `rooms` with pipelined requests and reads
/// the replies. Returns the socket and the replies that were not ok.
fn open_member(
    server: &TestServer,
    token: &str,
    rooms: &[String],
) -> Result<(WsStream, Vec<Value>), String> {
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;
    let sock = tcp_connect_small_window(server.addr(), 4096).map_err(|e| e.to_string())?;
    let client =
        Client::handshake(sock, server.client_config(), "localhost").map_err(|e| e.to_string())?;
    let mut request = format!("wss://localhost:{}/ws", server.addr().port())
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| "token header")?;
    request.headers_mut().insert("Authorization", auth);
    let (mut socket, _) =
        tungstenite::client::client(request, client.tls).map_err(|e| e.to_string())?;
    for (i, room) in rooms.iter().enumerate() {
        let join = json!({"type": "join", "room": room, "ref": i}).to_string();
        socket
            .write(Message::text(join))
            .map_err(|e| e.to_string())?;
    }
    socket.flush().map_err(|e| e.to_string())?;
    let mut replies = 0;
    let mut refused = Vec::new();
    while replies < rooms.len() {
        match socket.read().map_err(|e| e.to_string())? {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if frame["type"] == "reply" {
                    replies += 1;
                    if frame["ok"] != true {
                        refused.push(frame);
                    }
                }
            }
            Message::Close(frame) => return Err(format!("closed while joining: {frame:?}")),
            _ => {}
        }
    }
    Ok((socket, refused))
}

/// How a consumer's connection ended.
enum CloseSeen {
    Code(u16),
    /// EOF or a reset without a close frame.
    Dropped,
    /// Nothing more arrived within the time given, and no end either.
    Open,
}

/// Reads a WebSocket to its end (bounded) and says how it ended.
fn close_code(socket: &mut WsStream, timeout: Duration) -> CloseSeen {
    let deadline = Instant::now() + timeout;
    let _ = socket
        .get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)));
    while Instant::now() < deadline {
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                return CloseSeen::Code(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => return CloseSeen::Open,
            Err(_) => return CloseSeen::Dropped,
        }
    }
    CloseSeen::Open
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_slow_websockets() {
    let check = "slow websockets";
    const CONSUMERS: usize = 1500;
    const USERS: usize = 10;
    const ROOMS_PER_CONNECTION: usize = 100;
    /// Consumers sharing each set of rooms: 98 rooms per group stay under max_rooms.
    const GROUPS: usize = 100;
    const FLOOD: usize = 600;
    const TEXT_CHARS: usize = 4000;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let server = TestServer::start(&attack_conf(&format!(
        "ws_rate = 5000/s burst 5000\n\
         login_rate_per_ip = 1000/min burst 1000\n\
         ws_idle_timeout_secs = 600\n\
         ws_ping_secs = 300\n\
         max_rooms_per_connection = {ROOMS_PER_CONNECTION}\n\
         max_outbound_bytes = 1048576"
    )));
    let prober = Prober::start(&server);
    let started = Instant::now();

    // A normal member of the flooded room, reading everything on its own thread.
    let (mut member, _) = ws::user(&server, "member");
    member.ok(json!({"type": "join", "room": "flood"}));
    let member_thread = thread::spawn(move || {
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        let _ = member
            .socket
            .get_mut()
            .sock
            .set_read_timeout(Some(Duration::from_millis(500)));
        while ids.len() < FLOOD && Instant::now() < deadline {
            match member.socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if frame["type"] == "message" && frame["room"] == "flood" {
                        ids.push(frame["id"].as_i64().unwrap_or(-1));
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
                Err(_) => break,
            }
        }
        (ids, member)
    });

    // The consumers: every one in ROOMS_PER_CONNECTION rooms (the lobby, the flooded
    // room and 98 of its group's), reading nothing once joined.
    let tokens: Vec<String> = (0..USERS)
        .map(|u| {
            let name = format!("slow{u}");
            server.register(&name, "password-123");
            server.login(&name, "password-123")
        })
        .collect();
    let mut consumers = Vec::with_capacity(CONSUMERS);
    let mut setup_errors = Vec::new();
    let mut refused_joins = 0;
    for i in 0..CONSUMERS {
        let mut rooms = vec!["flood".to_string()];
        rooms.extend((0..ROOMS_PER_CONNECTION - 2).map(|k| format!("g{}-{k}", i % GROUPS)));
        match open_member(&server, &tokens[i % USERS], &rooms) {
            Ok((socket, refused)) => {
                refused_joins += refused.len();
                consumers.push(socket);
            }
            Err(e) => setup_errors.push(e),
        }
    }
    let setup_took = started.elapsed();
    let rooms = server.metric("chatd_rooms");
    // One more join than allowed is refused: they really are at the limit.
    let at_limit = consumers.first_mut().is_some_and(|s| {
        let _ = s.send(tungstenite::Message::text(
            json!({"type": "join", "room": "one-too-many", "ref": "x"}).to_string(),
        ));
        (0..50).any(|_| match s.read() {
            Ok(tungstenite::Message::Text(t)) => {
                t.contains("\"ref\":\"x\"") && t.contains("too_many_rooms")
            }
            _ => false,
        })
    });

    // The flood: FLOOD messages of TEXT_CHARS each into the room all of them are in.
    let (mut sender, _) = ws::user(&server, "sender");
    sender.ok(json!({"type": "join", "room": "flood"}));
    let text = "f".repeat(TEXT_CHARS);
    let flood_started = Instant::now();
    let mut acked = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let reply = sender.request(json!({"type": "send", "room": "flood", "text": text}));
        if reply["ok"] == true {
            acked.push(reply["data"]["id"].as_i64().unwrap_or(-2));
        }
    }
    let flood_took = flood_started.elapsed();
    let closed_all = wait_until(Duration::from_secs(60), || {
        server.metric("chatd_ws_closed_total{reason=\"slow_consumer\"}") >= CONSUMERS as u64
    });
    let slow_closed = server.metric("chatd_ws_closed_total{reason=\"slow_consumer\"}");
    let (member_ids, member) = match member_thread.join() {
        Ok((ids, member)) => (ids, Some(member)),
        Err(_) => (Vec::new(), None),
    };
    let open_ws = server.metric("chatd_open_websockets");
    drop(member);
    // Every consumer's connection has ended: it reads what the kernel still held, then
    // the 1013 close frame, or finds the connection dropped (the close frame could not
    // be delivered within the 2 s it is given, as the client was not reading).
    let ends_deadline = Instant::now() + Duration::from_secs(120);
    let mut saw_1013 = 0;
    let mut other_close = Vec::new();
    let mut dropped = 0;
    let mut still_open = 0;
    for socket in &mut consumers {
        let left = ends_deadline.saturating_duration_since(Instant::now());
        match close_code(socket, left.min(Duration::from_secs(5))) {
            CloseSeen::Code(1013) => saw_1013 += 1,
            CloseSeen::Code(code) => other_close.push(code),
            CloseSeen::Dropped => dropped += 1,
            CloseSeen::Open => still_open += 1,
        }
    }
    drop(consumers);
    let probe = prober.finish();
    let rss_mib = peak_rss_kib(server.pid()) / 1024;

    let mut failures = Vec::new();
    let probe_figures = probe.judge(&mut failures);
    if !setup_errors.is_empty() {
        failures.push(format!(
            "{} consumers failed to open, first: {}",
            setup_errors.len(),
            setup_errors[0]
        ));
    }
    if refused_joins > 0 {
        failures.push(format!("{refused_joins} joins refused during setup"));
    }
    if !at_limit {
        failures.push("a join past max_rooms_per_connection was not refused".into());
    }
    if acked.len() != FLOOD {
        failures.push(format!("{} of {FLOOD} sends acknowledged", acked.len()));
    }
    if member_ids != acked {
        failures.push(format!(
            "the reading member got {} messages, {} acknowledged (or out of order)",
            member_ids.len(),
            acked.len()
        ));
    }
    if !closed_all {
        failures.push(format!(
            "{slow_closed} of {CONSUMERS} closed as slow consumers"
        ));
    }
    if open_ws != 2 {
        failures.push(format!(
            "{open_ws} WebSockets open after the flood, expected 2"
        ));
    }
    if !other_close.is_empty() || still_open > 0 {
        failures.push(format!(
            "consumers: {still_open} still open, close codes other than 1013: {other_close:?}"
        ));
    }
    if rss_mib >= RSS_BOUND_WS_MIB {
        failures.push(format!("rss {rss_mib} MiB >= {RSS_BOUND_WS_MIB} MiB"));
    }
    verdict(
        check,
        &failures,
        &format!(
            "{CONSUMERS} WebSockets in {ROOMS_PER_CONNECTION} rooms each ({rooms} rooms) set up \
             in {setup_took:.1?}; {FLOOD} messages of {TEXT_CHARS} chars acknowledged in \
             {flood_took:.1?}; {slow_closed} closed as slow consumers ({saw_1013} read the \
             1013 close frame, {dropped} were dropped after it could not be delivered), the \
             reading member got {} of {}; {probe_figures}, rss {rss_mib} MiB (bound {RSS_BOUND_WS_MIB} MiB)",
            member_ids.len(),
            acked.len()
        ),
    );
}

// ---------------------------------------------------------------------------------------
// 4. Disk full
// ---------------------------------------------------------------------------------------

/// A mount namespace holding a small tmpfs: `unshare --mount` runs `sleep` after the
/// mount, so the namespace (and what is stored in it) lives until the holder is killed,
/// across restarts of chatd, which joins it with setns(2) before exec.
struct TinyDisk {
    holder: Child,
    /// The namespace, open for setns in every chatd started.
    ns: Arc<fs::File>,
    /// The mount point, as seen inside the namespace.
    dir: PathBuf,
}

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> Result<TinyDisk, String> {
        let script = format!(
            "mount -t tmpfs -o size={size},mode=0700 chatd-attack \"$0\" && echo mounted && exec sleep 600"
        );
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = io::BufRead::read_line(&mut io::BufReader::new(out), &mut line);
        }
        if line.trim() != "mounted" {
            kill_child(&mut holder);
            return Err("cannot mount a tmpfs in a mount namespace (needs root)".into());
        }
        let ns = fs::File::open(format!("/proc/{}/ns/mnt", holder.id()))
            .map_err(|e| format!("open the namespace: {e}"))?;
        Ok(TinyDisk {
            ns: Arc::new(ns),
            dir: dir.to_path_buf(),
            holder,
        })
    }

    /// The mount point as this process reaches it: through the holder's root.
    fn outside(&self, name: &str) -> PathBuf {
        let inner = self.dir.strip_prefix("/").unwrap_or(&self.dir);
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(inner)
            .join(name)
    }

    /// Writes a file until the disk is full; returns its size.
    fn fill(&self) -> u64 {
        let Ok(mut file) = fs::File::create(self.outside("fill")) else {
            return 0;
        };
        let chunk = vec![0u8; 4096];
        let mut written = 0u64;
        // Bounded: the tmpfs is far smaller than this.
        while written < 256 << 20 {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.sync_all();
        written
    }

    fn free(&self) {
        let _ = fs::remove_file(self.outside("fill"));
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        kill_child(&mut self.holder);
    }
}

/// Every message of a room in history, oldest first (paged with `after`).
fn room_history(ws: &mut ws::Ws, room: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let after = ids.last().copied().unwrap_or(0);
        let data = ws.ok(json!({"type": "history", "room": room, "after": after, "limit": 100}));
        let page: Vec<i64> = data["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["id"].as_i64()).collect())
            .unwrap_or_default();
        ids.extend(&page);
        if data["more"] != true || page.is_empty() {
            return ids;
        }
    }
}

#[test]
#[ignore = "attack: run by make attack"]
fn attack_disk_full() {
    use std::os::unix::process::CommandExt;
    if sqlite_only("the full disk is under the SQLite file") {
        return;
    }
    let check = "disk full";
    let db_dir = tempfile::Builder::new()
        .prefix("chatd-attack-db-")
        .tempdir()
        .expect("temp dir");
    let disk = match TinyDisk::mount(db_dir.path(), "1m") {
        Ok(disk) => disk,
        Err(e) => {
            verdict(check, &[e], "");
            return;
        }
    };
    let ns_fd = disk.ns.as_raw_fd();
    let conf = format!(
        "db_path = {}\nlogin_rate_per_ip = 1000/min burst 1000\nws_rate = 1000/s burst 1000",
        db_dir.path().join("chatd.db").display()
    );
    let mut server = TestServer::start_customized(&conf, move |cmd| {
        // SAFETY: setns(2) on a descriptor this process holds open; the child is
        // single-threaded between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let mut failures = Vec::new();
    let db_outside = disk.outside("chatd.db");
    if !db_outside.exists() {
        failures.push("the database is not on the tmpfs".into());
    }

    let (mut alice, alice_token) = ws::user(&server, "alice");
    let (mut bob, _) = ws::user(&server, "bob");
    alice.ok(json!({"type": "join", "room": "disk"}));
    bob.ok(json!({"type": "join", "room": "disk"}));
    let text = "d".repeat(2000);
    let mut acked: Vec<i64> = Vec::new();
    let send = |ws: &mut ws::Ws, acked: &mut Vec<i64>| -> Result<(), String> {
        let reply = ws.request(json!({"type": "send", "room": "disk", "text": text}));
        if reply["ok"] == true {
            acked.push(reply["data"]["id"].as_i64().unwrap_or(-1));
            Ok(())
        } else {
            Err(str_of(&reply["error"]["code"]))
        }
    };
    for _ in 0..5 {
        if let Err(code) = send(&mut alice, &mut acked) {
            failures.push(format!("a send before the disk filled got {code}"));
        }
    }

    // Full: sends until three in a row fail (the WAL may still have room for a few).
    let filled = disk.fill();
    let before_full = acked.len();
    let mut refused = Vec::new();
    let mut streak = 0;
    for _ in 0..500 {
        match send(&mut alice, &mut acked) {
            Ok(()) => streak = 0,
            Err(code) => {
                refused.push(code);
                streak += 1;
                if streak == 3 {
                    break;
                }
            }
        }
    }
    let stored_while_full = acked.len() - before_full;
    if streak < 3 {
        failures.push("the disk never refused a write".into());
    }
    if let Some(code) = refused.iter().find(|c| *c != "internal_error") {
        failures.push(format!(
            "a send on a full disk got {code}, not internal_error"
        ));
    }
    // Still serving: history (what was stored), another client, health.
    let history_full = room_history(&mut bob, "disk");
    if history_full != acked {
        failures.push(format!(
            "history while full holds {} messages, {} acknowledged",
            history_full.len(),
            acked.len()
        ));
    }
    let health = server.connect().get("/healthz").status;
    if health != 200 {
        failures.push(format!("healthz while full: {health}"));
    }
    // Nothing runs in a loop meanwhile: the log and the CPU stay quiet.
    let log_before = server.log().len();
    let cpu_before = server.cpu_time();
    thread::sleep(Duration::from_secs(2));
    let log_growth = server.log().len() - log_before;
    let cpu_idle = server.cpu_time() - cpu_before;
    if log_growth > 1024 || cpu_idle > Duration::from_millis(500) {
        failures.push(format!(
            "busy while idle on a full disk: {log_growth} log bytes, {cpu_idle:?} CPU in 2 s"
        ));
    }

    // Space returns: the next send is stored, without a restart.
    disk.free();
    if let Err(code) = send(&mut alice, &mut acked) {
        failures.push(format!("the first send after freeing space got {code}"));
    }
    if let Err(code) = send(&mut bob, &mut acked) {
        failures.push(format!(
            "a send by another client after freeing space got {code}"
        ));
    }
    // Bob saw exactly the acknowledged messages live (he also sent the last one).
    let mut live = Vec::new();
    while let Some(frame) = bob_next_message(&mut bob) {
        live.push(frame);
    }
    if live != acked {
        failures.push(format!(
            "bob received {} messages live, {} acknowledged",
            live.len(),
            acked.len()
        ));
    }
    let failed_commits = server.metric("chatd_db_commit_failures_total");
    drop(alice);
    drop(bob);

    // After a restart, history holds every acknowledged message and nothing else.
    server.restart();
    let (mut alice, _) = ws::connect(&server, &alice_token);
    let history_after = room_history(&mut alice, "disk");
    if history_after != acked {
        failures.push(format!(
            "after a restart history holds {} messages, {} acknowledged",
            history_after.len(),
            acked.len()
        ));
    }
    verdict(
        check,
        &failures,
        &format!(
            "{}-byte fill; {} sends stored before, {stored_while_full} while full (WAL room), \
             {} refused with internal_error, {failed_commits} failed commits counted, history \
             of {} while full, recovered without a restart, {} messages in history after a \
             restart = every one acknowledged; {log_growth} log bytes and {cpu_idle:.0?} CPU \
             in 2 s idle while full",
            filled,
            before_full,
            refused.len(),
            history_full.len(),
            history_after.len()
        ),
    );
}

/// The id of the next room message bob has received (kept or still arriving), or None
/// once nothing more comes within a second.
fn bob_next_message(bob: &mut ws::Ws) -> Option<i64> {
    loop {
        let frame = bob.recv_within(Duration::from_secs(1))?;
        if frame["type"] == "message" {
            return frame["id"].as_i64();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The verdict on testssl's findings (ordinary tests)
// ---------------------------------------------------------------------------------------

/// The findings of a clean scan of chatd, trimmed to what the verdict reads.
fn clean_scan() -> Vec<Value> {
    let mut findings = vec![
        json!({"id": "engine_problem", "severity": "WARN", "finding": "No engine or GOST support via engine with your /usr/bin/openssl"}),
        json!({"id": "PFS", "severity": "OK", "finding": "offered"}),
        json!({"id": "cipher_x1301", "severity": "INFO", "finding": "x1301   TLS_AES_128_GCM_SHA256            ECDH 253   AESGCM      128      TLS_AES_128_GCM_SHA256"}),
        json!({"id": "cipher_xcca9", "severity": "INFO", "finding": "xcca9   ECDHE-ECDSA-CHACHA20-POLY1305     ECDH 253   ChaCha20    256      TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"}),
        json!({"id": "cert_chain_of_trust", "severity": "CRITICAL", "finding": "failed (self signed)."}),
        json!({"id": "cert_validityPeriod", "severity": "HIGH", "finding": "774680 days"}),
        json!({"id": "cert_revocation", "severity": "HIGH", "finding": "Neither CRL nor OCSP URI provided"}),
        json!({"id": "DNS_CAArecord", "severity": "LOW", "finding": "--"}),
    ];
    for (id, finding) in PROTOCOLS {
        let finding = if *id == "TLS1_3" {
            "offered with final"
        } else {
            finding
        };
        let severity = if finding.starts_with("offered") {
            "OK"
        } else {
            "INFO"
        };
        findings.push(json!({"id": id, "severity": severity, "finding": finding}));
    }
    for id in CIPHERLISTS_NOT_OFFERED {
        findings.push(json!({"id": id, "severity": "OK", "finding": "not offered"}));
    }
    for id in VULNERABILITIES {
        findings.push(json!({"id": id, "severity": "OK", "finding": "not vulnerable"}));
    }
    findings
}

fn with(mut findings: Vec<Value>, id: &str, severity: &str, finding: &str) -> Vec<Value> {
    findings.retain(|f| f["id"] != id);
    findings.push(json!({"id": id, "severity": severity, "finding": finding}));
    findings
}

#[test]
fn testssl_verdict_passes_a_clean_scan_with_a_self_signed_certificate() {
    let (failures, ciphers) = judge_testssl(&clean_scan());
    assert_eq!(failures, Vec::<String>::new());
    assert_eq!(
        ciphers,
        ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]
    );
}

#[test]
fn testssl_verdict_fails_on_a_protocol_downgrade() {
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let (failures, _) = judge_testssl(&with(clean_scan(), id, "INFO", "offered"));
        assert_eq!(failures.len(), 1, "{id}: {failures:?}");
    }
    let (failures, _) = judge_testssl(&with(clean_scan(), "TLS1_3", "INFO", "not offered"));
    assert_eq!(failures.len(), 1, "{failures:?}");
}

#[test]
fn testssl_verdict_fails_on_cbc_or_static_key_exchange() {
    let cbc = "xc023   ECDHE-ECDSA-AES128-SHA256         ECDH 253   AES         128      TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256";
    let (failures, _) = judge_testssl(&with(clean_scan(), "cipher_xc023", "INFO", cbc));
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("not an AEAD"), "{failures:?}");

    let static_rsa = "x9c     AES128-GCM-SHA256                 RSA        AESGCM      128      TLS_RSA_WITH_AES_128_GCM_SHA256";
    let (failures, _) = judge_testssl(&with(clean_scan(), "cipher_x9c", "INFO", static_rsa));
    assert!(
        failures.iter().any(|f| f.contains("forward secrecy")),
        "{failures:?}"
    );

    let (failures, _) = judge_testssl(&with(clean_scan(), "cipherlist_AVERAGE", "LOW", "offered"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (failures, _) = judge_testssl(&with(clean_scan(), "PFS", "MEDIUM", "not offered"));
    assert!(!failures.is_empty());
}

#[test]
fn testssl_verdict_fails_on_a_vulnerability_or_unexpected_finding() {
    let (failures, _) = judge_testssl(&with(
        clean_scan(),
        "LUCKY13",
        "LOW",
        "potentially vulnerable",
    ));
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (failures, _) = judge_testssl(&with(clean_scan(), "HSTS", "MEDIUM", "not offered"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (failures, _) = judge_testssl(&with(clean_scan(), "scanProblem", "WARN", "timeout"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    // A vulnerability check that did not run fails too.
    let mut missing = clean_scan();
    missing.retain(|f| f["id"] != "heartbleed");
    let (failures, _) = judge_testssl(&missing);
    assert_eq!(failures, ["heartbleed: not reported"]);
}
