//! HTTP/1.1 request parsing with httparse, over bytes already decrypted.
//!
//! `parse_request` never blocks and never allocates: it borrows the request from the
//! connection's input buffer. "Not all here yet" is `ParseStatus::Partial`; malformed or refused
//! input is an [`ApiError`] whose code says how to answer (400, 413, 431, 501).

use super::error::{ApiError, ErrorCode};

/// Most headers a request may carry; more is 431.
pub const MAX_HEADERS: usize = 48;

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

/// One parsed request, borrowing the input buffer.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// The path part of the target, still percent-encoded.
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
    pub body: &'b [u8],
}

impl<'b> Request<'_, 'b> {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The header as text, if present and valid UTF-8, trimmed.
    pub fn header_str(&self, name: &str) -> Option<&'b str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether the client asked to keep the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        let tokens = self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"));
        let mut close = false;
        let mut keep = false;
        for h in tokens {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        if close {
            false
        } else {
            self.minor_version == 1 || keep
        }
    }

    /// The bearer token of the Authorization header, if there is one.
    pub fn bearer_token(&self) -> Option<&'b str> {
        let value = self.header_str("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// Whether the body is declared as JSON (`application/json`, any parameters).
    pub fn is_json(&self) -> bool {
        self.header_str("content-type")
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    }
}

/// What the front of the input holds.
#[derive(Debug)]
pub enum ParseStatus<'h, 'b> {
    /// Not a whole request yet. `expects_continue`: the head is complete, the body is
    /// still to come, and the client waits for `100 Continue` before sending it.
    Partial {
        expects_continue: bool,
    },
    Complete(Parsed<'h, 'b>),
}

/// A complete request and how many input bytes it used.
#[derive(Debug)]
pub struct Parsed<'h, 'b> {
    pub request: Request<'h, 'b>,
    pub len: usize,
}

