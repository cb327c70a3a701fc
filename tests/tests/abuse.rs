//! Attacks on the subscribe path and the socket, each with the code or close it gets
//! and a bound (issue 10): a 3000 × 3000 `subscribe` expansion, refused entries as
//! one error per code and as strikes, private families with auth off, re-subscribe
//! replays, epoch-less resumes (embedded broker and Redis after a data loss), made-up
//! topics on Redis, the node's topic cap, and a socket that takes no bytes.

use std::time::Duration;

use fred::interfaces::ClientLike;
use serde_json::{json, Value};
use sluice_tests::{
    process::NodeProcess, read_rss_kb, redis::TestRedis, start_node, start_redis_node, Closed,
    RawClient, RawFrame, WsClient,
};

const SLOW: &str = "sluice_slow_consumer_disconnects_total";

/// The 48 KB frame of the report: 3000 topics × 3000 subtopics.
fn expansion_bomb() -> String {
    let topics: Vec<String> = (0..3000).map(|i| format!("p{i}")).collect();
    let subs: Vec<String> = (0..3000).map(|i| format!("s{i}")).collect();
    json!({"type": "subscribe", "topics": topics, "subtopics": subs, "correlation_id": "bomb"})
        .to_string()
}

/// Reads every JSON frame until the close; returns them and the close code.
async fn frames_until_close(c: &mut WsClient) -> (Vec<Value>, Closed) {
    sluice_tests::security::read_until_close(c, Duration::from_secs(15)).await
}

#[tokio::test]
async fn ten_expansion_bombs_cost_the_node_under_32_mb_and_each_closes_with_4029() {
    let node = NodeProcess::start("bomb", &[]).await;
    let pid = node.pid();
    let before = read_rss_kb(pid);
    let bomb = expansion_bomb();
    assert!(bomb.len() < 64 * 1024, "fits the default frame limit");
    for i in 0..10 {
        let mut c = WsClient::connect(&node.ws_url()).await.expect("connect");
        c.send_text(&bomb).await;
        let (frames, close) = frames_until_close(&mut c).await;
        assert_eq!(close, Closed::Code(4029), "bomb {i}: {frames:?}");
        assert_eq!(frames.len(), 1, "one error, nothing else: {frames:?}");
        let e = &frames[0];
        assert_eq!(e["code"], "TOO_MANY_SUBSCRIPTIONS", "{e}");
        assert_eq!(e["correlation_id"], "bomb");
        assert_eq!(e["details"]["requested"], 9_000_000);
        assert_eq!(e["details"]["limit"], 1000);
    }
    let after = read_rss_kb(pid);
    let grown_mb = after.saturating_sub(before) as f64 / 1024.0;
    println!("RSS {before} kB -> {after} kB after 10 bombs (+{grown_mb:.1} MB)");
    assert!(grown_mb < 32.0, "the node grew by {grown_mb:.1} MB");
    let health: Value = reqwest::get(node.http_url("/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["topics_active"], 0, "nothing was followed: {health}");
}

#[tokio::test]
async fn refused_entries_get_one_error_per_code_and_count_as_strikes() {
    // The node follows one topic at most: the second public topic is refused for
    // the node's cap, which is not the client's doing (no strike).
    let node = start_node(|c| {
        c.rate_limit_strikes = 20;
        c.max_topics = 1;
    })
    .await;
    let mut c = node.client().await;
    let mut topics: Vec<Value> = (0..25).map(|i| json!(format!("trading.u{i}"))).collect();
    topics.push(json!("prices.ok"));
    topics.push(json!("prices.two"));
    c.send_json(json!({"type": "subscribe", "topics": topics, "correlation_id": 9}))
        .await;
    let (frames, close) = frames_until_close(&mut c).await;
    // 25 private topics refused with no identity: 25 strikes ≥ 20 closes with 4029,
    // after the ack of the one allowed topic and one error per code.
    assert_eq!(close, Closed::Code(4029), "{frames:?}");
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("error") => f["code"].as_str().unwrap_or_default().to_owned(),
            other => other.unwrap_or_default().to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["ack", "FORBIDDEN", "TOO_MANY_SUBSCRIPTIONS"],
        "{frames:?}"
    );
    let forbidden = &frames[1];
    assert_eq!(forbidden["correlation_id"], 9);
    assert_eq!(forbidden["details"]["refused"], 25);
    assert_eq!(forbidden["details"]["more"], 5);
    let listed = forbidden["details"]["topics"].as_array().expect("topics");
    assert_eq!(listed.len(), 20);
    assert_eq!(listed[0], "trading.u0");
    assert_eq!(frames[2]["details"]["topic"], "prices.two");
    assert_eq!(node.metric("sluice_rate_limited_total").await, Some(25.0));
}

#[tokio::test]
async fn fewer_refusals_than_the_strike_limit_keep_the_connection() {
    let node = start_node(|c| c.rate_limit_strikes = 20).await;
    let mut c = node.client().await;
    let topics: Vec<String> = (0..5).map(|i| format!("risk.u{i}.alerts")).collect();
    c.send_json(json!({"type": "subscribe", "topics": topics}))
        .await;
    let e = c.recv().await.expect("error");
    assert_eq!(e["code"], "FORBIDDEN");
    assert_eq!(e["details"]["refused"], 5);
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    c.ping_pong("still-open").await;
}

#[tokio::test]
async fn private_families_need_an_identity_when_auth_is_off() {
    let node = start_node(|_| {}).await;
    for path in [
        "/ws/trading/bob",
        "/ws/risk/bob",
        "/ws/mobile/bob",
        "/api/v1/ws/trading/bob",
    ] {
        let status = WsClient::try_connect(&node.ws_url(path)).await.err();
        assert_eq!(
            status,
            Some(403),
            "{path} must be refused before the upgrade"
        );
    }
    let mut c = WsClient::try_connect(&node.ws_url("/ws/market/IN0001"))
        .await
        .expect("public alias");
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["topic"], "prices.IN0001");
    for topic in [
        "trading.bob",
        "portfolio.bob",
        "risk.bob.alerts",
        "mobile.bob",
    ] {
        c.send_json(json!({"type": "subscribe", "topic": topic}))
            .await;
        let e = c.recv().await.expect("error");
        assert_eq!(e["code"], "FORBIDDEN", "{topic}: {e}");
        assert_eq!(e["details"]["topic"], topic);
    }
    let ack = c.subscribe(json!({"topic": "auctions.A1"})).await;
    assert_eq!(ack["payload"]["subscribed"], true);
}

