//! Which broker reads a subscribe makes: a resume reads the head alone, and the
//! snapshot is read only when it is sent (a first subscribe, or a failed resume),
//! consistent with what follows it even when publishes land in between.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Mutex,
};

use sluice_common::{publisher::PublishKind, StreamPosition, Topic};

use super::*;
use crate::{
    broker::{BrokerError, PublishRequest, TopicState},
    publication::Pub,
};

/// Counts `state` and `head` reads of the memory broker; publishes `after_head`
/// right after the next head read (a publish racing the subscribe).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Broker>,
    states: AtomicUsize,
    heads: AtomicUsize,
    after_head: Mutex<Vec<(String, Option<String>)>>,
}

#[async_trait::async_trait]
impl Broker for Counting {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
        self.inner.publish(req).await
    }
    async fn state(&self, topic: &Topic) -> Result<TopicState, BrokerError> {
        self.states.fetch_add(1, Ordering::SeqCst);
        self.inner.state(topic).await
    }
    async fn head(&self, topic: &Topic) -> Result<Option<StreamPosition>, BrokerError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        let head = self.inner.head(topic).await;
        let racing = std::mem::take(&mut *self.after_head.lock().expect("lock"));
        for (payload, snap) in racing {
            publish(&*self.inner, topic, &payload, snap.as_deref()).await;
        }
        head
    }
    async fn history(&self, t: &Topic, from: u64, limit: usize) -> Result<Vec<Pub>, BrokerError> {
        self.inner.history(t, from, limit).await
    }
    async fn follow(&self, topic: &Topic) -> Result<(), BrokerError> {
        self.inner.follow(topic).await
    }
    fn unfollow(&self, topic: &Topic) {
        self.inner.unfollow(topic)
    }
    fn is_connected(&self) -> bool {
        true
    }
    async fn shutdown(&self) {}
    async fn register_node(&self, _: &str, _: &str, _: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn deregister_node(&self, _: &str) {}
    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        Ok(Vec::new())
    }
}

async fn publish(b: &dyn Broker, topic: &Topic, payload: &str, snap: Option<&str>) -> u64 {
    let req = PublishRequest {
        topic,
        kind: PublishKind::Delta,
        payload_json: payload,
        snapshot_json: snap,
        meta_json: None,
    };
    b.publish(req).await.expect("publish").seq
}

/// A node whose broker counts reads, with `prices.A` at seq 5 and a snapshot at 3.
async fn setup(history: usize) -> (Harness, Arc<Counting>, String) {
    let base = app(|c| c.history_size = history);
    let counting = Arc::new(Counting {
        inner: base.broker.clone(),
        states: AtomicUsize::new(0),
        heads: AtomicUsize::new(0),
        after_head: Mutex::new(Vec::new()),
    });
    let state = Arc::new(AppState::new(
        (*base.config).clone(),
        base.hub.clone(),
        counting.clone(),
        base.metrics.clone(),
        Authenticator::from_config(&base.config).expect("no key configured"),
    ));
    let topic = Topic::parse("prices.A").expect("topic");
    for i in 1..=5 {
        let snap = (i == 3).then_some(r#"{"s":3}"#);
        publish(&*counting, &topic, &i.to_string(), snap).await;
    }
    let epoch = counting
        .inner
        .head(&topic)
        .await
        .expect("head")
        .expect("exists")
        .epoch;
    let mut h = start(state);
    assert_eq!(h.next_json().await["type"], "connected");
    (h, counting, epoch)
}

/// `(type, seq)` of the next `n` frames.
async fn frames(h: &mut Harness, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let f = h.next_json().await;
        let kind = f["type"].as_str().unwrap_or_default().to_owned();
        out.push((kind, f["seq"].as_u64().unwrap_or(0)));
    }
    out
}

fn reads(c: &Counting) -> (usize, usize) {
    (
        c.heads.load(Ordering::SeqCst),
        c.states.load(Ordering::SeqCst),
    )
}

fn kinds(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_resume_within_history_reads_the_head_and_never_the_snapshot() {
    let (mut h, c, epoch) = setup(100).await;
    h.send(json!({"type": "subscribe", "topic": "prices.A", "resume_from_seq": 4, "epoch": epoch}));
    let ack = h.next_json().await;
    assert_eq!(ack["payload"]["recovered"], true);
    assert_eq!(ack["payload"]["head_seq"], 5);
    assert_eq!(
        frames(&mut h, 2).await,
        kinds(&[("delta", 4), ("delta", 5)])
    );
    assert_eq!(reads(&c), (1, 0));
    // At the head: nothing to replay, still no snapshot read.
    h.send(json!({"type": "subscribe", "topic": "prices.A", "resume_from_seq": 6, "epoch": epoch}));
    assert_eq!(h.next_json().await["payload"]["already_subscribed"], true);
    assert_eq!(reads(&c), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_first_subscribe_reads_head_and_snapshot_in_one_read() {
    let (mut h, c, _) = setup(100).await;
    h.send(json!({"type": "subscribe", "topic": "prices.A"}));
    assert_eq!(h.next_json().await["payload"]["recovered"], false);
    let got = frames(&mut h, 3).await;
    assert_eq!(got, kinds(&[("snapshot", 3), ("delta", 4), ("delta", 5)]));
    assert_eq!(reads(&c), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_resume_reads_the_snapshot_and_sends_it() {
    let (mut h, c, _) = setup(100).await;
    h.send(
        json!({"type": "subscribe", "topic": "prices.A", "resume_from_seq": 4, "epoch": "other"}),
    );
    let ack = h.next_json().await;
    assert_eq!(ack["payload"]["recovered"], false);
    let got = frames(&mut h, 3).await;
    assert_eq!(got, kinds(&[("snapshot", 3), ("delta", 4), ("delta", 5)]));
    assert_eq!(reads(&c), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_resume_older_than_history_gets_the_snapshot() {
    // History keeps 2 entries (4 and 5): a resume from 2 cannot replay.
    let (mut h, c, epoch) = setup(2).await;
    h.send(json!({"type": "subscribe", "topic": "prices.A", "resume_from_seq": 2, "epoch": epoch}));
    assert_eq!(h.next_json().await["payload"]["recovered"], false);
    let got = frames(&mut h, 3).await;
    assert_eq!(got, kinds(&[("snapshot", 3), ("delta", 4), ("delta", 5)]));
    assert_eq!(reads(&c), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn publishes_between_the_head_and_the_snapshot_read_arrive_once_in_order() {
    let (mut h, c, _) = setup(100).await;
    // After the head read (seq 5) and before the snapshot read: seq 6 with a new
    // snapshot, then 7. The resume fails (no epoch), so the snapshot read sees 7.
    *c.after_head.lock().expect("lock") =
        vec![("6".into(), Some(r#"{"s":6}"#.into())), ("7".into(), None)];
    h.send(json!({"type": "subscribe", "topic": "prices.A", "resume_from_seq": 4}));
    let ack = h.next_json().await;
    assert_eq!(ack["payload"]["recovered"], false);
    assert_eq!(ack["payload"]["head_seq"], 7);
    assert_eq!(
        frames(&mut h, 2).await,
        kinds(&[("snapshot", 6), ("delta", 7)])
    );
    let topic = Topic::parse("prices.A").expect("topic");
    assert_eq!(publish(&*c, &topic, "8", None).await, 8);
    // 6 and 7 also reached the outbox live; they are dropped as delivered.
    assert_eq!(frames(&mut h, 1).await, kinds(&[("delta", 8)]));
    assert_eq!(reads(&c), (1, 1));
}
