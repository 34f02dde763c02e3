//! The client's side of RFC 6455 framing, over in-memory buffers.
//!
//! Client frames are masked (a client must mask, the server refuses unmasked frames);
//! server frames arrive unmasked. Only what a load generator needs: text, ping, pong
//! and close, no fragmentation on the sending side, fragments refused on receipt
//! (neither chatd nor the reference peer fragments its frames).

/// Opcodes of RFC 6455 section 5.2.
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A small, fast pseudo-random generator for masking keys (xorshift64*). Masks only need
/// to be unpredictable to intermediaries, which a loopback benchmark has none of.
#[derive(Debug, Clone)]
pub struct MaskRng(u64);

impl MaskRng {
    pub fn new(seed: u64) -> Self {
        MaskRng(seed | 1)
    }

    pub fn next_mask(&mut self) -> [u8; 4] {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 32) as u32).to_le_bytes()
    }
}

/// Appends one masked, final frame with this opcode and payload to `out`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the 4-byte mask (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// One decoded server frame: where its payload lies in the buffer that was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    /// Payload start, relative to the start of the parsed slice.
    pub payload_start: usize,
    pub payload_len: usize,
    /// Header plus payload: how many bytes the frame occupies.
    pub total_len: usize,
}

/// Why a server frame cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A server must not mask its frames.
    Masked,
    /// Fragmented messages, reserved bits or unknown opcodes.
    Unsupported,
    /// Larger than the caller's limit.
    TooBig,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Masked => "masked server frame",
            FrameError::Unsupported => "fragmented frame, reserved bits or unknown opcode",
            FrameError::TooBig => "frame too big",
        })
    }
}

/// Parses one unmasked server frame from the front of `buf`. `Ok(None)` means more
/// bytes are needed (partial input is not an error).
pub fn decode_server(buf: &[u8], max_payload: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 || b0 & 0x80 == 0 {
        return Err(FrameError::Unsupported);
    }
    let opcode = b0 & 0x0F;
    if !matches!(opcode, OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(FrameError::Unsupported);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode,
        payload_start: header,
        payload_len: len,
        total_len: header + len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a masked client frame (what the server does) to check our encoding.
    fn decode_client(buf: &[u8]) -> (u8, Vec<u8>, usize) {
        assert_eq!(buf[0] & 0x80, 0x80, "final");
        assert_eq!(buf[1] & 0x80, 0x80, "masked");
        let (len, mut pos) = match buf[1] & 0x7F {
            126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask: [u8; 4] = buf[pos..pos + 4].try_into().unwrap();
        pos += 4;
        let mut payload = buf[pos..pos + len].to_vec();
        apply_mask(&mut payload, mask);
        (buf[0] & 0x0F, payload, pos + len)
    }

    #[test]
    fn masked_frames_round_trip_at_every_length_class() {
        let mut rng = MaskRng::new(42);
        for len in [0usize, 1, 5, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut out = Vec::new();
            let mask = rng.next_mask();
            encode_masked(&mut out, OP_TEXT, &payload, mask);
            let (op, decoded, used) = decode_client(&out);
            assert_eq!(op, OP_TEXT);
            assert_eq!(decoded, payload, "len {len}");
            assert_eq!(used, out.len());
            if len >= 4 {
                assert_ne!(&out[out.len() - len..], &payload[..], "payload is masked");
            }
        }
    }

    #[test]
    fn rfc6455_masked_example() {
        // RFC 6455 section 5.7: a masked "Hello".
        let mut out = Vec::new();
        encode_masked(&mut out, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn unmasked_server_frames_decode_and_partial_input_waits() {
        // RFC 6455 section 5.7: an unmasked "Hello", then a 256-byte binary frame.
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let f = decode_server(&hello, 1 << 20).unwrap().unwrap();
        assert_eq!(f.opcode, OP_TEXT);
        assert_eq!(
            &hello[f.payload_start..f.payload_start + f.payload_len],
            b"Hello"
        );
        assert_eq!(f.total_len, 7);
        for cut in 0..hello.len() {
            assert_eq!(decode_server(&hello[..cut], 1 << 20), Ok(None), "cut {cut}");
        }
        let mut big = vec![0x82, 0x7E, 0x01, 0x00];
        big.extend(std::iter::repeat_n(9u8, 256));
        let f = decode_server(&big, 1 << 20).unwrap().unwrap();
        assert_eq!((f.payload_start, f.payload_len, f.total_len), (4, 256, 260));
        assert_eq!(decode_server(&big[..3], 1 << 20), Ok(None));
        assert_eq!(decode_server(&big, 100), Err(FrameError::TooBig));
        let mut huge = vec![0x81, 0x7F];
        huge.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(decode_server(&huge, 1 << 20), Ok(None));
    }

    #[test]
    fn bad_server_frames_are_refused() {
        assert_eq!(
            decode_server(&[0x81, 0x85, 1, 2, 3, 4, 0], 100),
            Err(FrameError::Masked)
        );
        assert_eq!(
            decode_server(&[0x01, 0x00], 100),
            Err(FrameError::Unsupported),
            "not final"
        );
        assert_eq!(
            decode_server(&[0xC1, 0x00], 100),
            Err(FrameError::Unsupported),
            "rsv1"
        );
        assert_eq!(
            decode_server(&[0x83, 0x00], 100),
            Err(FrameError::Unsupported),
            "opcode 3"
        );
        let ping = decode_server(&[0x89, 0x00], 100).unwrap().unwrap();
        assert_eq!((ping.opcode, ping.total_len), (OP_PING, 2));
    }

    #[test]
    fn masks_vary() {
        let mut rng = MaskRng::new(1);
        let a = rng.next_mask();
        let b = rng.next_mask();
        assert_ne!(a, b);
    }
}
