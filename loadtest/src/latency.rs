//! Latency histograms (HdrHistogram, nanoseconds, 3 significant digits): one per
//! worker thread, merged at the end, reported in milliseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies recorded by one worker, or merged from many.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

/// Percentiles in milliseconds, as the report prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Longest latency tracked exactly (10 minutes); longer ones are clamped to it.
const HIGHEST_NS: u64 = 600_000_000_000;

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1_000, HIGHEST_NS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one latency; values outside the tracked range are clamped.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(1_000, HIGHEST_NS));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.hist.is_empty() {
            return Percentiles::default();
        }
        let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
        Percentiles {
            p50: ms(self.hist.value_at_quantile(0.50)),
            p90: ms(self.hist.value_at_quantile(0.90)),
            p99: ms(self.hist.value_at_quantile(0.99)),
            p999: ms(self.hist.value_at_quantile(0.999)),
            max: ms(self.hist.max()),
            mean: (self.hist.mean() / 1e6 * 1000.0).round() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        // 1..=1000 microseconds, once each.
        for us in 1..=1000u64 {
            l.record_ns(us * 1000);
        }
        let p = l.percentiles();
        assert_eq!(l.count(), 1000);
        assert!((p.p50 - 0.5).abs() <= 0.001, "{p:?}");
        assert!((p.p99 - 0.99).abs() <= 0.001, "{p:?}");
        assert!((p.p999 - 0.999).abs() <= 0.001, "{p:?}");
        assert!((p.max - 1.0).abs() <= 0.001, "{p:?}");
        assert!((p.mean - 0.5005).abs() <= 0.001, "{p:?}");
    }

    #[test]
    fn merged_workers_equal_one_histogram() {
        let (mut a, mut b, mut all) = (Latencies::new(), Latencies::new(), Latencies::new());
        for i in 0..5000u64 {
            let v = 1_000 + i * 7919 % 50_000_000;
            if i % 3 == 0 { &mut a } else { &mut b }.record_ns(v);
            all.record_ns(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), 5000);
        assert_eq!(a.percentiles(), all.percentiles());
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut l = Latencies::new();
        l.record_ns(0);
        l.record_ns(u64::MAX);
        assert_eq!(l.count(), 2);
        assert!(l.percentiles().max >= 599_000.0);
    }

    #[test]
    fn empty_reports_zeros() {
        assert_eq!(Latencies::new().percentiles(), Percentiles::default());
    }
}
