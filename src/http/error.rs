//! The HTTP error contract: every error response is `{"error":"<code>","message":"<text>"}`
//! with a stable snake_case code, and the code decides the status.

use std::borrow::Cow;
use std::fmt;

/// Every error code chatd's HTTP side can answer with. The code string is part of the
/// public contract and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    InvalidUsername,
    WeakPassword,
    Unauthorized,
    TokenExpired,
    InvalidCredentials,
    RegistrationClosed,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    UsernameTaken,
    AlreadyConnected,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    HeadersTooLarge,
    InternalError,
    NotImplemented,
    Unavailable,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest | InvalidUsername | WeakPassword => 400,
            Unauthorized | TokenExpired => 401,
            InvalidCredentials => 401,
            RegistrationClosed | Forbidden => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            UsernameTaken | AlreadyConnected => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited => 429,
            HeadersTooLarge => 431,
            InternalError => 500,
            NotImplemented => 501,
            Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            InvalidUsername => "invalid_username",
            WeakPassword => "weak_password",
            Unauthorized => "unauthorized",
            TokenExpired => "token_expired",
            InvalidCredentials => "invalid_credentials",
            RegistrationClosed => "registration_closed",
            Forbidden => "forbidden",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            UsernameTaken => "username_taken",
            AlreadyConnected => "already_connected",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            HeadersTooLarge => "headers_too_large",
            InternalError => "internal_error",
            NotImplemented => "not_implemented",
            Unavailable => "unavailable",
        }
    }

    /// Errors after which the connection is closed: every 400 (validation errors such
    /// as `invalid_username` included), 413, 431 and 501. The request stream can no
    /// longer be trusted to be in sync, or the client sent something we refuse to read.
    pub fn closes_connection(self) -> bool {
        matches!(self.status(), 400 | 413 | 431 | 501)
    }
}

/// An error answer: the code, a human message, and the few headers some codes need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// Usually `code.status()`; a few codes answer with another status in some places
    /// (a wrong current password on `PUT /me` is 403 invalid_credentials).
    pub status: u16,
    pub message: Cow<'static, str>,
    /// `Allow` for 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` (whole seconds) for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            code,
            status: code.status(),
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// The same error answered with another HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("allowed methods: {allow}"),
            )
        }
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..ApiError::new(ErrorCode::RateLimited, "too many requests; retry later")
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn internal() -> Self {
        ApiError::new(ErrorCode::InternalError, "internal error")
    }

    /// The exact JSON body of the contract.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({"error": self.code.as_str(), "message": self.message})
            .to_string()
            .into_bytes()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_exactly_error_and_message() {
        let e = ApiError::new(ErrorCode::NotFound, "no such \"thing\"");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "not_found", "message": "no such \"thing\""})
        );
        assert_eq!(e.code.status(), 404);
    }

    #[test]
    fn rate_limited_has_at_least_one_second() {
        assert_eq!(ApiError::rate_limited(0).retry_after, Some(1));
        assert_eq!(ApiError::rate_limited(7).retry_after, Some(7));
    }
}
