//! The hub: which local sessions want which topic, fan-out to them, and whether
//! this node follows a topic at all.
//!
//! The hub owns the subscription side of every session's [`Mailbox`]. `broadcast`
//! never awaits and never blocks on a session: it `try_send`s the shared publication
//! into each subscriber's bounded mailbox. A full mailbox marks that session a slow
//! consumer (it closes itself with 4008 and the client resumes from history); a
//! closed one means the session is gone and is removed.
//!
//! The hub alone decides when the node follows a topic: the broker is told to follow
//! by the first subscriber's `join` and to unfollow when the last one leaves, however
//! it leaves (unsubscribe, session end, or removed during a broadcast).
//!
//! Topics are spread over [`SHARDS`] independently locked maps, so fan-out of one
//! topic never waits for a join or a leave on another.

mod mailbox;
mod trie;
mod wildcards;

use sluice_common::lock::RwLockExt;
use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
    },
};

use sluice_common::Topic;

pub use mailbox::{Mailbox, Refused, Signal};
pub use trie::FilterTrie;

use crate::{
    broker::{Broker, BrokerError},
    metrics::Metrics,
    publication::{Pub, Sink},
};

/// Identifies a subscriber (a session) within this node.
pub type SubscriberId = u64;

/// Independently locked parts of the topic map.
pub const SHARDS: usize = 16;

/// One session's interest in a topic: its mailbox, and how many of its
/// subscriptions want the topic (a concrete one and each matching wildcard). The
/// mailbox gets one copy per publication; the session hands a copy to each of its
/// subscriptions.
#[derive(Debug)]
struct Interest {
    mailbox: Arc<Mailbox>,
    refs: u32,
}

type Subscribers = HashMap<SubscriberId, Interest>;

#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<HashMap<Topic, Subscribers>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Topics with at least one subscriber, across shards.
    topics: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Distinct topics this node follows at most (`SLUICE_MAX_TOPICS`): each one
    /// costs the broker a live subscription and a cursor.
    max_topics: usize,
    /// Told to follow and unfollow topics; weak, since the broker holds the hub as
    /// its [`Sink`]. Unset in unit tests of the hub alone.
    broker: OnceLock<Weak<dyn Broker>>,
    /// Held wildcard subscriptions and the topics each one made the node follow.
    wildcards: std::sync::Mutex<wildcards::Wildcards>,
    /// Whether any wildcard is held: announcements of new topics are ignored
    /// without a lock while none is.
    any_wildcard: std::sync::atomic::AtomicBool,
}

