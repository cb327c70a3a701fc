//! Alerts first, end to end (issue 14): a session with a backlog of market deltas
//! gets an alert of another topic ahead of the deltas queued before it, on the
//! embedded broker and on Redis (through the live reader). Order is asserted by
//! position in the received stream, not by timing; per-topic seq order holds and
//! nothing is lost or doubled.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use sluice_common::{publisher::PublishKind, Topic};
use sluice_node::broker::{Broker, PublishRequest};
use sluice_tests::{redis::TestRedis, start_node, start_redis_node, TestNode};

const MARKET: [&str; 3] = ["prices.AF1", "prices.AF2", "prices.AF3"];
const ALERTS: &str = "desk.AF.alerts";
/// Deltas per market topic, and their size: 19 MB in all, more than loopback's
/// socket buffers hold, so most of it waits in the session's mailbox.
const PER_TOPIC: u64 = 400;
const PAD_BYTES: usize = 16 * 1024;
/// Publications a session takes from its mailbox per wake-up (the actor's
/// `WRITE_BURST`): a blocked write holds at most this many already taken.
const WRITE_BURST: u64 = 64;

async fn publish(broker: &dyn Broker, topic: &str, kind: PublishKind, payload: &str) -> u64 {
    let topic = Topic::parse(topic).expect("topic");
    broker
        .publish(PublishRequest {
            topic: &topic,
            kind,
            payload_json: payload,
            snapshot_json: None,
            meta_json: None,
        })
        .await
        .expect("publish")
        .seq
}

/// Waits until the node's count of frames written stops moving: the session is
/// blocked on its socket and the rest of the backlog sits in its mailbox.
async fn wait_blocked(node: &TestNode) -> u64 {
    let mut last = node.frames_sent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = node.frames_sent();
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never blocked"
        );
        last = now;
    }
}

async fn a_backlogged_session_gets_its_alert_before_the_queued_deltas(node: TestNode) {
    let mut c = node.client().await;
    let mut topics: Vec<&str> = MARKET.to_vec();
    topics.push(ALERTS);
    c.send_json(json!({"type": "subscribe", "topics": topics}))
        .await;
    for _ in 0..topics.len() {
        let ack = c.recv().await.expect("ack");
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["payload"]["subscribed"], true, "{ack}");
    }
    let sent_before = node.frames_sent();

    // The market ticks while the client reads nothing.
    let broker: Arc<dyn Broker> = node.node().state.broker.clone();
    let pad = "m".repeat(PAD_BYTES);
    for i in 1..=PER_TOPIC {
        for t in MARKET {
            let seq = publish(
                &*broker,
                t,
                PublishKind::Delta,
                &format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
            )
            .await;
            assert_eq!(seq, i);
        }
    }
    let published = PER_TOPIC * MARKET.len() as u64;
    let written = wait_blocked(&node).await - sent_before;
    // What the session had not taken from its mailbox when the alert came.
    let queued = published.saturating_sub(written + WRITE_BURST);
    assert!(
        queued >= 100,
        "the test needs a backlog in the mailbox: {written} of {published} written"
    );

    assert_eq!(
        publish(&*broker, ALERTS, PublishKind::Alert, r#"{"margin":"call"}"#).await,
        1
    );
    // Let the live path hand the alert to the session's mailbox, then read all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<Value> = c.recv_pubs(published as usize + 1).await;

    let alert_at = got
        .iter()
        .position(|v| v["type"] == "alert")
        .expect("the alert arrived");
    assert_eq!(got[alert_at]["topic"], ALERTS);
    assert_eq!(got[alert_at]["seq"], 1);
    assert_eq!(
        got.iter().filter(|v| v["type"] == "alert").count(),
        1,
        "one alert, once"
    );
    let after = got.len() - 1 - alert_at;
    assert!(
        after as u64 >= queued,
        "the alert must overtake the {queued} deltas still queued: it came at position \
         {alert_at} of {}, {after} deltas after it ({written} written before it)",
        got.len()
    );
    // Every market topic: exactly 1..=PER_TOPIC, in order, nothing doubled.
    for t in MARKET {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|v| v["topic"] == t)
            .map(|v| v["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, (1..=PER_TOPIC).collect::<Vec<_>>(), "{t}");
        assert!(got
            .iter()
            .filter(|v| v["topic"] == t)
            .all(|v| v["type"] == "delta"));
    }
    // Nothing more: the next frame is a sentinel published now.
    publish(
        &*broker,
        MARKET[0],
        PublishKind::Delta,
        r#"{"sentinel":true}"#,
    )
    .await;
    c.expect_sentinel(MARKET[0], PER_TOPIC + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_session_gets_its_alert_first_embedded() {
    let node = start_node(|c| c.queue_size = 4096).await;
    a_backlogged_session_gets_its_alert_before_the_queued_deltas(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_session_gets_its_alert_first_redis() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| c.queue_size = 4096).await;
    a_backlogged_session_gets_its_alert_before_the_queued_deltas(node).await;
}
