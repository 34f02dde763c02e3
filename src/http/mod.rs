//! HTTP/1.1 as values: request parsing, responses, the error contract and static files.
//!
//! Nothing here touches a socket; the connection code feeds decrypted bytes in and
//! writes the serialised responses out.

pub mod error;
pub mod request;
pub mod response;
pub mod static_files;

pub use error::{ApiError, ErrorCode};
pub use request::{MAX_HEADERS, ParseStatus, Parsed, Request, RequestLimits, parse_request};
pub use response::{Body, Response};
