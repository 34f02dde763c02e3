//! argon2id password hashes in PHC string form, with a random salt per password.
//!
//! Verification reads its parameters from the stored hash, so raising the configured
//! cost later does not lock anyone out. A login for an unknown user verifies against a
//! dummy hash made at start with the same parameters, so both failures cost the same.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashes and verifies passwords with the configured argon2id parameters.
pub struct Passwords {
    argon2: Argon2<'static>,
    /// Verified against when the user does not exist, to equalise timing.
    dummy_hash: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

/// Hashing failed: bad parameters or no randomness. Never caused by user input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashError(pub String);

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "password hashing failed: {}", self.0)
    }
}

impl std::error::Error for HashError {}

impl Passwords {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut passwords = Passwords {
            argon2,
            dummy_hash: String::new(),
        };
        passwords.dummy_hash = passwords.hash("chatd dummy password for timing")?;
        Ok(passwords)
    }

    /// A new PHC string (`$argon2id$v=19$m=...`) with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        self.argon2
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string()))
    }

    /// Whether `password` matches the stored PHC string. A malformed stored hash is a
    /// mismatch (and logged), never a panic.
    pub fn verify(&self, password: &str, stored: &str) -> bool {
        match PasswordHash::new(stored) {
            Ok(parsed) => self
                .argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(e) => {
                log::error!("stored password hash is malformed: {e}");
                false
            }
        }
    }

    /// Spends the cost of one verification and returns false: used for unknown users.
    pub fn verify_unknown_user(&self, password: &str) -> bool {
        let _ = self.verify(password, &self.dummy_hash);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The OWASP row with the least memory keeps the unit tests quick.
    fn passwords() -> Passwords {
        Passwords::new(7168, 5, 1).unwrap()
    }

    #[test]
    fn hash_and_verify() {
        let p = passwords();
        let h = p.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        assert!(p.verify("correct horse", &h));
        assert!(!p.verify("correct horsf", &h));
        assert!(!p.verify_unknown_user("correct horse"));
    }

    #[test]
    fn salts_differ_and_malformed_hashes_do_not_match() {
        let p = passwords();
        assert_ne!(p.hash("same").unwrap(), p.hash("same").unwrap());
        assert!(!p.verify("x", "not a hash"));
        assert!(!p.verify("x", ""));
    }

    #[test]
    fn verification_uses_the_stored_parameters() {
        let old = Passwords::new(9216, 4, 1).unwrap();
        let h = old.hash("pw-123456").unwrap();
        assert!(passwords().verify("pw-123456", &h));
    }
}
