//! The hub: which local sessions want which topic, and fan-out to them.
//!
//! `broadcast` never awaits and never blocks on a session: it `try_send`s the shared
//! publication into each subscriber's bounded mailbox. A full mailbox marks that
//! session a slow consumer (it closes itself with 4008 and the client resumes from
//! history); a closed one means the session is gone and is removed.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use sluice_common::Topic;

use crate::{
    metrics::Metrics,
    publication::{Pub, Sink},
    session::{Refused, Signal},
    state::SessionInfo,
};

/// Identifies a session within this node.
pub type SessionId = u64;

/// How the hub reaches one session: through the mailbox of its [`SessionInfo`].
pub type SessionHandle = Arc<SessionInfo>;

#[derive(Debug)]
pub struct Hub {
    topics: RwLock<HashMap<Topic, HashMap<SessionId, SessionHandle>>>,
    metrics: Arc<Metrics>,
    /// Distinct topics this node follows at most (`SLUICE_MAX_TOPICS`): each one
    /// costs a cursor in a reader group and a key in every sweep of Redis.
    max_topics: usize,
}

/// The node already follows `SLUICE_MAX_TOPICS` topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimit;

impl Hub {
    pub fn new(metrics: Arc<Metrics>, max_topics: usize) -> Self {
        Hub {
            topics: RwLock::new(HashMap::new()),
            metrics,
            max_topics,
        }
    }

