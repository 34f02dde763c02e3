//! Chat core tests over the in-memory store and the outbox, with a fixed clock.

use super::outbox::Outbox;
use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{Failure, Storage};

/// The chat core over the in-memory store, with the token rules of these tests:
/// `valid-N` is user N's token until 5000 s, `forever-N` never expires, `stale-N` was
/// issued before a password change.
struct TestBackend<'a> {
    store: &'a mut MemoryStore,
    next_ticket: &'a mut u64,
}

impl Backend for TestBackend<'_> {
    fn submit(&mut self, op: Op) -> Ticket {
        *self.next_ticket += 1;
        self.store.submit(Ticket(*self.next_ticket), op);
        Ticket(*self.next_ticket)
    }

    fn check_token(&mut self, token: &str, _now_ms: i64) -> Result<TokenClaims, ChatError> {
        let (expires_at, version, id) = if let Some(id) = token.strip_prefix("forever-") {
            (i64::MAX, 0, id)
        } else if let Some(id) = token.strip_prefix("valid-") {
            (5000, 0, id)
        } else if let Some(id) = token.strip_prefix("stale-") {
            (5000, -1, id)
        } else {
            return Err(ChatError::new(ErrorCode::Unauthorized, "invalid token"));
        };
        Ok(TokenClaims {
            user_id: id.parse().unwrap(),
            expires_at,
            version,
        })
    }
}

struct World {
    chat: Chat,
    store: MemoryStore,
    next_ticket: u64,
    outbox: Outbox,
    /// The connection whose request produced `out`.
    origin: Option<ConnId>,
    /// Outputs of the chat call in progress (tests may look at them before the end of
    /// the turn).
    out: Vec<Output>,
    /// What settled turns asked the event loop to do, not yet taken.
    actions: Vec<Action>,
}

const NOW: i64 = 1_700_000_000_000;

impl World {
    fn new(names: &[&str]) -> Self {
        World {
            chat: Chat::new(
                ChatConfig {
                    max_text_chars: 100,
                    history_max: 100,
                    max_rooms_per_connection: 100,
                    max_rooms: 1000,
                    max_subscriptions: 1000,
                    welcome_limits: json!({"max_text_chars": 100}),
                },
                Vec::new(),
            ),
            store: MemoryStore::with_users(names),
            next_ticket: 0,
            outbox: Outbox::default(),
            origin: None,
            out: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// A world whose chat has another configuration.
    fn configured(names: &[&str], change: impl FnOnce(&mut ChatConfig)) -> Self {
        let mut w = World::new(names);
        let mut config = w.chat.config.clone();
        change(&mut config);
        w.chat = Chat::new(config, Vec::new());
        w
    }

    fn name(&self, user: UserId) -> String {
        ["", "alice", "bob", "carol", "dave"][user as usize].to_string()
    }

    fn connect(&mut self, conn: u64, user: UserId) {
        let username = self.name(user);
        self.chat.connect(
            ConnId(conn),
            &SessionUser {
                id: user,
                username: username.clone(),
                display_name: username,
            },
            false,
            &mut self.out,
        );
        self.outbox.push(ConnId(conn), &mut self.out);
    }

    /// A request, handled as the event loop does; its outputs stay in `out` until the
    /// end of the turn (or the next request).
    fn send(&mut self, conn: u64, request: Value) {
        self.send_raw(conn, &request.to_string());
    }

    fn send_raw(&mut self, conn: u64, text: &str) {
        self.flush_out();
        let mut backend = TestBackend {
            store: &mut self.store,
            next_ticket: &mut self.next_ticket,
        };
        self.chat
            .handle(ConnId(conn), text, &mut backend, NOW, &mut self.out);
        self.origin = Some(ConnId(conn));
    }

    /// Hands the outputs of the last call to the outbox.
    fn flush_out(&mut self) {
        let origin = self.origin.take().unwrap_or(ConnId(0));
        self.outbox.push(origin, &mut self.out);
    }

    /// Ends the turn as the event loop does: storage flushes (one transaction for the
    /// writes), its answers go to the outbox, which releases what they held.
    fn end_turn(&mut self) {
        self.flush_out();
        self.store.flush(std::time::Instant::now());
        let mut answers = Vec::new();
        self.store.take_answers(&mut answers);
        for (ticket, outcome) in answers {
            self.outbox.answer(ticket, outcome);
        }
        self.outbox.settle(&mut self.chat);
        self.actions.extend(self.outbox.take_actions());
    }

    /// Ends the turn; every JSON frame sent to `conn` since the last call, in order.
    fn take(&mut self, conn: u64) -> Vec<Value> {
        self.end_turn();
        let mut frames = Vec::new();
        let mut rest = Vec::new();
        for action in self.actions.drain(..) {
            match action {
                Action::Send { to, frame } if to.as_slice().contains(&ConnId(conn)) => {
                    frames.push(serde_json::from_slice(payload(&frame)).unwrap());
                    if to.as_slice().len() > 1 {
                        rest.push(Action::Send {
                            to: without(&to, ConnId(conn)),
                            frame,
                        });
                    }
                }
                other => rest.push(other),
            }
        }
        self.actions = rest;
        frames
    }

    fn reply(&mut self, conn: u64, request: Value) -> Value {
        self.send(conn, request);
        let frames = self.take(conn);
        let replies: Vec<&Value> = frames.iter().filter(|f| f["type"] == "reply").collect();
        assert_eq!(replies.len(), 1, "exactly one reply: {frames:?}");
        replies[0].clone()
    }

    /// Ends the turn and forgets what it sent.
    fn clear(&mut self) {
        self.end_turn();
        self.actions.clear();
    }
}

fn without(to: &Recipients, conn: ConnId) -> Recipients {
    Recipients::Many(
        to.as_slice()
            .iter()
            .copied()
            .filter(|c| *c != conn)
            .collect(),
    )
}

/// The JSON payload of a small unmasked text frame built by the server.
fn payload(frame: &[u8]) -> &[u8] {
    match frame[1] {
        126 => &frame[4..],
        127 => &frame[10..],
        _ => &frame[2..],
    }
}

#[test]
fn welcome_then_lobby_presence_to_others_only() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    let frames = w.take(1);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["user"]["username"], "alice");
    assert_eq!(frames[0]["rooms"], json!(["lobby"]));
    assert_eq!(frames[0]["limits"]["max_text_chars"], 100);

