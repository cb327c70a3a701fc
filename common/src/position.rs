//! A place in a topic's stream: the seq of a message plus the epoch it belongs to.
//!
//! Seqs restart at 1 whenever a topic's history is lost (Redis flushed, TTL expired);
//! the epoch changes with them, so a seq is only meaningful together with its epoch.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The seq of the latest message (0 before the first one).
    pub seq: u64,
    /// Identifies one unbroken history of the topic.
    pub epoch: String,
}

impl StreamPosition {
    pub fn new(seq: u64, epoch: impl Into<String>) -> Self {
        StreamPosition {
            seq,
            epoch: epoch.into(),
        }
    }
}

/// Where a continuation epoch came from. When a Redis master is replaced (a
/// promoted replica, a restart) the function cannot know which of the old master's
/// last entries were delivered without reaching it, so the topic's next publish
/// opens a new epoch that continues `parent`'s history up to `at - 1`: every seq
/// below `at` is the same message in both epochs, `at` and later may differ. A
/// position `(parent, s)` with `s < at` goes on seamlessly in the new epoch; one
/// with `s >= at` saw a message the new epoch lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// The epoch this one continues.
    pub parent: std::sync::Arc<str>,
    /// The first seq that belongs to the new epoch only (the parent's head + 1
    /// when the new master took over).
    pub at: u64,
}

/// Orders two epochs by creation time. Epochs are base-36 timestamps (microseconds
/// since the Unix epoch) in both brokers, so a longer one is newer and equal lengths
/// compare as text. Lets a session drop a late message of an older epoch instead of
/// mistaking it for a restart.
pub fn epoch_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn later_epochs_compare_greater() {
        assert_eq!(epoch_cmp("hodymxh320", "hodymxh321"), Ordering::Less);
        assert_eq!(epoch_cmp("zzzzzzzzz", "100000000a"), Ordering::Less);
        assert_eq!(epoch_cmp("abc", "abc"), Ordering::Equal);
    }
}
