//! Latency samples and their percentiles, and small rate/ratio helpers.
//!
//! Every latency is kept (microseconds in a `u32`, 4 bytes a sample), so percentiles
//! are exact rather than bucketed; runs are bounded, so the memory is too.

/// Latency samples of one measured phase.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples_us: Vec<u32>,
    max_us: u32,
}

/// The summary a scenario reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    /// Records one latency given in nanoseconds (negative clock skew cannot happen with
    /// one monotonic clock, but saturates to 0 rather than wrapping).
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1000).min(u64::from(u32::MAX)) as u32;
        self.max_us = self.max_us.max(us);
        self.samples_us.push(us);
    }

    pub fn clear(&mut self) {
        self.samples_us.clear();
        self.max_us = 0;
    }

    /// Percentiles by nearest rank; reorders the samples.
    pub fn summary(&mut self) -> Summary {
        let count = self.samples_us.len() as u64;
        let ms = |us: u32| f64::from(us) / 1000.0;
        Summary {
            count,
            p50_ms: ms(percentile(&mut self.samples_us, 50.0)),
            p90_ms: ms(percentile(&mut self.samples_us, 90.0)),
            p99_ms: ms(percentile(&mut self.samples_us, 99.0)),
            p999_ms: ms(percentile(&mut self.samples_us, 99.9)),
            max_ms: ms(self.max_us),
        }
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `samples`: the smallest value with
/// at least p% of the samples at or below it. 0 for no samples. Reorders `samples`.
pub fn percentile(samples: &mut [u32], p: f64) -> u32 {
    if samples.is_empty() {
        return 0;
    }
    let n = samples.len();
    // The small subtraction keeps float error (0.999 * 1000 = 999.0000000000001) from
    // pushing an exact rank up by one.
    let rank = ((p / 100.0) * n as f64 - 1e-9).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    *samples.select_nth_unstable(index).1
}

/// `a / b`, or 0 when `b` is 0 (a rate over an empty interval, a ratio to nothing).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 50.0), 50);
        assert_eq!(percentile(&mut v, 99.0), 99);
        assert_eq!(percentile(&mut v, 100.0), 100);
        assert_eq!(percentile(&mut v, 0.1), 1);
        let mut one = vec![7];
        assert_eq!(percentile(&mut one, 99.0), 7);
        assert_eq!(percentile(&mut [], 50.0), 0);
        // 1000 samples: p99.9 is the 999th smallest.
        let mut v: Vec<u32> = (0..1000).collect();
        assert_eq!(percentile(&mut v, 99.9), 998);
        // Ranks round up: 5 samples, p50 = 3rd smallest.
        let mut v = vec![10, 40, 20, 50, 30];
        assert_eq!(percentile(&mut v, 50.0), 30);
        assert_eq!(percentile(&mut v, 90.0), 50);
    }

    #[test]
    fn summary_in_milliseconds() {
        let mut l = Latencies::default();
        for us in 1..=1000u64 {
            l.record_ns(us * 1000 + 999);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_ms, 0.5);
        assert_eq!(s.p99_ms, 0.99);
        assert_eq!(s.max_ms, 1.0);
        l.clear();
        assert_eq!(l.summary(), Summary::default());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert_eq!(ratio(3.0, 0.0), 0.0);
    }
}