    w.connect(2, 2);
    assert_eq!(
        w.take(2)[0]["type"],
        "welcome",
        "nobody is told about themselves"
    );
    assert_eq!(
        w.take(1),
        vec![json!({"type":"presence","room":"lobby","user":"bob","event":"join"})]
    );
}

#[test]
fn presence_is_per_user_not_per_connection() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    w.connect(3, 2); // bob's second tab
    assert!(w.take(1).is_empty(), "no second join for bob");
    w.chat.disconnect(ConnId(2), &mut w.out);
    assert!(w.take(1).is_empty(), "bob still has a connection");
    w.chat.disconnect(ConnId(3), &mut w.out);
    assert_eq!(
        w.take(1),
        vec![json!({"type":"presence","room":"lobby","user":"bob","event":"leave"})]
    );
    assert!(!w.chat.is_online(2));
}

#[test]
fn join_leave_and_membership() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    let r = w.reply(1, json!({"type":"join","room":"rust","ref":1}));
    assert_eq!(
        r,
        json!({"type":"reply","ref":1,"ok":true,"data":{"room":"rust","members":["alice"]}})
    );
    let r = w.reply(2, json!({"type":"join","room":"rust"}));
    assert_eq!(r["data"]["members"], json!(["alice", "bob"]));
    assert_eq!(
        w.take(1),
        vec![json!({"type":"presence","room":"rust","user":"bob","event":"join"})]
    );
    // Joining again changes nothing and tells nobody.
    let r = w.reply(2, json!({"type":"join","room":"rust"}));
    assert_eq!(r["ok"], true);
    assert!(w.take(1).is_empty());

    let r = w.reply(2, json!({"type":"leave","room":"rust","ref":"l"}));
    assert_eq!(
        r,
        json!({"type":"reply","ref":"l","ok":true,"data":{"room":"rust"}})
    );
    assert_eq!(w.take(1)[0]["event"], "leave");
    let r = w.reply(2, json!({"type":"leave","room":"rust"}));
    assert_eq!(r["error"]["code"], "not_member");
    let r = w.reply(2, json!({"type":"send","room":"rust","text":"hi"}));
    assert_eq!(r["error"]["code"], "not_member");
    let r = w.reply(2, json!({"type":"join","room":"no way"}));
    assert_eq!(r["error"]["code"], "invalid_room");
}

#[test]
fn a_connection_is_in_at_most_max_rooms_per_connection_the_lobby_included() {
    let mut w = World::configured(&["alice", "bob"], |c| c.max_rooms_per_connection = 3);
    w.connect(1, 1);
    w.connect(2, 1);
    w.clear();
    for room in ["a", "b"] {
        assert_eq!(w.reply(1, json!({"type":"join","room":room}))["ok"], true);
    }
    let r = w.reply(1, json!({"type":"join","room":"c","ref":"c"}));
    assert_eq!(r["ref"], "c");
    assert_eq!(r["error"]["code"], "too_many_rooms");
    assert_eq!(w.chat.room_count(), 3, "the refused room was not created");
    // Joining a room it is in changes nothing, so it is still fine.
    let r = w.reply(1, json!({"type":"join","room":"a"}));
    assert_eq!(r["data"], json!({"room":"a","members":["alice"]}));
    assert_eq!(
        w.reply(1, json!({"type":"join","room":"lobby"}))["ok"],
        true
    );
    // The count is per connection, not per user.
    assert_eq!(w.reply(2, json!({"type":"join","room":"c"}))["ok"], true);
    // Leaving a room, the lobby too, makes room for another.
    w.reply(1, json!({"type":"leave","room":"a"}));
    assert_eq!(w.reply(1, json!({"type":"join","room":"c"}))["ok"], true);
    assert_eq!(
        w.reply(1, json!({"type":"join","room":"d"}))["error"]["code"],
        "too_many_rooms"
    );
    w.reply(1, json!({"type":"leave","room":"lobby"}));
    assert_eq!(w.reply(1, json!({"type":"join","room":"d"}))["ok"], true);
    assert_eq!(w.reply(1, json!({"type":"ping"}))["ok"], true);
}

