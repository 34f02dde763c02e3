//! A token bucket driven by the caller's clock (GCRA, the algorithm governor uses):
//! `count` requests per `per`, at most `burst` at once. Time is an argument, so the
//! exact boundary (the request that just passes, the one just refused) is testable.

use std::time::{Duration, Instant};

use crate::config::Rate;

/// One client's budget of requests.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Time one request costs: `per / count`.
    interval: Duration,
    /// How far ahead of `now` the bucket may be spent: `interval * (burst - 1)`.
    tolerance: Duration,
    /// When the bucket would be full again if nothing more were spent (the
    /// "theoretical arrival time"); None while full.
    full_at: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: Rate) -> Self {
        let interval = rate.interval().max(Duration::from_nanos(1));
        TokenBucket {
            interval,
            tolerance: interval
                .checked_mul(rate.burst.saturating_sub(1))
                .unwrap_or(Duration::MAX),
            full_at: None,
        }
    }

    /// Takes one request's worth from the bucket if it holds one at `now`.
    pub fn check(&mut self, now: Instant) -> bool {
        let full_at = self.full_at.map_or(now, |at| at.max(now));
        if full_at.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        // No deadline from a configured rate comes near Instant's end; saturate anyway.
        self.full_at = Some(full_at.checked_add(self.interval).unwrap_or(full_at));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(count: u32, burst: u32) -> TokenBucket {
        TokenBucket::new(Rate {
            count,
            per: Duration::from_secs(1),
            burst,
        })
    }

    #[test]
    fn a_burst_then_one_request_per_interval_exactly() {
        let t0 = Instant::now();
        let mut b = bucket(5, 3);
        assert!((0..3).all(|_| b.check(t0)), "the burst");
        assert!(!b.check(t0), "one more at once");
        // One request every 200 ms comes back, not a nanosecond earlier.
        let ms = Duration::from_millis;
        assert!(!b.check(t0 + ms(200) - Duration::from_nanos(1)));
        assert!(b.check(t0 + ms(200)));
        assert!(!b.check(t0 + ms(200)));
        // A long pause refills up to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.check(later)));
        assert!(!b.check(later));
    }

    #[test]
    fn the_allowed_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut b = bucket(10, 1);
        for i in 0..10_000u32 {
            assert!(b.check(t0 + Duration::from_millis(100) * i), "request {i}");
        }
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate {
            count: 1,
            per: Duration::from_secs(3600),
            burst: 1_000_000,
        });
        assert!((0..1000).all(|_| b.check(t0)));
        let mut b = bucket(1_000_000, 1);
        assert!(b.check(t0));
        assert!(b.check(t0 + Duration::from_micros(1)));
    }
}
