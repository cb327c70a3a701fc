//! Graceful shutdown (what SIGTERM triggers): `/ready` turns 503 at once, new
//! upgrades are refused, every session is closed with 1012, spread over the drain
//! period, and the node stops within a bounded time.

use std::time::Duration;

use serde_json::json;
use sluice_tests::{seqs, start_node, Closed, WsClient};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_every_session_with_1012_and_refuses_new_ones() {
    const CLIENTS: usize = 4;
    // Session i closes at drain * i / n: the last one at 3 s. While it is open the
    // node is provably draining, which is the window the probes below run in.
    let drain = Duration::from_secs(4);
    let node = start_node(|cfg| cfg.drain = drain).await;
    let ws_url = node.ws_url("/ws");
    let ready_url = node.http_url("/ready");
    let health_url = node.http_url("/health");
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = node.client().await;
        c.subscribe(json!({"topic": format!("drain.{i}")})).await;
        clients.push(c);
    }
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(
        status(ready_url.clone()).await,
        200,
        "ready before the drain"
    );

    let started = Instant::now();
    let shutdown = tokio::spawn(node.shutdown());

    // Each client records when and how it was closed.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.expect_close().await;
                (code, started.elapsed())
            })
        })
        .collect();

    // /ready turns 503 while sessions are still being closed (readiness is the first
    // step of the drain, so it must happen before the last session is closed).
    let deadline = started + Duration::from_secs(10);
    loop {
        let s = status(ready_url.clone()).await;
        if s == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready still {s} 10 s into the drain"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let still_open = |readers: &[tokio::task::JoinHandle<(Closed, Duration)>]| {
        readers.iter().filter(|r| !r.is_finished()).count()
    };
    assert!(
        still_open(&readers) > 0,
        "/ready turned 503 only after every session was closed"
    );
    let (s, health) = {
        let r = http
            .get(&health_url)
            .send()
            .await
            .expect("health during drain");
        let s = r.status().as_u16();
        (s, r.json::<serde_json::Value>().await.expect("json"))
    };
    assert_eq!(s, 200, "/health answers while draining");
    assert_eq!(health["status"], "draining", "{health}");
    match WsClient::try_connect(&ws_url).await {
        Err(code) => assert_eq!(code, 503, "upgrade refused while draining"),
        Ok(_) => panic!("a new upgrade was accepted during the drain"),
    }
    assert_eq!(status(ready_url.clone()).await, 503, "still draining");
    assert!(
        still_open(&readers) > 0,
        "the probes did not run while the drain was still closing sessions"
    );

    let mut closes = Vec::new();
    for r in readers {
        closes.push(r.await.expect("reader"));
    }
    for (code, _) in &closes {
        assert_eq!(*code, Closed::Code(1012), "{closes:?}");
    }
    let last = closes.iter().map(|(_, t)| *t).max().expect("closes");
    // Spread: session i of n closes at drain * i / n, so the last at 3 s here. A close
    // is never early, so the lower bound is exact (less the timer's slack); the upper
    // bound, the drain finishing, is 3× nominal.
    let nominal_last = drain * (CLIENTS as u32 - 1) / CLIENTS as u32;
    assert!(
        last >= nominal_last - Duration::from_millis(100),
        "closes were not spread over the drain: {closes:?}"
    );
    assert!(last <= nominal_last * 3, "{closes:?}");

    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown returns within the grace period")
        .expect("shutdown task");
    assert!(started.elapsed() <= drain * 3, "{:?}", started.elapsed());
    // The port is closed afterwards.
    assert_eq!(WsClient::try_connect(&ws_url).await.err(), Some(0));
}

#[tokio::test]
async fn shutdown_without_a_drain_period_closes_every_session_at_once() {
    let node = start_node(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = node.client().await;
        c.subscribe(json!({"topic": "drain.now"})).await;
        clients.push(c);
    }
    node.publish("drain.now", json!(1)).await;
    for c in &mut clients {
        assert_eq!(seqs(&c.recv_pubs(1).await), [1]);
    }
    let t0 = Instant::now();
    node.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    for c in &mut clients {
        assert_eq!(c.expect_close().await, Closed::Code(1012));
    }
}

#[tokio::test]
async fn kill_drops_every_connection_without_a_close_frame() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    c.subscribe(json!({"topic": "kill.t"})).await;
    let url = node.ws_url("/ws");
    node.kill();
    // A crash: the TCP connection ends, no close frame is sent.
    assert_eq!(c.expect_close().await, Closed::NoFrame);
    assert_eq!(WsClient::try_connect(&url).await.err(), Some(0));
}
