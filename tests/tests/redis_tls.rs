//! `rediss://`: a node and the `Publisher` against a Redis that speaks only TLS
//! (a `redis-server` on loopback with certificates made for this run), trusting
//! the test CA (`SLUICE_REDIS_TLS_CA`, the node's `redis.tls_ca`).

use std::{sync::OnceLock, time::Duration};

use serde_json::json;
use sluice_common::{
    publisher::{PublishError, Publisher},
    redis_client::{RedisSettings, Replicas},
};
use sluice_tests::{
    redis_topology::{TestCerts, TlsRedis},
    seqs, start_node, TestNode,
};

/// A TLS Redis per test (stopped with it), all signed by one CA made once for
/// this test binary.
fn redis() -> TlsRedis {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    TlsRedis::with_certs(CERTS.get_or_init(|| TestCerts::make("tls")).clone())
}

/// A node on `redis`, trusting its CA (`SLUICE_REDIS_TLS_CA`).
async fn tls_node(redis: &TlsRedis) -> TestNode {
    let (url, ca) = (redis.url(), redis.certs.ca.clone());
    start_node(move |c| {
        c.redis_url = Some(url);
        c.redis.tls_ca = Some(ca);
    })
    .await
}

fn settings(ca: &std::path::Path) -> RedisSettings {
    RedisSettings {
        tls_ca: Some(ca.to_path_buf()),
        replicas: Replicas::Auto,
        replica_timeout: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_and_resume_work_over_tls() {
    let redis = &redis();
    let url = redis.url();
    let node = tls_node(redis).await;
    let (_, health) = node.get_json("/health", None).await;
    assert_eq!(health["redis_connected"], true, "{health}");

    let mut live = node.client().await;
    let ack = live.subscribe(json!({ "topic": "prices.TLS1" })).await;
    assert_eq!(ack["payload"]["head_seq"], 0);

    // Through the node's HTTP publish and through the engines' Publisher.
    let engine = Publisher::connect_with(&url, 1, &settings(&redis.certs.ca))
        .await
        .expect("publisher over TLS");
    let mut epoch = String::new();
    for i in 1..=10u64 {
        let (seq, e) = if i % 2 == 0 {
            node.publish("prices.TLS1", json!({ "i": i })).await
        } else {
            let p = engine
                .publish("prices.TLS1", &json!({ "i": i }))
                .await
                .expect("publish over TLS");
            (p.seq, p.epoch)
        };
        assert_eq!(seq, i);
        epoch = e;
    }
    let got = live.recv_pubs(10).await;
    assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
    assert!(got
        .iter()
        .enumerate()
        .all(|(n, p)| p["payload"]["i"] == n as u64 + 1));

    // A second node over TLS serves the resume from Redis' history.
    let other = tls_node(redis).await;
    let mut resumed = other.client().await;
    let ack = resumed
        .subscribe(json!({ "topic": "prices.TLS1", "resume_from_seq": 4, "epoch": epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let replay = resumed.recv_pubs(7).await;
    assert_eq!(seqs(&replay), (4..=10).collect::<Vec<_>>());
    assert!(resumed
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_with_a_tls_error() {
    let redis = &redis();
    let stranger = TestCerts::make("stranger");
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        Publisher::connect_with(&redis.url(), 1, &settings(&stranger.ca)),
    )
    .await
    .expect("fails within 10 s")
    .expect_err("an unknown CA must not be trusted");
    let text = err.to_string();
    assert!(
        matches!(err, PublishError::Redis(_) | PublishError::Config(_)),
        "{err:?}"
    );
    assert!(
        text.to_lowercase().contains("certificate") || text.to_lowercase().contains("tls"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_rediss_url_never_shows_in_an_error() {
    let redis = &redis();
    let url = format!(
        "rediss://user:tls-hunter2-secret@127.0.0.1:{}",
        redis.server.port
    );
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        Publisher::connect_with(&url, 1, &settings(&redis.certs.ca)),
    )
    .await
    .expect("fails within 10 s")
    .expect_err("Redis has no such user");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("tls-hunter2-secret"), "{text}");
}