/// Why [`Hub::join`] refused a subscriber.
#[derive(Debug, Clone)]
pub enum JoinError {
    /// The node already follows `SLUICE_MAX_TOPICS` topics.
    TopicLimit,
    /// The broker could not arm live delivery of the topic.
    Broker(BrokerError),
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, max_topics: usize) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
            topics: AtomicUsize::new(0),
            metrics,
            max_topics,
            broker: OnceLock::new(),
            wildcards: Default::default(),
            any_wildcard: Default::default(),
        }
    }

    /// Connects the broker the hub tells to follow and unfollow topics. Once.
    pub fn attach(&self, broker: &Arc<dyn Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    fn broker(&self) -> Option<Arc<dyn Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }

    fn shard(&self, topic: &str) -> &RwLock<HashMap<Topic, Subscribers>> {
        &self.shards[self.hasher.hash_one(topic) as usize % SHARDS]
    }

    fn read(&self, topic: &str) -> RwLockReadGuard<'_, HashMap<Topic, Subscribers>> {
        self.shard(topic).read_unpoisoned()
    }

    fn write(&self, topic: &str) -> RwLockWriteGuard<'_, HashMap<Topic, Subscribers>> {
        self.shard(topic).write_unpoisoned()
    }

    fn all(&self) -> impl Iterator<Item = RwLockReadGuard<'_, HashMap<Topic, Subscribers>>> {
        self.shards.iter().map(|s| s.read_unpoisoned())
    }

    /// Adds a subscriber and returns once publications of `topic` reach its
    /// mailbox: the broker follows the topic from its first subscriber on (every
    /// joiner waits for that; following is idempotent). Returns the hub's copy of
    /// the topic name, for the session to keep instead of its own (one allocation
    /// per topic, not per subscription). A topic the node does not follow yet is
    /// refused once it follows `max_topics`.
    pub async fn join(
        &self,
        topic: &Topic,
        id: SubscriberId,
        mailbox: Arc<Mailbox>,
    ) -> Result<Topic, JoinError> {
        let shared = self.add(topic, id, mailbox)?;
        if let Some(broker) = self.broker() {
            if let Err(e) = broker.follow(&shared).await {
                self.leave(&shared, id);
                return Err(JoinError::Broker(e));
            }
        }
        Ok(shared)
    }

    fn add(
        &self,
        topic: &Topic,
        id: SubscriberId,
        mailbox: Arc<Mailbox>,
    ) -> Result<Topic, JoinError> {
        let mut map = self.write(topic.as_str());
        if let Some((shared, _)) = map.get_key_value(topic) {
            let shared = shared.clone();
            if let Some(subs) = map.get_mut(topic) {
                subs.entry(id)
                    .and_modify(|i| i.refs += 1)
                    .or_insert(Interest { mailbox, refs: 1 });
            }
            return Ok(shared);
        }
        let max = self.max_topics;
        self.topics
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| JoinError::TopicLimit)?;
        map.insert(
            topic.clone(),
            HashMap::from([(id, Interest { mailbox, refs: 1 })]),
        );
        Ok(topic.clone())
    }

    /// Drops one of a subscriber's interests in `topic` (its concrete subscription,
    /// or one wildcard's); the subscriber leaves with its last. The broker unfollows
    /// the topic when that was its last subscriber. Returns whether it was.
    pub fn leave(&self, topic: &Topic, id: SubscriberId) -> bool {
        self.drop_interest(topic, id, false)
    }

    /// Drops one interest of `id` in `topic`, or every one when `all` (the
    /// session is gone).
    fn drop_interest(&self, topic: &Topic, id: SubscriberId, all: bool) -> bool {
        let last = {
            let mut map = self.write(topic.as_str());
            let Some(subs) = map.get_mut(topic) else {
                return false;
            };
            if let Some(interest) = subs.get_mut(&id) {
                interest.refs = interest.refs.saturating_sub(1);
                if all || interest.refs == 0 {
                    subs.remove(&id);
                }
            }
            let last = subs.is_empty();
            if last {
                map.remove(topic);
                self.topics.fetch_sub(1, Ordering::AcqRel);
            }
            last
        };
        if last {
            // The broker re-checks `wants`: a subscriber may have joined meanwhile.
            if let Some(broker) = self.broker() {
                broker.unfollow(topic);
            }
        }
        last
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.read(topic).contains_key(topic)
    }

    /// Topics with local subscribers, with their subscriber counts.
    pub fn topic_counts(&self) -> Vec<(Topic, usize)> {
        self.all()
            .flat_map(|m| {
                m.iter()
                    .map(|(t, s)| (t.clone(), s.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Each subscriber's topics, for `/connections`.
    pub fn topics_by_subscriber(&self) -> HashMap<SubscriberId, Vec<Topic>> {
        let mut by_id: HashMap<SubscriberId, Vec<Topic>> = HashMap::new();
        for map in self.all() {
            for (topic, subs) in map.iter() {
                for id in subs.keys() {
                    by_id.entry(*id).or_default().push(topic.clone());
                }
            }
        }
        by_id
    }

    pub fn topic_count(&self) -> usize {
        self.topics.load(Ordering::Acquire)
    }

    /// Queues `p` for every local subscriber of its topic; returns how many took it.
    /// Subscribers whose mailbox is closed are removed (and the topic unfollowed
    /// when none is left).
    pub fn broadcast(&self, p: &Pub) -> usize {
        let mut closed = Vec::new();
        let mut delivered = 0;
        {
            let map = self.read(p.topic.as_str());
            let Some(subs) = map.get(&p.topic) else {
                return 0;
            };
            for (id, Interest { mailbox, .. }) in subs {
                match mailbox.try_send(p) {
                    Ok(()) => delivered += 1,
                    Err(Refused::Full) => {
                        // Lossless by design: the client resumes from history.
                        self.metrics.messages_dropped.increment(1);
                        mailbox.signal(Signal::Slow);
                    }
                    Err(Refused::Closed) => {
                        self.metrics.messages_dropped.increment(1);
                        closed.push(*id);
                    }
                }
            }
        }
        for id in closed {
            self.drop_interest(&p.topic, id, true);
        }
        delivered
    }
}

impl Sink for Hub {
    fn wants(&self, topic: &str) -> bool {
        self.has_subscribers(topic)
    }

    fn deliver(&self, p: &Pub) -> usize {
        self.broadcast(p)
    }

    fn announce(&self, topic: &Topic, epoch: &str) {
        self.announce_topic(topic, epoch)
    }

    fn wildcard_matches(&self, topic: &str) -> bool {
        self.any_wildcard_matches(topic)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{
        broker::{PublishRequest, TopicState},
        publication::Publication,
    };
    use sluice_common::{protocol::FrameType, StreamPosition};

    fn publication(topic: &Topic, seq: u64) -> Pub {
        Publication::new(topic.clone(), seq, "e".into(), FrameType::Delta, 0, "{}")
    }

    fn mailbox(cap: usize) -> Arc<Mailbox> {
        Arc::new(Mailbox::new(cap))
    }

    fn t(n: &str) -> Topic {
        Topic::parse(n).unwrap()
    }

    fn hub(max_topics: usize) -> Hub {
        Hub::new(Arc::new(Metrics::new()), max_topics)
    }

    /// Records what the hub asks of a broker; follows fail for topics named `bad`.
    #[derive(Debug, Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Broker for Recording {
        async fn publish(&self, _: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
            Err(BrokerError::Unavailable("not in this test".into()))
        }
        async fn state(&self, _: &Topic) -> Result<TopicState, BrokerError> {
            Ok(TopicState::default())
        }
        async fn head(&self, _: &Topic) -> Result<Option<StreamPosition>, BrokerError> {
            Ok(None)
        }
        async fn history(&self, _: &Topic, _: u64, _: usize) -> Result<Vec<Pub>, BrokerError> {
            Ok(Vec::new())
        }
        async fn follow(&self, topic: &Topic) -> Result<(), BrokerError> {
            self.calls.lock().unwrap().push(format!("follow {topic}"));
            if topic.as_str() == "bad" {
                return Err(BrokerError::Unavailable("down".into()));
            }
            Ok(())
        }
        fn unfollow(&self, topic: &Topic) {
            self.calls.lock().unwrap().push(format!("unfollow {topic}"));
        }
        fn is_connected(&self) -> bool {
            true
        }
        async fn shutdown(&self) {}
        async fn register_node(
            &self,
            _: &str,
            _: &str,
            _: std::time::Duration,
        ) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn deregister_node(&self, _: &str) {}
        async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn fans_out_to_each_subscriber_of_the_topic_only() {
        let hub = hub(100);
        let (a, b) = (t("a"), t("b"));
        let (m1, m2) = (mailbox(8), mailbox(8));
        hub.join(&a, 1, m1.clone()).await.unwrap();
        let shared = hub.join(&t("a"), 2, m2.clone()).await.unwrap();
        assert_eq!(shared, a);
        hub.join(&b, 2, m2.clone()).await.unwrap();
        let by_id = hub.topics_by_subscriber();
        assert_eq!(by_id[&1], std::slice::from_ref(&a));
        assert_eq!(by_id[&2].len(), 2);
        assert_eq!(hub.broadcast(&publication(&a, 1)), 2);
        assert_eq!(hub.broadcast(&publication(&b, 1)), 1);
        assert_eq!(m1.try_recv().unwrap().topic, a);
        assert!(m1.try_recv().is_none());
        assert_eq!(m2.try_recv().unwrap().topic, a);
        assert_eq!(m2.try_recv().unwrap().topic, b);
        assert!(!hub.leave(&a, 1));
        assert!(hub.leave(&a, 2));
        assert!(!hub.has_subscribers("a"));
        assert_eq!(hub.topic_count(), 1);
    }

    #[tokio::test]
    async fn a_full_mailbox_flags_the_session_slow_without_blocking() {
        let hub = hub(100);
        let topic = t("t");
        let m = mailbox(2);
        hub.join(&topic, 1, m.clone()).await.unwrap();
        assert_eq!(hub.broadcast(&publication(&topic, 1)), 1);
        assert_eq!(hub.broadcast(&publication(&topic, 2)), 1);
        assert!(!m.is_signalled(Signal::Slow));
        assert_eq!(hub.broadcast(&publication(&topic, 3)), 0);
        assert!(m.is_signalled(Signal::Slow));
    }

    #[tokio::test]
    async fn topics_beyond_the_node_limit_are_refused_but_joining_a_followed_one_is_not() {
        let hub = hub(2);
        let m = mailbox(2);
        hub.join(&t("a"), 1, m.clone()).await.unwrap();
        hub.join(&t("b"), 1, m.clone()).await.unwrap();
        assert!(matches!(
            hub.join(&t("c"), 1, m.clone()).await,
            Err(JoinError::TopicLimit)
        ));
        assert!(
            hub.join(&t("a"), 2, m.clone()).await.is_ok(),
            "a is followed already"
        );
        assert!(hub.leave(&t("b"), 1));
        assert_eq!(hub.topic_count(), 1);
        assert!(
            hub.join(&t("c"), 1, m).await.is_ok(),
            "room again after b emptied"
        );
        assert_eq!(hub.topic_count(), 2);
    }

    #[tokio::test]
    async fn the_hub_follows_from_the_first_subscriber_and_unfollows_after_the_last() {
        let hub = hub(100);
        let recording = Arc::new(Recording::default());
        let broker: Arc<dyn Broker> = recording.clone();
        hub.attach(&broker);
        let (m1, m2, m3) = (mailbox(4), mailbox(4), mailbox(4));
        hub.join(&t("a"), 1, m1.clone()).await.unwrap();
        hub.join(&t("a"), 2, m2.clone()).await.unwrap();
        hub.join(&t("b"), 3, m3.clone()).await.unwrap();
        assert!(!hub.leave(&t("a"), 1));
        assert!(hub.leave(&t("a"), 2));
        // A session that went away without leaving is removed by the next
        // broadcast, and the topic is unfollowed then.
        m3.close();
        assert_eq!(hub.broadcast(&publication(&t("b"), 1)), 0);
        assert!(!hub.has_subscribers("b"));
        assert_eq!(hub.topic_count(), 0);
        // A follow that fails leaves nothing behind.
        let refused = hub.join(&t("bad"), 4, mailbox(4)).await;
        assert!(matches!(refused, Err(JoinError::Broker(_))));
        assert!(!hub.has_subscribers("bad"));
        assert_eq!(hub.topic_count(), 0);
        let calls = recording.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "follow a",
                "follow a",
                "follow b",
                "unfollow a",
                "unfollow b",
                "follow bad",
                "unfollow bad"
            ]
        );
    }

    #[tokio::test]
    async fn topics_spread_over_shards_are_all_counted_and_listed() {
        let hub = hub(10_000);
        let m = mailbox(4);
        for i in 0..500 {
            hub.join(&t(&format!("t.{i}")), 1, m.clone()).await.unwrap();
        }
        assert_eq!(hub.topic_count(), 500);
        assert_eq!(hub.topic_counts().len(), 500);
        assert_eq!(hub.topics_by_subscriber()[&1].len(), 500);
        let used = hub
            .shards
            .iter()
            .filter(|s| !s.read().unwrap().is_empty())
            .count();
        assert_eq!(used, SHARDS, "500 topics land in every shard");
        for i in 0..500 {
            assert!(hub.leave(&t(&format!("t.{i}")), 1));
        }
        assert_eq!(hub.topic_count(), 0);
    }
}
