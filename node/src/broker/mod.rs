//! The broker seam: where seqs, history and snapshots live, and how publications
//! reach this node's hub.
//!
//! Two implementations with the same semantics: [`memory::MemoryBroker`] (embedded,
//! one node) and the Redis broker (shared by every node). Sessions rely on:
//! per topic, seqs start at 1 and grow by exactly one within an epoch; `history`
//! returns publications of the current epoch only; `follow` (and `follow_many`)
//! returns once live publications of the topic flow into the hub.

pub mod coalesce;
pub mod memory;
pub mod redis;

use sluice_common::{position::Fork, publisher::PublishKind, StreamPosition, Topic, TopicFilter};

use crate::publication::Pub;

/// A topic's current position and latest snapshot, read together.
#[derive(Debug, Clone, Default)]
pub struct TopicState {
    /// `None` for a topic that has no messages (or lost them all).
    pub position: Option<StreamPosition>,
    /// The latest snapshot, as a ready `snapshot` envelope with the seq it reflects.
    pub snapshot: Option<Pub>,
}

/// Why a broker call failed. Every text is free of secrets (Redis errors are
/// scrubbed of the URL's password before they become one of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The request itself is bad (a payload or snapshot that is not JSON, a meta
    /// that is not a JSON object): nothing was written. HTTP 400.
    #[error("invalid publish: {0}")]
    Invalid(String),
    /// The backing store cannot serve now: unreachable, restarting, failing over
    /// (a read-only replica), a cluster reconfiguring. Retry later. HTTP 503.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The backing store did not answer in time. HTTP 503.
    #[error("broker timed out: {0}")]
    Timeout(String),
    /// The `sluice` function library is missing on a master and loading it failed.
    /// HTTP 503.
    #[error("the sluice function library is not loaded: {0}")]
    NotLoaded(String),
    /// The configuration cannot work: credentials refused, TLS failed, bad URL.
    /// HTTP 503; at start-up it stops the node.
    #[error("broker misconfigured: {0}")]
    Config(String),
    /// The publish was written and has its seq, but fewer replicas than asked
    /// confirmed it within the wait (`SLUICE_PUBLISH_REPLICAS_TIMEOUT_MS`): it is
    /// delivered, yet a master failure now could lose it. HTTP 504, naming the seq,
    /// so the caller knows a retry publishes a second message.
    #[error("{message}")]
    NotReplicated {
        position: StreamPosition,
        message: String,
    },
}

/// What a publish asks for.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    pub topic: &'a Topic,
    pub kind: PublishKind,
    pub payload_json: &'a str,
    pub snapshot_json: Option<&'a str>,
    /// The engine's meta: a JSON object without `node`
    /// ([`sluice_common::protocol::meta::check_meta`]); the broker refuses others.
    pub meta_json: Option<&'a str>,
}

