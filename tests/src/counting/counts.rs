//! What a [`CountingClient`](super::CountingClient) records, and the rules that
//! count duplicates, out-of-order frames and gaps per topic: pure, so the unit tests
//! below drive them frame by frame.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// How one connection of a [`CountingClient`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Still open.
    Open,
    /// A close frame with this code.
    Code(u16),
    /// The TCP stream ended (or failed) without a close frame.
    NoFrame,
    /// Nothing arrived for three heartbeat intervals: presumed dead, dropped by us.
    Silent,
}

/// One connection the client made.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    /// `node_id` of the `connected` frame: which node served this connection.
    pub node_id: String,
    pub ended: Ended,
}

/// One `ack` of a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Index into [`Counts::connections`].
    pub connection: usize,
    /// The `resume_from_seq` this client sent, if it resumed.
    pub resumed_from: Option<u64>,
    pub recovered: bool,
    pub head_seq: u64,
    pub epoch: String,
}

/// One publication frame exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub connection: usize,
    /// `snapshot`, `delta` or `alert`.
    pub kind: String,
    pub seq: u64,
    pub epoch: String,
}

/// Everything seen for one topic.
#[derive(Debug, Clone, Default)]
pub struct TopicCounts {
    /// Every publication frame, in arrival order, duplicates included.
    pub frames: Vec<Frame>,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// `recovered: false` answers to a resume.
    pub resets: u64,
    pub acks: Vec<Ack>,
    /// `(epoch, seq)` of the newest frame of the current baseline.
    pub last: Option<(String, u64)>,
    seen: HashSet<(String, u64)>,
    retired_epochs: HashSet<String>,
    /// Earlier epochs that the current one continues (a newer epoch whose first
    /// frame was the next seq: a Redis takeover's continuation epoch).
    lineage: HashSet<String>,
    /// Index into `frames` where the current baseline (after the last reset) starts.
    baseline_start: usize,
}

impl TopicCounts {
    /// Seqs of the current epoch's frames (and of the epochs it continues) in
    /// arrival order, since the last reset.
    pub fn seqs(&self) -> Vec<u64> {
        let Some((epoch, _)) = &self.last else {
            return Vec::new();
        };
        self.frames[self.baseline_start..]
            .iter()
            .filter(|f| &f.epoch == epoch || self.lineage.contains(&f.epoch))
            .map(|f| f.seq)
            .collect()
    }

    pub(super) fn on_frame(&mut self, frame: Frame) {
        let key = (frame.epoch.clone(), frame.seq);
        if self.retired_epochs.contains(&frame.epoch) {
            self.out_of_order += 1;
        } else if self.seen.contains(&key) {
            self.duplicates += 1;
        } else {
            match &self.last {
                Some((epoch, last)) if *epoch == frame.epoch => {
                    if frame.seq < *last {
                        self.out_of_order += 1;
                    } else if frame.seq > last + 1 {
                        self.gaps += 1;
                    }
                }
                Some((epoch, last)) => {
                    // A new epoch without a `recovered: false` first: the old one is
                    // over. Its next seq continues it (a continuation epoch); any
                    // other seq starts a new history.
                    let old = epoch.clone();
                    if frame.seq == last + 1 && frame.seq > 1 {
                        self.lineage.insert(old.clone());
                    } else {
                        self.lineage.clear();
                    }
                    self.retired_epochs.insert(old);
                }
                None => {}
            }
            let newer = match &self.last {
                Some((epoch, last)) => *epoch != frame.epoch || frame.seq > *last,
                None => true,
            };
            if newer {
                self.last = Some((frame.epoch.clone(), frame.seq));
            }
            self.seen.insert(key);
        }
        self.frames.push(frame);
    }

    pub(super) fn on_reset(&mut self) {
        self.resets += 1;
        self.seen.clear();
        self.lineage.clear();
        self.baseline_start = self.frames.len();
        self.last = None;
    }

    /// Panics unless the server sent this topic no duplicate, nothing out of order
    /// and no gap, and never answered a resume with `recovered: false`.
    pub fn assert_clean(&self, who: &str) {
        assert_eq!(
            (self.duplicates, self.out_of_order, self.gaps, self.resets),
            (0, 0, 0, 0),
            "{who}: (duplicates, out of order, gaps, not-recovered resumes) sent by the server; acks {:?}",
            self.acks
        );
    }

