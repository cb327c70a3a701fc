//! A small seeded random number generator for the simulation.

/// xorshift64*: good enough for fake prices, no dependency.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the process id: each run differs.
    pub fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::from_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The same seed gives the same sequence (tests). The state must not be 0.
    pub fn from_seed(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Rounds to cents.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_within_their_bounds_and_a_seed_repeats() {
        let mut rng = Rng::from_seed(7);
        for _ in 0..10_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            let r = rng.range(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&r), "{r}");
            assert!(rng.below(5) < 5);
            assert_eq!(rng.below(0), 0);
        }
        let (mut a, mut b) = (Rng::from_seed(42), Rng::from_seed(42));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_eq!(xs.iter().collect::<std::collections::HashSet<_>>().len(), 5);
        assert_eq!(Rng::from_seed(0).next_u64(), Rng::from_seed(1).next_u64());
    }

    #[test]
    fn round2_rounds_to_cents() {
        assert_eq!(round2(1.234), 1.23);
        assert_eq!(round2(1.235_1), 1.24);
        assert_eq!(round2(-0.004), -0.0);
    }
}
