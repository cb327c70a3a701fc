//! Shard channels that move on Redis Cluster. When a slot migrates or a replica
//! takes over its master's slots (`CLUSTER FAILOVER`, or a failover after a
//! master died), Redis drops the subscribers of that slot's shard channels with a
//! `sunsubscribe` push, but fred swallows that push (it reads it as the answer to
//! an unsubscribe of its own), and the subscriber connection stays up, so nothing
//! else tells the reader. Without a check, live delivery of the moved topics stops
//! on that node until its connection happens to be re-established.
//!
//! So the reader remembers, per followed topic, the master its `SSUBSCRIBE` was
//! routed to, and every [`OWNER_CHECK`] it asks for the slot map (`CLUSTER SLOTS`
//! on a pooled connection). Only when the map differs from the last one does it
//! refresh the subscriber's routing table (fred's `sync_cluster`, which opens a
//! new side connection each time: measured at one TCP connection per second per
//! node when done every check) and compare: a topic whose slot is now served by
//! another master is subscribed again (fred routes it there) and its stream is read
//! from the position, so what was published meanwhile arrives in order, once. On
//! one server or Sentinel this does nothing: a Sentinel failover ends the
//! subscriber connection and the reconnect path recovers it.

use std::time::Duration;

use fred::{
    interfaces::{ClientLike, ClusterInterface, PubsubInterface},
    types::{cluster::ClusterRouting, config::Server, Value},
};
use sluice_common::{keys, redact, Topic};
use tracing::{debug, info, warn};

use super::{Live, ARM_TIMEOUT, CATCH_UP_CONCURRENCY};
use crate::{broker::redis::decode::Decoder, publication::Sink};

/// How often the reader compares the masters its subscriptions sit on with the
/// cluster's slot map (a cluster only; one `CLUSTER SLOTS` per check and node).
pub(super) const OWNER_CHECK: Duration = Duration::from_secs(1);

/// The slot map as `(first slot, last slot, master host, master port)`, sorted, so
/// that two nodes' answers of the same map compare equal.
pub(super) type SlotMap = Vec<(i64, i64, String, i64)>;

/// Reads the primaries' ranges out of a `CLUSTER SLOTS` answer.
fn slot_map(answer: Value) -> Option<SlotMap> {
    let Value::Array(ranges) = answer else {
        return None;
    };
    let mut map: SlotMap = ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let Some(Value::Array(primary)) = r.get(2) else {
                return None;
            };
            Some((
                r.first()?.as_i64()?,
                r.get(1)?.as_i64()?,
                primary.first()?.as_string()?,
                primary.get(1)?.as_i64()?,
            ))
        })
        .collect();
    map.sort();
    Some(map)
}

impl Live {
    /// The master that fred routes `topic`'s live channel to now; `None` when not
    /// on Cluster (or before the first slot map).
    pub(super) fn owner_of(&self, topic: &Topic) -> Option<Server> {
        let routing = self.subscriber.cached_cluster_state()?;
        let slot = ClusterRouting::hash_key(keys::live(topic.as_str()).as_bytes());
        routing.get_server(slot).cloned()
    }

    /// Whether the subscriber talks to a Redis Cluster.
    pub(super) fn clustered(&self) -> bool {
        self.subscriber.is_clustered()
    }

