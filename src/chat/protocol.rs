//! The chat protocol on the wire: requests parsed from JSON text, replies and events
//! serialised to complete WebSocket text frames.
//!
//! A frame is built once and shared (`Arc<[u8]>`) by every recipient: server frames are
//! unmasked, so the bytes are the same for all of them.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::ws::frame::text_frame;

/// A complete WebSocket text frame, shared by all its recipients.
pub type Frame = Arc<[u8]>;

/// Longest accepted `ref`, in characters.
pub const MAX_REF_CHARS: usize = 64;

/// Largest `limit` of a `conversations` request.
pub const MAX_CONVERSATIONS: usize = 100;

/// The `limit` of a `conversations` request that gives none.
pub const DEFAULT_CONVERSATIONS: usize = 50;

/// Room names: 1-64 of `[A-Za-z0-9_-]`.
pub fn valid_room(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Error codes of replies with `"ok": false`. Stable wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    InvalidRoom,
    NotMember,
    UnknownUser,
    RateLimited,
    /// A join over the rooms a connection may be in, or of a new room when the server
    /// holds as many as it may.
    TooManyRooms,
    /// A subscribe to a new user by an account subscribed to as many as it may be.
    TooManySubscriptions,
    /// A `send`, `direct` or `publish` whose text has no visible character.
    EmptyText,
    Unauthorized,
    TokenExpired,
    /// The database did not answer within the database timeout.
    Unavailable,
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotMember => "not_member",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

/// A refused request: code and human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ChatError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ChatError::new(ErrorCode::BadRequest, message)
    }

    pub fn internal() -> Self {
        ChatError::new(ErrorCode::InternalError, "internal error; try again")
    }
}

/// Whose history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryTarget {
    Room(String),
    /// The direct conversation with this user.
    With(String),
}

/// Which page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Latest,
    /// The newest messages with an id below this one.
    Before(i64),
    /// The oldest messages with an id above this one.
    After(i64),
}

/// A request from a client, validated for shape (not yet for meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Join {
        room: String,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        text: String,
    },
    Direct {
        to: String,
        text: String,
    },
    Subscribe {
        user: String,
    },
    Unsubscribe {
        user: String,
    },
    Publish {
        text: String,
    },
    Rooms,
    Users,
    History {
        target: HistoryTarget,
        page: Page,
        limit: usize,
    },
    Auth {
        token: String,
    },
    /// The accounts the caller is subscribed to.
    Subscriptions,
    /// The caller's direct conversations, most recent first.
    Conversations {
        limit: usize,
    },
    Ping,
}

impl Request {
    /// The user a request names (`to`, `user`, `with`): the one an `unknown_user` reply
    /// speaks of.
    pub fn named_user(&self) -> Option<String> {
        match self {
            Request::Direct { to: name, .. }
            | Request::Subscribe { user: name }
            | Request::Unsubscribe { user: name }
            | Request::History {
                target: HistoryTarget::With(name),
                ..
            } => Some(name.clone()),
            _ => None,
        }
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_text_chars: usize,
    pub history_max: usize,
}

/// The fields a request may carry, borrowed from the text where possible.
#[derive(Debug, Default, Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    /// Kept as received, so a number is checked against its own text (see `echo_ref`).
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    with: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<u64>,
}

/// Parses one text message. Returns the `ref` to answer with (null when absent or
/// invalid) and the request or the reason it is refused.
///
/// Well-formed requests take one typed pass over the text. Anything serde refuses
/// (not an object, a field of the wrong type) is parsed again as a JSON value to name
/// the field in the error and still answer with the request's `ref`.
pub fn parse_request(text: &str, limits: ParseLimits) -> (Value, Result<Request, ChatError>) {
    let (reference, fields) = match serde_json::from_str::<Fields<'_>>(text) {
        Ok(mut fields) => (fields.reference.take(), Ok(fields)),
        Err(_) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => {
                // The object is valid JSON, so its `ref` can be read on its own.
                let reference = serde_json::from_str::<RefOnly<'_>>(text)
                    .ok()
                    .and_then(|r| r.reference);
                (reference, fields_of(&obj))
            }
            _ => {
                return (
                    Value::Null,
                    Err(ChatError::bad_request("a request is a JSON object")),
                );
            }
        },
    };
    match echo_ref(reference) {
        Ok(reference) => (reference, fields.and_then(|f| build(f, limits))),
        Err(e) => (Value::Null, Err(e)),
    }
}

