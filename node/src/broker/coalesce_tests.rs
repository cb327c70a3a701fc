//! Tests of [`Coalescing`] against a fake broker that counts its reads and holds
//! them in flight until the test opens a gate.

use std::sync::atomic::AtomicUsize;

use futures_util::future::join_all;
use sluice_common::protocol::FrameType;
use tokio::sync::RwLock;

use super::*;
use crate::publication::Publication;

const EPOCH: &str = "e1";

/// Counts every call; reads wait on `gate` (the test holds its write side to keep
/// reads in flight); `head_seq` is the topic's head, every seq 1..=head retained,
/// as of when a read is issued (where Redis would run it).
#[derive(Debug, Default)]
struct Fake {
    states: AtomicUsize,
    heads: AtomicUsize,
    follows: AtomicUsize,
    unfollows: AtomicUsize,
    histories: Mutex<Vec<(u64, usize)>>,
    gate: RwLock<()>,
    fail: Mutex<Option<String>>,
    panic: std::sync::atomic::AtomicBool,
    head_seq: AtomicU64,
    /// The first seq the fake holds in memory (0: none, and it follows nothing).
    local_from: AtomicU64,
    /// Topics followed and caught up with, besides every topic when `local_from`
    /// is set.
    local_topics: Mutex<Vec<Topic>>,
    /// The topics of each `follow_many` call.
    many: Mutex<Vec<Vec<Topic>>>,
}

impl Fake {
    fn with_head(head: u64) -> Arc<Self> {
        let f = Fake::default();
        f.head_seq.store(head, Ordering::SeqCst);
        Arc::new(f)
    }

    async fn pass(&self) -> Result<(), BrokerError> {
        drop(self.gate.read().await);
        assert!(!self.panic.load(Ordering::SeqCst), "the fake read panics");
        match lock(&self.fail).clone() {
            Some(e) => Err(BrokerError::Unavailable(e)),
            None => Ok(()),
        }
    }

    fn history_calls(&self) -> Vec<(u64, usize)> {
        lock(&self.histories).clone()
    }
}

fn publication(t: &Topic, seq: u64) -> Pub {
    Publication::new(t.clone(), seq, Arc::from(EPOCH), FrameType::Delta, 0, "{}")
}

#[async_trait::async_trait]
impl Broker for Fake {
    async fn publish(&self, _req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
        Err(BrokerError::Invalid("the fake does not publish".into()))
    }

    async fn state(&self, topic: &Topic) -> Result<TopicState, BrokerError> {
        self.states.fetch_add(1, Ordering::SeqCst);
        let seq = self.head_seq.load(Ordering::SeqCst);
        self.pass().await?;
        Ok(TopicState {
            position: Some(StreamPosition::new(seq, EPOCH)),
            snapshot: Some(publication(topic, seq)),
        })
    }

