//! The process lifecycle: first start (certificate, key, JWT secret, file modes, what is
//! logged and what never is), SIGTERM/SIGINT (finish in-flight requests, exit 0,
//! database intact), restart (users, certificate and tokens survive), SIGHUP certificate
//! reload without dropping connections (and a mismatched pair refused), IPv6 and
//! dual-stack, what is set up at start (db_synchronous, the open-files limit, the
//! database held exclusively, `RUST_LOG` over `log_level`), and skips that fail in CI.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// The DER of `id-ecPublicKey` (1.2.840.10045.2.1) with the curve `prime256v1`
/// (1.2.840.10045.3.1.7): the AlgorithmIdentifier of an ECDSA P-256 key.
const EC_P256_ALGORITHM: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const GENERATED: &str = "generated a self-signed certificate";
const SECRET_WARNING: &str = "production must set SECRET_KEY";

#[test]
fn first_start_generates_certificate_key_and_jwt_secret() {
    let mut server = TestServer::start("");
    assert!(server.cert_path().is_file());
    assert_eq!(mode(&server.key_path()), 0o600, "private key must be 0600");
    assert!(server.log().contains(GENERATED), "{}", server.log());
    assert!(server.log().contains(SECRET_WARNING), "{}", server.log());

    // The key is ECDSA P-256 in PKCS#8, and so is the certificate's public key.
    let key_pem = std::fs::read(server.key_path()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).expect("key PEM");
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)), "not PKCS#8");
    // PKCS#8 starts with the version, then the key's AlgorithmIdentifier.
    assert!(
        contains(&key.secret_der()[..40], EC_P256_ALGORITHM),
        "the key is not ECDSA P-256"
    );
    let secret_path = server.dir().join("certs/jwt.secret");
    assert_eq!(mode(&secret_path), 0o600, "JWT secret must be 0600");
    assert!(server.jwt_secret().len() >= 32);

    let der = cert_der_from_pem(&std::fs::read(server.cert_path()).unwrap());
    assert_eq!(server.fingerprint(), fingerprint(&der));
    assert_eq!(server.fingerprint().len(), 32 * 3 - 1);
    let c = server.connect();
    assert_eq!(
        c.peer_cert_der(),
        der,
        "the server presents the generated file"
    );

    // Relative paths resolved against the config file's directory: the database is
    // there (on PostgreSQL no SQLite file at all) and nothing was written to the
    // working directory.
    assert_eq!(server.db_path().is_file(), server.pg().is_none());
    let cwd_entries = std::fs::read_dir(server.dir().join("cwd")).unwrap().count();
    assert_eq!(cwd_entries, 0, "chatd wrote into its working directory");
    assert!(
        contains(&der, EC_P256_ALGORITHM),
        "certificate key not P-256"
    );

    // A second start uses what the first made.
    let secret = String::from_utf8(server.jwt_secret()).unwrap();
    server.restart();
    assert_eq!(server.fingerprint(), fingerprint(&der));
    let log = server.log();
    assert_eq!(log.matches(GENERATED).count(), 1, "generated again:\n{log}");
    assert_eq!(log.matches(SECRET_WARNING).count(), 2, "{log}");
    // The secret is never printed, on either stream.
    assert!(!log.contains(&secret), "the JWT secret is in the log");
    assert!(
        !server.stdout().iter().any(|l| l.contains(&secret)),
        "the JWT secret is on stdout"
    );
}

