//! Flow control with real clients: a client that stops reading is closed with 4008,
//! then resumes and gets every missed message exactly once (embedded broker and
//! Redis; the node's memory bound is proven on a node process in `memory_bound.rs`); `batch_size` sends arrays only for a
//! backlog; background mode conflates and switches back losslessly; `compression`
//! sends large envelopes as gzip binary frames that decode to the same envelopes.

use std::{io::Read, sync::Arc, time::Duration};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_node::broker::Broker;
use sluice_tests::{
    assert_consecutive,
    auth::{hs_node, token_for},
    publish_to,
    redis::TestRedis,
    seqs, start_node, start_redis_node, TestNode, WsClient,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const PAD_BYTES: usize = 4 * 1024;

/// One client stops reading; an engine publishes `total` ~4 KiB messages. The client
/// is closed with 4008, and a new connection resuming from the last seq the client saw
/// receives every other message exactly once, in order.
async fn slow_consumer_is_cut_off_and_resumes_losslessly(
    node: TestNode,
    topic: &'static str,
    total: u64,
) {
    let mut slow = node.client().await;
    let ack = slow.subscribe(json!({"topic": topic})).await;
    assert_eq!(ack["payload"]["head_seq"], 0, "{ack}");
    let disconnects_before = node
        .metric("sluice_slow_consumer_disconnects_total")
        .await
        .unwrap_or(0.0);

    // The engine publishes in the background while the client reads nothing.
    let broker: Arc<dyn Broker> = node.node().state.broker.clone();
    let engine = tokio::spawn(async move {
        let pad = "z".repeat(PAD_BYTES);
        let mut epoch = String::new();
        for i in 1..=total {
            let payload = format!(r#"{{"i":{i},"pad":"{pad}"}}"#);
            let (seq, e) = publish_to(&*broker, topic, &payload, None).await;
            assert_eq!(seq, i, "the engine's seqs are gap-free");
            epoch = e;
            tokio::task::yield_now().await;
        }
        epoch
    });

    // Once the node gives up on the client, read again: what was already on its way,
    // in order from seq 1, then the 4008 close (the node lingers to deliver it).
    node.wait_metric(
        "sluice_slow_consumer_disconnects_total",
        disconnects_before + 1.0,
        Duration::from_secs(30),
    )
    .await;
    let (deltas, close) = slow.deltas_until_close(Duration::from_secs(10)).await;
    let seen = seqs(&deltas);
    assert_eq!(close, Some(4008), "the slow consumer's close code");
    let last = seen.last().copied().unwrap_or(0);
    assert!(
        last < total,
        "the client was cut off before the end (saw up to {last})"
    );
    assert_consecutive(&seen, 1, last, "frames received before the 4008");

    let epoch = engine.await.expect("the engine finished");
    assert_eq!(
        node.metric("sluice_slow_consumer_disconnects_total").await,
        Some(disconnects_before + 1.0),
        "exactly one slow-consumer disconnect"
    );
    node.wait_sessions(0, Duration::from_secs(10)).await;
    assert!(
        !node.node().state.hub.has_subscribers(topic),
        "the cut-off session left the hub"
    );

    // Resume on a new connection from the next seq: everything missed, once, in order.
    let mut again = node.client().await;
    let ack = again
        .subscribe(json!({"topic": topic, "resume_from_seq": last + 1, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], total, "{ack}");
    let mut resumed: Vec<u64> = Vec::new();
    while resumed.last() != Some(&total) {
        let v = again
            .recv()
            .await
            .unwrap_or_else(|e| panic!("resumed up to {:?}: {e}", resumed.last()));
        if v["type"] == "delta" {
            assert_eq!(v["payload"]["i"], v["seq"], "payload matches its seq");
            resumed.push(v["seq"].as_u64().expect("seq"));
        }
    }
    assert_consecutive(&resumed, last + 1, total, "the resumed connection");
    // Nothing after the last message: the next frame is a sentinel published now.
    let broker: Arc<dyn Broker> = node.node().state.broker.clone();
    publish_to(&*broker, topic, r#"{"sentinel":true}"#, None).await;
    again.expect_sentinel(topic, total + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_4008_and_resumes_losslessly_embedded() {
    let node = start_node(|c| {
        c.queue_size = 16;
        c.history_size = 10_000;
    })
    .await;
    slow_consumer_is_cut_off_and_resumes_losslessly(node, "prices.SLOWMEM", 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_4008_and_resumes_losslessly_redis() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| {
        c.queue_size = 16;
        c.history_size = 20_000;
    })
    .await;
    slow_consumer_is_cut_off_and_resumes_losslessly(node, "prices.SLOWREDIS", 12_000).await;
}

/// Reads one text frame (skipping pings, pongs and heartbeats) as JSON; a binary
/// frame fails the test.
async fn next_text(c: &mut WsClient) -> Value {
    let (binary, v) = next_data(c).await;
    assert!(!binary, "unexpected binary frame: {v}");
    v
}

#[tokio::test]
async fn batch_size_sends_arrays_for_a_backlog_and_a_lone_message_as_an_object() {
    let node = start_node(|_| {}).await;
    let topic = "prices.BATCH";
    let mut epoch = String::new();
    for i in 1..=35u64 {
        let (seq, e) = node
            .publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
            .await;
        assert_eq!(seq, i);
        epoch = e;
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 1, "epoch": epoch, "batch_size": 10}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");

    // The backlog: arrays of at most 10 envelopes, as few frames as possible, covering
    // exactly 1..=35 in order.
    let mut frames: Vec<Vec<Value>> = Vec::new();
    while frames.iter().map(Vec::len).sum::<usize>() < 35 {
        let v = next_text(&mut c).await;
        let arr = v
            .as_array()
            .unwrap_or_else(|| panic!("a backlog frame is a JSON array, got {v}"))
            .clone();
        frames.push(arr);
    }
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|n| (2..=10).contains(n)), "{sizes:?}");
    assert_eq!(frames.len(), 4, "35 envelopes in batches of 10: {sizes:?}");
    let all: Vec<Value> = frames.into_iter().flatten().collect();
    for e in &all {
        assert_eq!(e["type"], "delta", "{e}");
        assert_eq!(e["topic"], topic, "{e}");
        assert_eq!(e["payload"]["i"], e["seq"], "{e}");
    }
    assert_eq!(seqs(&all), (1..=35).collect::<Vec<u64>>());

    // A lone live message is not held back to fill a batch, nor wrapped.
    let sent = Instant::now();
    node.publish_direct(topic, r#"{"i":36}"#, None).await;
    let lone = next_text(&mut c).await;
    assert!(
        lone.is_object(),
        "a lone message is a plain envelope: {lone}"
    );
    assert_eq!(lone["seq"], 36, "{lone}");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "the lone message was held back for {:?}",
        sent.elapsed()
    );
    // Other frames stay plain objects too.
    c.ping_pong("after-batches").await;

    // A subscriber without batch_size gets the same backlog one envelope per frame.
    let mut plain = node.client().await;
    plain
        .subscribe(json!({"topic": topic, "resume_from_seq": 1, "epoch": epoch}))
        .await;
    for want in 1..=36u64 {
        let v = next_text(&mut plain).await;
        assert!(v.is_object(), "{v}");
        assert_eq!(v["seq"], want, "{v}");
    }
}

/// Reads publications (skipping acks) until one with `seq >= last`; returns them and
/// when each arrived.
async fn pubs_until(c: &mut WsClient, last: u64) -> Vec<(Value, Instant)> {
    let mut out: Vec<(Value, Instant)> = Vec::new();
    loop {
        let v = next_text(c).await;
        assert!(v.is_object(), "{v}");
        if v["type"] == "delta" {
            let seq = v["seq"].as_u64().expect("seq");
            out.push((v, Instant::now()));
            if seq >= last {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn the_mobile_route_starts_in_background_mode_and_conflates_bursts() {
    // `mobile.u1` is private: the phone and the desk both connect as u1.
    let node = hs_node(|c| c.conflate = Duration::from_millis(300)).await;
    let token = token_for("u1");
    let topic = "mobile.u1";
    let mut phone = WsClient::connect(&node.ws_url(&format!("/ws/mobile/u1?token={token}")))
        .await
        .expect("connects");
    let ack = phone.recv().await.expect("ack of the route's topic");
    assert_eq!(ack["topic"], topic, "{ack}");
    let mut desk = WsClient::connect(&node.ws_url(&format!("/ws?token={token}")))
        .await
        .expect("desk connects");
    desk.subscribe(json!({"topic": topic})).await;

    // A burst of 50: the phone gets at most a few frames, the last being the newest.
    for i in 1..=50u64 {
        node.publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
            .await;
    }
    let got = pubs_until(&mut phone, 50).await;
    let got_seqs: Vec<u64> = got
        .iter()
        .map(|(v, _)| v["seq"].as_u64().expect("seq"))
        .collect();
    assert!(got.len() <= 3, "50 publications gave {got_seqs:?}");
    assert!(
        got_seqs.windows(2).all(|w| w[0] < w[1]),
        "newer each time: {got_seqs:?}"
    );
    let newest = &got.last().expect("one frame").0;
    assert_eq!(newest["seq"], 50);
    assert_eq!(newest["payload"], json!({"i": 50}), "the newest state");
    // A foreground subscriber of the same topic got all 50.
    assert_eq!(
        seqs(&desk.recv_pubs(50).await),
        (1..=50).collect::<Vec<u64>>()
    );
    // Nothing new, nothing sent: the phone's next frame is the next message, not a
    // repeat of the conflated 50.
    node.publish_direct(topic, r#"{"i":51}"#, None).await;
    phone.expect_sentinel(topic, 51).await;
    assert_eq!(seqs(&desk.recv_pubs(1).await), [51]);

    // A steady stream over ~1.2 s: about one frame per 300 ms, not one per message.
    let start = Instant::now();
    for i in 52..=91u64 {
        node.publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
            .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let elapsed = start.elapsed();
    let got = pubs_until(&mut phone, 91).await;
    let max = (elapsed.as_millis() / 300) as usize + 3;
    assert!(
        got.len() <= max,
        "{} frames for 40 messages over {elapsed:?} (at most {max})",
        got.len()
    );
    assert!(
        got.len() >= 2,
        "conflated frames keep coming while it streams"
    );
}

#[tokio::test]
async fn leaving_background_mode_delivers_everything_since_the_last_frame_then_full_rate() {
    // A long interval, so the switch below surely happens between two ticks.
    let node = start_node(|c| c.conflate = Duration::from_millis(1500)).await;
    let topic = "prices.BG";
    let mut c = node.client().await;
    c.send_json(json!({"type": "background_mode", "enabled": true, "correlation_id": "on"}))
        .await;
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["correlation_id"], "on", "{ack}");
    assert_eq!(ack["payload"]["background_mode"], true, "{ack}");
    c.subscribe(json!({"topic": topic})).await;

    for i in 1..=20u64 {
        node.publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
            .await;
    }
    let first = pubs_until(&mut c, 20).await;
    assert!(first.len() <= 2, "{} frames for a burst of 20", first.len());
    assert_eq!(first.last().expect("a frame").0["seq"], 20);

    // Right after a tick: publish more, then switch back to the full stream.
    for i in 21..=40u64 {
        node.publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
            .await;
    }
    c.send_json(json!({"type": "background_mode", "enabled": false, "correlation_id": "off"}))
        .await;
    let mut caught_up: Vec<Value> = Vec::new();
    loop {
        let v = next_text(&mut c).await;
        if v["type"] == "ack" {
            assert_eq!(v["correlation_id"], "off", "{v}");
            assert_eq!(v["payload"]["background_mode"], false, "{v}");
            break;
        }
        assert_eq!(v["type"], "delta", "{v}");
        caught_up.push(v);
    }
    // Every message after the last conflated one, once, in order, with its own payload.
    assert_eq!(seqs(&caught_up), (21..=40).collect::<Vec<u64>>());
    for e in &caught_up {
        assert_eq!(e["payload"]["i"], e["seq"], "{e}");
    }

    // Live is full-rate again: each message in its own frame (conflation would have
    // dropped all but the newest), then the sentinel 61 and nothing between.
    for i in 41..=60u64 {
        node.publish_direct(topic, &format!(r#"{{"i":{i}}}"#), None)
            .await;
    }
    let live = c.recv_pubs(20).await;
    assert_eq!(seqs(&live), (41..=60).collect::<Vec<u64>>());
    node.publish_direct(topic, r#"{"i":61}"#, None).await;
    c.expect_sentinel(topic, 61).await;
}

fn gunzip(b: &[u8]) -> String {
    assert_eq!(&b[..2], &[0x1f, 0x8b], "gzip magic");
    let mut s = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut s)
        .expect("valid gzip of UTF-8 text");
    s
}

/// The next data frame: `(was_binary, JSON)`; binary frames are gunzipped.
async fn next_data(c: &mut WsClient) -> (bool, Value) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), c.inner().next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("frame");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] != "heartbeat" {
                    return (false, v);
                }
            }
            Message::Binary(b) => {
                let text = gunzip(&b);
                assert!(
                    b.len() < text.len(),
                    "compressed {} >= plain {}",
                    b.len(),
                    text.len()
                );
                return (true, serde_json::from_str(&text).expect("gunzipped JSON"));
            }
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn compressed_subscriptions_get_large_envelopes_as_gzip_that_decode_to_the_same_json() {
    let node = start_node(|_| {}).await;
    let topic = "prices.GZ";
    let mut zipped = node.client().await;
    zipped
        .subscribe(json!({"topic": topic, "compression": true}))
        .await;
    let mut plain = node.client().await;
    plain.subscribe(json!({"topic": topic})).await;

    let big = json!({"kind": "book", "levels": "0123456789abcdef".repeat(128)});
    let small = json!({"kind": "tick", "bid": 99.5});
    let edge = json!({"pad": "e".repeat(960)}); // the envelope is just over 1 KiB
    let (_, epoch) = node.publish(topic, big.clone()).await;
    node.publish(topic, small.clone()).await;
    node.publish(topic, edge.clone()).await;

    for (what, payload) in [
        ("large", &big),
        ("small", &small),
        ("just over 1 KiB", &edge),
    ] {
        let (z_binary, z) = next_data(&mut zipped).await;
        let (p_binary, p) = next_data(&mut plain).await;
        assert!(!p_binary, "{what}: no compression unless asked");
        assert_eq!(z, p, "{what}: the same envelope either way");
        assert_eq!(&p["payload"], payload, "{what}");
        let text_len = p.to_string().len();
        assert_eq!(
            z_binary,
            text_len > 1024,
            "{what}: envelope of ~{text_len} bytes: binary gzip iff over 1 KiB"
        );
    }
    // Acks, pongs and errors stay text.
    zipped.ping_pong("text").await;

    // With batching too: the backlog array is compressed as a whole.
    let mut both = node.client().await;
    both.subscribe(
        json!({"topic": topic, "resume_from_seq": 1, "epoch": epoch, "batch_size": 10, "compression": true}),
    )
    .await;
    let (binary, arr) = next_data(&mut both).await;
    assert!(binary, "a backlog over 1 KiB is one gzip frame");
    let arr = arr.as_array().expect("an array of envelopes").clone();
    assert_eq!(seqs(&arr), [1, 2, 3]);
    assert_eq!(arr[0]["payload"], big);
    assert_eq!(arr[1]["payload"], small);
}
