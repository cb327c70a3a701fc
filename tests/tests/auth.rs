//! Authentication and topic permissions with real clients: every refused token is a
//! 401 with its code before anything is upgraded (and counted); HS256, RS256, ES256
//! and JWKS keys accept good tokens and nothing else; a user reads only their own
//! private topics, by message or by route; `topics` and `admin` claims; token
//! expiry and refresh on a live session; the admin API with an admin JWT.

use std::time::Duration;

use futures_util::StreamExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey};
use sluice_tests::{
    security::{
        alg_none_token, assert_refused, b64url, connect_bearer, connect_query, connect_with,
        fixture, fixture_bytes, mint, now, now_f64, read_until_close, Refused, Signer,
    },
    start_node, Closed, TestNode, WsClient, ADMIN_TOKEN,
};

const SECRET: &str = "auth-tests-hs256-secret-of-32-bytes-or-more";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sluice-gateway";
const AUTH_FAILURES: &str = "sluice_auth_failures_total";

/// A node verifying HS256 tokens with [`SECRET`], auth required, no leeway.
async fn hs_node(tweak: impl FnOnce(&mut sluice_node::Config)) -> TestNode {
    start_node(|c| {
        c.jwt_key = Some(JwtKey::Secret(SECRET.into()));
        c.auth = AuthMode::Required;
        c.jwt_leeway = Duration::ZERO;
        tweak(c);
    })
    .await
}

fn hs(claims: &Value) -> String {
    mint(claims, &Signer::hs256(SECRET))
}

/// A valid HS256 token for `sub`, good for ten minutes.
fn token_for(sub: &str) -> String {
    hs(&json!({"sub": sub, "exp": now() + 600}))
}

/// The same token with its claims replaced but the original signature kept.
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    )
}

async fn auth_failures(node: &TestNode) -> f64 {
    node.metric(AUTH_FAILURES).await.unwrap_or(0.0)
}

/// Sends a subscribe for `topic` and returns the single answer frame.
async fn try_subscribe(c: &mut WsClient, topic: &str) -> Value {
    c.send_json(json!({"type": "subscribe", "topic": topic, "correlation_id": topic}))
        .await;
    c.recv()
        .await
        .unwrap_or_else(|e| panic!("answer to subscribe {topic}: {e}"))
}

fn assert_forbidden(frame: &Value, topic: &str) {
    assert_eq!(frame["type"], "error", "subscribe {topic}: {frame}");
    assert_eq!(frame["code"], "FORBIDDEN", "subscribe {topic}: {frame}");
    assert_eq!(frame["details"]["topic"], topic, "{frame}");
    assert_eq!(frame["correlation_id"], topic, "{frame}");
}

fn assert_ack(frame: &Value, topic: &str) {
    assert_eq!(frame["type"], "ack", "subscribe {topic}: {frame}");
    assert_eq!(frame["topic"], topic, "{frame}");
    assert_eq!(frame["payload"]["subscribed"], true, "{frame}");
}

