//! The chat protocol parser: one WebSocket text message in, a request or a refusal out.
//!
//! Input: a mode byte and two bytes of limits (longest text, largest history page),
//! then either raw text or, in structured mode, an `arbitrary` request of every type
//! with a `ref`, unknown extra fields and values out of range, written as JSON: raw
//! bytes would seldom spell a valid request with a valid room name.
//! Checked: a parsed request written out again parses to the same request and ref;
//! what is accepted respects the limits; in structured mode a generated request is
//! accepted exactly when it is valid, and refused with the code its fault calls for.

use arbitrary::{Arbitrary, Unstructured};
use chatd::chat::protocol::{
    ErrorCode, HistoryTarget, MAX_CONVERSATIONS, MAX_REF_CHARS, Page, ParseLimits, Request,
    is_visible, parse_request, valid_room,
};
use serde_json::{Value, json};

pub fn check(data: &[u8]) {
    let [mode, text_chars, history, rest @ ..] = data else {
        return;
    };
    let limits = ParseLimits {
        max_text_chars: usize::from(*text_chars % 64) + 1,
        history_max: usize::from(*history) + 1,
    };
    if mode % 2 == 0 {
        let _checked = check_text(&String::from_utf8_lossy(rest), limits);
    } else if let Ok(generated) = Generated::arbitrary_take_rest(Unstructured::new(rest)) {
        check_generated(&generated, limits);
    }
}

/// Parses `text`; an accepted request must respect the limits and survive being
/// written out and parsed again.
fn check_text(text: &str, limits: ParseLimits) -> (Value, Result<Request, ErrorCode>) {
    let (reference, result) = parse_request(text, limits);
    match &reference {
        Value::Null | Value::Number(_) => {}
        Value::String(s) => assert!(s.chars().count() <= MAX_REF_CHARS, "ref {s:?}"),
        other => panic!("ref {other}"),
    }
    if let Ok(request) = &result {
        check_limits(request, limits);
        let again = to_json(request, &reference).to_string();
        let (reference_again, result_again) = parse_request(&again, limits);
        assert_eq!(reference_again, reference, "ref of {again}");
        assert_eq!(result_again.as_ref(), Ok(request), "request {again}");
    }
    (reference, result.map_err(|e| e.code))
}

fn check_limits(request: &Request, limits: ParseLimits) {
    match request {
        Request::Join { room } | Request::Leave { room } => assert!(valid_room(room)),
        Request::Send { room, text } => {
            assert!(valid_room(room));
            assert_text(text, limits);
        }
        Request::Direct { text, .. } | Request::Publish { text } => assert_text(text, limits),
        Request::History { target, limit, .. } => {
            if let HistoryTarget::Room(room) = target {
                assert!(valid_room(room), "room {room:?}");
            }
            assert!((1..=limits.history_max).contains(limit), "limit {limit}");
        }
        Request::Conversations { limit } => {
            assert!((1..=MAX_CONVERSATIONS).contains(limit), "limit {limit}")
        }
        Request::Subscribe { .. }
        | Request::Unsubscribe { .. }
        | Request::Rooms
        | Request::Users
        | Request::Auth { .. }
        | Request::Subscriptions
        | Request::Ping => {}
    }
}

fn assert_text(text: &str, limits: ParseLimits) {
    let chars = text.chars().count();
    assert!(
        (1..=limits.max_text_chars).contains(&chars),
        "text of {chars}"
    );
}

