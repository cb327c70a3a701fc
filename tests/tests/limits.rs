//! Limits with real clients, each with its error and metric: inbound frames per
//! connection (RATE_LIMIT_EXCEEDED, then 4029), subscribes per topic class (the
//! configured table and the default one), subscriptions per connection, connections
//! per node (503) and per IP (429), oversized frames (1009), and the Origin
//! allow-list for upgrades (403) with CORS on the HTTP API.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey, SubscribeLimits};
use sluice_tests::{
    security::{
        assert_refused, connect_bearer, connect_with, fixture, mint, now, read_until_close, Signer,
    },
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
async fn max_connections_closes_new_connections_until_one_closes() {
    // Every TCP connection holds a slot from its accept, so a full node closes the
    // next one before reading it: no HTTP status (0 here).
    let node = start_node(|c| c.max_connections = 2).await;
    let url = node.ws_url("/ws");
    let mut a = node.client().await;
    let b = node.client().await;
    assert_eq!(
        connect_with(&url, &[])
            .await
            .map(|_| ())
            .map_err(|r| r.status),
        Err(0),
        "third connection"
    );
    // Alias routes count against the same limit.
    assert_eq!(
        connect_with(&node.ws_url("/ws/market/IN1"), &[])
            .await
            .map(|_| ())
            .map_err(|r| r.status),
        Err(0)
    );
    b.close().await;
    node.wait_sessions(1, Duration::from_secs(5)).await;
    let mut c = connect_with(&url, &[])
        .await
        .expect("accepted again once one closed");
    a.ping_pong("a").await;
    c.ping_pong("c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_under_a_burst_of_simultaneous_upgrades() {
    // A reconnect storm: 60 upgrades at once against a cap of 3. The upgrades carry
    // RS256 tokens, as real clients would, so each one takes a moment to verify.
    let token = mint(
        &json!({"sub": "storm", "exp": now() + 600}),
        &Signer::Rs256(None),
    );
    let mut over = Vec::new();
    for round in 0..10 {
        let node = start_node(|c| {
            c.max_connections = 3;
            c.jwt_key = Some(JwtKey::PublicKeyFile(fixture("rsa_public.pem")));
            c.auth = AuthMode::Required;
        })
        .await;
        let url = node.ws_url("/ws");
        let attempts: Vec<_> = (0..60)
            .map(|_| {
                let (url, token) = (url.clone(), token.clone());
                tokio::spawn(async move { connect_bearer(&url, &token).await })
            })
            .collect();
        let mut open = Vec::new();
        for a in attempts {
            match a.await.expect("task") {
                Ok(c) => open.push(c),
                // Closed unanswered at accept: the node was full.
                Err(r) => assert_eq!(r.status, 0, "round {round}: {r:?}"),
            }
        }
        if open.len() != 3 {
            over.push((round, open.len()));
        }
        node.shutdown().await;
    }
    assert!(
        over.is_empty(),
        "(round, connections accepted) with SLUICE_MAX_CONNECTIONS=3: {over:?}"
    );
}

#[tokio::test]
async fn max_connections_per_ip_refuses_with_429_until_one_closes() {
    let node = start_node(|c| c.max_connections_per_ip = 2).await;
    let url = node.ws_url("/ws");
    let a = node.client().await;
    let mut b = node.client().await;
    let body = assert_refused(
        connect_with(&url, &[]).await,
        429,
        "RATE_LIMIT_EXCEEDED",
        "third connection from 127.0.0.1",
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("address")),
        "{body}"
    );
    assert_eq!(node.metric(RATE_LIMITED).await, Some(1.0));
    a.close().await;
    node.wait_sessions(1, Duration::from_secs(5)).await;
    let mut c = connect_with(&url, &[])
        .await
        .expect("accepted again once one closed");
    b.ping_pong("b").await;
    c.ping_pong("c").await;
    // Still capped at two.
    assert_eq!(
        connect_with(&url, &[])
            .await
            .map(|_| ())
            .map_err(|r| r.status),
        Err(429)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_holds_under_a_burst_of_simultaneous_upgrades() {
    let node = start_node(|c| c.max_connections_per_ip = 3).await;
    let url = node.ws_url("/ws");
    let attempts: Vec<_> = (0..60)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect_with(&url, &[]).await })
        })
        .collect();
    let mut open = Vec::new();
    for a in attempts {
        match a.await.expect("task") {
            Ok(c) => open.push(c),
            Err(r) => assert_eq!(r.status, 429, "{r:?}"),
        }
    }
    assert_eq!(open.len(), 3);
    assert_eq!(node.metric(RATE_LIMITED).await, Some(57.0));
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

#[tokio::test]
async fn only_allowed_origins_may_upgrade_and_the_http_api_answers_cors_for_them() {
    const GOOD: &str = "https://good.example";
    const EVIL: &str = "https://evil.example";
    let node = start_node(|c| c.allowed_origins = Some(vec![GOOD.into()])).await;
    let url = node.ws_url("/ws");

    let body = assert_refused(
        connect_with(&url, &[("origin", EVIL)]).await,
        403,
        "FORBIDDEN",
        "evil Origin",
    );
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Origin")),
        "{body}"
    );
    assert_refused(
        connect_with(&node.ws_url("/ws/market/IN1"), &[("origin", EVIL)]).await,
        403,
        "FORBIDDEN",
        "evil Origin on an alias route",
    );
    assert_refused(
        connect_with(&url, &[("origin", "https://good.example.evil.example")]).await,
        403,
        "FORBIDDEN",
        "a look-alike Origin",
    );
    assert_refused(
        connect_with(&url, &[("origin", "null")]).await,
        403,
        "FORBIDDEN",
        "Origin: null",
    );
    assert_eq!(node.node().state.sessions.len(), 0);
    let mut good = connect_with(&url, &[("origin", GOOD)])
        .await
        .expect("the allowed Origin upgrades");
    let mut none = connect_with(&url, &[])
        .await
        .expect("a client without Origin (not a browser) upgrades");
    good.ping_pong("good").await;
    none.ping_pong("none").await;

    // CORS on the HTTP API: a preflight from the allowed Origin is answered...
    let http = reqwest::Client::new();
    let pre = http
        .request(reqwest::Method::OPTIONS, node.http_url("/publish"))
        .header("origin", GOOD)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(pre.status().is_success(), "preflight: {}", pre.status());
    let h = pre.headers();
    assert_eq!(
        h.get("access-control-allow-origin").map(|v| v.as_bytes()),
        Some(GOOD.as_bytes()),
        "{h:?}"
    );
    let methods = h
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("POST") && methods.contains("GET"), "{h:?}");
    let allowed = h
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{h:?}"
    );
    // ...a plain request carries the header for it, and never for another Origin.
    let get = |origin: &'static str| {
        http.get(node.http_url("/health"))
            .header("origin", origin)
            .send()
    };
    let ok = get(GOOD).await.expect("GET /health");
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(GOOD.as_bytes())
    );
    let bad = get(EVIL).await.expect("GET /health");
    assert_eq!(bad.headers().get("access-control-allow-origin"), None);
    let pre_bad = http
        .request(reqwest::Method::OPTIONS, node.http_url("/publish"))
        .header("origin", EVIL)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre_bad.headers().get("access-control-allow-origin"), None);
}
