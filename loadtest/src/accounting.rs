//! Per-subscription sequence accounting: every received seq is classified as new,
//! late (it fills a gap), or a duplicate, so lost, duplicated and out-of-order
//! messages are counted, never estimated.

use std::ops::AddAssign;

use serde::Serialize;

/// Follows one subscription's sequence numbers (1, 2, 3, … as published).
///
/// Gaps are kept as ranges, so a client that misses a million messages costs one
/// entry, and a message that arrives after a later one (out of order) is still
/// recognised as new exactly once.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// The seq after the highest seen so far.
    next: u64,
    /// Seqs below `next` not yet seen, as sorted, disjoint `[start, end)` ranges.
    missing: Vec<(u64, u64)>,
    tally: Tally,
}

/// What one observation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next seq, in order.
    InOrder,
    /// A seq past the next one: the ones between are (for now) missing.
    AfterGap,
    /// A seq that had been missing arrived late.
    Late,
    /// Already seen.
    Duplicate,
}

/// Counts over one or many subscriptions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Distinct seqs received.
    pub unique: u64,
    /// Receptions of a seq already received.
    pub duplicated: u64,
    /// Distinct seqs that arrived after a higher one.
    pub out_of_order: u64,
    /// Times a seq skipped ahead of the next expected one.
    pub gaps: u64,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.unique += o.unique;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.gaps += o.gaps;
    }
}

impl SeqTracker {
    /// A tracker expecting `first` as the first seq (1 for a topic published
    /// after the subscription started).
    pub fn starting_at(first: u64) -> Self {
        SeqTracker {
            next: first,
            ..Default::default()
        }
    }

    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            self.tally.unique += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            self.missing.push((self.next, seq));
            self.next = seq + 1;
            self.tally.unique += 1;
            self.tally.gaps += 1;
            return Seen::AfterGap;
        }
        // Below `next`: new only if it lies in a missing range.
        let idx = self.missing.partition_point(|&(_, end)| end <= seq);
        match self.missing.get(idx).copied() {
            Some((start, end)) if start <= seq => {
                match (start == seq, end == seq + 1) {
                    (true, true) => {
                        self.missing.remove(idx);
                    }
                    (true, false) => self.missing[idx].0 = seq + 1,
                    (false, true) => self.missing[idx].1 = seq,
                    (false, false) => {
                        self.missing[idx].1 = seq;
                        self.missing.insert(idx + 1, (seq + 1, end));
                    }
                }
                self.tally.unique += 1;
                self.tally.out_of_order += 1;
                Seen::Late
            }
            _ => {
                self.tally.duplicated += 1;
                Seen::Duplicate
            }
        }
    }

    /// Seqs in `first..=last` never received (given `last`, the highest published).
    pub fn missing_up_to(&self, last: u64) -> u64 {
        let in_gaps: u64 = self
            .missing
            .iter()
            .map(|&(s, e)| e.min(last + 1).saturating_sub(s))
            .sum();
        in_gaps + (last + 1).saturating_sub(self.next)
    }

    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// The highest seq seen, or `first - 1`.
    pub fn highest(&self) -> u64 {
        self.next.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_stream_counts_each_once() {
        let mut t = SeqTracker::starting_at(1);
        for s in 1..=100 {
            assert_eq!(t.observe(s), Seen::InOrder);
        }
        assert_eq!(
            t.tally(),
            Tally {
                unique: 100,
                ..Default::default()
            }
        );
        assert_eq!(t.missing_up_to(100), 0);
        assert_eq!(t.missing_up_to(103), 3, "three published but not received");
    }

    #[test]
    fn gap_then_late_fill_then_duplicates() {
        let mut t = SeqTracker::starting_at(1);
        assert_eq!(t.observe(1), Seen::InOrder);
        assert_eq!(t.observe(5), Seen::AfterGap); // 2,3,4 missing
        assert_eq!(t.missing_up_to(5), 3);
        assert_eq!(t.observe(3), Seen::Late); // splits the gap: 2 and 4 left
        assert_eq!(t.missing_up_to(5), 2);
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(2), Seen::Late);
        assert_eq!(t.observe(4), Seen::Late);
        assert_eq!(t.observe(5), Seen::Duplicate);
        assert_eq!(t.observe(1), Seen::Duplicate);
        assert_eq!(t.missing_up_to(5), 0);
        assert_eq!(
            t.tally(),
            Tally {
                unique: 5,
                duplicated: 3,
                out_of_order: 3,
                gaps: 1
            }
        );
    }

    #[test]
    fn a_seq_before_the_first_expected_is_a_duplicate_not_new() {
        let mut t = SeqTracker::starting_at(10);
        assert_eq!(t.observe(9), Seen::Duplicate);
        assert_eq!(t.observe(10), Seen::InOrder);
        assert_eq!(t.highest(), 10);
    }

    #[test]
    fn huge_gap_costs_one_range() {
        let mut t = SeqTracker::starting_at(1);
        t.observe(1_000_000_000);
        assert_eq!(t.missing_up_to(1_000_000_000), 999_999_999);
        assert_eq!(t.missing.len(), 1);
    }

    proptest! {
        /// Whatever order and repetition the seqs arrive in, the tracker agrees
        /// with a set-based model on unique, duplicated and missing counts.
        #[test]
        fn agrees_with_a_set_model(seqs in proptest::collection::vec(1u64..60, 0..200)) {
            let mut t = SeqTracker::starting_at(1);
            let mut seen = std::collections::BTreeSet::new();
            let mut dups = 0;
            for &s in &seqs {
                let new = seen.insert(s);
                let r = t.observe(s);
                prop_assert_eq!(new, r != Seen::Duplicate);
                if !new { dups += 1; }
            }
            prop_assert_eq!(t.tally().unique, seen.len() as u64);
            prop_assert_eq!(t.tally().duplicated, dups);
            prop_assert_eq!(t.missing_up_to(60), 60 - seen.len() as u64);
        }
    }
}