/// A request as a client writes it: `{"type":...,"ref":...,<fields>}`.
pub fn to_json(request: &Request, reference: &Value) -> Value {
    let mut object = match request {
        Request::Join { room } => json!({"type": "join", "room": room}),
        Request::Leave { room } => json!({"type": "leave", "room": room}),
        Request::Send { room, text } => json!({"type": "send", "room": room, "text": text}),
        Request::Direct { to, text } => json!({"type": "direct", "to": to, "text": text}),
        Request::Subscribe { user } => json!({"type": "subscribe", "user": user}),
        Request::Unsubscribe { user } => json!({"type": "unsubscribe", "user": user}),
        Request::Publish { text } => json!({"type": "publish", "text": text}),
        Request::Rooms => json!({"type": "rooms"}),
        Request::Users => json!({"type": "users"}),
        Request::History {
            target,
            page,
            limit,
        } => {
            let mut o = json!({"type": "history", "limit": limit});
            match target {
                HistoryTarget::Room(room) => o["room"] = json!(room),
                HistoryTarget::With(user) => o["with"] = json!(user),
            }
            match page {
                Page::Latest => {}
                Page::Before(id) => o["before"] = json!(id),
                Page::After(id) => o["after"] = json!(id),
            }
            o
        }
        Request::Auth { token } => json!({"type": "auth", "token": token}),
        Request::Subscriptions => json!({"type": "subscriptions"}),
        Request::Conversations { limit } => json!({"type": "conversations", "limit": limit}),
        Request::Ping => json!({"type": "ping"}),
    };
    if !reference.is_null() {
        object["ref"] = reference.clone();
    }
    object
}

/// A request as the fuzzer makes it up: a type with fields of any value.
#[derive(Debug, Arbitrary)]
struct Generated {
    kind: Kind,
    reference: Reference,
    /// A field chatd does not know, which it must ignore.
    extra: Option<(String, u32)>,
}

#[derive(Debug, Arbitrary)]
enum Reference {
    None,
    Number(i64),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Kind {
    Join(Name),
    Leave(Name),
    Send(Name, String),
    Direct(String, String),
    Subscribe(String),
    Unsubscribe(String),
    Publish(String),
    Rooms,
    Users,
    History {
        target: Target,
        before: Option<i64>,
        after: Option<i64>,
        limit: Option<u64>,
    },
    Auth(String),
    Subscriptions,
    Conversations(Option<u64>),
    Ping,
}

#[derive(Debug, Arbitrary)]
enum Target {
    Room(Name),
    With(String),
    Neither,
    Both(Name, String),
}

/// A room name: usually one of the valid alphabet (else nearly all would be refused).
#[derive(Debug, Arbitrary)]
enum Name {
    Valid(Vec<u8>),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
        match self {
            Name::Valid(bytes) => bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect(),
            Name::Any(s) => s.clone(),
        }
    }
}