/// Whether a character shows something: not whitespace, not a control character and
/// not one of Unicode's default-ignorable code points (zero-width spaces and joiners,
/// the byte order mark, bidirectional marks, variation selectors, fillers, tags), which
/// render as nothing. The braille blank is counted with them: it renders as a space.
/// A message made only of these would be an empty line in everyone's history.
pub fn is_visible(c: char) -> bool {
    const INVISIBLE: &[(char, char)] = &[
        ('\u{00AD}', '\u{00AD}'),
        ('\u{034F}', '\u{034F}'),
        ('\u{061C}', '\u{061C}'),
        ('\u{115F}', '\u{1160}'),
        ('\u{17B4}', '\u{17B5}'),
        ('\u{180B}', '\u{180F}'),
        ('\u{200B}', '\u{200F}'),
        ('\u{202A}', '\u{202E}'),
        ('\u{2060}', '\u{206F}'),
        ('\u{2800}', '\u{2800}'),
        ('\u{3164}', '\u{3164}'),
        ('\u{FE00}', '\u{FE0F}'),
        ('\u{FEFF}', '\u{FEFF}'),
        ('\u{FFA0}', '\u{FFA0}'),
        ('\u{FFF0}', '\u{FFF8}'),
        ('\u{1BCA0}', '\u{1BCA3}'),
        ('\u{1D173}', '\u{1D17A}'),
        ('\u{E0000}', '\u{E0FFF}'),
    ];
    !c.is_whitespace()
        && !c.is_control()
        && !INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Just the `ref` of a request, for the slow path.
#[derive(Deserialize)]
struct RefOnly<'a> {
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
}

/// The `ref` to answer with: a string of at most `MAX_REF_CHARS` characters, or a number
/// written the way it will be echoed. A number that would come back changed (beyond
/// 64-bit integers it turns into a float, `1e2` into `100.0`) is refused rather than
/// echoed as something the client never sent and cannot match.
fn echo_ref(raw: Option<&RawValue>) -> Result<Value, ChatError> {
    let refused = || {
        ChatError::bad_request(
            "ref must be a string of at most 64 characters or an integer of at most 64 bits",
        )
    };
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    match serde_json::from_str::<Value>(raw.get()).map_err(|_| refused())? {
        Value::String(s) if s.chars().count() <= MAX_REF_CHARS => Ok(Value::String(s)),
        Value::Number(n) if n.to_string() == raw.get() && raw.get().len() <= MAX_REF_CHARS => {
            Ok(Value::Number(n))
        }
        _ => Err(refused()),
    }
}

/// The slow path: the fields of an object, with an error naming the first one of the
/// wrong type.
fn fields_of(obj: &Map<String, Value>) -> Result<Fields<'static>, ChatError> {
    let string = |field: &str| -> Result<Option<Cow<'static, str>>, ChatError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(Cow::Owned(s.clone()))),
            Some(_) => Err(ChatError::bad_request(format!("{field} must be a string"))),
        }
    };
    let id = |field: &str| -> Result<Option<i64>, ChatError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| ChatError::bad_request(format!("{field} must be an integer id"))),
        }
    };
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => None,
        // Any other value: out of range for build() below.
        Some(v) => Some(v.as_u64().unwrap_or(0)),
    };
    Ok(Fields {
        kind: string("type")?,
        reference: None,
        room: string("room")?,
        text: string("text")?,
        to: string("to")?,
        user: string("user")?,
        with: string("with")?,
        token: string("token")?,
        before: id("before")?,
        after: id("after")?,
        limit,
    })
}

fn required(value: Option<Cow<'_, str>>, field: &str) -> Result<String, ChatError> {
    value
        .map(Cow::into_owned)
        .ok_or_else(|| ChatError::bad_request(format!("missing field `{field}`")))
}

