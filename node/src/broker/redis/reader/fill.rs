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
//!
//! A wildcard's follow of many topics ([`Live::follow_many`]) reads positions
//! only ([`Live::read_positions`], one pipeline of `HMGET`s per batch): a pattern
//! is owed live messages, not history (SPEC §3), and ten thousand `XREVRANGE`s of
//! up to [`super::super::tail::TAIL_SIZE`] entries would be read for no one. Those
//! tails start empty at the position read; an empty or short tail answers no
//! resume it does not hold whole (`Tail::read`), so the first resume of such a
//! topic reads Redis, and its page joins the tail (`Tail::backfill`).

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

/// The meta fields a position is read from: the seq, the epoch it counts in, and
/// where a continuation epoch came from.
const FIELDS: [&str; 4] = ["seq", "epoch", "par", "fork"];
/// What `HMGET` of [`FIELDS`] answers.
type Position = (Option<u64>, Option<String>, Option<String>, Option<u64>);

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
        Ok(self.position_read(topic, (head, epoch, parent, at), newest_first))
    }

    /// The positions of many topics (a wildcard's follow): one pipeline of `HMGET`s
    /// per call, one round trip (per master on Cluster, where fred sends each
    /// command to its slot's master), and no stream read: the tails start empty.
    /// In the order of `topics`.
    pub(super) async fn read_positions(
        &self,
        topics: &[Topic],
    ) -> Result<Vec<Filled>, BrokerError> {
        let failed =
            |e: fred::error::Error| unavailable("reading the topics' positions", e.details());
        let pipeline = self.pool.next().pipeline();
        for topic in topics {
            let _: () = pipeline
                .hmget(keys::meta(topic.as_str()), FIELDS.to_vec())
                .await
                .map_err(failed)?;
        }
        // One answer per command, each converted on its own.
        let read: Vec<Position> = pipeline
            .try_all::<Position>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        if read.len() != topics.len() {
            return Err(unavailable(
                "reading the topics' positions",
                format!("{} answers for {} topics", read.len(), topics.len()),
            ));
        }
        Ok(topics
            .iter()
            .zip(read)
            .map(|(topic, position)| self.position_read(topic, position, Vec::new()))
            .collect())
    }

    /// A position as read from the meta hash (`HMGET` of [`FIELDS`]), learning a
    /// continuation epoch's origin on the way (kept for resumes from its parent).
    fn position_read(&self, topic: &Topic, read: Position, newest_first: Entries) -> Filled {
        let (head, epoch, parent, at) = read;
        let epoch = epoch.filter(|e| !e.is_empty());
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
        Filled {
            head: if epoch.is_some() {
                head.unwrap_or(0)
            } else {
                0
            },
            epoch,
            newest_first,
        }
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
