//! The chat protocol end to end: every request type and error code, rooms and their
//! ordering, presence, direct messages, subscriptions, history.

mod common;

use std::time::Duration;

use common::TestServer;
use common::ws;
use serde_json::{Value, json};

fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_string())
        .collect()
}

#[test]
fn every_request_type_answers_once_with_its_ref() {
    let server = TestServer::start("");
    let (mut bob, _) = ws::user(&server, "bob");
    let (mut a, _) = ws::user(&server, "alice");
    assert_eq!(a.ok(json!({"type":"ping"})), json!({}));
    assert_eq!(
        a.ok(json!({"type":"join","room":"rust"})),
        json!({"room":"rust","members":["alice"]})
    );
    let sent = a.ok(json!({"type":"send","room":"rust","text":"hi"}));
    assert!(sent["id"].is_i64() && sent["ts"].is_i64(), "{sent}");
    let now_ms = common::unix_now() * 1000;
    assert!(
        (sent["ts"].as_i64().unwrap() - now_ms).abs() < 60_000,
        "ts is ms since epoch"
    );
    assert_eq!(a.next_of_type("message")["id"], sent["id"]);
    let dm = a.ok(json!({"type":"direct","to":"bob","text":"yo"}));
    assert!(
        dm["id"].as_i64() > sent["id"].as_i64(),
        "one increasing id sequence"
    );
    assert_eq!(
        a.ok(json!({"type":"subscribe","user":"bob"})),
        json!({"user":"bob"})
    );
    let published = bob.ok(json!({"type":"publish","text":"news"}));
    assert_eq!(published["delivered"], 1);
    assert!(published["id"].as_i64() > dm["id"].as_i64());
    assert_eq!(
        a.ok(json!({"type":"unsubscribe","user":"bob"})),
        json!({"user":"bob"})
    );
    assert_eq!(
        a.ok(json!({"type":"rooms"})),
        json!({"rooms":[{"name":"lobby","members":2},{"name":"rust","members":1}]})
    );
    assert_eq!(
        a.ok(json!({"type":"users"})),
        json!({"users":["alice","bob"]})
    );
    let history = a.ok(json!({"type":"history","room":"rust"}));
    assert_eq!(texts(&history["messages"]), ["hi"]);
    assert_eq!(history["more"], false);
    assert_eq!(
        a.ok(json!({"type":"leave","room":"rust"})),
        json!({"room":"rust"})
    );

    // A number ref comes back as a number; no ref comes back as null.
    a.send_json(&json!({"type":"ping","ref":42}));
    assert_eq!(
        a.next_of_type("reply"),
        json!({"type":"reply","ref":42,"ok":true,"data":{}})
    );
    a.send_json(&json!({"type":"ping"}));
    assert_eq!(a.next_of_type("reply")["ref"], Value::Null);
}

