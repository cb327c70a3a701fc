//! Per-connection rate limits: client frames (token bucket; repeated refusals end
//! the session with 4029) and subscribe requests per topic class.

use std::{collections::HashMap, num::NonZeroU32, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
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

pub(super) struct Limits {
    messages: DefaultDirectRateLimiter,
    strikes: u32,
    max_strikes: u32,
    window_start: Instant,
    subscribes: HashMap<TopicClass, DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("strikes", &self.strikes)
            .finish_non_exhaustive()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub(super) fn new(cfg: &Config) -> Self {
        let quota = Quota::per_second(nz(cfg.message_rate)).allow_burst(nz(cfg.message_burst));
        Limits {
            messages: RateLimiter::direct(quota),
            strikes: 0,
            max_strikes: cfg.rate_limit_strikes,
            window_start: Instant::now(),
            subscribes: HashMap::new(),
        }
    }

    /// Takes one frame from the connection's bucket.
    pub(super) fn message(&mut self) -> Verdict {
        if self.messages.check().is_ok() {
            return Verdict::Allow;
        }
        if self.window_start.elapsed() > STRIKE_WINDOW {
            self.strikes = 0;
            self.window_start = Instant::now();
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }

    /// Takes one subscribe of `class`; false when the class's budget is spent.
    pub(super) fn subscribe(&mut self, class: TopicClass, cfg: &Config) -> bool {
        self.subscribes
            .entry(class)
            .or_insert_with(|| {
                let (burst, per_minute) = cfg.subscribe_limits.get(class);
                RateLimiter::direct(Quota::per_minute(nz(per_minute)).allow_burst(nz(burst)))
            })
            .check()
            .is_ok()
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
        let mut l = Limits::new(&cfg);
        let verdicts: Vec<Verdict> = (0..7).map(|_| l.message()).collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Allow, Allow, Allow, Refuse, Refuse, Refuse, Abuse]
        );
    }

    #[test]
    fn subscribe_budgets_are_per_class() {
        let mut cfg = Config::for_tests();
        cfg.subscribe_limits = crate::config::SubscribeLimits::parse("risk=2/1").unwrap();
        let mut l = Limits::new(&cfg);
        assert!(l.subscribe(TopicClass::Risk, &cfg));
        assert!(l.subscribe(TopicClass::Risk, &cfg));
        assert!(!l.subscribe(TopicClass::Risk, &cfg));
        assert!(l.subscribe(TopicClass::Trading, &cfg));
    }
}
