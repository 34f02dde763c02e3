//! The clock as a value: read once per event-loop turn and passed down, so protocol
//! code never reads time itself and tests can use any instant they like.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For deadlines and durations.
    pub instant: Instant,
    /// Wall clock, milliseconds since the Unix epoch, for timestamps and tokens.
    pub unix_ms: i64,
}

impl Now {
    pub fn read() -> Now {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Now {
            instant: Instant::now(),
            unix_ms,
        }
    }

    pub fn unix_secs(&self) -> i64 {
        self.unix_ms.div_euclid(1000)
    }

    /// The instant at which the Unix time `unix_secs` is reached, seen from this reading:
    /// this instant for a time already past, and for a time further ahead than an
    /// `Instant` can hold, the latest one it can (a token's `exp` may say anything, and
    /// no value may panic).
    pub fn instant_at(&self, unix_secs: i64) -> Instant {
        let ms = unix_secs
            .saturating_mul(1000)
            .saturating_sub(self.unix_ms)
            .max(0);
        let mut wait = Duration::from_millis(ms.unsigned_abs());
        loop {
            if let Some(at) = self.instant.checked_add(wait) {
                return at;
            }
            // Halving ends at zero, which always fits.
            wait /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_at_never_overflows() {
        let now = Now {
            instant: Instant::now(),
            unix_ms: 1_700_000_000_500,
        };
        assert_eq!(
            now.instant_at(1_700_000_010),
            now.instant + Duration::from_millis(9_500)
        );
        assert_eq!(now.instant_at(1_600_000_000), now.instant, "in the past");
        assert_eq!(now.instant_at(i64::MIN), now.instant);
        let far = now.instant_at(i64::MAX);
        assert!(far >= now.instant + Duration::from_secs(100 * 365 * 86_400));
        // Seen from the latest instant there is, any wait overflows `Instant + Duration`.
        let mut last = now.instant;
        let mut step = Duration::from_secs(u64::MAX);
        while !step.is_zero() {
            match last.checked_add(step) {
                Some(later) => last = later,
                None => step /= 2,
            }
        }
        let late = Now {
            instant: last,
            unix_ms: 0,
        };
        assert_eq!(late.instant_at(i64::MAX), last);
        assert_eq!(late.instant_at(1), last);
        // A clock reading at the extremes too.
        for unix_ms in [i64::MIN, i64::MAX] {
            let odd = Now { unix_ms, ..now };
            assert!(odd.instant_at(i64::MAX) >= now.instant);
            assert!(odd.instant_at(0) >= now.instant);
        }
    }
}
