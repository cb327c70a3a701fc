//! Who may connect, with real clients: connections per node (closed before the
//! request is read) and per IP (429), each until one closes and under a burst of
//! simultaneous upgrades, and the Origin allow-list for upgrades (403) with CORS on
//! the HTTP API.

use std::time::Duration;

use serde_json::json;
use sluice_node::config::{AuthMode, JwtKey};
use sluice_tests::{
    security::{assert_refused, connect_bearer, connect_with, fixture, mint, now, Signer},
    start_node,
};

const RATE_LIMITED: &str = "sluice_rate_limited_total";

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
