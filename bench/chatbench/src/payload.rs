//! The bench's message text and the few fields it reads back from server frames.
//!
//! Every text sent carries its send time, so latency is measured by one monotonic clock
//! in one process. The text has a fixed format that needs no escaping, so it is found
//! and read back without parsing the JSON around it:
//!
//! `t<send ns, 20 digits> s<sender, 6 digits> n<sequence, 10 digits> <padding>`
//!
//! The sender is the sender's index within its room, the sequence counts that sender's
//! messages from 0: together they let every receiver count gaps and duplicates.

/// Length of the fixed fields, padding excluded.
pub const HEADER_LEN: usize = 1 + 20 + 2 + 6 + 2 + 10;

/// What a bench text carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub send_ns: u64,
    pub sender: u32,
    pub seq: u32,
}

/// Appends a text of exactly `max(size, HEADER_LEN)` bytes carrying `stamp`.
pub fn write_text(out: &mut Vec<u8>, stamp: Stamp, size: usize) {
    let start = out.len();
    out.push(b't');
    push_digits(out, stamp.send_ns, 20);
    out.extend_from_slice(b" s");
    push_digits(out, u64::from(stamp.sender % 1_000_000), 6);
    out.extend_from_slice(b" n");
    push_digits(out, u64::from(stamp.seq), 10);
    let written = out.len() - start;
    if size > written {
        out.push(b' ');
        out.resize(start + size, b'x');
    }
}

fn push_digits(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn read_digits(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Reads a stamp from the start of a text.
pub fn read_stamp(text: &[u8]) -> Option<Stamp> {
    if text.len() < HEADER_LEN || text[0] != b't' || &text[21..23] != b" s" {
        return None;
    }
    if &text[29..31] != b" n" {
        return None;
    }
    Some(Stamp {
        send_ns: read_digits(&text[1..21])?,
        sender: read_digits(&text[23..29])? as u32,
        seq: read_digits(&text[31..41])? as u32,
    })
}

/// What kind of chatd frame this is, from its first bytes (chatd writes `type` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Reply,
    Welcome,
    Presence,
    Other,
}

pub fn kind(frame: &[u8]) -> Kind {
    const PREFIX: &[u8] = b"{\"type\":\"";
    let Some(rest) = frame.strip_prefix(PREFIX) else {
        return Kind::Other;
    };
    if rest.starts_with(b"message\"") {
        Kind::Message
    } else if rest.starts_with(b"reply\"") {
        Kind::Reply
    } else if rest.starts_with(b"presence\"") {
        Kind::Presence
    } else if rest.starts_with(b"welcome\"") {
        Kind::Welcome
    } else {
        Kind::Other
    }
}

/// The stamp inside a chatd `message` event: the value of its `"text":"` field.
pub fn message_stamp(frame: &[u8]) -> Option<Stamp> {
    let at = find(frame, b"\"text\":\"")?;
    read_stamp(&frame[at + 8..])
}

/// A chatd reply: its numeric ref (None for `null` or a string ref) and whether it is ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub reference: Option<u64>,
    pub ok: bool,
}

/// Reads `{"type":"reply","ref":<n>,"ok":<bool>,...}`.
pub fn reply(frame: &[u8]) -> Option<Reply> {
    let rest = frame.strip_prefix(b"{\"type\":\"reply\",\"ref\":")?;
    let end = rest.iter().position(|&b| b == b',')?;
    let reference = read_digits(&rest[..end]);
    let rest = &rest[end..];
    let ok = if rest.starts_with(b",\"ok\":true") {
        true
    } else if rest.starts_with(b",\"ok\":false") {
        false
    } else {
        return None;
    };
    Some(Reply { reference, ok })
}

/// The error code of a failed reply (`"code":"..."`), for reports.
pub fn error_code(frame: &[u8]) -> &str {
    let Some(at) = find(frame, b"\"code\":\"") else {
        return "unknown";
    };
    let rest = &frame[at + 8..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
    std::str::from_utf8(&rest[..end]).unwrap_or("unknown")
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let at = from + haystack[from..].iter().position(|&b| b == first)?;
        if haystack.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_with_padding() {
        let stamp = Stamp {
            send_ns: 12_345_678_901,
            sender: 42,
            seq: 7,
        };
        let mut out = Vec::new();
        write_text(&mut out, stamp, 100);
        assert_eq!(out.len(), 100);
        assert!(out.starts_with(b"t00000000012345678901 s000042 n0000000007 xxx"));
        assert_eq!(read_stamp(&out), Some(stamp));
        out.clear();
        write_text(&mut out, stamp, 0);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(read_stamp(&out), Some(stamp));
        assert_eq!(read_stamp(b"hello"), None);
        assert_eq!(
            read_stamp(b"t0000000001234567890x s000042 n0000000007"),
            None
        );
    }

    #[test]
    fn chatd_frames() {
        let mut text = Vec::new();
        let stamp = Stamp {
            send_ns: 99,
            sender: 1,
            seq: 2,
        };
        write_text(&mut text, stamp, 64);
        let frame = format!(
            r#"{{"type":"message","id":41,"room":"fan","from":"bench_u1","text":"{}","ts":1795312185578}}"#,
            String::from_utf8(text).unwrap()
        );
        assert_eq!(kind(frame.as_bytes()), Kind::Message);
        assert_eq!(message_stamp(frame.as_bytes()), Some(stamp));
        let ok = br#"{"type":"reply","ref":1234,"ok":true,"data":{"id":41,"ts":1}}"#;
        assert_eq!(kind(ok), Kind::Reply);
        assert_eq!(
            reply(ok),
            Some(Reply {
                reference: Some(1234),
                ok: true
            })
        );
        let err = br#"{"type":"reply","ref":null,"ok":false,"error":{"code":"rate_limited","message":"x"}}"#;
        assert_eq!(
            reply(err),
            Some(Reply {
                reference: None,
                ok: false
            })
        );
        assert_eq!(error_code(err), "rate_limited");
        assert_eq!(kind(br#"{"type":"welcome","user":{}}"#), Kind::Welcome);
        assert_eq!(kind(br#"{"type":"presence","room":"x"}"#), Kind::Presence);
        assert_eq!(kind(b"[1]"), Kind::Other);
    }

    #[test]
    fn find_substrings() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"aaa", b""), None);
    }
}
