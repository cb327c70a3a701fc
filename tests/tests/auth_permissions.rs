//! Topic permissions with real clients: a user reads only their own private topics,
//! by message or by route; the `topics` and `admin` claims; the admin HTTP API with
//! an admin JWT.

use serde_json::json;
use sluice_tests::{
    auth::{assert_ack, assert_forbidden, hs, hs_node, tampered, token_for, try_subscribe},
    security::{alg_none_token, assert_refused, connect_bearer, connect_query, mint, now, Signer},
    ADMIN_TOKEN,
};

#[tokio::test]
async fn alice_cannot_read_any_of_bobs_private_topics_by_message() {
    let node = hs_node(|_| {}).await;
    let mut alice = connect_query(&node.ws_url("/ws"), &token_for("alice"))
        .await
        .expect("alice connects");
    for topic in [
        "trading.bob",
        "trading.bob.orders",
        "portfolio.bob",
        "risk.bob",
        "risk.bob.alerts",
        "mobile.bob",
        // A family root or a look-alike user name is not alice's either.
        "trading",
        "risk.alicex",
        "portfolio.Alice",
    ] {
        let answer = try_subscribe(&mut alice, topic).await;
        assert_forbidden(&answer, topic);
        // The session stays open after each refusal.
        alice.ping_pong(topic).await;
    }
    // A list mixing allowed and refused topics: the acks in order, then one error
    // for the refused ones.
    alice
        .send_json(
            json!({"type": "subscribe", "topics": ["prices.IN1", "trading.bob", "trading.alice"]}),
        )
        .await;
    let answers = [
        alice.recv().await.expect("a1"),
        alice.recv().await.expect("a2"),
        alice.recv().await.expect("a3"),
    ];
    assert_ack(&answers[0], "prices.IN1");
    assert_ack(&answers[1], "trading.alice");
    assert_eq!(answers[2]["code"], "FORBIDDEN", "{}", answers[2]);
    assert_eq!(answers[2]["details"]["topic"], "trading.bob");
    assert_eq!(answers[2]["details"]["refused"], 1);
    for own in [
        "portfolio.alice",
        "risk.alice",
        "risk.alice.alerts",
        "mobile.alice",
    ] {
        assert_ack(&try_subscribe(&mut alice, own).await, own);
    }

    // A refused subscribe really subscribed nothing: bob's messages never reach alice.
    node.publish("trading.bob", json!({"secret": 1})).await;
    node.publish("risk.bob.alerts", json!({"secret": 2})).await;
    node.publish("trading.alice", json!({"mine": 1})).await;
    let got = alice.recv_pubs(1).await;
    assert_eq!(got[0]["topic"], "trading.alice", "{}", got[0]);
    assert_eq!(got[0]["payload"], json!({"mine": 1}));
    // And nothing after it either: the next frame is the sentinel.
    node.publish("trading.alice", json!({"mine": 2})).await;
    alice.expect_sentinel("trading.alice", 2).await;
    let (_, conns) = node.get_json("/connections", Some(ADMIN_TOKEN)).await;
    let mut subs: Vec<String> = conns["connections"][0]["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|t| t.as_str().expect("topic").to_owned())
        .collect();
    subs.sort();
    assert_eq!(
        subs,
        [
            "mobile.alice",
            "portfolio.alice",
            "prices.IN1",
            "risk.alice",
            "risk.alice.alerts",
            "trading.alice"
        ]
    );
}

#[tokio::test]
async fn alice_cannot_read_bobs_private_topics_by_route() {
    let node = hs_node(|_| {}).await;
    let alice = token_for("alice");
    for path in [
        "/ws/trading/bob",
        "/ws/risk/bob",
        "/ws/mobile/bob",
        "/api/v1/ws/trading/bob",
        "/api/v1/ws/risk/bob",
        "/api/v1/ws/mobile/bob",
    ] {
        let body = assert_refused(
            connect_query(&node.ws_url(path), &alice).await,
            403,
            "FORBIDDEN",
            path,
        );
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("bob")),
            "{path}: the refusal names the topic: {body}"
        );
        // The same through the header.
        assert_refused(
            connect_bearer(&node.ws_url(path), &alice).await,
            403,
            "FORBIDDEN",
            path,
        );
    }
    assert_eq!(node.node().state.sessions.len(), 0);

    // Her own routes work and subscribe her on connect.
    let mut own = connect_query(&node.ws_url("/ws/trading/alice"), &alice)
        .await
        .expect("alice's own trading route");
    assert_ack(&own.recv().await.expect("ack 1"), "trading.alice");
    assert_ack(&own.recv().await.expect("ack 2"), "portfolio.alice");
    let mut risk = connect_bearer(&node.ws_url("/api/v1/ws/risk/alice"), &alice)
        .await
        .expect("alice's own risk route");
    assert_ack(&risk.recv().await.expect("ack 1"), "risk.alice");
    assert_ack(&risk.recv().await.expect("ack 2"), "risk.alice.alerts");
}

