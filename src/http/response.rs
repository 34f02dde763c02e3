//! Responses as values, and their serialisation to HTTP/1.1 bytes.
//!
//! Every response carries the same security headers; the body is either owned bytes or a
//! shared buffer (static files) so serving a cached file never copies it per request.

use std::sync::Arc;

use super::error::ApiError;

/// The Content-Security-Policy of every response: only chatd's own scripts, styles,
/// images and WebSocket; no inline code, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Headers sent on every response.
const SECURITY_HEADERS: &str = concat!(
    "strict-transport-security: max-age=63072000\r\n",
    "x-content-type-options: nosniff\r\n",
    "x-frame-options: DENY\r\n",
    "referrer-policy: no-referrer\r\n",
);

/// A response body.
#[derive(Debug, Clone, Default)]
pub enum Body {
    #[default]
    Empty,
    Owned(Vec<u8>),
    /// A buffer shared by many responses (a cached static file).
    Shared(Arc<[u8]>),
}

impl Body {
    pub fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Owned(v) => v.len(),
            Body::Shared(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response before serialisation.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    /// Extra headers (name in lower case).
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Send the headers of the body but not the body itself (HEAD, 304).
    pub omit_body: bool,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Body::Empty,
            omit_body: false,
            close: false,
        }
    }

    /// A JSON response; API answers are never cached (they can carry tokens).
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut r = Response::new(status);
        r.content_type = Some("application/json");
        r.body = Body::Owned(value.to_string().into_bytes());
        r.headers.push(("cache-control", "no-store".to_string()));
        r
    }

    /// The error contract: JSON body, plus Allow / Retry-After / WWW-Authenticate where
    /// the code calls for them; closes the connection for the codes that require it.
    pub fn error(err: &ApiError) -> Self {
        let mut r = Response::new(err.status);
        r.content_type = Some("application/json");
        r.body = Body::Owned(err.body());
        r.headers.push(("cache-control", "no-store".to_string()));
        if let Some(allow) = err.allow {
            r.headers.push(("allow", allow.to_string()));
        }
        if let Some(secs) = err.retry_after {
            r.headers.push(("retry-after", secs.to_string()));
        }
        if err.status == 401 {
            let www = if err.code == super::ErrorCode::TokenExpired {
                "Bearer error=\"invalid_token\", error_description=\"token expired\""
            } else {
                "Bearer"
            };
            r.headers.push(("www-authenticate", www.to_string()));
        }
        r.close = err.code.closes_connection();
        r
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises the status line and headers (and the body unless omitted) onto `out`.
    /// `date` is the preformatted value of the Date header.
    pub fn write_head(&self, date: &str, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ndate: {}\r\nserver: chatd\r\n",
            self.status,
            reason(self.status),
            date
        );
        out.extend_from_slice(SECURITY_HEADERS.as_bytes());
        out.extend_from_slice(b"content-security-policy: ");
        out.extend_from_slice(CONTENT_SECURITY_POLICY.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = self.content_type {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(ct.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.status != 304 && self.status != 101 {
            let _ = write!(out, "content-length: {}\r\n", self.body.len());
        }
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Whether body bytes follow the head on the wire.
    pub fn sends_body(&self) -> bool {
        !self.omit_body && self.status != 304 && self.status != 101
    }
}

/// The reason phrase of the statuses chatd sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Formats a Unix time (seconds) as an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// RFC 3339 UTC with second precision: `2026-11-22T01:20:00Z`.
pub fn rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ErrorCode;

    #[test]
    fn dates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_310_400), "2026-11-22T01:20:00Z");
    }

    #[test]
    fn head_has_security_headers_and_length() {
        let r = Response::json(200, &serde_json::json!({"status": "ok"}));
        let mut out = Vec::new();
        r.write_head("D", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        for h in [
            "strict-transport-security: max-age=",
            "x-content-type-options: nosniff",
            "x-frame-options: DENY",
            "referrer-policy: no-referrer",
            "content-security-policy: default-src 'none'",
            "content-type: application/json",
            "content-length: 15",
        ] {
            assert!(text.contains(h), "missing {h} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn error_responses_carry_their_headers_and_close_rule() {
        let r = Response::error(&ApiError::rate_limited(3));
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after", "3".into())));
        assert!(!r.close);
        let r = Response::error(&ApiError::method_not_allowed("GET, HEAD"));
        assert!(r.headers.contains(&("allow", "GET, HEAD".into())));
        let r = Response::error(&ApiError::new(ErrorCode::Unauthorized, "x"));
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| *n == "www-authenticate" && v.starts_with("Bearer"))
        );
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::InvalidUsername,
            ErrorCode::WeakPassword,
            ErrorCode::PayloadTooLarge,
            ErrorCode::HeadersTooLarge,
            ErrorCode::NotImplemented,
        ] {
            assert!(Response::error(&ApiError::new(code, "x")).close, "{code:?}");
        }
    }
}
