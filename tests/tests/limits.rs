//! Limits on what a connection sends, with real clients, each with its error and
//! metric: inbound frames per connection (RATE_LIMIT_EXCEEDED, then 4029),
//! subscribes per topic class (the configured table and the default one),
//! subscriptions per connection, and oversized frames (1009). Who may connect at
//! all (connection caps, Origins) is in `limits_admission.rs`.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey, SubscribeLimits};
use sluice_tests::{
    security::{connect_bearer, mint, now, read_until_close, Signer},
    start_node, Closed, WsClient,
};
use tokio_tungstenite::tungstenite::Message;

const RATE_LIMITED: &str = "sluice_rate_limited_total";

#[tokio::test]
async fn a_ping_flood_gets_rate_limit_exceeded_then_4029() {
    let node = start_node(|c| {
        c.message_rate = 1;
        c.message_burst = 5;
        c.rate_limit_strikes = 3;
    })
    .await;
    let mut calm = node.client().await;
    let mut flood = node.client().await;

    // 12 pings in one write, faster than one per second: 5 fit the burst, the next
    // two are refused, the third refusal is the last strike. The rest are never read.
    for i in 0..12 {
        let ping = json!({"type": "ping", "correlation_id": i}).to_string();
        flood.inner().feed(Message::text(ping)).await.expect("feed");
    }
    flood.inner().flush().await.expect("flush");
    let (frames, close) = read_until_close(&mut flood, Duration::from_secs(10)).await;
    assert_eq!(close, Closed::Code(4029), "frames: {frames:?}");
    let kinds: Vec<(String, Value)> = frames
        .iter()
        .map(|f| {
            let kind = match f["type"].as_str() {
                Some("error") => f["code"].as_str().unwrap_or_default().to_owned(),
                other => other.unwrap_or_default().to_owned(),
            };
            (kind, f["correlation_id"].clone())
        })
        .collect();
    let pong = |i: u64| ("pong".to_owned(), json!(i));
    let limited = ("RATE_LIMIT_EXCEEDED".to_owned(), Value::Null);
    assert_eq!(
        kinds,
        [
            pong(0),
            pong(1),
            pong(2),
            pong(3),
            pong(4),
            limited.clone(),
            limited
        ],
        "{frames:?}"
    );
    assert_eq!(frames[5]["details"]["limit"], "1 per second, burst 5");
    // Two refusals and the closing strike.
    assert_eq!(node.metric(RATE_LIMITED).await, Some(3.0));

    // Another connection has its own bucket and is untouched.
    calm.ping_pong("calm").await;
    node.wait_sessions(1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refused_frame_alone_keeps_the_session_open() {
    let node = start_node(|c| {
        c.message_rate = 1;
        c.message_burst = 2;
        c.rate_limit_strikes = 3;
    })
    .await;
    let mut c = node.client().await;
    c.ping_pong("a").await;
    c.ping_pong("b").await;
    c.send_json(json!({"type": "ping", "correlation_id": "c"}))
        .await;
    let err = c.recv().await.expect("error frame");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "RATE_LIMIT_EXCEEDED", "{err}");
    // The bucket refills at one frame per second; the session is still there.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.ping_pong("d").await;
    assert_eq!(node.metric(RATE_LIMITED).await, Some(1.0));
}

/// Subscribes to every topic in one frame; returns one answer per topic, in order.
async fn subscribe_all(c: &mut WsClient, topics: &[String]) -> Vec<Value> {
    c.send_json(json!({"type": "subscribe", "topics": topics}))
        .await;
    let mut out = Vec::with_capacity(topics.len());
    while out.len() < topics.len() {
        out.push(
            c.recv()
                .await
                .unwrap_or_else(|e| panic!("answer {} of {}: {e}", out.len(), topics.len())),
        );
    }
    out
}

/// The private families (`risk`, `trading`, `mobile`…) need an identity (SPEC §3):
/// the subscribe-table tests connect with an admin token, which may read them all.
const ADMIN_SECRET: &str = "limits-test-hs256-secret-32-bytes-long";

async fn admin_node(tweak: impl FnOnce(&mut sluice_node::Config)) -> sluice_tests::TestNode {
    start_node(|c| {
        c.jwt_key = Some(JwtKey::Secret(ADMIN_SECRET.into()));
        c.auth = AuthMode::Required;
        tweak(c);
    })
    .await
}

async fn admin_client(node: &sluice_tests::TestNode) -> WsClient {
    let token = mint(
        &json!({"sub": "ops", "admin": true, "exp": now() + 600}),
        &Signer::hs256(ADMIN_SECRET),
    );
    connect_bearer(&node.ws_url("/ws"), &token)
        .await
        .unwrap_or_else(|e| panic!("admin connects: {e:?}"))
}

#[tokio::test]
async fn subscribe_limits_apply_per_topic_class() {
    let node = admin_node(|c| {
        c.subscribe_limits = SubscribeLimits::parse("risk=2/1").expect("valid limits");
    })
    .await;
    let mut c = admin_client(&node).await;
    for t in ["risk.u1", "risk.u2"] {
        let ack = c.subscribe(json!({"topic": t})).await;
        assert_eq!(ack["topic"], t);
    }
    c.send_json(json!({"type": "subscribe", "topic": "risk.u3", "correlation_id": "third"}))
        .await;
    let err = c.recv().await.expect("answer");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "RATE_LIMIT_EXCEEDED", "{err}");
    assert_eq!(err["details"]["topic"], "risk.u3", "{err}");
    assert_eq!(err["details"]["limit"], "1 per minute", "{err}");
    assert_eq!(err["correlation_id"], "third", "{err}");
    // Other classes have their own budgets.
    for t in [
        "prices.IN1",
        "market_data.AAPL",
        "trading.u1",
        "auctions.A1",
    ] {
        let ack = c.subscribe(json!({"topic": t})).await;
        assert_eq!(ack["topic"], t);
    }
    // A refused topic was not subscribed; the allowed ones were.
    node.publish("risk.u3", json!({"no": 1})).await;
    node.publish("risk.u1", json!({"yes": 1})).await;
    let got = c.recv_pubs(1).await;
    assert_eq!(got[0]["topic"], "risk.u1", "{}", got[0]);
    assert_eq!(node.metric(RATE_LIMITED).await, Some(1.0));
    // The budget is per connection.
    let mut other = admin_client(&node).await;
    other.subscribe(json!({"topic": "risk.u3"})).await;
}

