//! Alias routes of `/ws` (SPEC §3) subscribe to their topics on connect, also under
//! `/api/v1`; a path that makes an invalid topic is refused before the upgrade.

use serde_json::json;
use sluice_tests::{
    auth::{hs_node, token_for},
    seqs, start_node, WsClient,
};

/// Each alias with the topics it must subscribe on connect.
const ALIASES: &[(&str, &[&str])] = &[
    ("/ws/stream", &[]),
    ("/ws/market/IN1", &["prices.IN1"]),
    ("/ws/auction/A7", &["auctions.A7"]),
    ("/ws/trading/u1", &["trading.u1", "portfolio.u1"]),
    ("/ws/risk/u1", &["risk.u1", "risk.u1.alerts"]),
    ("/ws/mobile/u1", &["mobile.u1"]),
    ("/ws/market-data/AAPL", &["market_data.AAPL"]),
];

#[tokio::test]
async fn alias_routes_subscribe_their_topics_on_connect() {
    // The private aliases need an identity (SPEC §3), so the node checks tokens.
    let node = hs_node(|_| {}).await;
    let token = token_for("u1");
    for prefix in ["", "/api/v1"] {
        for (path, topics) in ALIASES {
            let url = node.ws_url(&format!("{prefix}{path}?token={token}"));
            let ctx = format!("{prefix}{path}");
            let mut c = WsClient::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            // The acks arrive without any subscribe from the client, in route order.
            for topic in *topics {
                let ack = c.recv().await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(ack["type"], "ack", "{ctx}: {ack}");
                assert_eq!(ack["topic"], *topic, "{ctx}: {ack}");
                assert_eq!(ack["payload"]["subscribed"], true, "{ctx}: {ack}");
            }
            // Nothing else was subscribed: a ping is the very next answer.
            c.ping_pong(&ctx).await;
            // And each topic delivers live.
            for topic in *topics {
                let (seq, _) = node.publish(topic, json!({"via": ctx})).await;
                let p = c.recv_pubs(1).await;
                assert_eq!(p[0]["topic"], *topic, "{ctx}");
                assert_eq!(seqs(&p), [seq], "{ctx}");
            }
            c.close().await;
        }
    }
}

#[tokio::test]
async fn an_alias_connection_gets_the_snapshot_of_its_topic() {
    let node = start_node(|_| {}).await;
    node.publish_body(
        json!({"topic": "prices.SNAPX", "payload": {"d": 1}, "snapshot": {"px": 101}}),
    )
    .await;
    node.publish("prices.SNAPX", json!({"d": 2})).await;
    let mut c = WsClient::connect(&node.ws_url("/ws/market/SNAPX"))
        .await
        .expect("connect");
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["payload"]["head_seq"], 2, "{ack}");
    let pubs = c.recv_pubs(2).await;
    assert_eq!(pubs[0]["type"], "snapshot");
    assert_eq!(pubs[0]["payload"], json!({"px": 101}));
    assert_eq!(seqs(&pubs), [1, 2]);
}

#[tokio::test]
async fn an_alias_with_an_invalid_topic_segment_is_refused_with_400() {
    let node = start_node(|_| {}).await;
    for path in [
        "/ws/market/bad!isin",
        "/ws/market/has%20space",
        "/ws/trading/u%2F1",
        "/ws/risk/x*",
        "/api/v1/ws/market/bad!isin",
        "/api/v1/ws/auction/%C3%A9",
    ] {
        let got = WsClient::try_connect(&node.ws_url(path)).await;
        assert_eq!(got.err(), Some(400), "{path}");
    }
    // Nothing was upgraded.
    let (_, h) = node.get_json("/health", None).await;
    assert_eq!(h["connections_handled"], 0, "{h}");
    // The refusal is a JSON error naming the code.
    let resp = reqwest::Client::new()
        .get(node.http_url("/ws/market/bad!isin"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    let v: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(v["code"], "INVALID_TOPIC", "{v}");
    assert!(v["error"].is_string(), "{v}");
}
