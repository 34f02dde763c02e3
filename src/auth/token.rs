//! HS256 JSON Web Tokens: the algorithm is pinned, the clock is an argument.
//!
//! A token names the user (`sub` = id, `name` = username) and carries the password
//! version (`ver`) current when it was issued: after a password change every older token
//! fails the version check, even one issued in the same second.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims chatd puts in and expects from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id, as a string.
    pub sub: String,
    /// Username when issued.
    pub name: String,
    pub iat: i64,
    pub exp: i64,
    /// Random token id.
    pub jti: String,
    /// Password version when issued.
    pub ver: i64,
}

impl Claims {
    pub fn user_id(&self) -> Option<i64> {
        self.sub.parse().ok()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Well formed and correctly signed, but past `exp`.
    Expired,
    /// Anything else: malformed, wrong signature, wrong algorithm, missing claims.
    Invalid,
}

/// The latest `exp` a token may carry: 9999-12-31T23:59:59Z. Well past any lifetime
/// chatd issues, and small enough that the milliseconds of it (`exp * 1000`, sent in
/// replies) and any deadline computed from it cannot overflow.
pub const MAX_EXP_SECS: i64 = 253_402_300_799;

/// Signing and verification keys and the token lifetime.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: i64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Tokens")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(secret: &[u8], ttl_secs: i64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        // Expiry is checked below against the caller's clock, without leeway.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// A signed token for the user, valid from `now` for the configured lifetime.
    pub fn issue(
        &self,
        user_id: i64,
        username: &str,
        password_version: i64,
        now_secs: i64,
    ) -> Result<(String, Claims), TokenError> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| TokenError::Invalid)?;
        let claims = Claims {
            sub: user_id.to_string(),
            name: username.to_string(),
            iat: now_secs,
            exp: now_secs + self.ttl_secs,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            ver: password_version,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| {
            log::error!("cannot sign token: {e}");
            TokenError::Invalid
        })?;
        Ok((token, claims))
    }

    /// The claims of a token signed by us with HS256 and not expired at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        if data.header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        let claims = data.claims;
        if claims.user_id().is_none() || !(0..=MAX_EXP_SECS).contains(&claims.exp) {
            return Err(TokenError::Invalid);
        }
        if now_secs >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(data: &[u8]) -> String {
        // URL-safe base64 without padding, as JWT uses.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn issue_then_verify() {
        let t = Tokens::new(SECRET, 60);
        let (token, claims) = t.issue(7, "alice", 3, 1000).unwrap();
        assert_eq!(claims.exp, 1060);
        assert_eq!(claims.jti.len(), 32);
        let back = t.verify(&token, 1059).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.user_id(), Some(7));
        assert_eq!(t.verify(&token, 1060), Err(TokenError::Expired));
    }

    #[test]
    fn other_key_and_garbage_are_invalid() {
        let (token, _) = Tokens::new(b"another secret of at least 32 bytes!", 60)
            .issue(1, "a", 0, 0)
            .unwrap();
        let t = Tokens::new(SECRET, 60);
        assert_eq!(t.verify(&token, 1), Err(TokenError::Invalid));
        for junk in ["", "a.b.c", "x", "....", "eyJhbGciOiJIUzI1NiJ9.e30."] {
            assert_eq!(t.verify(junk, 1), Err(TokenError::Invalid), "{junk}");
        }
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let t = Tokens::new(SECRET, 60);
        let claims = br#"{"sub":"1","name":"a","iat":0,"exp":99999999999,"jti":"x","ver":0}"#;
        for header in [
            &br#"{"alg":"none","typ":"JWT"}"#[..],
            br#"{"alg":"None"}"#,
            br#"{"alg":"HS512","typ":"JWT"}"#,
        ] {
            let forged = format!("{}.{}.", b64(header), b64(claims));
            assert_eq!(t.verify(&forged, 1), Err(TokenError::Invalid));
        }
    }

    /// A token signed with our key, claims as given.
    fn signed(sub: &str, exp: i64) -> String {
        let claims = Claims {
            sub: sub.into(),
            name: "a".into(),
            iat: 0,
            exp,
            jti: "j".into(),
            ver: 0,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn non_numeric_subject_is_invalid() {
        let t = Tokens::new(SECRET, 60);
        assert_eq!(t.verify(&signed("root", 100), 1), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expiry_no_clock_reaches_is_invalid() {
        let t = Tokens::new(SECRET, 60);
        for exp in [i64::MAX, MAX_EXP_SECS + 1, i64::MIN, -1] {
            assert_eq!(
                t.verify(&signed("1", exp), 0),
                Err(TokenError::Invalid),
                "{exp}"
            );
        }
        let claims = t.verify(&signed("1", MAX_EXP_SECS), 0).unwrap();
        assert_eq!(claims.exp.checked_mul(1000), Some(253_402_300_799_000));
    }
}
