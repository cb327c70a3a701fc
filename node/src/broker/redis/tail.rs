//! The bounded in-memory tail of one followed topic: the last publications the
//! live reader delivered, gap-free and of one epoch, so that resumes on a hot topic
//! are answered without reading Redis.
//!
//! The tail always ends at the reader's position (the last seq it delivered or
//! knows to be the head); it is the reader's cursor and its cache in one. It only
//! grows at the end by the next seq, or at the front by entries read from the
//! stream that join it exactly (the follow's fill, read with the position it
//! ends at, or a history read), so whatever it holds is a contiguous run of one
//! epoch.

use std::{collections::VecDeque, sync::Arc};

use crate::publication::Pub;

/// Publications kept per followed topic: enough for a resume storm after a few
/// seconds of a hot topic, small enough that 100k followed topics cost at most
/// this many shared `Arc`s each (the frames are shared with the sessions). Capped
/// at `SLUICE_HISTORY_SIZE`, so the tail never answers a resume that the stream
/// (which keeps at least that many) would refuse.
pub const TAIL_SIZE: usize = 256;

/// Where a live publication stands against the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The next seq of the tail's epoch: deliver it.
    Next,
    /// At or below the position already reached: drop it.
    Seen,
    /// Publications are missing before it (a seq jump, or another epoch): read
    /// the stream first.
    Gap,
}

#[derive(Debug)]
pub struct Tail {
    /// The epoch of every publication held; `None` until the position is known.
    epoch: Option<Arc<str>>,
    /// The last seq of `epoch` the reader delivered or knows was published.
    head: u64,
    /// The last publications up to `head`, oldest first, at most `cap`.
    items: VecDeque<Pub>,
    cap: usize,
}

impl Tail {
    /// An empty tail whose position is not known yet.
    pub fn new(cap: usize) -> Self {
        Tail {
            epoch: None,
            head: 0,
            items: VecDeque::new(),
            cap,
        }
    }

    /// The position reached: `(epoch, last seq)`, if known.
    pub fn position(&self) -> Option<(&Arc<str>, u64)> {
        self.epoch.as_ref().map(|e| (e, self.head))
    }

    /// Starts over at a known position, forgetting what it held (a new epoch, or
    /// a stream trimmed past the tail).
    pub fn reset(&mut self, epoch: Option<Arc<str>>, head: u64) {
        self.epoch = epoch;
        self.head = head;
        self.items.clear();
    }

    /// How `p` relates to the position reached.
    pub fn fit(&self, p: &Pub) -> Fit {
        match &self.epoch {
            Some(e) if **e == *p.epoch => {
                if p.seq <= self.head {
                    Fit::Seen
                } else if p.seq == self.head + 1 {
                    Fit::Next
                } else {
                    Fit::Gap
                }
            }
            // The first message of a new epoch (or of a topic that had none) needs
            // no read: nothing came before it in its epoch.
            _ if p.seq == 1 => Fit::Next,
            _ => Fit::Gap,
        }
    }

    /// Appends `p` if it is [`Fit::Next`] (starting its epoch if new); returns
    /// whether it did.
    pub fn push(&mut self, p: &Pub) -> bool {
        if self.fit(p) != Fit::Next {
            return false;
        }
        if self.epoch.as_deref() != Some(&*p.epoch) {
            self.reset(Some(p.epoch.clone()), 0);
        }
        self.head = p.seq;
        if self.cap == 0 {
            return true;
        }
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(p.clone());
        true
    }

    /// Up to `limit` publications with `seq >= from`, when the tail can answer in
    /// full: it holds `from` and everything after it up to the position reached.
    /// `None` means ask Redis.
    pub fn read(&self, from: u64, limit: usize) -> Option<Vec<Pub>> {
        let first = self.items.front()?.seq;
        if from < first || from > self.head || limit == 0 {
            return None;
        }
        let skip = (from - first) as usize;
        Some(self.items.iter().skip(skip).take(limit).cloned().collect())
    }

