//! chatd on PostgreSQL end to end: a real PostgreSQL started by the test, chatd's own
//! binary over real TLS, the same requests as on SQLite.

mod common;

use common::postgres::{PgOptions, PgServer};
use common::{TestDatabase, TestServer, test_database, ws};
use serde_json::json;

fn postgres() -> Option<PgServer> {
    PgServer::start(PgOptions::default())
}

fn chatd_on(pg: &PgServer, extra: &str) -> TestServer {
    let conf = format!("database = {}\n{extra}", pg.url());
    TestServer::start_with_env(&conf, &[("CHATD_DATABASE_PASSWORD", pg.password())])
}

#[test]
fn accounts_and_chat_work_on_postgres() {
    let Some(pg) = postgres() else { return };
    let server = chatd_on(&pg, "");
    let (mut alice, _) = ws::user(&server, "alice");
    let (mut bob, _) = ws::user(&server, "bob");
    alice.ok(json!({"type":"join","room":"dev"}));
    bob.ok(json!({"type":"join","room":"dev"}));
    let sent = alice.ok(json!({"type":"send","room":"dev","text":"hello"}));
    let id = sent["id"].as_i64().expect("an id");
    let direct = bob.ok(json!({"type":"direct","to":"ALICE","text":"hi"}));
    assert!(direct["id"].as_i64().expect("an id") > id);
    let history = bob.ok(json!({"type":"history","room":"dev"}));
    assert_eq!(history["messages"][0]["text"], "hello");
    let with = alice.ok(json!({"type":"history","with":"bob"}));
    assert_eq!(with["messages"][0]["to"], "alice");
    let r = alice.ok(json!({"type":"subscribe","user":"bob"}));
    assert_eq!(r, json!({"user":"bob"}));
    assert_eq!(
        alice.ok(json!({"type":"subscriptions"})),
        json!({"users":["bob"]})
    );
    let c = alice.ok(json!({"type":"conversations"}));
    assert_eq!(c["conversations"][0]["with"], "bob");
    let e = alice.error(json!({"type":"direct","to":"nobody","text":"x"}));
    assert_eq!(e, "unknown_user");
    assert!(pg.psql("SELECT count(*) FROM messages").contains('2'));
}

/// The harness itself: with `CHATD_TEST_DATABASE=postgres` every TestServer runs chatd
/// on a PostgreSQL of its own, by TCP and by the Unix socket in turn, keeps it across
/// restarts, and stops and removes it after chatd; on SQLite it starts none.
#[test]
fn test_servers_run_on_the_database_the_run_asks_for() {
    let mut by_socket = Vec::new();
    // The URL kind alternates per server started in this process: a few starts see
    // both even if another test starts one in between.
    while by_socket.len() < 6 && !(by_socket.contains(&true) && by_socket.contains(&false)) {
        let mut server = TestServer::start("");
        server.register("alice", "alice-password");
        let Some(pg) = server.pg() else {
            assert_eq!(test_database(), TestDatabase::Sqlite);
            assert!(server.db_path().is_file(), "no SQLite file");
            return;
        };
        assert_eq!(test_database(), TestDatabase::Postgres);
        assert!(!server.db_path().exists(), "a SQLite file on PostgreSQL");
        assert_eq!(pg.psql("SELECT username FROM users"), "alice");
        let pid = pg.pid().expect("running");
        let dir = pg.dir().to_path_buf();
        by_socket.push(server.log().contains(" (socket "));
        server.restart();
        assert_eq!(server.pg().and_then(|pg| pg.pid()), Some(pid));
        server.login("alice", "alice-password");
        drop(server);
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "postgres {pid} still running"
        );
    }
    assert!(
        by_socket.contains(&true) && by_socket.contains(&false),
        "TCP and Unix socket not both used: {by_socket:?}"
    );
}
