//! Token verification with real clients: every refused token is a 401 with its code
//! before anything is upgraded (and counted); the leeway; HS256, RS256, ES256 and
//! JWKS keys accept good tokens and nothing else. Permissions are in
//! `auth_permissions.rs`, expiry and refresh on a live session in `auth_refresh.rs`.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey};
use sluice_tests::{
    auth::{auth_failures, hs, hs_node, tampered, AUDIENCE, ISSUER, SECRET},
    security::{
        alg_none_token, assert_refused, connect_bearer, connect_query, connect_with, fixture,
        fixture_bytes, mint, now, Refused, Signer,
    },
    start_node, ADMIN_TOKEN,
};

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
