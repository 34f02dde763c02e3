//! The PostgreSQL client against a real PostgreSQL (Debian's packages, started by
//! tests/common/postgres.rs), driven by a small mio loop as chatd's event loop does:
//! authentication methods, TLS modes, pipelining, a failing unit among committing
//! ones, and the server going away with units in flight.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatd::pg::{
    ConnectParams, Event, PgConn, PgError, Query, Rows, Statement, TlsMode, Unit, UnitId, parse_url,
};
use common::postgres::{PgAuth, PgOptions, PgServer};
use mio::{Events, Poll, Token};
use postgres_types::Type;

/// No wait in these tests lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(60);

const TOKEN: Token = Token(7);

const INSERT_USER: usize = 0;
const COUNT_USERS: usize = 1;
const INSERT_LOG: usize = 2;
const PREPARED: usize = 3;
const ECHO: usize = 4;
const SSL_IN_USE: usize = 5;
const SLEEP: usize = 6;

const SCHEMA: &str = "CREATE TABLE users (id bigserial PRIMARY KEY, name text UNIQUE NOT NULL); \
                      CREATE TABLE log (n bigint NOT NULL)";

fn catalogue() -> Arc<[Statement]> {
    Arc::from(vec![
        Statement {
            name: "insert_user",
            sql: "INSERT INTO users (name) VALUES ($1) RETURNING id",
            params: &[Type::TEXT],
        },
        Statement {
            name: "count_users",
            sql: "SELECT count(*) FROM users",
            params: &[],
        },
        Statement {
            name: "insert_log",
            sql: "INSERT INTO log (n) VALUES ($1)",
            params: &[Type::INT8],
        },
        Statement {
            name: "prepared",
            sql: "SELECT count(*) FROM pg_prepared_statements",
            params: &[],
        },
        Statement {
            name: "echo",
            sql: "SELECT $1 + 1",
            params: &[Type::INT8],
        },
        Statement {
            name: "ssl_in_use",
            sql: "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            params: &[],
        },
        Statement {
            name: "sleep",
            sql: "SELECT pg_sleep($1)",
            params: &[Type::FLOAT8],
        },
    ])
}

fn query(statement: usize, params: Vec<Box<dyn postgres_types::ToSql + Send + Sync>>) -> Query {
    Query { statement, params }
}

fn unit(queries: Vec<Query>) -> Unit {
    Unit {
        queries,
        simple: None,
    }
}

/// A connection and the poll it is registered with: the test's event loop.
struct Driver {
    poll: Poll,
    conn: PgConn,
    /// Events seen so far, in order.
    seen: Vec<Event>,
}

impl Driver {
    fn connect(params: &ConnectParams) -> Result<Driver, PgError> {
        let poll = Poll::new().expect("poll");
        let conn = PgConn::connect(params, catalogue(), poll.registry(), TOKEN)?;
        Ok(Driver {
            poll,
            conn,
            seen: Vec::new(),
        })
    }

