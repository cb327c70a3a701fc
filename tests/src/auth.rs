//! Helpers of the `auth*` test files: a node that verifies HS256 tokens with a fixed
//! secret, tokens for it (good, tampered), and checks of the answers to a subscribe.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_node::{
    config::{AuthMode, JwtKey},
    Config,
};

use crate::{
    security::{b64url, mint, now, Signer},
    start_node, TestNode, WsClient,
};

/// The HS256 secret of [`hs_node`].
pub const SECRET: &str = "auth-tests-hs256-secret-of-32-bytes-or-more";
/// The issuer and audience a test node may be configured to require.
pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "sluice-gateway";
/// The metric counting refused tokens.
pub const AUTH_FAILURES: &str = "sluice_auth_failures_total";

/// A node verifying HS256 tokens with [`SECRET`], auth required, no leeway.
pub async fn hs_node(tweak: impl FnOnce(&mut Config)) -> TestNode {
    start_node(|c| {
        c.jwt_key = Some(JwtKey::Secret(SECRET.into()));
        c.auth = AuthMode::Required;
        c.jwt_leeway = Duration::ZERO;
        tweak(c);
    })
    .await
}

/// `claims` signed with [`SECRET`].
pub fn hs(claims: &Value) -> String {
    mint(claims, &Signer::hs256(SECRET))
}

/// A valid HS256 token for `sub`, good for ten minutes.
pub fn token_for(sub: &str) -> String {
    hs(&json!({"sub": sub, "exp": now() + 600}))
}

/// The same token with its claims replaced but the original signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// The node's count of refused tokens so far.
pub async fn auth_failures(node: &TestNode) -> f64 {
    node.metric(AUTH_FAILURES).await.unwrap_or(0.0)
}

/// Sends a subscribe for `topic` and returns the single answer frame.
pub async fn try_subscribe(c: &mut WsClient, topic: &str) -> Value {
    c.send_json(json!({"type": "subscribe", "topic": topic, "correlation_id": topic}))
        .await;
    c.recv()
        .await
        .unwrap_or_else(|e| panic!("answer to subscribe {topic}: {e}"))
}

/// `frame` refuses the subscribe to `topic` with `FORBIDDEN`.
pub fn assert_forbidden(frame: &Value, topic: &str) {
    assert_eq!(frame["type"], "error", "subscribe {topic}: {frame}");
    assert_eq!(frame["code"], "FORBIDDEN", "subscribe {topic}: {frame}");
    assert_eq!(frame["details"]["topic"], topic, "{frame}");
    assert_eq!(frame["correlation_id"], topic, "{frame}");
}

/// `frame` acknowledges the subscribe to `topic`.
pub fn assert_ack(frame: &Value, topic: &str) {
    assert_eq!(frame["type"], "ack", "subscribe {topic}: {frame}");
    assert_eq!(frame["topic"], topic, "{frame}");
    assert_eq!(frame["payload"]["subscribed"], true, "{frame}");
}