    async fn head(&self, _topic: &Topic) -> Result<Option<StreamPosition>, BrokerError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        let seq = self.head_seq.load(Ordering::SeqCst);
        self.pass().await?;
        Ok(Some(StreamPosition::new(seq, EPOCH)))
    }

    async fn history(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Pub>, BrokerError> {
        lock(&self.histories).push((from, limit));
        let head = self.head_seq.load(Ordering::SeqCst);
        self.pass().await?;
        Ok((from.max(1)..=head)
            .take(limit)
            .map(|s| publication(topic, s))
            .collect())
    }

    async fn follow(&self, _topic: &Topic) -> Result<(), BrokerError> {
        self.follows.fetch_add(1, Ordering::SeqCst);
        self.pass().await
    }

    async fn follow_many(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        lock(&self.many).push(topics.to_vec());
        self.pass().await
    }

    fn unfollow(&self, _topic: &Topic) {
        self.unfollows.fetch_add(1, Ordering::SeqCst);
    }

    fn local_head(&self, topic: &Topic) -> Option<StreamPosition> {
        (self.local_from.load(Ordering::SeqCst) > 0 || lock(&self.local_topics).contains(topic))
            .then(|| StreamPosition::new(self.head_seq.load(Ordering::SeqCst), EPOCH))
    }

    fn local_history(&self, topic: &Topic, from: u64, limit: usize) -> Option<Vec<Pub>> {
        let first = self.local_from.load(Ordering::SeqCst);
        let head = self.head_seq.load(Ordering::SeqCst);
        (first > 0 && from >= first && from <= head).then(|| {
            (from..=head)
                .take(limit)
                .map(|s| publication(topic, s))
                .collect()
        })
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

fn topic(name: &str) -> Topic {
    Topic::parse(name).expect("topic")
}

/// Yields until `done` holds (the spawned reads have reached the fake).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the reads never reached the fake broker");
}

fn seqs(page: &[Pub]) -> Vec<u64> {
    page.iter().map(|p| p.seq).collect()
}

#[tokio::test]
async fn concurrent_identical_reads_cost_one_inner_read_each_and_all_get_it() {
    let fake = Fake::with_head(7);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    let gate = fake.gate.write().await;
    let (c2, t2) = (c.clone(), t.clone());
    let all = tokio::spawn(async move {
        let states = join_all((0..50).map(|_| c2.state(&t2))).await;
        let heads = join_all((0..50).map(|_| c2.head(&t2))).await;
        let follows = join_all((0..50).map(|_| c2.follow(&t2))).await;
        (states, heads, follows)
    });
    until(|| fake.states.load(Ordering::SeqCst) == 1).await;
    assert_eq!(c.in_flight(), 1);
    drop(gate);
    let (states, heads, follows) = all.await.expect("join");
    assert_eq!(fake.states.load(Ordering::SeqCst), 1);
    assert_eq!(fake.heads.load(Ordering::SeqCst), 1);
    assert_eq!(fake.follows.load(Ordering::SeqCst), 1);
    assert_eq!(states.len(), 50);
    for s in states {
        let s = s.expect("state");
        assert_eq!(s.position, Some(StreamPosition::new(7, EPOCH)));
        assert_eq!(s.snapshot.map(|p| p.seq), Some(7));
    }
    assert!(heads
        .into_iter()
        .all(|h| h.expect("head") == Some(StreamPosition::new(7, EPOCH))));
    assert_eq!(follows.into_iter().filter(Result::is_ok).count(), 50);
    assert_eq!(c.in_flight(), 0, "nothing stays registered");
}

#[tokio::test]
async fn reads_of_different_topics_do_not_share() {
    let fake = Fake::with_head(3);
    let c = Coalescing::new(fake.clone());
    let (a, b) = (topic("p.a"), topic("p.b"));
    let r = join_all([c.state(&a), c.state(&b), c.state(&a), c.state(&b)]).await;
    assert_eq!(r.iter().filter(|s| s.is_ok()).count(), 4);
    assert_eq!(fake.states.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_error_reaches_every_waiter() {
    let fake = Fake::with_head(3);
    *lock(&fake.fail) = Some("connection refused".into());
    let c = Coalescing::new(fake.clone());
    let t = topic("p.a");
    let states = join_all((0..20).map(|_| c.state(&t))).await;
    let pages = join_all((0..20).map(|_| c.history(&t, 2, 10))).await;
    assert_eq!(fake.states.load(Ordering::SeqCst), 1);
    assert_eq!(fake.history_calls(), [(2, 10)]);
    for e in states.into_iter().map(|r| r.unwrap_err()) {
        assert_eq!(e.to_string(), "broker unavailable: connection refused");
    }
    for e in pages.into_iter().map(|r| r.unwrap_err()) {
        assert_eq!(e.to_string(), "broker unavailable: connection refused");
    }
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn a_panicking_read_fails_every_waiter_and_unregisters() {
    let fake = Fake::with_head(3);
    fake.panic.store(true, Ordering::SeqCst);
    let c = Coalescing::new(fake.clone());
    let t = topic("p.a");
    let r = join_all((0..5).map(|_| c.head(&t))).await;
    assert_eq!(fake.heads.load(Ordering::SeqCst), 1);
    assert!(r.iter().all(
        |h| matches!(h, Err(BrokerError::Unavailable(m)) if m.starts_with("a broker read failed"))
    ));
    assert_eq!(c.in_flight(), 0);
    fake.panic.store(false, Ordering::SeqCst);
    assert!(c.head(&t).await.is_ok(), "the next read starts afresh");
}

#[tokio::test]
async fn a_cancelled_leader_does_not_strand_its_followers() {
    let fake = Fake::with_head(9);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    let gate = fake.gate.write().await;
    // The leader starts the read, is polled once and dropped (its session closed).
    assert!(c.state(&t).now_or_never().is_none());
    assert!(c.history(&t, 4, 100).now_or_never().is_none());
    let (c2, t2) = (c.clone(), t.clone());
    let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p2 = polled.clone();
    let followers = tokio::spawn(async move {
        // Set in the same poll that registers every follower.
        p2.store(true, Ordering::SeqCst);
        futures_util::future::join(
            join_all((0..10).map(|_| c2.state(&t2))),
            join_all((0..10).map(|_| c2.history(&t2, 4, 100))),
        )
        .await
    });
    until(|| polled.load(Ordering::SeqCst)).await;
    drop(gate);
    let (s, h) = followers.await.expect("join");
    assert!(s
        .into_iter()
        .all(|s| s.expect("state").position == Some(StreamPosition::new(9, EPOCH))));
    assert!(h
        .into_iter()
        .all(|p| seqs(&p.expect("history")) == [4, 5, 6, 7, 8, 9]));
    assert_eq!(fake.states.load(Ordering::SeqCst), 1);
    assert_eq!(fake.history_calls(), [(4, 100)]);
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn sequential_reads_are_not_cached() {
    let fake = Fake::with_head(2);
    let c = Coalescing::new(fake.clone());
    let t = topic("p.a");
    assert_eq!(
        c.head(&t).await.unwrap(),
        Some(StreamPosition::new(2, EPOCH))
    );
    fake.head_seq.store(3, Ordering::SeqCst);
    assert_eq!(
        c.head(&t).await.unwrap(),
        Some(StreamPosition::new(3, EPOCH))
    );
    let s1 = c.state(&t).await.unwrap();
    let s2 = c.state(&t).await.unwrap();
    assert_eq!(seqs(&c.history(&t, 1, 10).await.unwrap()), [1, 2, 3]);
    fake.head_seq.store(4, Ordering::SeqCst);
    assert_eq!(seqs(&c.history(&t, 1, 10).await.unwrap()), [1, 2, 3, 4]);
    c.follow(&t).await.unwrap();
    c.follow(&t).await.unwrap();
    assert_eq!(fake.heads.load(Ordering::SeqCst), 2);
    assert_eq!(fake.states.load(Ordering::SeqCst), 2);
    assert_eq!(fake.follows.load(Ordering::SeqCst), 2);
    assert_eq!(fake.history_calls(), [(1, 10), (1, 10)]);
    assert_eq!(s1.position, s2.position);
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn overlapping_history_reads_share_the_widest_and_each_gets_its_slice() {
    let fake = Fake::with_head(30);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    let (c2, t2) = (c.clone(), t.clone());
    // All asked before the shared read goes out: one read of 9..24 serves the
    // first six; the last is more than MAX_HISTORY_SPAN away and reads alone.
    let far = MAX_HISTORY_SPAN * 2;
    let pages: Vec<Vec<u64>> = join_all([
        c2.history(&t2, 10, 10), // starts the read: 10..20
        c2.history(&t2, 12, 3),  // inside: 12, 13, 14
        c2.history(&t2, 19, 5),  // widens it to 24: 19..24
        c2.history(&t2, 10, 10), // identical
        c2.history(&t2, 9, 2),   // widens it down to 9: 9, 10
        c2.history(&t2, 20, 2),  // inside the widened range: 20, 21
        c2.history(&t2, far, 5), // too far to share: nothing there
    ])
    .await
    .into_iter()
    .map(|p| seqs(&p.expect("history")))
    .collect();
    assert_eq!(
        pages,
        [
            (10..20).collect::<Vec<_>>(),
            vec![12, 13, 14],
            (19..24).collect(),
            (10..20).collect(),
            vec![9, 10],
            vec![20, 21],
            vec![],
        ]
    );
    let mut inner = fake.history_calls();
    inner.sort_unstable();
    assert_eq!(inner, [(9, 15), (far, 5)]);
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn a_read_already_sent_is_not_joined_by_a_later_caller() {
    // A caller's answer must be at least as new as its request: once a read went
    // out (and may have run before the caller's publications of interest), a new
    // caller starts a read of its own.
    let fake = Fake::with_head(12);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    let gate = fake.gate.write().await;
    let (c2, t2) = (c.clone(), t.clone());
    let first = tokio::spawn(async move {
        futures_util::future::join(c2.history(&t2, 10, 100), c2.head(&t2)).await
    });
    until(|| fake.history_calls().len() == 1 && fake.heads.load(Ordering::SeqCst) == 1).await;
    fake.head_seq.store(14, Ordering::SeqCst);
    let (c3, t3) = (c.clone(), t.clone());
    let later = tokio::spawn(async move {
        futures_util::future::join(c3.history(&t3, 13, 2), c3.head(&t3)).await
    });
    until(|| fake.history_calls().len() == 2 && fake.heads.load(Ordering::SeqCst) == 2).await;
    drop(gate);
    let (h1, p1) = first.await.expect("join");
    let (h2, p2) = later.await.expect("join");
    assert_eq!(seqs(&h1.expect("first")), [10, 11, 12]);
    assert_eq!(p1.expect("head"), Some(StreamPosition::new(12, EPOCH)));
    assert_eq!(seqs(&h2.expect("later")), [13, 14]);
    assert_eq!(p2.expect("head"), Some(StreamPosition::new(14, EPOCH)));
    assert_eq!(fake.history_calls(), [(10, 100), (13, 2)]);
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn a_follow_in_flight_is_joined_even_once_sent() {
    // Arming lasts: a later caller may share a follow that already went out.
    let fake = Fake::with_head(1);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    let gate = fake.gate.write().await;
    let (c2, t2) = (c.clone(), t.clone());
    let first = tokio::spawn(async move { c2.follow(&t2).await });
    until(|| fake.follows.load(Ordering::SeqCst) == 1).await;
    let (c3, t3) = (c.clone(), t.clone());
    let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p2 = polled.clone();
    let later = tokio::spawn(async move {
        p2.store(true, Ordering::SeqCst);
        c3.follow(&t3).await
    });
    until(|| polled.load(Ordering::SeqCst)).await;
    drop(gate);
    assert!(first.await.expect("join").is_ok());
    assert!(later.await.expect("join").is_ok());
    assert_eq!(fake.follows.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn distinct_history_reads_of_one_topic_are_capped_in_the_table() {
    let n = MAX_HISTORY_FLIGHTS + 4;
    let gap = MAX_HISTORY_SPAN + 1;
    let fake = Fake::with_head(1 + n as u64 * gap);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    let gate = fake.gate.write().await;
    let (c2, t2) = (c.clone(), t.clone());
    // Reads too far apart to share one range.
    let all = tokio::spawn(async move {
        join_all((0..n as u64).map(|i| c2.history(&t2, 1 + i * gap, 1))).await
    });
    until(|| fake.history_calls().len() == n).await;
    assert_eq!(c.in_flight(), MAX_HISTORY_FLIGHTS);
    drop(gate);
    let pages = all.await.expect("join");
    for (i, p) in pages.into_iter().enumerate() {
        assert_eq!(seqs(&p.expect("history")), [1 + i as u64 * gap]);
    }
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn an_unfollow_during_a_follow_in_flight_is_repeated_after_it() {
    let fake = Fake::with_head(1);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let t = topic("p.a");
    // A follow with no unfollow meanwhile unfollows nothing.
    c.follow(&t).await.expect("follow");
    assert_eq!(fake.unfollows.load(Ordering::SeqCst), 0);
    // The session that started a follow is cancelled and leaves the hub before the
    // follow armed the topic: the broker hears the unfollow again afterwards (and
    // re-checks the hub then).
    let gate = fake.gate.write().await;
    assert!(c.follow(&t).now_or_never().is_none());
    until(|| fake.follows.load(Ordering::SeqCst) == 2).await;
    c.unfollow(&t);
    assert_eq!(fake.unfollows.load(Ordering::SeqCst), 1);
    drop(gate);
    until(|| c.in_flight() == 0).await;
    assert_eq!(fake.unfollows.load(Ordering::SeqCst), 2);
}

/// `f`'s output, failing the test if it takes long (it waits for the held gate).
async fn at_once<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(2), f)
        .await
        .unwrap_or_else(|_| panic!("{what} waited for the store"))
}

#[tokio::test]
async fn what_the_inner_broker_holds_in_memory_skips_the_single_flight_and_the_store() {
    let fake = Fake::with_head(10);
    fake.local_from.store(5, Ordering::SeqCst);
    let c = Coalescing::new(fake.clone());
    let t = topic("a");
    // The gate is held: anything that went to the store would wait for it.
    let held = fake.gate.write().await;
    let page = at_once(c.history(&t, 7, 100), "history").await;
    assert_eq!(seqs(&page.unwrap()), [7, 8, 9, 10]);
    let page = at_once(c.history(&t, 5, 2), "history").await;
    assert_eq!(seqs(&page.unwrap()), [5, 6]);
    at_once(c.follow(&t), "follow").await.unwrap();
    assert!(fake.history_calls().is_empty(), "history read the store");
    assert_eq!(
        fake.follows.load(Ordering::SeqCst),
        0,
        "follow went to the store"
    );
    assert_eq!(c.in_flight(), 0);
    drop(held);
    // Before what it holds: the store, once.
    assert_eq!(seqs(&c.history(&t, 3, 2).await.unwrap()), [3, 4]);
    assert_eq!(fake.history_calls(), [(3, 2)]);
    // Not followed: the follow goes to the store.
    fake.local_from.store(0, Ordering::SeqCst);
    c.follow(&t).await.unwrap();
    assert_eq!(fake.follows.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn follow_many_passes_the_topics_not_followed_yet_in_one_call_that_outlives_its_caller() {
    let fake = Fake::with_head(3);
    let c = Arc::new(Coalescing::new(fake.clone()));
    let ts = [topic("w.a"), topic("w.b"), topic("w.c")];
    lock(&fake.local_topics).push(ts[1].clone());
    c.follow_many(&ts).await.expect("follow_many");
    assert_eq!(
        *lock(&fake.many),
        [vec![ts[0].clone(), ts[2].clone()]],
        "one call, without the topic followed and caught up with already"
    );
    assert_eq!(
        fake.follows.load(Ordering::SeqCst),
        0,
        "no follow per topic"
    );
    assert_eq!(fake.heads.load(Ordering::SeqCst), 0);
    assert!(
        fake.history_calls().is_empty(),
        "nothing read for a pattern"
    );
    // Every topic followed already: no call, and no wait for the store.
    lock(&fake.local_topics).extend([ts[0].clone(), ts[2].clone()]);
    let held = fake.gate.write().await;
    at_once(c.follow_many(&ts), "follow_many").await.unwrap();
    at_once(c.follow_many(&[]), "follow_many").await.unwrap();
    assert_eq!(lock(&fake.many).len(), 1);
    // A caller cancelled mid-way (its session closed and left the hub): the call
    // runs to its end, and the unfollow that came meanwhile is repeated for each
    // topic (the broker re-checks the hub for each).
    lock(&fake.local_topics).clear();
    assert!(c.follow_many(&ts).now_or_never().is_none());
    until(|| lock(&fake.many).len() == 2).await;
    c.unfollow(&ts[0]);
    assert_eq!(fake.unfollows.load(Ordering::SeqCst), 1);
    drop(held);
    until(|| fake.unfollows.load(Ordering::SeqCst) == 1 + ts.len()).await;
    assert_eq!(lock(&fake.many)[1], ts.to_vec());
    // An error reaches the caller.
    *lock(&fake.fail) = Some("down".into());
    assert!(matches!(
        c.follow_many(&ts).await,
        Err(BrokerError::Unavailable(e)) if e == "down"
    ));
}
