//! Flow control: a client that stops reading fills the socket buffers, then its
//! bounded outbox, and is closed with 4008; nothing is lost for it, because it
//! resumes from history on a new connection and gets exactly what it missed.

use std::time::Duration;

use serde_json::json;
use sluice_tests::{seqs, start_node, TestNode};
use tokio::time::Instant;

const TOPIC: &str = "prices.SLOW1";

/// Publishes `total` messages of about `pad` bytes to `topic`, waiting after each one
/// until the session has written it, for as long as the session keeps writing. Once
/// a write stalls (the client's socket buffers are full) the rest goes out at once,
/// which fills the outbox. Returns the epoch and the seq at which writing stalled.
async fn publish_until_stalled(
    node: &TestNode,
    topic: &str,
    total: u64,
    pad: usize,
) -> (String, u64) {
    let filler = "z".repeat(pad);
    let mut epoch = String::new();
    let mut stalled_at = None;
    for i in 1..=total {
        let before = node.frames_sent();
        let payload = format!(r#"{{"i":{i},"pad":"{filler}"}}"#);
        let (seq, e) = node.publish_direct(topic, &payload, None).await;
        assert_eq!(seq, i);
        epoch = e;
        if stalled_at.is_none() {
            let deadline = Instant::now() + Duration::from_millis(200);
            while node.frames_sent() == before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if node.frames_sent() == before {
                stalled_at = Some(i);
            }
        }
    }
    (
        epoch,
        stalled_at.expect("the socket never stalled: publish more or larger messages"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_outbox_fills_is_closed_with_4008_and_resumes_losslessly() {
    const TOTAL: u64 = 2_000;
    let node = start_node(|cfg| cfg.queue_size = 8).await;
    let mut slow = node.client().await;
    let ack = slow.subscribe(json!({"topic": TOPIC})).await;
    assert_eq!(ack["payload"]["head_seq"], 0);

    // `slow` stops reading now.
    let (epoch, stalled_at) = publish_until_stalled(&node, TOPIC, TOTAL, 4 * 1024).await;
    let disconnects = node
        .wait_metric(
            "sluice_slow_consumer_disconnects_total",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(disconnects, 1.0);
    assert!(
        node.metric("sluice_messages_dropped_total").await >= Some(1.0),
        "the publication that found the outbox full is counted"
    );

    // Read again: everything that was already on its way, in order, then the close,
    // which the server holds back until the client reads (it lingers up to 5 s).
    let (got, close) = slow.deltas_until_close(Duration::from_secs(10)).await;
    assert_eq!(close, Some(4008), "slow consumer close code");
    let last = got.last().and_then(|p| p["seq"].as_u64()).unwrap_or(0);
    assert_eq!(
        seqs(&got),
        (1..=last).collect::<Vec<_>>(),
        "no gap before the close"
    );
    assert!(
        last + 1 >= stalled_at && last < TOTAL,
        "got {last}, writing stalled at {stalled_at}"
    );

    // Resume on a new connection: exactly the missed ones, in order, none twice.
    let mut again = node.client().await;
    let ack = again
        .subscribe(json!({"topic": TOPIC, "resume_from_seq": last + 1, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], TOTAL, "{ack}");
    let missed = again.recv_pubs_until(TOTAL).await;
    assert_eq!(seqs(&missed), (last + 1..=TOTAL).collect::<Vec<_>>());
    node.publish(TOPIC, json!({"i": TOTAL + 1})).await;
    assert_eq!(seqs(&again.recv_pubs(1).await), [TOTAL + 1]);
    assert_eq!(
        node.metric("sluice_slow_consumer_disconnects_total").await,
        Some(1.0),
        "the resumed session is not a slow consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_never_reads_again_is_dropped_after_the_close_linger() {
    let node = start_node(|cfg| cfg.queue_size = 4).await;
    let mut slow = node.client().await;
    slow.subscribe(json!({"topic": TOPIC})).await;
    publish_until_stalled(&node, TOPIC, 1_000, 16 * 1024).await;
    node.wait_metric(
        "sluice_slow_consumer_disconnects_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let flagged = Instant::now();
    // The server gives the close frame a bounded linger (5 s), then drops the
    // session, so a stalled client cannot pin a session forever.
    node.wait_sessions(0, Duration::from_secs(12)).await;
    let gone_after = flagged.elapsed();
    assert!(
        gone_after <= Duration::from_millis(6_000),
        "a stalled slow consumer was kept {gone_after:?} after being flagged; the linger is 5 s"
    );
    let (_, topics) = node
        .get_json("/topics", Some(sluice_tests::ADMIN_TOKEN))
        .await;
    assert_eq!(topics["topic_count"], 0, "{topics}");
    drop(slow);
}
