//! Several chatd processes writing one PostgreSQL database: the history invariant
//! (within a room and a direct conversation, ids increase in the order readers can see
//! them, so paging with `after` never misses a message that commits later), usernames
//! unique ignoring case across processes, and a password change seen by every process.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::postgres::{PgOptions, PgServer};
use common::{Client, TEST_SECRET, TestServer, ws};
use serde_json::{Value, json};

/// Limits raised so that the clients can write at full speed and register at once.
const FAST: &str = "log_level = info
access_log = false
ws_rate = 100000/s burst 100000
http_rate_per_ip = 100000/s burst 100000
conn_rate_per_ip = 10000/s burst 10000
login_rate_per_ip = 100000/min burst 100000
password_hashes_per_sec = 1000
max_connections_per_ip = 1000";

/// Messages each room writer sends, and each direct writer.
const ROOM_MESSAGES_PER_WRITER: usize = 1000;
const DIRECT_MESSAGES_PER_WRITER: usize = 400;

/// Requests a writer keeps unanswered at once.
const WINDOW: usize = 4;

/// A writer's pause after each acknowledgement: the writes then last seconds, not a
/// fraction of one (PostgreSQL commits many per transaction), so that the reader reaches
/// the newest message many times while they go on.
const PACE: Duration = Duration::from_millis(2);

/// How long the whole writing phase may take before the test gives up.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One chatd on the test's PostgreSQL; every process shares the JWT secret, so a token
/// from one is a token for all.
fn chatd_on(pg: &PgServer) -> TestServer {
    let conf = format!("database = {}\n{FAST}", pg.url());
    TestServer::start_with_env(
        &conf,
        &[
            ("CHATD_DATABASE_PASSWORD", pg.password()),
            ("SECRET_KEY", TEST_SECRET),
        ],
    )
}

/// What a reader saw: the pages it got, in order (each a list of ids), and the ids of
/// the live events it received.
#[derive(Debug, Default)]
struct ReaderView {
    pages: Vec<Vec<i64>>,
    live: Vec<i64>,
    /// Pages that reached the newest message while the writers were still writing:
    /// where a message committing later with a lower id would be missed.
    at_the_tip: usize,
}

/// Checks a reader's view against the ids the writers were acknowledged and the full
/// history as the database holds it at the end:
/// - every page strictly increasing, each page starting above the previous one;
/// - the pages together are exactly the full history (no gap, no duplicate);
/// - every acknowledged id is in it, none acknowledged twice;
/// - live events strictly increasing, each in the history.
fn check_reader(view: &ReaderView, acknowledged: &[i64], full: &[i64]) -> Result<(), String> {
    let mut combined: Vec<i64> = Vec::new();
    for (n, page) in view.pages.iter().enumerate() {
        for &id in page {
            if let Some(&last) = combined.last()
                && id <= last
            {
                return Err(format!(
                    "page {n}: id {id} after {last}: not strictly increasing"
                ));
            }
            combined.push(id);
        }
    }
    if let Some(missing) = full.iter().find(|id| combined.binary_search(id).is_err()) {
        return Err(format!(
            "id {missing} is in the history but the reader never saw it (a gap)"
        ));
    }
    if combined != full {
        return Err(format!(
            "the reader's view ({} ids) differs from the history ({} ids)",
            combined.len(),
            full.len()
        ));
    }
    let mut seen = HashSet::new();
    for id in acknowledged {
        if !seen.insert(id) {
            return Err(format!("id {id} acknowledged twice"));
        }
        if combined.binary_search(id).is_err() {
            return Err(format!("acknowledged id {id} is not in the history"));
        }
    }
    for pair in view.live.windows(2) {
        if pair[1] <= pair[0] {
            return Err(format!("live event {} after {}", pair[1], pair[0]));
        }
    }
    if let Some(id) = view
        .live
        .iter()
        .find(|id| combined.binary_search(id).is_err())
    {
        return Err(format!("live event {id} is not in the history"));
    }
    Ok(())
}

/// The ids of a history page, checked to be ordered as the page says.
fn page_ids(data: &Value) -> Vec<i64> {
    data["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_i64().expect("an id"))
        .collect()
}

/// Sends `count` messages built by `request(n)` keeping [`WINDOW`] unanswered, reading
/// every frame meanwhile (events too, so the connection is never a slow consumer);
/// returns the acknowledged ids.
fn write_all(mut ws: ws::Ws, count: usize, request: impl Fn(usize) -> Value) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    let mut sent = 0;
    let deadline = Instant::now() + RUN_LIMIT;
    while ids.len() < count {
        while sent < count && sent - ids.len() < WINDOW {
            let mut frame = request(sent);
            frame["ref"] = json!(sent);
            ws.send_json(&frame);
            sent += 1;
        }
        let frame = ws.recv();
        if frame["type"] == "reply" {
            assert_eq!(frame["ok"], true, "a write was refused: {frame}");
            ids.push(frame["data"]["id"].as_i64().expect("an id"));
            thread::sleep(PACE);
        }
        assert!(Instant::now() < deadline, "writing took over {RUN_LIMIT:?}");
    }
    ids
}

