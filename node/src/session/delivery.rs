//! Exactly-once, in-order delivery per topic, whatever mix of replay, snapshot and
//! live publications reaches the session.
//!
//! Each subscription remembers the epoch and the last seq it delivered. A live
//! publication at or below that seq is a duplicate (it was already replayed) and is
//! dropped; one above `last + 1` reveals a gap (the node started reading the topic
//! after the subscriber's position) and the gap is filled from history first. The
//! outbox itself buffers live publications while a subscribe replays, so the hand-over
//! from replay to live needs no extra buffer and no lock.

use std::collections::HashMap;

use sluice_common::{protocol::FrameType, Topic};

use super::{
    actor::Session,
    outbound::FrameOptions,
    position::{Live, Position},
    SessionEnd,
};
use crate::{broker::BrokerError, publication::Pub};

/// Publications fetched from history per request.
pub(super) const PAGE: usize = 500;

/// The delivery position of one subscription.
#[derive(Debug, Default)]
pub(crate) struct SubState {
    /// Where delivery stands, and the exactly-once rules ([`Position`]).
    pub(super) pos: Position,
    /// Background mode: the newest message not yet delivered.
    pub(super) pending: Option<Pub>,
    /// Batching and compression, as the subscribe asked.
    pub(super) opts: FrameOptions,
}

/// A session's subscriptions by topic. Most sessions hold a few, kept in a list
/// sized to fit (a hash map starts at four slots); past [`Subs::FEW`] they move to a
/// hash map so lookups per publication stay constant-time.
#[derive(Debug)]
pub(crate) enum Subs {
    Few(Vec<(Topic, SubState)>),
    Many(HashMap<Topic, SubState>),
}

impl Default for Subs {
    fn default() -> Self {
        Subs::Few(Vec::new())
    }
}

impl Subs {
    const FEW: usize = 8;

    pub(crate) fn len(&self) -> usize {
        match self {
            Subs::Few(v) => v.len(),
            Subs::Many(m) => m.len(),
        }
    }

    pub(crate) fn get(&self, topic: &Topic) -> Option<&SubState> {
        match self {
            Subs::Few(v) => v.iter().find(|(t, _)| t == topic).map(|(_, s)| s),
            Subs::Many(m) => m.get(topic),
        }
    }

    pub(crate) fn get_mut(&mut self, topic: &Topic) -> Option<&mut SubState> {
        match self {
            Subs::Few(v) => v.iter_mut().find(|(t, _)| t == topic).map(|(_, s)| s),
            Subs::Many(m) => m.get_mut(topic),
        }
    }

    pub(crate) fn contains_key(&self, topic: &Topic) -> bool {
        self.get(topic).is_some()
    }

