//! RFC 6455 frames over in-memory buffers.
//!
//! [`Decoder`] turns a client's bytes into events (text messages, pings, pongs, close),
//! enforcing masking, control-frame rules, fragmentation order, the size limit (from the
//! frame header, before any payload arrives) and UTF-8. Any violation is returned as the
//! [`Close`] code to answer with. The encoders build unmasked server frames.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::Close;

/// What a client sent, one event at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete text message (fragments already joined).
    Text(String),
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame; `code` is None when it carried no status.
    Close {
        code: Option<u16>,
        reason: String,
    },
}

/// Incremental decoder state of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Largest frame payload and largest assembled message.
    max_message: usize,
    /// A fragmented text message being assembled.
    partial: Option<Vec<u8>>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Decodes from the front of `buf` up to the next event. Returns the event (None
    /// when more bytes are needed) and how many bytes were used: fragments of a message
    /// still incomplete are absorbed and counted as used. A violation is returned as the
    /// close code to answer with.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(Option<WsEvent>, usize), Close> {
        let mut offset = 0;
        loop {
            let mut cursor = Cursor::new(&buf[offset..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok((None, offset)),
                Err(_) => return Err(Close::ProtocolError),
            };
            let header_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(Close::ProtocolError);
            }
            let Some(mask) = header.mask else {
                return Err(Close::ProtocolError); // clients must mask
            };
            match header.opcode {
                OpCode::Control(_) if length > 125 || !header.is_final => {
                    return Err(Close::ProtocolError);
                }
                // RFC 6455 §5.4: a new data frame inside a fragmented message is a
                // protocol error, whatever its type.
                OpCode::Data(Data::Text | Data::Binary) if self.partial.is_some() => {
                    return Err(Close::ProtocolError);
                }
                OpCode::Data(Data::Binary) => return Err(Close::Unsupported),
                OpCode::Data(Data::Continue) if self.partial.is_none() => {
                    return Err(Close::ProtocolError);
                }
                OpCode::Data(_) => {
                    let assembled = self.partial.as_ref().map_or(0, Vec::len) as u64;
                    if length.saturating_add(assembled) > self.max_message as u64 {
                        return Err(Close::TooBig);
                    }
                }
                OpCode::Control(_) => {}
            }
            // At most max_message (data) or 125 (control) here.
            let length = length as usize;
            let end = offset + header_len + length;
            if buf.len() < end {
                return Ok((None, offset));
            }
            let mut payload = buf[offset + header_len..end].to_vec();
            unmask(&mut payload, mask);
            offset = end;
            let event = match header.opcode {
                OpCode::Data(Data::Text) if header.is_final => Some(text(payload)?),
                OpCode::Data(Data::Text) => {
                    self.partial = Some(payload);
                    None
                }
                OpCode::Data(Data::Continue) => {
                    let mut message = self.partial.take().unwrap_or_default();
                    // Exactly what the message needs: amortised growth would let a
                    // fragmented message hold up to twice max_message.
                    message.reserve_exact(payload.len());
                    message.extend_from_slice(&payload);
                    if header.is_final {
                        Some(text(message)?)
                    } else {
                        self.partial = Some(message);
                        None
                    }
                }
                OpCode::Control(Control::Ping) => Some(WsEvent::Ping(payload)),
                OpCode::Control(Control::Pong) => Some(WsEvent::Pong),
                OpCode::Control(Control::Close) => Some(close_event(&payload)?),
                OpCode::Data(_) | OpCode::Control(_) => return Err(Close::ProtocolError),
            };
            if event.is_some() {
                return Ok((event, offset));
            }
        }
    }

    /// Bytes of a fragmented message held while its other fragments arrive.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, Vec::capacity)
    }
}

fn text(bytes: Vec<u8>) -> Result<WsEvent, Close> {
    String::from_utf8(bytes)
        .map(WsEvent::Text)
        .map_err(|_| Close::InvalidData)
}