#[test]
fn the_generated_certificate_expires_and_is_generated_again_once_expired() {
    let mut server = TestServer::start("");
    // Valid for 397 days, and the start says until when.
    let der = cert_der_from_pem(&std::fs::read(server.cert_path()).unwrap());
    let facts = chatd::tls::certificate_facts(&der).unwrap();
    assert!(facts.generated);
    let days = (facts.not_after - unix_now()) as f64 / 86_400.0;
    assert!((396.9..=397.0).contains(&days), "valid for {days} days");
    assert!(server.log().contains("is valid until"), "{}", server.log());

    // A pair chatd generated 400 days ago has expired: the next start replaces it.
    server.stop();
    let (cert_pem, key_pem) = chatd::tls::generate_pair(unix_now() - 400 * 86_400).unwrap();
    std::fs::write(server.cert_path(), &cert_pem).unwrap();
    std::fs::write(server.key_path(), &key_pem).unwrap();
    let expired = fingerprint(&cert_der_from_pem(cert_pem.as_bytes()));
    server.restart();
    assert_ne!(server.fingerprint(), expired);
    let log = server.log();
    assert!(
        log.contains("the self-signed certificate chatd generated expired on"),
        "{log}"
    );
    let der = cert_der_from_pem(&std::fs::read(server.cert_path()).unwrap());
    assert_eq!(server.connect().peer_cert_der(), der);
    assert_eq!(mode(&server.key_path()), 0o600);

    // A certificate chatd did not generate is served even when it has expired, and
    // the start warns about it.
    server.stop();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(unix_now() - 86_400).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let foreign = params.self_signed(&key).unwrap();
    std::fs::write(server.cert_path(), foreign.pem()).unwrap();
    std::fs::write(server.key_path(), key.serialize_pem()).unwrap();
    server.restart();
    assert_eq!(server.fingerprint(), fingerprint(foreign.der()));
    assert_eq!(
        std::fs::read_to_string(server.cert_path()).unwrap(),
        foreign.pem()
    );
    assert!(server.log().contains("expired on"), "{}", server.log());
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_secret_key_from_the_environment_is_used_quietly_and_never_printed() {
    let mut server = TestServer::start_with_env("", &[("SECRET_KEY", TEST_SECRET)]);
    let user = server.register("sigrid", "sigrid-password");
    let token = server.login("sigrid", "sigrid-password");
    // Signed with SECRET_KEY: a token made with it by hand is accepted too.
    let now = unix_now();
    let id = user["id"].as_i64().unwrap();
    let forged = sign_hs256(
        &claims_for(id, "sigrid", now, now + 60, 0),
        TEST_SECRET.as_bytes(),
    );
    let mut c = server.connect();
    assert_eq!(c.get_auth("/me", &forged).status, 200);
    assert_eq!(c.get_auth("/me", &token).status, 200);
    let log = server.log();
    assert!(!log.contains(SECRET_WARNING), "{log}");
    assert!(log.contains("JWT secret from SECRET_KEY"), "{log}");
    assert!(!log.contains(TEST_SECRET), "SECRET_KEY is in the log");
    let stdout = server.stdout();
    assert!(
        stdout.iter().any(|l| l.starts_with("listening on")),
        "{stdout:?}"
    );
    assert!(
        !stdout.iter().any(|l| l.contains(TEST_SECRET)),
        "SECRET_KEY is on stdout"
    );
}

/// Waits until the listener is gone (connections refused): the server has seen the
/// signal.
fn wait_listener_closed(server: &TestServer) {
    let addr = server.addr();
    let gone = wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    });
    assert!(gone, "still accepting connections after the signal");
}

