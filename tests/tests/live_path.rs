//! The Redis live path (sharded pub/sub per topic, the stream as the source of
//! truth, the in-memory tail), driven through the Redis broker with a recording
//! sink: what Redis sends to a node, what the node delivers, and exact counts.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, FunctionInterface, LuaInterface, TransactionInterface},
    types::Value,
};
use sluice_common::Topic;
use sluice_node::{
    broker::{redis::RedisBroker, Broker},
    metrics::Metrics,
    publication::{Origin, Pub, Sink},
};
use sluice_tests::redis::TestRedis;

/// The tests count server-wide things (channels, subscribed connections, read
/// commands): with `SLUICE_TEST_REDIS_URL` they share one server, so they take
/// turns (with containers each has its own anyway).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sink that follows the topics it is told to and records every delivery.
#[derive(Debug, Default)]
struct Recorder {
    wants: Mutex<HashSet<String>>,
    got: Mutex<Vec<(String, u64, String)>>,
}

impl Sink for Recorder {
    fn wants(&self, topic: &str) -> bool {
        self.wants.lock().expect("recorder lock").contains(topic)
    }

    fn deliver(&self, p: &Pub) -> usize {
        let mut got = self.got.lock().expect("recorder lock");
        got.push((p.topic.as_str().to_owned(), p.seq, p.epoch.to_string()));
        1
    }
}