#[test]
fn every_error_code_and_the_connection_stays_open() {
    let server = TestServer::start("max_text_chars = 10\nws_rate = 100/s burst 100");
    let (mut a, _) = ws::user(&server, "alice");
    for request in [
        json!({"type":"dance"}),
        json!({"room":"x"}),
        json!({"type":"send","room":"lobby"}),
        json!({"type":"send","room":"lobby","text":5}),
        json!({"type":"send","room":"lobby","text":"ééééééééééé"}),
        json!({"type":"history","room":"lobby","limit":0}),
        json!({"type":"history","room":"lobby","limit":101}),
        json!({"type":"subscribe","user":"alice"}),
    ] {
        assert_eq!(a.error(request.clone()), "bad_request", "{request}");
    }
    // No visible character: empty_text, for every kind of text, and nothing is sent.
    for request in [
        json!({"type":"send","room":"lobby","text":""}),
        json!({"type":"send","room":"lobby","text":" \u{200B}\u{FEFF}"}),
        json!({"type":"direct","to":"alice","text":"\u{3000}"}),
        json!({"type":"publish","text":"\u{2060}\n"}),
    ] {
        assert_eq!(a.error(request.clone()), "empty_text", "{request}");
    }
    // Exactly 10 characters (not bytes) is fine.
    a.ok(json!({"type":"send","room":"lobby","text":"éééééééééé"}));
    // Of the sends above, only that one was stored.
    let history = a.ok(json!({"type":"history","room":"lobby"}));
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["éééééééééé"]);
    assert_eq!(
        a.error(json!({"type":"join","room":"bad room"})),
        "invalid_room"
    );
    assert_eq!(
        a.error(json!({"type":"join","room":"x".repeat(65)})),
        "invalid_room"
    );
    assert_eq!(
        a.error(json!({"type":"leave","room":"elsewhere"})),
        "not_member"
    );
    assert_eq!(
        a.error(json!({"type":"send","room":"elsewhere","text":"x"})),
        "not_member"
    );
    assert_eq!(
        a.error(json!({"type":"direct","to":"nobody","text":"x"})),
        "unknown_user"
    );
    assert_eq!(
        a.error(json!({"type":"subscribe","user":"nobody"})),
        "unknown_user"
    );
    assert_eq!(
        a.error(json!({"type":"unsubscribe","user":"nobody"})),
        "unknown_user"
    );
    assert_eq!(
        a.error(json!({"type":"unsubscribe","user":"ALICE"})),
        "bad_request"
    );
    assert_eq!(
        a.error(json!({"type":"history","with":"nobody"})),
        "unknown_user"
    );

    // Not JSON and bad refs answer with ref null.
    for raw in [
        "not json".to_string(),
        json!({"type":"ping","ref":[1]}).to_string(),
        json!({"type":"ping","ref":"r".repeat(65)}).to_string(),
    ] {
        a.send_text(&raw);
        let reply = a.next_of_type("reply");
        assert_eq!(reply["ref"], Value::Null, "{raw}");
        assert_eq!(reply["error"]["code"], "bad_request", "{raw}");
    }
    assert_eq!(a.ok(json!({"type":"ping"})), json!({}));
}

#[test]
fn three_clients_in_two_rooms_see_exactly_their_rooms_in_one_order() {
    let server = TestServer::start("ws_rate = 100/s burst 100");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    let (mut c, _) = ws::user(&server, "carol");
    a.ok(json!({"type":"join","room":"one"}));
    b.ok(json!({"type":"join","room":"one"}));
    b.ok(json!({"type":"join","room":"two"}));
    c.ok(json!({"type":"join","room":"two"}));
    // Interleaved sends from several clients into both rooms.
    for i in 0..10 {
        a.send_json(&json!({"type":"send","room":"one","text":format!("a{i}")}));
        b.send_json(&json!({"type":"send","room": if i % 2 == 0 {"one"} else {"two"},"text":format!("b{i}")}));
        c.send_json(&json!({"type":"send","room":"two","text":format!("c{i}")}));
    }
    let in_one: Vec<Value> = (0..15).map(|_| a.next_of_type("message")).collect();
    let b_all: Vec<Value> = (0..30).map(|_| b.next_of_type("message")).collect();
    let in_two: Vec<Value> = (0..15).map(|_| c.next_of_type("message")).collect();
    assert!(in_one.iter().all(|m| m["room"] == "one"));
    assert!(in_two.iter().all(|m| m["room"] == "two"));
    let ids = |ms: &[Value]| -> Vec<i64> { ms.iter().map(|m| m["id"].as_i64().unwrap()).collect() };
    for list in [&in_one, &in_two, &b_all] {
        let v = ids(list);
        assert!(v.windows(2).all(|w| w[0] < w[1]), "in id order: {v:?}");
    }
    // Bob, in both rooms, saw each room's messages in the same order as the others.
    let b_one: Vec<Value> = b_all
        .iter()
        .filter(|m| m["room"] == "one")
        .cloned()
        .collect();
    let b_two: Vec<Value> = b_all
        .iter()
        .filter(|m| m["room"] == "two")
        .cloned()
        .collect();
    assert_eq!(ids(&b_one), ids(&in_one));
    assert_eq!(ids(&b_two), ids(&in_two));
    a.assert_nothing_pending();
}

