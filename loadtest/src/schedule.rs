//! When each message is due: a constant-rate schedule computed from the start
//! instant (never from the previous send, so a late send does not shift the rest —
//! latency is measured from these scheduled times, which avoids coordinated
//! omission), and a Zipf choice of topic for the many-topics scenario.

use std::time::Duration;

/// The i-th message (from 0) is due at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct RateSchedule {
    rate: f64,
    count: u64,
}

impl RateSchedule {
    /// `rate` messages per second for `duration`. A rate of 0 sends nothing.
    pub fn new(rate: f64, duration: Duration) -> Self {
        let count = if rate > 0.0 {
            (rate * duration.as_secs_f64()).round() as u64
        } else {
            0
        };
        RateSchedule { rate, count }
    }

    /// How many messages the schedule holds.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Offset from the start at which message `i` is due.
    pub fn due(&self, i: u64) -> Duration {
        // Nanoseconds as an integer product first, so 10^6 messages do not
        // accumulate floating-point drift.
        let nanos = (i as u128 * 1_000_000_000u128) as f64 / self.rate;
        Duration::from_nanos(nanos as u64)
    }
}

/// The seeded generator the Zipf choice draws from (its home is `sluice_common::rng`).
pub use sluice_common::rng::Rng;

/// Picks topic indexes 0..n with probability proportional to 1 / (rank+1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n.max(1))
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    /// The probability of index `k`.
    pub fn probability(&self, k: usize) -> f64 {
        let prev = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exact_and_does_not_drift() {
        let s = RateSchedule::new(3.0, Duration::from_secs(10));
        assert_eq!(s.len(), 30);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(3), Duration::from_secs(1));
        let big = RateSchedule::new(100_000.0, Duration::from_secs(100));
        assert_eq!(big.len(), 10_000_000);
        // The ten-millionth message is due at exactly 100 s, to the nanosecond.
        assert_eq!(big.due(10_000_000), Duration::from_secs(100));
        assert_eq!(big.due(1), Duration::from_micros(10));
        // Monotonic.
        assert!((0..1000).all(|i| big.due(i) < big.due(i + 1)));
    }

    #[test]
    fn zero_rate_schedules_nothing() {
        let s = RateSchedule::new(0.0, Duration::from_secs(10));
        assert!(s.is_empty());
    }

    #[test]
    fn fractional_rates_round_the_count() {
        assert_eq!(RateSchedule::new(0.5, Duration::from_secs(9)).len(), 5);
        assert_eq!(
            RateSchedule::new(1.0, Duration::from_secs(2)).due(1),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn zipf_frequencies_follow_the_law() {
        let z = Zipf::new(100, 1.0);
        let mut rng = Rng::new(42);
        let mut counts = [0u32; 100];
        let n = 200_000;
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        // Rank 1 twice as likely as rank 2, ten times rank 10 (within 5 %).
        for k in [0usize, 1, 9, 49] {
            let expected = z.probability(k) * n as f64;
            let got = counts[k] as f64;
            assert!(
                (got - expected).abs() / expected < 0.05,
                "index {k}: {got} vs {expected}"
            );
        }
        assert!((z.probability(0) / z.probability(1) - 2.0).abs() < 1e-9);
        assert_eq!(counts.iter().map(|&c| c as usize).sum::<usize>(), n);
    }

    #[test]
    fn zipf_of_one_topic_always_picks_it() {
        let z = Zipf::new(1, 1.0);
        let mut rng = Rng::new(7);
        assert!((0..1000).all(|_| z.sample(&mut rng) == 0));
    }
}