/// Parses one request from the front of `buf`. `headers` is scratch space owned by the
/// caller (usually on its stack). Partial input is `ParseStatus::Partial`, not an error.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: RequestLimits,
) -> Result<ParseStatus<'h, 'b>, ApiError> {
    let mut req = httparse::Request::new(headers);
    let status = req.parse(buf).map_err(|e| match e {
        httparse::Error::TooManyHeaders => {
            ApiError::new(ErrorCode::HeadersTooLarge, "too many header fields")
        }
        other => ApiError::bad_request(format!("malformed request: {other}")),
    });
    let head_len = match status? {
        httparse::Status::Partial => {
            if buf.len() > limits.max_header_bytes {
                return Err(headers_too_large(limits));
            }
            return Ok(ParseStatus::Partial {
                expects_continue: false,
            });
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.max_header_bytes {
        return Err(headers_too_large(limits));
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(ApiError::bad_request("malformed request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    if !target.starts_with('/') {
        return Err(ApiError::bad_request(
            "request target must be an absolute path",
        ));
    }
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(ApiError::new(
            ErrorCode::NotImplemented,
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    let mut content_length: Option<usize> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value = parse_content_length(h.value)
            .ok_or_else(|| ApiError::bad_request("invalid Content-Length"))?;
        if content_length.is_some_and(|seen| seen != value) {
            return Err(ApiError::bad_request("conflicting Content-Length headers"));
        }
        content_length = Some(value);
    }
    let count = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let host_count = count("host");
    if host_count > 1 || (minor_version == 1 && host_count == 0) {
        return Err(ApiError::bad_request("exactly one Host header is required"));
    }
    // Headers that decide who the client is or where it comes from: with two of them,
    // one check could read the first and another the second.
    for name in ["Authorization", "Origin"] {
        if count(name) > 1 {
            return Err(ApiError::bad_request(format!(
                "more than one {name} header"
            )));
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "request body is larger than {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    let total = head_len + body_len;
    if buf.len() < total {
        // 100 Continue exists in HTTP/1.1 only (RFC 9110 §10.1.1).
        let expects_continue = minor_version == 1
            && headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("expect")
                    && h.value.eq_ignore_ascii_case(b"100-continue")
            });
        return Ok(ParseStatus::Partial { expects_continue });
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    Ok(ParseStatus::Complete(Parsed {
        request: Request {
            method,
            path,
            query,
            minor_version,
            headers,
            body: &buf[head_len..total],
        },
        len: total,
    }))
}

fn headers_too_large(limits: RequestLimits) -> ApiError {
    ApiError::new(
        ErrorCode::HeadersTooLarge,
        format!(
            "request header block is larger than {} bytes",
            limits.max_header_bytes
        ),
    )
}

/// Digits only (no sign, no spaces inside), at most 18 of them so it cannot overflow.
fn parse_content_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_header_bytes: 1024,
        max_body_bytes: 100,
    };

    /// (method, path, body, length) of a complete request.
    type Summary = (String, String, Vec<u8>, usize);

    /// The summary of a complete request, None if partial.
    fn parse(buf: &[u8]) -> Result<Option<Summary>, ApiError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parse_request(buf, &mut headers, LIMITS).map(|status| match status {
            ParseStatus::Partial { .. } => None,
            ParseStatus::Complete(p) => Some((
                p.request.method.to_string(),
                p.request.path.to_string(),
                p.request.body.to_vec(),
                p.len,
            )),
        })
    }

    fn complete<'h, 'b>(buf: &'b [u8], headers: &'h mut [httparse::Header<'b>]) -> Parsed<'h, 'b> {
        match parse_request(buf, headers, LIMITS).unwrap() {
            ParseStatus::Complete(p) => p,
            ParseStatus::Partial { .. } => panic!("partial"),
        }
    }

    fn code(buf: &[u8]) -> ErrorCode {
        parse(buf).unwrap_err().code
    }

    #[test]
    fn simple_get_and_query() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = complete(raw, &mut headers);
        assert_eq!(p.request.path, "/a/b");
        assert_eq!(p.request.query, Some("x=1"));
        assert_eq!(p.len, raw.len());
        assert!(p.request.keep_alive());
        assert_eq!(p.request.header_str("HOST"), Some("h"));
    }

    #[test]
    fn partial_input_is_none_not_an_error() {
        let raw = b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab";
        for end in 0..raw.len() {
            assert!(parse(&raw[..end]).unwrap().is_none(), "prefix {end}");
        }
        let mut full = raw.to_vec();
        full.extend_from_slice(b"cde");
        let (m, _, body, len) = parse(&full).unwrap().unwrap();
        assert_eq!(
            (m.as_str(), body.as_slice(), len),
            ("POST", &b"abcde"[..], full.len())
        );
    }

    #[test]
    fn expect_continue_is_reported_once_the_head_is_complete() {
        let raw =
            b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(&raw[..raw.len() - 1], &mut headers, LIMITS).unwrap(),
            ParseStatus::Partial {
                expects_continue: false
            }
        ));
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(raw, &mut headers, LIMITS).unwrap(),
            ParseStatus::Partial {
                expects_continue: true
            }
        ));
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let raw = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
        let (_, p1, _, n1) = parse(raw).unwrap().unwrap();
        let (_, p2, _, n2) = parse(&raw[n1..]).unwrap().unwrap();
        assert_eq!((p1.as_str(), p2.as_str()), ("/1", "/2"));
        assert_eq!(n1 + n2, raw.len());
    }

    #[test]
    fn transfer_encoding_is_not_implemented() {
        assert_eq!(
            code(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ErrorCode::NotImplemented
        );
        assert_eq!(
            code(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ntransfer-encoding: identity\r\n\r\nabc"),
            ErrorCode::NotImplemented
        );
    }

    #[test]
    fn body_size_is_decided_from_content_length_alone() {
        assert_eq!(
            code(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n"),
            ErrorCode::PayloadTooLarge
        );
        assert!(
            parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_content_length() {
        for cl in ["-1", "1x", "", "+5", "99999999999999999999", "1 2"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(code(raw.as_bytes()), ErrorCode::BadRequest, "{cl:?}");
        }
        assert_eq!(
            code(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            ErrorCode::BadRequest
        );
        assert!(
            parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn header_limits() {
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1100));
        assert_eq!(
            code(&big),
            ErrorCode::HeadersTooLarge,
            "incomplete and too big"
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            code(&big),
            ErrorCode::HeadersTooLarge,
            "complete and too big"
        );

        let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(code(&many), ErrorCode::HeadersTooLarge);
    }

    #[test]
    fn syntax_errors_are_bad_request() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: https://a\r\norigin: https://b\r\n\r\n",
            b"GET /me HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nAUTHORIZATION: Bearer y\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\nHost: h\r\n\r\n",
            b"\x16\x03\x01\x00",
        ] {
            assert_eq!(
                code(raw),
                ErrorCode::BadRequest,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn http10_host_optional_and_keep_alive_rules() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = complete(b"GET / HTTP/1.0\r\n\r\n", &mut headers);
        assert!(!p.request.keep_alive());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = complete(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            &mut headers,
        );
        assert!(p.request.keep_alive());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = complete(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n",
            &mut headers,
        );
        assert!(!p.request.keep_alive());
    }

    #[test]
    fn bearer_and_json_helpers() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: bearer  abc.def \r\nContent-Type: Application/JSON; charset=utf-8\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = complete(raw, &mut headers);
        assert_eq!(p.request.bearer_token(), Some("abc.def"));
        assert!(p.request.is_json());
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic abc\r\nContent-Type: text/plain\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = complete(raw, &mut headers);
        assert_eq!(p.request.bearer_token(), None);
        assert!(!p.request.is_json());
    }
}
