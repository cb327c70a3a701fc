//! Live reading of topic streams: a few long-lived `XREAD BLOCK` loops, each on its
//! own dedicated connection and each covering a group of topics.
//!
//! A topic joins the group its name hashes to. Every read names, for each stream,
//! the last id this node has seen (never `$`), so a read that fred re-sends after a
//! reconnect skips nothing. A new topic interrupts the blocked read (`CLIENT
//! UNBLOCK`) and `follow` returns only once the read covering it is under way.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientInterface, ClientLike, StreamsInterface},
};
use sluice_common::{keys, Topic};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::decode::{decode_entry, EpochCache};
use crate::{broker::BrokerError, hub::Hub};

/// How long one `XREAD` blocks when nothing arrives.
pub(super) const BLOCK_MS: u64 = 5_000;
/// Entries read per stream per call.
const READ_COUNT: u64 = 1_000;
/// Extra time a blocked read gets beyond `BLOCK_MS` before the connection is presumed dead.
const READ_SLACK: Duration = Duration::from_secs(3);
/// What `XREAD` returns: per stream key, its entries `(id, fields)`.
type Streams = Vec<(String, Vec<(String, HashMap<String, bytes::Bytes>)>)>;
/// How long `follow` waits for the reader to pick a topic up.
const ARM_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
struct Cursors {
    /// Followed topics and the id of the last entry read from each.
    topics: HashMap<Topic, String>,
    /// Bumped on every change, so `follow` can wait for a read that includes its topic.
    generation: u64,
}

/// One blocking reader and the topics it covers.
#[derive(Debug)]
pub(super) struct ReaderGroup {
    client: Client,
    cursors: Mutex<Cursors>,
    /// The generation of the topic set the reader is currently reading.
    reading: watch::Sender<u64>,
    changed: tokio::sync::Notify,
}

impl ReaderGroup {
    pub(super) fn new(client: Client) -> Arc<Self> {
        Arc::new(ReaderGroup {
            client,
            cursors: Mutex::new(Cursors::default()),
            reading: watch::Sender::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cursors> {
        self.cursors.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_following(&self, topic: &Topic) -> bool {
        self.lock().topics.contains_key(topic)
    }

    /// Adds `topic`, reading from `start_id` (the stream's last id when it was
    /// followed), and waits until the blocked read covers it.
    pub(super) async fn follow(&self, topic: &Topic, start_id: String) -> Result<(), BrokerError> {
        let wanted = {
            let mut c = self.lock();
            if c.topics.contains_key(topic) {
                return Ok(());
            }
            c.topics.insert(topic.clone(), start_id);
            c.generation += 1;
            c.generation
        };
        self.changed.notify_one();
        let mut reading = self.reading.subscribe();
        let armed = async {
            loop {
                if *reading.borrow_and_update() >= wanted {
                    return;
                }
                // Interrupt the read in progress so it restarts with the new topic.
                let _ = self.client.unblock_self(None).await;
                let _ = tokio::time::timeout(Duration::from_millis(50), reading.changed()).await;
            }
        };
        if tokio::time::timeout(ARM_TIMEOUT, armed).await.is_err() {
            // Redis is slow or away; the reader picks the topic up when it is back,
            // and sessions fill any gap from history.
            debug!(%topic, "reader did not confirm the new topic in time");
        }
        Ok(())
    }

    /// Drops `topic` unless the hub has subscribers again.
    pub(super) fn unfollow(&self, topic: &Topic, hub: &Hub) {
        let mut c = self.lock();
        if !hub.has_subscribers(topic.as_str()) && c.topics.remove(topic).is_some() {
            c.generation += 1;
        }
    }

    /// The read loop; ends when `stop` is cancelled.
    pub(super) async fn run(self: Arc<Self>, hub: Arc<Hub>, stop: CancellationToken) {
        let mut epochs = EpochCache::default();
        let mut failing = false;
        loop {
            let (generation, keys, ids) = {
                let c = self.lock();
                let (keys, ids): (Vec<String>, Vec<String>) = c
                    .topics
                    .iter()
                    .map(|(t, id)| (keys::stream(t.as_str()), id.clone()))
                    .unzip();
                (c.generation, keys, ids)
            };
            if keys.is_empty() {
                self.reading.send_replace(generation);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.changed.notified() => continue,
                }
            }
            self.reading.send_replace(generation);
            let read = self.client.xread::<Option<Streams>, _, _>(
                Some(READ_COUNT),
                Some(BLOCK_MS),
                keys,
                ids,
            );
            // fred does not time out blocked commands, so a connection that died
            // silently under a read is caught here.
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(Duration::from_millis(BLOCK_MS) + READ_SLACK, read) => r,
            };
            let result = match result {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    let _ = self.client.force_reconnection().await;
                    Err("blocked read outlived its deadline; reconnecting".to_owned())
                }
            };
            match result {
                Ok(streams) => {
                    if failing {
                        failing = false;
                        self.reconcile().await;
                    }
                    for (key, entries) in streams.unwrap_or_default() {
                        self.deliver(&hub, &mut epochs, &key, entries);
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "stream read failed; retrying");
                    }
                    failing = true;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    }

    fn deliver(
        &self,
        hub: &Hub,
        epochs: &mut EpochCache,
        key: &str,
        entries: Vec<(String, std::collections::HashMap<String, bytes::Bytes>)>,
    ) {
        let Some(topic) = keys::topic_of_stream(key).and_then(|t| Topic::parse(t).ok()) else {
            return;
        };
        let Some(last) = entries.last().map(|(id, _)| id.clone()) else {
            return;
        };
        {
            let mut c = self.lock();
            match c.topics.get_mut(&topic) {
                Some(cursor) => *cursor = last,
                None => return, // unfollowed meanwhile
            }
        }
        for (id, fields) in &entries {
            match decode_entry(&topic, id, fields, epochs) {
                Some(p) => {
                    hub.broadcast(&p);
                }
                None => warn!(%topic, %id, "skipping a malformed stream entry"),
            }
        }
    }

    /// After an outage: a stream whose last id is now below our cursor was recreated
    /// (Redis lost data and the clock is behind the old ids); read it from the start.
    async fn reconcile(&self) {
        let cursors: Vec<(Topic, String)> = self
            .lock()
            .topics
            .iter()
            .map(|(t, id)| (t.clone(), id.clone()))
            .collect();
        for (topic, id) in cursors {
            let last: Result<Vec<(String, HashMap<String, String>)>, _> = self
                .client
                .xrevrange(keys::stream(topic.as_str()), "+", "-", Some(1))
                .await;
            let Ok(last) = last else { return };
            let stream_last = last.first().and_then(|(i, _)| keys::parse_entry_id(i));
            let behind = match (stream_last, keys::parse_entry_id(&id)) {
                (Some(s), Some(c)) => s < c,
                (None, Some(c)) => c != (0, 0),
                _ => false,
            };
            if behind {
                if let Some(cursor) = self.lock().topics.get_mut(&topic) {
                    *cursor = "0-0".to_owned();
                }
            }
        }
    }
}

/// The group index for a topic.
pub(super) fn group_of(topic: &Topic, groups: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.as_str().hash(&mut h);
    (h.finish() % groups.max(1) as u64) as usize
}

/// Whether the reader client is connected.
pub(super) fn connected(client: &Client) -> bool {
    client.is_connected()
}