    /// Polls and feeds readiness to the connection until `done` holds for the
    /// events seen; panics past the deadline.
    fn run_until(&mut self, mut done: impl FnMut(&[Event]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let mut events = Events::with_capacity(16);
        let flushed = self.conn.flush(self.poll.registry());
        self.seen.extend(flushed);
        while !done(&self.seen) {
            assert!(
                Instant::now() < deadline,
                "no outcome in time: {:?}",
                self.seen
            );
            self.poll
                .poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            for event in events.iter() {
                assert_eq!(event.token(), TOKEN);
                let got = self.conn.on_ready(self.poll.registry());
                self.seen.extend(got);
            }
        }
    }

    /// One turn of the loop: waits up to 100 ms for readiness and handles it.
    fn turn(&mut self) {
        let mut events = Events::with_capacity(16);
        self.poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .expect("poll");
        if !events.is_empty() {
            let got = self.conn.on_ready(self.poll.registry());
            self.seen.extend(got);
        }
    }

    /// Waits for Ready (Ok) or Closed (its error).
    fn ready(&mut self) -> Result<(), PgError> {
        self.run_until(|seen| {
            seen.iter()
                .any(|e| matches!(e, Event::Ready | Event::Closed(_)))
        });
        match self.seen.iter().find_map(|e| match e {
            Event::Closed(e) => Some(e.clone()),
            _ => None,
        }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends the units and waits for each one's outcome; returns them in the order
    /// they came.
    fn run(&mut self, units: Vec<Unit>) -> Vec<(UnitId, Result<Vec<Rows>, PgError>)> {
        let now = Instant::now();
        let ids: Vec<UnitId> = units.into_iter().map(|u| self.conn.send(u, now)).collect();
        let answered = |seen: &[Event]| {
            ids.iter().all(|id| {
                seen.iter()
                    .any(|e| matches!(e, Event::Unit { id: got, .. } if got == id))
            })
        };
        self.run_until(answered);
        let seen = std::mem::take(&mut self.seen);
        let mut outcomes = Vec::new();
        for event in seen {
            match event {
                Event::Unit { id, outcome } if ids.contains(&id) => outcomes.push((id, outcome)),
                other => self.seen.push(other),
            }
        }
        outcomes
    }

    /// Runs one unit and returns its results, panicking on an error.
    fn run_ok(&mut self, queries: Vec<Query>) -> Vec<Rows> {
        let mut outcomes = self.run(vec![unit(queries)]);
        outcomes.remove(0).1.expect("unit succeeds")
    }
}

fn params(server: &PgServer, url: &str, password: Option<&str>) -> ConnectParams {
    let mut params = parse_url(url).expect("url");
    params.password = password.map(str::to_string);
    let _ = server;
    params
}

fn start(options: PgOptions) -> Option<PgServer> {
    let server = PgServer::start(options)?;
    server.psql(SCHEMA);
    Some(server)
}

fn first_i64(rows: &Rows) -> i64 {
    rows.rows[0].get::<i64>(0).expect("an int8")
}

#[test]
fn scram_over_tcp_and_over_the_unix_socket() {
    let Some(server) = start(PgOptions::default()) else {
        return;
    };
    for (i, url) in [server.url(), server.unix_url()].iter().enumerate() {
        let mut driver =
            Driver::connect(&params(&server, url, Some(server.password()))).expect("connect");
        driver.ready().expect("ready");
        assert!(driver.conn.is_ready());
        let results = driver.run_ok(vec![
            query(INSERT_USER, vec![Box::new(format!("user{i}"))]),
            query(COUNT_USERS, vec![]),
            query(SSL_IN_USE, vec![]),
        ]);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].affected, 1);
        assert!(first_i64(&results[0]) > 0);
        assert_eq!(first_i64(&results[1]), i as i64 + 1);
        assert_eq!(results[2].rows[0].get::<bool>(0), Ok(false), "plaintext");
        // The session says who it is (the previous one may take a moment to end).
        let deadline = Instant::now() + DEADLINE;
        while server.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatd'")
            != "1"
        {
            assert!(Instant::now() < deadline, "no session named chatd");
            std::thread::sleep(Duration::from_millis(20));
        }
        let closed = driver.conn.close(driver.poll.registry());
        assert!(matches!(
            &closed[..],
            [Event::Closed(PgError::ConnectionLost)]
        ));
        assert!(driver.conn.is_closed());
    }
    assert_eq!(
        server.psql("SELECT string_agg(name, ',' ORDER BY id) FROM users"),
        "user0,user1"
    );
}

#[test]
fn trust_needs_no_password() {
    let Some(server) = start(PgOptions {
        auth: PgAuth::Trust,
        ..PgOptions::default()
    }) else {
        return;
    };
    let mut driver = Driver::connect(&params(&server, &server.url(), None)).expect("connect");
    driver.ready().expect("ready");
    let results = driver.run_ok(vec![query(ECHO, vec![Box::new(41i64)])]);
    assert_eq!(first_i64(&results[0]), 42);
}

#[test]
fn a_wrong_password_is_auth_failed_and_never_shown() {
    let Some(server) = start(PgOptions::default()) else {
        return;
    };
    let wrong = "not-the-password-9f8e7d";
    let mut driver =
        Driver::connect(&params(&server, &server.url(), Some(wrong))).expect("connect");
    // A unit sent before the failure is answered, not forgotten.
    let id = driver.conn.send(unit(vec![]), Instant::now());
    let e = driver.ready().expect_err("refused");
    assert_eq!(e.code(), "auth_failed", "{e}");
    let text = e.to_string();
    assert!(
        text.contains("password authentication failed for user \"chatd\""),
        "{text}"
    );
    assert!(!text.contains(wrong) && !format!("{e:?}").contains(wrong));
    assert!(driver.seen.iter().any(|ev| matches!(
        ev,
        Event::Unit { id: got, outcome: Err(PgError::ConnectionLost) } if *got == id
    )));
    assert!(driver.conn.is_closed());
}

#[test]
fn md5_and_cleartext_password_methods_are_refused_by_name() {
    for (auth, method) in [
        (PgAuth::Md5, "md5 password"),
        (PgAuth::Password, "cleartext password"),
    ] {
        let Some(server) = start(PgOptions {
            auth,
            ..PgOptions::default()
        }) else {
            return;
        };
        let mut driver = Driver::connect(&params(&server, &server.url(), Some(server.password())))
            .expect("connect");
        let e = driver.ready().expect_err("refused");
        assert_eq!(e, PgError::AuthUnsupported { method });
        assert_eq!(
            e.to_string(),
            format!(
                "the server asks for {method} authentication; chatd supports scram-sha-256 \
                 and trust"
            )
        );
    }
}

#[test]
fn nothing_listening_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://chatd@127.0.0.1:{port}/chat");
    let outcome = Driver::connect(&parse_url(&url).expect("url")).and_then(|mut d| d.ready());
    match outcome {
        Err(PgError::Unreachable { kind, .. }) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("postgres://chatd@/chat?host={}", dir.path().display());
    match Driver::connect(&parse_url(&url).expect("url")) {
        Err(PgError::Unreachable { kind, .. }) => assert_eq!(kind, std::io::ErrorKind::NotFound),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// A CA and a server certificate it signed for localhost and 127.0.0.1: (CA PEM,
/// server certificate PEM, server key PEM).
fn make_certificates(ca_name: &str) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("sign");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("pem"))
        .expect("root");
    Arc::new(roots)
}

#[test]
fn tls_verify_full_require_and_their_failures() {
    let (ca, cert, key) = make_certificates("chatd test CA");
    let Some(server) = start(PgOptions {
        tls: Some((cert, key)),
        ..PgOptions::default()
    }) else {
        return;
    };
    let tls_params = |mode: TlsMode, ca_roots, host: &str| {
        let url = format!("postgres://chatd@{host}:{}/chat", server.port());
        let mut p = params(&server, &url, Some(server.password()));
        p.tls = mode;
        p.ca_roots = ca_roots;
        p
    };
    for (mode, ca_roots, host) in [
        (TlsMode::VerifyFull, Some(roots(&ca)), "127.0.0.1"),
        (TlsMode::VerifyFull, Some(roots(&ca)), "localhost"),
        (TlsMode::Require, None, "127.0.0.1"),
    ] {
        let mut driver = Driver::connect(&tls_params(mode, ca_roots, host)).expect("connect");
        driver
            .ready()
            .unwrap_or_else(|e| panic!("{mode:?} {host}: {e}"));
        let results = driver.run_ok(vec![query(SSL_IN_USE, vec![])]);
        assert_eq!(
            results[0].rows[0].get::<bool>(0),
            Ok(true),
            "{mode:?} encrypted"
        );
        // More pipelined than rustls buffers at once (64 KiB of plaintext): the rest
        // goes out as the socket drains.
        let units = (0..3000i64)
            .map(|i| unit(vec![query(ECHO, vec![Box::new(i)])]))
            .collect();
        for (i, (_, outcome)) in driver.run(units).into_iter().enumerate() {
            let results = outcome.expect("echo");
            assert_eq!(first_i64(&results[0]), i as i64 + 1);
        }
    }

    let (other_ca, _, _) = make_certificates("another CA");
    let mut driver = Driver::connect(&tls_params(
        TlsMode::VerifyFull,
        Some(roots(&other_ca)),
        "127.0.0.1",
    ))
    .expect("connect");
    let e = driver.ready().expect_err("unknown issuer");
    assert_eq!(e.code(), "tls", "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    let no_roots = Driver::connect(&tls_params(TlsMode::VerifyFull, None, "127.0.0.1"));
    assert_eq!(no_roots.err().map(|e| e.code()), Some("tls"));

    let Some(plain) = start(PgOptions::default()) else {
        return;
    };
    let url = format!("postgres://chatd@127.0.0.1:{}/chat", plain.port());
    let mut p = params(&plain, &url, Some(plain.password()));
    p.tls = TlsMode::VerifyFull;
    p.ca_roots = Some(roots(&ca));
    let e = Driver::connect(&p)
        .expect("connect")
        .ready()
        .expect_err("no TLS");
    assert_eq!(e, PgError::NoTls);
}

#[test]
fn a_thousand_pipelined_units_complete_in_order_on_statements_prepared_once() {
    let Some(server) = start(PgOptions::default()) else {
        return;
    };
    let mut driver =
        Driver::connect(&params(&server, &server.url(), Some(server.password()))).expect("connect");
    // Sent before the connection is ready: held, then pipelined.
    let units: Vec<Unit> = (0..1000i64)
        .map(|i| {
            unit(vec![
                query(INSERT_LOG, vec![Box::new(i)]),
                query(ECHO, vec![Box::new(i)]),
            ])
        })
        .collect();
    let now = Instant::now();
    let ids: Vec<UnitId> = units
        .into_iter()
        .map(|u| driver.conn.send(u, now))
        .collect();
    assert_eq!(driver.conn.in_flight(), 1000);
    assert_eq!(driver.conn.oldest_unanswered_since(), Some(now));
    driver.run_until(|seen| {
        seen.iter()
            .filter(|e| matches!(e, Event::Unit { .. }))
            .count()
            == 1000
    });
    let mut answered = Vec::new();
    for event in &driver.seen {
        match event {
            Event::Ready => {}
            Event::Unit {
                id,
                outcome: Ok(results),
            } => {
                let i = answered.len() as i64;
                assert_eq!(results[0].affected, 1);
                assert_eq!(first_i64(&results[1]), i + 1, "unit {i}'s own answer");
                answered.push(*id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answered, ids, "in the order sent");
    assert_eq!(driver.conn.in_flight(), 0);
    assert_eq!(driver.conn.oldest_unanswered_since(), None);
    let results = driver.run_ok(vec![query(PREPARED, vec![])]);
    assert_eq!(
        first_i64(&results[0]),
        catalogue().len() as i64,
        "each statement prepared once"
    );
    assert_eq!(
        server.psql("SELECT count(*), sum(n) FROM log"),
        "1000|499500"
    );
}

#[test]
fn a_failing_unit_rolls_back_whole_while_its_neighbours_commit() {
    let Some(server) = start(PgOptions::default()) else {
        return;
    };
    server.psql("INSERT INTO users (name) VALUES ('taken')");
    let mut driver =
        Driver::connect(&params(&server, &server.url(), Some(server.password()))).expect("connect");
    driver.ready().expect("ready");
    let name = |n: &str| query(INSERT_USER, vec![Box::new(n.to_string())]);
    let outcomes = driver.run(vec![
        unit(vec![name("before")]),
        unit(vec![name("in-failed-unit"), name("taken")]),
        unit(vec![name("after")]),
    ]);
    assert!(outcomes[0].1.is_ok());
    let e = outcomes[1].1.as_ref().expect_err("unique violation");
    assert!(e.is_unique_violation(), "{e}");
    assert!(outcomes[2].1.is_ok());
    assert_eq!(
        server.psql("SELECT string_agg(name, ',' ORDER BY id) FROM users"),
        "taken,before,after"
    );
}

#[test]
fn the_server_going_away_fails_every_unit_in_flight_then_closes() {
    let Some(mut server) = start(PgOptions::default()) else {
        return;
    };
    let mut driver =
        Driver::connect(&params(&server, &server.url(), Some(server.password()))).expect("connect");
    driver.ready().expect("ready");
    let now = Instant::now();
    let mut ids = vec![
        driver
            .conn
            .send(unit(vec![query(SLEEP, vec![Box::new(30.0f64)])]), now),
    ];
    for i in 0..20i64 {
        ids.push(
            driver
                .conn
                .send(unit(vec![query(INSERT_LOG, vec![Box::new(i)])]), now),
        );
    }
    let flushed = driver.conn.flush(driver.poll.registry());
    assert!(flushed.is_empty(), "{flushed:?}");
    // The sleep has started on the server when pg_stat_activity shows it.
    let deadline = Instant::now() + DEADLINE;
    while server.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'")
        != "1"
    {
        assert!(Instant::now() < deadline, "the sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop_immediate();
    driver.run_until(|seen| seen.iter().any(|e| matches!(e, Event::Closed(_))));
    let lost: Vec<UnitId> = driver
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Unit {
                id,
                outcome: Err(PgError::ConnectionLost),
            } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(lost, ids, "every unit in flight, in order");
    assert!(matches!(driver.seen.last(), Some(Event::Closed(_))));
    assert!(driver.conn.is_closed());
    assert_eq!(driver.conn.in_flight(), 0);
    // A unit sent to the closed connection is answered too.
    let late = driver.conn.send(unit(vec![]), Instant::now());
    let events = driver.conn.flush(driver.poll.registry());
    assert!(matches!(
        &events[..],
        [Event::Unit { id, outcome: Err(PgError::ConnectionLost) }] if *id == late
    ));

    // The same data directory and port serve again; the unit in flight never ran.
    server.start_again();
    let mut driver =
        Driver::connect(&params(&server, &server.url(), Some(server.password()))).expect("connect");
    driver.ready().expect("ready after restart");
    let results = driver.run_ok(vec![query(COUNT_USERS, vec![])]);
    assert_eq!(first_i64(&results[0]), 0);
}

#[test]
fn plaintext_after_the_tls_answer_is_refused() {
    // A fake server that answers the SSLRequest with S and, in the same breath, a
    // plaintext AuthenticationOk: what a man in the middle would inject.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "postgres://chatd@127.0.0.1:{}/chat?sslmode=require",
        listener.local_addr().expect("addr").port()
    );
    let mut driver = Driver::connect(&parse_url(&url).expect("url")).expect("connect");
    let (mut peer, _) = listener.accept().expect("accept");
    peer.set_nonblocking(true).expect("nonblocking");
    let mut request = [0u8; 8];
    let deadline = Instant::now() + DEADLINE;
    let mut got = 0;
    while got < request.len() {
        assert!(Instant::now() < deadline, "no SSLRequest");
        driver.turn();
        match std::io::Read::read(&mut peer, &mut request[got..]) {
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    peer.set_nonblocking(false).expect("blocking");
    assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
    std::io::Write::write_all(&mut peer, b"SR\0\0\0\x08\0\0\0\0").expect("write");
    let e = driver.ready().expect_err("refused");
    assert_eq!(e.code(), "protocol");
    assert!(
        e.to_string().contains("plaintext after accepting TLS"),
        "{e}"
    );
}
