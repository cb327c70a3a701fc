//! Live reading of topic streams, rung by a doorbell.
//!
//! `sluice_publish` ends with `PUBLISH sluice:live <topic>`. One subscriber
//! connection per node hears those and marks the topic dirty in its reader group;
//! the group then reads, without blocking, just the dirty streams from the last id
//! it has seen of each (never `$`), so the stream stays the only source of what is
//! delivered and in which order, and a lost doorbell only delays a read: every
//! followed topic is also read once a second, and all of them after the doorbell's
//! connection comes back.
//!
//! Why not one blocking `XREAD` over every followed stream: Redis pays for such a
//! read in proportion to its keys (registering and unregistering the client on
//! each, re-running the read over all of them), measured at ~1.3 ms per wake-up
//! for 500 topics — per publish once topics are busy. A doorbell costs Redis one
//! `PUBLISH`, and the read it triggers covers only the topics that changed.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, EventInterface, PubsubInterface, StreamsInterface},
};
use sluice_common::{keys, Topic};
use tokio::sync::{broadcast::error::RecvError, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::decode::{decode_entry, EpochCache};
use crate::{broker::BrokerError, publication::Sink};

/// The cursor of a stream never seen to exist.
const NEVER_SEEN: &str = "0-0";
/// The channel `sluice_publish` rings with the topic's name.
pub(super) const DOORBELL: &str = "sluice:live";
/// Entries read per stream per call; a stream that returns this many is read again.
const READ_COUNT: u64 = 1_000;
/// Longest a read may take before the connection is presumed dead.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Every followed topic is read at least this often, doorbell or not.
const SWEEP: Duration = Duration::from_secs(1);
/// Reads of one group start at most this often: under load each read takes every
/// entry that arrived meanwhile, so Redis does a bounded number of reads a second.
const MIN_READ_INTERVAL: Duration = Duration::from_micros(500);
/// What `XREAD` returns: per stream key, its entries `(id, fields)`.
type Streams = Vec<(String, Vec<(String, HashMap<String, bytes::Bytes>)>)>;
/// How long `follow` waits for the reader to pick a topic up.
const ARM_TIMEOUT: Duration = Duration::from_secs(3);

/// Streams one sweep read covers at most: a node following 100k topics sweeps
/// them in reads of this many keys (Redis pays per key on every read, and one
/// command of 100k keys would hold it for tens of milliseconds).
const SWEEP_CHUNK: usize = 500;

#[derive(Debug, Default)]
struct Cursors {
    /// Followed topics and the id of the last entry read from each. `0-0` marks a
    /// stream never seen to exist: the sweep skips it (a doorbell announces its
    /// first entry), so a made-up topic costs Redis nothing per second.
    topics: HashMap<Topic, String>,
    /// Followed topics with news (or possibly news) to read.
    dirty: HashSet<Topic>,
    /// Read every followed topic next time.
    all_dirty: bool,
    /// Bumped on every change, so `follow` can wait for a read that includes its topic.
    generation: u64,
}

/// One reader connection and the topics it covers.
#[derive(Debug)]
pub(super) struct ReaderGroup {
    client: Client,
    cursors: Mutex<Cursors>,
    /// The generation of the topic set of the read last started.
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

    /// The doorbell rang for `topic`: read it soon if this group follows it.
    pub(super) fn ring(&self, topic: &Topic) {
        let mut c = self.lock();
        if c.topics.contains_key(topic) {
            c.dirty.insert(topic.clone());
            drop(c);
            self.changed.notify_one();
        }
    }

    /// Something may have been missed (a doorbell connection dropped, a lagging
    /// listener): read every followed topic.
    pub(super) fn ring_all(&self) {
        self.lock().all_dirty = true;
        self.changed.notify_one();
    }

    /// Adds `topic`, reading from `start_id` (the stream's last id when it was
    /// followed), and waits until a read covering it has started.
    pub(super) async fn follow(&self, topic: &Topic, start_id: String) -> Result<(), BrokerError> {
        let wanted = {
            let mut c = self.lock();
            if c.topics.contains_key(topic) {
                return Ok(());
            }
            c.topics.insert(topic.clone(), start_id);
            // Read it once right away: anything published between `start_id` and
            // the doorbell reaching us is in the stream.
            c.dirty.insert(topic.clone());
            c.generation += 1;
            c.generation
        };
        self.changed.notify_one();
        let mut reading = self.reading.subscribe();
        let armed = async {
            while *reading.borrow_and_update() < wanted {
                if reading.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(ARM_TIMEOUT, armed).await.is_err() {
            // Redis is slow or away; the reader picks the topic up when it is back,
            // and sessions fill any gap from history.
            debug!(%topic, "reader did not confirm the new topic in time");
        }
        Ok(())
    }

    /// Drops `topic` unless a local session follows it again.
    pub(super) fn unfollow(&self, topic: &Topic, sink: &dyn Sink) {
        let mut c = self.lock();
        if !sink.wants(topic.as_str()) && c.topics.remove(topic).is_some() {
            c.generation += 1;
        }
    }

    /// The periodic sweep: every followed stream that exists is read again, in case
    /// a doorbell was lost.
    fn sweep(&self) {
        let mut c = self.lock();
        let c = &mut *c;
        for (t, id) in &c.topics {
            if id != NEVER_SEEN {
                c.dirty.insert(t.clone());
            }
        }
    }

    /// Takes the topics to read now, at most [`SWEEP_CHUNK`] (the rest stay dirty
    /// for the next read): (generation, keys, ids, topics).
    fn take_dirty(&self) -> (u64, Vec<String>, Vec<String>, Vec<Topic>) {
        let mut c = self.lock();
        if std::mem::take(&mut c.all_dirty) {
            // After an outage every followed topic, seen or not, is read once.
            let c = &mut *c;
            c.dirty.extend(c.topics.keys().cloned());
        }
        let topics: Vec<Topic> = {
            let c = &mut *c;
            let mut taken = Vec::with_capacity(c.dirty.len().min(SWEEP_CHUNK));
            c.dirty.retain(|t| {
                if taken.len() >= SWEEP_CHUNK || !c.topics.contains_key(t) {
                    // Unfollowed topics drop out; the rest wait for the next read.
                    return c.topics.contains_key(t);
                }
                taken.push(t.clone());
                false
            });
            taken
        };
        let (keys, ids) = topics
            .iter()
            .filter_map(|t| Some((keys::stream(t.as_str()), c.topics.get(t)?.clone())))
            .unzip();
        (c.generation, keys, ids, topics)
    }

    /// The read loop; ends when `stop` is cancelled.
    pub(super) async fn run(self: Arc<Self>, sink: Arc<dyn Sink>, stop: CancellationToken) {
        let mut epochs = EpochCache::default();
        let mut failing = false;
        let mut last_start: Option<tokio::time::Instant> = None;
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = tokio::time::Instant::now();
                self.sweep();
            }
            if let Some(at) = last_start {
                let next = at + MIN_READ_INTERVAL;
                if next > tokio::time::Instant::now() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(next) => {}
                    }
                }
            }
            let (generation, keys, ids, topics) = self.take_dirty();
            self.reading.send_replace(generation);
            if keys.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.changed.notified() => {}
                    _ = tokio::time::sleep_until(last_sweep + SWEEP) => {}
                }
                continue;
            }
            last_start = Some(tokio::time::Instant::now());
            let read =
                self.client
                    .xread::<Option<Streams>, _, _>(Some(READ_COUNT), None, keys, ids);
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(READ_DEADLINE, read) => r,
            };
            let result = match result {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    let _ = self.client.force_reconnection().await;
                    Err("stream read outlived its deadline; reconnecting".to_owned())
                }
            };
            match result {
                Ok(streams) => {
                    if failing {
                        failing = false;
                        self.reconcile().await;
                        self.ring_all();
                    }
                    for (key, entries) in streams.unwrap_or_default() {
                        let full = entries.len() as u64 >= READ_COUNT;
                        if let Some(topic) = self.deliver(&*sink, &mut epochs, &key, entries) {
                            if full {
                                // More may be waiting behind this batch.
                                self.lock().dirty.insert(topic);
                            }
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %sluice_common::redact::scrub(&e.to_string()), "stream read failed; retrying");
                    }
                    failing = true;
                    self.lock().dirty.extend(topics);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    }

    /// Hands a stream's new entries to the sink; returns the topic.
    fn deliver(
        &self,
        sink: &dyn Sink,
        epochs: &mut EpochCache,
        key: &str,
        entries: Vec<(String, std::collections::HashMap<String, bytes::Bytes>)>,
    ) -> Option<Topic> {
        let topic = keys::topic_of_stream(key).and_then(|t| Topic::parse(t).ok())?;
        let last = entries.last().map(|(id, _)| id.clone())?;
        {
            let mut c = self.lock();
            match c.topics.get_mut(&topic) {
                Some(cursor) => *cursor = last,
                None => return None, // unfollowed meanwhile
            }
        }
        for (id, fields) in &entries {
            match decode_entry(&topic, id, fields, epochs) {
                Some(p) => {
                    sink.deliver(&p);
                }
                None => warn!(%topic, %id, "skipping a malformed stream entry"),
            }
        }
        Some(topic)
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

/// Listens to the doorbell on its own connection and rings the group of each
/// topic named; after a reconnect (or falling behind) rings them all.
pub(super) async fn doorbell(
    client: Client,
    groups: Vec<Arc<ReaderGroup>>,
    stop: CancellationToken,
) {
    let mut messages = client.message_rx();
    let mut reconnects = client.reconnect_rx();
    let ring_all = || groups.iter().for_each(|g| g.ring_all());
    let subscribe = || async {
        if let Err(e) = client.subscribe(DOORBELL).await {
            warn!(error = %sluice_common::redact::scrub(&e.to_string()), "subscribing to the doorbell failed; reads fall back to the sweep");
        }
    };
    let _ = client.wait_for_connect().await;
    subscribe().await;
    ring_all();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            m = messages.recv() => match m {
                Ok(m) => {
                    if let Ok(topic) = m.value.convert::<String>() {
                        if let Ok(t) = Topic::parse(&topic) {
                            groups[group_of(&t, groups.len())].ring(&t);
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => ring_all(),
                Err(RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    subscribe().await;
                    ring_all();
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Whether the reader client is connected.
pub(super) fn connected(client: &Client) -> bool {
    client.is_connected()
}
