//! The Redis broker: the only module that knows fred. Every seq, history entry and
//! snapshot lives in Redis, written by the `sluice` function library (`sluice.lua`),
//! so any node can serve any client's resume.
//!
//! Connections: a small pool for ordinary commands (publish, state, history, the
//! live path's catch-up reads), and one subscribed to the sharded channels of the
//! topics this node follows (a subscribed connection can do nothing else), read by
//! the live path ([`reader`]), which keeps each topic's recent publications in a
//! bounded tail ([`tail`]) that serves history.

// Public only so the fuzz targets (`fuzz/`) can drive the decoder directly.
pub mod decode;
mod errors;
mod library;
mod reader;
pub mod tail;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use fred::{
    clients::{Client, Pool},
    interfaces::{
        ClientLike, FunctionInterface, HashesInterface, KeysInterface, SortedSetsInterface,
        TransactionInterface,
    },
    types::{
        config::{Config as RedisConfig, ReconnectPolicy, UnresponsiveConfig},
        Builder, Expiration,
    },
};
use sluice_common::{
    function_library::Replace,
    keys, redact,
    redis_client::{self, PublishArgs, RedisSettings},
    replica_wait::{ReplicaWait, WaitFailure},
    time_fmt, StreamPosition, Topic, TopicFilter,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    decode::{decode_entry, Decoder},
    errors::{from_failure, parse_url, unavailable},
    reader::Live,
};
use super::{Broker, BrokerError, PublishRequest, TopicState};
use crate::metrics::Metrics;
use crate::publication::{Origin, Pub, Sink};

/// The function library, with `__HISTORY_SIZE__` and `__HISTORY_TTL__` to fill in.
const LIBRARY: &str = include_str!("sluice.lua");
/// Connections in the pool for ordinary commands.
const POOL_SIZE: usize = 4;
/// How long start-up waits for Redis before starting not ready.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Commands on the pool fail after this long instead of waiting for a reconnect.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive failed probes that mark Redis unreachable.
const PROBE_FAILURES_FOR_DOWN: u32 = 2;
/// How often connectivity is probed.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How long shutdown waits for the connections' QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Every this many probes (2 s), check each master still holds the library and not
/// an older version: a Redis that restarted empty faster than a probe has lost it
/// without the node noticing, and an older node that (re)started in a rolling
/// upgrade has replaced it with its own. The check reads the library's code
/// (`FUNCTION LIST … WITHCODE`, about 25 KB) from each master.
const LIBRARY_CHECK_EVERY: u32 = 4;

/// The function library as loaded for this node's history settings.
pub fn library_source(history_size: usize, history_ttl: Duration) -> String {
    LIBRARY
        .replacen("__HISTORY_SIZE__", &history_size.to_string(), 1)
        .replacen(
            "__HISTORY_TTL__",
            &history_ttl.as_secs().max(1).to_string(),
            1,
        )
}

