//! Per-connection rate limits: client frames (token bucket; repeated refusals end
//! the session with 4029) and subscribe requests per topic class.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, TopicClass};

/// Refusals are counted within this window; a quieter client starts afresh.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Allow,
    /// Refuse it with `RATE_LIMIT_EXCEEDED`.
    Refuse,
    /// Too many refusals: close with 4029.
    Abuse,
}

/// A token bucket as the generic cell rate algorithm keeps it: one timestamp, the
/// "theoretical arrival time" of the next cell. `burst` cells may pass at once, then
/// one per `every`. (The same algorithm and arithmetic as the `governor` crate, in
/// 16 bytes instead of its 72, on tokio's clock.)
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tat: Option<Instant>,
}

impl Bucket {
    fn check(&mut self, every: Duration, burst: u32, now: Instant) -> bool {
        let every = every.max(Duration::from_nanos(1));
        let tolerance = every.saturating_mul(burst.max(1) - 1);
        let tat = self.tat.unwrap_or(now);
        // Refused while `now` is earlier than `tat - tolerance`.
        if now.checked_add(tolerance).is_some_and(|t| t < tat) {
            return false;
        }
        self.tat = Some(tat.max(now) + every);
        true
    }
}

/// `per` divided into `n` equal intervals (`n` at least 1).
fn interval(per: Duration, n: u32) -> Duration {
    per / n.max(1)
}

#[derive(Debug)]
pub(super) struct Limits {
    messages: Bucket,
    strikes: u32,
    window_start: Instant,
    /// One budget per class used so far; a few at most, so a list sized exactly.
    subscribes: Vec<(TopicClass, Bucket)>,
}

impl Limits {
    pub(super) fn new() -> Self {
        Limits {
            messages: Bucket::default(),
            strikes: 0,
            window_start: Instant::now(),
            subscribes: Vec::new(),
        }
    }

    /// Takes one frame from the connection's bucket (`SLUICE_MESSAGE_RATE` per
    /// second, bursts of `SLUICE_MESSAGE_BURST`).
    pub(super) fn message(&mut self, cfg: &Config) -> Verdict {
        let every = interval(Duration::from_secs(1), cfg.message_rate);
        if self
            .messages
            .check(every, cfg.message_burst.max(1), Instant::now())
        {
            return Verdict::Allow;
        }
        self.strike(1, cfg)
    }

    /// Counts `n` refusals (a refused frame, or the refused entries of a
    /// `subscribe`): `Abuse` once `SLUICE_RATE_LIMIT_STRIKES` fall within the window.
    pub(super) fn strike(&mut self, n: u64, cfg: &Config) -> Verdict {
        if n == 0 {
            return Verdict::Allow;
        }
        if self.window_start.elapsed() > STRIKE_WINDOW {
            self.strikes = 0;
            self.window_start = Instant::now();
        }
        self.strikes = self
            .strikes
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.strikes >= cfg.rate_limit_strikes {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }

    /// Takes one subscribe of `class`; false when the class's budget is spent.
    pub(super) fn subscribe(&mut self, class: TopicClass, cfg: &Config) -> bool {
        let i = match self.subscribes.iter().position(|(c, _)| *c == class) {
            Some(i) => i,
            None => {
                self.subscribes.reserve_exact(1);
                self.subscribes.push((class, Bucket::default()));
                self.subscribes.len() - 1
            }
        };
        let (burst, per_minute) = cfg.subscribe_limits.get(class);
        let every = interval(Duration::from_secs(60), per_minute);
        self.subscribes[i]
            .1
            .check(every, burst.max(1), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_refused_then_called_abuse() {
        let mut cfg = Config::for_tests();
        cfg.message_rate = 1;
        cfg.message_burst = 3;
        cfg.rate_limit_strikes = 4;
        let mut l = Limits::new();
        let verdicts: Vec<Verdict> = (0..7).map(|_| l.message(&cfg)).collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Allow, Allow, Allow, Refuse, Refuse, Refuse, Abuse]
        );
    }

    #[test]
    fn refused_entries_add_up_to_abuse() {
        let mut cfg = Config::for_tests();
        cfg.rate_limit_strikes = 10;
        let mut l = Limits::new();
        assert_eq!(l.strike(0, &cfg), Verdict::Allow);
        assert_eq!(l.strike(4, &cfg), Verdict::Refuse);
        assert_eq!(l.strike(5, &cfg), Verdict::Refuse);
        assert_eq!(l.strike(1, &cfg), Verdict::Abuse);
        let mut l = Limits::new();
        assert_eq!(l.strike(u64::MAX, &cfg), Verdict::Abuse, "saturates");
    }

    #[test]
    fn a_bucket_passes_a_burst_then_one_per_interval() {
        let every = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut b = Bucket::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!((0..3).all(|_| b.check(every, 3, at(0))));
        assert!(!b.check(every, 3, at(0)));
        assert!(!b.check(every, 3, at(99)));
        assert!(b.check(every, 3, at(100)));
        assert!(!b.check(every, 3, at(150)));
        // Quiet for a while: the burst is back, no more.
        assert!((0..3).all(|_| b.check(every, 3, at(10_000))));
        assert!(!b.check(every, 3, at(10_000)));
        // A burst of one is a plain rate.
        let mut one = Bucket::default();
        assert!(one.check(every, 1, at(0)));
        assert!(!one.check(every, 1, at(50)));
        assert!(one.check(every, 1, at(100)));
    }

    #[test]
    fn subscribe_budgets_are_per_class() {
        let mut cfg = Config::for_tests();
        cfg.subscribe_limits = crate::config::SubscribeLimits::parse("risk=2/1").unwrap();
        let mut l = Limits::new();
        assert!(l.subscribe(TopicClass::Risk, &cfg));
        assert!(l.subscribe(TopicClass::Risk, &cfg));
        assert!(!l.subscribe(TopicClass::Risk, &cfg));
        assert!(l.subscribe(TopicClass::Trading, &cfg));
    }
}
