//! A session's deadlines (heartbeat, conflation tick, idle timeout, token expiry),
//! all served by the one timer of its loop.

use std::time::Duration;

use tokio::time::Instant;

/// The session's deadlines, all served by one timer.
#[derive(Debug)]
pub(super) struct Deadlines {
    pub(super) heartbeat: Instant,
    /// Background mode only.
    pub(super) conflate: Instant,
    pub(super) idle: Instant,
    /// Authenticated sessions only.
    pub(super) expiry: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    Heartbeat,
    Conflate,
    Idle,
    Expiry,
}

impl Deadlines {
    /// The active deadlines, in the order they are served when several are due.
    fn active(&self, background: bool) -> impl Iterator<Item = (Due, Instant)> {
        [
            Some((Due::Heartbeat, self.heartbeat)),
            background.then_some((Due::Conflate, self.conflate)),
            Some((Due::Idle, self.idle)),
            self.expiry.map(|t| (Due::Expiry, t)),
        ]
        .into_iter()
        .flatten()
    }

    pub(super) fn next(&self, background: bool) -> Instant {
        self.active(background)
            .map(|(_, t)| t)
            .min()
            .unwrap_or(self.idle)
    }

    /// The first deadline (in serving order) that has passed at `now`.
    pub(super) fn due(&self, now: Instant, background: bool) -> Option<Due> {
        self.active(background)
            .find(|(_, t)| *t <= now)
            .map(|(d, _)| d)
    }
}

/// `now + d`, or the far future when that is out of range.
pub(super) fn deadline_in(d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}
