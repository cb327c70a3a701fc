//! The hub: which local sessions want which topic, and fan-out to them.
//!
//! `broadcast` never awaits and never blocks on a session: it `try_send`s the shared
//! publication into each subscriber's bounded outbox. A full outbox marks that session
//! a slow consumer (it closes itself with 4008 and the client resumes from history);
//! a closed outbox means the session is gone and is removed.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use sluice_common::Topic;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::{broker::Pub, metrics::Metrics};

/// Identifies a session within this node.
pub type SessionId = u64;

/// How the hub reaches one session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub outbox: mpsc::Sender<Pub>,
    /// Cancelled by the hub when the outbox is full: the session must close with 4008.
    pub slow: CancellationToken,
}

#[derive(Debug)]
pub struct Hub {
    topics: RwLock<HashMap<Topic, HashMap<SessionId, SessionHandle>>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            topics: RwLock::new(HashMap::new()),
            metrics,
        }
    }

    /// Adds a subscriber. Returns true when it is the topic's first local subscriber.
    pub fn join(&self, topic: &Topic, id: SessionId, handle: SessionHandle) -> bool {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let subs = topics.entry(topic.clone()).or_default();
        subs.insert(id, handle);
        subs.len() == 1
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
                match h.outbox.try_send(p.clone()) {
                    Ok(()) => delivered += 1,
                    Err(TrySendError::Full(_)) => {
                        // Lossless by design: the client resumes from history.
                        self.metrics.messages_dropped.increment(1);
                        h.slow.cancel();
                    }
                    Err(TrySendError::Closed(_)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Publication;
    use sluice_common::protocol::FrameType;

    fn publication(topic: &Topic, seq: u64) -> Pub {
        Publication::new(topic.clone(), seq, "e".into(), FrameType::Delta, 0, "{}")
    }

    fn handle(cap: usize) -> (SessionHandle, mpsc::Receiver<Pub>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            SessionHandle {
                outbox: tx,
                slow: CancellationToken::new(),
            },
            rx,
        )
    }

    #[test]
    fn fans_out_to_each_subscriber_of_the_topic_only() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, b) = (Topic::parse("a").unwrap(), Topic::parse("b").unwrap());
        let (h1, mut r1) = handle(8);
        let (h2, mut r2) = handle(8);
        assert!(hub.join(&a, 1, h1));
        assert!(!hub.join(&a, 2, h2.clone()));
        assert!(hub.join(&b, 2, h2));
        assert_eq!(hub.broadcast(&publication(&a, 1)), 2);
        assert_eq!(hub.broadcast(&publication(&b, 1)), 1);
        assert_eq!(r1.try_recv().unwrap().topic, a);
        assert!(r1.try_recv().is_err());
        assert_eq!(r2.try_recv().unwrap().topic, a);
        assert_eq!(r2.try_recv().unwrap().topic, b);
        assert!(!hub.leave(&a, 1));
        assert!(hub.leave(&a, 2));
        assert!(!hub.has_subscribers("a"));
        assert_eq!(hub.topic_count(), 1);
    }

    #[test]
    fn a_full_outbox_flags_the_session_slow_without_blocking() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let t = Topic::parse("t").unwrap();
        let (h, _rx) = handle(2);
        let slow = h.slow.clone();
        hub.join(&t, 1, h);
        assert_eq!(hub.broadcast(&publication(&t, 1)), 1);
        assert_eq!(hub.broadcast(&publication(&t, 2)), 1);
        assert!(!slow.is_cancelled());
        assert_eq!(hub.broadcast(&publication(&t, 3)), 0);
        assert!(slow.is_cancelled());
    }

    #[test]
    fn a_closed_outbox_is_deregistered() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let t = Topic::parse("t").unwrap();
        let (h, rx) = handle(2);
        hub.join(&t, 1, h);
        drop(rx);
        assert_eq!(hub.broadcast(&publication(&t, 1)), 0);
        assert!(!hub.has_subscribers("t"));
    }
}