#[test]
fn a_connection_is_in_at_most_max_rooms_per_connection() {
    let server = TestServer::start("max_rooms_per_connection = 3");
    server.register("alice", "password-123");
    let token = server.login("alice", "password-123");
    let (mut a, welcome) = ws::connect(&server, &token);
    assert_eq!(welcome["limits"]["max_rooms_per_connection"], 3);
    a.ok(json!({"type":"join","room":"one"}));
    a.ok(json!({"type":"join","room":"two"}));
    // The lobby counts: this would be the fourth room.
    assert_eq!(
        a.error(json!({"type":"join","room":"three"})),
        "too_many_rooms"
    );
    // The connection keeps working, and a room it is in may be joined again.
    assert_eq!(a.ok(json!({"type":"ping"})), json!({}));
    assert_eq!(
        a.ok(json!({"type":"join","room":"one"})),
        json!({"room":"one","members":["alice"]})
    );
    assert_eq!(
        a.ok(json!({"type":"rooms"})),
        json!({"rooms":[{"name":"lobby","members":1},{"name":"one","members":1},{"name":"two","members":1}]})
    );
    // Leaving one makes room for another.
    a.ok(json!({"type":"leave","room":"two"}));
    assert_eq!(
        a.ok(json!({"type":"join","room":"three"})),
        json!({"room":"three","members":["alice"]})
    );
    let sent = a.ok(json!({"type":"send","room":"three","text":"in"}));
    assert_eq!(a.next_of_type("message")["id"], sent["id"]);
    assert_eq!(
        a.error(json!({"type":"join","room":"four"})),
        "too_many_rooms"
    );
    // Another connection of the same user has rooms of its own to fill.
    let (mut a2, _) = ws::connect(&server, &token);
    a2.ok(json!({"type":"join","room":"four"}));
    a2.ok(json!({"type":"join","room":"five"}));
    assert_eq!(
        a2.error(json!({"type":"join","room":"six"})),
        "too_many_rooms"
    );
}

#[test]
fn at_most_max_rooms_exist_and_existing_ones_stay_open_to_all() {
    let server = TestServer::start("max_rooms = 3");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    a.ok(json!({"type":"join","room":"one"}));
    a.ok(json!({"type":"join","room":"two"}));
    assert_eq!(server.metric("chatd_rooms"), 3, "the lobby counts");
    assert_eq!(
        b.error(json!({"type":"join","room":"three"})),
        "too_many_rooms"
    );
    // An existing room can still be joined, and the connection keeps working.
    assert_eq!(
        b.ok(json!({"type":"join","room":"one"})),
        json!({"room":"one","members":["alice","bob"]})
    );
    let sent = b.ok(json!({"type":"send","room":"one","text":"still here"}));
    let message = a.next_of_type("message");
    assert_eq!(
        (&message["id"], &message["text"]),
        (&sent["id"], &json!("still here"))
    );
    assert_eq!(
        a.ok(json!({"type":"rooms"})),
        json!({"rooms":[{"name":"lobby","members":2},{"name":"one","members":2},{"name":"two","members":1}]})
    );
    // Once a room empties, a new one may take its place.
    a.ok(json!({"type":"leave","room":"two"}));
    assert_eq!(
        b.ok(json!({"type":"join","room":"three"})),
        json!({"room":"three","members":["bob"]})
    );
    assert_eq!(
        a.error(json!({"type":"join","room":"four"})),
        "too_many_rooms"
    );
}