    /// Joins publications read from history at the front of the tail, when they
    /// are of its epoch and reach it without a hole; the part past the front is
    /// ignored (the tail has it). Keeps the newest `cap`.
    pub fn backfill(&mut self, page: &[Pub]) {
        let Some(epoch) = &self.epoch else { return };
        // The seq the tail's front starts at (one past the head when empty).
        let front = self.items.front().map_or(self.head + 1, |p| p.seq);
        let older: Vec<&Pub> = page
            .iter()
            .filter(|p| *p.epoch == **epoch && p.seq < front)
            .collect();
        let Some(last) = older.last() else { return };
        let contiguous = last.seq + 1 == front
            && older.windows(2).all(|w| w[1].seq == w[0].seq + 1)
            && page.first().is_some_and(|p| *p.epoch == **epoch);
        if !contiguous {
            return;
        }
        let room = self.cap.saturating_sub(self.items.len());
        for p in older.iter().rev().take(room) {
            self.items.push_front((*p).clone());
        }
    }

    /// Publications held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::{protocol::FrameType, Topic};

    use super::*;
    use crate::publication::Publication;

    fn p(epoch: &str, seq: u64) -> Pub {
        Publication::new(
            Topic::parse("t").unwrap(),
            seq,
            epoch.into(),
            FrameType::Delta,
            1,
            "{}",
        )
    }

