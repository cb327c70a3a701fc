//! Topic discovery for wildcard subscriptions: which topics exist (one SCAN of
//! the meta keys, on every master of a Cluster) and which ones start a new epoch
//! from now on (the `sluice:topics` announcements `sluice_publish` sends).
//!
//! The subscriber connection subscribes to the announcements when the first
//! wildcard is joined (before that SCAN, so a topic created in between is seen
//! at least once; the hub joins each topic once per wildcard) and again after
//! every reconnect. An announcement is handed to the hub, which follows a matching
//! topic from the announced epoch's seq 1: its first entries were published before
//! the node's SSUBSCRIBE, so arming reads them from the stream.

use std::sync::atomic::Ordering;

use fred::{
    interfaces::{ClientLike, HashesInterface, PubsubInterface},
    types::Value,
};
use futures_util::TryStreamExt;
use sluice_common::{keys, redact, Topic, TopicFilter};
use tracing::{debug, warn};

use super::{unavailable, Live, ARM_TIMEOUT};
use crate::{broker::BrokerError, publication::Sink};

/// Keys asked for per SCAN step.
const SCAN_COUNT: u32 = 1_000;

impl Live {
    /// Subscribes to the announcements once; later calls return at once.
    pub(in crate::broker::redis) async fn discover(&self) -> Result<(), BrokerError> {
        if self.discovery.load(Ordering::Acquire) {
            return Ok(());
        }
        let _order = self.subscribing.lock().await;
        if self.discovery.load(Ordering::Acquire) {
            return Ok(());
        }
        match tokio::time::timeout(ARM_TIMEOUT, self.subscriber.subscribe(keys::TOPICS)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(unavailable(
                    "subscribing to topic announcements",
                    e.details(),
                ))
            }
            Err(_) => {
                return Err(unavailable(
                    "subscribing to topic announcements",
                    "timed out",
                ))
            }
        }
        self.discovery.store(true, Ordering::Release);
        Ok(())
    }

    /// After a reconnect (called with the subscribe order held).
    pub(super) async fn resubscribe_discovery(&self) {
        if !self.discovery.load(Ordering::Acquire) {
            return;
        }
        if let Ok(Err(e)) =
            tokio::time::timeout(ARM_TIMEOUT, self.subscriber.subscribe(keys::TOPICS)).await
        {
            warn!(error = %redact::scrub(e.details()), "resubscribing to topic announcements failed");
        }
    }

    /// The existing topics `filter` matches: their meta keys, scanned on every
    /// master.
    pub(in crate::broker::redis) async fn topics_matching(
        &self,
        filter: &TopicFilter,
    ) -> Result<Vec<Topic>, BrokerError> {
        self.discover().await?;
        let mut topics: Vec<Topic> = self
            .scan_topics(keys::meta_scan(filter.base().as_str()))
            .await?
            .into_iter()
            .filter(|t| filter.matches(t.as_str()))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        Ok(topics)
    }

    /// After a reconnect of the subscriber connection (with wildcards held):
    /// announcements sent while it was down were lost, so every existing topic a
    /// held wildcard matches and this node does not follow is announced to the
    /// hub now, with its current epoch, as `sluice_publish` would have. The hub
    /// follows it from that epoch's seq 1 (the stream has what was published in the
    /// gap); topics already followed are left alone.
    pub(super) async fn rediscover(&self, sink: &dyn Sink) {
        if !self.discovery.load(Ordering::Acquire) {
            return;
        }
        let topics = match self.scan_topics(keys::META_SCAN_ALL.to_owned()).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "listing topics after a reconnect failed; wildcards see new topics from their next announcement");
                return;
            }
        };
        let missing: Vec<Topic> = {
            let followed = self.lock();
            topics
                .into_iter()
                .filter(|t| !followed.contains_key(t) && sink.wildcard_matches(t.as_str()))
                .collect()
        };
        for topic in missing {
            let epoch: Result<Option<String>, _> = self
                .pool
                .next()
                .hget(keys::meta(topic.as_str()), "epoch")
                .await;
            match epoch {
                Ok(Some(epoch)) => sink.announce(&topic, &epoch),
                Ok(None) => {}
                Err(e) => {
                    warn!(%topic, error = %redact::scrub(e.details()), "reading a topic's epoch failed")
                }
            }
        }
    }

    /// The topics whose meta keys match `pattern`, on every master.
    async fn scan_topics(&self, pattern: String) -> Result<Vec<Topic>, BrokerError> {
        let client = self.pool.next();
        let keys: Vec<fred::types::Key> = if client.is_clustered() {
            client
                .scan_cluster_buffered(pattern, Some(SCAN_COUNT), None)
                .try_collect()
                .await
        } else {
            client
                .scan_buffered(pattern, Some(SCAN_COUNT), None)
                .try_collect()
                .await
        }
        .map_err(|e| unavailable("listing topics", e.details()))?;
        Ok(keys
            .iter()
            .filter_map(|k| k.as_str())
            .filter_map(keys::topic_of_meta)
            .filter_map(|t| Topic::parse(t).ok())
            .collect())
    }

    /// One announcement: `<topic>\n<epoch>`. Anything else is ignored (anyone may
    /// PUBLISH to the channel).
    pub(super) fn on_announcement(&self, value: &Value, sink: &dyn Sink) {
        let text = match value {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            Value::String(s) => Some(&**s),
            _ => None,
        };
        let Some((topic, epoch)) = text.and_then(|t| t.split_once('\n')) else {
            debug!("ignoring a malformed topic announcement");
            return;
        };
        let Ok(topic) = Topic::parse(topic) else {
            debug!("ignoring an announcement of an invalid topic");
            return;
        };
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            debug!(%topic, "ignoring an announcement with an invalid epoch");
            return;
        }
        sink.announce(&topic, epoch);
    }
}