#[test]
fn sigterm_finishes_in_flight_requests_exits_0_and_keeps_the_data() {
    let mut server = TestServer::start("");
    server.register("olga", "olga-password");
    let old_token = server.login("olga", "olga-password");
    let fingerprint_before = server.fingerprint().to_string();

    let mut idle = server.connect();
    assert_eq!(idle.get("/healthz").status, 200);
    // A request in flight: its head and half its body are here when the signal comes.
    let mut busy = server.connect();
    let body = json!({"username": "pavel", "password": "pavel-password"}).to_string();
    let head = format!(
        "POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(10);
    busy.send(head.as_bytes());
    busy.send(first.as_bytes());
    std::thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    wait_listener_closed(&server);
    assert!(
        idle.is_closed_within(Duration::from_secs(3)),
        "idle connection kept open"
    );
    drop(idle);
    busy.send(rest.as_bytes());
    let r = busy.read_response();
    assert_eq!(
        r.status,
        201,
        "the in-flight request is answered: {}",
        r.text()
    );
    assert!(r.closes(), "answers during shutdown close the connection");
    busy.assert_closed();
    drop(busy);

    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("chatd exits within a few seconds of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(signalled.elapsed() < Duration::from_secs(5));

    // The database is intact and holds both accounts.
    if let Some(pg) = server.pg() {
        assert_eq!(pg.psql("SELECT count(*) FROM users"), "2");
    } else {
        let db = rusqlite::Connection::open(server.db_path()).expect("open db");
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
        let users: i64 = db
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .expect("count users");
        assert_eq!(users, 2);
        drop(db);
    }

    // Restart: same users, same certificate, tokens from before still valid.
    server.restart();
    assert_eq!(server.fingerprint(), fingerprint_before);
    let mut c = server.connect();
    let r = c.get_auth("/me", &old_token);
    assert_eq!(r.status, 200, "token from before the restart: {}", r.text());
    c.login("pavel", "pavel-password");
    let r = c.post_json(
        "/register",
        &json!({"username": "OLGA", "password": "another-password"}),
    );
    assert_error(&r, 409, "username_taken");
}

#[test]
fn sigint_exits_0_and_closes_idle_connections() {
    let mut server = TestServer::start("");
    let mut c = server.connect();
    assert_eq!(c.get("/healthz").status, 200);
    server.signal(libc::SIGINT);
    assert!(c.is_closed_within(Duration::from_secs(5)));
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("chatd exits after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let mut server = TestServer::start("");
    let old_pem = std::fs::read(server.cert_path()).unwrap();
    let old_der = cert_der_from_pem(&old_pem);
    let mut old_conn = server.connect();
    assert_eq!(old_conn.get("/healthz").status, 200);

    let (cert, key) = new_self_signed_pair();
    let new_der = cert_der_from_pem(cert.as_bytes());
    assert_ne!(new_der, old_der);
    std::fs::write(server.key_path(), &key).unwrap();
    std::fs::write(server.cert_path(), &cert).unwrap();
    server.signal(libc::SIGHUP);

    // New connections see the new certificate (verified against it alone).
    let new_config = client_config_trusting(cert.as_bytes());
    let reloaded = wait_until(Duration::from_secs(5), || {
        Client::connect(server.addr(), new_config.clone(), "localhost").is_ok()
    });
    assert!(reloaded, "new connections never got the new certificate");
    let mut new_conn = Client::connect(server.addr(), new_config, "localhost").unwrap();
    assert_eq!(new_conn.peer_cert_der(), new_der);
    assert_eq!(new_conn.get("/healthz").status, 200);
    // A client that trusts only the old certificate is now refused.
    let e = Client::connect(server.addr(), client_config_trusting(&old_pem), "localhost")
        .err()
        .expect("the old certificate is gone");
    assert!(e.to_string().contains("certificate"), "{e}");

    // The connection opened before the reload is still served.
    assert_eq!(old_conn.peer_cert_der(), old_der);
    for _ in 0..3 {
        assert_eq!(old_conn.get("/healthz").status, 200);
    }
    assert!(
        server.log().contains(&fingerprint(&new_der)),
        "reload not logged"
    );
    assert!(server.is_running());
}

#[test]
fn sighup_with_broken_files_keeps_the_current_certificate() {
    let server = TestServer::start("");
    let pem = std::fs::read(server.cert_path()).unwrap();
    let der = cert_der_from_pem(&pem);
    let config = client_config_trusting(&pem);
    std::fs::write(server.cert_path(), "not a certificate\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("keeping the current certificate", Duration::from_secs(5)),
        "failed reload not logged"
    );
    let mut c = Client::connect(server.addr(), config, "localhost").expect("still the old cert");
    assert_eq!(c.peer_cert_der(), der);
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn ipv6_loopback_works() {
    if !has_ipv6_loopback() {
        skip_unless_required("no ::1 on this machine, so IPv6 was not tried");
        return;
    }
    let server = TestServer::start("host = ::1");
    let addr = server.addr();
    assert!(addr.is_ipv6(), "{addr}");
    assert_eq!(addr.ip().to_string(), "::1");
    for name in ["localhost", "::1"] {
        let mut c = Client::connect(addr, server.client_config(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.get("/healthz").status, 200);
    }
    let mut c = server.connect();
    c.register("quinn", "quinn-password");
    let token = c.login("quinn", "quinn-password");
    assert_eq!(c.get_auth("/me", &token).status, 200);
    // ::1 is loopback: /metrics is readable by default.
    assert_eq!(c.get("/metrics").status, 200);
}

#[test]
fn db_synchronous_is_applied_and_logged_at_start() {
    if sqlite_only("db_synchronous is SQLite's pragma") {
        return;
    }
    let mut server = TestServer::start("");
    assert!(
        server.log().contains("(WAL, synchronous = FULL)"),
        "default not logged as FULL:\n{}",
        server.log()
    );
    server.restart_with("db_synchronous = normal");
    let log = server.log();
    let second_start = &log[log.rfind("synchronous = ").expect("logged")..];
    assert!(
        second_start.starts_with("synchronous = NORMAL)"),
        "db_synchronous = normal not in effect:\n{log}"
    );
    assert_eq!(log.matches("synchronous = FULL").count(), 1, "{log}");
}

#[test]
fn the_key_the_secret_and_the_database_are_private_whatever_the_umask() {
    // A umask that takes the owner's read bit: a mode given only at creation would leave
    // the key write-only (0200).
    let server = TestServer::start_customized("", |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o400);
                Ok(())
            });
        }
    });
    assert_eq!(mode(&server.key_path()), 0o600);
    assert_eq!(mode(&server.dir().join("certs/jwt.secret")), 0o600);
    assert_eq!(mode(&server.cert_path()), 0o644);
    assert_eq!(server.connect().get("/healthz").status, 200);
    // The database holds password hashes and direct messages: private too, and so are
    // the WAL files SQLite makes beside it. PostgreSQL keeps its files itself.
    server.register("alice", "password-123");
    if server.pg().is_some() {
        assert!(!server.db_path().exists(), "a SQLite file on PostgreSQL");
        return;
    }
    let db = server.db_path();
    let wal = db.with_file_name("chatd.db-wal");
    for file in [&db, &wal] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}