/// The next page `after` an id (room or direct conversation), and whether more exist.
fn page_after(ws: &mut ws::Ws, target: (&str, &str), after: i64) -> (Vec<i64>, bool) {
    let data = ws.ok(json!({"type":"history", target.0: target.1, "after": after, "limit": 100}));
    (page_ids(&data), data["more"] == true)
}

/// Ids of the live events of one kind kept by the client, in arrival order.
fn drain_live(ws: &mut ws::Ws, room: &mut Vec<i64>, direct: &mut Vec<i64>) {
    // Bounded: events keep coming while the writers write, and the reader must get
    // back to paging.
    let until = Instant::now() + Duration::from_millis(5);
    while Instant::now() < until
        && let Some(frame) = ws.recv_within(Duration::from_millis(1))
    {
        let id = frame["id"].as_i64();
        match (frame["type"].as_str(), id) {
            (Some("message"), Some(id)) if frame["room"] == "hall" => room.push(id),
            (Some("direct"), Some(id)) => direct.push(id),
            _ => {}
        }
    }
}

/// Every id stored for a query, as psql prints them.
fn stored_ids(pg: &PgServer, sql: &str) -> Vec<i64> {
    pg.psql(sql)
        .lines()
        .map(|l| l.trim().parse().expect("an id"))
        .collect()
}