    fn seqs(v: &[Pub]) -> Vec<u64> {
        v.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn keeps_a_gap_free_run_and_refuses_jumps_and_repeats() {
        let mut t = Tail::new(8);
        t.reset(Some("e".into()), 3);
        assert_eq!(t.fit(&p("e", 3)), Fit::Seen);
        assert_eq!(t.fit(&p("e", 5)), Fit::Gap);
        assert!(!t.push(&p("e", 5)), "a jump is never appended");
        assert!(t.push(&p("e", 4)));
        assert!(t.push(&p("e", 5)));
        assert!(!t.push(&p("e", 5)), "a repeat is never appended");
        assert_eq!(t.position().map(|(e, s)| (&**e, s)), Some(("e", 5)));
        assert_eq!(t.len(), 2);
        assert_eq!(seqs(&t.read(4, 10).unwrap()), vec![4, 5]);
        assert_eq!(seqs(&t.read(5, 10).unwrap()), vec![5]);
        assert_eq!(seqs(&t.read(4, 1).unwrap()), vec![4]);
        assert!(t.read(3, 10).is_none(), "3 is before the tail");
        assert!(t.read(6, 10).is_none(), "6 is past the position");
    }

    #[test]
    fn is_bounded_and_keeps_the_newest() {
        let mut t = Tail::new(4);
        for s in 1..=10 {
            assert!(t.push(&p("e", s)));
        }
        assert_eq!(t.len(), 4);
        assert_eq!(seqs(&t.read(7, 100).unwrap()), vec![7, 8, 9, 10]);
        assert!(t.read(6, 100).is_none());
        let mut none = Tail::new(0);
        assert!(none.push(&p("e", 1)));
        assert!(none.is_empty());
        assert!(none.read(1, 1).is_none());
    }

    #[test]
    fn a_new_epoch_resets_the_tail() {
        let mut t = Tail::new(8);
        for s in 1..=3 {
            t.push(&p("old", s));
        }
        assert_eq!(
            t.fit(&p("new", 2)),
            Fit::Gap,
            "the new epoch's 1 is missing"
        );
        assert_eq!(t.fit(&p("new", 1)), Fit::Next);
        assert!(t.push(&p("new", 1)));
        assert_eq!(t.len(), 1);
        assert_eq!(seqs(&t.read(1, 10).unwrap()), vec![1]);
        assert!(Arc::ptr_eq(
            &t.read(1, 1).unwrap()[0].epoch,
            &t.items[0].epoch
        ));
        assert_eq!(&*t.read(1, 1).unwrap()[0].epoch, "new");
        // An unknown position accepts only a first message.
        let u = Tail::new(8);
        assert_eq!(u.fit(&p("e", 2)), Fit::Gap);
        assert_eq!(u.fit(&p("e", 1)), Fit::Next);
    }

    #[test]
    fn backfill_joins_only_a_contiguous_run_of_the_same_epoch() {
        let mut t = Tail::new(6);
        t.reset(Some("e".into()), 10);
        assert!(t.read(10, 5).is_none(), "an empty tail answers nothing");
        // A history read of 7..=11 (11 is past the position: ignored).
        let page: Vec<Pub> = (7..=11).map(|s| p("e", s)).collect();
        t.backfill(&page);
        assert_eq!(seqs(&t.read(7, 100).unwrap()), vec![7, 8, 9, 10]);
        // A hole (5, 6 missing) does not join.
        t.backfill(&[p("e", 3), p("e", 4)]);
        assert!(t.read(4, 100).is_none());
        // Another epoch does not join.
        t.backfill(&[p("x", 6)]);
        assert!(t.read(6, 100).is_none());
        // A run with a hole inside does not join either.
        t.backfill(&[p("e", 4), p("e", 6)]);
        assert!(t.read(6, 100).is_none());
        // Joins up to the bound, keeping the newest.
        t.backfill(&(1..=6).map(|s| p("e", s)).collect::<Vec<_>>());
        assert_eq!(t.len(), 6);
        assert_eq!(seqs(&t.read(5, 100).unwrap()), vec![5, 6, 7, 8, 9, 10]);
        assert!(t.read(4, 100).is_none());
    }

    /// The follow's fill races the live path: the fill is read at head `h`
    /// together with the position, and the channel (subscribed before the read)
    /// brings every message from some seq at or below `h + 1` on, those published
    /// before the read included, some of them twice. For every such interleaving
    /// the reader takes each seq after `h` exactly once and none at or before it,
    /// and the tail then answers every seq it holds, gap-free, fill and live alike.
    #[test]
    fn a_fill_and_the_live_messages_racing_it_make_one_gap_free_run() {
        for h in [0u64, 1, 5, 15, 16, 40] {
            for first_live in 1..=h + 1 {
                for repeat in [false, true] {
                    let mut t = Tail::new(16);
                    t.reset(Some("e".into()), h);
                    let fill: Vec<Pub> = (h.saturating_sub(15).max(1)..=h)
                        .map(|s| p("e", s))
                        .collect();
                    t.backfill(&fill);
                    assert_eq!(t.len() as u64, h.min(16), "h {h}: the fill joins whole");
                    let mut taken = Vec::new();
                    for s in first_live..=h + 5 {
                        let times = if repeat { 2 } else { 1 };
                        for _ in 0..times {
                            if t.push(&p("e", s)) {
                                taken.push(s);
                            }
                        }
                    }
                    let case = format!("h {h}, live from {first_live}, repeat {repeat}");
                    assert_eq!(taken, (h + 1..=h + 5).collect::<Vec<_>>(), "{case}");
                    let oldest = (h + 5).saturating_sub(15).max(1);
                    assert_eq!(
                        seqs(&t.read(oldest, 100).unwrap()),
                        (oldest..=h + 5).collect::<Vec<_>>(),
                        "{case}"
                    );
                    assert!(oldest == 1 || t.read(oldest - 1, 100).is_none(), "{case}");
                }
            }
        }
    }

    /// A fill that does not end at the position it was read with, or is of
    /// another epoch, is left out whole: the tail stays empty and the resumes it
    /// cannot answer go to Redis.
    #[test]
    fn a_fill_that_does_not_reach_the_position_is_left_out() {
        let mut t = Tail::new(16);
        t.reset(Some("e".into()), 10);
        t.backfill(&(1..=9).map(|s| p("e", s)).collect::<Vec<_>>());
        assert!(t.is_empty());
        t.backfill(&(1..=10).map(|s| p("old", s)).collect::<Vec<_>>());
        assert!(t.is_empty());
        assert!(t.read(5, 10).is_none());
        t.backfill(&(1..=10).map(|s| p("e", s)).collect::<Vec<_>>());
        assert_eq!(seqs(&t.read(5, 10).unwrap()), vec![5, 6, 7, 8, 9, 10]);
    }
}