#[test]
fn key_secret_and_database_files_readable_by_others_are_warned_about() {
    let mut server = TestServer::start("");
    assert!(
        !server.log().contains("accessible to group or others"),
        "{}",
        server.log()
    );
    let secret = server.dir().join("certs/jwt.secret");
    server.stop();
    std::fs::set_permissions(server.key_path(), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o640)).unwrap();
    let mut exposed = vec![
        ("private key", server.key_path(), "0644"),
        ("JWT secret", secret.clone(), "0640"),
    ];
    // Only SQLite's file is chatd's own to check; PostgreSQL keeps its files itself.
    if server.pg().is_none() {
        std::fs::set_permissions(server.db_path(), PermissionsExt::from_mode(0o644)).unwrap();
        exposed.push(("database", server.db_path(), "0644"));
    }
    server.restart();
    let log = server.log();
    for (what, path, mode) in exposed {
        let warning = format!(
            "the {what} file {} is accessible to group or others (mode {mode})",
            path.display()
        );
        assert!(log.contains(&warning), "no {warning:?} in:\n{log}");
    }
    // The files are reported, not changed behind the operator's back.
    assert_eq!(mode(&server.key_path()), 0o644);
    assert_eq!(server.connect().get("/healthz").status, 200);
}

/// Moves this test's thread into a network namespace of its own whose only interface is
/// a loopback, brought up here: a server listening on every address (`::`) then listens
/// on that loopback alone. Needs root (CAP_SYS_ADMIN); false where it is not allowed.
fn private_network() -> bool {
    // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread into a new network
    // namespace (namespaces are per thread; other tests' threads keep theirs). Every
    // socket of this test is made on this thread and chatd, spawned from it, inherits
    // the namespace. No memory is shared or handed over.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    // SAFETY: a plain datagram socket used only for the two interface ioctls below and
    // closed before returning. `ifreq` is plain old data: zeroed it is a valid request
    // with an empty name; the name copied in is "lo" plus the terminating zero, within
    // IFNAMSIZ; SIOCGIFFLAGS fills `ifru_flags`, the union member read and written
    // back for SIOCSIFFLAGS.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket in the new namespace");
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request),
            0,
            "lo flags"
        );
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &request), 0, "lo up");
        libc::close(fd);
    }
    true
}

