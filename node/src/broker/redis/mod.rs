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
    error::Error as RedisError,
    interfaces::{
        ClientLike, FunctionInterface, KeysInterface, SortedSetsInterface, TransactionInterface,
    },
    types::{
        config::{Config as RedisConfig, ReconnectPolicy, UnresponsiveConfig},
        Builder, Expiration,
    },
};
use sluice_common::{keys, redact, time_fmt, StreamPosition, Topic};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    decode::{decode_entry, EpochCache},
    reader::Live,
};
use super::{Broker, BrokerError, PublishRequest, TopicState};
use crate::metrics::Metrics;
use crate::publication::{Pub, Sink};

/// The function library, with `__HISTORY_SIZE__` and `__HISTORY_TTL__` to fill in.
const LIBRARY: &str = include_str!("sluice.lua");
/// Connections in the pool for ordinary commands.
const POOL_SIZE: usize = 4;
/// How long start-up waits for Redis before starting not ready.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Commands on the pool fail after this long instead of waiting for a reconnect.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for each connection's QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed probes that mark Redis unreachable.
const PROBE_FAILURES_FOR_DOWN: u32 = 2;
/// How often connectivity is probed.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Every this many probes, check the library is still loaded (a Redis that
/// restarted empty faster than a probe has lost it without the node noticing).
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
    library: String,
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

/// Checks the URL is one this build can serve, with a clear reason when not.
fn parse_url(url: &str) -> Result<RedisConfig, BrokerError> {
    let unsupported = |what: &str| {
        BrokerError::Unavailable(format!(
            "REDIS_URL: {what} is not supported by this build yet"
        ))
    };
    if url.contains(',') {
        return Err(unsupported("a list of Redis servers"));
    }
    if url.starts_with("rediss") {
        return Err(unsupported("TLS (rediss://)"));
    }
    if url.starts_with("redis+cluster") || url.starts_with("redis-cluster") {
        return Err(unsupported("Redis Cluster"));
    }
    RedisConfig::from_url(url).map_err(|e| {
        BrokerError::Unavailable(redact::scrub(&format!(
            "REDIS_URL {:?}: {e}",
            redact::redact_url(url)
        )))
    })
}

/// Every fred error leaves this module through here (or through `redact::scrub`
/// directly): fred may echo its configuration, password included, in error text.
fn unavailable(e: RedisError) -> BrokerError {
    BrokerError::Unavailable(redact::scrub(e.details()))
}

impl RedisBroker {
    /// Connects, loads the function library and starts the readers.
    pub async fn connect(
        url: &str,
        sink: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
        history_size: usize,
        history_ttl: Duration,
    ) -> Result<Arc<Self>, BrokerError> {
        // Before anything can fail: from here on every error text is scrubbed of it.
        redact::remember_url_secrets(url);
        let shown = redact::redact_url(url);
        let config = parse_url(url)?;
        let mut config = config;
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
            library: library_source(history_size, history_ttl),
            connected: Arc::new(AtomicBool::new(false)),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let first = tokio::time::timeout(CONNECT_TIMEOUT, broker.pool.wait_for_connect()).await;
        match first {
            Ok(Ok(())) => {
                broker.load_library().await?;
                broker.connected.store(true, Ordering::Release);
                metrics.redis_connected.set(1.0);
                info!(url = %shown, "connected to Redis; function library loaded");
            }
            _ => warn!(url = %shown, "Redis is unreachable; starting not ready and retrying"),
        }
        let tasks = vec![
            tokio::spawn(broker.live.clone().run(sink.clone(), broker.stop.clone())),
            tokio::spawn(broker.clone().watch_health(metrics)),
        ];
        *broker.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(broker)
    }

