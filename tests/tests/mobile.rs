//! Mobile clients at the upgrade: `x-background-mode` starts any route conflated
//! (and `false` starts `/ws/mobile/{user}` in the foreground); `x-device-type` and
//! `x-client-version` appear in `/connections`, sanitized and bounded; a bad
//! `x-background-mode` is refused with 400 before anything is upgraded.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey};
use sluice_tests::{
    security::{assert_refused, connect_with, mint, now, Signer},
    seqs, start_node, TestNode, WsClient, ADMIN_TOKEN,
};

const SECRET: &str = "mobile-tests-hs256-secret-of-32-bytes-or-more";
/// Conflation period: long enough that a burst published at once always lands in
/// one or two conflation ticks, never five.
const CONFLATE: Duration = Duration::from_secs(2);

async fn node(auth: bool) -> TestNode {
    start_node(|c| {
        c.conflate = CONFLATE;
        if auth {
            c.jwt_key = Some(JwtKey::Secret(SECRET.into()));
            c.auth = AuthMode::Required;
        }
    })
    .await
}

/// Connects with headers and reads the alias route's subscribe ack.
async fn connect_acked(url: &str, headers: &[(&str, &str)], topic: &str) -> WsClient {
    let mut c = connect_with(url, headers).await.expect("upgrade accepted");
    let ack = c.recv().await.expect("the route's ack");
    assert_eq!(
        (&ack["type"], &ack["topic"]),
        (&json!("ack"), &json!(topic)),
        "{ack}"
    );
    c
}

/// Publishes seqs 1..=5 of `topic` at once; returns what `c` receives up to seq 5.
async fn burst_seen_by(
    node: &TestNode,
    clients: &mut [&mut WsClient],
    topic: &str,
) -> Vec<Vec<u64>> {
    for i in 1..=5 {
        node.publish_direct(topic, &format!("{{\"n\":{i}}}"), None)
            .await;
    }
    let mut out = Vec::new();
    for c in clients.iter_mut() {
        out.push(seqs(&c.recv_pubs_until(5).await));
    }
    out
}

fn assert_conflated(got: &[u64]) {
    assert!(
        !got.is_empty() && got.len() <= 2 && got.last() == Some(&5),
        "a background session gets the latest state, not every delta: {got:?}"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
}

#[tokio::test]
async fn background_mode_header_starts_any_route_conflated() {
    let node = node(false).await;
    let url = node.ws_url("/ws/market/MOB1");
    let mut bg = connect_acked(&url, &[("x-background-mode", "true")], "prices.MOB1").await;
    let mut fg = connect_acked(&url, &[("x-background-mode", "false")], "prices.MOB1").await;
    let mut plain = connect_acked(&url, &[], "prices.MOB1").await;
    let got = burst_seen_by(&node, &mut [&mut fg, &mut plain, &mut bg], "prices.MOB1").await;
    assert_eq!(got[0], vec![1, 2, 3, 4, 5]);
    assert_eq!(got[1], vec![1, 2, 3, 4, 5]);
    assert_conflated(&got[2]);

    // The client can still leave background mode by message.
    bg.send_json(json!({"type": "background_mode", "enabled": false}))
        .await;
    let ack = bg.recv().await.unwrap();
    assert_eq!(ack["payload"], json!({"background_mode": false}), "{ack}");
}

#[tokio::test]
async fn the_mobile_route_is_background_unless_the_header_says_false() {
    let node = node(true).await;
    let bob = mint(
        &json!({"sub": "bob", "exp": now() + 600}),
        &Signer::hs256(SECRET),
    );
    let alice = mint(
        &json!({"sub": "alice", "exp": now() + 600}),
        &Signer::hs256(SECRET),
    );
    let auth = format!("Bearer {bob}");
    let url = node.ws_url("/ws/mobile/bob");
    let mut default = connect_acked(&url, &[("authorization", &auth)], "mobile.bob").await;
    let mut fg = connect_acked(
        &url,
        &[("authorization", &auth), ("x-background-mode", "false")],
        "mobile.bob",
    )
    .await;
    let got = burst_seen_by(&node, &mut [&mut fg, &mut default], "mobile.bob").await;
    assert_eq!(got[0], vec![1, 2, 3, 4, 5]);
    assert_conflated(&got[1]);
    // The route is bob's private topic: alice is refused before the upgrade.
    let r = connect_with(&url, &[("authorization", &format!("Bearer {alice}"))]).await;
    assert_refused(r, 403, "FORBIDDEN", "alice on bob's mobile route");
}

#[tokio::test]
async fn device_headers_appear_in_connections_sanitized_and_bounded() {
    let node = node(false).await;
    let long = "9".repeat(300);
    let _a = connect_with(
        &node.ws_url("/ws"),
        &[
            ("x-device-type", "Android 14 <Pixel 8>\"; rm"),
            ("x-client-version", &long),
        ],
    )
    .await
    .unwrap();
    let _b = connect_with(&node.ws_url("/ws"), &[]).await.unwrap();
    let (status, v) = node.get_json("/connections", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    let mut seen: Vec<(Value, Value)> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["device_type"].clone(), c["client_version"].clone()))
        .collect();
    seen.sort_by_key(|(d, _)| d.to_string());
    assert_eq!(
        seen,
        vec![
            (json!("Android 14 Pixel 8 rm"), json!("9".repeat(64))),
            (Value::Null, Value::Null),
        ]
    );
}

#[tokio::test]
async fn a_bad_background_mode_header_is_refused_before_upgrading() {
    let node = node(false).await;
    for bad in ["yes please", "2", ""] {
        let r = connect_with(&node.ws_url("/ws"), &[("x-background-mode", bad)]).await;
        assert_refused(r, 400, "INVALID_MESSAGE", bad);
    }
    node.wait_sessions(0, Duration::from_secs(5)).await;
}
