//! argon2id password hashes in PHC string form, with a random salt per password.
//!
//! Verification reads its parameters from the stored hash, so raising the configured
//! cost later does not lock anyone out. A login for an unknown user verifies against a
//! dummy hash made at start with the same parameters, so both failures cost the same.
//!
//! argon2id needs `m` KiB of working memory per hash (19 MiB by default). Allocating it
//! for every hash makes each one fault in thousands of fresh pages (about 15% of the
//! hash's time, measured) and leaves the freed blocks in the heap, so the work area is
//! kept and reused while hashes keep coming, and released once they stop
//! ([`Passwords::release_if_unused`], called from housekeeping).

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Bytes of a fresh salt (the PHC recommendation).
const SALT_BYTES: usize = 16;

/// Hashes and verifies passwords with the configured argon2id parameters.
pub struct Passwords {
    params: Params,
    /// Verified against when the user does not exist, to equalise timing.
    dummy_hash: String,
    /// The reused working memory of one hash; empty while unused.
    work_area: Vec<Block>,
    /// Hashes computed since the last `release_if_unused`.
    recent_uses: u32,
    /// argon2id computations since start (hashes and verifications, the dummy ones for
    /// unknown users included; the dummy hash made at start is not counted).
    operations: u64,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("work_area_blocks", &self.work_area.len())
            .finish_non_exhaustive()
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

fn error(e: impl std::fmt::Display) -> HashError {
    HashError(e.to_string())
}

impl Passwords {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None).map_err(error)?;
        let mut passwords = Passwords {
            params,
            dummy_hash: String::new(),
            work_area: Vec::new(),
            recent_uses: 0,
            operations: 0,
        };
        passwords.dummy_hash = passwords.hash("chatd dummy password for timing")?;
        // Logins may never come: do not hold the work area from the start.
        passwords.work_area = Vec::new();
        passwords.recent_uses = 0;
        passwords.operations = 0;
        Ok(passwords)
    }

    /// Runs argon2id with `params` into `out`, in the reused work area.
    fn compute(
        &mut self,
        params: &Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), HashError> {
        let blocks = params.block_count();
        if self.work_area.len() != blocks {
            self.work_area = vec![Block::default(); blocks];
        }
        self.recent_uses = self.recent_uses.saturating_add(1);
        self.operations += 1;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(password, salt, out, &mut self.work_area[..])
            .map_err(error)
    }

    /// A new PHC string (`$argon2id$v=19$m=...`) with a fresh random salt.
    pub fn hash(&mut self, password: &str) -> Result<String, HashError> {
        let mut salt = [0u8; SALT_BYTES];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashError("no randomness".into()))?;
        let params = self.params.clone();
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.compute(&params, password.as_bytes(), &salt, &mut out)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(error)?,
            salt: Some(Salt::new(&salt).map_err(error)?),
            hash: Some(Output::new(&out).map_err(error)?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the stored PHC string (constant-time comparison). A
    /// malformed stored hash is a mismatch (and logged), never a panic.
    pub fn verify(&mut self, password: &str, stored: &str) -> bool {
        match self.check(password, stored) {
            Ok(matches) => matches,
            Err(e) => {
                log::error!("stored password hash cannot be checked: {e}");
                false
            }
        }
    }

    fn check(&mut self, password: &str, stored: &str) -> Result<bool, HashError> {
        let parsed = PasswordHash::new(stored).map_err(error)?;
        if parsed.algorithm != Algorithm::Argon2id.ident()
            || parsed
                .version
                .is_some_and(|v| v != u32::from(Version::V0x13))
        {
            return Err(HashError(format!(
                "unsupported scheme {}",
                parsed.algorithm
            )));
        }
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return Err(HashError("no salt or hash".into()));
        };
        let params = Params::try_from(&parsed).map_err(error)?;
        let mut out = vec![0u8; expected.len()];
        self.compute(&params, password.as_bytes(), salt.as_ref(), &mut out)?;
        // Output's equality is constant-time.
        Ok(Output::new(&out).map_err(error)? == *expected)
    }

    /// Spends the cost of one verification and returns false: used for unknown users.
    pub fn verify_unknown_user(&mut self, password: &str) -> bool {
        let dummy = std::mem::take(&mut self.dummy_hash);
        let _ = self.verify(password, &dummy);
        self.dummy_hash = dummy;
        false
    }

    /// argon2id computations so far: what `/metrics` reports, and how the equal cost of
    /// the two login failures is observed.
    pub fn operations(&self) -> u64 {
        self.operations
    }

    /// Frees the work area if no hash was computed since the previous call.
    pub fn release_if_unused(&mut self) {
        if self.recent_uses == 0 && !self.work_area.is_empty() {
            self.work_area = Vec::new();
        }
        self.recent_uses = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;

    // The OWASP row with the least memory keeps the unit tests quick.
    fn passwords() -> Passwords {
        Passwords::new(7168, 5, 1).unwrap()
    }

    #[test]
    fn hash_and_verify() {
        let mut p = passwords();
        let h = p.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        assert!(p.verify("correct horse", &h));
        assert!(!p.verify("correct horsf", &h));
        assert!(!p.verify_unknown_user("correct horse"));
    }

    #[test]
    fn every_computation_is_counted_the_dummy_one_included() {
        let mut p = passwords();
        assert_eq!(
            p.operations(),
            0,
            "the dummy hash made at start is not counted"
        );
        let h = p.hash("correct horse").unwrap();
        assert_eq!(p.operations(), 1);
        assert!(!p.verify("wrong horse", &h));
        assert_eq!(p.operations(), 2);
        assert!(!p.verify_unknown_user("correct horse"));
        assert_eq!(p.operations(), 3);
        assert!(!p.verify("x", "not a hash"), "nothing to compute");
        assert_eq!(p.operations(), 3);
    }

    #[test]
    fn hashes_are_standard_phc_strings() {
        let mut p = passwords();
        let h = p.hash("pw-123456").unwrap();
        // The reference implementation of the crate accepts ours...
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"pw-123456", &parsed)
                .is_ok()
        );
        // ...and we accept its.
        let theirs = argon2::password_hash::PasswordHasher::hash_password(
            &Argon2::from(Params::new(9216, 4, 1, None).unwrap()),
            b"pw-654321",
        )
        .unwrap()
        .to_string();
        assert!(p.verify("pw-654321", &theirs));
        assert!(!p.verify("pw-654322", &theirs));
    }

    #[test]
    fn salts_differ_and_malformed_hashes_do_not_match() {
        let mut p = passwords();
        assert_ne!(p.hash("same").unwrap(), p.hash("same").unwrap());
        assert!(!p.verify("x", "not a hash"));
        assert!(!p.verify("x", ""));
        assert!(!p.verify("x", "$argon2i$v=19$m=7168,t=5,p=1$c2FsdHNhbHRzYWx0$aGFzaA"));
    }

    #[test]
    fn verification_uses_the_stored_parameters() {
        let mut old = Passwords::new(9216, 4, 1).unwrap();
        let h = old.hash("pw-123456").unwrap();
        assert!(passwords().verify("pw-123456", &h));
    }

    #[test]
    fn the_work_area_is_released_when_unused() {
        let mut p = passwords();
        assert!(p.work_area.is_empty(), "not held from the start");
        p.hash("once").unwrap();
        assert_eq!(p.work_area.len(), 7168, "kept after a hash");
        p.release_if_unused();
        assert_eq!(p.work_area.len(), 7168, "used since the last check");
        p.release_if_unused();
        assert!(p.work_area.is_empty());
        p.hash("again").unwrap();
        assert_eq!(p.work_area.len(), 7168);
    }
}
