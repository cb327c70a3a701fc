//! What the client has seen of each topic, so that a reconnect resumes from the
//! right place and a message delivered twice (replay overlapping live) is dropped.

use std::collections::HashMap;

use crate::position::{epoch_cmp, StreamPosition};

#[derive(Debug, Default, Clone)]
pub struct Tracker {
    /// Subscribed topics; `None` until the first message.
    topics: HashMap<String, Option<StreamPosition>>,
}

impl Tracker {
    pub fn add(&mut self, topic: &str) {
        self.topics.entry(topic.to_owned()).or_insert(None);
    }

    pub fn remove(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Keeps the subscription but drops its position (history was lost).
    pub fn forget_position(&mut self, topic: &str) {
        if let Some(slot) = self.topics.get_mut(topic) {
            *slot = None;
        }
    }

    pub fn position(&self, topic: &str) -> Option<&StreamPosition> {
        self.topics.get(topic).and_then(Option::as_ref)
    }

    /// Every subscribed topic with its last position.
    pub fn topics(&self) -> impl Iterator<Item = (&String, Option<&StreamPosition>)> {
        self.topics.iter().map(|(t, p)| (t, p.as_ref()))
    }

    /// Records a message; false when it was already seen (or is from an older epoch)
    /// or the topic is not subscribed.
    pub fn accept(&mut self, topic: &str, epoch: &str, seq: u64) -> bool {
        let Some(slot) = self.topics.get_mut(topic) else {
            return false;
        };
        if let Some(pos) = slot {
            match epoch_cmp(epoch, &pos.epoch) {
                std::cmp::Ordering::Less => return false,
                std::cmp::Ordering::Equal if seq <= pos.seq => return false,
                _ => {}
            }
        }
        *slot = Some(StreamPosition::new(seq, epoch));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_older_epochs_are_dropped_new_epochs_restart() {
        let mut t = Tracker::default();
        assert!(!t.accept("a", "e1", 1), "not subscribed");
        t.add("a");
        assert!(t.accept("a", "e1", 1));
        assert!(t.accept("a", "e1", 2));
        assert!(!t.accept("a", "e1", 2));
        assert!(!t.accept("a", "e1", 1));
        assert!(
            t.accept("a", "e1", 5),
            "a jump is accepted (the server said recovered:false)"
        );
        assert!(t.accept("a", "e2", 1), "a newer epoch restarts the seqs");
        assert!(!t.accept("a", "e1", 9), "a late message of the older epoch");
        assert_eq!(t.position("a"), Some(&StreamPosition::new(1, "e2")));
        t.forget_position("a");
        assert!(
            t.accept("a", "e2", 1),
            "after a lost history the snapshot's seq is accepted again"
        );
        t.remove("a");
        assert_eq!(t.topics().count(), 0);
    }

    #[test]
    fn a_continuation_epoch_goes_on_from_the_next_seq() {
        // After a Redis takeover the server continues (e1, 3) as (e2, 4): accepted,
        // and the resume position moves to the new epoch.
        let mut t = Tracker::default();
        t.add("a");
        for s in 1..=3 {
            assert!(t.accept("a", "hoousyc7ro", s));
        }
        assert!(t.accept("a", "hoousyc7rp", 4));
        assert_eq!(t.position("a"), Some(&StreamPosition::new(4, "hoousyc7rp")));
        assert!(
            !t.accept("a", "hoousyc7rp", 4),
            "a replay of it is a duplicate"
        );
        assert!(
            !t.accept("a", "hoousyc7ro", 4),
            "the parent's late 4 is older"
        );
    }
}
