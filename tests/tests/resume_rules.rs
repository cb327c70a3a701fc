//! Each resume rule of SPEC §3, alone, on the embedded broker and on Redis: a changed
//! epoch with the seq inside the head, no epoch, a seq past the head, a trimmed
//! history, a broker that lost everything, and Redis restarted with its AOF.
//!
//! Every scenario changes one thing against a control that is recovered, and judges
//! what the server sent by a sentinel: after the ack the test publishes one more
//! message, reads every frame up to it, and asserts that exact list — so "nothing
//! else arrived" is proven by order, not by a quiet window.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::{
    redis::{Persistence, TestRedis},
    start_node, start_redis_node, TestNode, WsClient,
};

/// Which broker a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum On {
    Embedded,
    Redis,
}

/// A node on `on`, with `history_size`; the Redis (if any) lives as long as the node.
async fn node_on(on: On, history_size: usize) -> (TestNode, Option<TestRedis>) {
    match on {
        On::Embedded => (start_node(|c| c.history_size = history_size).await, None),
        On::Redis => {
            let redis = TestRedis::start().await;
            let node = start_redis_node(&redis, |c| c.history_size = history_size).await;
            (node, Some(redis))
        }
    }
}

/// Publishes `{"i": i}` for `from..=to`, with the snapshot `{"state": i}` at `snap_at`;
/// asserts the seqs; returns the epoch.
async fn publish_range(node: &TestNode, topic: &str, from: u64, to: u64, snap_at: u64) -> String {
    let mut epoch = String::new();
    for i in from..=to {
        let snap = format!(r#"{{"state":{i}}}"#);
        let (seq, e) = node
            .publish_direct(
                topic,
                &format!(r#"{{"i":{i}}}"#),
                (i == snap_at).then_some(snap.as_str()),
            )
            .await;
        assert_eq!(seq, i, "the topic's seqs are gap-free");
        epoch = e;
    }
    epoch
}

/// Publishes a sentinel (the next seq) and returns every frame up to and including it,
/// as `(type, seq)`; also asserts each publication carries `epoch`.
async fn through_sentinel(
    c: &mut WsClient,
    node: &TestNode,
    topic: &str,
    epoch: &str,
) -> Vec<(String, u64)> {
    let (sentinel, e) = node
        .publish_direct(topic, r#"{"sentinel":true}"#, None)
        .await;
    assert_eq!(e, epoch, "the sentinel is in the current epoch");
    let mut out = Vec::new();
    loop {
        let v: Value = c
            .recv()
            .await
            .unwrap_or_else(|e| panic!("waiting for sentinel {sentinel} after {out:?}: {e}"));
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        let seq = v["seq"].as_u64().unwrap_or(0);
        if matches!(kind.as_str(), "snapshot" | "delta" | "alert") {
            assert_eq!(v["topic"], topic, "{v}");
            assert_eq!(v["epoch"], epoch, "{v}");
            if kind == "snapshot" {
                assert_eq!(v["payload"], json!({ "state": seq }), "{v}");
            }
        }
        out.push((kind.clone(), seq));
        if kind == "delta" && seq == sentinel {
            return out;
        }
    }
}

fn frames(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
}

/// Subscribes with `resume` fields and asserts the ack exactly.
async fn resume(
    node: &TestNode,
    topic: &str,
    resume: Value,
    head: u64,
    epoch: &str,
    recovered: bool,
) -> WsClient {
    let mut c = node.client().await;
    let mut req = json!({ "topic": topic });
    for (k, v) in resume.as_object().expect("resume fields") {
        req[k] = v.clone();
    }
    let ack = c.subscribe(req.clone()).await;
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "head_seq": head, "epoch": epoch, "recovered": recovered}),
        "ack to {req}"
    );
    c
}

async fn epoch_changed_with_the_seq_inside_the_head(on: On) {
    let (node, _redis) = node_on(on, 100).await;
    let topic = "prices.RULE1";
    let epoch = publish_range(&node, topic, 1, 6, 4).await;
    // A real epoch, of another topic: well-formed, just not this history's.
    let other = publish_range(&node, "prices.RULE1OTHER", 1, 1, 0).await;
    assert_ne!(other, epoch);

    // Control: the right epoch recovers from seq 3.
    let mut ok = resume(
        &node,
        topic,
        json!({"resume_from_seq": 3, "epoch": epoch}),
        6,
        &epoch,
        true,
    )
    .await;
    let got = through_sentinel(&mut ok, &node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[
            ("delta", 3),
            ("delta", 4),
            ("delta", 5),
            ("delta", 6),
            ("delta", 7)
        ])
    );

    // Only the epoch differs: not recovered, the snapshot (seq 4), then on from it.
    let mut c = resume(
        &node,
        topic,
        json!({"resume_from_seq": 3, "epoch": other}),
        7,
        &epoch,
        false,
    )
    .await;
    let got = through_sentinel(&mut c, &node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[
            ("snapshot", 4),
            ("delta", 5),
            ("delta", 6),
            ("delta", 7),
            ("delta", 8)
        ])
    );
}