fn close_event(payload: &[u8]) -> Result<WsEvent, Close> {
    match payload {
        [] => Ok(WsEvent::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(Close::ProtocolError),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !peer_may_send(code) {
                return Err(Close::ProtocolError);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Close::InvalidData)?;
            Ok(WsEvent::Close {
                code: Some(code),
                reason: reason.to_string(),
            })
        }
    }
}

/// The close codes a peer may send, as the IANA WebSocket close code registry lists
/// them: 1004-1006 and 1015 are reserved (never on the wire), 1016-2999 unassigned,
/// 3000-3999 registered for libraries and frameworks, 4000-4999 private use.
fn peer_may_send(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// An unmasked server frame.
fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    // Formatting into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// A text frame holding `payload` (which must be UTF-8 JSON).
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    frame(OpCode::Data(Data::Text), payload)
}

pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    frame(OpCode::Control(Control::Ping), payload)
}

pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    frame(OpCode::Control(Control::Pong), payload)
}

/// A close frame with the code and reason of `close`.
pub fn close_frame(close: Close) -> Vec<u8> {
    close_frame_with(close.code(), close.reason())
}

/// A close frame with any code and reason (the reason is cut to fit 123 bytes).
pub fn close_frame_with(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OpCode::Control(Control::Close), &payload)
}

