//! Shard channels that move on Redis Cluster. When a slot migrates or a replica
//! takes over its master's slots (`CLUSTER FAILOVER`, or a failover after a
//! master died), Redis drops the subscribers of that slot's shard channels with a
//! `sunsubscribe` push, but fred swallows that push (it reads it as the answer to
//! an unsubscribe of its own), and the subscriber connection stays up, so nothing
//! else tells the reader. Without a check, live delivery of the moved topics stops
//! on that node until its connection happens to be re-established.
//!
//! So the reader remembers, per followed topic, the master its `SSUBSCRIBE` was
//! routed to, and every [`OWNER_CHECK`] it refreshes fred's routing table (one
//! `CLUSTER SLOTS` on fred's side connection) and compares: a topic whose slot is
//! now served by another master is subscribed again (fred routes it there) and its
//! stream is read from the position, so what was published meanwhile arrives in
//! order, once. On one server or Sentinel this does nothing: a Sentinel failover
//! ends the subscriber connection and the reconnect path recovers it.

use std::time::Duration;

use fred::{
    interfaces::{ClientLike, ClusterInterface, PubsubInterface},
    types::{cluster::ClusterRouting, config::Server},
};
use sluice_common::{keys, redact, Topic};
use tracing::{debug, info, warn};

use super::{Live, ARM_TIMEOUT, CATCH_UP_CONCURRENCY};
use crate::{broker::redis::decode::EpochCache, publication::Sink};

/// How often the reader compares the masters its subscriptions sit on with the
/// cluster's slot map (a cluster only; one `CLUSTER SLOTS` per check and node).
pub(super) const OWNER_CHECK: Duration = Duration::from_secs(1);

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

    /// Refreshes the slot map; subscribes again to each followed topic whose slot
    /// moved to another master since it was subscribed, and reads those topics'
    /// streams from their positions.
    pub(super) async fn check_owners(&self, sink: &dyn Sink, epochs: &mut EpochCache) {
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
        self.catch_up(armed, sink, epochs).await;
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