async fn no_epoch_is_a_mismatch(on: On) {
    let (node, _redis) = node_on(on, 100).await;
    let topic = "prices.RULE2";
    let epoch = publish_range(&node, topic, 1, 6, 4).await;
    // SPEC §3: a resume without `epoch` cannot be checked against this history.
    let mut c = resume(
        &node,
        topic,
        json!({"resume_from_seq": 3}),
        6,
        &epoch,
        false,
    )
    .await;
    let got = through_sentinel(&mut c, &node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[("snapshot", 4), ("delta", 5), ("delta", 6), ("delta", 7)])
    );
}

async fn past_the_head_is_a_mismatch_and_one_past_is_recovered(on: On) {
    let (node, _redis) = node_on(on, 100).await;
    let topic = "prices.RULE3";
    let epoch = publish_range(&node, topic, 1, 6, 5).await;
    // Control: one past the head is exactly caught up; nothing to replay.
    let mut ok = resume(
        &node,
        topic,
        json!({"resume_from_seq": 7, "epoch": epoch}),
        6,
        &epoch,
        true,
    )
    .await;
    assert_eq!(
        through_sentinel(&mut ok, &node, topic, &epoch).await,
        frames(&[("delta", 7)])
    );

    // Two past the head: the client saw messages this topic does not have.
    let mut c = resume(
        &node,
        topic,
        json!({"resume_from_seq": 9, "epoch": epoch}),
        7,
        &epoch,
        false,
    )
    .await;
    let got = through_sentinel(&mut c, &node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[("snapshot", 5), ("delta", 6), ("delta", 7), ("delta", 8)])
    );
}

async fn trimmed_history_is_not_recovered(on: On) {
    let (node, _redis) = node_on(on, 5).await;
    let topic = "prices.RULE4";
    // History keeps 8..=12; the snapshot is at 10.
    let epoch = publish_range(&node, topic, 1, 12, 10).await;
    // Control: the oldest retained seq still recovers.
    let mut ok = resume(
        &node,
        topic,
        json!({"resume_from_seq": 8, "epoch": epoch}),
        12,
        &epoch,
        true,
    )
    .await;
    let got = through_sentinel(&mut ok, &node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[
            ("delta", 8),
            ("delta", 9),
            ("delta", 10),
            ("delta", 11),
            ("delta", 12),
            ("delta", 13)
        ])
    );

    // The sentinel trimmed seq 8: one older than the history now is not recovered,
    // and gets the snapshot and everything on from it.
    let mut c = resume(
        &node,
        topic,
        json!({"resume_from_seq": 8, "epoch": epoch}),
        13,
        &epoch,
        false,
    )
    .await;
    let got = through_sentinel(&mut c, &node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[
            ("snapshot", 10),
            ("delta", 11),
            ("delta", 12),
            ("delta", 13),
            ("delta", 14)
        ])
    );
}

