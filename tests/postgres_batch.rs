//! Room posts that reach chatd in one turn are stored on PostgreSQL by one statement
//! for the whole run of them: their ids must still follow request order, around a
//! direct message in the middle of the run, and each sender must get its own id.

mod common;

use common::postgres::{PgOptions, PgServer};
use common::{TestServer, ws};
use serde_json::{Value, json};
use tungstenite::Message;

/// Sends every request in one write, so that chatd reads them in one loop turn and
/// stores them in one unit, then collects their replies by ref.
fn send_at_once(client: &mut ws::Ws, requests: &[Value]) -> Vec<Value> {
    for request in requests {
        client
            .socket
            .write(Message::text(request.to_string()))
            .expect("queue a frame");
    }
    client.socket.flush().expect("send the frames");
    let mut replies = Vec::new();
    while replies.len() < requests.len() {
        let frame = client.recv();
        if frame["type"] == "reply" {
            replies.push(frame);
        }
    }
    replies
}

#[test]
fn a_turn_of_room_posts_is_stored_in_request_order_with_consecutive_ids() {
    // pg_stat_statements tells which statements stored the messages.
    let options = PgOptions {
        settings: vec![(
            "shared_preload_libraries".into(),
            "pg_stat_statements".into(),
        )],
        ..PgOptions::default()
    };
    let Some(pg) = PgServer::start(options) else {
        return;
    };
    pg.psql("CREATE EXTENSION pg_stat_statements");
    // More requests at once than the default ws_rate's burst.
    let conf = format!("database = {}\nws_rate = 1000/s burst 1000\n", pg.url());
    let server = TestServer::start_with_env(&conf, &[("CHATD_DATABASE_PASSWORD", pg.password())]);
    let (mut alice, _) = ws::user(&server, "alice");
    let (mut bob, _) = ws::user(&server, "bob");
    alice.ok(json!({"type":"join","room":"dev"}));
    bob.ok(json!({"type":"join","room":"dev"}));
    let first = alice.ok(json!({"type":"send","room":"dev","text":"before"}))["id"]
        .as_i64()
        .expect("an id");

    // 30 room posts with a direct message as the 16th.
    let requests: Vec<Value> = (0..31)
        .map(|i| {
            if i == 15 {
                json!({"type":"direct","to":"bob","text":"direct","ref":i})
            } else {
                json!({"type":"send","room":"dev","text":format!("m{i}"),"ref":i})
            }
        })
        .collect();
    let replies = send_at_once(&mut alice, &requests);
    let refs: Vec<i64> = replies
        .iter()
        .map(|r| r["ref"].as_i64().expect("ref"))
        .collect();
    assert_eq!(
        refs,
        (0..31).collect::<Vec<_>>(),
        "replies in request order"
    );
    let ids: Vec<i64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "{r}");
            r["data"]["id"].as_i64().expect("an id")
        })
        .collect();
    let expected: Vec<i64> = (1..=31).map(|n| first + n).collect();
    assert_eq!(
        ids, expected,
        "ids in request order, one each, none skipped"
    );

    let stored = pg.psql(&format!(
        "SELECT string_agg(text, ',' ORDER BY id) FROM messages WHERE id > {first}"
    ));
    let texts: Vec<String> = (0..31)
        .map(|i| {
            if i == 15 {
                "direct".to_string()
            } else {
                format!("m{i}")
            }
        })
        .collect();
    assert_eq!(stored.trim(), texts.join(","));
    assert_eq!(
        pg.psql("SELECT value FROM counters WHERE name = 'message'")
            .trim(),
        (first + 31).to_string(),
        "the counter moved by exactly the messages stored"
    );

    let batched = pg.psql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
         WHERE query LIKE '%unnest(%' AND query LIKE '%INSERT INTO messages%'",
    );
    let batched: i64 = batched.trim().parse().expect("a count");
    assert!(
        batched >= 1,
        "the turn's room posts went through the batch statement"
    );

    // Bob gets the room's messages live in id order, and history agrees.
    let mut live = Vec::new();
    while live.len() < 30 {
        let event = bob.event();
        if event["type"] == "message" && event["room"] == "dev" && event["text"] != "before" {
            live.push(event["id"].as_i64().expect("an id"));
        }
    }
    let room_ids: Vec<i64> = ids.iter().copied().filter(|&id| id != ids[15]).collect();
    assert_eq!(live, room_ids);
    let history = bob.ok(json!({"type":"history","room":"dev","limit":50}));
    let listed: Vec<i64> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_i64().expect("an id"))
        .collect();
    let mut want = vec![first];
    want.extend(&room_ids);
    assert_eq!(listed, want);
}