/// A topic class: its name, how to name its n-th topic, burst, refill per minute.
type ClassLimit = (&'static str, fn(usize) -> String, usize, u32);

#[tokio::test]
async fn the_default_subscribe_table_is_in_force() {
    // Room for the market class's burst + 1 on one connection.
    let node = admin_node(|c| c.max_subscriptions = 2000).await;
    // (class, how to name its n-th topic, burst, per minute); trading and portfolio
    // share one budget.
    let table: [ClassLimit; 5] = [
        ("market", |i| format!("prices.IN{i}"), 1000, 100),
        ("auctions", |i| format!("auctions.A{i}"), 500, 50),
        (
            "trading",
            |i| {
                if i % 2 == 0 {
                    format!("trading.u{i}")
                } else {
                    format!("portfolio.u{i}")
                }
            },
            200,
            20,
        ),
        ("risk", |i| format!("risk.u{i}"), 100, 10),
        ("mobile", |i| format!("mobile.u{i}"), 300, 30),
    ];
    for (class, name, burst, per_minute) in table {
        let mut c = admin_client(&node).await;
        let topics: Vec<String> = (0..=burst).map(name).collect();
        let answers = subscribe_all(&mut c, &topics).await;
        for (i, a) in answers[..burst].iter().enumerate() {
            assert_eq!(a["type"], "ack", "{class}: subscribe #{} {a}", i + 1);
        }
        let last = &answers[burst];
        assert_eq!(
            last["code"],
            "RATE_LIMIT_EXCEEDED",
            "{class}: #{}: {last}",
            burst + 1
        );
        assert_eq!(last["details"]["topic"], topics[burst].as_str(), "{last}");
        assert_eq!(
            last["details"]["limit"],
            format!("{per_minute} per minute"),
            "{last}"
        );
        c.close().await;
    }
    assert_eq!(node.metric(RATE_LIMITED).await, Some(5.0));
}

#[tokio::test]
async fn subscriptions_per_connection_stop_at_max_subscriptions() {
    let node = start_node(|c| c.max_subscriptions = 3).await;
    let mut c = node.client().await;
    for t in ["s.a", "s.b", "s.c"] {
        c.subscribe(json!({"topic": t})).await;
    }
    c.send_json(json!({"type": "subscribe", "topic": "s.d", "correlation_id": 4}))
        .await;
    let err = c.recv().await.expect("answer");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "TOO_MANY_SUBSCRIPTIONS", "{err}");
    assert_eq!(err["details"]["topic"], "s.d", "{err}");
    assert_eq!(err["details"]["limit"], 3, "{err}");
    assert_eq!(err["correlation_id"], 4, "{err}");
    // Subscribing again to a topic it already has is not a new subscription.
    c.subscribe(json!({"topic": "s.a"})).await;
    // Freeing a slot makes room.
    c.send_json(json!({"type": "unsubscribe", "topic": "s.b"}))
        .await;
    let ack = c.recv().await.expect("unsubscribe ack");
    assert_eq!(ack["payload"]["unsubscribed"], true, "{ack}");
    let ack = c.subscribe(json!({"topic": "s.d"})).await;
    assert_eq!(ack["topic"], "s.d");
    let (seq, _) = node.publish("s.d", json!({"n": 1})).await;
    assert_eq!(c.recv_pubs(1).await[0]["seq"], seq);
}

#[tokio::test]
async fn a_frame_over_max_message_bytes_closes_with_1009() {
    let node = start_node(|c| c.max_message_bytes = 1024).await;
    let mut ok = node.client().await;
    let pad = "x".repeat(900);
    ok.send_json(json!({"type": "ping", "correlation_id": "fits", "pad": pad}))
        .await;
    assert_eq!(ok.recv().await.expect("pong")["correlation_id"], "fits");

    let mut big = node.client().await;
    big.send_text(&format!(
        r#"{{"type":"ping","correlation_id":"big","pad":"{}"}}"#,
        "y".repeat(2000)
    ))
    .await;
    let (frames, close) = read_until_close(&mut big, Duration::from_secs(10)).await;
    assert_eq!(close, Closed::Code(1009), "frames: {frames:?}");
    // Exactly one frame before the close: the error that says why.
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error", "{frames:?}");
    assert_eq!(frames[0]["code"], "MESSAGE_TOO_LARGE", "{frames:?}");
    assert!(
        !frames.iter().any(|f| f["type"] == "pong"),
        "the oversized ping was not answered"
    );
    ok.ping_pong("still-open").await;
    node.wait_sessions(1, Duration::from_secs(5)).await;
}