#[tokio::test]
async fn every_refused_token_is_a_401_with_its_code_before_upgrading_and_is_counted() {
    let node = hs_node(|c| {
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    let url = node.ws_url("/ws");
    let t = now();
    let good = json!({"sub": "alice", "exp": t + 600, "iss": ISSUER, "aud": AUDIENCE});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove(k);
        c
    };
    let good_token = hs(&good);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "forged: signed with another secret",
            mint(&good, &Signer::hs256("not-the-secret")),
            "AUTH_INVALID",
        ),
        (
            "forged: claims changed after signing",
            tampered(&good_token, &with("sub", json!("bob"))),
            "AUTH_INVALID",
        ),
        ("expired", hs(&with("exp", json!(t - 60))), "TOKEN_EXPIRED"),
        ("alg: none", alg_none_token(&good), "AUTH_INVALID"),
        (
            "alg: none with a valid signature attached",
            format!(
                "{}{}",
                alg_none_token(&good),
                good_token.rsplit('.').next().expect("signature")
            ),
            "AUTH_INVALID",
        ),
        (
            "wrong algorithm: HS512 with the right secret",
            mint(
                &good,
                &Signer::Hmac(Algorithm::HS512, SECRET.as_bytes().to_vec()),
            ),
            "AUTH_INVALID",
        ),
        (
            "wrong algorithm family: RS256",
            mint(&good, &Signer::Rs256(None)),
            "AUTH_INVALID",
        ),
        ("garbage", "garbage".into(), "AUTH_INVALID"),
        (
            "three garbage segments",
            "abc.def.ghi".into(),
            "AUTH_INVALID",
        ),
        (
            "wrong audience",
            hs(&with("aud", json!("someone-else"))),
            "AUTH_INVALID",
        ),
        ("no audience", hs(&without("aud")), "AUTH_INVALID"),
        (
            "wrong issuer",
            hs(&with("iss", json!("https://evil.test"))),
            "AUTH_INVALID",
        ),
        ("no issuer", hs(&without("iss")), "AUTH_INVALID"),
        (
            "nbf in the future",
            hs(&with("nbf", json!(t + 120))),
            "AUTH_INVALID",
        ),
        ("no exp", hs(&without("exp")), "AUTH_INVALID"),
        ("no sub", hs(&without("sub")), "AUTH_INVALID"),
    ];

    let mut refused = 0.0;
    assert_refused(
        connect_with(&url, &[]).await,
        401,
        "AUTH_REQUIRED",
        "no token",
    );
    assert_refused(
        connect_with(&format!("{url}?token="), &[]).await,
        401,
        "AUTH_REQUIRED",
        "empty ?token=",
    );
    assert_refused(
        connect_with(&url, &[("authorization", "Basic YWxpY2U6cHc=")]).await,
        401,
        "AUTH_REQUIRED",
        "Authorization that is not a bearer token",
    );
    refused += 3.0;
    // Every case is tried both ways; all mismatches are reported together.
    let mut wrong = Vec::new();
    for (case, token, code) in &cases {
        for (how, r) in [
            ("?token=", connect_query(&url, token).await),
            ("Bearer", connect_bearer(&url, token).await),
        ] {
            match r {
                Ok(_) => wrong.push(format!("{case} ({how}): accepted, expected 401 {code}")),
                Err(Refused { status, body }) => {
                    refused += 1.0;
                    if status != 401 || body["code"] != *code {
                        wrong.push(format!(
                            "{case} ({how}): {status} {body}, expected 401 {code}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "tokens not refused as they must be:\n{}",
        wrong.join("\n")
    );
    // The alias routes check the token the same way.
    assert_refused(
        connect_query(
            &node.ws_url("/ws/market/IN0001"),
            &hs(&with("exp", json!(t - 60))),
        )
        .await,
        401,
        "TOKEN_EXPIRED",
        "expired, on /ws/market/IN0001",
    );
    refused += 1.0;

    // Nothing was upgraded, and every refusal was counted once.
    assert_eq!(node.node().state.sessions.len(), 0);
    assert_eq!(
        node.metric("sluice_connections_total").await.unwrap_or(0.0),
        0.0
    );
    assert_eq!(auth_failures(&node).await, refused);

    // The good token is accepted both ways, and accepting is not a failure.
    let mut by_query = connect_query(&url, &good_token)
        .await
        .expect("a good token in ?token= is accepted");
    let mut by_header = connect_bearer(&url, &good_token)
        .await
        .expect("a good token in Authorization: Bearer is accepted");
    by_query.ping_pong("q").await;
    by_header.ping_pong("h").await;
    assert_eq!(auth_failures(&node).await, refused);
    let (status, conns) = node.get_json("/connections", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{conns}");
    let users: Vec<&Value> = conns["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| &c["user"])
        .collect();
    assert_eq!(users, [&json!("alice"), &json!("alice")], "{conns}");
}

#[tokio::test]
async fn the_leeway_tolerates_small_clock_skew_only() {
    let node = hs_node(|c| c.jwt_leeway = Duration::from_secs(30)).await;
    let url = node.ws_url("/ws");
    let t = now();
    // nbf slightly in the future is within the leeway.
    let mut c = connect_query(
        &url,
        &hs(&json!({"sub": "alice", "exp": t + 600, "nbf": t + 10})),
    )
    .await
    .expect("nbf 10 s ahead is within a 30 s leeway");
    c.ping_pong("skewed").await;
    // exp slightly in the past is accepted at the door.
    connect_query(&url, &hs(&json!({"sub": "alice", "exp": t - 10})))
        .await
        .expect("exp 10 s ago is within a 30 s leeway");
    // Beyond the leeway, both are refused.
    assert_refused(
        connect_query(&url, &hs(&json!({"sub": "alice", "exp": t - 60}))).await,
        401,
        "TOKEN_EXPIRED",
        "exp 60 s ago",
    );
    assert_refused(
        connect_query(
            &url,
            &hs(&json!({"sub": "alice", "exp": t + 600, "nbf": t + 60})),
        )
        .await,
        401,
        "AUTH_INVALID",
        "nbf 60 s ahead",
    );
}

#[tokio::test]
async fn an_rs256_public_key_accepts_rs256_tokens_and_refuses_algorithm_confusion() {
    let pem_path = fixture("rsa_public.pem");
    let node = start_node(|c| {
        c.jwt_key = Some(JwtKey::PublicKeyFile(pem_path));
        c.auth = AuthMode::Required;
    })
    .await;
    let url = node.ws_url("/ws");
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let good = mint(&claims, &Signer::Rs256(None));

    let mut c = connect_bearer(&url, &good)
        .await
        .expect("a good RS256 token is accepted");
    c.ping_pong("rs256").await;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            // The classic confusion attack: the public key bytes used as an HMAC secret.
            "HS256 signed with the RSA public key PEM as secret",
            mint(
                &claims,
                &Signer::Hmac(Algorithm::HS256, fixture_bytes("rsa_public.pem")),
            ),
            "AUTH_INVALID",
        ),
        (
            "ES256 token",
            mint(&claims, &Signer::Es256(None)),
            "AUTH_INVALID",
        ),
        ("alg: none", alg_none_token(&claims), "AUTH_INVALID"),
        (
            "claims changed after signing",
            tampered(
                &good,
                &json!({"sub": "admin", "exp": now() + 600, "admin": true}),
            ),
            "AUTH_INVALID",
        ),
        (
            "expired RS256",
            mint(
                &json!({"sub": "alice", "exp": now() - 60}),
                &Signer::Rs256(None),
            ),
            "TOKEN_EXPIRED",
        ),
    ];
    for (case, token, code) in &cases {
        assert_refused(connect_bearer(&url, token).await, 401, code, case);
    }
    assert_eq!(auth_failures(&node).await, cases.len() as f64);
}

#[tokio::test]
async fn an_es256_public_key_accepts_es256_tokens_only() {
    let pem_path = fixture("ec_public.pem");
    let node = start_node(|c| {
        c.jwt_key = Some(JwtKey::PublicKeyFile(pem_path));
        c.auth = AuthMode::Required;
    })
    .await;
    let url = node.ws_url("/ws");
    let claims = json!({"sub": "alice", "exp": now() + 600});

    let mut c = connect_query(&url, &mint(&claims, &Signer::Es256(None)))
        .await
        .expect("a good ES256 token is accepted");
    c.ping_pong("es256").await;

    let cases: Vec<(&str, String)> = vec![
        (
            "HS256 signed with the EC public key PEM as secret",
            mint(
                &claims,
                &Signer::Hmac(Algorithm::HS256, fixture_bytes("ec_public.pem")),
            ),
        ),
        ("RS256 token", mint(&claims, &Signer::Rs256(None))),
        ("alg: none", alg_none_token(&claims)),
    ];
    for (case, token) in &cases {
        assert_refused(connect_query(&url, token).await, 401, "AUTH_INVALID", case);
    }
    assert_eq!(auth_failures(&node).await, cases.len() as f64);
}

#[tokio::test]
async fn a_jwks_file_picks_the_key_by_kid() {
    let jwks = fixture("jwks.json");
    let node = start_node(|c| {
        c.jwt_key = Some(JwtKey::JwksFile(jwks));
        c.auth = AuthMode::Required;
    })
    .await;
    let url = node.ws_url("/ws");
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let k = |s: &str| Some(s.to_owned());

    let mut rsa = connect_bearer(&url, &mint(&claims, &Signer::Rs256(k("k1"))))
        .await
        .expect("RS256 with kid k1 (the RSA key) is accepted");
    let mut ec = connect_bearer(&url, &mint(&claims, &Signer::Es256(k("k2"))))
        .await
        .expect("ES256 with kid k2 (the EC key) is accepted");
    rsa.ping_pong("k1").await;
    ec.ping_pong("k2").await;

    let mut hs_k1 = jsonwebtoken::Header::new(Algorithm::HS256);
    hs_k1.kid = k("k1");
    let confused = jsonwebtoken::encode(
        &hs_k1,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&fixture_bytes("jwks.json")),
    )
    .expect("encode");
    let cases: Vec<(&str, String)> = vec![
        (
            "RS256 naming the EC key",
            mint(&claims, &Signer::Rs256(k("k2"))),
        ),
        (
            "ES256 naming the RSA key",
            mint(&claims, &Signer::Es256(k("k1"))),
        ),
        ("an unknown kid", mint(&claims, &Signer::Rs256(k("k9")))),
        (
            "no kid while the set has two keys",
            mint(&claims, &Signer::Rs256(None)),
        ),
        ("HS256 naming the RSA key", confused),
        ("alg: none", alg_none_token(&claims)),
    ];
    for (case, token) in &cases {
        assert_refused(connect_bearer(&url, token).await, 401, "AUTH_INVALID", case);
    }
    assert_eq!(auth_failures(&node).await, cases.len() as f64);
}

#[tokio::test]
async fn a_rewritten_jwks_file_is_used_without_a_restart() {
    let original = String::from_utf8(fixture_bytes("jwks.json")).expect("utf-8");
    let path = std::env::temp_dir().join(format!("sluice-jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, &original).expect("write the JWKS copy");
    let node = start_node({
        let path = path.clone();
        move |c| {
            c.jwt_key = Some(JwtKey::JwksFile(path));
            c.auth = AuthMode::Required;
        }
    })
    .await;
    let url = node.ws_url("/ws");
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let k1 = mint(&claims, &Signer::Rs256(Some("k1".into())));
    let k3 = mint(&claims, &Signer::Rs256(Some("k3".into())));

    connect_bearer(&url, &k1).await.expect("k1 before rotation");
    assert_refused(
        connect_bearer(&url, &k3).await,
        401,
        "AUTH_INVALID",
        "k3 before rotation",
    );

    // Rotate: the RSA key now goes by kid k3, and k1 and k2 are gone.
    let set: Value = serde_json::from_str(&original).expect("fixture JWKS");
    let rsa = &set["keys"][0];
    assert_eq!(rsa["kid"], "k1");
    let rotated = json!({"keys": [{"kty": "RSA", "kid": "k3", "use": "sig", "alg": "RS256",
        "n": rsa["n"], "e": rsa["e"]}]});
    let before = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&path, rotated.to_string()).expect("rewrite the JWKS");
    // Make sure the modification time differs even on a coarse-grained filesystem.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(before + Duration::from_secs(2)))
        .expect("set mtime");

    sluice_tests::eventually(Duration::from_secs(5), "the node to accept kid k3", || {
        let (url, k3) = (url.clone(), k3.clone());
        async move { connect_bearer(&url, &k3).await.is_ok() }
    })
    .await;
    assert_refused(
        connect_bearer(&url, &k1).await,
        401,
        "AUTH_INVALID",
        "k1 after rotation",
    );
    assert_refused(
        connect_bearer(&url, &mint(&claims, &Signer::Es256(Some("k2".into())))).await,
        401,
        "AUTH_INVALID",
        "k2 after rotation",
    );
    let _ = std::fs::remove_file(&path);
}

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

#[tokio::test]
async fn a_session_whose_token_expires_without_refresh_gets_token_expired_then_1008() {
    let node = hs_node(|_| {}).await;
    // exp is in whole seconds: the token lives 4 to 5 s, so connect and subscribe
    // finish before it on a loaded machine.
    let exp = now() + 5;
    let token = hs(&json!({"sub": "alice", "exp": exp}));
    let mut c = connect_query(&node.ws_url("/ws"), &token)
        .await
        .expect("a token valid for 4 s is accepted");
    c.subscribe(json!({"topic": "prices.EXP"})).await;

    let (frames, close) = read_until_close(&mut c, Duration::from_secs(20)).await;
    let closed_at = now_f64();
    assert_eq!(close, Closed::Code(1008));
    assert_eq!(
        frames.len(),
        1,
        "exactly one frame before the close: {frames:?}"
    );
    assert_eq!(frames[0]["type"], "error", "{}", frames[0]);
    assert_eq!(frames[0]["code"], "TOKEN_EXPIRED", "{}", frames[0]);
    assert!(
        closed_at >= exp as f64 - 0.05,
        "closed at {closed_at}, before the token's exp {exp}"
    );
    // Closing at exp is the behaviour: allow 3 s after it (the expiry timer plus
    // the close on two busy cores), not more.
    assert!(
        closed_at < exp as f64 + 3.0,
        "closed late: {closed_at} vs exp {exp}"
    );
    node.wait_sessions(0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refresh_before_expiry_keeps_the_session_open_past_the_old_exp() {
    let node = hs_node(|_| {}).await;
    // Lives 4 to 5 s: connect, subscribe and refresh all happen before it.
    let old_exp = now() + 5;
    let mut c = connect_query(
        &node.ws_url("/ws"),
        &hs(&json!({"sub": "alice", "exp": old_exp})),
    )
    .await
    .expect("connects");
    c.subscribe(json!({"topic": "prices.REF"})).await;

    let new_exp = now() + 600;
    c.send_json(json!({"type": "refresh", "correlation_id": "r1",
        "token": hs(&json!({"sub": "alice", "exp": new_exp}))}))
        .await;
    let ack = c.recv().await.expect("refresh answer");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["correlation_id"], "r1", "{ack}");
    assert_eq!(ack["payload"]["refreshed"], true, "{ack}");
    assert_eq!(ack["payload"]["expires_at"], new_exp, "{ack}");

    // Nothing at all arrives (no error, no close) until well past the old exp.
    let wait = (old_exp as f64 + 1.5 - now_f64()).max(0.0);
    let got = tokio::time::timeout(Duration::from_secs_f64(wait), c.inner().next()).await;
    assert!(got.is_err(), "a frame arrived around the old exp: {got:?}");
    assert!(now() > old_exp);
    c.ping_pong("after-old-exp").await;
    let (seq, _) = node.publish("prices.REF", json!({"still": "here"})).await;
    let p = c.recv_pubs(1).await;
    assert_eq!(p[0]["seq"], seq);
    assert_eq!(node.node().state.sessions.len(), 1);
}

#[tokio::test]
async fn a_refresh_with_a_bad_token_is_refused_and_closes_with_1008() {
    let node = hs_node(|_| {}).await;
    let url = node.ws_url("/ws");
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "garbage".into(), "AUTH_INVALID"),
        (
            "expired",
            hs(&json!({"sub": "alice", "exp": now() - 60})),
            "TOKEN_EXPIRED",
        ),
        (
            "forged",
            mint(
                &json!({"sub": "alice", "exp": now() + 600}),
                &Signer::hs256("wrong"),
            ),
            "AUTH_INVALID",
        ),
        (
            "alg: none",
            alg_none_token(&json!({"sub": "alice", "exp": now() + 600})),
            "AUTH_INVALID",
        ),
        ("another user's valid token", token_for("bob"), "FORBIDDEN"),
    ];
    for (case, token, code) in &cases {
        let mut c = connect_query(&url, &token_for("alice"))
            .await
            .expect("alice connects");
        c.send_json(json!({"type": "refresh", "token": token, "correlation_id": case}))
            .await;
        let (frames, close) = read_until_close(&mut c, Duration::from_secs(5)).await;
        assert_eq!(close, Closed::Code(1008), "{case}");
        assert_eq!(frames.len(), 1, "{case}: {frames:?}");
        assert_eq!(frames[0]["type"], "error", "{case}: {}", frames[0]);
        assert_eq!(frames[0]["code"], *code, "{case}: {}", frames[0]);
        assert_eq!(frames[0]["correlation_id"], *case, "{case}: {}", frames[0]);
    }
    assert_eq!(auth_failures(&node).await, cases.len() as f64);
    node.wait_sessions(0, Duration::from_secs(5)).await;
}