    /// Adds or replaces the subscription of `topic`.
    pub(crate) fn insert(&mut self, topic: Topic, sub: SubState) {
        match self {
            Subs::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(t, _)| *t == topic) {
                    slot.1 = sub;
                } else if v.len() < Self::FEW {
                    v.reserve_exact(1);
                    v.push((topic, sub));
                } else {
                    let mut m: HashMap<Topic, SubState> = std::mem::take(v).into_iter().collect();
                    m.insert(topic, sub);
                    *self = Subs::Many(m);
                }
            }
            Subs::Many(m) => {
                m.insert(topic, sub);
            }
        }
    }

    pub(crate) fn remove(&mut self, topic: &Topic) -> Option<SubState> {
        match self {
            Subs::Few(v) => {
                let i = v.iter().position(|(t, _)| t == topic)?;
                let (_, sub) = v.swap_remove(i);
                if v.is_empty() {
                    *v = Vec::new();
                }
                Some(sub)
            }
            Subs::Many(m) => m.remove(topic),
        }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Topic> {
        let (few, many) = match self {
            Subs::Few(v) => (Some(v.iter().map(|(t, _)| t)), None),
            Subs::Many(m) => (None, Some(m.keys())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut SubState> {
        let (few, many) = match self {
            Subs::Few(v) => (Some(v.iter_mut().map(|(_, s)| s)), None),
            Subs::Many(m) => (None, Some(m.values_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

pub(super) fn broker_failure(e: BrokerError) -> SessionEnd {
    SessionEnd::Internal(format!("broker: {e}"))
}

impl<S, E> Session<S>
where
    S: futures_util::Sink<axum::extract::ws::Message, Error = E>
        + futures_util::Stream<Item = Result<axum::extract::ws::Message, E>>
        + Unpin
        + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    /// A publication from the hub. Returns its publish time when it was delivered
    /// live now (for the batch's latency sample).
    pub(super) async fn on_publication(&mut self, p: Pub) -> Result<Option<i64>, SessionEnd> {
        let by_pattern = self.patterns.is_some() && self.deliver_to_patterns(&p).await?;
        let live = by_pattern.then_some(p.published_ms);
        Ok(self.on_concrete_publication(p).await?.or(live))
    }

    /// A publication for the concrete subscription of its topic, if one is held.
    async fn on_concrete_publication(&mut self, p: Pub) -> Result<Option<i64>, SessionEnd> {
        let background = self.background;
        let Some(sub) = self.subs.get_mut(&p.topic) else {
            return Ok(None); // unsubscribed meanwhile
        };
        let same_epoch = sub.pos.epoch() == Some(&p.epoch);
        // Another epoch may continue ours (a Redis takeover): the broker knows.
        let fork = (!same_epoch)
            .then(|| self.ctx.broker.fork_of(&p.topic, &p.epoch))
            .flatten();
        let verdict = sub.pos.on_live(&p.epoch, p.seq, fork.as_ref());
        if verdict == Live::Forked {
            // This connection delivered a message the new master lacks: its client
            // resumes, and is answered `recovered: false` with the snapshot.
            return Err(SessionEnd::SlowConsumer(
                "a Redis failover lost a message this connection delivered",
            ));
        }
        if !same_epoch && verdict != Live::Stale {
            // The topic restarted under a new epoch (its history was lost), or goes
            // on in a continuation: what was pending belongs to the old one (and
            // may be a message the new master lacks).
            sub.pending = None;
        }
        if matches!(verdict, Live::Duplicate | Live::Stale) {
            return Ok(None); // delivered already, or a late message of an older history
        }
        if background && p.kind != FrameType::Alert {
            if sub.pending.as_ref().is_none_or(|q| q.seq < p.seq) {
                sub.pending = Some(p);
            }
            return Ok(None);
        }
        if background {
            // An alert is never conflated: it goes out now, after the newest
            // conflated message of its topic, which precedes it.
            if let Some(q) = sub.pending.take().filter(|q| q.seq < p.seq) {
                self.deliver(&q).await?;
            }
            self.deliver(&p).await?;
            return Ok(Some(p.published_ms));
        }
        let topic = p.topic.clone();
        if !self.fill_gap(&topic, p.seq).await? {
            return Err(SessionEnd::SlowConsumer(
                "missed messages are no longer in history",
            ));
        }
        self.deliver(&p).await?;
        // Publish-to-write latency is a live-path figure; replays would report the
        // age of history instead.
        Ok(Some(p.published_ms))
    }

    /// Delivers, from history, every message after the last delivered one and before
    /// `until`. Returns false when history no longer holds them.
    pub(super) async fn fill_gap(&mut self, topic: &Topic, until: u64) -> Result<bool, SessionEnd> {
        loop {
            let Some(sub) = self.subs.get(topic) else {
                return Ok(true);
            };
            let from = sub.pos.next();
            if from >= until {
                return Ok(true);
            }
            let want = ((until - from) as usize).min(PAGE);
            let page = self
                .ctx
                .broker
                .history(topic, from, want)
                .await
                .map_err(broker_failure)?;
            let Some(sub) = self.subs.get(topic) else {
                return Ok(true);
            };
            let n = sub
                .pos
                .continues(page.iter().map(|p| (&p.epoch, p.seq)), until);
            if n == 0 {
                return Ok(false);
            }
            for p in &page[..n] {
                self.deliver(p).await?;
            }
        }
    }

    /// Writes `p` and advances the subscription's position.
    pub(super) async fn deliver(&mut self, p: &Pub) -> Result<(), SessionEnd> {
        let opts = self.subs.get(&p.topic).map(|s| s.opts).unwrap_or_default();
        self.write_pub(p, opts).await?;
        if let Some(sub) = self.subs.get_mut(&p.topic) {
            sub.pos.delivered(p.seq);
            if sub.pending.as_ref().is_some_and(|q| q.seq <= p.seq) {
                sub.pending = None;
            }
        }
        Ok(())
    }

    /// Background mode tick: the newest pending message of each topic.
    pub(super) async fn flush_conflated(&mut self) -> Result<(), SessionEnd> {
        self.flush_pattern_pending().await?;
        let pending: Vec<Pub> = self
            .subs
            .values_mut()
            .filter_map(|s| s.pending.take())
            .collect();
        for p in pending {
            self.deliver(&p).await?;
        }
        Ok(())
    }

    /// Leaving background mode: everything since the last delivered message, in full.
    pub(super) async fn leave_background(&mut self) -> Result<(), SessionEnd> {
        self.flush_pattern_pending().await?;
        let pending: Vec<Pub> = self
            .subs
            .values_mut()
            .filter_map(|s| s.pending.take())
            .collect();
        for p in pending {
            if !self.fill_gap(&p.topic, p.seq).await? {
                return Err(SessionEnd::SlowConsumer(
                    "missed messages are no longer in history",
                ));
            }
            self.deliver(&p).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(i: usize) -> Topic {
        Topic::parse(&format!("t.{i}")).expect("topic")
    }

    #[test]
    fn subs_behave_as_a_map_below_and_above_the_few() {
        let mut subs = Subs::default();
        for i in 0..20 {
            subs.insert(topic(i), SubState::default());
            subs.insert(topic(i), SubState::default());
            assert_eq!(subs.len(), i + 1);
            assert!(matches!(subs, Subs::Few(_)) == (i < Subs::FEW));
        }
        for i in 0..20 {
            assert!(subs.contains_key(&topic(i)));
            subs.get_mut(&topic(i)).expect("present").pos = Position::at(None, i as u64);
        }
        assert_eq!(subs.get(&topic(7)).map(|s| s.pos.last()), Some(7));
        assert_eq!(subs.keys().count(), 20);
        assert_eq!(subs.values_mut().map(|s| s.pos.last()).sum::<u64>(), 190);
        assert!(subs.remove(&topic(3)).is_some());
        assert!(subs.remove(&topic(3)).is_none());
        assert!(!subs.contains_key(&topic(3)));
        assert_eq!(subs.len(), 19);

        let mut few = Subs::default();
        few.insert(topic(1), SubState::default());
        few.insert(topic(2), SubState::default());
        assert!(few.remove(&topic(1)).is_some());
        assert_eq!(few.keys().collect::<Vec<_>>(), [&topic(2)]);
        assert!(few.get(&topic(1)).is_none());
    }
}
