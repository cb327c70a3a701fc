//! Liveness: server heartbeats (a `heartbeat` frame plus a WebSocket ping) every
//! `heartbeat_interval`; a client silent for `connection_timeout` is closed; one that
//! keeps talking stays; a frame over `max_message_bytes` closes with 1009.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sluice_tests::{start_node, Closed, RawClient, RawFrame, WsClient};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn heartbeat_frames_and_websocket_pings_arrive_every_interval() {
    let node = start_node(|cfg| cfg.heartbeat_interval = Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let mut c = node.client().await;
    assert_eq!(
        c.connected["heartbeat_interval_ms"], 1000,
        "{}",
        c.connected
    );
    assert_eq!(c.connected["protocol"], 1, "{}", c.connected);
    assert!(c.connected["connection_id"].is_string(), "{}", c.connected);

    let mut beats = Vec::new();
    let mut pings = 0;
    while beats.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), c.inner().next())
            .await
            .unwrap_or_else(|_| panic!("no frame within 10 s (heartbeats so far {beats:?})"))
            .expect("stream open")
            .expect("frame");
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(v["type"], "heartbeat", "only heartbeats are due: {v}");
                assert!(v["ts"].is_string(), "{v}");
                beats.push(t0.elapsed());
            }
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // The interval is the behaviour. A timer cannot fire early, so the lower bounds
    // are exact (t0 is before the connection existed); a busy machine only delays,
    // so the upper bounds are 3× nominal: beat k at k s, no later than 3k s.
    assert!(
        beats[0] >= Duration::from_millis(1_000) && beats[0] <= Duration::from_secs(3),
        "first heartbeat after {:?}",
        beats[0]
    );
    assert!(
        beats[1] >= Duration::from_millis(2_000) && beats[1] <= Duration::from_secs(6),
        "second heartbeat after {:?}",
        beats[1]
    );
    assert!(pings >= 1, "a WebSocket ping goes with each heartbeat");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_connection_timeout_and_a_talking_one_stays() {
    let node = start_node(|cfg| {
        cfg.heartbeat_interval = Duration::from_secs(1);
        cfg.connection_timeout = Duration::from_secs(2);
    })
    .await;

    // The talker sends a protocol ping every 500 ms and reads every answer.
    let mut talker = node.client().await;
    let talker_task = tokio::spawn(async move {
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_millis(4_500) {
            talker.ping_pong(&format!("keepalive-{i}")).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        talker
    });

    // The silent client never reads, so it never answers the server's pings either.
    let t0 = Instant::now();
    let mut silent = RawClient::connect(node.addr, "/ws")
        .await
        .expect("raw connect");
    node.wait_sessions(1, Duration::from_secs(10)).await;
    let closed_after = t0.elapsed();
    // Never before the timeout; no later than 3× it.
    assert!(
        closed_after >= Duration::from_millis(2_000) && closed_after <= Duration::from_secs(6),
        "the silent client was dropped after {closed_after:?}, timeout is 2 s"
    );
    // What it was sent meanwhile: connected, a heartbeat + ping per second, then a close.
    let frames = silent
        .read_until_close(Duration::from_secs(1))
        .await
        .expect("a close frame");
    assert!(
        matches!(&frames[0], RawFrame::Text(t) if t.contains(r#""type":"connected""#)),
        "{frames:?}"
    );
    assert_eq!(
        frames.last(),
        Some(&RawFrame::Close(Some(1000))),
        "{frames:?}"
    );
    let pings = frames.iter().filter(|f| **f == RawFrame::Ping).count();
    // One ping per heartbeat while it was open (a late close means more of them).
    let most = closed_after.as_secs() + 1;
    assert!(
        (1..=most).contains(&(pings as u64)),
        "{pings} pings in {closed_after:?}: {frames:?}"
    );

    let mut talker = talker_task.await.expect("talker");
    // Past 4 s, twice the timeout, the talker is still served.
    talker.ping_pong("final").await;
    let (_, health) = node.get_json("/health", None).await;
    assert_eq!(health["active_connections"], 1, "{health}");
}

#[tokio::test]
async fn reading_alone_keeps_a_client_alive_because_it_answers_pings() {
    let node = start_node(|cfg| {
        cfg.heartbeat_interval = Duration::from_secs(1);
        cfg.connection_timeout = Duration::from_secs(2);
    })
    .await;
    let mut reader = node.client().await;
    let start = Instant::now();
    let mut beats = 0;
    // tungstenite answers each WebSocket ping with a pong while reading; those pongs
    // are the only client frames, and they must count as liveness.
    while start.elapsed() < Duration::from_millis(4_200) {
        let f = reader.recv_any().await.expect("still open");
        assert_eq!(f["type"], "heartbeat", "{f}");
        beats += 1;
    }
    // Staying open past twice the timeout is the behaviour; the heartbeats only have
    // to have flowed (a busy machine may delay some of the nominal four).
    assert!(beats >= 2, "{beats} heartbeats in 4.2 s");
    reader.ping_pong("after-4s").await;
}

#[tokio::test]
async fn a_frame_over_max_message_bytes_closes_with_1009() {
    let node = start_node(|cfg| cfg.max_message_bytes = 1024).await;

    // Just under the limit is fine.
    let mut ok = node.client().await;
    let pad = "x".repeat(900);
    ok.send_json(json!({"type": "ping", "correlation_id": "big-but-ok", "pad": pad}))
        .await;
    let pong = ok.recv().await.expect("pong");
    assert_eq!(pong["correlation_id"], "big-but-ok", "{pong}");

    // Just over the limit, the 2000 bytes of the contract, far over any read buffer,
    // and far over any internal cap: each is closed with 1009, and the client must
    // actually see that code (not a reset connection).
    for size in [1_100usize, 2_000, 16 * 1024, 256 * 1024] {
        let mut c = node.client().await;
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "y".repeat(size));
        c.send_text(&big).await;
        assert_eq!(
            c.expect_close().await,
            Closed::Code(1009),
            "text frame of {size} bytes"
        );
    }
    let mut binary = node.client().await;
    binary.send_message(Message::binary(vec![7u8; 2_000])).await;
    assert_eq!(
        binary.expect_close().await,
        Closed::Code(1009),
        "binary frame"
    );

    // The other session is untouched.
    ok.ping_pong("still-here").await;
    node.wait_sessions(1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_closing_normally_is_deregistered() {
    let node = start_node(|_| {}).await;
    let mut c = WsClient::connect(&node.ws_url("/ws"))
        .await
        .expect("connect");
    c.subscribe(json!({"topic": "bye.t"})).await;
    let (_, topics) = node
        .get_json("/topics", Some(sluice_tests::ADMIN_TOKEN))
        .await;
    assert_eq!(topics["topics"]["bye.t"]["subscriber_count"], 1, "{topics}");
    c.close().await;
    node.wait_sessions(0, Duration::from_secs(5)).await;
    let (_, topics) = node
        .get_json("/topics", Some(sluice_tests::ADMIN_TOKEN))
        .await;
    assert_eq!(topics["topic_count"], 0, "{topics}");
}
