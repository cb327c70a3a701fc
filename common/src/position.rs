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
