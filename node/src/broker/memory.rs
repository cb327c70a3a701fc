//! The embedded in-memory broker: one node, no Redis, the same semantics.
//!
//! Each topic has its own log (seq counter, epoch, bounded history, snapshot) behind
//! its own lock. A publish takes the next seq and hands the publication to the hub
//! while still holding that lock, so live delivery leaves in seq order; the hub never
//! blocks, so the lock is held for microseconds.

use sluice_common::lock::MutexExt;
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use sluice_common::{
    protocol::{meta, FrameType},
    publisher::PublishKind,
    time_fmt, StreamPosition, Topic, TopicFilter,
};
use tokio::time::Instant;

use super::{Broker, BrokerError, PublishRequest, TopicState};
use crate::publication::{Origin, Parts, Pub, Sink};

#[derive(Debug)]
struct TopicLog {
    epoch: Arc<str>,
    seq: u64,
    /// Contiguous: `history[i].seq == history[0].seq + i`.
    history: VecDeque<Pub>,
    snapshot: Option<Pub>,
    last_publish: Instant,
}

#[derive(Debug)]
pub struct MemoryBroker {
    topics: Mutex<HashMap<Topic, Arc<Mutex<TopicLog>>>>,
    sink: Arc<dyn Sink>,
    /// This node, as `meta.node` of every envelope.
    origin: Origin,
    history_size: usize,
    ttl: Duration,
    /// The registry of this process's node(s): id → (record, live until).
    nodes: Mutex<HashMap<String, (String, Instant)>>,
}

/// A new epoch: base-36 microseconds since the Unix epoch, strictly increasing
/// within the process so two epochs never collide.
fn new_epoch() -> Arc<str> {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = (time_fmt::now_ms() as u64).saturating_mul(1000);
    let mut prev = LAST.load(Ordering::Relaxed);
    let v = loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(p) => prev = p,
        }
    };
    base36(v).into()
}

pub(crate) fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn check_json(what: &str, text: &str) -> Result<(), BrokerError> {
    if sluice_common::protocol::is_json(text) {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!("{what} is not valid JSON")))
    }
}