#[test]
fn concurrent_writers_on_three_processes_keep_one_gapless_history() {
    let Some(pg) = PgServer::start(PgOptions::default()) else {
        return;
    };
    let servers = [chatd_on(&pg), chatd_on(&pg), chatd_on(&pg)];
    let [a, b, c] = &servers;
    let password = "password-123";
    for name in [
        "alice", "bob", "writer0", "writer1", "writer2", "writer3", "writer4",
    ] {
        a.register(name, password);
    }
    let connect = |server: &TestServer, name: &str| {
        let token = server.login(name, password);
        ws::connect(server, &token).0
    };

    // Room writers: two on A, two on B, one on C (so the reader on C also gets live
    // events). Direct writers: bob on every process, alice on A, all in one
    // conversation.
    let mut room_writers = Vec::new();
    for (n, server) in [a, a, b, b, c].into_iter().enumerate() {
        let mut ws = connect(server, &format!("writer{n}"));
        ws.ok(json!({"type":"join","room":"hall"}));
        room_writers.push(ws);
    }
    let mut direct_writers = Vec::new();
    for (server, from, to) in [
        (a, "bob", "alice"),
        (b, "bob", "ALICE"),
        (c, "bob", "alice"),
    ] {
        direct_writers.push((connect(server, from), to));
    }
    direct_writers.push((connect(a, "alice"), "bob"));
    let mut reader = connect(c, "alice");
    reader.ok(json!({"type":"join","room":"hall"}));

    let start = Arc::new(Barrier::new(room_writers.len() + direct_writers.len() + 1));
    let mut handles = Vec::new();
    for (n, ws) in room_writers.into_iter().enumerate() {
        let start = start.clone();
        handles.push(thread::spawn(move || {
            start.wait();
            let ids = write_all(
                ws,
                ROOM_MESSAGES_PER_WRITER,
                |i| json!({"type":"send","room":"hall","text":format!("w{n} {i}")}),
            );
            (true, ids)
        }));
    }
    for (n, (ws, to)) in direct_writers.into_iter().enumerate() {
        let start = start.clone();
        handles.push(thread::spawn(move || {
            start.wait();
            let ids = write_all(
                ws,
                DIRECT_MESSAGES_PER_WRITER,
                |i| json!({"type":"direct","to":to,"text":format!("d{n} {i}")}),
            );
            (false, ids)
        }));
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        thread::spawn(move || {
            // Done even when a writer failed, so that the reader stops at once.
            let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            done.store(true, Ordering::SeqCst);
            results
        })
    };

    // The reader pages after its last id in the room and in the conversation until
    // the writers are done and a last round finds nothing more.
    start.wait();
    let began = Instant::now();
    let mut room = ReaderView::default();
    let mut direct = ReaderView::default();
    let (mut room_last, mut direct_last) = (0, 0);
    loop {
        let finished = done.load(Ordering::SeqCst);
        let mut more_anywhere = false;
        for (target, view, last) in [
            (("room", "hall"), &mut room, &mut room_last),
            (("with", "bob"), &mut direct, &mut direct_last),
        ] {
            let (ids, more) = page_after(&mut reader, target, *last);
            if let Some(&newest) = ids.last() {
                *last = newest;
            }
            more_anywhere |= more;
            if !more && !finished {
                view.at_the_tip += 1;
            }
            if !ids.is_empty() {
                view.pages.push(ids);
            }
        }
        drain_live(&mut reader, &mut room.live, &mut direct.live);
        if finished && !more_anywhere {
            break;
        }
        assert!(
            began.elapsed() < RUN_LIMIT,
            "the reader did not finish in time"
        );
    }
    let results: Vec<(bool, Vec<i64>)> = watcher
        .join()
        .expect("the writers' watcher")
        .into_iter()
        .map(|r| r.expect("a writer failed"))
        .collect();
    let elapsed = began.elapsed();
    drain_live(&mut reader, &mut room.live, &mut direct.live);

    let room_acks: Vec<i64> = results
        .iter()
        .filter(|(is_room, _)| *is_room)
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    let direct_acks: Vec<i64> = results
        .iter()
        .filter(|(is_room, _)| !*is_room)
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    assert_eq!(room_acks.len(), 5 * ROOM_MESSAGES_PER_WRITER);
    assert_eq!(direct_acks.len(), 4 * DIRECT_MESSAGES_PER_WRITER);

    let room_full = stored_ids(
        &pg,
        "SELECT id FROM messages WHERE room = 'hall' ORDER BY id",
    );
    let direct_full = stored_ids(&pg, "SELECT id FROM messages WHERE kind = 1 ORDER BY id");
    assert_eq!(room_full.len(), room_acks.len(), "stored room messages");
    assert_eq!(
        direct_full.len(),
        direct_acks.len(),
        "stored direct messages"
    );
    check_reader(&room, &room_acks, &room_full).expect("the room's history");
    check_reader(&direct, &direct_acks, &direct_full).expect("the conversation's history");
    // The reader really raced the writers: it read many pages while they wrote, and
    // it got live events from the writers of its own process.
    assert!(
        room.at_the_tip >= 10 && direct.at_the_tip >= 10,
        "pages that reached the newest message during the writes: room {}, direct {}",
        room.at_the_tip,
        direct.at_the_tip
    );
    assert!(!room.live.is_empty() && !direct.live.is_empty());

    // The same history, paged from the start on another process.
    let mut other = connect(b, "bob");
    for (target, full) in [
        (("room", "hall"), &room_full),
        (("with", "alice"), &direct_full),
    ] {
        let mut all = Vec::new();
        let mut last = 0;
        loop {
            let (ids, more) = page_after(&mut other, target, last);
            if let Some(&newest) = ids.last() {
                last = newest;
            }
            all.extend(ids);
            if !more {
                break;
            }
        }
        assert_eq!(&all, full, "history {target:?} read from process B");
    }
    // Both conversation rows point at the newest message.
    let newest = direct_full.last().copied().expect("direct messages");
    assert_eq!(
        pg.psql("SELECT DISTINCT last_id FROM conversations"),
        newest.to_string()
    );
    eprintln!(
        "{} room and {} direct messages from 9 writers on 3 processes in {elapsed:?}; \
         the reader read {} + {} pages ({} + {} at the newest message) and {} + {} live events",
        room_acks.len(),
        direct_acks.len(),
        room.pages.len(),
        direct.pages.len(),
        room.at_the_tip,
        direct.at_the_tip,
        room.live.len(),
        direct.live.len()
    );
}