impl Recorder {
    fn of(&self, topic: &str) -> Vec<u64> {
        let got = self.got.lock().expect("recorder lock");
        got.iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, s, _)| *s)
            .collect()
    }

    fn total(&self) -> usize {
        self.got.lock().expect("recorder lock").len()
    }

    async fn wait_for(&self, topic: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.of(topic).len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{topic}: waited for {n} deliveries, got {:?}",
                self.of(topic)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Node {
    broker: Arc<RedisBroker>,
    sink: Arc<Recorder>,
}

async fn node(redis: &TestRedis) -> Node {
    let sink = Arc::new(Recorder::default());
    let broker = RedisBroker::connect(
        &redis.url,
        &sluice_common::redis_client::RedisSettings::default(),
        sink.clone(),
        Origin::new("live-path"),
        Arc::new(Metrics::new()),
        10_000,
        Duration::from_secs(3600),
    )
    .await
    .expect("connect");
    assert!(broker.is_connected(), "the test Redis answers at once");
    Node { broker, sink }
}

impl Node {
    async fn follow(&self, topic: &str) {
        self.sink
            .wants
            .lock()
            .expect("recorder lock")
            .insert(topic.to_owned());
        self.broker
            .follow(&Topic::parse(topic).expect("valid topic"))
            .await
            .expect("redis answers");
    }

    fn unfollow(&self, topic: &str) {
        self.sink.wants.lock().expect("recorder lock").remove(topic);
        self.broker
            .unfollow(&Topic::parse(topic).expect("valid topic"));
    }
}

async fn publish(c: &Client, topic: &str, i: u64) -> (u64, String) {
    c.fcall("sluice_publish", topic, vec![format!(r#"{{"i":{i}}}"#)])
        .await
        .expect("redis answers")
}

/// Appends the topic's next entry exactly as `sluice_publish` does, but without
/// sending it on the live channel: a message the node's subscriber never saw.
async fn publish_unseen(c: &Client, topic: &str) -> u64 {
    let script = r#"
        local ems = redis.call('HGET', KEYS[1], 'ems')
        local epoch = redis.call('HGET', KEYS[1], 'epoch')
        local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
        redis.call('XADD', KEYS[2], ems .. '-' .. seq, 'e', epoch, 't', 'delta', 'p', '{}', 'ts', '1')
        return seq"#;
    let keys = vec![
        format!("sluice:{{{topic}}}:meta"),
        format!("sluice:{{{topic}}}:stream"),
    ];
    c.eval(script, keys, Vec::<String>::new())
        .await
        .expect("redis answers")
}

async fn shard_subscribers(c: &Client, topics: &[&str]) -> Vec<i64> {
    let mut args = vec!["SHARDNUMSUB".to_owned()];
    args.extend(topics.iter().map(|t| format!("sluice:{{{t}}}:live")));
    let v: Vec<Value> = c
        .custom(fred::cmd!("PUBSUB"), args)
        .await
        .expect("redis answers");
    v.chunks(2)
        .map(|p| p[1].as_i64().expect("redis answers"))
        .collect()
}

async fn shard_channels(c: &Client) -> Vec<String> {
    let mut v: Vec<String> = c
        .custom(fred::cmd!("PUBSUB"), vec!["SHARDCHANNELS"])
        .await
        .expect("redis answers");
    v.sort();
    v
}

/// `calls` of one command in `INFO commandstats`.
async fn calls(c: &Client, command: &str) -> u64 {
    let info: String = c
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await
        .expect("redis answers");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("redis answers"))
}

fn seqs(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[tokio::test]
async fn a_node_following_no_topic_is_sent_nothing_and_a_follower_only_its_topic() {
    let _turn = SERIAL.lock().await;
    let redis = TestRedis::start().await;
    redis.flushall().await;
    let idle = node(&redis).await;
    let follower = node(&redis).await;
    follower.follow("live.a").await;
    let c = redis.client().await;
    assert_eq!(shard_channels(&c).await, vec!["sluice:{live.a}:live"]);
    for i in 1..=50 {
        assert_eq!(publish(&c, "live.a", i).await.0, i);
        assert_eq!(publish(&c, "live.b", i).await.0, i);
    }
    follower.sink.wait_for("live.a", 50).await;
    // Redis sends topic B to no one, and topic A to the one follower only.
    assert_eq!(
        shard_subscribers(&c, &["live.a", "live.b"]).await,
        vec![1, 0]
    );
    assert_eq!(shard_channels(&c).await, vec!["sluice:{live.a}:live"]);
    // A sentinel publish on A: everything before it has been handled.
    publish(&c, "live.a", 51).await;
    follower.sink.wait_for("live.a", 51).await;
    assert_eq!(follower.sink.of("live.a"), seqs(1, 51));
    assert_eq!(follower.sink.total(), 51, "nothing of live.b");
    assert_eq!(idle.sink.total(), 0);
    assert_eq!(
        follower.broker.followed_topics(),
        vec![("live.a".to_owned(), 51)]
    );
    assert!(idle.broker.followed_topics().is_empty());

    // Unfollowing unsubscribes: Redis stops sending A too.
    follower.unfollow("live.a");
    assert!(
        follower.broker.followed_topics().is_empty(),
        "the tail is dropped"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shard_subscribers(&c, &["live.a"]).await != vec![0] {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shard_channels(&c).await.is_empty());
    publish(&c, "live.a", 52).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(follower.sink.total(), 51);
    idle.broker.shutdown().await;
    follower.broker.shutdown().await;
}

#[tokio::test]
async fn a_dropped_subscriber_connection_loses_nothing_for_a_quiet_topic() {
    let _turn = SERIAL.lock().await;
    let redis = TestRedis::start().await;
    redis.flushall().await;
    let n = node(&redis).await;
    n.follow("live.quiet").await;
    let c = redis.client().await;
    for i in 1..=3 {
        publish(&c, "live.quiet", i).await;
    }
    n.sink.wait_for("live.quiet", 3).await;
    // Kill the node's subscribed connection and publish, in one transaction: the
    // two publishes run while it is gone and reach no subscriber, and then the
    // topic goes quiet.
    let tx = c.multi();
    let _: () = tx
        .custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"])
        .await
        .expect("redis answers");
    for i in 4..=5 {
        let payload = format!(r#"{{"i":{i}}}"#);
        let _: () = tx
            .custom(
                fred::cmd!("FCALL"),
                vec!["sluice_publish", "1", "live.quiet", &payload],
            )
            .await
            .expect("redis answers");
    }
    let done: Vec<Value> = tx.exec(true).await.expect("redis answers");
    assert_eq!(
        done[0].as_i64(),
        Some(1),
        "the node's one subscribed connection"
    );
    let seq_of = |v: &Value| v.clone().into_array()[0].as_i64();
    assert_eq!((seq_of(&done[1]), seq_of(&done[2])), (Some(4), Some(5)));
    // The reconnect reads the stream from the last seq seen: 4 and 5 arrive with no
    // further publish.
    n.sink.wait_for("live.quiet", 5).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shard_subscribers(&c, &["live.quiet"]).await != vec![1] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not subscribed again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&c, "live.quiet", 6).await;
    n.sink.wait_for("live.quiet", 6).await;
    assert_eq!(n.sink.of("live.quiet"), seqs(1, 6), "each once, in order");
    n.broker.shutdown().await;
}

#[tokio::test]
async fn a_seq_jump_on_the_live_path_is_filled_from_the_stream() {
    let _turn = SERIAL.lock().await;
    let redis = TestRedis::start().await;
    redis.flushall().await;
    let n = node(&redis).await;
    n.follow("live.jump").await;
    let c = redis.client().await;
    publish(&c, "live.jump", 1).await;
    publish(&c, "live.jump", 2).await;
    n.sink.wait_for("live.jump", 2).await;
    assert_eq!(publish_unseen(&c, "live.jump").await, 3);
    assert_eq!(publish_unseen(&c, "live.jump").await, 4);
    let reads = calls(&c, "fcall_ro").await;
    // 5 arrives live after a jump from 2: the node reads 3..=5 from the stream.
    assert_eq!(publish(&c, "live.jump", 5).await.0, 5);
    n.sink.wait_for("live.jump", 5).await;
    publish(&c, "live.jump", 6).await;
    n.sink.wait_for("live.jump", 6).await;
    assert_eq!(n.sink.of("live.jump"), seqs(1, 6));
    assert_eq!(
        calls(&c, "fcall_ro").await - reads,
        1,
        "one stream read for the jump"
    );
    n.broker.shutdown().await;
}

#[tokio::test]
async fn an_epoch_change_on_the_live_path_restarts_at_the_new_epochs_first_seq() {
    let _turn = SERIAL.lock().await;
    let redis = TestRedis::start().await;
    redis.flushall().await;
    let n = node(&redis).await;
    n.follow("live.epoch").await;
    let c = redis.client().await;
    for i in 1..=3 {
        publish(&c, "live.epoch", i).await;
    }
    n.sink.wait_for("live.epoch", 3).await;
    // Redis loses the topic's state: the next publish starts a new epoch at 1.
    let _: i64 = c
        .custom(fred::cmd!("DEL"), vec!["sluice:{live.epoch}:meta"])
        .await
        .expect("redis answers");
    let (one, new_epoch) = publish(&c, "live.epoch", 1).await;
    assert_eq!(one, 1);
    // The new epoch's 2 is never seen live; its 3 is, after a jump.
    assert_eq!(publish_unseen(&c, "live.epoch").await, 2);
    assert_eq!(publish(&c, "live.epoch", 3).await.0, 3);
    n.sink.wait_for("live.epoch", 6).await;
    let got = n.sink.got.lock().expect("recorder lock").clone();
    let old_epoch = got[0].2.clone();
    assert_ne!(old_epoch, new_epoch);
    let want: Vec<(u64, &str)> = vec![
        (1, &old_epoch),
        (2, &old_epoch),
        (3, &old_epoch),
        (1, &new_epoch),
        (2, &new_epoch),
        (3, &new_epoch),
    ];
    let have: Vec<(u64, &str)> = got.iter().map(|(_, s, e)| (*s, e.as_str())).collect();
    assert_eq!(have, want);
    assert_eq!(
        n.broker.followed_topics(),
        vec![("live.epoch".to_owned(), 3)]
    );
    n.broker.shutdown().await;
}

#[tokio::test]
async fn history_covered_by_the_tail_reads_redis_zero_times() {
    let _turn = SERIAL.lock().await;
    let redis = TestRedis::start().await;
    redis.flushall().await;
    let n = node(&redis).await;
    let topic = Topic::parse("live.tail").expect("valid topic");
    let c = redis.client().await;
    // 10 published before the node follows: only Redis has them.
    for i in 1..=10 {
        publish(&c, "live.tail", i).await;
    }
    n.follow("live.tail").await;
    for i in 11..=300 {
        publish(&c, "live.tail", i).await;
    }
    n.sink.wait_for("live.tail", 290).await;
    // The tail holds the last 256: 45..=300.
    assert_eq!(
        n.broker.followed_topics(),
        vec![("live.tail".to_owned(), 256)]
    );
    let reads = calls(&c, "fcall_ro").await;
    let page = n
        .broker
        .history(&topic, 45, 1000)
        .await
        .expect("redis answers");
    assert_eq!(
        page.iter().map(|p| p.seq).collect::<Vec<_>>(),
        seqs(45, 300)
    );
    let page = n
        .broker
        .history(&topic, 290, 5)
        .await
        .expect("redis answers");
    assert_eq!(
        page.iter().map(|p| p.seq).collect::<Vec<_>>(),
        seqs(290, 294)
    );
    for _ in 0..100 {
        n.broker
            .history(&topic, 100, 500)
            .await
            .expect("redis answers");
    }
    assert_eq!(calls(&c, "fcall_ro").await, reads, "all served from memory");
    // Older than the tail: Redis answers once.
    let page = n
        .broker
        .history(&topic, 44, 1000)
        .await
        .expect("redis answers");
    assert_eq!(
        page.iter().map(|p| p.seq).collect::<Vec<_>>(),
        seqs(44, 300)
    );
    assert_eq!(calls(&c, "fcall_ro").await, reads + 1);
    n.unfollow("live.tail");
    assert!(n.broker.followed_topics().is_empty());
    n.broker
        .history(&topic, 290, 5)
        .await
        .expect("redis answers");
    assert_eq!(
        calls(&c, "fcall_ro").await,
        reads + 2,
        "no tail once unfollowed"
    );
    n.broker.shutdown().await;
}

/// The follow fills the tail from the stream (one transaction with the position),
/// so resumes from before the follow read Redis no more: before the fill the tail
/// started empty and the first resume from 5 cost a history read.
#[tokio::test]
async fn the_follow_fills_the_tail_so_resumes_from_before_it_read_redis_zero_times() {
    let _turn = SERIAL.lock().await;
    let redis = TestRedis::start().await;
    redis.flushall().await;
    let n = node(&redis).await;
    let topic = Topic::parse("live.fill").expect("valid topic");
    let c = redis.client().await;
    for i in 1..=20 {
        publish(&c, "live.fill", i).await;
    }
    n.follow("live.fill").await;
    assert_eq!(
        n.broker.followed_topics(),
        vec![("live.fill".to_owned(), 20)],
        "the fill holds all 20"
    );
    let reads = calls(&c, "fcall_ro").await;
    for _ in 0..50 {
        let again = n.broker.history(&topic, 5, 100).await.expect("answered");
        assert_eq!(again.iter().map(|p| p.seq).collect::<Vec<_>>(), seqs(5, 20));
    }
    assert_eq!(
        calls(&c, "fcall_ro").await,
        reads,
        "no history read for 50 resumes from before the follow"
    );
    n.broker.shutdown().await;
}