impl MemoryBroker {
    pub fn new(sink: Arc<dyn Sink>, origin: Origin, history_size: usize, ttl: Duration) -> Self {
        MemoryBroker {
            topics: Mutex::new(HashMap::new()),
            sink,
            origin,
            history_size: history_size.max(1),
            ttl,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn live_log(&self, topic: &Topic) -> Option<Arc<Mutex<TopicLog>>> {
        let mut topics = self.topics.lock_unpoisoned();
        let log = topics.get(topic)?.clone();
        let expired = log.lock_unpoisoned().last_publish.elapsed() >= self.ttl;
        if expired {
            topics.remove(topic);
            return None;
        }
        Some(log)
    }

    /// Forgets topics nobody published to within the TTL (their next publish starts
    /// a new epoch, exactly as an expired Redis key would).
    pub fn sweep(&self) -> usize {
        let mut topics = self.topics.lock_unpoisoned();
        let before = topics.len();
        topics.retain(|_, log| log.lock_unpoisoned().last_publish.elapsed() < self.ttl);
        before - topics.len()
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
        check_json("payload", req.payload_json)?;
        if let Some(s) = req.snapshot_json {
            check_json("snapshot", s)?;
        }
        if let Some(m) = req.meta_json {
            meta::check_meta(m).map_err(|e| BrokerError::Invalid(e.to_string()))?;
        }
        let log = match self.live_log(req.topic) {
            Some(log) => log,
            None => {
                let mut topics = self.topics.lock_unpoisoned();
                topics
                    .entry(req.topic.clone())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(TopicLog {
                            epoch: new_epoch(),
                            seq: 0,
                            history: VecDeque::new(),
                            snapshot: None,
                            last_publish: Instant::now(),
                        }))
                    })
                    .clone()
            }
        };
        let mut log = log.lock_unpoisoned();
        if log.seq == 0 {
            // The epoch's first publish: wildcards join the topic before it is
            // delivered (under the log's lock, so no later seq overtakes it).
            self.sink.announce(req.topic, &log.epoch);
        }
        log.seq += 1;
        log.last_publish = Instant::now();
        let now = time_fmt::now_ms();
        let kind = match req.kind {
            PublishKind::Delta => FrameType::Delta,
            PublishKind::Alert => FrameType::Alert,
        };
        let p = self.origin.publication(
            req.topic.clone(),
            Parts {
                seq: log.seq,
                epoch: log.epoch.clone(),
                kind,
                published_ms: now,
                payload_json: req.payload_json,
                meta_json: req.meta_json,
            },
        );
        log.history.push_back(p.clone());
        while log.history.len() > self.history_size {
            log.history.pop_front();
        }
        if let Some(s) = req.snapshot_json {
            // A snapshot is the topic's state, not one engine message: its meta is
            // the node's alone (as the Redis broker's).
            log.snapshot = Some(self.origin.publication(
                req.topic.clone(),
                Parts {
                    seq: log.seq,
                    epoch: log.epoch.clone(),
                    kind: FrameType::Snapshot,
                    published_ms: now,
                    payload_json: s,
                    meta_json: None,
                },
            ));
        }
        self.sink.deliver(&p);
        Ok(StreamPosition::new(log.seq, &*log.epoch))
    }

    async fn state(&self, topic: &Topic) -> Result<TopicState, BrokerError> {
        let Some(log) = self.live_log(topic) else {
            return Ok(TopicState::default());
        };
        let log = log.lock_unpoisoned();
        Ok(TopicState {
            position: Some(StreamPosition::new(log.seq, &*log.epoch)),
            snapshot: log.snapshot.clone(),
        })
    }

    async fn head(&self, topic: &Topic) -> Result<Option<StreamPosition>, BrokerError> {
        let Some(log) = self.live_log(topic) else {
            return Ok(None);
        };
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(StreamPosition::new(log.seq, &*log.epoch)))
    }

    async fn history(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Pub>, BrokerError> {
        let Some(log) = self.live_log(topic) else {
            return Ok(Vec::new());
        };
        let log = log.lock_unpoisoned();
        let Some(first) = log.history.front().map(|p| p.seq) else {
            return Ok(Vec::new());
        };
        let skip = from.saturating_sub(first) as usize;
        Ok(log.history.iter().skip(skip).take(limit).cloned().collect())
    }

    async fn follow(&self, _topic: &Topic) -> Result<(), BrokerError> {
        // Publishes reach the sink directly; there is nothing to read.
        Ok(())
    }

    async fn follow_many(&self, _topics: &[Topic]) -> Result<(), BrokerError> {
        // As `follow`: publishes reach the sink directly, and the history a resume
        // reads is the topic's own log, never a partial copy.
        Ok(())
    }

    fn unfollow(&self, _topic: &Topic) {}

    fn discovers_topics(&self) -> bool {
        true
    }

    async fn topics_matching(&self, filter: &TopicFilter) -> Result<Vec<Topic>, BrokerError> {
        let topics = self.topics.lock_unpoisoned();
        Ok(topics
            .iter()
            .filter(|(t, log)| {
                filter.matches(t.as_str()) && {
                    let log = log.lock_unpoisoned();
                    log.seq > 0 && log.last_publish.elapsed() < self.ttl
                }
            })
            .map(|(t, _)| t.clone())
            .collect())
    }

    fn is_connected(&self) -> bool {
        true
    }

    async fn shutdown(&self) {}

    async fn register_node(
        &self,
        node_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let mut nodes = self.nodes.lock_unpoisoned();
        nodes.insert(
            node_id.to_owned(),
            (record.to_owned(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn deregister_node(&self, node_id: &str) {
        self.nodes.lock_unpoisoned().remove(node_id);
    }

    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let mut nodes = self.nodes.lock_unpoisoned();
        let now = Instant::now();
        nodes.retain(|_, (_, until)| *until > now);
        Ok(nodes.values().map(|(r, _)| r.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn broker(size: usize) -> MemoryBroker {
        MemoryBroker::new(
            Arc::new(crate::hub::Hub::new(Arc::new(Metrics::new()), usize::MAX)),
            Origin::new("mem-1"),
            size,
            Duration::from_secs(60),
        )
    }

    fn req<'a>(
        topic: &'a Topic,
        payload: &'a str,
        snapshot: Option<&'a str>,
    ) -> PublishRequest<'a> {
        PublishRequest {
            topic,
            kind: PublishKind::Delta,
            payload_json: payload,
            snapshot_json: snapshot,
            meta_json: None,
        }
    }

    #[tokio::test]
    async fn seqs_are_gap_free_history_is_bounded_and_snapshot_kept() {
        let b = broker(3);
        let t = Topic::parse("p.x").unwrap();
        let mut epoch = String::new();
        for i in 1..=5u64 {
            let snap = (i == 4).then_some(r#"{"s":4}"#);
            let pos = b
                .publish(req(&t, &format!("{{\"i\":{i}}}"), snap))
                .await
                .unwrap();
            assert_eq!(pos.seq, i);
            if i == 1 {
                epoch = pos.epoch.clone();
            }
            assert_eq!(pos.epoch, epoch);
        }
        let h = b.history(&t, 1, 100).await.unwrap();
        assert_eq!(h.iter().map(|p| p.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(b.history(&t, 4, 1).await.unwrap()[0].seq, 4);
        let st = b.state(&t).await.unwrap();
        assert_eq!(st.position, Some(StreamPosition::new(5, epoch.clone())));
        assert_eq!(
            b.head(&t).await.unwrap(),
            Some(StreamPosition::new(5, epoch))
        );
        let snap = st.snapshot.unwrap();
        assert_eq!(snap.seq, 4);
        assert!(snap.frame.as_str().contains(r#""type":"snapshot""#));
    }

    #[tokio::test]
    async fn bad_json_is_refused_and_nothing_is_written() {
        let b = broker(3);
        let t = Topic::parse("p").unwrap();
        assert!(matches!(
            b.publish(req(&t, "{nope", None)).await,
            Err(BrokerError::Invalid(_))
        ));
        assert!(matches!(
            b.publish(req(&t, "1", Some("]"))).await,
            Err(BrokerError::Invalid(_))
        ));
        assert_eq!(b.state(&t).await.unwrap().position, None);
        assert_eq!(b.head(&t).await.unwrap(), None);
    }

    #[tokio::test]
    async fn meta_is_checked_stored_and_carried_with_the_node() {
        let b = broker(3);
        let t = Topic::parse("p").unwrap();
        for bad in ["[1]", "7", "{oops", r#"{"node":"x"}"#] {
            let r = b
                .publish(PublishRequest {
                    meta_json: Some(bad),
                    ..req(&t, "1", None)
                })
                .await;
            assert!(matches!(r, Err(BrokerError::Invalid(_))), "{bad}: {r:?}");
        }
        assert_eq!(b.head(&t).await.unwrap(), None, "nothing was written");
        b.publish(PublishRequest {
            meta_json: Some(r#"{"source":"feed"}"#),
            ..req(&t, "1", Some("{}"))
        })
        .await
        .unwrap();
        b.publish(req(&t, "2", None)).await.unwrap();
        let h = b.history(&t, 1, 10).await.unwrap();
        let meta = |p: &Pub| {
            serde_json::from_str::<serde_json::Value>(p.frame.as_str()).unwrap()["meta"].clone()
        };
        assert_eq!(
            meta(&h[0]),
            serde_json::json!({"node":"mem-1","source":"feed"})
        );
        assert_eq!(meta(&h[1]), serde_json::json!({"node":"mem-1"}));
        let snap = b.state(&t).await.unwrap().snapshot.unwrap();
        assert_eq!(meta(&snap), serde_json::json!({"node":"mem-1"}));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_topic_expires_and_restarts_under_a_new_epoch() {
        let b = MemoryBroker::new(
            Arc::new(crate::hub::Hub::new(Arc::new(Metrics::new()), usize::MAX)),
            Origin::new("mem-1"),
            10,
            Duration::from_secs(5),
        );
        let t = Topic::parse("p").unwrap();
        let first = b.publish(req(&t, "1", None)).await.unwrap();
        b.publish(req(&t, "2", None)).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.sweep(), 1);
        let again = b.publish(req(&t, "3", None)).await.unwrap();
        assert_eq!(again.seq, 1);
        assert_ne!(again.epoch, first.epoch);
    }

    /// A wildcard's follow of many topics: each topic's next publication reaches
    /// the hub once, in order, and nothing the topics published before is handed
    /// out again; history reads still answer from the topic's own log (there is no
    /// partial tail to answer wrongly).
    #[tokio::test]
    async fn follow_many_delivers_each_topics_next_publications_once_and_keeps_history_whole() {
        let hub = Arc::new(crate::hub::Hub::new(Arc::new(Metrics::new()), usize::MAX));
        let b = MemoryBroker::new(
            hub.clone(),
            Origin::new("mem-1"),
            10,
            Duration::from_secs(60),
        );
        let topics: Vec<Topic> = (0..5)
            .map(|i| Topic::parse(&format!("w.{i}")).unwrap())
            .collect();
        for t in &topics {
            b.publish(req(t, "1", None)).await.unwrap();
            b.publish(req(t, "2", None)).await.unwrap();
        }
        let mailbox = Arc::new(crate::hub::Mailbox::new(64));
        for t in &topics {
            hub.join(t, 1, mailbox.clone()).await.unwrap();
        }
        b.follow_many(&topics).await.unwrap();
        b.follow_many(&topics[..2]).await.unwrap();
        b.follow_many(&[]).await.unwrap();
        assert!(mailbox.try_recv().is_none(), "nothing old is handed out");
        for seq in 3..=4 {
            for t in &topics {
                b.publish(req(t, "{}", None)).await.unwrap();
                assert_eq!(b.head(t).await.unwrap().map(|p| p.seq), Some(seq));
            }
        }
        let mut got = Vec::new();
        while let Some(p) = mailbox.try_recv() {
            got.push((p.topic.as_str().to_owned(), p.seq));
        }
        let want: Vec<(String, u64)> = (3..=4)
            .flat_map(|seq| topics.iter().map(move |t| (t.as_str().to_owned(), seq)))
            .collect();
        assert_eq!(got, want, "each publication once, in publish order");
        for t in &topics {
            assert!(b.local_head(t).is_none() && b.local_history(t, 1, 10).is_none());
            let h = b.history(t, 1, 10).await.unwrap();
            assert_eq!(h.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        }
    }

    #[test]
    fn epochs_are_unique_and_base36() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