#[test]
fn presence_join_and_leave_per_user() {
    let server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b1, token) = ws::user(&server, "bob");
    assert_eq!(
        a.event(),
        json!({"type":"presence","room":"lobby","user":"bob","event":"join"})
    );
    // Bob's second connection: no second join.
    let (mut b2, _) = ws::connect(&server, &token);
    a.ok(json!({"type":"join","room":"side"}));
    b1.ok(json!({"type":"join","room":"side"}));
    assert_eq!(
        a.event(),
        json!({"type":"presence","room":"side","user":"bob","event":"join"})
    );
    b2.ok(json!({"type":"join","room":"side"}));
    b1.ok(json!({"type":"leave","room":"side"}));
    a.assert_nothing_pending();
    b2.ok(json!({"type":"leave","room":"side"}));
    assert_eq!(
        a.event(),
        json!({"type":"presence","room":"side","user":"bob","event":"leave"})
    );
    // A disconnect leaves every room; only the last connection counts.
    drop(b1);
    let gone = server.wait_for_metric("chatd_open_websockets", 2, Duration::from_secs(30));
    assert!(gone, "the dropped connection was never closed");
    a.assert_nothing_pending();
    b2.socket.close(None).unwrap();
    assert_eq!(
        a.event(),
        json!({"type":"presence","room":"lobby","user":"bob","event":"leave"})
    );
    // Nobody hears about themselves.
    let mut frames: Vec<Value> = Vec::new();
    while let Ok(message) = b2.socket.read() {
        if let tungstenite::Message::Text(text) = message {
            frames.push(serde_json::from_str(&text).unwrap());
        }
    }
    assert!(frames.iter().all(|f| f["user"] != "bob"), "{frames:?}");
}

#[test]
fn direct_messages_online_and_offline_then_history() {
    let server = TestServer::start("");
    server.register("bob", "password-123");
    let (mut a, a_token) = ws::user(&server, "alice");
    let (mut a2, _) = ws::connect(&server, &a_token);
    let sent = a.ok(json!({"type":"direct","to":"bob","text":"while you were out"}));
    let event = json!({"type":"direct","id":sent["id"],"from":"alice","to":"bob","text":"while you were out","ts":sent["ts"]});
    assert_eq!(a.next_of_type("direct"), event);
    assert_eq!(
        a2.next_of_type("direct"),
        event,
        "the sender's other connection too"
    );

    let b_token = server.login("bob", "password-123");
    let (mut b, _) = ws::connect(&server, &b_token);
    let history = b.ok(json!({"type":"history","with":"alice"}));
    assert_eq!(history["messages"], json!([event]));
    let reply = b.ok(json!({"type":"direct","to":"ALICE","text":"back now"}));
    let live = a.next_of_type("direct");
    assert_eq!(live["id"], reply["id"]);
    assert_eq!(
        (live["from"].as_str(), live["to"].as_str()),
        (Some("bob"), Some("alice"))
    );
    let history = a.ok(json!({"type":"history","with":"bob"}));
    assert_eq!(
        texts(&history["messages"]),
        ["while you were out", "back now"]
    );
    // Nobody else can read the conversation as theirs.
    let (mut c, _) = ws::user(&server, "carol");
    assert_eq!(
        c.ok(json!({"type":"history","with":"alice"}))["messages"],
        json!([])
    );
}

#[test]
fn history_after_returns_exactly_what_was_missed() {
    let server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, b_token) = ws::user(&server, "bob");
    a.ok(json!({"type":"join","room":"r"}));
    b.ok(json!({"type":"join","room":"r"}));
    a.ok(json!({"type":"send","room":"r","text":"seen"}));
    let last_seen = b.next_of_type("message")["id"].as_i64().unwrap();
    drop(b);
    for text in ["m1", "m2", "m3"] {
        a.ok(json!({"type":"send","room":"r","text":text}));
    }
    let (mut b, _) = ws::connect(&server, &b_token);
    b.ok(json!({"type":"join","room":"r"}));
    let missed = b.ok(json!({"type":"history","room":"r","after":last_seen}));
    assert_eq!(texts(&missed["messages"]), ["m1", "m2", "m3"]);
    assert_eq!(missed["more"], false);
    let first = missed["messages"][0].clone();
    assert_eq!(first["type"], "message");
    assert_eq!(first["room"], "r");
    assert_eq!(first["from"], "alice");
}