#[tokio::test]
async fn epoch_changed_with_the_seq_inside_the_head_is_not_recovered_embedded() {
    epoch_changed_with_the_seq_inside_the_head(On::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_changed_with_the_seq_inside_the_head_is_not_recovered_redis() {
    epoch_changed_with_the_seq_inside_the_head(On::Redis).await;
}

#[tokio::test]
async fn a_resume_without_an_epoch_is_not_recovered_embedded() {
    no_epoch_is_a_mismatch(On::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_without_an_epoch_is_not_recovered_redis() {
    no_epoch_is_a_mismatch(On::Redis).await;
}

#[tokio::test]
async fn a_resume_past_the_head_is_not_recovered_embedded() {
    past_the_head_is_a_mismatch_and_one_past_is_recovered(On::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_the_head_is_not_recovered_redis() {
    past_the_head_is_a_mismatch_and_one_past_is_recovered(On::Redis).await;
}

#[tokio::test]
async fn a_resume_older_than_the_trimmed_history_is_not_recovered_embedded() {
    trimmed_history_is_not_recovered(On::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_trimmed_history_is_not_recovered_redis() {
    trimmed_history_is_not_recovered(On::Redis).await;
}

/// `POST /publish` (with the snapshot `{"state": 1}`: a new history's first seq) until
/// the node answers 200 (it may be reconnecting to Redis).
async fn publish_when_up(node: &TestNode, topic: &str, body: Value) -> (u64, String) {
    let req = json!({"topic": topic, "payload": body, "snapshot": {"state": 1}}).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = node
            .post("/publish", Some(sluice_tests::ADMIN_TOKEN), &req)
            .await;
        if status == 200 {
            let seq = v["seq"].as_u64().expect("seq");
            return (seq, v["epoch"].as_str().expect("epoch").to_owned());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node still cannot publish after 30 s: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After the topic's history was lost (a restart without persistence): the first
/// publish starts a new epoch at seq 1, the history grows past the client's old
/// position, and a resume from seq 4 of the old epoch is not recovered — only the
/// epoch tells the client's seq 4 from this history's seq 4 — so the client gets
/// the new snapshot and every delta after it, once.
async fn resume_into_a_new_history(node: &TestNode, topic: &str, old_epoch: &str) {
    let (seq, epoch) = publish_when_up(node, topic, json!({"i": 1})).await;
    assert_eq!(seq, 1, "a new history starts at 1");
    assert_ne!(epoch, old_epoch, "a lost history gets a new epoch");
    // The new history grows past the old position, so only the epoch can tell the
    // client's seq 4 from this history's seq 4.
    for i in 2..=6 {
        assert_eq!(
            node.publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
                .await
                .0,
            i
        );
    }
    let mut c = resume(
        node,
        topic,
        json!({"resume_from_seq": 4, "epoch": old_epoch}),
        6,
        &epoch,
        false,
    )
    .await;
    let got = through_sentinel(&mut c, node, topic, &epoch).await;
    assert_eq!(
        got,
        frames(&[
            ("snapshot", 1),
            ("delta", 2),
            ("delta", 3),
            ("delta", 4),
            ("delta", 5),
            ("delta", 6),
            ("delta", 7)
        ])
    );
}

#[tokio::test]
async fn after_the_embedded_broker_restarts_empty_a_resume_is_not_recovered() {
    // The embedded broker keeps nothing across a restart: the same as Redis without
    // persistence. A client of the old node resumes on the new one.
    let old = start_node(|_| {}).await;
    let topic = "prices.RULE5";
    let old_epoch = publish_range(&old, topic, 1, 5, 3).await;
    old.shutdown().await;
    let node = start_node(|_| {}).await;
    resume_into_a_new_history(&node, topic, &old_epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_without_persistence_a_resume_is_not_recovered() {
    let redis = TestRedis::start_with(Persistence::None).await;
    let node = start_redis_node(&redis, |_| {}).await;
    let topic = "prices.RULE6";
    let old_epoch = publish_range(&node, topic, 1, 5, 3).await;
    redis.stop().await;
    redis.start_again().await;
    assert_eq!(redis.sluice_keys().await, 0, "Redis came back empty");
    resume_into_a_new_history(&node, topic, &old_epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_with_its_aof_a_resume_recovers_exactly_the_missed_messages() {
    let redis = TestRedis::start_with(Persistence::Aof).await;
    let node = start_redis_node(&redis, |_| {}).await;
    let topic = "prices.RULE7";
    let epoch = publish_range(&node, topic, 1, 5, 3).await;
    redis.stop().await;
    redis.start_again().await;
    assert!(
        redis.sluice_keys().await > 0,
        "the AOF brought the topic back"
    );
    // The same history: a resume from 4 in the old epoch is recovered. The node may
    // still be reconnecting, so an INTERNAL_ERROR answer is retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        let mut client = node.client().await;
        client
            .send_json(
                json!({"type": "subscribe", "topic": topic, "resume_from_seq": 4, "epoch": epoch}),
            )
            .await;
        let ack = client.recv().await.expect("an answer");
        if ack["type"] == "ack" {
            assert_eq!(
                ack["payload"],
                json!({"subscribed": true, "head_seq": 5, "epoch": epoch, "recovered": true}),
                "the restarted Redis kept the history"
            );
            break client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node does not serve the topic 30 s after Redis came back: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The restarted server has a new replication id: the next publish opens a
    // continuation epoch, which the session follows on from seq 5 to 6.
    let (sentinel, e2) = node
        .publish_direct(topic, r#"{"sentinel":true}"#, None)
        .await;
    assert_eq!(sentinel, 6);
    assert_eq!(
        sluice_common::position::epoch_cmp(&e2, &epoch),
        std::cmp::Ordering::Greater,
        "a continuation epoch after the restart"
    );
    let got = c.recv_pubs_until(6).await;
    let got: Vec<(&str, u64, &str)> = got
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default();
            (s("type"), v["seq"].as_u64().unwrap_or(0), s("epoch"))
        })
        .collect();
    assert_eq!(
        got,
        [
            ("delta", 4, epoch.as_str()),
            ("delta", 5, epoch.as_str()),
            ("delta", 6, e2.as_str())
        ]
    );
}