impl Generated {
    /// The JSON, the ref a correct parser answers with, and the request it returns or
    /// the error code it refuses with.
    fn expectation(&self, limits: ParseLimits) -> (Value, Value, Result<Request, ErrorCode>) {
        // Too long is bad_request; then at least one visible character (empty_text).
        let text_ok = |t: &str| -> Result<(), ErrorCode> {
            if t.chars().count() > limits.max_text_chars {
                Err(ErrorCode::BadRequest)
            } else if !t.chars().any(is_visible) {
                Err(ErrorCode::EmptyText)
            } else {
                Ok(())
            }
        };
        let room = |n: &Name| -> Result<String, ErrorCode> {
            let name = n.text();
            valid_room(&name)
                .then_some(name)
                .ok_or(ErrorCode::InvalidRoom)
        };
        let text = |t: &String| -> Result<String, ErrorCode> { text_ok(t).map(|()| t.clone()) };
        let (mut o, expected) = match &self.kind {
            Kind::Join(n) => (
                json!({"type": "join", "room": n.text()}),
                room(n).map(|room| Request::Join { room }),
            ),
            Kind::Leave(n) => (
                json!({"type": "leave", "room": n.text()}),
                room(n).map(|room| Request::Leave { room }),
            ),
            Kind::Send(n, t) => (
                json!({"type": "send", "room": n.text(), "text": t}),
                room(n).and_then(|room| text(t).map(|text| Request::Send { room, text })),
            ),
            Kind::Direct(to, t) => (
                json!({"type": "direct", "to": to, "text": t}),
                text(t).map(|text| Request::Direct {
                    to: to.clone(),
                    text,
                }),
            ),
            Kind::Subscribe(u) => (
                json!({"type": "subscribe", "user": u}),
                Ok(Request::Subscribe { user: u.clone() }),
            ),
            Kind::Unsubscribe(u) => (
                json!({"type": "unsubscribe", "user": u}),
                Ok(Request::Unsubscribe { user: u.clone() }),
            ),
            Kind::Publish(t) => (
                json!({"type": "publish", "text": t}),
                text(t).map(|text| Request::Publish { text }),
            ),
            Kind::Rooms => (json!({"type": "rooms"}), Ok(Request::Rooms)),
            Kind::Users => (json!({"type": "users"}), Ok(Request::Users)),
            Kind::History {
                target,
                before,
                after,
                limit,
            } => {
                let mut o = json!({"type": "history"});
                let target = match target {
                    Target::Room(n) => {
                        o["room"] = json!(n.text());
                        room(n).map(HistoryTarget::Room)
                    }
                    Target::With(u) => {
                        o["with"] = json!(u);
                        Ok(HistoryTarget::With(u.clone()))
                    }
                    Target::Neither => Err(ErrorCode::BadRequest),
                    Target::Both(n, u) => {
                        o["room"] = json!(n.text());
                        o["with"] = json!(u);
                        Err(ErrorCode::BadRequest)
                    }
                };
                if let Some(id) = before {
                    o["before"] = json!(id);
                }
                if let Some(id) = after {
                    o["after"] = json!(id);
                }
                if let Some(n) = limit {
                    o["limit"] = json!(n);
                }
                let page = match (before, after) {
                    (None, None) => Ok(Page::Latest),
                    (Some(id), None) => Ok(Page::Before(*id)),
                    (None, Some(id)) => Ok(Page::After(*id)),
                    (Some(_), Some(_)) => Err(ErrorCode::BadRequest),
                };
                let limit = match limit {
                    None => Ok(50.min(limits.history_max)),
                    Some(n) if (1..=limits.history_max as u64).contains(n) => Ok(*n as usize),
                    Some(_) => Err(ErrorCode::BadRequest),
                };
                let request = target.and_then(|target| {
                    Ok(Request::History {
                        target,
                        page: page?,
                        limit: limit?,
                    })
                });
                (o, request)
            }
            Kind::Auth(token) => (
                json!({"type": "auth", "token": token}),
                Ok(Request::Auth {
                    token: token.clone(),
                }),
            ),
            Kind::Subscriptions => (json!({"type": "subscriptions"}), Ok(Request::Subscriptions)),
            Kind::Conversations(limit) => {
                let mut o = json!({"type": "conversations"});
                if let Some(n) = limit {
                    o["limit"] = json!(n);
                }
                let limit = match limit {
                    None => Ok(50),
                    Some(n) if (1..=MAX_CONVERSATIONS as u64).contains(n) => Ok(*n as usize),
                    Some(_) => Err(ErrorCode::BadRequest),
                };
                (o, limit.map(|limit| Request::Conversations { limit }))
            }
            Kind::Ping => (json!({"type": "ping"}), Ok(Request::Ping)),
        };
        let mut reference = match &self.reference {
            Reference::None => Value::Null,
            Reference::Number(n) => json!(n),
            Reference::Text(s) => json!(s),
        };
        if !reference.is_null() {
            o["ref"] = reference.clone();
        }
        let mut expected = expected;
        // An unusable ref refuses the request whatever it is, answered with a null ref.
        if reference
            .as_str()
            .is_some_and(|s| s.chars().count() > MAX_REF_CHARS)
        {
            reference = Value::Null;
            expected = Err(ErrorCode::BadRequest);
        }
        if let Some((name, value)) = &self.extra
            && !KNOWN_FIELDS.contains(&name.as_str())
        {
            o[name.as_str()] = json!(value);
        }
        (o, reference, expected)
    }
}

/// The fields the parser reads; an extra field with one of these names is not extra.
const KNOWN_FIELDS: &[&str] = &[
    "type", "ref", "room", "text", "to", "user", "with", "token", "before", "after", "limit",
];

fn check_generated(generated: &Generated, limits: ParseLimits) {
    let (json, reference, expected) = generated.expectation(limits);
    let text = json.to_string();
    let (got_reference, got) = check_text(&text, limits);
    assert_eq!(got_reference, reference, "ref of {text}");
    assert_eq!(got, expected, "{text}");
}