/// The meaning of the fields: which request, and is every value acceptable.
fn build(f: Fields<'_>, limits: ParseLimits) -> Result<Request, ChatError> {
    let kind = f
        .kind
        .ok_or_else(|| ChatError::bad_request("missing field `type`"))?;
    let room = |room: Option<Cow<'_, str>>| -> Result<String, ChatError> {
        let name = required(room, "room")?;
        if !valid_room(&name) {
            return Err(ChatError::new(
                ErrorCode::InvalidRoom,
                "room names are 1-64 characters of A-Z, a-z, 0-9, '_', '-'",
            ));
        }
        Ok(name)
    };
    let text = |text: Option<Cow<'_, str>>| -> Result<String, ChatError> {
        let text = required(text, "text")?;
        let chars = text.chars().count();
        if chars > limits.max_text_chars {
            return Err(ChatError::bad_request(format!(
                "text is longer than {} characters",
                limits.max_text_chars
            )));
        }
        if !text.chars().any(is_visible) {
            return Err(ChatError::new(
                ErrorCode::EmptyText,
                "text must contain at least one visible character",
            ));
        }
        Ok(text)
    };
    let request = match &*kind {
        "join" => Request::Join {
            room: room(f.room)?,
        },
        "leave" => Request::Leave {
            room: room(f.room)?,
        },
        "send" => Request::Send {
            room: room(f.room)?,
            text: text(f.text)?,
        },
        "direct" => Request::Direct {
            to: required(f.to, "to")?,
            text: text(f.text)?,
        },
        "subscribe" => Request::Subscribe {
            user: required(f.user, "user")?,
        },
        "unsubscribe" => Request::Unsubscribe {
            user: required(f.user, "user")?,
        },
        "publish" => Request::Publish {
            text: text(f.text)?,
        },
        "rooms" => Request::Rooms,
        "users" => Request::Users,
        "history" => {
            let target = match (f.room.is_some(), f.with.is_some()) {
                (true, false) => HistoryTarget::Room(room(f.room)?),
                (false, true) => HistoryTarget::With(required(f.with, "with")?),
                _ => {
                    return Err(ChatError::bad_request(
                        "history needs exactly one of `room` or `with`",
                    ));
                }
            };
            let page = match (f.before, f.after) {
                (None, None) => Page::Latest,
                (Some(before), None) => Page::Before(before),
                (None, Some(after)) => Page::After(after),
                (Some(_), Some(_)) => {
                    return Err(ChatError::bad_request(
                        "history takes `before` or `after`, not both",
                    ));
                }
            };
            let limit = match f.limit {
                None => 50.min(limits.history_max),
                Some(n) if (1..=limits.history_max as u64).contains(&n) => n as usize,
                Some(_) => {
                    return Err(ChatError::bad_request(format!(
                        "limit must be an integer from 1 to {}",
                        limits.history_max
                    )));
                }
            };
            Request::History {
                target,
                page,
                limit,
            }
        }
        "auth" => Request::Auth {
            token: required(f.token, "token")?,
        },
        "subscriptions" => Request::Subscriptions,
        "conversations" => Request::Conversations {
            limit: match f.limit {
                None => DEFAULT_CONVERSATIONS,
                Some(n) if (1..=MAX_CONVERSATIONS as u64).contains(&n) => n as usize,
                Some(_) => {
                    return Err(ChatError::bad_request(format!(
                        "limit must be an integer from 1 to {MAX_CONVERSATIONS}"
                    )));
                }
            },
        },
        "ping" => Request::Ping,
        other => {
            return Err(ChatError::bad_request(format!(
                "unknown request type `{}`",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    Ok(request)
}

/// A complete text frame holding the JSON of `value`.
fn frame(value: &impl Serialize) -> Frame {
    match serde_json::to_vec(value) {
        Ok(json) => text_frame(&json).into(),
        // Serialising plain structs and JSON values cannot fail; stay well-formed anyway.
        Err(_) => text_frame(b"{}").into(),
    }
}

#[derive(Serialize)]
struct ReplyOk<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "ref")]
    reference: &'a Value,
    ok: bool,
    data: T,
}

#[derive(Serialize)]
struct ReplyError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "ref")]
    reference: &'a Value,
    ok: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

/// `{"type":"reply","ref":...,"ok":true,"data":{...}}`
pub fn reply_ok(reference: &Value, data: impl Serialize) -> Frame {
    frame(&ReplyOk {
        kind: "reply",
        reference,
        ok: true,
        data,
    })
}

