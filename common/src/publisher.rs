//! `Publisher`: how a Rust engine publishes. A thin wrapper over the Redis Function
//! `FCALL sluice_publish 1 <topic> <payload> [<type> [<snapshot> [<meta>]]]`, so Rust
//! engines, `POST /publish` and engines in any other language go through the same
//! atomic step.

use std::{sync::Arc, time::Duration};

use fred::{clients::Pool, interfaces::ClientLike, types::config::ReconnectPolicy};
use serde::Serialize;

use crate::{
    position::StreamPosition,
    redis_client::{fcall_publish, fred_config, PublishArgs, RedisFailure, RedisSettings},
    redis_url::RedisUrl,
    replica_wait::{ReplicaWait, WaitFailure},
    topic::Topic,
};

/// A publish that gets no answer within this long fails (`Timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::redis_client::{PublishKind, PUBLISH_FUNCTION};

/// How long a connection's oldest command may wait for an answer before the
/// connection counts as dead and is replaced (see [`Publisher::connect_with`]).
const UNRESPONSIVE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic: {0}")]
    Topic(#[from] crate::topic::TopicError),
    #[error("payload is not serializable to JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The meta is not a JSON object of at most 4 KiB without `node`; nothing was
    /// sent.
    #[error("invalid meta: {0}")]
    Meta(#[from] crate::protocol::meta::MetaError),
    /// The URL or a setting is bad (never shows the password).
    #[error("REDIS_URL: {0}")]
    Config(String),
    /// Redis refused or could not take the call; classified, scrubbed of secrets.
    #[error("redis: {0}")]
    Redis(#[from] RedisFailure),
    /// Redis took the publish (it has a seq) but too few replicas confirmed it in
    /// time: it may be lost if the master fails before they catch up.
    #[error(transparent)]
    NotReplicated(crate::replica_wait::NotReplicated),
}

impl From<WaitFailure> for PublishError {
    fn from(e: WaitFailure) -> Self {
        match e {
            WaitFailure::NotReplicated(n) => PublishError::NotReplicated(n),
            WaitFailure::Redis(r) => PublishError::Redis(r),
        }
    }
}

/// Publishes into Sluice through Redis. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Publisher {
    pool: Pool,
    /// Waits for a replica after each publish (`SLUICE_PUBLISH_REPLICAS`).
    wait: Arc<ReplicaWait>,
    /// The rendered function library, when the caller has it: loaded and retried
    /// once on a master that lacks it (never over a newer version). Without it such
    /// a publish fails `NotLoaded`.
    library: Option<Arc<str>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects a pool of `size` connections to `url` (any `REDIS_URL` form), with
    /// the settings of the process environment (`SLUICE_REDIS_TLS_CA`,
    /// `SLUICE_PUBLISH_REPLICAS`, `SLUICE_PUBLISH_REPLICAS_TIMEOUT_MS`). The node must
    /// have loaded the function library into that Redis (it does at start-up).
    pub async fn connect(url: &str, size: usize) -> Result<Self, PublishError> {
        let settings = RedisSettings::from_lookup(|k| std::env::var(k).ok())
            .map_err(|e| PublishError::Config(e.join("; ")))?;
        Self::connect_with(url, size, &settings).await
    }

    /// [`Publisher::connect`] with explicit settings.
    pub async fn connect_with(
        url: &str,
        size: usize,
        settings: &RedisSettings,
    ) -> Result<Self, PublishError> {
        // Before anything can fail, so every error shown later is scrubbed of them.
        crate::redact::remember_url_secrets(url);
        let parsed = RedisUrl::parse(url).map_err(|e| PublishError::Config(e.to_string()))?;
        let config = fred_config(&parsed, settings.tls_ca.as_deref())
            .map_err(|e| PublishError::Config(e.to_string()))?;
        // Reconnect for ever (a failover, a restart), and fail a call rather than
        // hang while Redis is away: the engine decides whether to retry. A
        // connection whose oldest command has waited UNRESPONSIVE is closed and
        // opened again: a master killed without a TCP reset (a dead host, a
        // killed container) is then left in seconds, not after a timeout per call
        // (the publish itself is never resent: `fcall_publish` allows one attempt).
        let pool = fred::types::Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = CALL_TIMEOUT)
            .with_connection_config(|c| {
                // fred's defaults (10 s) would keep a reconnect to a dead master
                // (still in the slot map or the sentinels' answer) waiting that long.
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.unresponsive = fred::types::config::UnresponsiveConfig {
                    max_timeout: Some(UNRESPONSIVE),
                    interval: Duration::from_millis(500),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(size.max(1))
            .map_err(|e| RedisFailure::Config(crate::redact::scrub(e.details())))?;
        pool.init()
            .await
            .map_err(|e| crate::redis_client::classify(&e))?;
        let mut p = Publisher::from_pool(pool);
        p.wait = Arc::new(ReplicaWait::new(
            settings.replicas,
            settings.replica_timeout,
        ));
        Ok(p)
    }

    /// Wraps a pool the caller already manages (replica wait: `auto`, 1 s).
    pub fn from_pool(pool: Pool) -> Self {
        let d = RedisSettings::default();
        Publisher {
            pool,
            wait: Arc::new(ReplicaWait::new(d.replicas, d.replica_timeout)),
            library: None,
        }
    }

    /// Lets this publisher load `library` (the rendered `sluice` library) into a
    /// master that lacks the function, then retry once. It is loaded only where no
    /// library or an older version is (`function_library`): a newer one is left in
    /// place with a warning, and the call is retried against it.
    pub fn with_library(mut self, library: impl Into<Arc<str>>) -> Self {
        self.library = Some(library.into());
        self
    }

    /// Publishes a delta.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &impl Serialize,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_value(topic, PublishKind::Delta, payload).await
    }

    /// Publishes a delta and makes `snapshot` the topic's latest state at its seq.
    pub async fn publish_with_snapshot(
        &self,
        topic: &str,
        payload: &impl Serialize,
        snapshot: &impl Serialize,
    ) -> Result<StreamPosition, PublishError> {
        let snapshot = serde_json::to_string(snapshot)?;
        self.publish_json(
            topic,
            PublishKind::Delta,
            &serde_json::to_string(payload)?,
            Some(&snapshot),
        )
        .await
    }

    /// Publishes an alert.
    pub async fn alert(
        &self,
        topic: &str,
        payload: &impl Serialize,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_value(topic, PublishKind::Alert, payload).await
    }

    /// `payload` serialized, published as `kind` without snapshot or meta.
    async fn publish_value(
        &self,
        topic: &str,
        kind: PublishKind,
        payload: &impl Serialize,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_json(topic, kind, &serde_json::to_string(payload)?, None)
            .await
    }

    /// Publishes a message of `kind` with `meta`, the engine's own fields for the
    /// envelope's `meta` (a source, a trace id): a JSON object of at most
    /// [`MAX_META_BYTES`](crate::protocol::meta::MAX_META_BYTES) without the key
    /// `node`, which every node fills in with its own id. Refused before anything is
    /// sent otherwise.
    pub async fn publish_with_meta(
        &self,
        topic: &str,
        kind: PublishKind,
        payload: &impl Serialize,
        meta: &impl Serialize,
    ) -> Result<StreamPosition, PublishError> {
        let meta = serde_json::to_string(meta)?;
        self.publish_json_with_meta(
            topic,
            kind,
            &serde_json::to_string(payload)?,
            None,
            Some(&meta),
        )
        .await
    }

    /// Publishes payload text that is already JSON. The function checks it is valid
    /// JSON and refuses it otherwise, writing nothing.
    pub async fn publish_json(
        &self,
        topic: &str,
        kind: PublishKind,
        payload_json: &str,
        snapshot_json: Option<&str>,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_json_with_meta(topic, kind, payload_json, snapshot_json, None)
            .await
    }

    /// [`Publisher::publish_json`] with the engine's meta as JSON text (see
    /// [`Publisher::publish_with_meta`]).
    pub async fn publish_json_with_meta(
        &self,
        topic: &str,
        kind: PublishKind,
        payload_json: &str,
        snapshot_json: Option<&str>,
        meta_json: Option<&str>,
    ) -> Result<StreamPosition, PublishError> {
        Topic::parse(topic)?;
        if let Some(m) = meta_json {
            crate::protocol::meta::check_meta(m)?;
        }
        let client = self.pool.next();
        let args = PublishArgs {
            topic,
            kind,
            payload_json,
            snapshot_json,
            meta_json,
        };
        let position = fcall_publish(client, args, self.library.as_deref()).await?;
        Ok(self.wait.wait(client, topic, position).await?)
    }

    /// The underlying pool, e.g. to shut it down.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