#[derive(Debug)]
pub struct RedisBroker {
    pool: Pool,
    /// Its own connection for health probes, so a busy pool cannot delay them into
    /// a false "unreachable".
    probe: Client,
    /// The live path: the subscribed connection, positions and tails of the
    /// followed topics.
    live: Arc<Live>,
    sink: Arc<dyn Sink>,
    /// This node, as `meta.node` of every envelope it decodes.
    origin: Origin,
    library: String,
    /// Waits for a replica after each publish (`SLUICE_PUBLISH_REPLICAS`).
    replica_wait: ReplicaWait,
    /// The primaries last seen on Cluster (`host:port`, sorted): a new one gets the
    /// function library at once.
    primaries: Mutex<Vec<String>>,
    /// The newest library version found above this node's at the last load or
    /// check (`None`: none newer), so that is warned about once per change.
    newer_library: Mutex<Option<u32>>,
    /// Whether this node has loaded its library once: the first load brings its
    /// history settings (it replaces the same version with another text), later
    /// ones only repair a missing or older library.
    library_started: AtomicBool,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn builder(config: &RedisConfig, command_timeout: Option<Duration>) -> Builder {
    let mut b = Builder::from_config(config.clone());
    b.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(3);
        c.internal_command_timeout = Duration::from_secs(3);
        c.unresponsive = UnresponsiveConfig {
            max_timeout: Some(Duration::from_secs(5)),
            interval: Duration::from_secs(1),
        };
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    if let Some(t) = command_timeout {
        b.with_performance_config(|p| p.default_command_timeout = t);
    }
    b
}

impl RedisBroker {
    /// Connects to any `REDIS_URL` form (with `settings`: TLS roots, replica wait),
    /// loads the function library on every master and starts the readers. Every
    /// publication it decodes is stamped with `origin` (`meta.node`).
    pub async fn connect(
        url: &str,
        settings: &RedisSettings,
        sink: Arc<dyn Sink>,
        origin: Origin,
        metrics: Arc<Metrics>,
        history_size: usize,
        history_ttl: Duration,
    ) -> Result<Arc<Self>, BrokerError> {
        // Before anything can fail: from here on every error text is scrubbed of it.
        redact::remember_url_secrets(url);
        let shown = redact::redact_url(url);
        let mut config = parse_url(url, settings)?;
        // Keep retrying when Redis is down at start-up: the node starts not ready
        // and becomes ready when Redis answers, like after any later outage.
        config.fail_fast = false;
        let pool = builder(&config, Some(COMMAND_TIMEOUT))
            .build_pool(POOL_SIZE)
            .map_err(unavailable)?;
        pool.connect();
        let probe: Client = builder(&config, Some(COMMAND_TIMEOUT))
            .build()
            .map_err(unavailable)?;
        probe.connect();
        let subscriber: Client = builder(&config, None)
            .with_performance_config(|p| p.broadcast_channel_capacity = reader::MESSAGE_BUFFER)
            .build()
            .map_err(unavailable)?;
        subscriber.connect();
        // Never more than Redis keeps: a resume the stream could no longer serve must
        // not be recovered from memory on one node and refused on another.
        let live = Live::new(subscriber, pool.clone(), tail::TAIL_SIZE.min(history_size));
        let broker = Arc::new(RedisBroker {
            pool,
            probe,
            live,
            sink: sink.clone(),
            origin,
            library: library_source(history_size, history_ttl),
            replica_wait: ReplicaWait::new(settings.replicas, settings.replica_timeout),
            primaries: Mutex::new(Vec::new()),
            newer_library: Mutex::new(None),
            library_started: AtomicBool::new(false),
            connected: Arc::new(AtomicBool::new(false)),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let first = tokio::time::timeout(CONNECT_TIMEOUT, broker.pool.wait_for_connect()).await;
        match first {
            Ok(Ok(())) => {
                broker.load_library(Replace::IfOlderOrOtherText).await?;
                broker.library_started.store(true, Ordering::Release);
                broker.primaries_changed();
                broker.connected.store(true, Ordering::Release);
                metrics.redis_connected.set(1.0);
                info!(url = %shown, "connected to Redis; function library checked");
            }
            _ => warn!(url = %shown, "Redis is unreachable; starting not ready and retrying"),
        }
        let tasks = vec![
            tokio::spawn(broker.live.clone().run(
                sink.clone(),
                Decoder::new(broker.origin.clone()),
                broker.stop.clone(),
            )),
            tokio::spawn(broker.clone().watch_health(metrics)),
        ];
        *broker.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(broker)
    }

    /// Probes Redis; on coming back, loads the library where it is missing or older
    /// (a Redis restarted without persistence has lost it), and so every
    /// `LIBRARY_CHECK_EVERY` probes.
    async fn watch_health(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probes = 0u32;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            probes = probes.wrapping_add(1);
            let ping =
                tokio::time::timeout(Duration::from_secs(1), self.probe.ping::<String>(None)).await;
            let answered = matches!(ping, Ok(Ok(_))) && self.live.client().is_connected();
            // One slow probe under load is not an outage: two in a row are.
            failures = if answered { 0 } else { failures + 1 };
            let up = failures < PROBE_FAILURES_FOR_DOWN
                && (answered || self.connected.load(Ordering::Acquire));
            let was = self.connected.load(Ordering::Acquire);
            if up && !was {
                // A node that started while Redis was away brings its settings now.
                let replace = if self.library_started.load(Ordering::Acquire) {
                    Replace::IfOlder
                } else {
                    Replace::IfOlderOrOtherText
                };
                match self.load_library(replace).await {
                    Ok(()) => {
                        self.library_started.store(true, Ordering::Release);
                        info!("Redis reachable again; function library checked");
                    }
                    Err(e) => {
                        warn!(error = %e, "Redis is back but the library did not load");
                        continue;
                    }
                }
            } else if !up && was {
                warn!("Redis unreachable; node not ready until it is back");
            } else if up && self.primaries_changed() {
                match self.load_library(Replace::IfOlder).await {
                    Ok(()) => info!("Redis Cluster primaries changed; function library checked"),
                    Err(e) => warn!(error = %e, "new primaries, but the library did not load"),
                }
            } else if up && probes % LIBRARY_CHECK_EVERY == 0 {
                self.check_library().await;
            }
            self.connected.store(up, Ordering::Release);
            metrics.redis_connected.set(if up { 1.0 } else { 0.0 });
        }
    }

    /// The followed topics and how many publications each one's tail holds.
    pub fn followed_topics(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .live
            .followed()
            .into_iter()
            .map(|(t, n)| (t.as_str().to_owned(), n))
            .collect();
        v.sort();
        v
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
        let topic = req.topic.as_str();
        let args = PublishArgs {
            topic,
            kind: req.kind,
            payload_json: req.payload_json,
            snapshot_json: req.snapshot_json,
            meta_json: req.meta_json,
        };
        // One client for both steps: WAIT counts the writes of its own connection.
        let client = self.pool.next();
        let position = redis_client::fcall_publish(client, args, Some(&self.library))
            .await
            .map_err(from_failure)?;
        self.replica_wait
            .wait(client, topic, position)
            .await
            .map_err(|e| match e {
                WaitFailure::NotReplicated(n) => BrokerError::NotReplicated {
                    message: n.to_string(),
                    position: n.position,
                },
                WaitFailure::Redis(f) => from_failure(f),
            })
    }

    async fn state(&self, topic: &Topic) -> Result<TopicState, BrokerError> {
        let (seq, epoch, snap_seq, snap, snap_ts): (u64, String, u64, Option<bytes::Bytes>, i64) =
            self.pool
                .next()
                .fcall_ro("sluice_state", topic.as_str(), Vec::<String>::new())
                .await
                .map_err(unavailable)?;
        if epoch.is_empty() {
            return Ok(TopicState::default());
        }
        let e: Arc<str> = Arc::from(epoch.as_str());
        let ts = if snap_ts > 0 {
            snap_ts
        } else {
            time_fmt::now_ms()
        };
        let snapshot = snap.map(|s| decode::snapshot(&self.origin, topic, snap_seq, e, ts, &s));
        Ok(TopicState {
            position: Some(StreamPosition { seq, epoch }),
            snapshot,
        })
    }

    async fn head(&self, topic: &Topic) -> Result<Option<StreamPosition>, BrokerError> {
        // One HMGET is atomic: the seq, the epoch it counts in, and where a
        // continuation epoch came from (kept for `fork_of`, which a resume asks).
        type Head = (Option<u64>, Option<String>, Option<String>, Option<u64>);
        let (seq, epoch, parent, at): Head = self
            .pool
            .next()
            .hmget(
                keys::meta(topic.as_str()),
                vec!["seq", "epoch", "par", "fork"],
            )
            .await
            .map_err(unavailable)?;
        let epoch = epoch.filter(|e| !e.is_empty());
        if let (Some(e), Some(parent), Some(at)) = (&epoch, parent, at) {
            let fork = sluice_common::position::Fork {
                parent: parent.into(),
                at,
            };
            self.live.learn_fork(topic, &Arc::from(e.as_str()), fork);
        }
        Ok(epoch.map(|epoch| StreamPosition {
            seq: seq.unwrap_or(0),
            epoch,
        }))
    }

    fn fork_of(&self, topic: &Topic, epoch: &str) -> Option<sluice_common::position::Fork> {
        self.live.fork_of(topic, epoch)
    }

    async fn history(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Pub>, BrokerError> {
        if let Some(page) = self.local_history(topic, from, limit) {
            return Ok(page);
        }
        let entries: Vec<(String, HashMap<String, bytes::Bytes>)> = self
            .pool
            .next()
            .fcall_ro(
                "sluice_history",
                topic.as_str(),
                vec![from.max(1).to_string(), limit.max(1).to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut decoder = Decoder::new(self.origin.clone());
        let page: Vec<Pub> = entries
            .iter()
            .filter_map(|(id, fields)| decode_entry(topic, id, fields, &mut decoder))
            .collect();
        // The next resume from the same place is answered from memory.
        self.live.backfill(topic, &page);
        Ok(page)
    }

    async fn follow(&self, topic: &Topic) -> Result<(), BrokerError> {
        self.live.follow(topic).await
    }

    async fn follow_many(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.live.follow_many(topics).await
    }

    async fn follow_new(&self, topic: &Topic, epoch: &str) -> Result<(), BrokerError> {
        self.live.follow_from(topic, Some(epoch.into())).await
    }

    fn unfollow(&self, topic: &Topic) {
        self.live.unfollow(topic, &*self.sink);
    }

    fn discovers_topics(&self) -> bool {
        true
    }

    async fn topics_matching(&self, filter: &TopicFilter) -> Result<Vec<Topic>, BrokerError> {
        self.live.topics_matching(filter).await
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    async fn register_node(
        &self,
        node_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        // A transaction is not under the pool's command timeout: bound it here, so a
        // Redis that vanished cannot hold up a refresh or the drain.
        let write = async {
            let now = time_fmt::now_ms();
            let key = keys::node(node_id);
            let tx = self.pool.next().multi();
            let _: () = tx
                .set(
                    &key,
                    record,
                    Some(Expiration::PX(ttl.as_millis() as i64)),
                    None,
                    false,
                )
                .await
                .map_err(unavailable)?;
            let _: () = tx
                .zadd(keys::NODES, None, None, false, false, (now as f64, node_id))
                .await
                .map_err(unavailable)?;
            // Forget index entries of nodes gone for a while.
            let stale = (now - 10 * ttl.as_millis() as i64) as f64;
            let _: () = tx
                .zremrangebyscore(keys::NODES, f64::MIN, stale)
                .await
                .map_err(unavailable)?;
            tx.exec::<()>(true).await.map_err(unavailable)
        };
        tokio::time::timeout(COMMAND_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(BrokerError::Timeout("registering this node".into())))
    }

    async fn deregister_node(&self, node_id: &str) {
        let client = self.pool.next();
        let forget = async {
            let _: Result<(), _> = client.del(keys::node(node_id)).await;
            let _: Result<(), _> = client.zrem(keys::NODES, node_id).await;
        };
        // Best effort on the way out: the record expires by itself anyway.
        let _ = tokio::time::timeout(QUIT_TIMEOUT, forget).await;
    }

    fn local_head(&self, topic: &Topic) -> Option<StreamPosition> {
        self.live.local_head(topic)
    }

    fn local_history(&self, topic: &Topic, from: u64, limit: usize) -> Option<Vec<Pub>> {
        self.live.history(topic, from, limit)
    }

    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let client = self.pool.next();
        let ids: Vec<String> = client
            .zrange(keys::NODES, 0, -1, None, false, None, false)
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Records expire on their own; the index may still name dead nodes.
        let records: Vec<Option<String>> = client
            .mget(ids.iter().map(|id| keys::node(id)).collect::<Vec<_>>())
            .await
            .map_err(unavailable)?;
        Ok(records.into_iter().flatten().collect())
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        // Bounded: with every Redis gone (a Cluster torn down), fred's QUIT waited
        // for a reconnect that never came and SIGTERM never finished.
        let quit = async {
            let _ = self.pool.quit().await;
            let _ = self.probe.quit().await;
            let _ = self.live.client().quit().await;
        };
        if tokio::time::timeout(QUIT_TIMEOUT, quit).await.is_err() {
            warn!("Redis did not answer QUIT within {QUIT_TIMEOUT:?}; leaving without it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_is_rendered_with_the_history_settings() {
        let src = library_source(250, Duration::from_secs(60));
        assert!(src.starts_with("#!lua name=sluice"));
        assert!(src.contains("local HISTORY_SIZE = 250\n"));
        assert!(src.contains("local HISTORY_TTL = 60\n"));
        assert!(!src.contains("__HISTORY"));
    }

    #[test]
    fn the_library_declares_the_version_of_this_build_whatever_its_settings() {
        use sluice_common::function_library::{version_of, LIBRARY_VERSION};
        assert_eq!(version_of(LIBRARY), LIBRARY_VERSION);
        let a = library_source(250, Duration::from_secs(60));
        let b = library_source(10_000, Duration::from_secs(86_400));
        assert_ne!(a, b);
        assert_eq!(
            (version_of(&a), version_of(&b)),
            (LIBRARY_VERSION, LIBRARY_VERSION)
        );
    }
}
