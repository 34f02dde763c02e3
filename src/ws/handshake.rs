//! The checks of a `GET /ws` upgrade request that need nothing but the request: method,
//! Origin, the RFC 6455 handshake headers, and where the token is.
//!
//! Browsers cannot set an Authorization header on a WebSocket, so the token may also
//! come as a subprotocol: `Sec-WebSocket-Protocol: chat.v1, bearer.<jwt>`; the answer
//! then names `chat.v1` only, so the token is never echoed back.

use crate::http::{ApiError, ErrorCode, Request, Response};

/// The subprotocol chatd speaks.
pub const SUBPROTOCOL: &str = "chat.v1";

/// A well-formed upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade<'b> {
    /// The bearer token, from Authorization or the subprotocol list.
    pub token: &'b str,
    /// The client offered `chat.v1`: name it in the answer.
    pub subprotocol: bool,
    /// The Sec-WebSocket-Accept value.
    pub accept: String,
}

/// Whether `origin` may open a WebSocket to this server: it must be `https://` + the
/// Host the request was sent to, or one of the configured extra origins.
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    if let Some(host) = host
        && origin == format!("https://{}", host.to_ascii_lowercase())
    {
        return true;
    }
    allowed.contains(&origin)
}

/// Checks everything but the token's validity. Errors: 403 forbidden (Origin),
/// 400 bad_request (handshake headers), 401 unauthorized (no token at all).
pub fn check<'b>(
    req: &Request<'_, 'b>,
    allowed_origins: &[String],
) -> Result<Upgrade<'b>, ApiError> {
    // One key and one version, or the answer would be computed from an arbitrary one
    // (Host, Origin and Authorization are refused twice already by the HTTP parser).
    for name in ["Sec-WebSocket-Key", "Sec-WebSocket-Version"] {
        let count = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count();
        if count > 1 {
            return Err(ApiError::bad_request(format!(
                "more than one {name} header"
            )));
        }
    }
    if let Some(origin) = req.header_str("origin")
        && !origin_allowed(origin, req.header_str("host"), allowed_origins)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this Origin may not open a WebSocket here",
        ));
    }
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(ApiError::bad_request(
            "a WebSocket upgrade needs Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if req.header_str("sec-websocket-version") != Some("13") {
        return Err(ApiError::bad_request("Sec-WebSocket-Version must be 13"));
    }
    let key = req
        .header_str("sec-websocket-key")
        .filter(|k| valid_key(k))
        .ok_or_else(|| ApiError::bad_request("missing or malformed Sec-WebSocket-Key"))?;
    let offered: Vec<&'b str> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let subprotocol = offered.contains(&SUBPROTOCOL);
    let protocol_token = offered.iter().find_map(|p| p.strip_prefix("bearer."));
    if protocol_token.is_some() && !subprotocol {
        return Err(ApiError::bad_request(
            "a bearer.<token> subprotocol must be offered together with chat.v1",
        ));
    }
    let token = req
        .bearer_token()
        .or(protocol_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "a token is required: Authorization: Bearer <token>, or the subprotocols chat.v1, bearer.<token>",
            )
        })?;
    Ok(Upgrade {
        token,
        subprotocol,
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
    })
}

/// RFC 6455: the key is 16 random bytes in base64 (24 characters ending in `==`).
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The 101 answer.
pub fn switching_protocols(upgrade: &Upgrade<'_>) -> Response {
    let mut r = Response::new(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", upgrade.accept.clone());
    if upgrade.subprotocol {
        r = r.header("sec-websocket-protocol", SUBPROTOCOL);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{MAX_HEADERS, ParseStatus, RequestLimits, parse_request};

    const LIMITS: RequestLimits = RequestLimits {
        max_header_bytes: 8192,
        max_body_bytes: 1024,
    };

    fn check_raw(extra: &str, allowed: &[String]) -> Result<(String, bool, String), ApiError> {
        let raw = format!(
            "GET /ws HTTP/1.1\r\nHost: chat.example:8443\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let ParseStatus::Complete(p) = parse_request(raw.as_bytes(), &mut headers, LIMITS).unwrap()
        else {
            panic!("partial");
        };
        check(&p.request, allowed).map(|u| (u.token.to_string(), u.subprotocol, u.accept))
    }

    #[test]
    fn bearer_header_and_accept_key() {
        let (token, sub, accept) = check_raw("Authorization: Bearer abc\r\n", &[]).unwrap();
        assert_eq!((token.as_str(), sub), ("abc", false));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn subprotocol_token() {
        let (token, sub, _) =
            check_raw("Sec-WebSocket-Protocol: chat.v1, bearer.x.y.z\r\n", &[]).unwrap();
        assert_eq!((token.as_str(), sub), ("x.y.z", true));
        let e = check_raw("Sec-WebSocket-Protocol: bearer.x.y.z\r\n", &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = check_raw("Sec-WebSocket-Protocol: chat.v1\r\n", &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }

    #[test]
    fn origin_rules() {
        let ok = check_raw(
            "Origin: https://chat.example:8443\r\nAuthorization: Bearer t\r\n",
            &[],
        );
        assert!(ok.is_ok());
        let e = check_raw(
            "Origin: https://evil.example\r\nAuthorization: Bearer t\r\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let e = check_raw(
            "Origin: http://chat.example:8443\r\nAuthorization: Bearer t\r\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "plain http origin");
        let allowed = vec!["https://app.example".to_string()];
        assert!(
            check_raw(
                "Origin: https://App.example\r\nAuthorization: Bearer t\r\n",
                &allowed
            )
            .is_ok()
        );
        assert!(!origin_allowed("null", Some("h"), &[]));
    }

    #[test]
    fn a_second_key_or_version_is_a_bad_request() {
        for extra in [
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nAuthorization: Bearer t\r\n",
            "sec-websocket-version: 13\r\nAuthorization: Bearer t\r\n",
        ] {
            let e = check_raw(extra, &[]).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{extra}");
            assert!(e.message.starts_with("more than one"), "{}", e.message);
        }
    }

    #[test]
    fn malformed_handshakes_are_bad_requests() {
        for bad in [
            "Sec-WebSocket-Key: short\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!!\r\n",
        ] {
            let raw = format!(
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nAuthorization: Bearer t\r\n{bad}\r\n"
            );
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let ParseStatus::Complete(p) =
                parse_request(raw.as_bytes(), &mut headers, LIMITS).unwrap()
            else {
                panic!()
            };
            assert_eq!(
                check(&p.request, &[]).unwrap_err().code,
                ErrorCode::BadRequest
            );
        }
        for (drop, add) in [
            ("Upgrade: websocket\r\n", ""),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "Sec-WebSocket-Version: 8\r\n",
            ),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        ] {
            let raw =
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Authorization: Bearer t\r\n\r\n"
                    .replace(drop, add);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let ParseStatus::Complete(p) =
                parse_request(raw.as_bytes(), &mut headers, LIMITS).unwrap()
            else {
                panic!()
            };
            assert_eq!(
                check(&p.request, &[]).unwrap_err().code,
                ErrorCode::BadRequest,
                "{drop}"
            );
        }
    }
}