#[tokio::test]
async fn re_subscribing_a_held_topic_replays_nothing() {
    let node = start_node(|_| {}).await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = node
            .publish_direct("prices.R", &format!("{i}"), None)
            .await
            .1;
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": "prices.R", "resume_from_seq": 1, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true);
    assert_eq!(sluice_tests::seqs(&c.recv_pubs(5).await), [1, 2, 3, 4, 5]);
    for _ in 0..3 {
        let again = c
            .subscribe(json!({"topic": "prices.R", "resume_from_seq": 1, "epoch": epoch}))
            .await;
        assert_eq!(again["payload"]["already_subscribed"], true, "{again}");
        assert_eq!(again["payload"]["head_seq"], 5);
    }
    node.publish_direct("prices.R", "6", None).await;
    let next = c.recv_pubs(1).await;
    assert_eq!(sluice_tests::seqs(&next), [6], "nothing replayed: {next:?}");
}

#[tokio::test]
async fn a_resume_without_epoch_or_past_the_head_is_a_mismatch() {
    let node = start_node(|_| {}).await;
    let mut epoch = String::new();
    for i in 1..=4 {
        let snap = format!("{{\"at\":{i}}}");
        epoch = node
            .publish_direct("prices.E", &format!("{i}"), Some(&snap))
            .await
            .1;
    }
    // No epoch, seq within the head.
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": "prices.E", "resume_from_seq": 2}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    let snap = c.recv_pubs(1).await;
    assert_eq!(snap[0]["type"], "snapshot");
    assert_eq!(snap[0]["seq"], 4);
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    // The right epoch, but past the head: the client saw messages the topic lacks.
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": "prices.E", "resume_from_seq": 9, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    assert_eq!(c.recv_pubs(1).await[0]["type"], "snapshot");
    // The right epoch, within the head: recovered, exactly the missed ones.
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": "prices.E", "resume_from_seq": 3, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(sluice_tests::seqs(&c.recv_pubs(2).await), [3, 4]);
}

#[tokio::test]
async fn an_epochless_resume_after_redis_lost_its_data_is_not_recovered() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |_| {}).await;
    for i in 1..=6 {
        node.publish_direct("prices.L", &format!("{i}"), None).await;
    }
    redis.flushall().await;
    // The topic starts again under a new epoch; its head (3) covers the old seq 2.
    for i in 1..=3 {
        node.publish_direct("prices.L", &format!("{i}"), Some("{\"fresh\":true}"))
            .await;
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": "prices.L", "resume_from_seq": 2}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], 3);
    let snap = c.recv_pubs(1).await;
    assert_eq!(snap[0]["type"], "snapshot");
    assert_eq!(snap[0]["payload"]["fresh"], true);
}

/// `XREAD` calls Redis has served so far.
async fn xread_calls(redis: &TestRedis) -> u64 {
    let c = redis.client().await;
    let info: String = c
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await
        .expect("INFO");
    let _ = c.quit().await;
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xread:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn followed_topics_never_published_cost_redis_no_reads_per_second() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |_| {}).await;
    let mut c = node.client().await;
    let topics: Vec<String> = (0..300).map(|i| format!("madeup.t{i}")).collect();
    c.send_json(json!({"type": "subscribe", "topics": topics}))
        .await;
    for _ in 0..300 {
        assert_eq!(c.recv().await.expect("ack")["type"], "ack");
    }
    // The sweep runs every second: three of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = xread_calls(&redis).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = xread_calls(&redis).await;
    assert_eq!(after - before, 0, "XREADs for streams that do not exist");
    // A first publish still arrives live (its doorbell rings the topic).
    node.publish_direct("madeup.t7", "1", None).await;
    let p = c.recv_pubs(1).await;
    assert_eq!(
        (p[0]["topic"].as_str(), p[0]["seq"].as_u64()),
        (Some("madeup.t7"), Some(1))
    );
}