/// `host = ::` takes IPv4 clients too. (Where the system default is already dual-stack,
/// net.ipv6.bindv6only = 0, this passes by itself; with bindv6only = 1 only chatd's own
/// setting makes it pass.) It runs in a network namespace of its own, so listening on
/// every address exposes nothing beyond a private loopback.
#[test]
fn host_unspecified_ipv6_listens_on_ipv4_and_ipv6() {
    if !private_network() {
        skip_unless_required(
            "no network namespace of its own (unshare(CLONE_NEWNET) needs root), so \
             `host = ::` was not tried",
        );
        return;
    }
    if std::net::TcpListener::bind("[::]:0").is_err() {
        skip_unless_required("IPv6 is disabled on this machine, so `host = ::` was not tried");
        return;
    }
    let server = TestServer::start("host = ::");
    let addr = server.addr();
    assert_eq!(addr.ip().to_string(), "::", "{addr}");
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let mut c = Client::connect(v4, server.client_config(), "localhost")
        .unwrap_or_else(|e| panic!("{v4}: {e}\n{}", server.log()));
    assert_eq!(c.get("/healthz").status, 200);
    // An IPv4 client arrives as ::ffff:127.0.0.1, still loopback for /metrics.
    assert_eq!(c.get("/metrics").status, 200);
    if has_ipv6_loopback() {
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()));
        let mut c = Client::connect(v6, server.client_config(), "localhost")
            .unwrap_or_else(|e| panic!("{v6}: {e}\n{}", server.log()));
        assert_eq!(c.get("/healthz").status, 200);
    } else {
        skip_unless_required("no ::1 on this machine; only IPv4 was tried on `host = ::`");
    }
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    // Started with a low soft limit, so that only chatd itself can have raised it.
    const LOW: libc::rlim_t = 256;
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    if own.rlim_max <= LOW {
        skip_unless_required(&format!(
            "the hard open-files limit is {}, so raising the soft one was not tried",
            own.rlim_max
        ));
        return;
    }
    let server = TestServer::start_customized("", |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: getrlimit and setrlimit are plain system calls (async-signal-safe) on
        // the child's own limits; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = LOW;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))
        .expect("read /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files line in:\n{limits}"));
    // Max open files   <soft>   <hard>   files
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert_eq!(
        fields[3], fields[4],
        "soft limit not raised to the hard one: {line}"
    );
    let hard = if own.rlim_max == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        own.rlim_max.to_string()
    };
    assert_eq!(fields[4], hard, "{line}");
}

/// Run only by [`a_skip_is_a_note_outside_ci_and_a_failure_under_it`], in a child
/// process with the environment it chooses.
#[test]
#[ignore = "run by a_skip_is_a_note_outside_ci_and_a_failure_under_it"]
fn skip_probe() {
    skip_unless_required("the probe always skips");
}

