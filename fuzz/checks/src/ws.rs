//! The WebSocket frame decoder: client bytes in, events or a close code out.
//!
//! Input: two bytes choose the message limit (1-4096, small enough for fuzzed frames
//! to reach it), one byte the size of the pieces the bytes arrive in, then the stream.
//! Checked: the decoder never says it used more than it was given, never holds or hands
//! out more than the limit, and decoding the stream in pieces gives the same events and
//! the same outcome as decoding it at once (partial input is "need more", never an error).

use chatd::ws::{Close, Decoder, WsEvent};

/// Events, then the bytes used or the close code that ended decoding (the bytes a
/// refused stream used do not matter: the connection closes).
type Outcome = (Vec<WsEvent>, Result<usize, Close>);

pub fn check(data: &[u8]) {
    let [hi, lo, piece, stream @ ..] = data else {
        return;
    };
    let max_message = usize::from(u16::from_be_bytes([*hi, *lo]) % 4096) + 1;
    let whole = decode_at_once(stream, max_message);
    let piece = usize::from(*piece % 16) + 1;
    let pieces = decode_in_pieces(stream, max_message, piece);
    assert_eq!(
        whole, pieces,
        "decoding at once and in pieces of {piece} bytes differ"
    );
}

fn decode_at_once(stream: &[u8], max_message: usize) -> Outcome {
    let mut decoder = Decoder::new(max_message);
    let mut events = Vec::new();
    let mut used = 0;
    let close = drain(&mut decoder, stream, &mut used, &mut events, max_message);
    (events, close.map_or(Ok(used), Err))
}

fn decode_in_pieces(stream: &[u8], max_message: usize, piece: usize) -> Outcome {
    let mut decoder = Decoder::new(max_message);
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let mut used_total = 0;
    for chunk in stream.chunks(piece) {
        pending.extend_from_slice(chunk);
        let mut used = 0;
        let close = drain(&mut decoder, &pending, &mut used, &mut events, max_message);
        used_total += used;
        pending.drain(..used);
        if let Some(close) = close {
            return (events, Err(close));
        }
    }
    (events, Ok(used_total))
}

/// Decodes events from `buf` until more input is needed or a close code ends it, as
/// the connection code does, checking each step.
fn drain(
    decoder: &mut Decoder,
    buf: &[u8],
    used: &mut usize,
    events: &mut Vec<WsEvent>,
    max_message: usize,
) -> Option<Close> {
    loop {
        let rest = &buf[*used..];
        match decoder.decode(rest) {
            Ok((event, n)) => {
                assert!(n <= rest.len(), "used {n} of {} bytes", rest.len());
                assert!(
                    decoder.buffered() <= max_message,
                    "holds {} bytes of a message limited to {max_message}",
                    decoder.buffered()
                );
                *used += n;
                let event = event?;
                assert!(n > 0, "an event from no input");
                check_event(&event, max_message);
                events.push(event);
            }
            Err(close) => return Some(close),
        }
    }
}

fn check_event(event: &WsEvent, max_message: usize) {
    match event {
        WsEvent::Text(text) => assert!(text.len() <= max_message, "text of {}", text.len()),
        WsEvent::Ping(payload) => assert!(payload.len() <= 125, "ping of {}", payload.len()),
        WsEvent::Pong => {}
        WsEvent::Close { code, reason } => {
            assert!(reason.len() <= 123, "close reason of {}", reason.len());
            assert!(code.is_none_or(|c| (1000..=4999).contains(&c)), "{code:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (mask 1,2,3,4).
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn events_are_the_same_at_once_and_in_pieces() {
        let mut stream = frame(0x01, b"he");
        stream.extend(frame(0x89, b"p"));
        stream.extend(frame(0x80, b"llo"));
        stream.extend(frame(0x88, &[0x03, 0xe8, b'b']));
        let (events, used) = decode_at_once(&stream, 100);
        assert_eq!(
            events,
            vec![
                WsEvent::Ping(b"p".to_vec()),
                WsEvent::Text("hello".into()),
                WsEvent::Close {
                    code: Some(1000),
                    reason: "b".into()
                }
            ]
        );
        assert_eq!(used, Ok(stream.len()));
        for piece in 1..=16 {
            assert_eq!(
                decode_in_pieces(&stream, 100, piece),
                (events.clone(), used)
            );
        }
    }
}
