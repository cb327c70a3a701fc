//! The follow's one read: a topic's position (with a continuation epoch's parent
//! and fork) and its newest stream entries, read together (`MULTI` `HMGET` of the
//! meta, `XREVRANGE … COUNT <tail size>`, `EXEC`), so a node that starts following a topic holds its recent history from the
//! first moment, and a storm of resumes from before the follow is answered from
//! memory instead of one history read per burst.
//!
//! One transaction, so the entries end exactly at the position read: live
//! messages published before it are in the fill (and dropped as seen when they
//! arrive on the channel), those published after it arrive on the channel (the
//! subscription was made first) and continue the tail. Nothing falls between.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use fred::interfaces::{HashesInterface, StreamsInterface, TransactionInterface};
use sluice_common::{keys, position::Fork, Topic};

use super::{unavailable, Live};
use crate::{
    broker::{
        redis::decode::{decode_entry, Decoder},
        BrokerError,
    },
    publication::Pub,
};

/// What a stream read returns: `(id, fields)` per entry.
pub(super) type Entries = Vec<(String, HashMap<String, Bytes>)>;

/// A topic's position (seq, epoch; `None` for a topic with no epoch) and its
/// newest entries, newest first as `XREVRANGE` returns them.
pub(super) struct Filled {
    pub head: u64,
    pub epoch: Option<String>,
    pub newest_first: Entries,
}

impl Live {
    /// Reads the topic's position and, in the same transaction, up to the tail's
    /// capacity of its newest entries (none when the tail keeps none).
    pub(super) async fn read_position_and_tail(
        &self,
        topic: &Topic,
    ) -> Result<Filled, BrokerError> {
        let meta = keys::meta(topic.as_str());
        let failed =
            |e: fred::error::Error| unavailable("reading the topic's position", e.details());
        let client = self.pool.next();
        const FIELDS: [&str; 4] = ["seq", "epoch", "par", "fork"];
        type Position = (Option<u64>, Option<String>, Option<String>, Option<u64>);
        let ((head, epoch, parent, at), newest_first): (Position, Entries) = if self.tail_size == 0
        {
            (
                client.hmget(meta, FIELDS.to_vec()).await.map_err(failed)?,
                Vec::new(),
            )
        } else {
            let tx = client.multi();
            let _: () = tx.hmget(meta, FIELDS.to_vec()).await.map_err(failed)?;
            let _: () = tx
                .xrevrange(
                    keys::stream(topic.as_str()),
                    "+",
                    "-",
                    Some(self.tail_size as u64),
                )
                .await
                .map_err(failed)?;
            tx.exec(true).await.map_err(failed)?
        };
        let epoch = epoch.filter(|e| !e.is_empty());
        // A continuation epoch's origin, kept for resumes from its parent.
        if let (Some(e), Some(parent), Some(at)) = (&epoch, parent, at) {
            self.learn_fork(
                topic,
                &Arc::from(e.as_str()),
                Fork {
                    parent: parent.into(),
                    at,
                },
            );
        }
        Ok(Filled {
            head: if epoch.is_some() {
                head.unwrap_or(0)
            } else {
                0
            },
            epoch,
            newest_first,
        })
    }
}

/// A fill's entries as publications, oldest first, for `Tail::backfill` into a
/// tail just reset to the position they were read with: those of the tail's epoch
/// that end exactly at its head join it; anything else (another epoch, a hole) is
/// left out, and resumes from before the tail read Redis as without a fill.
/// Decoded before the reader takes its lock, so lookups of other topics do not
/// wait for it.
pub(super) fn decode(topic: &Topic, newest_first: &Entries, dec: &mut Decoder) -> Vec<Pub> {
    newest_first
        .iter()
        .rev()
        .filter_map(|(id, fields)| decode_entry(topic, id, fields, dec))
        .collect()
}
