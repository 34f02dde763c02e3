//! Credentials: argon2id password hashing and HS256 JWT issue/verify.
//!
//! Both take their inputs as values (the clock included) so they are tested without a
//! server; the API layer decides when to call them.

pub mod password;
pub mod token;

pub use password::Passwords;
pub use token::{Claims, TokenError, Tokens};