#[async_trait::async_trait]
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Atomically takes the topic's next seq, appends to its history, stores the
    /// snapshot if given, and delivers the message to every node following the topic.
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError>;

    /// The topic's head position and snapshot, read atomically.
    async fn state(&self, topic: &Topic) -> Result<TopicState, BrokerError>;

    /// The topic's head position alone (`None` for a topic with no messages): what a
    /// resume needs to decide, without the snapshot a successful resume never sends.
    async fn head(&self, topic: &Topic) -> Result<Option<StreamPosition>, BrokerError>;

    /// The position this node's live path has delivered `topic` up to, when it
    /// follows the topic and is caught up with it (no Redis read). Every later
    /// publication is still to come through the sink, so a session that joined the
    /// hub before asking may resume from it; one whose resume does not fit asks
    /// Redis ([`Broker::head`]). `None` where a broker keeps no such position.
    fn local_head(&self, _topic: &Topic) -> Option<StreamPosition> {
        None
    }

    /// Up to `limit` publications with `seq >= from` from what this node holds in
    /// memory (a followed topic's tail), when it holds `from` and everything after
    /// it up to the position its live path reached; `None` means read the store
    /// ([`Broker::history`]). No I/O, no await: a resume asks it before it joins
    /// or starts a shared read.
    fn local_history(&self, _topic: &Topic, _from: u64, _limit: usize) -> Option<Vec<Pub>> {
        None
    }

    /// Where `epoch` of `topic` came from, when it is a continuation epoch this
    /// node has read of (a Redis takeover; see [`sluice_common::position::Fork`]).
    /// `None` otherwise: the memory broker never forks, and an epoch of unknown
    /// origin is treated as a new history.
    fn fork_of(&self, _topic: &Topic, _epoch: &str) -> Option<Fork> {
        None
    }

    /// Up to `limit` publications of the current epoch with `seq >= from`, in order.
    /// The first one's seq is greater than `from` when older ones were trimmed.
    async fn history(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Pub>, BrokerError>;

    /// This node has local subscribers for `topic`: from now on, publications of the
    /// topic reach the hub. Idempotent; returns once live delivery is armed.
    async fn follow(&self, topic: &Topic) -> Result<(), BrokerError>;

    /// Follows many topics at once, for a wildcard joined over existing topics
    /// (SPEC §3: a pattern gets live messages only, no snapshot and no resume).
    /// Like [`Broker::follow`], each topic's position is read after its live
    /// delivery is subscribed, so the live path tells the next seq from a gap;
    /// unlike it, no history is read: a topic's in-memory tail starts empty and
    /// fills from live messages and from the first history read of a concrete
    /// resume, so it answers a resume only once it holds the resume's whole range
    /// ([`Broker::local_history`] stays `None` until then). A broker does it in
    /// batches, not one round trip per topic. Idempotent; returns once live
    /// delivery of every topic is armed.
    async fn follow_many(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        for topic in topics {
            self.follow(topic).await?;
        }
        Ok(())
    }

    /// Like [`Broker::follow`] for a topic announced as starting `epoch`: live
    /// delivery starts at the epoch's first seq, whatever was published before
    /// the subscription took effect (a wildcard gets a new topic's first
    /// messages). A topic followed already goes on as it is.
    async fn follow_new(&self, topic: &Topic, _epoch: &str) -> Result<(), BrokerError> {
        self.follow(topic).await
    }

    /// The hub lost its last local subscriber of `topic` (re-checked by the broker,
    /// since a new subscriber may have arrived meanwhile).
    fn unfollow(&self, topic: &Topic);

    /// Whether this broker supports wildcard subscriptions: it lists the topics a
    /// filter matches ([`Broker::topics_matching`]) and announces every topic that
    /// starts a new epoch to its sink ([`crate::publication::Sink::announce`]).
    fn discovers_topics(&self) -> bool {
        false
    }

    /// The existing topics `filter` matches (with a live epoch), for a wildcard
    /// subscription to follow.
    async fn topics_matching(&self, _filter: &TopicFilter) -> Result<Vec<Topic>, BrokerError> {
        Ok(Vec::new())
    }

    /// Whether the broker's backing store is reachable now.
    fn is_connected(&self) -> bool;

    /// Stops background readers.
    async fn shutdown(&self);

    /// Writes this node's registry record (JSON), live for `ttl`.
    async fn register_node(
        &self,
        node_id: &str,
        record: &str,
        ttl: std::time::Duration,
    ) -> Result<(), BrokerError>;

    /// Removes this node's record (clean exit).
    async fn deregister_node(&self, node_id: &str);

    /// The records of every live node.
    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError>;
}

/// The topic's position, and its snapshot only when `with_snapshot` (a reader that
/// will not send the snapshot reads the head alone).
pub async fn read_state(
    broker: &dyn Broker,
    topic: &Topic,
    with_snapshot: bool,
) -> Result<TopicState, BrokerError> {
    if with_snapshot {
        return broker.state(topic).await;
    }
    let position = broker.head(topic).await?;
    Ok(TopicState {
        position,
        snapshot: None,
    })
}
