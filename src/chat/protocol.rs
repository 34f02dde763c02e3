//! The chat protocol on the wire: requests parsed from JSON text, replies and events
//! serialised to complete WebSocket text frames.
//!
//! A frame is built once and shared (`Arc<[u8]>`) by every recipient: server frames are
//! unmasked, so the bytes are the same for all of them.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::ws::frame::text_frame;

/// A complete WebSocket text frame, shared by all its recipients.
pub type Frame = Arc<[u8]>;

/// Longest accepted `ref`, in characters.
pub const MAX_REF_CHARS: usize = 64;

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
    Unauthorized,
    TokenExpired,
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
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
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
    Ping,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_text_chars: usize,
    pub history_max: usize,
}

/// Parses one text message. Returns the `ref` to answer with (null when absent or
/// invalid) and the request or the reason it is refused.
pub fn parse_request(text: &str, limits: ParseLimits) -> (Value, Result<Request, ChatError>) {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return (
            Value::Null,
            Err(ChatError::bad_request("a request is a JSON object")),
        );
    };
    let reference = match obj.get("ref") {
        None | Some(Value::Null) => Value::Null,
        Some(r @ Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => r.clone(),
        Some(r @ Value::Number(n)) if n.to_string().len() <= MAX_REF_CHARS => r.clone(),
        Some(_) => {
            return (
                Value::Null,
                Err(ChatError::bad_request(
                    "ref must be a string or number of at most 64 characters",
                )),
            );
        }
    };
    (reference, parse_fields(&obj, limits))
}

fn parse_fields(obj: &Map<String, Value>, limits: ParseLimits) -> Result<Request, ChatError> {
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(ChatError::bad_request("type must be a string")),
        None => return Err(ChatError::bad_request("missing field `type`")),
    };
    let text = || -> Result<String, ChatError> {
        let text = string(obj, "text")?;
        let chars = text.chars().count();
        if chars == 0 {
            return Err(ChatError::bad_request("text must not be empty"));
        }
        if chars > limits.max_text_chars {
            return Err(ChatError::bad_request(format!(
                "text is longer than {} characters",
                limits.max_text_chars
            )));
        }
        Ok(text)
    };
    let request = match kind {
        "join" => Request::Join { room: room(obj)? },
        "leave" => Request::Leave { room: room(obj)? },
        "send" => Request::Send {
            room: room(obj)?,
            text: text()?,
        },
        "direct" => Request::Direct {
            to: string(obj, "to")?,
            text: text()?,
        },
        "subscribe" => Request::Subscribe {
            user: string(obj, "user")?,
        },
        "unsubscribe" => Request::Unsubscribe {
            user: string(obj, "user")?,
        },
        "publish" => Request::Publish { text: text()? },
        "rooms" => Request::Rooms,
        "users" => Request::Users,
        "history" => history(obj, limits)?,
        "auth" => Request::Auth {
            token: string(obj, "token")?,
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

fn string(obj: &Map<String, Value>, field: &str) -> Result<String, ChatError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ChatError::bad_request(format!("{field} must be a string"))),
        None => Err(ChatError::bad_request(format!("missing field `{field}`"))),
    }
}

fn room(obj: &Map<String, Value>) -> Result<String, ChatError> {
    let name = string(obj, "room")?;
    if !valid_room(&name) {
        return Err(ChatError::new(
            ErrorCode::InvalidRoom,
            "room names are 1-64 characters of A-Z, a-z, 0-9, '_', '-'",
        ));
    }
    Ok(name)
}

fn id(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>, ChatError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ChatError::bad_request(format!("{field} must be an integer id"))),
    }
}

fn history(obj: &Map<String, Value>, limits: ParseLimits) -> Result<Request, ChatError> {
    let target = match (obj.contains_key("room"), obj.contains_key("with")) {
        (true, false) => HistoryTarget::Room(room(obj)?),
        (false, true) => HistoryTarget::With(string(obj, "with")?),
        _ => {
            return Err(ChatError::bad_request(
                "history needs exactly one of `room` or `with`",
            ));
        }
    };
    let page = match (id(obj, "before")?, id(obj, "after")?) {
        (None, None) => Page::Latest,
        (Some(before), None) => Page::Before(before),
        (None, Some(after)) => Page::After(after),
        (Some(_), Some(_)) => {
            return Err(ChatError::bad_request(
                "history takes `before` or `after`, not both",
            ));
        }
    };
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => 50.min(limits.history_max),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=limits.history_max as u64).contains(&n) => n as usize,
            _ => {
                return Err(ChatError::bad_request(format!(
                    "limit must be an integer from 1 to {}",
                    limits.history_max
                )));
            }
        },
    };
    Ok(Request::History {
        target,
        page,
        limit,
    })
}

fn frame(value: &Value) -> Frame {
    text_frame(value.to_string().as_bytes()).into()
}

/// `{"type":"reply","ref":...,"ok":true,"data":{...}}`
pub fn reply_ok(reference: &Value, data: Value) -> Frame {
    frame(&json!({"type": "reply", "ref": reference, "ok": true, "data": data}))
}

/// `{"type":"reply","ref":...,"ok":false,"error":{"code":...,"message":...}}`
pub fn reply_error(reference: &Value, error: &ChatError) -> Frame {
    frame(&json!({
        "type": "reply",
        "ref": reference,
        "ok": false,
        "error": {"code": error.code.as_str(), "message": error.message},
    }))
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

impl Item {
    /// The event object (`message`, `direct` or `notification`).
    pub fn to_json(&self) -> Value {
        match &self.kind {
            ItemKind::Room(room) => json!({
                "type": "message", "id": self.id, "room": room, "from": self.from,
                "text": self.text, "ts": self.ts,
            }),
            ItemKind::Direct { to } => json!({
                "type": "direct", "id": self.id, "from": self.from, "to": to,
                "text": self.text, "ts": self.ts,
            }),
            ItemKind::Notification => json!({
                "type": "notification", "id": self.id, "from": self.from,
                "text": self.text, "ts": self.ts,
            }),
        }
    }

    pub fn frame(&self) -> Frame {
        frame(&self.to_json())
    }
}

/// `{"type":"presence","room":...,"user":...,"event":"join"|"leave"}`
pub fn presence(room: &str, user: &str, joined: bool) -> Frame {
    frame(&json!({
        "type": "presence",
        "room": room,
        "user": user,
        "event": if joined { "join" } else { "leave" },
    }))
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
        ] {
            let (r, result) = parse(&text);
            assert_eq!(r, Value::Null);
            assert_eq!(result.unwrap_err().code, ErrorCode::BadRequest);
        }
        let ok = format!(r#"{{"type":"ping","ref":"{}"}}"#, "é".repeat(64));
        assert!(parse(&ok).1.is_ok(), "64 characters (not bytes) is fine");
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
            r#"{"type":"send","room":"r","text":""}"#,
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