/// `{"type":"reply","ref":...,"ok":false,"error":{"code":...,"message":...}}`
pub fn reply_error(reference: &Value, error: &ChatError) -> Frame {
    frame(&ReplyError {
        kind: "reply",
        reference,
        ok: false,
        error: ErrorBody {
            code: error.code.as_str(),
            message: &error.message,
        },
    })
}

/// The data of the reply to `send`, `direct` and `publish`.
#[derive(Serialize)]
pub struct Posted {
    pub id: i64,
    pub ts: i64,
    /// Only `publish` reports how many connections it reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<usize>,
}

/// The data of a reply serialised once and kept, to be sent again as it is.
pub type CachedData = Box<RawValue>;

/// Serialises the data of a reply for keeping.
pub fn cache_data(data: &impl Serialize) -> Result<CachedData, ChatError> {
    serde_json::value::to_raw_value(data).map_err(|e| {
        log::error!("cannot serialise a reply: {e}");
        ChatError::internal()
    })
}

/// The data of the reply to `join`.
#[derive(Serialize)]
pub struct Joined<'a> {
    pub room: &'a str,
    /// The distinct usernames in the room, sorted.
    pub members: Vec<&'a str>,
}

/// The data of the reply to `rooms`.
#[derive(Serialize)]
pub struct RoomList<'a> {
    /// Every room with a member, sorted by name.
    pub rooms: Vec<RoomSummary<'a>>,
}

#[derive(Serialize)]
pub struct RoomSummary<'a> {
    pub name: &'a str,
    /// The number of distinct users in the room.
    pub members: usize,
}

/// The data of the reply to `users`.
#[derive(Serialize)]
pub struct UserList<'a> {
    /// The usernames with an open connection, sorted.
    pub users: Vec<&'a str>,
}

/// One entry of the `conversations` reply: the other participant and the conversation's
/// last message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    /// The other user's name; the caller's own for messages to oneself.
    pub with: String,
    pub last_id: i64,
    pub ts: i64,
}

/// A stored or live chat item, in the shape of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: i64,
    pub kind: ItemKind,
    pub from: String,
    pub text: String,
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    Room(String),
    Direct { to: String },
    Notification,
}

/// The event object: `message`, `direct` or `notification`, fields in protocol order.
impl Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut event = serializer.serialize_struct("Item", 6)?;
        match &self.kind {
            ItemKind::Room(room) => {
                event.serialize_field("type", "message")?;
                event.serialize_field("id", &self.id)?;
                event.serialize_field("room", room)?;
                event.serialize_field("from", &self.from)?;
            }
            ItemKind::Direct { to } => {
                event.serialize_field("type", "direct")?;
                event.serialize_field("id", &self.id)?;
                event.serialize_field("from", &self.from)?;
                event.serialize_field("to", to)?;
            }
            ItemKind::Notification => {
                event.serialize_field("type", "notification")?;
                event.serialize_field("id", &self.id)?;
                event.serialize_field("from", &self.from)?;
            }
        }
        event.serialize_field("text", &self.text)?;
        event.serialize_field("ts", &self.ts)?;
        event.end()
    }
}

impl Item {
    pub fn frame(&self) -> Frame {
        frame(self)
    }
}

#[derive(Serialize)]
struct Presence<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    user: &'a str,
    event: &'static str,
}

/// `{"type":"presence","room":...,"user":...,"event":"join"|"leave"}`
pub fn presence(room: &str, user: &str, joined: bool) -> Frame {
    frame(&Presence {
        kind: "presence",
        room,
        user,
        event: if joined { "join" } else { "leave" },
    })
}

