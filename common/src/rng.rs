//! A small seeded pseudo-random generator (xorshift64*) for the demo engine's
//! simulation and the load generator's schedules: the same seed gives the same
//! sequence, it needs no dependency, and it is not for anything secret.

/// xorshift64*. The state is never 0 (xorshift would stay at 0 for ever).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The same seed gives the same sequence; seed 0 is taken as 1.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// Seeded from the clock and the process id: each run differs.
    pub fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32))
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
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform index below `n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_within_their_bounds_and_a_seed_repeats() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u), "{u}");
            let r = rng.range(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&r), "{r}");
            assert!(rng.below(5) < 5);
            assert_eq!(rng.below(0), 0);
        }
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_eq!(xs.iter().collect::<std::collections::HashSet<_>>().len(), 5);
        assert_eq!(Rng::new(0).next_u64(), Rng::new(1).next_u64());
        assert_ne!(Rng::new(2).next_u64(), Rng::new(3).next_u64());
    }

    #[test]
    fn the_sequence_is_xorshift64_star() {
        // The first output from state 1, worked by hand: x = 1 ^ (1 << 25) ^
        // ((1 ^ (1 << 25)) >> 27) = 0x2000001, times the multiplier.
        assert_eq!(
            Rng::new(1).next_u64(),
            0x200_0001u64.wrapping_mul(0x2545_F491_4F6C_DD1D)
        );
    }
}
