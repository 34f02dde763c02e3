//! The HTTP/1.1 the bench needs, over in-memory buffers: request bytes out, response
//! heads and bodies in. Responses must carry Content-Length (chatd's and nginx's do).

/// A complete response at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the status line and headers, blank line included.
    pub head_len: usize,
    /// Content-Length (0 for 101 and 204/304 answers).
    pub body_len: usize,
}

/// Why a response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Parses the response head at the front of `buf`. `Ok(None)`: more bytes needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<ResponseHead>, BadResponse> {
    let Some(end) = crate::payload::find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(BadResponse("response head too large"));
        }
        return Ok(None);
    };
    let head = &buf[..end];
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
        return Err(BadResponse("not an HTTP/1.x response"));
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(BadResponse("bad status code"))?;
    let mut body_len = 0;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            body_len = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(BadResponse("bad content-length"))?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(BadResponse("chunked responses are not supported"));
        }
    }
    if status == 101 || status == 204 || status == 304 {
        body_len = 0;
    }
    Ok(Some(ResponseHead {
        status,
        head_len: end + 4,
        body_len,
    }))
}

/// A GET with optional bearer token, keep-alive.
pub fn get(path: &str, host: &str, bearer: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
    if let Some(token) = bearer {
        req.push_str("authorization: Bearer ");
        req.push_str(token);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A POST of a JSON body, keep-alive.
pub fn post_json(path: &str, host: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The WebSocket upgrade request. The key is fixed: it only has to be well formed, and
/// the bench does not check the accept value (the server is trusted by certificate).
pub fn upgrade(path: &str, host: &str, bearer: Option<&str>) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
    );
    if let Some(token) = bearer {
        req.push_str("authorization: Bearer ");
        req.push_str(token);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nx: y\r\n\r\n{\"status\":\"ok\"}";
        let h = parse_head(r).unwrap().unwrap();
        assert_eq!((h.status, h.body_len), (200, 15));
        assert_eq!(&r[h.head_len..], b"{\"status\":\"ok\"}");
        assert_eq!(parse_head(&r[..20]), Ok(None));
        let up = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x00";
        let h = parse_head(up).unwrap().unwrap();
        assert_eq!((h.status, h.body_len, h.head_len), (101, 0, up.len() - 2));
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn requests() {
        let r = String::from_utf8(upgrade("/ws", "localhost", Some("abc"))).unwrap();
        assert!(r.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(r.contains("\r\nauthorization: Bearer abc\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let p = String::from_utf8(post_json("/login", "h", "{}")).unwrap();
        assert!(p.contains("content-length: 2\r\n\r\n{}"));
    }
}