    /// Adds a subscriber. Returns the hub's copy of the topic name, for the session to
    /// keep instead of its own (one allocation per topic, not per subscription), and
    /// whether this is the topic's first local subscriber. A topic the node does not
    /// follow yet is refused once it follows `max_topics`.
    pub fn join(
        &self,
        topic: &Topic,
        id: SessionId,
        handle: SessionHandle,
    ) -> Result<(Topic, bool), TopicLimit> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if !topics.contains_key(topic) && topics.len() >= self.max_topics {
            return Err(TopicLimit);
        }
        let shared = topics
            .get_key_value(topic)
            .map_or_else(|| topic.clone(), |(t, _)| t.clone());
        let subs = topics.entry(shared.clone()).or_default();
        subs.insert(id, handle);
        let first = subs.len() == 1;
        Ok((shared, first))
    }

    /// Removes a subscriber. Returns true when the topic has no local subscriber left.
    pub fn leave(&self, topic: &Topic, id: SessionId) -> bool {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = topics.get_mut(topic) else {
            return false;
        };
        subs.remove(&id);
        if subs.is_empty() {
            topics.remove(topic);
            true
        } else {
            false
        }
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(topic)
    }

    /// Topics with local subscribers, with their subscriber counts.
    pub fn topic_counts(&self) -> Vec<(Topic, usize)> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.iter().map(|(t, s)| (t.clone(), s.len())).collect()
    }

    /// Each session's topics, for `/connections`.
    pub fn topics_by_session(&self) -> HashMap<SessionId, Vec<Topic>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut by_session: HashMap<SessionId, Vec<Topic>> = HashMap::new();
        for (topic, subs) in topics.iter() {
            for id in subs.keys() {
                by_session.entry(*id).or_default().push(topic.clone());
            }
        }
        by_session
    }

    pub fn topic_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queues `p` for every local subscriber of its topic; returns how many took it.
    pub fn broadcast(&self, p: &Pub) -> usize {
        let mut closed = Vec::new();
        let mut delivered = 0;
        {
            let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
            let Some(subs) = topics.get(&p.topic) else {
                return 0;
            };
            for (id, h) in subs {
                match h.mailbox.try_send(p) {
                    Ok(()) => delivered += 1,
                    Err(Refused::Full) => {
                        // Lossless by design: the client resumes from history.
                        self.metrics.messages_dropped.increment(1);
                        h.mailbox.signal(Signal::Slow);
                    }
                    Err(Refused::Closed) => {
                        self.metrics.messages_dropped.increment(1);
                        closed.push(*id);
                    }
                }
            }
        }
        for id in closed {
            self.leave(&p.topic, id);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::Publication;
    use sluice_common::protocol::FrameType;

    fn publication(topic: &Topic, seq: u64) -> Pub {
        Publication::new(topic.clone(), seq, "e".into(), FrameType::Delta, 0, "{}")
    }

    fn handle(cap: usize) -> SessionHandle {
        Arc::new(SessionInfo::new(([127, 0, 0, 1], 1).into(), None, cap))
    }

    #[test]
    fn fans_out_to_each_subscriber_of_the_topic_only() {
        let hub = Hub::new(Arc::new(Metrics::new()), 100);
        let (a, b) = (Topic::parse("a").unwrap(), Topic::parse("b").unwrap());
        let (h1, h2) = (handle(8), handle(8));
        assert!(hub.join(&a, 1, h1.clone()).unwrap().1);
        let (shared, first) = hub
            .join(&Topic::parse("a").unwrap(), 2, h2.clone())
            .unwrap();
        assert!(!first);
        assert_eq!(shared, a);
        assert!(hub.join(&b, 2, h2.clone()).unwrap().1);
        let by_session = hub.topics_by_session();
        assert_eq!(by_session[&1], std::slice::from_ref(&a));
        assert_eq!(by_session[&2].len(), 2);
        assert_eq!(hub.broadcast(&publication(&a, 1)), 2);
        assert_eq!(hub.broadcast(&publication(&b, 1)), 1);
        assert_eq!(h1.mailbox.try_recv().unwrap().topic, a);
        assert!(h1.mailbox.try_recv().is_none());
        assert_eq!(h2.mailbox.try_recv().unwrap().topic, a);
        assert_eq!(h2.mailbox.try_recv().unwrap().topic, b);
        assert!(!hub.leave(&a, 1));
        assert!(hub.leave(&a, 2));
        assert!(!hub.has_subscribers("a"));
        assert_eq!(hub.topic_count(), 1);
    }

    #[test]
    fn a_full_mailbox_flags_the_session_slow_without_blocking() {
        let hub = Hub::new(Arc::new(Metrics::new()), 100);
        let t = Topic::parse("t").unwrap();
        let h = handle(2);
        hub.join(&t, 1, h.clone()).unwrap();
        assert_eq!(hub.broadcast(&publication(&t, 1)), 1);
        assert_eq!(hub.broadcast(&publication(&t, 2)), 1);
        assert!(!h.mailbox.is_signalled(Signal::Slow));
        assert_eq!(hub.broadcast(&publication(&t, 3)), 0);
        assert!(h.mailbox.is_signalled(Signal::Slow));
    }

    #[test]
    fn topics_beyond_the_node_limit_are_refused_but_joining_a_followed_one_is_not() {
        let hub = Hub::new(Arc::new(Metrics::new()), 2);
        let t = |n: &str| Topic::parse(n).unwrap();
        let h = handle(2);
        assert!(hub.join(&t("a"), 1, h.clone()).is_ok());
        assert!(hub.join(&t("b"), 1, h.clone()).is_ok());
        assert_eq!(hub.join(&t("c"), 1, h.clone()), Err(TopicLimit));
        assert!(
            hub.join(&t("a"), 2, h.clone()).is_ok(),
            "a is followed already"
        );
        assert!(hub.leave(&t("b"), 1));
        assert_eq!(hub.topic_count(), 1);
        assert!(
            hub.join(&t("c"), 1, h).is_ok(),
            "room again after b emptied"
        );
    }

    #[test]
    fn a_closed_mailbox_is_deregistered() {
        let hub = Hub::new(Arc::new(Metrics::new()), 100);
        let t = Topic::parse("t").unwrap();
        let h = handle(2);
        hub.join(&t, 1, h.clone()).unwrap();
        h.mailbox.close();
        assert_eq!(hub.broadcast(&publication(&t, 1)), 0);
        assert!(!hub.has_subscribers("t"));
    }
}