#[test]
fn a_skip_is_a_note_outside_ci_and_a_failure_under_it() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--ignored",
            "--exact",
            "skip_probe",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("CI")
        .env_remove("REQUIRE_ALL_TESTS")
        .envs(env.iter().copied());
        let out = cmd.output().expect("run the test binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for env in [&[][..], &[("CI", "false")], &[("REQUIRE_ALL_TESTS", "0")]] {
        let (passed, text) = run(env);
        assert!(passed, "{env:?}: a skip outside CI must pass:\n{text}");
        assert!(
            text.contains("NOTE: skipped: the probe always skips"),
            "{env:?}: no note:\n{text}"
        );
    }
    for env in [&[("CI", "true")], &[("REQUIRE_ALL_TESTS", "1")]] {
        let (passed, text) = run(env);
        assert!(!passed, "{env:?}: a skip must fail:\n{text}");
        assert!(
            text.contains("cannot run here: the probe always skips"),
            "{env:?}: no clear message:\n{text}"
        );
    }
}

#[test]
fn a_second_chatd_on_the_same_database_is_refused_and_the_first_keeps_serving() {
    if sqlite_only("chatd holds its SQLite file exclusively; a PostgreSQL database is shared") {
        return;
    }
    let server = TestServer::start("");
    server.register("first", "first-password");
    // The same configuration, so the same database file (a port of its own: port 0).
    let (status, stderr) = run_command_expecting_exit(chatd_command(&server.conf_path(), &[]));
    assert!(
        !status.success(),
        "a second chatd started: {status:?}\n{stderr}"
    );
    assert!(
        stderr.contains(&server.db_path().display().to_string())
            && stderr.contains("in use by another process (another chatd?)"),
        "no clear message:\n{stderr}"
    );
    // The first one still reads and writes its database.
    server.register("second", "second-password");
    let token = server.login("first", "first-password");
    assert_eq!(server.connect().get_auth("/me", &token).status, 200);
}

#[test]
fn rust_log_overrides_log_level() {
    // log_level = warn, RUST_LOG=debug: debug lines are written.
    let server = TestServer::start_with_env("log_level = warn", &[("RUST_LOG", "debug")]);
    assert_eq!(server.connect().get("/healthz").status, 200);
    assert!(
        server.wait_for_log(" DEBUG ", Duration::from_secs(10)),
        "RUST_LOG=debug did not override log_level = warn:\n{}",
        server.log()
    );
    // The reverse: log_level = debug, RUST_LOG=warn: no info or debug line, not even
    // the access log's, while a warning still is.
    let mut server = TestServer::start_with_env("log_level = debug", &[("RUST_LOG", "warn")]);
    assert_eq!(server.connect().get("/healthz").status, 200);
    server.stop();
    let log = server.log();
    assert!(
        log.contains(SECRET_WARNING),
        "warnings are still written:\n{log}"
    );
    assert!(
        !log.contains(" INFO ") && !log.contains(" DEBUG "),
        "RUST_LOG=warn did not override log_level = debug:\n{log}"
    );
}

#[test]
fn sighup_with_a_certificate_and_a_key_that_do_not_match_keeps_the_current_pair() {
    let server = TestServer::start("");
    let pem = std::fs::read(server.cert_path()).unwrap();
    let old_fingerprint = server.fingerprint().to_string();
    let mut before = server.connect();
    assert_eq!(before.get("/healthz").status, 200);

    // Two valid files that do not belong together.
    let (cert, _) = new_self_signed_pair();
    let (_, other_key) = new_self_signed_pair();
    std::fs::write(server.cert_path(), &cert).unwrap();
    std::fs::write(server.key_path(), &other_key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("keeping the current certificate", Duration::from_secs(10)),
        "refused reload not logged:\n{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the current certificate"))
        .expect("the line");
    assert!(line.contains("ERROR"), "not logged as an error: {line}");

    // New handshakes still present the old certificate, and everyone is served.
    let mut c = Client::connect(server.addr(), client_config_trusting(&pem), "localhost")
        .expect("the old certificate is still in use");
    assert_eq!(fingerprint(&c.peer_cert_der()), old_fingerprint);
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(before.get("/healthz").status, 200);
    assert!(
        Client::connect(
            server.addr(),
            client_config_trusting(cert.as_bytes()),
            "localhost"
        )
        .is_err(),
        "the new certificate was taken without its key"
    );
    let mut server = server;
    assert!(server.is_running());
}