#[test]
fn at_most_max_rooms_exist_and_existing_ones_can_always_be_joined() {
    let mut w = World::configured(&["alice", "bob"], |c| c.max_rooms = 3);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    w.reply(1, json!({"type":"join","room":"a"}));
    w.reply(1, json!({"type":"join","room":"b"}));
    assert_eq!(w.chat.room_count(), 3, "the lobby counts");
    let r = w.reply(2, json!({"type":"join","room":"c","ref":"c"}));
    assert_eq!(r["ref"], "c");
    assert_eq!(r["error"]["code"], "too_many_rooms");
    assert_eq!(w.chat.room_count(), 3);
    assert!(w.take(1).is_empty(), "nobody hears of a refused join");
    let r = w.reply(2, json!({"type":"join","room":"a"}));
    assert_eq!(r["data"], json!({"room":"a","members":["alice","bob"]}));
    // A room is gone with its last member, which makes room for a new one.
    w.reply(1, json!({"type":"leave","room":"b"}));
    assert_eq!(w.reply(2, json!({"type":"join","room":"c"}))["ok"], true);
    let r = w.reply(1, json!({"type":"join","room":"d"}));
    assert_eq!(r["error"]["code"], "too_many_rooms");
    // The lobby may always be created again: every connection starts there.
    w.reply(1, json!({"type":"leave","room":"lobby"}));
    w.reply(2, json!({"type":"leave","room":"lobby"}));
    assert_eq!(w.reply(1, json!({"type":"join","room":"d"}))["ok"], true);
    assert_eq!(w.chat.room_count(), 3, "a, c and d");
    w.connect(3, 1);
    assert_eq!(w.take(3)[0]["rooms"], json!(["lobby"]));
    assert_eq!(w.chat.room_count(), 4);
    w.reply(3, json!({"type":"leave","room":"lobby"}));
    assert_eq!(w.chat.room_count(), 3);
    let r = w.reply(3, json!({"type":"join","room":"lobby"}));
    assert_eq!(r["data"], json!({"room":"lobby","members":["alice"]}));
    assert_eq!(w.reply(3, json!({"type":"join","room":"c"}))["ok"], true);
    let r = w.reply(3, json!({"type":"join","room":"e"}));
    assert_eq!(r["error"]["code"], "too_many_rooms");
}

#[test]
fn send_reaches_exactly_the_room_members_in_id_order() {
    let mut w = World::new(&["alice", "bob", "carol"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.connect(3, 3);
    w.reply(1, json!({"type":"join","room":"a"}));
    w.reply(2, json!({"type":"join","room":"a"}));
    w.reply(3, json!({"type":"join","room":"b"}));
    w.clear();
    w.send(1, json!({"type":"send","room":"a","text":"one","ref":"s1"}));
    w.send(2, json!({"type":"send","room":"a","text":"two"}));
    w.send(3, json!({"type":"send","room":"b","text":"three"}));

    let alice = w.take(1);
    assert_eq!(alice[0]["type"], "reply");
    assert_eq!(alice[0]["ref"], "s1");
    let first_id = alice[0]["data"]["id"].as_i64().unwrap();
    assert_eq!(alice[0]["data"]["ts"], NOW);
    let messages: Vec<&Value> = alice.iter().filter(|f| f["type"] == "message").collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        *messages[0],
        json!({"type":"message","id":first_id,"room":"a","from":"alice","text":"one","ts":NOW})
    );
    assert_eq!(messages[1]["text"], "two");
    assert!(messages[1]["id"].as_i64().unwrap() > first_id);
    let bob: Vec<Value> = w
        .take(2)
        .into_iter()
        .filter(|f| f["type"] == "message")
        .collect();
    assert_eq!(
        bob.iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
    let carol: Vec<Value> = w
        .take(3)
        .into_iter()
        .filter(|f| f["type"] == "message")
        .collect();
    assert_eq!(carol.len(), 1);
    assert_eq!(carol[0]["text"], "three");
}

#[test]
fn sends_wait_for_their_commit_and_a_failure_shows_nothing() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    w.send(1, json!({"type":"send","room":"lobby","text":"x","ref":9}));
    assert!(
        matches!(w.out.as_slice(), [Output::Await(_)]),
        "nothing is sent before the message is stored: {:?}",
        w.out
    );
    // A database that has not answered yet: alice's later replies wait behind the
    // send, bob's do not.
    w.store.stalled = true;
    w.send(1, json!({"type":"ping","ref":10}));
    w.send(2, json!({"type":"ping","ref":11}));
    assert!(w.take(1).is_empty(), "alice's ping waits behind her send");
    assert_eq!(w.take(2)[0]["ref"], 11, "bob is not held up");
    w.store.stalled = false;
    let alice = w.take(1);
    assert_eq!(alice[0]["ref"], 9);
    assert_eq!(alice[1]["type"], "message", "her own event after her reply");
    assert_eq!(alice[2]["ref"], 10, "then the ping");
    assert_eq!(w.take(2)[0]["text"], "x");

    w.store.fail_writes = Some(Failure::Failed);
    let r = w.reply(1, json!({"type":"send","room":"lobby","text":"x"}));
    assert_eq!(r["error"]["code"], "internal_error");
    assert!(w.take(2).is_empty(), "nobody sees what was not stored");
    w.store.fail_writes = Some(Failure::Unavailable);
    let r = w.reply(1, json!({"type":"send","room":"lobby","text":"x"}));
    assert_eq!(r["error"]["code"], "unavailable");
    w.store.fail_writes = None;
    w.store.fail_reads = Some(Failure::Unavailable);
    let r = w.reply(1, json!({"type":"history","room":"lobby"}));
    assert_eq!(r["error"]["code"], "unavailable");
}

#[test]
fn direct_messages_reach_both_sides_and_history() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 1); // alice's second device
    w.clear();
    w.send(1, json!({"type":"direct","to":"BOB","text":"psst"}));
    let a1 = w.take(1);
    assert_eq!(a1[0]["type"], "reply");
    let event = json!({"type":"direct","id":a1[0]["data"]["id"],"from":"alice","to":"bob","text":"psst","ts":NOW});
    assert_eq!(a1[1], event);
    assert_eq!(
        w.take(2),
        vec![event.clone()],
        "the sender's other connection too"
    );

    // bob was offline; he finds it in history.
    w.connect(3, 2);
    w.clear();
    let r = w.reply(3, json!({"type":"history","with":"alice"}));
    assert_eq!(
        r["data"],
        json!({"messages":[{"type":"direct","id":event["id"],"from":"alice","to":"bob","text":"psst","ts":NOW}],"more":false})
    );

    let r = w.reply(1, json!({"type":"direct","to":"nobody","text":"x"}));
    assert_eq!(r["error"]["code"], "unknown_user");
    let r = w.reply(1, json!({"type":"history","with":"nobody"}));
    assert_eq!(r["error"]["code"], "unknown_user");
}

