//! `sluice token`, run as the built binary: its tokens are accepted by a node with
//! the same secret, `--admin` and `--topics` become the claims the node enforces,
//! and mistakes get one line on stderr that never shows the secret.

use std::process::{Command, Output};

use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey};
use sluice_tests::{process::sluice_binary, start_node, TestNode, WsClient};

const SECRET: &str = "token-cli-test-secret-of-32-bytes!";

fn sluice_token(args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = Command::new(sluice_binary());
    cmd.env_clear().arg("token").args(args);
    if let Some(s) = secret {
        cmd.env("SLUICE_JWT_SECRET", s);
    }
    cmd.output().expect("run sluice token")
}

/// The token printed for `args`, checking it is the only thing printed.
fn mint(args: &[&str]) -> String {
    let out = sluice_token(args, Some(SECRET));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 token");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout:?}");
    assert_eq!(lines[0].split('.').count(), 3, "{stdout:?}");
    lines[0].to_owned()
}

async fn auth_node() -> TestNode {
    start_node(|c| {
        c.jwt_key = Some(JwtKey::Secret(SECRET.into()));
        c.auth = AuthMode::Required;
    })
    .await
}

/// The answer to subscribing `topic`: `"ack"` or the error code.
async fn subscribe_answer(ws: &mut WsClient, topic: &str) -> String {
    ws.send_json(json!({"type": "subscribe", "topic": topic}))
        .await;
    let v: Value = ws.recv().await.expect("an answer");
    match v["type"].as_str() {
        Some("ack") => "ack".to_owned(),
        Some("error") => v["code"].as_str().unwrap_or_default().to_owned(),
        _ => panic!("unexpected frame {v}"),
    }
}

#[tokio::test]
async fn a_user_token_opens_its_own_private_topics_only() {
    let node = auth_node().await;
    let token = mint(&["--sub", "alice", "--ttl", "120"]);
    let mut ws = WsClient::connect(&node.ws_url(&format!("/ws?token={token}")))
        .await
        .expect("the node accepts the token");
    assert_eq!(subscribe_answer(&mut ws, "trading.alice").await, "ack");
    assert_eq!(subscribe_answer(&mut ws, "trading.bob").await, "FORBIDDEN");
    assert_eq!(subscribe_answer(&mut ws, "prices.IN1").await, "ack");
    // Without the admin claim the admin API stays closed.
    let (status, _) = node.get("/connections", Some(token.as_str())).await;
    assert_eq!(status, 403);
    // Without a token the upgrade is refused, so the node really checks.
    assert_eq!(
        WsClient::try_connect(&node.ws_url("/ws")).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn topics_restrict_public_topics_and_admin_opens_everything() {
    let node = auth_node().await;
    let narrow = mint(&["--sub", "bot", "--topics", "prices.*,auctions.>"]);
    let mut ws = WsClient::connect(&node.ws_url(&format!("/ws?token={narrow}")))
        .await
        .expect("connect");
    assert_eq!(subscribe_answer(&mut ws, "prices.IN1").await, "ack");
    assert_eq!(subscribe_answer(&mut ws, "auctions.A1.bids").await, "ack");
    assert_eq!(
        subscribe_answer(&mut ws, "market_data.X").await,
        "FORBIDDEN"
    );

    let admin = mint(&["--sub", "ops", "--admin"]);
    let mut ws = WsClient::connect(&node.ws_url(&format!("/ws?token={admin}")))
        .await
        .expect("connect");
    assert_eq!(subscribe_answer(&mut ws, "trading.bob").await, "ack");
    let (status, body) = node.get("/connections", Some(admin.as_str())).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_token_from_another_secret_is_refused() {
    let node = auth_node().await;
    let out = sluice_token(
        &["--sub", "alice"],
        Some("another-secret-that-is-long-enough!!"),
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let url = node.ws_url(&format!("/ws?token={}", token.trim()));
    assert_eq!(WsClient::try_connect(&url).await.err(), Some(401));
}

#[test]
fn mistakes_get_one_line_and_exit_2_without_the_secret() {
    let short = "short-secret-xyz";
    for (args, secret, want) in [
        (
            &["--admin"][..],
            Some(SECRET),
            "sluice token: --sub NAME is required",
        ),
        (
            &["--sub", "a"][..],
            None,
            "sluice token: no secret: set SLUICE_JWT_SECRET or pass --jwt-secret",
        ),
        (
            &["--sub", "a"][..],
            Some(short),
            "sluice token: SLUICE_JWT_SECRET is 16 bytes; it must be at least 32",
        ),
        (
            &["--sub", "a", "--ttl", "-5"][..],
            Some(SECRET),
            "sluice token: --ttl \"-5\": must be 1 to 31536000 seconds",
        ),
        (&["--sub", "a", "--topics", "a..b"][..], Some(SECRET), ""),
    ] {
        let out = sluice_token(args, secret);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        if want.is_empty() {
            assert!(
                stderr.starts_with("sluice token: --topics: \"a..b\""),
                "{stderr}"
            );
        } else {
            assert_eq!(stderr.trim_end(), want);
        }
        assert!(
            !stderr.contains(SECRET) && !stderr.contains(short),
            "{stderr}"
        );
    }
}
