//! Catch-up reads of the live path: a topic's stream read from its position (after
//! a seq jump, another epoch, a reconnect or a lagging buffer) and delivered in
//! order, keeping the position gap-free.

use std::collections::HashMap;

use bytes::Bytes;
use fred::interfaces::{FunctionInterface, HashesInterface};
use sluice_common::{keys, Topic};
use tracing::warn;

use super::{unavailable, Live, CATCH_UP_CONCURRENCY};
use crate::{
    broker::{
        redis::{
            decode::{decode_entry, Decoder},
            tail::Fit,
        },
        BrokerError,
    },
    publication::{Pub, Sink},
};

/// Entries a catch-up read asks for; a full page is followed by another read.
const CATCH_UP_PAGE: usize = 1_000;

/// What a stream read returns: `(id, fields)` per entry.
type Entries = Vec<(String, HashMap<String, Bytes>)>;

/// A catch-up read: the entries from the position, and when there are none, the
/// topic's current epoch (an empty page of another epoch means the topic restarted
/// below our position).
type Read = Result<(Entries, Option<String>), BrokerError>;

impl Live {
    /// Reads each topic's stream from its position and delivers what is new, page
    /// by page, [`CATCH_UP_CONCURRENCY`] topics at a time.
    pub(super) async fn catch_up(
        &self,
        mut topics: Vec<Topic>,
        sink: &dyn Sink,
        decoder: &mut Decoder,
    ) {
        while !topics.is_empty() {
            let mut again = Vec::new();
            for chunk in topics.chunks(CATCH_UP_CONCURRENCY) {
                let reads = chunk.iter().filter_map(|t| {
                    let from = {
                        let m = self.lock();
                        let f = m.get(t).filter(|f| f.armed)?;
                        f.tail.position().map_or(1, |(_, head)| head + 1)
                    };
                    Some(async move { (t, from, self.read(t, from).await) })
                });
                for (topic, from, read) in futures_util::future::join_all(reads).await {
                    match self.apply(topic, from, read, sink, decoder) {
                        Then::Done => {}
                        Then::Again => again.push(topic.clone()),
                        Then::Switch => {
                            // Read where the new epoch came from, then again from
                            // the position it gave.
                            if self.switch_epoch(topic, true).await {
                                again.push(topic.clone());
                            }
                        }
                    }
                }
            }
            topics = again;
        }
    }

    /// Reads up to a page of `topic`'s current epoch from `from`.
    async fn read(&self, topic: &Topic, from: u64) -> Read {
        let client = self.pool.next();
        let entries: Entries = client
            .fcall_ro(
                "sluice_history",
                topic.as_str(),
                vec![from.to_string(), CATCH_UP_PAGE.to_string()],
            )
            .await
            .map_err(|e| unavailable("reading the topic's stream", e.details()))?;
        if !entries.is_empty() {
            return Ok((entries, None));
        }
        let epoch: Option<String> = client
            .hget(keys::meta(topic.as_str()), "epoch")
            .await
            .map_err(|e| unavailable("reading the topic's epoch", e.details()))?;
        Ok((entries, epoch))
    }

    /// Delivers a catch-up page read from `from`; returns what to do next.
    fn apply(
        &self,
        topic: &Topic,
        from: u64,
        read: Read,
        sink: &dyn Sink,
        decoder: &mut Decoder,
    ) -> Then {
        let mut delivered = Vec::new();
        let more = {
            let mut m = self.lock();
            let Some(f) = m.get_mut(topic).filter(|f| f.armed) else {
                return Then::Done; // unfollowed meanwhile
            };
            let (entries, epoch_now) = match read {
                Ok(r) => r,
                Err(e) => {
                    warn!(%topic, error = %e, "catch-up read failed; retrying");
                    f.stale = true;
                    return Then::Done;
                }
            };
            f.stale = false;
            let full = entries.len() >= CATCH_UP_PAGE;
            let page: Vec<Pub> = entries
                .iter()
                .filter_map(|(id, fields)| decode_entry(topic, id, fields, decoder))
                .collect();
            let Some(first) = page.first() else {
                let restarted = f
                    .tail
                    .position()
                    .zip(epoch_now.as_deref())
                    .is_some_and(|((ours, _), now)| **ours != *now);
                // Another epoch and nothing past our position: a new history
                // restarted below it, or a continuation has nothing new yet.
                return if restarted { Then::Switch } else { Then::Done };
            };
            if f.tail.fit(first) == Fit::Gap {
                let other_epoch = f.tail.position().is_some_and(|(e, _)| *e != first.epoch);
                if other_epoch && from != 1 {
                    // A new epoch: a new history starts at 1, a continuation of
                    // ours goes on from our position ([`Live::switch_epoch`]).
                    return Then::Switch;
                }
                warn!(%topic, from, first = first.seq, "history was trimmed before the live path read it");
                f.tail
                    .reset(Some(first.epoch.clone()), first.seq.saturating_sub(1));
            }
            for p in page {
                if f.tail.push(&p) {
                    delivered.push(p);
                }
            }
            full
        };
        for p in &delivered {
            sink.deliver(p);
        }
        if more {
            Then::Again
        } else {
            Then::Done
        }
    }
}

/// What a catch-up read of a topic leads to.
enum Then {
    /// Caught up (or failed: the topic is stale and read again later).
    Done,
    /// A full page: read the next one.
    Again,
    /// The stream is in another epoch: find out which, then read again.
    Switch,
}