#[tokio::test]
async fn topics_beyond_the_node_cap_are_refused_without_strikes() {
    let node = start_node(|c| {
        c.max_topics = 3;
        c.rate_limit_strikes = 2;
    })
    .await;
    let mut a = node.client().await;
    for t in ["m.a", "m.b", "m.c"] {
        a.subscribe(json!({ "topic": t })).await;
    }
    let mut b = node.client().await;
    for _ in 0..3 {
        b.send_json(json!({"type": "subscribe", "topics": ["m.d", "m.e"]}))
            .await;
        let e = b.recv().await.expect("error");
        assert_eq!(e["code"], "TOO_MANY_SUBSCRIPTIONS", "{e}");
        assert_eq!(e["details"]["node_topic_limit"], 3);
        assert_eq!(e["details"]["refused"], 2);
    }
    // Not the client's fault: no strike, the connection stays, followed topics work.
    let ack = b.subscribe(json!({"topic": "m.b"})).await;
    assert_eq!(ack["payload"]["subscribed"], true);
    b.ping_pong("open").await;
}

#[tokio::test]
async fn a_socket_that_takes_no_bytes_is_cut_as_a_slow_consumer_on_a_quiet_topic() {
    let node = start_node(|c| {
        c.connection_timeout = Duration::from_secs(2);
        c.queue_size = 100_000;
    })
    .await;
    let mut raw = RawClient::connect(node.addr, "/ws/market/Q")
        .await
        .expect("upgrade");
    assert!(matches!(
        raw.read_frame(Duration::from_secs(5)).await,
        Ok(RawFrame::Text(_))
    ));
    node.wait_metric("sluice_connections_active", 1.0, Duration::from_secs(5))
        .await;
    // 48 × 512 KB: more than both socket buffers hold, far fewer than the outbox
    // takes, then nothing more: the outbox never fills, only the socket is stuck.
    let payload = format!("\"{}\"", "x".repeat(512 * 1024));
    for _ in 0..48 {
        node.publish_direct("prices.Q", &payload, None).await;
    }
    let started = std::time::Instant::now();
    node.wait_metric(SLOW, 1.0, Duration::from_secs(30)).await;
    let took = started.elapsed();
    println!("cut after {took:?} with a 2 s connection timeout");
    assert!(
        took >= Duration::from_millis(1500),
        "cut before the timeout: {took:?}"
    );
    node.wait_sessions(0, Duration::from_secs(15)).await;
    assert_eq!(node.metric(SLOW).await, Some(1.0));
}

#[tokio::test]
async fn a_token_expiring_while_the_socket_is_stuck_still_ends_the_session() {
    use sluice_node::config::{AuthMode, JwtKey};
    use sluice_tests::security::{mint, now, Signer};
    const SECRET: &str = "abuse-test-secret-of-at-least-32-bytes";
    let node = start_node(|c| {
        c.jwt_key = Some(JwtKey::Secret(SECRET.into()));
        c.auth = AuthMode::Required;
        c.connection_timeout = Duration::from_secs(120);
        c.jwt_leeway = Duration::ZERO;
        c.queue_size = 100_000;
    })
    .await;
    let token = mint(
        &json!({"sub": "u1", "exp": now() + 4}),
        &Signer::hs256(SECRET),
    );
    let mut raw = RawClient::connect(node.addr, &format!("/ws/market/Z?token={token}"))
        .await
        .expect("upgrade");
    assert!(matches!(
        raw.read_frame(Duration::from_secs(5)).await,
        Ok(RawFrame::Text(_))
    ));
    let payload = format!("\"{}\"", "x".repeat(512 * 1024));
    for _ in 0..48 {
        node.publish_direct("prices.Z", &payload, None).await;
    }
    // Far below the 120 s stall limit: the 4 s token ends it.
    node.wait_sessions(0, Duration::from_secs(20)).await;
    assert_eq!(node.metric(SLOW).await.unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn a_websocket_ping_flood_spends_the_frame_budget_and_closes_with_4029() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let node = start_node(|c| {
        c.message_rate = 1;
        c.message_burst = 10;
        c.rate_limit_strikes = 5;
    })
    .await;
    let mut c = node.client().await;
    for _ in 0..40 {
        c.inner()
            .feed(Message::Ping(Default::default()))
            .await
            .expect("feed");
    }
    c.inner().flush().await.expect("flush");
    let (frames, close) = frames_until_close(&mut c).await;
    assert_eq!(close, Closed::Code(4029), "{frames:?}");
    // 10 pings fit the burst; refusals 1..4 get an error each, the 5th closes.
    let limited = frames
        .iter()
        .filter(|f| f["code"] == "RATE_LIMIT_EXCEEDED")
        .count();
    assert_eq!(limited, 4, "{frames:?}");
    assert_eq!(node.metric("sluice_rate_limited_total").await, Some(5.0));
}