/// A masked client frame with this first byte (FIN, RSV and opcode) and payload.
#[cfg(test)]
pub(crate) fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn decode_all(d: &mut Decoder, buf: &[u8]) -> Result<Vec<WsEvent>, Close> {
        let mut events = Vec::new();
        let mut pos = 0;
        loop {
            let (event, used) = d.decode(&buf[pos..])?;
            pos += used;
            match event {
                Some(e) => events.push(e),
                None => return Ok(events),
            }
        }
    }

    #[test]
    fn text_ping_pong_close() {
        let mut d = Decoder::new(1024);
        let mut buf = client_frame(0x81, b"hello");
        buf.extend(client_frame(0x89, b"p"));
        buf.extend(client_frame(0x8A, b""));
        buf.extend(client_frame(0x88, &[0x03, 0xE8, b'o', b'k']));
        assert_eq!(
            decode_all(&mut d, &buf).unwrap(),
            vec![
                WsEvent::Text("hello".into()),
                WsEvent::Ping(b"p".to_vec()),
                WsEvent::Pong,
                WsEvent::Close {
                    code: Some(1000),
                    reason: "ok".into()
                }
            ]
        );
    }

    #[test]
    fn byte_by_byte_input_and_fragments_with_interleaved_ping() {
        let mut d = Decoder::new(1024);
        let mut buf = client_frame(0x01, "hé".as_bytes());
        buf.extend(client_frame(0x89, b""));
        buf.extend(client_frame(0x00, b"l"));
        buf.extend(client_frame(0x80, b"lo"));
        let mut events = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        for &b in &buf {
            held.push(b);
            let mut pos = 0;
            loop {
                let (event, used) = d.decode(&held[pos..]).unwrap();
                pos += used;
                match event {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
            held.drain(..pos);
        }
        assert_eq!(
            events,
            vec![WsEvent::Ping(vec![]), WsEvent::Text("héllo".into())]
        );
        assert!(held.is_empty());
    }

    #[test]
    fn violations_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, Close)> = vec![
            (client_frame(0x82, b"bin"), Close::Unsupported),
            (client_frame(0x02, b"bin"), Close::Unsupported),
            (vec![0x81, 0x02, b'h', b'i'], Close::ProtocolError), // unmasked
            (client_frame(0xC1, b"x"), Close::ProtocolError),     // rsv1
            (client_frame(0x83, b"x"), Close::ProtocolError),     // reserved opcode
            (client_frame(0x80, b"x"), Close::ProtocolError),     // continuation first
            (client_frame(0x09, b"x"), Close::ProtocolError),     // fragmented ping
            (client_frame(0x89, &[0; 126]), Close::ProtocolError),
            (client_frame(0x81, &[0xff, 0xfe]), Close::InvalidData),
            (client_frame(0x88, &[0x03]), Close::ProtocolError),
            (client_frame(0x88, &[0x03, 0xED]), Close::ProtocolError), // 1005 reserved
            (client_frame(0x88, &[0x03, 0xE8, 0xff]), Close::InvalidData),
        ];
        for (buf, close) in cases {
            let mut d = Decoder::new(1024);
            assert_eq!(decode_all(&mut d, &buf), Err(close), "{buf:?}");
        }
        let mut d = Decoder::new(1024);
        let mut buf = client_frame(0x01, b"a");
        buf.extend(client_frame(0x81, b"b"));
        assert_eq!(
            decode_all(&mut d, &buf),
            Err(Close::ProtocolError),
            "text inside fragments"
        );
        let mut d = Decoder::new(1024);
        let mut buf = client_frame(0x01, b"a");
        buf.extend(client_frame(0x82, b"b"));
        assert_eq!(
            decode_all(&mut d, &buf),
            Err(Close::ProtocolError),
            "binary inside fragments: a protocol error, not an unsupported type"
        );
    }

    #[test]
    fn every_close_code_the_registry_lets_a_peer_send_is_accepted() {
        for code in 0..=u16::MAX {
            let [hi, lo] = code.to_be_bytes();
            let mut d = Decoder::new(1024);
            let decoded = decode_all(&mut d, &client_frame(0x88, &[hi, lo]));
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(decoded.is_ok(), expected, "close code {code}");
        }
        let mut d = Decoder::new(1024);
        assert_eq!(
            decode_all(&mut d, &client_frame(0x88, &[0x03, 0xF6])).unwrap(),
            vec![WsEvent::Close {
                code: Some(1014),
                reason: String::new()
            }],
            "1014 bad gateway"
        );
    }

    #[test]
    fn size_limit_is_decided_from_the_header() {
        let mut d = Decoder::new(100);
        let frame = client_frame(0x81, &[b'a'; 101]);
        // Only the header has arrived: refused already.
        assert_eq!(d.decode(&frame[..8]), Err(Close::TooBig));
        let mut d = Decoder::new(100);
        assert_eq!(
            decode_all(&mut d, &client_frame(0x81, &[b'a'; 100]))
                .unwrap()
                .len(),
            1
        );
        let mut d = Decoder::new(100);
        let mut buf = client_frame(0x01, &[b'a'; 60]);
        buf.extend(client_frame(0x80, &[b'a'; 41]));
        assert_eq!(
            decode_all(&mut d, &buf),
            Err(Close::TooBig),
            "assembled message"
        );
        let mut d = Decoder::new(100);
        let mut buf = client_frame(0x01, &[b'a'; 60]);
        buf.extend(client_frame(0x00, &[b'a'; 30]));
        assert_eq!(decode_all(&mut d, &buf), Ok(Vec::new()));
        assert!(d.buffered() <= 100, "holds {} bytes", d.buffered());
        let mut d = Decoder::new(100);
        let huge = [
            0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
        ];
        assert_eq!(d.decode(&huge), Err(Close::TooBig));
    }

    #[test]
    fn server_frames() {
        assert_eq!(text_frame(b"hi"), vec![0x81, 2, b'h', b'i']);
        let long = text_frame(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(close_frame(Close::Replaced), {
            let mut v = vec![0x88, 10, 0x0F, 0xA1];
            v.extend_from_slice(b"replaced");
            v
        });
        assert_eq!(pong_frame(b"x"), vec![0x8A, 1, b'x']);
        assert_eq!(close_frame(Close::Echo(4999)), vec![0x88, 2, 0x13, 0x87]);
        assert_eq!(ping_frame(b""), vec![0x89, 0]);
        let cut = close_frame_with(1000, &"é".repeat(100));
        assert!(cut.len() <= 2 + 125);
        assert!(std::str::from_utf8(&cut[4..]).is_ok());
    }
}
