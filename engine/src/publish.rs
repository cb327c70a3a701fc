//! One publish through `Publisher`, with a deadline, and what a failure means:
//! retry on the same connection, or start over with a new one.

use std::time::Duration;

use sluice_common::{
    publisher::{PublishError, PublishKind, Publisher},
    redis_client::RedisFailure,
};
use tokio::time::timeout;

use crate::market::Outgoing;

pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
pub const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Why a publish failed, and whether the connection pool has to be replaced.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// The connection is gone or stuck (not a reply from Redis): start over
    /// with a fresh pool (a `Publisher` pool reconnects by itself, but a fresh one
    /// also re-reads where the master is).
    pub reconnect: bool,
}

/// The engine's meta on every message it publishes: subscribers see
/// `"meta":{"node":"<node>","source":"sluice-demo-engine"}`.
pub const META: &str = r#"{"source":"sluice-demo-engine"}"#;

pub async fn publish(publisher: &Publisher, out: &Outgoing) -> Result<(), Failure> {
    let (topic, kind, payload, snapshot) = match out {
        Outgoing::Delta {
            topic,
            payload,
            snapshot,
        } => (topic, PublishKind::Delta, payload, snapshot.as_ref()),
        Outgoing::Alert { topic, payload } => (topic, PublishKind::Alert, payload, None),
    };
    let call = async {
        let snapshot = snapshot.map(|s| s.to_string());
        publisher
            .publish_json_with_meta(
                topic,
                kind,
                &payload.to_string(),
                snapshot.as_deref(),
                Some(META),
            )
            .await
    };
    match timeout(PUBLISH_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Failure::from(e)),
        Err(_) => Err(Failure {
            message: format!("no answer within {PUBLISH_TIMEOUT:?}"),
            reconnect: true,
        }),
    }
}

impl From<PublishError> for Failure {
    fn from(e: PublishError) -> Self {
        // Redis answered with an error (e.g. the function library is not loaded
        // yet, or OOM under noeviction), or the message itself was refused: the
        // connection is fine.
        let replied = match &e {
            PublishError::Redis(r) => {
                !matches!(r, RedisFailure::Unavailable(_) | RedisFailure::Timeout(_))
            }
            // Written, only not confirmed by a replica in time: the connection is fine.
            PublishError::NotReplicated(_) => true,
            PublishError::Topic(_)
            | PublishError::Json(_)
            | PublishError::Meta(_)
            | PublishError::Config(_) => true,
        };
        Failure {
            message: e.to_string(),
            reconnect: !replied,
        }
    }
}

/// The next wait after a failure: doubled, up to the cap.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use fred::error::{Error as RedisError, ErrorKind};
    use sluice_common::{redis_client::classify, Topic};

    use super::*;

    #[test]
    fn only_a_lost_or_stuck_connection_asks_for_a_new_one() {
        let redis = |kind| {
            Failure::from(PublishError::Redis(classify(&RedisError::new(
                kind,
                "OOM command not allowed",
            ))))
        };
        for kind in [
            ErrorKind::Unknown,
            ErrorKind::InvalidCommand,
            ErrorKind::InvalidArgument,
            ErrorKind::Parse,
            ErrorKind::NotFound,
        ] {
            assert!(!redis(kind.clone()).reconnect, "{kind:?}");
        }
        for kind in [ErrorKind::IO, ErrorKind::Canceled, ErrorKind::Timeout] {
            assert!(redis(kind.clone()).reconnect, "{kind:?}");
        }
        let topic = Topic::parse("no spaces").map(drop).unwrap_err();
        let bad_topic = Failure::from(PublishError::Topic(topic));
        assert!(!bad_topic.reconnect);
        assert!(
            bad_topic.message.starts_with("invalid topic"),
            "{}",
            bad_topic.message
        );
    }

    #[test]
    fn the_engine_meta_is_accepted_meta() {
        assert_eq!(sluice_common::protocol::meta::check_meta(META), Ok(()));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let mut waits = vec![BACKOFF_START];
        for _ in 0..8 {
            waits.push(next_backoff(waits[waits.len() - 1]));
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }
}
