//! A stalled reader costs a node at most its outbound queue: measured on a node
//! process alone (its `VmRSS`), not on the test process, and bounded by the configured
//! queue — queue size × frame size × 2 — while many times that is published to the
//! stalled client, which is then closed with 4008 and resumes losslessly.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use sluice_common::publisher::{PublishKind, Publisher};
use sluice_tests::{
    metric_value,
    process::{rss_of, NodeProcess},
    redis::TestRedis,
    WsClient,
};

const QUEUE: u64 = 256;
const PAD_BYTES: usize = 16 * 1024;
/// 16× the queue's worth of frames: a node that buffered them would grow by ~64 MiB.
const TOTAL: u64 = QUEUE * 16;
const MIB: f64 = 1024.0 * 1024.0;

async fn metric(node: &NodeProcess, name: &str) -> f64 {
    let text = reqwest::get(node.http_url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    metric_value(&text, name).unwrap_or(0.0)
}

fn payload(i: u64) -> String {
    format!(r#"{{"i":{i},"pad":"{}"}}"#, "z".repeat(PAD_BYTES))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_grows_the_node_by_at_most_twice_its_queue_then_resumes_losslessly() {
    let redis = TestRedis::start().await;
    let node = NodeProcess::start(
        "mem",
        &[
            ("REDIS_URL", redis.url.clone()),
            ("SLUICE_QUEUE_SIZE", QUEUE.to_string()),
            ("SLUICE_HISTORY_SIZE", (TOTAL * 2).to_string()),
        ],
    )
    .await;
    let engine = Publisher::connect(&redis.url, 2).await.expect("publisher");

    // Warm-up: the same frame size through a reading client, so buffers and allocator
    // pools the steady state needs anyway exist before the baseline is taken.
    let warm_topic = "prices.WARM";
    let mut warm = WsClient::connect(&node.ws_url()).await.expect("connect");
    warm.subscribe(json!({"topic": warm_topic})).await;
    for i in 1..=QUEUE {
        engine
            .publish_json(warm_topic, PublishKind::Delta, &payload(i), None)
            .await
            .expect("publish");
    }
    warm.recv_pubs_until(QUEUE).await;
    warm.close().await;

    let topic = "prices.STALLED";
    let mut slow = WsClient::connect(&node.ws_url()).await.expect("connect");
    assert_eq!(
        slow.subscribe(json!({"topic": topic})).await["payload"]["head_seq"],
        0
    );
    let before = node.rss_bytes();
    let frame_bytes = payload(0).len() as u64 + 200; // the envelope's own fields
    let bound = QUEUE * frame_bytes * 2;

    // Publish everything while the client reads nothing, and sample the node's RSS
    // the whole time: the peak is what a stalled reader costs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pid) = (stop.clone(), node.pid());
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::Acquire) {
                peak = peak.max(rss_of(pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak.max(rss_of(pid))
        })
    };
    let publishing = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut epoch = String::new();
            for i in 1..=TOTAL {
                let pos = engine
                    .publish_json(topic, PublishKind::Delta, &payload(i), None)
                    .await
                    .expect("publish");
                assert_eq!(pos.seq, i, "gap-free seqs");
                epoch = pos.epoch;
            }
            epoch
        })
    };
    // Read again as soon as the node gives up on the client: it lingers only 5 s to
    // deliver the close frame behind what is already in the socket.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric(&node, "sluice_slow_consumer_disconnects_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was not cut off"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What was already on its way arrives in order from seq 1, then the 4008 close.
    let (deltas, close) = slow.deltas_until_close(Duration::from_secs(20)).await;
    let seen = sluice_tests::seqs(&deltas);
    assert_eq!(close, Some(4008), "the slow consumer's close code");
    let last = seen.last().copied().unwrap_or(0);
    assert!(
        seen.iter().copied().eq(1..=last),
        "in order from 1: {} frames, last {last}",
        seen.len()
    );
    assert!(last < TOTAL, "the client was cut off before the end");

    let epoch = publishing.await.expect("the engine finished");
    stop.store(true, Ordering::Release);
    let peak = sampler.await.expect("sampler");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "node RSS {:.1} MiB -> peak {:.1} MiB (+{:.2} MiB); bound {:.2} MiB = {QUEUE} × {frame_bytes} B × 2; {:.1} MiB published",
        before as f64 / MIB,
        peak as f64 / MIB,
        growth as f64 / MIB,
        bound as f64 / MIB,
        (TOTAL * frame_bytes) as f64 / MIB
    );
    assert!(
        growth <= bound,
        "the node grew by {growth} B for a stalled reader; its queue allows {bound} B"
    );
    assert_eq!(
        metric(&node, "sluice_slow_consumer_disconnects_total").await,
        1.0,
        "exactly one slow-consumer disconnect"
    );

    // Resume: exactly the rest, once, in order, then the sentinel and nothing between.
    let mut again = WsClient::connect(&node.ws_url()).await.expect("connect");
    let ack = again
        .subscribe(json!({"topic": topic, "resume_from_seq": last + 1, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let rest = again.recv_pubs_until(TOTAL).await;
    assert!(
        rest.iter()
            .map(|p| p["seq"].as_u64().expect("seq"))
            .eq(last + 1..=TOTAL),
        "the resumed connection got exactly {}..={TOTAL}",
        last + 1
    );
    engine
        .publish(topic, &json!({"sentinel": true}))
        .await
        .expect("publish");
    again.expect_sentinel(topic, TOTAL + 1).await;
}
