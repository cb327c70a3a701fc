//! `Publisher`: how a Rust engine publishes. A thin wrapper over the Redis Function
//! `FCALL sluice_publish 1 <topic> <payload> [<type> [<snapshot>]]`, so Rust engines,
//! `POST /publish` and engines in any other language go through the same atomic step.

use fred::{
    clients::Pool,
    error::Error as RedisError,
    interfaces::{ClientLike, FunctionInterface},
    types::config::Config,
};
use serde::Serialize;

use crate::{position::StreamPosition, topic::Topic};

/// The name of the publishing function in the `sluice` library.
pub const PUBLISH_FUNCTION: &str = "sluice_publish";

/// Kind of message a publish creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    Delta,
    Alert,
}

impl PublishKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            PublishKind::Delta => "delta",
            PublishKind::Alert => "alert",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delta" => Some(PublishKind::Delta),
            "alert" => Some(PublishKind::Alert),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic: {0}")]
    Topic(#[from] crate::topic::TopicError),
    #[error("payload is not serializable to JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Shown scrubbed of the URL's secrets: fred's error text may echo its config.
    #[error("redis: {}", crate::redact::scrub(&.0.to_string()))]
    Redis(#[from] RedisError),
}

/// Publishes into Sluice through Redis. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Publisher {
    pool: Pool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects a pool of `size` connections to `url` (`redis://…`). The node must
    /// have loaded the function library into that Redis (it does at start-up).
    pub async fn connect(url: &str, size: usize) -> Result<Self, PublishError> {
        // Before anything can fail, so every error shown later is scrubbed of them.
        crate::redact::remember_url_secrets(url);
        let config = Config::from_url(url)?;
        let pool = fred::types::Builder::from_config(config).build_pool(size.max(1))?;
        pool.init().await?;
        Ok(Publisher { pool })
    }

    /// Wraps a pool the caller already manages.
    pub fn from_pool(pool: Pool) -> Self {
        Publisher { pool }
    }

    /// Publishes a delta.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &impl Serialize,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_json(
            topic,
            PublishKind::Delta,
            &serde_json::to_string(payload)?,
            None,
        )
        .await
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
        self.publish_json(
            topic,
            PublishKind::Alert,
            &serde_json::to_string(payload)?,
            None,
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
        Topic::parse(topic)?;
        let mut args = vec![payload_json.to_owned(), kind.as_str().to_owned()];
        if let Some(s) = snapshot_json {
            args.push(s.to_owned());
        }
        let (seq, epoch): (u64, String) = self
            .pool
            .next()
            .fcall(PUBLISH_FUNCTION, topic, args)
            .await?;
        Ok(StreamPosition { seq, epoch })
    }

    /// The underlying pool, e.g. to shut it down.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
