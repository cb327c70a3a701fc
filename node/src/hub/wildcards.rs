//! Wildcard subscriptions in the hub: a held `prefix.*` / `prefix.>` makes the
//! node follow every matching topic, existing ones (listed by the broker when the
//! wildcard is joined) and new ones (announced by the broker when a topic starts a
//! new epoch), each as an ordinary followed topic.
//!
//! The subscriber is added to each matching topic's subscribers with one more
//! interest ([`super::Interest`]), so fan-out of a followed topic is the same map
//! lookup as for a concrete subscription and never looks at wildcards. The
//! [`FilterTrie`] is consulted only when a topic is announced.
//!
//! A pattern is owed live messages only (SPEC §3), so the existing matches are
//! followed with one [`crate::broker::Broker::follow_many`]: the broker arms them
//! in batches from their positions and reads no history for them (on Redis one
//! pipeline of `HMGET`s per batch instead of one `MULTI HMGET XREVRANGE EXEC`
//! per topic, one after another).
//!
//! Topics followed for wildcards count toward `SLUICE_MAX_TOPICS` like any other:
//! a wildcard whose existing matches would pass the limit is refused whole; a
//! topic announced once the limit is reached is not followed for wildcards (logged
//! and counted in `sluice_wildcard_topics_skipped_total`).

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
};

use sluice_common::{lock::MutexExt, Topic, TopicFilter};

use super::{FilterTrie, Hub, JoinError, Mailbox, SubscriberId};

/// The wildcards held on this node.
#[derive(Debug, Default)]
pub(super) struct Wildcards {
    /// Filter → subscriber → its mailbox (and the filter again, so a match names
    /// it), for matching announced topics.
    trie: FilterTrie<SubscriberId, (Arc<Mailbox>, TopicFilter)>,
    /// The topics each held wildcard added its subscriber to.
    joined: HashMap<(SubscriberId, TopicFilter), HashSet<Topic>>,
}

impl Hub {
    /// Holds `filter` (a wildcard) for subscriber `id`: every topic it matches, now
    /// or once announced, reaches the mailbox. Returns once every existing match is
    /// followed, with their count. Joining a filter the subscriber holds already
    /// changes nothing.
    pub async fn join_filter(
        &self,
        filter: &TopicFilter,
        id: SubscriberId,
        mailbox: Arc<Mailbox>,
    ) -> Result<usize, JoinError> {
        {
            let mut w = self.wildcards.lock_unpoisoned();
            w.trie.insert(filter, id, (mailbox.clone(), filter.clone()));
            w.joined.entry((id, filter.clone())).or_default();
            self.any_wildcard.store(true, Ordering::Release);
        }
        let Some(broker) = self.broker() else {
            return Ok(0);
        };
        let existing = match broker.topics_matching(filter).await {
            Ok(t) => t,
            Err(e) => {
                self.leave_filter(filter, id);
                return Err(JoinError::Broker(e));
            }
        };
        let mut follow = Vec::new();
        for topic in existing.iter().filter(|t| filter.matches(t.as_str())) {
            match self.add_for_filter(filter, id, &mailbox, topic) {
                Ok(Some(shared)) => follow.push(shared),
                Ok(None) => {}
                Err(e) => {
                    self.leave_filter(filter, id);
                    return Err(e);
                }
            }
        }
        // Live only (SPEC §3: no snapshot, no resume for a pattern), so the broker
        // follows them all at once, in batches, without reading their history.
        if let Err(e) = broker.follow_many(&follow).await {
            self.leave_filter(filter, id);
            return Err(JoinError::Broker(e));
        }
        Ok(self.filter_topics(filter, id))
    }

    /// How many topics `filter` follows for `id`.
    pub fn filter_topics(&self, filter: &TopicFilter, id: SubscriberId) -> usize {
        let w = self.wildcards.lock_unpoisoned();
        w.joined.get(&(id, filter.clone())).map_or(0, HashSet::len)
    }

    /// Adds `id`'s interest in `topic` on behalf of `filter`, once. `Some` when it
    /// was added (the topic must be followed), `None` when the filter holds the
    /// topic already or was left meanwhile.
    fn add_for_filter(
        &self,
        filter: &TopicFilter,
        id: SubscriberId,
        mailbox: &Arc<Mailbox>,
        topic: &Topic,
    ) -> Result<Option<Topic>, JoinError> {
        let mut w = self.wildcards.lock_unpoisoned();
        let Some(topics) = w.joined.get_mut(&(id, filter.clone())) else {
            return Ok(None);
        };
        if topics.contains(topic) {
            return Ok(None);
        }
        let shared = self.add(topic, id, mailbox.clone())?;
        topics.insert(shared.clone());
        Ok(Some(shared))
    }

    /// Stops `filter` for `id`: its interest in every topic it followed is dropped
    /// (the broker unfollows topics left without subscribers). Returns whether it
    /// was held.
    pub fn leave_filter(&self, filter: &TopicFilter, id: SubscriberId) -> bool {
        let topics = {
            let mut w = self.wildcards.lock_unpoisoned();
            w.trie.remove(filter, &id);
            if w.trie.is_empty() {
                self.any_wildcard.store(false, Ordering::Release);
            }
            w.joined.remove(&(id, filter.clone()))
        };
        let held = topics.is_some();
        for topic in topics.into_iter().flatten() {
            self.leave(&topic, id);
        }
        held
    }

    /// Wildcard subscriptions held on this node.
    pub fn wildcard_count(&self) -> usize {
        self.wildcards.lock_unpoisoned().trie.len()
    }

