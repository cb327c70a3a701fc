//! The exactly-once rules of one subscription, apart from any I/O: where it stands
//! (epoch + last seq delivered), what to do with a live publication, which entries
//! of a history page continue it, and how a resume request is answered. The session
//! feeds it events and performs what it decides; the property tests below drive it
//! through random interleavings against a model of a topic's history.

use std::{cmp::Ordering, sync::Arc};

use sluice_common::position::{epoch_cmp, Fork};

/// Where a subscription stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The epoch of the messages delivered so far (`None` before the first one).
    epoch: Option<Arc<str>>,
    /// The seq of the last message delivered (or the seq a snapshot reflected).
    last: u64,
}

/// What to do with one live publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// The next one: deliver it.
    Deliver,
    /// Delivered already (by a replay, or twice on the live path): drop it.
    Duplicate,
    /// From an older history than the one being followed: drop it.
    Stale,
    /// Messages `from..until` are missing before it: read them from history first
    /// (the topic was followed after the position, or a read was lost), then
    /// deliver it.
    FillFrom { from: u64, until: u64 },
    /// From a continuation epoch ([`Fork`]) of the one being followed, which lacks
    /// a message this subscription delivered: the client must be told
    /// (`recovered: false` and the snapshot, through a resume).
    Forked,
}

/// How a resume request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Nothing missed: live continues after the head.
    AtHead,
    /// Replay from this seq, if history still starts there.
    Replay(u64),
    /// Not the history the client came from (no epoch, another epoch, past the head)
    /// or no resume asked: `recovered: false`, the snapshot if any.
    Mismatch,
}

impl Position {
    pub(crate) fn at(epoch: Option<Arc<str>>, last: u64) -> Self {
        Position { epoch, last }
    }

    pub(crate) fn epoch(&self) -> Option<&Arc<str>> {
        self.epoch.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// The first seq not yet delivered.
    pub(crate) fn next(&self) -> u64 {
        self.last.saturating_add(1)
    }

    /// Decides on a live publication; moves to a newer epoch when `epoch` is one.
    /// A continuation of the followed epoch (`fork`, where `epoch` came from) that
    /// still holds everything delivered is followed on from the same seq; one that
    /// lacks a delivered message is [`Live::Forked`] (nothing changes); any other
    /// newer epoch replaced the history: follow it from its first message.
    pub(crate) fn on_live(&mut self, epoch: &Arc<str>, seq: u64, fork: Option<&Fork>) -> Live {
        if self.epoch.as_ref() != Some(epoch) {
            let newer = self
                .epoch
                .as_deref()
                .is_none_or(|cur| epoch_cmp(epoch, cur) == Ordering::Greater);
            if !newer {
                return Live::Stale;
            }
            let continues = fork.filter(|f| self.epoch.as_ref() == Some(&f.parent));
            match continues {
                Some(f) if self.last >= f.at => return Live::Forked,
                Some(_) => {}
                None => self.last = 0,
            }
            self.epoch = Some(epoch.clone());
        }
        if seq <= self.last {
            Live::Duplicate
        } else if seq == self.next() {
            Live::Deliver
        } else {
            Live::FillFrom {
                from: self.next(),
                until: seq,
            }
        }
    }

    /// How many leading entries of a history page, asked for from [`Self::next`],
    /// continue this position without a gap, in its epoch and before `until`. Zero
    /// means history no longer holds the next message: the gap cannot be filled.
    pub(crate) fn continues<'a, I>(&self, page: I, until: u64) -> usize
    where
        I: IntoIterator<Item = (&'a Arc<str>, u64)>,
    {
        let mut expect = self.next();
        let mut n = 0;
        for (epoch, seq) in page {
            if seq >= until || seq != expect || self.epoch.as_ref() != Some(epoch) {
                break;
            }
            n += 1;
            expect = expect.saturating_add(1);
        }
        n
    }

    /// Records a delivered message (or a snapshot reflecting `seq`).
    pub(crate) fn delivered(&mut self, seq: u64) {
        self.last = self.last.max(seq);
    }

    /// Answers a subscribe with `resume_from_seq: n` (and the client's epoch) for a
    /// topic at `head` in `current` epoch, which continues `fork.parent` when it is
    /// a continuation epoch. The client must name the history it came from (the
    /// current epoch, or the parent when it saw nothing from `fork.at` on); a
    /// position past the head means it saw messages the topic lacks.
    pub(crate) fn resume(
        n: Option<u64>,
        theirs: Option<&str>,
        current: Option<&str>,
        head: u64,
        fork: Option<&Fork>,
    ) -> Resume {
        let Some(n) = n else {
            return Resume::Mismatch;
        };
        let n = n.max(1);
        match (theirs, current) {
            (Some(t), Some(c)) if t == c => {}
            // Last saw n - 1 of the parent: only seqs below the fork are shared.
            (Some(t), Some(_)) if fork.is_some_and(|f| *f.parent == *t && n <= f.at) => {}
            _ => return Resume::Mismatch,
        }
        if n <= head {
            Resume::Replay(n)
        } else if n - 1 == head {
            Resume::AtHead
        } else {
            Resume::Mismatch
        }
    }
}

#[cfg(test)]
#[path = "position_tests.rs"]
mod tests;
