//! The clock as a value: read once per event-loop turn and passed down, so protocol
//! code never reads time itself and tests can use any instant they like.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
}