/// The check above fails on the histories it is there to catch.
#[test]
fn check_reader_catches_gaps_duplicates_and_disorder() {
    let ok = ReaderView {
        pages: vec![vec![1, 2], vec![3]],
        live: vec![2, 3],
        at_the_tip: 0,
    };
    assert_eq!(check_reader(&ok, &[1, 2, 3], &[1, 2, 3]), Ok(()));

    // Ids handed out when a writer starts rather than when it commits: writer 1 takes
    // id 1, writer 2 takes id 2 and commits first, the reader pages after 0 and gets
    // [2], then writer 1 commits, and the reader's next page after 2 is empty. Id 1
    // committed after the reader passed it.
    let late_lower = ReaderView {
        pages: vec![vec![2]],
        live: vec![],
        at_the_tip: 0,
    };
    let error = check_reader(&late_lower, &[1, 2], &[1, 2]).expect_err("a gap");
    assert!(error.contains("id 1"), "{error}");

    let duplicate = ReaderView {
        pages: vec![vec![1, 2], vec![2, 3]],
        live: vec![],
        at_the_tip: 0,
    };
    assert!(check_reader(&duplicate, &[1, 2, 3], &[1, 2, 3]).is_err());

    let disorder = ReaderView {
        pages: vec![vec![2, 1]],
        live: vec![],
        at_the_tip: 0,
    };
    assert!(check_reader(&disorder, &[1, 2], &[1, 2]).is_err());

    let unstored_ack = ReaderView {
        pages: vec![vec![1]],
        live: vec![],
        at_the_tip: 0,
    };
    assert!(check_reader(&unstored_ack, &[1, 7], &[1]).is_err());
    assert!(check_reader(&ok, &[1, 2, 2], &[1, 2, 3]).is_err());

    let live_disorder = ReaderView {
        pages: vec![vec![1, 2]],
        live: vec![2, 1],
        at_the_tip: 0,
    };
    assert!(check_reader(&live_disorder, &[1, 2], &[1, 2]).is_err());
}

/// One registration attempt on the server at `addr`; the status and error code.
fn try_register(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    name: &str,
) -> (u16, String) {
    let mut client = Client::connect(addr, tls, "localhost").expect("TLS connection");
    let r = client.post_json(
        "/register",
        &json!({"username": name, "password": "password-123"}),
    );
    let code = if r.status == 201 {
        String::new()
    } else {
        r.json()["error"].as_str().unwrap_or("").to_string()
    };
    (r.status, code)
}

#[test]
fn a_username_is_taken_once_across_processes_in_any_letter_case() {
    let Some(pg) = PgServer::start(PgOptions::default()) else {
        return;
    };
    let a = chatd_on(&pg);
    let b = chatd_on(&pg);
    let spellings = [
        "carol", "CAROL", "Carol", "cArol", "caRol", "carOl", "caroL", "CaRoL",
    ];
    for round in 0..5 {
        let attempts = 16;
        let start = Arc::new(Barrier::new(attempts));
        let handles: Vec<_> = (0..attempts)
            .map(|n| {
                let server = if n % 2 == 0 { &a } else { &b };
                let (addr, tls) = (server.addr(), server.client_config());
                let start = start.clone();
                let name = format!("{}{round}", spellings[n % spellings.len()]);
                thread::spawn(move || {
                    start.wait();
                    try_register(addr, tls, &name)
                })
            })
            .collect();
        let outcomes: Vec<(u16, String)> = handles
            .into_iter()
            .map(|h| h.join().expect("a registration"))
            .collect();
        let created = outcomes.iter().filter(|(s, _)| *s == 201).count();
        let taken = outcomes
            .iter()
            .filter(|(s, code)| *s == 409 && code == "username_taken")
            .count();
        assert_eq!(
            (created, taken),
            (1, attempts - 1),
            "round {round}: {outcomes:?}"
        );
        assert_eq!(
            pg.psql(&format!(
                "SELECT count(*) FROM users WHERE lower(username) = 'carol{round}'"
            )),
            "1"
        );
    }
}

#[test]
fn a_password_change_on_one_process_revokes_tokens_on_another() {
    let Some(pg) = PgServer::start(PgOptions::default()) else {
        return;
    };
    let a = chatd_on(&pg);
    let b = chatd_on(&pg);
    a.register("dave", "password-123");
    let token = a.login("dave", "password-123");
    let mut on_b = b.connect();
    assert_eq!(on_b.get_auth("/me", &token).status, 200);
    let (ws_before, _) = ws::connect(&b, &token);
    drop(ws_before);

    let mut on_a: Client = a.connect();
    let r = on_a.send_json(
        "PUT",
        "/me",
        &json!({"current_password":"password-123","new_password":"password-456"}),
        Some(&token),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // At once, with no waiting: B reads the password version from the database.
    let r = on_b.get_auth("/me", &token);
    assert_eq!(r.status, 401, "{}", r.text());
    let auth = format!("Bearer {token}");
    let refused = ws::try_connect(&b, &[("Authorization", &auth)]).expect_err("upgrade refused");
    assert_eq!(refused.status, 401, "{refused:?}");
    let fresh = b.login("dave", "password-456");
    assert_eq!(b.connect().get_auth("/me", &fresh).status, 200);
    let old = b.connect().post_json(
        "/login",
        &json!({"username":"dave","password":"password-123"}),
    );
    assert_eq!(old.status, 401);
}