    /// [`TopicCounts::assert_clean`], and the frames form one run of seqs that ends at
    /// `last`: every message from where the client joined, exactly once, in order.
    pub fn assert_exactly_once_up_to(&self, last: u64, who: &str) {
        self.assert_clean(who);
        let seqs = self.seqs();
        let first = *seqs
            .first()
            .unwrap_or_else(|| panic!("{who}: no frame at all"));
        assert!(
            seqs.iter().copied().eq(first..=last),
            "{who}: seqs {first}..={last} expected, got {} frames ending {:?}",
            seqs.len(),
            seqs.last()
        );
    }
}

/// What a [`CountingClient`] has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub connections: Vec<Connection>,
    pub topics: HashMap<String, TopicCounts>,
    /// `error` frames, as received.
    pub errors: Vec<Value>,
    /// Connect attempts that failed before a `connected` frame.
    pub failed_connects: u64,
}

impl Counts {
    pub fn topic(&self, topic: &str) -> &TopicCounts {
        self.topics
            .get(topic)
            .unwrap_or_else(|| panic!("topic {topic} was never subscribed"))
    }

    /// Connections after the first one.
    pub fn reconnects(&self) -> usize {
        self.connections.len().saturating_sub(1)
    }

    /// The node of every connection, in order.
    pub fn nodes(&self) -> Vec<String> {
        self.connections.iter().map(|c| c.node_id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, epoch: &str) -> Frame {
        Frame {
            connection: 0,
            kind: "delta".into(),
            seq,
            epoch: epoch.into(),
        }
    }

    fn counts(frames: &[(u64, &str)]) -> TopicCounts {
        let mut t = TopicCounts::default();
        for (s, e) in frames {
            t.on_frame(frame(*s, e));
        }
        t
    }

    #[test]
    fn a_clean_run_counts_nothing_and_yields_its_seqs() {
        let t = counts(&[(3, "e"), (4, "e"), (5, "e")]);
        t.assert_exactly_once_up_to(5, "clean");
        assert_eq!(t.seqs(), [3, 4, 5]);
    }

    #[test]
    fn a_continuation_epoch_extends_the_run_and_a_restart_does_not() {
        let t = counts(&[(1, "e1"), (2, "e1"), (3, "e2"), (4, "e2")]);
        t.assert_exactly_once_up_to(4, "continued");
        assert_eq!(t.seqs(), [1, 2, 3, 4]);
        let restarted = counts(&[(1, "e1"), (2, "e1"), (1, "e2"), (2, "e2")]);
        assert_eq!(restarted.seqs(), [1, 2], "only the new history");
        let late = counts(&[(1, "e1"), (2, "e2"), (2, "e1")]);
        assert_eq!(late.out_of_order, 1, "the continued epoch is over");
    }

    #[test]
    fn a_repeated_seq_is_a_duplicate_even_after_later_ones() {
        let t = counts(&[(1, "e"), (2, "e"), (3, "e"), (2, "e")]);
        assert_eq!((t.duplicates, t.out_of_order, t.gaps), (1, 0, 0));
        assert_eq!(
            t.frames.len(),
            4,
            "every frame is kept, duplicates included"
        );
    }

    #[test]
    fn a_skipped_seq_is_a_gap_and_its_late_arrival_is_out_of_order() {
        let t = counts(&[(1, "e"), (3, "e"), (2, "e")]);
        assert_eq!((t.duplicates, t.out_of_order, t.gaps), (0, 1, 1));
    }

    #[test]
    fn a_frame_of_a_replaced_epoch_is_out_of_order() {
        let t = counts(&[(7, "old"), (1, "new"), (8, "old")]);
        assert_eq!((t.duplicates, t.out_of_order, t.gaps), (0, 1, 0));
        assert_eq!(t.last, Some(("new".into(), 1)));
        assert_eq!(t.seqs(), [1]);
    }

    #[test]
    fn a_not_recovered_resume_starts_a_new_baseline() {
        let mut t = counts(&[(1, "e"), (2, "e"), (3, "e")]);
        t.on_reset();
        // The snapshot at 2 and the deltas after it may repeat seqs legitimately.
        for s in [2, 3, 4] {
            t.on_frame(frame(s, "e"));
        }
        assert_eq!(
            (t.duplicates, t.out_of_order, t.gaps, t.resets),
            (0, 0, 0, 1)
        );
        assert_eq!(t.seqs(), [2, 3, 4]);
    }

    #[test]
    #[should_panic(expected = "duplicates")]
    fn assert_clean_fails_on_a_duplicate() {
        counts(&[(1, "e"), (1, "e")]).assert_clean("dup");
    }
}
