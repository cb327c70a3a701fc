//! Histograms on the delivery path, kept in atomics with fixed buckets.
//!
//! The Prometheus exporter's histograms buffer every sample (with a clock read)
//! until the next scrape or upkeep, and record `n` equal samples as `n` pushes. The
//! delivery path records once per burst and per flush, and the frame-size histogram
//! stands for every frame written: at a million frames a second those pushes cost
//! about 5 % of the node's CPU. Here a sample is one bucket index and two atomic
//! adds, whatever `n` is, and the scrape renders the same text format.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

#[derive(Debug)]
pub struct FixedHistogram {
    name: &'static str,
    help: &'static str,
    /// Upper bounds (`le`), ascending; a last bucket, `+Inf`, follows them.
    bounds: &'static [f64],
    /// Samples per bucket (not cumulative); one more than `bounds`.
    counts: Box<[AtomicU64]>,
    /// The sum of all samples, as `f64` bits.
    sum: AtomicU64,
}

impl FixedHistogram {
    pub fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        FixedHistogram {
            name,
            help,
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    /// Records `n` samples of `value`.
    pub fn record_many(&self, value: f64, n: u64) {
        if n == 0 || value.is_nan() {
            return;
        }
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.counts[bucket].fetch_add(n, Ordering::Relaxed);
        let add = value * n as f64;
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + add).to_bits())
            });
    }

    /// Appends the histogram in the Prometheus text format (cumulative buckets).
    pub fn render(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut total = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_a_bound_holds_its_own_value() {
        let h = FixedHistogram::new("x", "help text", &[1.0, 4.0, 16.0]);
        h.record(0.5);
        h.record(4.0);
        h.record_many(10.0, 3);
        h.record(100.0);
        h.record(f64::NAN);
        h.record_many(2.0, 0);
        let mut text = String::new();
        h.render(&mut text);
        assert_eq!(
            text,
            "# HELP x help text\n# TYPE x histogram\n\
             x_bucket{le=\"1\"} 1\nx_bucket{le=\"4\"} 2\nx_bucket{le=\"16\"} 5\n\
             x_bucket{le=\"+Inf\"} 6\nx_sum 134.5\nx_count 6\n"
        );
    }
}