    /// `FUNCTION LOAD REPLACE` of the library.
    async fn load_library(&self) -> Result<(), BrokerError> {
        self.pool
            .next()
            .function_load::<String, _>(true, self.library.as_str())
            .await
            .map(|_| ())
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "loading the sluice function library: {}",
                    redact::scrub(e.details())
                ))
            })
    }

    /// Whether the `sluice` library is loaded (true when the check itself fails,
    /// so a probe error never triggers a reload storm).
    async fn library_loaded(&self) -> bool {
        let listed: Result<fred::types::Value, _> = self
            .pool
            .next()
            .custom(
                fred::cmd!("FUNCTION"),
                vec!["LIST", "LIBRARYNAME", "sluice"],
            )
            .await;
        match listed {
            Ok(fred::types::Value::Array(libs)) => !libs.is_empty(),
            Ok(_) => true,
            Err(_) => true,
        }
    }

    /// Probes Redis; on coming back, reloads the library (a Redis restarted without
    /// persistence has lost it).
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
                match self.load_library().await {
                    Ok(()) => info!("Redis reachable again; function library reloaded"),
                    Err(e) => {
                        warn!(error = %e, "Redis is back but the library did not load");
                        continue;
                    }
                }
            } else if !up && was {
                warn!("Redis unreachable; node not ready until it is back");
            } else if up && probes % LIBRARY_CHECK_EVERY == 0 && !self.library_loaded().await {
                match self.load_library().await {
                    Ok(()) => info!("function library was missing from Redis; reloaded"),
                    Err(e) => warn!(error = %e, "function library is missing and did not load"),
                }
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

    async fn fcall_publish(&self, topic: &str, args: &[&str]) -> Result<(u64, String), RedisError> {
        self.pool
            .next()
            .fcall("sluice_publish", topic, args.to_vec())
            .await
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
        let mut args = vec![req.payload_json, req.kind.as_str()];
        if let Some(s) = req.snapshot_json {
            args.push(s);
        }
        let topic = req.topic.as_str();
        let mut result = self.fcall_publish(topic, &args).await;
        if matches!(&result, Err(e) if e.details().contains("Function not found")) {
            self.load_library().await?;
            result = self.fcall_publish(topic, &args).await;
        }
        match result {
            Ok((seq, epoch)) => Ok(StreamPosition { seq, epoch }),
            Err(e) => match e.details().split_once("sluice: ") {
                Some((_, reason)) => Err(BrokerError::Invalid(reason.to_owned())),
                None => Err(unavailable(e)),
            },
        }
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
        let snapshot = snap.map(|s| decode::snapshot(topic, snap_seq, e, ts, &s));
        Ok(TopicState {
            position: Some(StreamPosition { seq, epoch }),
            snapshot,
        })
    }

    async fn history(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Pub>, BrokerError> {
        if let Some(page) = self.live.history(topic, from, limit) {
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
        let mut epochs = EpochCache::default();
        let page: Vec<Pub> = entries
            .iter()
            .filter_map(|(id, fields)| decode_entry(topic, id, fields, &mut epochs))
            .collect();
        // The next resume from the same place is answered from memory.
        self.live.backfill(topic, &page);
        Ok(page)
    }

    async fn follow(&self, topic: &Topic) -> Result<(), BrokerError> {
        self.live.follow(topic).await
    }

    fn unfollow(&self, topic: &Topic) {
        self.live.unfollow(topic, &*self.sink);
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
    }

    async fn deregister_node(&self, node_id: &str) {
        let client = self.pool.next();
        let _: Result<(), _> = client.del(keys::node(node_id)).await;
        let _: Result<(), _> = client.zrem(keys::NODES, node_id).await;
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
        // A QUIT waits for its answer; a connection still reconnecting never gives one.
        let quit = |what: &'static str, f: futures_util::future::BoxFuture<'static, _>| async move {
            if tokio::time::timeout(QUIT_TIMEOUT, f).await.is_err() {
                warn!(connection = what, "QUIT got no answer; closing anyway");
            }
        };
        let (pool, probe, live) = (
            self.pool.clone(),
            self.probe.clone(),
            self.live.client().clone(),
        );
        quit("pool", Box::pin(async move { pool.quit().await })).await;
        quit("probe", Box::pin(async move { probe.quit().await })).await;
        quit("live", Box::pin(async move { live.quit().await })).await;
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
    fn unsupported_urls_are_refused_clearly() {
        for url in [
            "rediss://h:1",
            "redis+cluster://h:1",
            "redis://a:1,redis://b:2",
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.contains("not supported"), "{url}: {err}");
        }
        assert!(parse_url("redis://127.0.0.1:6379/0").is_ok());
    }
}