    /// When the slot map differs from `last`: refreshes the subscriber's routing,
    /// subscribes again to each followed topic whose slot moved to another master
    /// since it was subscribed, and reads those topics' streams from their positions.
    pub(super) async fn check_owners(
        &self,
        last: &mut Option<SlotMap>,
        sink: &dyn Sink,
        decoder: &mut Decoder,
    ) {
        let ask = self
            .pool
            .next()
            .custom::<Value, _>(fred::cmd!("CLUSTER"), vec!["SLOTS"]);
        let map = match tokio::time::timeout(ARM_TIMEOUT, ask).await {
            Ok(Ok(answer)) => slot_map(answer),
            _ => None,
        };
        // An unreadable answer refreshes anyway: a missed move stops live delivery.
        if map.is_some() && map == *last {
            return;
        }
        match tokio::time::timeout(ARM_TIMEOUT, self.subscriber.sync_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %redact::scrub(e.details()), "refreshing the cluster slot map failed");
                return;
            }
            Err(_) => {
                debug!("refreshing the cluster slot map timed out");
                return;
            }
        }
        *last = map;
        let moved: Vec<Topic> = {
            let m = self.lock();
            m.iter()
                .filter(|(t, f)| f.owner != self.owner_of(t))
                .map(|(t, _)| t.clone())
                .collect()
        };
        if moved.is_empty() {
            return;
        }
        info!(
            topics = moved.len(),
            "followed topics moved to another master; subscribing there and reading their streams"
        );
        self.resubscribe(&moved).await;
        let armed: Vec<Topic> = {
            let m = self.lock();
            moved
                .into_iter()
                .filter(|t| m.get(t).is_some_and(|f| f.armed))
                .collect()
        };
        self.catch_up(armed, sink, decoder).await;
    }

    /// `SSUBSCRIBE` to each topic's channel again, [`CATCH_UP_CONCURRENCY`] at a
    /// time, recording the master each is routed to. A topic that failed is marked
    /// as on no master, so on Cluster the next check tries it again.
    pub(super) async fn resubscribe(&self, topics: &[Topic]) {
        let _order = self.subscribing.lock().await;
        for chunk in topics.chunks(CATCH_UP_CONCURRENCY) {
            let owners: Vec<Option<Server>> = chunk.iter().map(|t| self.owner_of(t)).collect();
            let subs = chunk
                .iter()
                .map(|t| self.subscriber.ssubscribe(keys::live(t.as_str())));
            let results = futures_util::future::join_all(subs).await;
            let mut m = self.lock();
            for ((topic, owner), r) in chunk.iter().zip(owners).zip(results) {
                match r {
                    Ok(()) => {
                        if let Some(f) = m.get_mut(topic) {
                            f.owner = owner;
                        }
                    }
                    Err(e) => {
                        warn!(%topic, error = %redact::scrub(e.details()), "resubscribing a topic failed");
                        if let Some(f) = m.get_mut(topic) {
                            f.owner = None;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(lo: i64, hi: i64, host: &str, port: i64, replica: Option<&str>) -> Value {
        let mut r = vec![
            Value::Integer(lo),
            Value::Integer(hi),
            Value::Array(vec![
                Value::String(host.into()),
                Value::Integer(port),
                Value::String("id".into()),
            ]),
        ];
        if let Some(h) = replica {
            r.push(Value::Array(vec![
                Value::String(h.into()),
                Value::Integer(port),
            ]));
        }
        Value::Array(r)
    }

    #[test]
    fn a_slot_map_is_the_sorted_primary_ranges_whatever_the_answer_order() {
        let a = Value::Array(vec![
            range(5461, 10922, "10.0.0.2", 6379, Some("10.0.0.5")),
            range(0, 5460, "10.0.0.1", 6379, None),
        ]);
        let b = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 6379, Some("10.0.0.4")),
            range(5461, 10922, "10.0.0.2", 6379, None),
        ]);
        let map = slot_map(a).expect("a map");
        assert_eq!(
            map,
            vec![
                (0, 5460, "10.0.0.1".to_owned(), 6379),
                (5461, 10922, "10.0.0.2".to_owned(), 6379)
            ]
        );
        assert_eq!(Some(map), slot_map(b), "replicas and order do not matter");
    }

    #[test]
    fn a_moved_range_changes_the_map_and_garbage_gives_none() {
        let before = slot_map(Value::Array(vec![range(0, 5460, "10.0.0.1", 6379, None)]));
        let after = slot_map(Value::Array(vec![range(0, 5460, "10.0.0.4", 6379, None)]));
        assert_ne!(before, after);
        assert_eq!(slot_map(Value::String("ERR".into())), None);
        assert_eq!(
            slot_map(Value::Array(vec![Value::Integer(1)])),
            Some(Vec::new()),
            "entries that are not ranges are skipped"
        );
    }
}