#[tokio::test]
async fn a_topics_claim_restricts_public_topics_but_not_own_private_ones() {
    let node = hs_node(|_| {}).await;
    for (form, topics) in [
        ("list", json!(["prices.*", "auctions.>"])),
        ("space-separated", json!("prices.* auctions.>")),
    ] {
        let token = hs(&json!({"sub": "alice", "exp": now() + 600, "topics": topics}));
        let mut c = connect_query(&node.ws_url("/ws"), &token)
            .await
            .unwrap_or_else(|e| panic!("{form}: {e:?}"));
        for ok in [
            "prices.IN1",
            "auctions.A1",
            "auctions.A1.bids",
            "trading.alice",
        ] {
            assert_ack(&try_subscribe(&mut c, ok).await, ok);
        }
        for no in [
            "market_data.AAPL",
            "prices.IN1.depth", // `*` is exactly one segment
            "prices",
            "trading.bob",
            "news.x",
        ] {
            assert_forbidden(&try_subscribe(&mut c, no).await, no);
        }
        c.ping_pong(form).await;

        // Routes follow the same rules.
        connect_query(&node.ws_url("/ws/market/IN2"), &token)
            .await
            .unwrap_or_else(|e| panic!("{form}: /ws/market/IN2: {e:?}"));
        assert_refused(
            connect_query(&node.ws_url("/ws/market-data/AAPL"), &token).await,
            403,
            "FORBIDDEN",
            "/ws/market-data/AAPL with a prices-only token",
        );
    }
    // Without the claim, public topics are open.
    let mut free = connect_query(&node.ws_url("/ws"), &token_for("carol"))
        .await
        .expect("carol");
    assert_ack(
        &try_subscribe(&mut free, "market_data.AAPL").await,
        "market_data.AAPL",
    );
}

#[tokio::test]
async fn an_admin_claim_reads_every_topic() {
    let node = hs_node(|_| {}).await;
    let admin =
        hs(&json!({"sub": "ops", "exp": now() + 600, "admin": true, "topics": ["prices.*"]}));
    let mut c = connect_query(&node.ws_url("/ws"), &admin)
        .await
        .expect("admin connects");
    for t in [
        "trading.bob",
        "portfolio.bob",
        "risk.bob.alerts",
        "mobile.bob",
        "market_data.AAPL",
    ] {
        assert_ack(&try_subscribe(&mut c, t).await, t);
    }
    let mut route = connect_bearer(&node.ws_url("/ws/trading/bob"), &admin)
        .await
        .expect("admin on bob's route");
    assert_ack(&route.recv().await.expect("ack"), "trading.bob");
    // `admin: false` is no admin.
    let not_admin = hs(&json!({"sub": "ops", "exp": now() + 600, "admin": false}));
    assert_refused(
        connect_query(&node.ws_url("/ws/trading/bob"), &not_admin).await,
        403,
        "FORBIDDEN",
        "admin: false",
    );
}

#[tokio::test]
async fn the_admin_http_api_accepts_an_admin_jwt_and_refuses_a_user_jwt() {
    let node = hs_node(|_| {}).await;
    let admin = hs(&json!({"sub": "ops", "exp": now() + 600, "admin": true}));
    let user = token_for("alice");
    let body = json!({"topic": "prices.ADM", "payload": {"x": 1}}).to_string();

    // The static admin token keeps working.
    let (s, v) = node.get_json("/connections", Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 200, "{v}");

    // A user's JWT is not admin.
    let (s, v) = node.get_json("/connections", Some(&user)).await;
    assert_eq!(s, 403, "a non-admin JWT on /connections: {v}");
    let (s, v) = node.post("/publish", Some(&user), &body).await;
    assert_eq!(s, 403, "a non-admin JWT on /publish: {v}");

    // An admin JWT is (issue 4: "The admin HTTP API also accepts an admin JWT").
    for path in ["/connections", "/topics", "/cluster"] {
        let (s, v) = node.get_json(path, Some(&admin)).await;
        assert_eq!(s, 200, "GET {path} with an admin JWT: {v}");
    }
    let (s, v) = node.post("/publish", Some(&admin), &body).await;
    assert_eq!(s, 200, "POST /publish with an admin JWT: {v}");
    assert_eq!(v["seq"], 1, "{v}");

    // Admin claims in a token that does not verify give nothing.
    let admin_claims = json!({"sub": "ops", "exp": now() + 600, "admin": true});
    for (case, token) in [
        (
            "forged",
            mint(&admin_claims, &Signer::hs256("not-the-secret")),
        ),
        ("alg: none", alg_none_token(&admin_claims)),
        (
            "expired",
            hs(&json!({"sub": "ops", "exp": now() - 60, "admin": true})),
        ),
        ("user token made admin", tampered(&user, &admin_claims)),
    ] {
        let (s, v) = node.get_json("/connections", Some(&token)).await;
        assert_eq!(s, 403, "{case} admin JWT on /connections: {v}");
        let (s, v) = node.post("/publish", Some(&token), &body).await;
        assert_eq!(s, 403, "{case} admin JWT on /publish: {v}");
    }
    let (s, v) = node.get_json("/connections", None).await;
    assert_eq!(s, 401, "no credentials: {v}");

    // Without a static admin token, the admin JWT alone opens the API.
    let jwt_only = hs_node(|c| c.admin_token = None).await;
    let (s, v) = jwt_only.get_json("/connections", Some(&admin)).await;
    assert_eq!(s, 200, "admin JWT without SLUICE_ADMIN_TOKEN: {v}");
    let (s, v) = jwt_only.get_json("/connections", Some(&user)).await;
    assert_eq!(s, 403, "user JWT without SLUICE_ADMIN_TOKEN: {v}");
    let (s, v) = jwt_only.get_json("/connections", Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 403, "a static token that is not configured: {v}");
}