/// The first frame of every connection.
pub fn welcome(user: Value, rooms: &[&str], limits: Value) -> Frame {
    frame(&json!({"type": "welcome", "user": user, "rooms": rooms, "limits": limits}))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        max_text_chars: 5,
        history_max: 100,
    };

    fn parse(text: &str) -> (Value, Result<Request, ChatError>) {
        parse_request(text, LIMITS)
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).1.unwrap_err().code
    }

    #[test]
    fn requests_and_refs() {
        assert_eq!(
            parse(r#"{"type":"join","room":"a-b_C9","ref":"x"}"#),
            (
                json!("x"),
                Ok(Request::Join {
                    room: "a-b_C9".into()
                })
            )
        );
        assert_eq!(
            parse(r#"{"type":"ping","ref":7}"#),
            (json!(7), Ok(Request::Ping))
        );
        assert_eq!(parse(r#"{"type":"ping"}"#).0, Value::Null);
        assert_eq!(
            parse(r#"{"type":"send","room":"r","text":"héllo"}"#).1,
            Ok(Request::Send {
                room: "r".into(),
                text: "héllo".into()
            })
        );
    }

    #[test]
    fn bad_refs_answer_with_null_ref() {
        let long = "r".repeat(65);
        for text in [
            format!(r#"{{"type":"ping","ref":"{long}"}}"#),
            r#"{"type":"ping","ref":[1]}"#.to_string(),
            r#"{"type":"ping","ref":{"a":1}}"#.to_string(),
            r#"{"type":"ping","ref":true}"#.to_string(),
            // Numbers that would be echoed changed.
            r#"{"type":"ping","ref":18446744073709551616}"#.to_string(),
            format!(r#"{{"type":"ping","ref":1{}}}"#, "0".repeat(64)),
            r#"{"type":"ping","ref":1e2}"#.to_string(),
            r#"{"type":"ping","ref":-0}"#.to_string(),
            // The slow path (a field of the wrong type) checks the ref the same way.
            r#"{"type":"ping","ref":18446744073709551616,"room":5}"#.to_string(),
        ] {
            let (r, result) = parse(&text);
            assert_eq!(r, Value::Null);
            assert_eq!(result.unwrap_err().code, ErrorCode::BadRequest);
        }
        let ok = format!(r#"{{"type":"ping","ref":"{}"}}"#, "é".repeat(64));
        assert!(parse(&ok).1.is_ok(), "64 characters (not bytes) is fine");
    }

    #[test]
    fn texts_without_a_visible_character_are_refused() {
        for blank in [
            "",
            " ",
            " \t\r\n ",
            "\u{200B}",
            "\u{FEFF}",
            "\u{00A0}\u{3000}\u{2028}",
            "\u{200D}\u{2060}\u{FE0F}",
            "\u{2800}",
            "\u{0007}",
            "\u{E0041}",
        ] {
            for kind in [
                r#""type":"send","room":"r""#,
                r#""type":"direct","to":"bob""#,
                r#""type":"publish""#,
            ] {
                let text = serde_json::to_string(blank).unwrap();
                let request = format!(r#"{{{kind},"text":{text}}}"#);
                assert_eq!(code(&request), ErrorCode::EmptyText, "{request}");
            }
        }
        for shown in ["a", " a ", "\u{200B}.", "😀", "\u{0301}", "٠"] {
            let text = serde_json::to_string(shown).unwrap();
            let request = format!(r#"{{"type":"send","room":"r","text":{text}}}"#);
            assert!(parse(&request).1.is_ok(), "{request}");
        }
    }

    #[test]
    fn refs_are_echoed_exactly_as_sent() {
        for raw in [
            "18446744073709551615",
            "-9223372036854775808",
            "0",
            "1.5",
            r#""a\"b""#,
            r#""é""#,
        ] {
            let (r, result) = parse(&format!(r#"{{"type":"ping","ref":{raw}}}"#));
            assert!(result.is_ok(), "{raw}");
            assert_eq!(
                r.to_string(),
                serde_json::from_str::<Value>(raw).unwrap().to_string()
            );
            if !raw.starts_with('"') {
                assert_eq!(r.to_string(), raw, "a number comes back as it was written");
            }
        }
        // A request refused for another reason still answers with its exact ref.
        let (r, result) = parse(r#"{"type":"send","room":5,"ref":18446744073709551615}"#);
        assert_eq!(r.to_string(), "18446744073709551615");
        assert_eq!(result.unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_numeric_ref_is_answered_with_the_same_number() {
        // The nearest double to this decimal, written as JSON prints it: parsed one
        // unit in the last place off (serde_json's default float parsing), it would be
        // answered with a ref the client does not recognise.
        let raw = "1.5555555000003678e+122";
        let (r, result) = parse(&format!(r#"{{"type":"users","ref":{raw}}}"#));
        assert!(result.is_ok());
        let reply = reply_ok(&r, json!({}));
        let sent = std::str::from_utf8(&reply[2..]).unwrap();
        assert!(sent.contains(&format!(r#""ref":{raw},"#)), "{sent}");
        // The same number written otherwise would not come back as written: refused.
        let (r, result) = parse(r#"{"type":"users","ref":1.5555555000003678e122}"#);
        assert_eq!(
            (r, result.unwrap_err().code),
            (Value::Null, ErrorCode::BadRequest)
        );
    }

    #[test]
    fn shape_errors() {
        for text in [
            "not json",
            "[1,2]",
            r#"{"ref":1}"#,
            r#"{"type":5}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"send","room":"r"}"#,
            r#"{"type":"send","room":"r","text":5}"#,
            r#"{"type":"send","room":"r","text":"123456"}"#,
            r#"{"type":"direct","text":"x"}"#,
            r#"{"type":"history"}"#,
            r#"{"type":"history","room":"r","with":"u"}"#,
            r#"{"type":"history","room":"r","limit":0}"#,
            r#"{"type":"history","room":"r","limit":101}"#,
            r#"{"type":"history","room":"r","limit":"5"}"#,
            r#"{"type":"history","room":"r","before":1,"after":2}"#,
            r#"{"type":"history","room":"r","before":"1"}"#,
            r#"{"type":"auth"}"#,
            r#"{"type":"conversations","limit":0}"#,
            r#"{"type":"conversations","limit":101}"#,
            r#"{"type":"conversations","limit":-1}"#,
            r#"{"type":"conversations","limit":2.5}"#,
            r#"{"type":"conversations","limit":"5"}"#,
        ] {
            assert_eq!(code(text), ErrorCode::BadRequest, "{text}");
        }
        assert_eq!(
            code(r#"{"type":"join","room":"a b"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(code(r#"{"type":"join","room":""}"#), ErrorCode::InvalidRoom);
        let long = format!(r#"{{"type":"join","room":"{}"}}"#, "a".repeat(65));
        assert_eq!(code(&long), ErrorCode::InvalidRoom);
        assert!(
            parse(r#"{"type":"send","room":"r","text":"ééééé"}"#)
                .1
                .is_ok(),
            "5 chars"
        );
    }

    #[test]
    fn history_defaults_and_pages() {
        assert_eq!(
            parse(r#"{"type":"history","room":"r"}"#).1,
            Ok(Request::History {
                target: HistoryTarget::Room("r".into()),
                page: Page::Latest,
                limit: 50
            })
        );
        assert_eq!(
            parse(r#"{"type":"history","with":"bob","after":10,"limit":100}"#).1,
            Ok(Request::History {
                target: HistoryTarget::With("bob".into()),
                page: Page::After(10),
                limit: 100
            })
        );
    }

    #[test]
    fn subscriptions_and_conversations() {
        assert_eq!(
            parse(r#"{"type":"subscriptions","ref":1}"#),
            (json!(1), Ok(Request::Subscriptions))
        );
        assert_eq!(
            parse(r#"{"type":"conversations"}"#).1,
            Ok(Request::Conversations { limit: 50 })
        );
        for limit in [1, 100] {
            assert_eq!(
                parse(&format!(r#"{{"type":"conversations","limit":{limit}}}"#)).1,
                Ok(Request::Conversations { limit })
            );
        }
    }

    #[test]
    fn a_reply_with_cached_data_is_the_reply_with_that_data() {
        let users = cache_data(&UserList {
            users: vec!["alice", "bob"],
        })
        .unwrap();
        assert_eq!(
            reply_ok(&json!("u"), &*users),
            reply_ok(&json!("u"), json!({"users":["alice","bob"]}))
        );
        let rooms = cache_data(&RoomList {
            rooms: vec![RoomSummary {
                name: "lobby",
                members: 2,
            }],
        })
        .unwrap();
        assert_eq!(
            reply_ok(&json!(3), &*rooms),
            reply_ok(&json!(3), json!({"rooms":[{"name":"lobby","members":2}]}))
        );
    }

    #[test]
    fn frames_are_text_frames_of_the_json() {
        let f = reply_ok(&json!("a"), json!({}));
        assert_eq!(f[0], 0x81);
        let v: Value = serde_json::from_slice(&f[2..]).unwrap();
        assert_eq!(v, json!({"type":"reply","ref":"a","ok":true,"data":{}}));
        let text = std::str::from_utf8(&f[2..]).unwrap();
        assert!(
            text.starts_with(r#"{"type":"reply","ref":"a""#),
            "field order kept: {text}"
        );
    }
}
