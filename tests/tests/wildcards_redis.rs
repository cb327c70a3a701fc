//! Wildcards across nodes on Redis: a client holding `prices.>` on node A gets the
//! messages published on node B (POST /publish) and by engines (FCALL), for topics
//! that existed before the subscribe and for topics created after it, first
//! message included, each exactly once and in seq order per topic. Once on one
//! Redis server (a container), once on a loopback Cluster of 3 masters.

use std::{collections::BTreeMap, time::Duration};

use fred::{
    clients::Client,
    interfaces::{ClientLike, FunctionInterface},
    types::{config::Config as RedisConfig, Builder},
};
use serde_json::json;
use sluice_tests::{
    eventually, redis::TestRedis, redis_topology::TestCluster, start_node, start_redis_node,
    TestNode, WsClient,
};

async fn fcall(c: &Client, topic: &str, i: u64) -> u64 {
    let (seq, _epoch): (u64, String) = c
        .fcall("sluice_publish", topic, vec![format!(r#"{{"i":{i}}}"#)])
        .await
        .expect("redis answers");
    seq
}

/// Reads publications into `got` (topic → seqs in order) until `done` holds.
async fn read_until(
    c: &mut WsClient,
    got: &mut BTreeMap<String, Vec<u64>>,
    done: impl Fn(&BTreeMap<String, Vec<u64>>) -> bool,
) {
    while !done(got) {
        let v = c
            .recv()
            .await
            .unwrap_or_else(|e| panic!("waiting, having {got:?}: {e}"));
        assert_eq!(v["type"], "delta", "{v}");
        got.entry(v["topic"].as_str().expect("topic").to_owned())
            .or_default()
            .push(v["seq"].as_u64().expect("seq"));
    }
}

#[tokio::test]
async fn a_wildcard_on_one_node_gets_every_matching_topic_published_on_another_once() {
    let redis = TestRedis::start().await;
    let a = start_redis_node(&redis, |_| {}).await;
    let b = start_redis_node(&redis, |_| {}).await;
    let engine = redis.client().await;
    across_two_nodes(&a, &b, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_wildcard_gets_topics_of_every_master_once() {
    let cluster = TestCluster::start();
    let url = cluster.url();
    let a = start_node(|c| c.redis_url = Some(url.clone())).await;
    let b = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = Builder::from_config(RedisConfig::from_url(&url).expect("url"))
        .build()
        .expect("client");
    engine.init().await.expect("cluster answers");
    across_two_nodes(&a, &b, &engine).await;
}

/// `a` holds `prices.>`; `b` and an engine publish to existing and new topics.
async fn across_two_nodes(a: &TestNode, b: &TestNode, engine: &Client) {
    // prices.OLD exists before the subscribe.
    b.publish("prices.OLD", json!({"n": 1})).await;
    b.publish("prices.OLD", json!({"n": 2})).await;
    let mut c = a.client().await;
    let ack = c.subscribe(json!({"topic": "prices.>"})).await;
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "wildcard": true}),
        "{ack}"
    );

    // Interleaved: the old topic, new topics by HTTP on B and by FCALL, a deeper
    // one, and topics the wildcard does not match.
    for i in 1..=3u64 {
        b.publish("prices.OLD", json!({ "i": i })).await;
        b.publish("prices.NEW", json!({ "i": i })).await;
        assert_eq!(fcall(engine, "prices.FC", i).await, i);
        assert_eq!(fcall(engine, "prices.D.x", i).await, i);
        fcall(engine, "pricesX.A", i).await;
        b.publish("other.prices", json!({ "i": i })).await;
    }
    let want: BTreeMap<String, Vec<u64>> = [
        ("prices.D.x", vec![1, 2, 3]),
        ("prices.FC", vec![1, 2, 3]),
        ("prices.NEW", vec![1, 2, 3]),
        ("prices.OLD", vec![3, 4, 5]),
    ]
    .into_iter()
    .map(|(t, s)| (t.to_owned(), s))
    .collect();
    let mut got = BTreeMap::new();
    read_until(&mut c, &mut got, |g| {
        g.values().map(Vec::len).sum::<usize>() >= 12
    })
    .await;
    assert_eq!(got, want, "each message once, in seq order per topic");

    // Nothing more is owed: the next frame is the next publication.
    assert_eq!(fcall(engine, "prices.FC", 4).await, 4);
    let next = c.recv_pubs(1).await;
    assert_eq!(
        (next[0]["topic"].as_str(), next[0]["seq"].as_u64()),
        (Some("prices.FC"), Some(4)),
        "{}",
        next[0]
    );

    // Unsubscribed: node A stops following the topics (none other wants them).
    c.send_json(json!({"type": "unsubscribe", "topic": "prices.>"}))
        .await;
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["payload"]["was_subscribed"], true, "{ack}");
    eventually(Duration::from_secs(5), "node A follows nothing", || async {
        let (_, h) = a.get_json("/health", None).await;
        h["topics_active"] == 0
    })
    .await;
}

/// Base 36 (0-9a-z), as `sluice.lua` writes epochs.
fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// An announcement lost while a node's subscriber connection was down is made up
/// for when it comes back: the node lists the topics again and follows the new one
/// from its seq 1. The topic is written here the way `sluice_publish` writes it,
/// minus its announcement, so the loss is certain rather than a race.
#[tokio::test]
async fn a_topic_whose_announcement_was_missed_is_found_after_a_reconnect() {
    let redis = TestRedis::start().await;
    let a = start_redis_node(&redis, |_| {}).await;
    let engine = redis.client().await;
    let mut c = a.client().await;
    c.subscribe(json!({"topic": "quiet.>"})).await;

    // quiet.MISSED: seq 1 stored, no announcement.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let epoch = base36(now_ms * 1000);
    let (meta, stream) = ("sluice:{quiet.MISSED}:meta", "sluice:{quiet.MISSED}:stream");
    let _: () = engine
        .custom(
            fred::cmd!("HSET"),
            vec![
                meta,
                "epoch",
                &epoch,
                "ems",
                &now_ms.to_string(),
                "seq",
                "1",
            ],
        )
        .await
        .expect("hset");
    let id = format!("{now_ms}-1");
    let ts = now_ms.to_string();
    let _: String = engine
        .custom(
            fred::cmd!("XADD"),
            vec![
                stream,
                &id,
                "e",
                &epoch,
                "t",
                "delta",
                "p",
                r#"{"i":1}"#,
                "ts",
                &ts,
            ],
        )
        .await
        .expect("xadd");
    // Nothing arrives: the node has not heard of the topic.
    assert_eq!(c.recv_within(Duration::from_millis(500)).await, None);

    // The node's subscriber connection drops and comes back.
    let killed: u64 = engine
        .custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"])
        .await
        .expect("client kill");
    assert!(killed >= 1, "the node had a pub/sub connection");
    let first = c.recv_pubs(1).await;
    assert_eq!(
        (first[0]["topic"].as_str(), first[0]["seq"].as_u64()),
        (Some("quiet.MISSED"), Some(1)),
        "{}",
        first[0]
    );
    // And it is live from there, each message once.
    assert_eq!(fcall(&engine, "quiet.MISSED", 2).await, 2);
    let next = c.recv_pubs(1).await;
    assert_eq!(next[0]["seq"].as_u64(), Some(2), "{}", next[0]);
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
}
