//! The exactly-once rules of one subscription, apart from any I/O: where it stands
//! (epoch + last seq delivered), what to do with a live publication, which entries
//! of a history page continue it, and how a resume request is answered. The session
//! feeds it events and performs what it decides; the property tests below drive it
//! through random interleavings against a model of a topic's history.

use std::{cmp::Ordering, sync::Arc};

use sluice_common::position::epoch_cmp;

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

    /// Decides on a live publication; moves to a newer epoch when `epoch` is one
    /// (its history replaced the old one: follow it from its first message).
    pub(crate) fn on_live(&mut self, epoch: &Arc<str>, seq: u64) -> Live {
        if self.epoch.as_ref() != Some(epoch) {
            let newer = self
                .epoch
                .as_deref()
                .is_none_or(|cur| epoch_cmp(epoch, cur) == Ordering::Greater);
            if !newer {
                return Live::Stale;
            }
            self.epoch = Some(epoch.clone());
            self.last = 0;
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
    /// topic at `head` in `current` epoch. The client must name the history it came
    /// from; a position past the head means it saw messages the topic lacks.
    pub(crate) fn resume(
        n: Option<u64>,
        theirs: Option<&str>,
        current: Option<&str>,
        head: u64,
    ) -> Resume {
        let Some(n) = n else {
            return Resume::Mismatch;
        };
        let n = n.max(1);
        match (theirs, current) {
            (Some(t), Some(c)) if t == c => {}
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn live_decisions() {
        let mut p = Position::at(Some(e("e1")), 5);
        assert_eq!(p.on_live(&e("e1"), 5), Live::Duplicate);
        assert_eq!(p.on_live(&e("e1"), 6), Live::Deliver);
        assert_eq!(p.on_live(&e("e1"), 9), Live::FillFrom { from: 6, until: 9 });
        // Epoch ids order by creation; an older one is stale, a newer one restarts.
        assert_eq!(p.on_live(&e("e0"), 7), Live::Stale);
        assert_eq!(p.on_live(&e("e2"), 1), Live::Deliver);
        assert_eq!(p.epoch().map(|x| &**x), Some("e2"));
        assert_eq!(p.last(), 0);
        let mut far = Position::at(Some(e("e1")), u64::MAX);
        assert_eq!(far.on_live(&e("e1"), u64::MAX), Live::Duplicate);
    }

    #[test]
    fn a_page_continues_only_from_the_next_seq_in_the_same_epoch() {
        let p = Position::at(Some(e("e1")), 3);
        let (a, b) = (e("e1"), e("e2"));
        assert_eq!(p.continues([(&a, 4), (&a, 5), (&a, 6)], 6), 2);
        assert_eq!(
            p.continues([(&a, 5), (&a, 6)], 9),
            0,
            "trimmed: starts late"
        );
        assert_eq!(
            p.continues([(&a, 4), (&a, 6)], 9),
            1,
            "a hole inside the page"
        );
        assert_eq!(p.continues([(&b, 4)], 9), 0, "another history");
        assert_eq!(p.continues(std::iter::empty(), 9), 0);
    }

    #[test]
    fn resume_rules() {
        use Resume::*;
        assert_eq!(Position::resume(None, None, Some("e"), 5), Mismatch);
        assert_eq!(Position::resume(Some(3), None, Some("e"), 5), Mismatch);
        assert_eq!(Position::resume(Some(3), Some("x"), Some("e"), 5), Mismatch);
        assert_eq!(Position::resume(Some(3), Some("e"), None, 0), Mismatch);
        assert_eq!(
            Position::resume(Some(3), Some("e"), Some("e"), 5),
            Replay(3)
        );
        assert_eq!(
            Position::resume(Some(0), Some("e"), Some("e"), 5),
            Replay(1)
        );
        assert_eq!(Position::resume(Some(6), Some("e"), Some("e"), 5), AtHead);
        assert_eq!(Position::resume(Some(7), Some("e"), Some("e"), 5), Mismatch);
        assert_eq!(
            Position::resume(Some(u64::MAX), Some("e"), Some("e"), u64::MAX),
            Replay(u64::MAX)
        );
    }

    /// A topic as Redis keeps it: epochs in order, each a run of seqs from 1, of
    /// which history retains the last `keep` of the current epoch.
    #[derive(Debug, Clone)]
    struct Topic {
        /// (epoch, head) per epoch so far.
        epochs: Vec<(Arc<str>, u64)>,
        keep: u64,
    }

    impl Topic {
        fn current(&self) -> (Arc<str>, u64) {
            self.epochs.last().cloned().expect("one epoch")
        }

        /// A history read from `from`, at most `limit`, as the broker answers it.
        fn history(&self, from: u64, limit: u64) -> Vec<(Arc<str>, u64)> {
            let (epoch, head) = self.current();
            let oldest = head.saturating_sub(self.keep) + 1;
            (from.max(oldest)..=head)
                .take(limit as usize)
                .map(|s| (epoch.clone(), s))
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// The engine publishes one message (the reader may or may not see it).
        Publish { seen: bool },
        /// The reader delivers a message it already delivered (a re-read).
        Redeliver,
        /// Redis loses the topic: the next publish starts a new epoch.
        LoseHistory,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                8 => Just(Step::Publish { seen: true }),
                2 => Just(Step::Publish { seen: false }),
                2 => Just(Step::Redeliver),
                1 => Just(Step::LoseHistory),
            ],
            1..120,
        )
    }

    /// What the client saw.
    #[derive(Debug, Default)]
    struct Client {
        got: Vec<(Arc<str>, u64)>,
        /// The session was cut (4008): the client knows to resume.
        cut: bool,
    }

    /// Runs the session's side of the rules: a live publication through
    /// `on_live`, gaps filled from history a page at a time.
    fn live(
        pos: &mut Position,
        topic: &Topic,
        epoch: &Arc<str>,
        seq: u64,
        page: u64,
        c: &mut Client,
    ) {
        match pos.on_live(epoch, seq) {
            Live::Deliver => {
                c.got.push((epoch.clone(), seq));
                pos.delivered(seq);
            }
            Live::Duplicate | Live::Stale => {}
            Live::FillFrom { until, .. } => {
                while pos.next() < until {
                    let read = topic.history(pos.next(), page);
                    let n = pos.continues(read.iter().map(|(e, s)| (e, *s)), until);
                    if n == 0 {
                        c.cut = true;
                        return;
                    }
                    for (e, s) in read.into_iter().take(n) {
                        c.got.push((e, s));
                        pos.delivered(s);
                    }
                }
                c.got.push((epoch.clone(), seq));
                pos.delivered(seq);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the interleaving of publishes the reader saw or missed,
        /// re-reads, history trimming and lost histories, a subscription delivers
        /// each message at most once, in seq order within an epoch, and without a
        /// silent gap: a run only skips ahead when the client is told (a new epoch
        /// in the envelope, or a cut it resumes from).
        #[test]
        fn exactly_once_in_order_or_told(
            start_head in 0u64..20,
            keep in 1u64..30,
            page in 1u64..8,
            steps in steps(),
        ) {
            let mut topic = Topic { epochs: vec![(e("e00"), start_head)], keep };
            let mut next_epoch = 1;
            // Subscribed fresh at the head: live continues after it.
            let (epoch, head) = topic.current();
            let mut pos = Position::at(Some(epoch), head);
            let mut c = Client::default();
            let mut last_live: Option<(Arc<str>, u64)> = None;
            let mut lost = false;
            for step in steps {
                if c.cut {
                    break;
                }
                match step {
                    Step::Publish { seen } => {
                        if lost {
                            topic.epochs.push((e(&format!("e{next_epoch:02}")), 0));
                            next_epoch += 1;
                            lost = false;
                        }
                        let last = topic.epochs.last_mut().expect("epoch");
                        last.1 += 1;
                        let (epoch, seq) = (last.0.clone(), last.1);
                        if seen {
                            live(&mut pos, &topic, &epoch, seq, page, &mut c);
                            last_live = Some((epoch, seq));
                        }
                    }
                    Step::Redeliver => {
                        if let Some((epoch, seq)) = last_live.clone() {
                            live(&mut pos, &topic, &epoch, seq, page, &mut c);
                        }
                    }
                    Step::LoseHistory => lost = true,
                }
            }
            // Per epoch: strictly consecutive, no duplicate; epochs only move forward.
            for w in c.got.windows(2) {
                let ((e0, s0), (e1, s1)) = (&w[0], &w[1]);
                if e0 == e1 {
                    prop_assert_eq!(*s1, s0 + 1, "gap or duplicate in {:?}", c.got);
                } else {
                    prop_assert!(epoch_cmp(e1, e0) == Ordering::Greater, "older epoch after newer: {:?}", c.got);
                }
            }
            // The first message continues the subscribe position (or opens a new epoch).
            if let Some((e0, s0)) = c.got.first() {
                if **e0 == *"e00" {
                    prop_assert_eq!(*s0, start_head + 1);
                }
            }
            // Nothing is missing from the current epoch unless the client was told.
            if !c.cut {
                if let Some((epoch, _)) = c.got.last() {
                    let (cur, head) = topic.current();
                    let seen_live = last_live.as_ref().map(|(e, s)| (e.clone(), *s));
                    if *epoch == cur && seen_live.as_ref().is_some_and(|(e, _)| *e == cur) {
                        let want = seen_live.map(|(_, s)| s).unwrap_or(head);
                        prop_assert_eq!(pos.last(), want);
                    }
                }
            }
        }
    }
}
