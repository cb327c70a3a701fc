//! A token on a live session: expiry closes it with `TOKEN_EXPIRED` then 1008 at
//! `exp`; a `refresh` before then keeps it open; a bad refresh closes it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sluice_tests::{
    auth::{auth_failures, hs, hs_node, token_for},
    security::{alg_none_token, connect_query, mint, now, now_f64, read_until_close, Signer},
    Closed,
};

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
