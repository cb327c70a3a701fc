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
    interfaces::{ClientLike, PubsubInterface},
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
        let pattern = keys::meta_scan(filter.base().as_str());
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
        let mut topics: Vec<Topic> = keys
            .iter()
            .filter_map(|k| k.as_str())
            .filter_map(keys::topic_of_meta)
            .filter(|t| filter.matches(t))
            .filter_map(|t| Topic::parse(t).ok())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        Ok(topics)
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