#[test]
fn history_paging_with_before_and_limit() {
    let server = TestServer::start("ws_rate = 100/s burst 100");
    let (mut a, _) = ws::user(&server, "alice");
    for i in 0..7 {
        a.ok(json!({"type":"send","room":"lobby","text":format!("m{i}")}));
    }
    let page = a.ok(json!({"type":"history","room":"lobby","limit":3}));
    assert_eq!(texts(&page["messages"]), ["m4", "m5", "m6"]);
    assert_eq!(page["more"], true);
    let oldest = page["messages"][0]["id"].clone();
    let page = a.ok(json!({"type":"history","room":"lobby","limit":3,"before":oldest}));
    assert_eq!(texts(&page["messages"]), ["m1", "m2", "m3"]);
    assert_eq!(page["more"], true);
    let oldest = page["messages"][0]["id"].clone();
    let page = a.ok(json!({"type":"history","room":"lobby","limit":3,"before":oldest}));
    assert_eq!(texts(&page["messages"]), ["m0"]);
    assert_eq!(page["more"], false);
    let all = a.ok(json!({"type":"history","room":"lobby"}));
    assert_eq!(
        all["messages"].as_array().unwrap().len(),
        7,
        "default limit 50"
    );
    assert_eq!(
        a.ok(json!({"type":"history","room":"empty"})),
        json!({"messages":[],"more":false})
    );
}

#[test]
fn subscriptions_publish_and_persist_across_restart() {
    let mut server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    let (mut c, _) = ws::user(&server, "carol");
    b.ok(json!({"type":"subscribe","user":"alice"}));
    let sent = a.ok(json!({"type":"publish","text":"first"}));
    assert_eq!(sent["delivered"], 1);
    let note = b.next_of_type("notification");
    assert_eq!(
        note,
        json!({"type":"notification","id":sent["id"],"from":"alice","text":"first","ts":sent["ts"]})
    );
    c.assert_nothing_pending();
    drop((a, b, c));

    server.restart();
    let a_token = server.login("alice", "password-123");
    let b_token = server.login("bob", "password-123");
    let (mut a, _) = ws::connect(&server, &a_token);
    let (mut b, _) = ws::connect(&server, &b_token);
    let sent = a.ok(json!({"type":"publish","text":"after restart"}));
    assert_eq!(
        sent["delivered"], 1,
        "the subscription survived the restart"
    );
    assert_eq!(b.next_of_type("notification")["text"], "after restart");
    b.ok(json!({"type":"unsubscribe","user":"alice"}));
    assert_eq!(
        a.ok(json!({"type":"publish","text":"nobody"}))["delivered"],
        0
    );
    b.assert_nothing_pending();
}

#[test]
fn an_account_is_subscribed_to_at_most_max_subscriptions_across_devices_and_restarts() {
    let mut server = TestServer::start("max_subscriptions = 2");
    for name in ["alice", "bob", "carol", "dave"] {
        server.register(name, "password-123");
    }
    let token = server.login("alice", "password-123");
    let (mut a, welcome) = ws::connect(&server, &token);
    assert_eq!(welcome["limits"]["max_subscriptions"], 2);
    a.ok(json!({"type":"subscribe","user":"bob"}));
    a.ok(json!({"type":"subscribe","user":"carol"}));
    assert_eq!(
        a.error(json!({"type":"subscribe","user":"dave"})),
        "too_many_subscriptions"
    );
    // Subscribing again to someone followed is not one more.
    assert_eq!(
        a.ok(json!({"type":"subscribe","user":"bob"})),
        json!({"user":"bob"})
    );
    // The cap belongs to the account: another device is refused as well.
    let (mut a2, _) = ws::connect(&server, &token);
    assert_eq!(
        a2.error(json!({"type":"subscribe","user":"dave"})),
        "too_many_subscriptions"
    );
    assert_eq!(
        a.ok(json!({"type":"subscriptions"})),
        json!({"users":["bob","carol"]})
    );
    drop((a, a2));

    // The count is rebuilt from the database at start.
    server.restart();
    let token = server.login("alice", "password-123");
    let (mut a, _) = ws::connect(&server, &token);
    assert_eq!(
        a.error(json!({"type":"subscribe","user":"dave"})),
        "too_many_subscriptions"
    );
    a.ok(json!({"type":"unsubscribe","user":"carol"}));
    assert_eq!(
        a.ok(json!({"type":"subscribe","user":"dave"})),
        json!({"user":"dave"})
    );
    assert_eq!(
        a.ok(json!({"type":"subscriptions"})),
        json!({"users":["bob","dave"]})
    );
}