    /// A topic started a new epoch (it is new, or its state was lost): every held
    /// wildcard matching it gets it, before its first publication is delivered
    /// when the broker announces synchronously (the embedded one does).
    /// Whether some held wildcard matches `topic`.
    pub(super) fn any_wildcard_matches(&self, topic: &str) -> bool {
        if !self.any_wildcard.load(Ordering::Acquire) {
            return false;
        }
        let mut hit = false;
        self.wildcards
            .lock_unpoisoned()
            .trie
            .for_each_match(topic, |_, _| hit = true);
        hit
    }

    pub(super) fn announce_topic(&self, topic: &Topic, epoch: &str) {
        if !self.any_wildcard.load(Ordering::Acquire) {
            return;
        }
        let mut hits: Vec<(SubscriberId, Arc<Mailbox>, TopicFilter)> = Vec::new();
        self.wildcards.lock_unpoisoned().trie.for_each_match(
            topic.as_str(),
            |id, (mailbox, filter)| {
                hits.push((*id, mailbox.clone(), filter.clone()));
            },
        );
        let mut follow = false;
        for (id, mailbox, filter) in hits {
            match self.add_for_filter(&filter, id, &mailbox, topic) {
                Ok(Some(_)) => follow = true,
                Ok(None) => {}
                Err(_) => {
                    self.metrics.wildcard_topics_skipped.increment(1);
                    tracing::warn!(%topic, %filter, "topic limit reached: not followed for a wildcard");
                }
            }
        }
        if follow {
            self.follow_announced(topic, epoch);
        }
    }

    /// Arms live delivery of a topic added by an announcement (the announcement
    /// may come from a broker's reader, which must not wait for it).
    fn follow_announced(&self, topic: &Topic, epoch: &str) {
        let (Some(broker), Ok(rt)) = (self.broker(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (topic, epoch) = (topic.clone(), epoch.to_owned());
        rt.spawn(async move {
            if let Err(e) = broker.follow_new(&topic, &epoch).await {
                tracing::warn!(%topic, error = %e, "could not follow a topic for a wildcard");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::Metrics, publication::Publication};
    use sluice_common::protocol::FrameType;

    fn t(n: &str) -> Topic {
        Topic::parse(n).unwrap()
    }

    fn f(n: &str) -> TopicFilter {
        TopicFilter::parse(n).unwrap()
    }

    fn publish(hub: &Hub, topic: &Topic, seq: u64) -> usize {
        hub.broadcast(&Publication::new(
            topic.clone(),
            seq,
            "e".into(),
            FrameType::Delta,
            0,
            "{}",
        ))
    }

    #[tokio::test]
    async fn a_session_holding_a_topic_twice_gets_one_copy_and_keeps_it_until_both_go() {
        let hub = Hub::new(Arc::new(Metrics::new()), 100);
        let m = Arc::new(Mailbox::new(16));
        let a = t("prices.A");
        hub.join(&a, 1, m.clone()).await.unwrap();
        hub.join_filter(&f("prices.*"), 1, m.clone()).await.unwrap();
        hub.join_filter(&f("prices.>"), 1, m.clone()).await.unwrap();
        assert_eq!(hub.wildcard_count(), 2);
        // No broker lists existing topics here: the announcement adds them.
        hub.announce_topic(&a, "e");
        hub.announce_topic(&a, "e");
        assert_eq!(hub.filter_topics(&f("prices.*"), 1), 1);
        assert_eq!(publish(&hub, &a, 1), 1, "one mailbox, one copy");
        assert!(m.try_recv().is_some());
        assert!(m.try_recv().is_none());
        assert!(hub.leave_filter(&f("prices.*"), 1));
        assert!(!hub.leave_filter(&f("prices.*"), 1), "held once");
        assert!(!hub.leave(&a, 1), "prices.> still wants it");
        assert_eq!(publish(&hub, &a, 2), 1);
        assert!(hub.leave_filter(&f("prices.>"), 1));
        assert!(!hub.has_subscribers("prices.A"));
        assert_eq!(hub.topic_count(), 0);
        assert_eq!(hub.wildcard_count(), 0);
        assert!(!hub.any_wildcard.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn announced_topics_reach_matching_wildcards_only_and_count_toward_the_limit() {
        let hub = Hub::new(Arc::new(Metrics::new()), 2);
        let (m1, m2) = (Arc::new(Mailbox::new(16)), Arc::new(Mailbox::new(16)));
        hub.join_filter(&f("a.*"), 1, m1.clone()).await.unwrap();
        hub.join_filter(&f("a.b.>"), 2, m2.clone()).await.unwrap();
        for name in ["a.x", "a.b.c", "b.x", "a.b.c.d"] {
            hub.announce_topic(&t(name), "e");
        }
        // a.x (1) and a.b.c (2) fit; a.b.c.d is past the node's two topics.
        assert_eq!(hub.topic_count(), 2);
        assert_eq!(hub.filter_topics(&f("a.*"), 1), 1);
        assert_eq!(hub.filter_topics(&f("a.b.>"), 2), 1);
        assert_eq!(publish(&hub, &t("a.x"), 1), 1);
        assert_eq!(publish(&hub, &t("b.x"), 1), 0);
        assert_eq!(m1.try_recv().map(|p| p.topic.clone()), Some(t("a.x")));
        assert!(m2.try_recv().is_none());
        // A closed mailbox is removed with every interest it had.
        m2.close();
        assert_eq!(publish(&hub, &t("a.b.c"), 1), 0);
        assert_eq!(hub.topic_count(), 1);
        assert!(hub.leave_filter(&f("a.b.>"), 2));
        assert!(hub.leave_filter(&f("a.*"), 1));
        assert_eq!(hub.topic_count(), 0);
    }
}