#[test]
fn subscriptions_and_publish() {
    let mut w = World::new(&["alice", "bob", "carol"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.connect(3, 2);
    w.connect(4, 3);
    w.clear();
    let r = w.reply(2, json!({"type":"subscribe","user":"Alice"}));
    assert_eq!(r["data"], json!({"user":"alice"}));
    assert_eq!(w.store.subscriptions(), vec![(2, 1)]);
    let r = w.reply(1, json!({"type":"publish","text":"news"}));
    assert_eq!(r["data"]["delivered"], 2, "both of bob's connections");
    let n = w.take(2);
    assert_eq!(n[0]["type"], "notification");
    assert_eq!(n[0]["from"], "alice");
    assert_eq!(n[0]["text"], "news");
    assert!(w.take(4).is_empty(), "carol is not subscribed");

    let r = w.reply(2, json!({"type":"unsubscribe","user":"alice"}));
    assert_eq!(r["ok"], true);
    let r = w.reply(1, json!({"type":"publish","text":"more"}));
    assert_eq!(r["data"]["delivered"], 0);
    assert!(w.take(2).is_empty());

    let r = w.reply(2, json!({"type":"subscribe","user":"bob"}));
    assert_eq!(r["error"]["code"], "bad_request");
    let r = w.reply(2, json!({"type":"subscribe","user":"zed"}));
    assert_eq!(r["error"]["code"], "unknown_user");
}

#[test]
fn subscriptions_loaded_at_start_are_used() {
    let mut w = World::new(&["alice", "bob"]);
    w.chat = Chat::new(w.chat.config.clone(), vec![(2, 1)]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    let r = w.reply(1, json!({"type":"publish","text":"hi"}));
    assert_eq!(r["data"]["delivered"], 1);
}

#[test]
fn rooms_users_and_ping() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.connect(3, 2);
    w.reply(2, json!({"type":"join","room":"zz"}));
    w.reply(3, json!({"type":"join","room":"zz"}));
    w.clear();
    let r = w.reply(1, json!({"type":"rooms"}));
    assert_eq!(
        r["data"],
        json!({"rooms":[{"name":"lobby","members":2},{"name":"zz","members":1}]})
    );
    let r = w.reply(1, json!({"type":"users"}));
    assert_eq!(r["data"], json!({"users":["alice","bob"]}));
    let r = w.reply(1, json!({"type":"ping","ref":"p"}));
    assert_eq!(r, json!({"type":"reply","ref":"p","ok":true,"data":{}}));
    // A room is forgotten once empty.
    w.reply(2, json!({"type":"leave","room":"zz"}));
    w.reply(3, json!({"type":"leave","room":"zz"}));
    assert_eq!(w.chat.room_count(), 1);
}

/// The `rooms`, `users` and `join` replies kept between changes.
fn listings(w: &mut World, conn: u64, room: &str) -> (Value, Value, Value) {
    let rooms = w.reply(conn, json!({"type":"rooms"}))["data"]["rooms"].clone();
    let users = w.reply(conn, json!({"type":"users"}))["data"]["users"].clone();
    let members = w.reply(conn, json!({"type":"join","room":room}))["data"]["members"].clone();
    (rooms, users, members)
}

#[test]
fn kept_listings_follow_every_membership_change() {
    let mut w = World::new(&["alice", "bob", "carol"]);
    w.connect(1, 1);
    w.clear();
    let lobby = |n: usize| json!({"name":"lobby","members":n});
    let zz = |n: usize| json!({"name":"zz","members":n});
    assert_eq!(
        listings(&mut w, 1, "lobby"),
        (json!([lobby(1)]), json!(["alice"]), json!(["alice"]))
    );
    // Each step below follows listings already kept, so a stale one would show.
    w.connect(2, 2);
    assert_eq!(
        listings(&mut w, 1, "lobby"),
        (
            json!([lobby(2)]),
            json!(["alice", "bob"]),
            json!(["alice", "bob"])
        ),
        "a user came online (the lobby join's presence)"
    );
    w.reply(2, json!({"type":"join","room":"zz"}));
    assert_eq!(
        listings(&mut w, 1, "lobby"),
        (
            json!([lobby(2), zz(1)]),
            json!(["alice", "bob"]),
            json!(["alice", "bob"])
        ),
        "a room appeared"
    );
    assert_eq!(
        listings(&mut w, 1, "zz"),
        (
            json!([lobby(2), zz(1)]),
            json!(["alice", "bob"]),
            json!(["alice", "bob"])
        ),
        "alice joined it: the join reply counts her, the room list before it did not"
    );
    assert_eq!(
        listings(&mut w, 1, "zz").0,
        json!([lobby(2), zz(2)]),
        "and the next room list does"
    );
    // Bob's second connection: no user came or left anywhere.
    w.connect(3, 2);
    w.reply(3, json!({"type":"join","room":"zz"}));
    w.reply(2, json!({"type":"leave","room":"zz"}));
    assert_eq!(
        listings(&mut w, 1, "zz"),
        (
            json!([lobby(2), zz(2)]),
            json!(["alice", "bob"]),
            json!(["alice", "bob"])
        )
    );
    // Bob's last connection in zz goes; bob stays online in the lobby.
    w.chat.disconnect(ConnId(3), &mut w.out);
    assert_eq!(
        listings(&mut w, 1, "zz"),
        (
            json!([lobby(2), zz(1)]),
            json!(["alice", "bob"]),
            json!(["alice"])
        ),
        "a disconnect left the room"
    );
    w.chat.disconnect(ConnId(2), &mut w.out);
    assert_eq!(
        listings(&mut w, 1, "zz"),
        (json!([lobby(1), zz(1)]), json!(["alice"]), json!(["alice"])),
        "a user went offline"
    );
    // A room that empties is gone from the list; made again, its members are new.
    w.reply(1, json!({"type":"leave","room":"zz"}));
    assert_eq!(
        w.reply(1, json!({"type":"rooms"}))["data"]["rooms"],
        json!([lobby(1)])
    );
    w.connect(4, 3);
    w.reply(4, json!({"type":"join","room":"zz"}));
    assert_eq!(
        listings(&mut w, 1, "zz"),
        (
            json!([lobby(2), zz(1)]),
            json!(["alice", "carol"]),
            json!(["alice", "carol"])
        )
    );
    w.reply(1, json!({"type":"leave","room":"lobby"}));
    assert_eq!(
        w.reply(1, json!({"type":"rooms"}))["data"]["rooms"],
        json!([lobby(1), zz(2)]),
        "alice left the lobby"
    );
    // Every connection of a user closed at once (a password change).
    w.chat
        .disconnect_user(3, Close::CredentialsChanged, &mut w.out);
    assert_eq!(
        listings(&mut w, 1, "zz"),
        (json!([zz(1)]), json!(["alice"]), json!(["alice"]))
    );
}

#[test]
fn listings_are_built_once_between_membership_changes() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.reply(1, json!({"type":"join","room":"zz"}));
    w.clear();
    let before = w.chat.rebuilds();
    for _ in 0..100 {
        w.send(1, json!({"type":"rooms"}));
        w.send(2, json!({"type":"users"}));
        w.send(1, json!({"type":"join","room":"zz"}));
    }
    assert_eq!(w.take(1).len(), 200);
    assert_eq!(w.take(2).len(), 100);
    let after = w.chat.rebuilds();
    assert_eq!(
        (
            after.rooms - before.rooms,
            after.users - before.users,
            after.members - before.members
        ),
        (1, 1, 0),
        "one build each for 100 requests; zz's members were kept from alice's first join"
    );
    // A change rebuilds once, then the new listing is kept again.
    w.reply(2, json!({"type":"join","room":"zz"}));
    for _ in 0..100 {
        w.send(1, json!({"type":"rooms"}));
        w.send(1, json!({"type":"join","room":"zz"}));
    }
    let frames = w.take(1);
    assert_eq!(
        frames.last().unwrap()["data"]["members"],
        json!(["alice", "bob"])
    );
    let now = w.chat.rebuilds();
    assert_eq!(
        (now.rooms - after.rooms, now.members - after.members),
        (1, 1)
    );
    assert_eq!(now.users, after.users, "nobody came online or left");
}

#[test]
fn history_pages() {
    let mut w = World::new(&["alice"]);
    w.connect(1, 1);
    for i in 0..5 {
        w.send(
            1,
            json!({"type":"send","room":"lobby","text":format!("m{i}")}),
        );
    }
    w.clear();
    let texts = |r: &Value| -> Vec<String> {
        r["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    let r = w.reply(1, json!({"type":"history","room":"lobby","limit":2}));
    assert_eq!(texts(&r), ["m3", "m4"]);
    assert_eq!(r["data"]["more"], true);
    let oldest = r["data"]["messages"][0]["id"].as_i64().unwrap();
    let r = w.reply(
        1,
        json!({"type":"history","room":"lobby","before":oldest,"limit":2}),
    );
    assert_eq!(texts(&r), ["m1", "m2"]);
    let r = w.reply(
        1,
        json!({"type":"history","room":"lobby","after":oldest - 3}),
    );
    assert_eq!(texts(&r), ["m1", "m2", "m3", "m4"]);
    assert_eq!(r["data"]["more"], false);
}

#[test]
fn auth_renews_only_for_the_same_user() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.clear();
    w.send(1, json!({"type":"auth","token":"valid-1"}));
    let r = w.take(1);
    assert_eq!(r[0]["data"]["expires_at"], 5_000_000);
    assert!(w.actions.iter().any(|a| matches!(
        a,
        Action::TokenRenewed {
            conn: ConnId(1),
            expires_at: 5000
        }
    )));
    w.clear();
    // A token issued before a password change.
    let r = w.reply(1, json!({"type":"auth","token":"stale-1"}));
    assert_eq!(r["error"]["code"], "unauthorized");
    let r = w.reply(1, json!({"type":"auth","token":"valid-2"}));
    assert_eq!(r["error"]["code"], "unauthorized");
    let r = w.reply(1, json!({"type":"auth","token":"junk"}));
    assert_eq!(r["error"]["code"], "unauthorized");
    // An expiry whose milliseconds overflow is refused, and renews nothing.
    w.clear();
    let r = w.reply(1, json!({"type":"auth","token":"forever-1"}));
    assert_eq!(r["error"]["code"], "unauthorized");
    assert!(
        !w.actions
            .iter()
            .any(|a| matches!(a, Action::TokenRenewed { .. })),
        "{:?}",
        w.actions
    );
}

#[test]
fn replace_closes_older_connections_without_presence_flapping() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    w.chat.connect(
        ConnId(3),
        &SessionUser {
            id: 2,
            username: "bob".into(),
            display_name: "Bob".into(),
        },
        true,
        &mut w.out,
    );
    assert!(w.out.iter().any(|o| matches!(
        o,
        Output::Close {
            conn: ConnId(2),
            close: Close::Replaced
        }
    )));
    assert!(w.take(1).is_empty(), "alice sees no leave/join for bob");
    assert_eq!(w.chat.connections_of(2), &[ConnId(3)]);
}

#[test]
fn rate_limited_reply_keeps_the_ref() {
    let mut w = World::new(&["alice"]);
    w.connect(1, 1);
    w.clear();
    w.chat
        .reject_rate_limited(ConnId(1), r#"{"type":"send","ref":"q"}"#, &mut w.out);
    let r = w.take(1);
    assert_eq!(r[0]["ref"], "q");
    assert_eq!(r[0]["error"]["code"], "rate_limited");
}

#[test]
fn bad_requests_keep_the_connection_usable() {
    let mut w = World::new(&["alice"]);
    w.connect(1, 1);
    w.clear();
    w.send_raw(1, "nope");
    let r = w.take(1);
    assert_eq!(r[0]["ref"], Value::Null);
    assert_eq!(r[0]["error"]["code"], "bad_request");
    let r = w.reply(1, json!({"type":"ping"}));
    assert_eq!(r["ok"], true);
}

#[test]
fn subscriptions_lists_the_callers_subscriptions_sorted() {
    let mut w = World::new(&["alice", "bob", "carol", "dave"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    let r = w.reply(1, json!({"type":"subscriptions","ref":"s"}));
    assert_eq!(
        r,
        json!({"type":"reply","ref":"s","ok":true,"data":{"users":[]}})
    );
    for name in ["dave", "bob", "carol"] {
        w.reply(1, json!({"type":"subscribe","user":name}));
    }
    w.reply(1, json!({"type":"unsubscribe","user":"dave"}));
    w.reply(2, json!({"type":"subscribe","user":"dave"}));
    let r = w.reply(1, json!({"type":"subscriptions"}));
    assert_eq!(r["data"], json!({"users":["bob","carol"]}));
    let r = w.reply(2, json!({"type":"subscriptions"}));
    assert_eq!(r["data"], json!({"users":["dave"]}), "only the caller's");
}

#[test]
fn conversations_newest_first_with_a_limit() {
    let mut w = World::new(&["alice", "bob", "carol", "dave"]);
    w.connect(1, 1);
    w.connect(3, 3);
    w.clear();
    // bob and dave are offline: alice still finds what carol and she sent.
    w.send(1, json!({"type":"direct","to":"bob","text":"1"}));
    w.send(3, json!({"type":"direct","to":"alice","text":"2"}));
    w.send(1, json!({"type":"direct","to":"alice","text":"3"}));
    w.send(3, json!({"type":"direct","to":"dave","text":"4"}));
    w.send(1, json!({"type":"send","room":"lobby","text":"5"}));
    w.send(1, json!({"type":"direct","to":"bob","text":"6"}));
    let ids: Vec<i64> = w
        .take(1)
        .iter()
        .filter(|f| f["type"] == "direct")
        .map(|f| f["id"].as_i64().unwrap())
        .collect();
    let [_, from_carol, to_self, last_to_bob] = ids[..] else {
        panic!("{ids:?}")
    };
    w.clear();
    let r = w.reply(1, json!({"type":"conversations","ref":1}));
    assert_eq!(
        r,
        json!({"type":"reply","ref":1,"ok":true,"data":{"conversations":[
            {"with":"bob","last_id":last_to_bob,"ts":NOW},
            {"with":"alice","last_id":to_self,"ts":NOW},
            {"with":"carol","last_id":from_carol,"ts":NOW}]}})
    );
    let r = w.reply(1, json!({"type":"conversations","limit":1}));
    assert_eq!(r["data"]["conversations"].as_array().unwrap().len(), 1);
    let r = w.reply(3, json!({"type":"conversations"}));
    let with: Vec<&str> = r["data"]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["with"].as_str().unwrap())
        .collect();
    assert_eq!(with, ["dave", "alice"]);
    for limit in [json!(0), json!(101), json!("5")] {
        let r = w.reply(1, json!({"type":"conversations","limit":limit}));
        assert_eq!(r["error"]["code"], "bad_request", "{limit}");
    }
}

/// The texts of a history reply.
fn history_texts(reply: &Value) -> Vec<String> {
    reply["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn reads_in_a_turn_see_what_was_acknowledged_before_them_with_one_commit() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.clear();
    // One turn: the requests of one pipelined write.
    w.send(1, json!({"type":"send","room":"lobby","text":"a","ref":1}));
    w.send(1, json!({"type":"history","room":"lobby","ref":2}));
    w.send(1, json!({"type":"direct","to":"bob","text":"b","ref":3}));
    w.send(1, json!({"type":"subscribe","user":"bob","ref":4}));
    w.send(1, json!({"type":"conversations","ref":5}));
    w.send(1, json!({"type":"subscriptions","ref":6}));
    w.send(1, json!({"type":"history","with":"bob","ref":7}));
    let frames = w.take(1);
    assert_eq!(w.store.stats().commits, 1, "one commit for the whole turn");
    let replies: Vec<&Value> = frames.iter().filter(|f| f["type"] == "reply").collect();
    let refs: Vec<i64> = replies.iter().map(|r| r["ref"].as_i64().unwrap()).collect();
    assert_eq!(refs, [1, 2, 3, 4, 5, 6, 7], "replies in request order");
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert!(history_texts(replies[1]).contains(&"a".to_string()));
    assert_eq!(
        replies[4]["data"]["conversations"][0]["last_id"],
        replies[2]["data"]["id"]
    );
    assert_eq!(replies[5]["data"]["users"], json!(["bob"]));
    assert_eq!(history_texts(replies[6]), ["b"]);
}

#[test]
fn a_failed_commit_fails_only_what_depended_on_it() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    let first = w.reply(1, json!({"type":"send","room":"lobby","text":"stored"}));
    assert_eq!(first["ok"], true);
    w.clear();

    w.store.fail_writes = Some(Failure::Failed);
    w.send(
        1,
        json!({"type":"send","room":"lobby","text":"lost","ref":1}),
    );
    w.send(1, json!({"type":"ping","ref":2}));
    w.send(1, json!({"type":"history","room":"lobby","ref":3}));
    w.send(
        1,
        json!({"type":"direct","to":"bob","text":"lost too","ref":4}),
    );
    w.send(1, json!({"type":"join","room":"side","ref":5}));
    let alice = w.take(1);
    let code = |f: &Value| f["error"]["code"].as_str().map(str::to_string);
    assert_eq!(alice.len(), 5, "replies only, no events: {alice:?}");
    assert_eq!(code(&alice[0]).as_deref(), Some("internal_error"));
    assert_eq!(alice[1]["ok"], true, "a ping does not depend on the batch");
    assert_eq!(alice[2]["ok"], true, "a read does not either");
    assert_eq!(
        history_texts(&alice[2]),
        ["stored"],
        "and sees only what is stored"
    );
    assert_eq!(code(&alice[3]).as_deref(), Some("internal_error"));
    assert_eq!(alice[4]["data"]["members"], json!(["alice"]));
    assert!(w.take(2).is_empty(), "nobody sees what was not stored");

    // The next turn commits again; nothing of the failed batch comes back.
    w.store.fail_writes = None;
    let r = w.reply(1, json!({"type":"send","room":"lobby","text":"next"}));
    assert_eq!(r["ok"], true);
    let r = w.reply(1, json!({"type":"history","room":"lobby"}));
    assert_eq!(history_texts(&r), ["stored", "next"]);
}

#[test]
fn subscriptions_change_in_memory_only_once_committed() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.clear();
    w.store.fail_writes = Some(Failure::Failed);
    let r = w.reply(2, json!({"type":"subscribe","user":"alice"}));
    assert_eq!(r["error"]["code"], "internal_error");
    w.store.fail_writes = None;
    let r = w.reply(1, json!({"type":"publish","text":"nobody hears"}));
    assert_eq!(
        r["data"]["delivered"], 0,
        "the failed subscribe left no trace"
    );
    assert!(w.take(2).is_empty());
    let r = w.reply(2, json!({"type":"subscriptions"}));
    assert_eq!(r["data"]["users"], json!([]));

    assert_eq!(
        w.reply(2, json!({"type":"subscribe","user":"alice"}))["ok"],
        true
    );
    w.store.fail_writes = Some(Failure::Failed);
    let r = w.reply(2, json!({"type":"unsubscribe","user":"alice"}));
    assert_eq!(r["error"]["code"], "internal_error");
    w.store.fail_writes = None;
    let r = w.reply(1, json!({"type":"publish","text":"still subscribed"}));
    assert_eq!(
        r["data"]["delivered"], 1,
        "the failed unsubscribe left no trace"
    );
    assert_eq!(w.take(2)[0]["text"], "still subscribed");
}

#[test]
fn an_account_is_subscribed_to_at_most_max_subscriptions() {
    let mut w = World::configured(&["alice", "bob", "carol", "dave"], |c| {
        c.max_subscriptions = 2
    });
    w.connect(1, 1);
    w.connect(2, 1);
    w.connect(3, 2);
    w.clear();
    assert_eq!(
        w.reply(1, json!({"type":"subscribe","user":"bob"}))["ok"],
        true
    );
    assert_eq!(
        w.reply(2, json!({"type":"subscribe","user":"carol"}))["ok"],
        true
    );
    let r = w.reply(1, json!({"type":"subscribe","user":"dave","ref":"d"}));
    assert_eq!(r["ref"], "d");
    assert_eq!(r["error"]["code"], "too_many_subscriptions");
    assert_eq!(
        r["error"]["message"],
        "an account may be subscribed to at most 2 users; unsubscribe from one first"
    );
    assert_eq!(
        w.store.subscriptions().len(),
        2,
        "nothing stored for the refusal"
    );
    // Again to someone followed: not one more.
    assert_eq!(
        w.reply(2, json!({"type":"subscribe","user":"bob"}))["ok"],
        true
    );
    // Another account has its own count.
    assert_eq!(
        w.reply(3, json!({"type":"subscribe","user":"dave"}))["ok"],
        true
    );
    // An unsubscribe frees a place once committed.
    assert_eq!(
        w.reply(1, json!({"type":"unsubscribe","user":"carol"}))["ok"],
        true
    );
    assert_eq!(
        w.reply(1, json!({"type":"subscribe","user":"dave"}))["ok"],
        true
    );
    let r = w.reply(1, json!({"type":"subscriptions"}));
    assert_eq!(r["data"]["users"], json!(["bob", "dave"]));
}

#[test]
fn subscribes_in_one_turn_cannot_pass_the_cap_together() {
    let mut w = World::configured(&["alice", "bob", "carol", "dave"], |c| {
        c.max_subscriptions = 2
    });
    w.connect(1, 1);
    w.clear();
    for (i, name) in ["bob", "carol", "dave"].into_iter().enumerate() {
        w.send(1, json!({"type":"subscribe","user":name,"ref":i}));
    }
    let codes: Vec<Value> = w
        .take(1)
        .iter()
        .map(|r| r["error"]["code"].clone())
        .collect();
    assert_eq!(
        codes,
        [Value::Null, Value::Null, json!("too_many_subscriptions")]
    );
    let r = w.reply(1, json!({"type":"subscriptions"}));
    assert_eq!(r["data"]["users"], json!(["bob", "carol"]));
}

#[test]
fn a_failed_subscribe_gives_its_place_back() {
    let mut w = World::configured(&["alice", "bob", "carol"], |c| c.max_subscriptions = 1);
    w.connect(1, 1);
    w.clear();
    w.store.fail_writes = Some(Failure::Failed);
    let r = w.reply(1, json!({"type":"subscribe","user":"bob"}));
    assert_eq!(r["error"]["code"], "internal_error");
    w.store.fail_writes = None;
    assert_eq!(
        w.reply(1, json!({"type":"subscribe","user":"carol"}))["ok"],
        true
    );
    let r = w.reply(1, json!({"type":"subscribe","user":"bob"}));
    assert_eq!(r["error"]["code"], "too_many_subscriptions");
}

#[test]
fn subscriptions_loaded_at_start_count_towards_the_cap() {
    let mut w = World::configured(&["alice", "bob", "carol"], |c| c.max_subscriptions = 1);
    // Stored by an earlier run.
    w.store.submit(
        Ticket(1_000_000),
        Op::Subscribe {
            subscriber: 1,
            target: "bob".into(),
            subscribed: true,
            max: 1,
        },
    );
    w.store.flush(std::time::Instant::now());
    w.store.take_answers(&mut Vec::new());
    w.chat = Chat::new(w.chat.config.clone(), w.store.subscriptions());
    w.connect(1, 1);
    w.clear();
    let r = w.reply(1, json!({"type":"subscribe","user":"carol"}));
    assert_eq!(r["error"]["code"], "too_many_subscriptions");
}

#[test]
fn unsubscribe_errors() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.clear();
    let r = w.reply(1, json!({"type":"unsubscribe","user":"zed"}));
    assert_eq!(r["error"]["code"], "unknown_user");
    let r = w.reply(1, json!({"type":"unsubscribe","user":"ALICE"}));
    assert_eq!(r["error"]["code"], "bad_request");
    let r = w.reply(1, json!({"type":"unsubscribe","user":"bob"}));
    assert_eq!(r["data"], json!({"user":"bob"}), "not subscribed is ok");
}

#[test]
fn a_room_fan_out_is_one_frame_for_all_members() {
    let mut w = World::new(&["alice", "bob", "carol"]);
    for (conn, user) in [(1, 1), (2, 2), (3, 3), (4, 3)] {
        w.connect(conn, user);
    }
    w.clear();
    w.send(2, json!({"type":"send","room":"lobby","text":"to all"}));
    w.end_turn();
    let sent: Vec<(&Recipients, &Frame)> = w
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, frame } if to.as_slice().len() > 1 => Some((to, frame)),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "one delivery, serialised once");
    let mut to = sent[0].0.as_slice().to_vec();
    to.sort_unstable();
    assert_eq!(to, [ConnId(1), ConnId(2), ConnId(3), ConnId(4)]);
}

#[test]
fn a_member_that_left_before_the_message_was_stored_is_not_sent_it() {
    let mut w = World::new(&["alice", "bob"]);
    w.connect(1, 1);
    w.connect(2, 2);
    w.reply(1, json!({"type":"join","room":"r"}));
    w.reply(2, json!({"type":"join","room":"r"}));
    w.clear();
    // alice's message waits for the database; bob leaves meanwhile.
    w.store.stalled = true;
    w.send(1, json!({"type":"send","room":"r","text":"late"}));
    w.send(2, json!({"type":"leave","room":"r","ref":"l"}));
    let bob = w.take(2);
    assert_eq!(bob[0]["ref"], "l", "the leave is answered at once");
    w.store.stalled = false;
    let alice = w.take(1);
    assert!(
        alice
            .iter()
            .any(|f| f["type"] == "message" && f["text"] == "late"),
        "the sender still gets her event: {alice:?}"
    );
    assert!(
        w.take(2).is_empty(),
        "nothing of the room after the leave: {bob:?}"
    );
}