#[test]
fn message_ids_keep_increasing_across_restarts() {
    let mut server = TestServer::start("");
    let (mut a, _) = ws::user(&server, "alice");
    let before = a.ok(json!({"type":"send","room":"lobby","text":"x"}))["id"]
        .as_i64()
        .unwrap();
    drop(a);
    server.restart();
    let token = server.login("alice", "password-123");
    let (mut a, _) = ws::connect(&server, &token);
    let after = a.ok(json!({"type":"send","room":"lobby","text":"y"}))["id"]
        .as_i64()
        .unwrap();
    assert!(after > before);
}

#[test]
fn room_membership_is_per_connection() {
    let server = TestServer::start("");
    let (mut a1, token) = ws::user(&server, "alice");
    let (mut a2, _) = ws::connect(&server, &token);
    a1.ok(json!({"type":"join","room":"only-one"}));
    assert_eq!(
        a2.error(json!({"type":"send","room":"only-one","text":"x"})),
        "not_member"
    );
    let sent = a1.ok(json!({"type":"send","room":"only-one","text":"x"}));
    assert_eq!(a1.next_of_type("message")["id"], sent["id"]);
    a2.assert_nothing_pending();
}

#[test]
fn a_new_device_finds_its_subscriptions_and_conversations() {
    let mut server = TestServer::start("ws_rate = 100/s burst 100");
    let (mut a, _) = ws::user(&server, "alice");
    let (mut carol, _) = ws::user(&server, "carol");
    let (mut dave, _) = ws::user(&server, "dave");
    server.register("bob", "password-123");
    assert_eq!(a.ok(json!({"type":"subscriptions"})), json!({"users":[]}));
    for name in ["dave", "Carol", "bob"] {
        a.ok(json!({"type":"subscribe","user":name}));
    }
    a.ok(json!({"type":"unsubscribe","user":"dave"}));
    assert_eq!(
        a.ok(json!({"type":"subscriptions"})),
        json!({"users":["bob","carol"]})
    );
    let to_bob = a.ok(json!({"type":"direct","to":"bob","text":"hi bob"}));
    let to_self = a.ok(json!({"type":"direct","to":"alice","text":"note to self"}));
    drop(a);
    // Alice is offline; two people she never wrote to write to her.
    let from_carol = carol.ok(json!({"type":"direct","to":"alice","text":"hello"}));
    let from_dave = dave.ok(json!({"type":"direct","to":"alice","text":"hey"}));
    assert_eq!(
        carol.ok(json!({"type":"subscriptions"})),
        json!({"users":[]})
    );
    drop((carol, dave));

    // A new device, after a restart: all of it comes from the database.
    server.restart();
    let token = server.login("alice", "password-123");
    let (mut a, _) = ws::connect(&server, &token);
    assert_eq!(
        a.ok(json!({"type":"subscriptions"})),
        json!({"users":["bob","carol"]})
    );
    let entry =
        |with: &str, sent: &Value| json!({"with":with,"last_id":sent["id"],"ts":sent["ts"]});
    assert_eq!(
        a.ok(json!({"type":"conversations"})),
        json!({"conversations":[
            entry("dave", &from_dave),
            entry("carol", &from_carol),
            entry("alice", &to_self),
            entry("bob", &to_bob),
        ]})
    );
    assert_eq!(
        a.ok(json!({"type":"conversations","limit":2})),
        json!({"conversations":[entry("dave", &from_dave), entry("carol", &from_carol)]})
    );
    // A reply moves the conversation to the top.
    let reply = a.ok(json!({"type":"direct","to":"bob","text":"again"}));
    assert_eq!(
        a.ok(json!({"type":"conversations","limit":1})),
        json!({"conversations":[entry("bob", &reply)]})
    );
    for limit in [json!(0), json!(101), json!("5"), json!(-1)] {
        assert_eq!(
            a.error(json!({"type":"conversations","limit":limit})),
            "bad_request",
            "{limit}"
        );
    }
    assert_eq!(
        a.ok(json!({"type":"conversations","limit":100}))["conversations"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
}

#[test]
fn pipelined_sends_share_commits_and_reads_among_them_see_them() {
    let server = TestServer::start("ws_rate = 1000/s burst 1000");
    let (mut a, _) = ws::user(&server, "alice");
    server.register("bob", "password-123");
    let before = server.metric("chatd_db_commits_total");
    // 100 sends in one write, with reads among them: the server handles them in one
    // (or very few) turns, each turn one transaction.
    const N: usize = 100;
    for i in 0..N {
        let request = match i {
            50 => json!({"type":"history","room":"lobby","limit":100,"ref":"h"}),
            51 => json!({"type":"subscribe","user":"bob","ref":"s"}),
            52 => json!({"type":"subscriptions","ref":"l"}),
            53 => json!({"type":"direct","to":"bob","text":"dm","ref":"d"}),
            54 => json!({"type":"conversations","ref":"c"}),
            _ => json!({"type":"send","room":"lobby","text":format!("m{i}"),"ref":i}),
        };
        a.socket
            .write(tungstenite::Message::text(request.to_string()))
            .expect("buffer frame");
    }
    a.socket.flush().expect("one write");
    let mut replies = Vec::new();
    while replies.len() < N {
        let frame = a.recv();
        if frame["type"] == "reply" {
            assert_eq!(frame["ok"], true, "{frame}");
            replies.push(frame);
        }
    }
    let refs: Vec<String> = replies.iter().map(|r| r["ref"].to_string()).collect();
    let expected: Vec<String> = (0..N)
        .map(|i| match i {
            50 => "\"h\"".into(),
            51 => "\"s\"".into(),
            52 => "\"l\"".into(),
            53 => "\"d\"".into(),
            54 => "\"c\"".into(),
            _ => i.to_string(),
        })
        .collect();
    assert_eq!(refs, expected, "replies in request order");
    let seen = texts(&replies[50]["data"]["messages"]);
    for i in 0..50 {
        assert!(
            seen.contains(&format!("m{i}")),
            "history saw m{i}: {seen:?}"
        );
    }
    assert_eq!(replies[52]["data"], json!({"users":["bob"]}));
    assert_eq!(
        replies[54]["data"]["conversations"][0]["last_id"],
        replies[53]["data"]["id"]
    );
    let commits = server.metric("chatd_db_commits_total") - before;
    assert!(
        (1..=N as u64 / 10).contains(&commits),
        "{N} writes in {commits} commits"
    );
}

#[test]
fn metrics_count_websockets_rooms_and_messages() {
    let server = TestServer::start("");
    let websockets = || server.metric("chatd_open_websockets");
    let rooms = || server.metric("chatd_rooms");
    let messages_in = || server.metric("chatd_ws_messages_total{direction=\"in\"}");
    let messages_out = || server.metric("chatd_ws_messages_total{direction=\"out\"}");
    assert_eq!((websockets(), rooms()), (0, 0));
    let (mut a, _) = ws::user(&server, "alice");
    let (mut b, _) = ws::user(&server, "bob");
    assert_eq!(a.event()["event"], "join");
    a.ok(json!({"type":"join","room":"rust"}));
    assert_eq!((websockets(), rooms()), (2, 2), "lobby and rust");

    let (before_in, before_out) = (messages_in(), messages_out());
    a.ok(json!({"type":"send","room":"lobby","text":"hi"}));
    assert_eq!(b.next_of_type("message")["text"], "hi");
    assert_eq!(messages_in() - before_in, 1);
    assert_eq!(
        messages_out() - before_out,
        3,
        "the reply and one event per member"
    );

    a.ok(json!({"type":"leave","room":"rust"}));
    assert_eq!(rooms(), 1, "an empty room is gone");
    drop(a);
    assert!(
        common::wait_until(Duration::from_secs(5), || websockets() == 1),
        "a closed WebSocket is no longer counted"
    );
    assert_eq!(b.next_of_type("presence")["event"], "leave");
}
