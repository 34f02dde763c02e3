//! Startup refusals: unknown keys, unknown `CHATD_*` variables, bad values (file or
//! environment, UTF-8 or not), a missing config file, bad arguments, a short or
//! non-UTF-8 `SECRET_KEY` and a certificate without its key stop chatd with exit code 2
//! (configuration) or 1 (other startup failures), and the message names the key and the
//! line, variable or file.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use common::*;

/// A configuration that would start fine (port 0, everything in a temp dir) plus
/// `extra` lines.
fn conf(extra: &str) -> String {
    format!("port = 0\npublic_dir = public\ndb_path = chatd.db\n{extra}\n")
}

fn assert_config_error(status: std::process::ExitStatus, stderr: &str, needles: &[&str]) {
    assert_eq!(
        status.code(),
        Some(2),
        "exit status {status:?}; stderr: {stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
}

#[test]
fn unknown_key_in_the_file_names_key_and_line() {
    let (status, stderr) = run_expecting_exit(&conf("# comment\nprot = 1"), &[]);
    assert_config_error(status, &stderr, &["prot", "line 5", "unknown key"]);
}

#[test]
fn unknown_chatd_variable_names_the_variable() {
    let (status, stderr) = run_expecting_exit(&conf(""), &[("CHATD_PROT", "1")]);
    assert_config_error(status, &stderr, &["CHATD_PROT", "unknown key"]);
}

#[test]
fn bad_values_in_the_file_name_key_and_line() {
    for (line, key) in [
        ("max_connections = lots", "max_connections"),
        ("max_connections = 0", "max_connections"),
        ("port = 70000", "port"),
        ("host = localhost", "host"),
        ("header_timeout_secs = 1.5", "header_timeout_secs"),
        ("idle_timeout_secs = 0", "idle_timeout_secs"),
        ("max_header_bytes = 10", "max_header_bytes"),
        ("max_body_bytes = -1", "max_body_bytes"),
        ("http_rate_per_ip = 10/s", "http_rate_per_ip"),
        ("login_rate_per_ip = fast", "login_rate_per_ip"),
        ("password_hashes_per_sec = 0", "password_hashes_per_sec"),
        // A password change takes two hashes at once: a budget of 1 could never grant it.
        ("password_hashes_per_sec = 1", "password_hashes_per_sec"),
        ("jwt_ttl_secs = forever", "jwt_ttl_secs"),
        ("log_level = loud", "log_level"),
        ("access_log = yes", "access_log"),
        ("registration = maybe", "registration"),
        ("metrics = everyone", "metrics"),
        ("argon2_memory_kib = 1024", "argon2_memory_kib"),
    ] {
        let (status, stderr) = run_expecting_exit(&conf(line), &[]);
        assert_config_error(status, &stderr, &[&format!("`{key}`"), "line 4"]);
    }
}

#[test]
fn bad_values_in_the_environment_name_the_variable() {
    for (var, value) in [
        ("CHATD_PORT", "eighty"),
        ("CHATD_HTTP_RATE_PER_IP", "fast"),
        ("CHATD_MAX_CONNECTIONS_PER_IP", "0"),
        ("CHATD_REGISTRATION", "maybe"),
    ] {
        let (status, stderr) = run_expecting_exit(&conf(""), &[(var, value)]);
        assert_config_error(status, &stderr, &[var, "invalid value"]);
    }
}

#[test]
fn other_configuration_mistakes_exit_2() {
    let (status, stderr) = run_expecting_exit(&conf("port = 1\nport = 0"), &[]);
    assert_config_error(status, &stderr, &["`port`", "twice"]);
    let (status, stderr) = run_expecting_exit(&conf("just some words"), &[]);
    assert_config_error(status, &stderr, &["line 4", "key = value"]);
    let (status, stderr) = run_expecting_exit(
        &conf("max_message_bytes = 1000\nmax_text_chars = 1001"),
        &[],
    );
    assert_config_error(
        status,
        &stderr,
        &[
            "`max_text_chars` = 1001 (",
            "server.conf line 5)",
            "`max_message_bytes` = 1000 (",
            "server.conf line 4)",
        ],
    );

    // A config file that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.conf");
    let (status, stderr) = run_command_expecting_exit(chatd_command(&missing, &[]));
    assert_config_error(status, &stderr, &["nope.conf"]);

    // Arguments.
    let mut cmd = chatd_command(&missing, &[]);
    cmd.arg("--frobnicate");
    let (status, stderr) = run_command_expecting_exit(cmd);
    assert_config_error(status, &stderr, &["--frobnicate"]);
}

#[test]
fn a_short_secret_key_stops_startup() {
    let short = "x".repeat(31);
    let (status, stderr) = run_expecting_exit(&conf(""), &[("SECRET_KEY", &short)]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("SECRET_KEY"), "{stderr}");

    // 32 bytes is enough, and a token signed with it is accepted.
    let key = "k".repeat(32);
    let server = TestServer::start_with_env("", &[("SECRET_KEY", &key)]);
    let user = server.register("ruth", "ruth-password");
    let now = unix_now();
    let id = user["id"].as_i64().unwrap();
    let token = sign_hs256(&claims_for(id, "ruth", now, now + 60, 0), key.as_bytes());
    assert_eq!(server.connect().get_auth("/me", &token).status, 200);
    assert!(
        !server.dir().join("certs/jwt.secret").exists(),
        "no secret file when SECRET_KEY is set"
    );
}

#[test]
fn environment_overrides_the_file() {
    // The file says 127.0.0.1 and registration open; the environment wins.
    let server = TestServer::start_with_env(
        "registration = open\nmax_body_bytes = 65536",
        &[
            ("CHATD_REGISTRATION", "closed"),
            ("CHATD_MAX_BODY_BYTES", "300"),
        ],
    );
    let mut c = server.connect();
    let r = c.post_json(
        "/register",
        &serde_json::json!({"username": "sam", "password": "sam-password"}),
    );
    assert_error(&r, 403, "registration_closed");
    c.send(
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 301\r\n\r\n",
    );
    let r = c.read_response();
    assert_error_and_close(&mut c, &r, 413, "payload_too_large");
}

#[test]
fn a_port_in_use_stops_startup_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let (status, stderr) = run_expecting_exit(&conf(""), &[("CHATD_PORT", &port.to_string())]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn a_certificate_without_its_key_or_a_key_without_its_certificate_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let paths = format!(
        "cert_file = {}\nkey_file = {}",
        cert.display(),
        key.display()
    );
    for (present, absent) in [(&cert, &key), (&key, &cert)] {
        std::fs::write(present, "operator's own file\n").unwrap();
        let (status, stderr) = run_expecting_exit(&conf(&paths), &[]);
        assert_eq!(status.code(), Some(1), "stderr: {stderr}");
        for path in [&cert, &key] {
            assert!(
                stderr.contains(&path.display().to_string()),
                "{} not named: {stderr}",
                path.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(present).unwrap(),
            "operator's own file\n",
            "the existing file was overwritten"
        );
        assert!(!absent.exists(), "{} was created", absent.display());
        std::fs::remove_file(present).unwrap();
    }
}

/// Runs chatd on a valid configuration with extra environment variables given as raw
/// bytes (not necessarily UTF-8).
fn run_with_raw_env(vars: &[(&[u8], &[u8])]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf_path = dir.path().join("server.conf");
    std::fs::write(&conf_path, conf("")).unwrap();
    let mut cmd = chatd_command(&conf_path, &[]);
    for (name, value) in vars {
        cmd.env(OsStr::from_bytes(name), OsStr::from_bytes(value));
    }
    run_command_expecting_exit(cmd)
}

#[test]
fn chatd_variables_that_are_not_utf8_stop_startup_naming_the_variable() {
    let (status, stderr) = run_with_raw_env(&[(b"CHATD_PORT", b"84\xff3")]);
    assert_config_error(status, &stderr, &["CHATD_PORT", "not valid UTF-8"]);
    let (status, stderr) = run_with_raw_env(&[(b"CHATD_\xffPORT", b"8443")]);
    assert_config_error(status, &stderr, &["CHATD_\u{FFFD}PORT", "not valid UTF-8"]);
    // SECRET_KEY is not silently ignored (which would mean the secret file instead).
    let (status, stderr) = run_with_raw_env(&[(b"SECRET_KEY", &[0xff; 40])]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("SECRET_KEY is not valid UTF-8"), "{stderr}");
    // A path argument need not be UTF-8: a missing one is an ordinary error.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join(OsStr::from_bytes(b"n\xffpe.conf"));
    let (status, stderr) = run_command_expecting_exit(chatd_command(&missing, &[]));
    assert_config_error(status, &stderr, &["cannot read configuration file"]);
}

#[test]
fn other_variables_that_are_not_utf8_are_ignored() {
    let server = TestServer::start_customized("", |cmd| {
        cmd.env(
            OsStr::from_bytes(b"LANG_X"),
            OsStr::from_bytes(b"de_DE.\xff"),
        );
        cmd.env(OsStr::from_bytes(b"\xfe\xff"), OsStr::from_bytes(b"x"));
        cmd.env(OsStr::from_bytes(b"RUST_LOG"), OsStr::from_bytes(b"\xff"));
    });
    assert_eq!(server.connect().get("/healthz").status, 200);
}

#[test]
fn a_password_in_the_database_url_is_refused_without_repeating_it() {
    let secret = "hunter2-in-the-url-4e1f";
    for url in [
        format!("postgres://chatd:{secret}@127.0.0.1:5432/chat"),
        format!("postgresql://chatd:{secret}@/chat?host=/run/postgresql"),
    ] {
        let (status, stderr) = run_expecting_exit(&conf(&format!("database = {url}")), &[]);
        assert_config_error(status, &stderr, &["database", "password"]);
        assert!(
            !stderr.contains(secret),
            "the password is repeated: {stderr}"
        );
        let (status, stderr) = run_expecting_exit(&conf(""), &[("CHATD_DATABASE", &url)]);
        assert_config_error(status, &stderr, &["CHATD_DATABASE", "password"]);
        assert!(
            !stderr.contains(secret),
            "the password is repeated: {stderr}"
        );
    }
}

#[test]
fn verify_full_without_a_ca_file_is_refused_naming_database_ca_file() {
    // Nothing listens there: the refusal comes before any connection is tried.
    for extra in [
        "database = postgres://chatd@127.0.0.1:1/chat\ndatabase_tls = verify-full",
        // verify-full is the default for a database on another host.
        "database = postgres://chatd@192.0.2.1:5432/chat",
    ] {
        let (status, stderr) = run_expecting_exit(&conf(extra), &[]);
        assert_eq!(status.code(), Some(2), "a configuration error: {stderr}");
        assert!(
            stderr.contains("database_ca_file") && stderr.contains("verify-full"),
            "{stderr}"
        );
    }
}

#[test]
fn an_empty_database_password_variable_is_refused() {
    // Refused before any connection is tried (nothing listens on port 1).
    let (status, stderr) = run_expecting_exit(
        &conf("database = postgres://chatd@127.0.0.1:1/chat"),
        &[("CHATD_DATABASE_PASSWORD", "")],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CHATD_DATABASE_PASSWORD is empty"),
        "{stderr}"
    );
}
