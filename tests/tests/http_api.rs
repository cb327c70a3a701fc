//! The HTTP API of SPEC §5: admin auth on every admin route, publish validation,
//! `/health`, `/metrics`, `/connections`, `/topics`.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::{eventually, seqs, start_node, TestNode, ADMIN_TOKEN};

/// Every admin route, with the body a POST needs.
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("POST", "/publish"),
    ("POST", "/broadcast"),
    ("GET", "/connections"),
    ("GET", "/topics"),
    ("GET", "/ws/topics"),
    ("GET", "/cluster"),
];

async fn call(node: &TestNode, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    match method {
        "POST" => {
            let body = json!({"topic": "auth.check", "payload": {"x": 1}}).to_string();
            node.post(path, token, &body).await
        }
        _ => node.get_json(path, token).await,
    }
}

fn assert_error_body(body: &Value, code: &str, ctx: &str) {
    assert_eq!(body["code"], code, "{ctx}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{ctx}: error message: {body}"
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let node = start_node(|_| {}).await;
    for (method, path) in ADMIN_ROUTES {
        let ctx = format!("{method} {path}");
        let (s, body) = call(&node, method, path, None).await;
        assert_eq!(s, 401, "{ctx} without a token: {body}");
        assert_error_body(&body, "AUTH_REQUIRED", &ctx);

        let (s, body) = call(&node, method, path, Some("wrong-token")).await;
        assert_eq!(s, 403, "{ctx} with a wrong token: {body}");
        assert_error_body(&body, "FORBIDDEN", &ctx);

        let (s, body) = call(&node, method, path, Some(&format!("{ADMIN_TOKEN}x"))).await;
        assert_eq!(s, 403, "{ctx} with a longer token: {body}");

        let (s, body) = call(&node, method, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(s, 200, "{ctx} with the token: {body}");
    }
    // Two publishes went through (/publish and /broadcast), nothing else did.
    let mut c = node.client().await;
    let ack = c.subscribe(json!({"topic": "auth.check"})).await;
    assert_eq!(ack["payload"]["head_seq"], 2, "{ack}");

    // A non-Bearer scheme is no token at all.
    let resp = reqwest::Client::new()
        .get(node.http_url("/connections"))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn without_a_configured_admin_token_every_admin_route_is_forbidden() {
    let node = start_node(|cfg| cfg.admin_token = None).await;
    for (method, path) in ADMIN_ROUTES {
        let ctx = format!("{method} {path}");
        for token in [None, Some(ADMIN_TOKEN), Some("")] {
            let (s, body) = call(&node, method, path, token).await;
            assert_eq!(s, 403, "{ctx} with {token:?}: {body}");
            assert_error_body(&body, "FORBIDDEN", &ctx);
        }
    }
    // The unauthenticated routes still answer.
    for path in ["/health", "/ws/health", "/ready", "/metrics"] {
        assert_eq!(node.get(path, None).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn publish_answers_the_position_and_bad_bodies_get_400_with_a_json_error() {
    let node = start_node(|_| {}).await;
    let (s, ok) = node
        .post(
            "/publish",
            Some(ADMIN_TOKEN),
            &json!({"topic": "pub.ok", "payload": {"a": 1}}).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["status"], "published", "{ok}");
    assert_eq!(ok["topic"], "pub.ok", "{ok}");
    assert_eq!(ok["seq"], 1, "{ok}");
    let epoch = ok["epoch"].as_str().expect("epoch").to_owned();
    assert!(!epoch.is_empty());
    let (s, ok) = node
        .post(
            "/broadcast",
            Some(ADMIN_TOKEN),
            &json!({"topic": "pub.ok", "data": [1, 2], "type": "alert", "snapshot": {"s": 2}})
                .to_string(),
        )
        .await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["seq"], 2, "{ok}");
    assert_eq!(ok["epoch"], epoch.as_str(), "{ok}");

    let bad: &[(&str, String, &str)] = &[
        ("not JSON", "{nope".into(), "INVALID_MESSAGE"),
        ("empty body", String::new(), "INVALID_MESSAGE"),
        ("an array", "[1]".into(), "INVALID_MESSAGE"),
        (
            "missing topic",
            json!({"payload": 1}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "topic a number",
            json!({"topic": 3, "payload": 1}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "invalid topic",
            json!({"topic": "a b", "payload": 1}).to_string(),
            "INVALID_TOPIC",
        ),
        (
            "wildcard topic",
            json!({"topic": "a.*", "payload": 1}).to_string(),
            "INVALID_TOPIC",
        ),
        (
            "missing payload",
            json!({"topic": "pub.ok"}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "unknown type",
            json!({"topic": "pub.ok", "payload": 1, "type": "shout"}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "type a number",
            json!({"topic": "pub.ok", "payload": 1, "type": 1}).to_string(),
            "INVALID_MESSAGE",
        ),
    ];
    for (case, body, code) in bad {
        let (s, err) = node.post("/publish", Some(ADMIN_TOKEN), body).await;
        assert_eq!(s, 400, "{case}: {err}");
        assert_error_body(&err, code, case);
    }
    // None of them published anything.
    let (s, ok) = node
        .post(
            "/publish",
            Some(ADMIN_TOKEN),
            &json!({"topic": "pub.ok", "payload": 3}).to_string(),
        )
        .await;
    assert_eq!((s, ok["seq"].as_u64()), (200, Some(3)), "{ok}");
}

#[tokio::test]
async fn health_reports_exactly_the_spec_fields_with_live_values() {
    // No heartbeat may add a frame while the test counts them.
    let node = start_node(|c| c.heartbeat_interval = Duration::from_secs(3600)).await;
    let mut a = node.client().await;
    a.subscribe(json!({"topic": "h.one"})).await;
    let mut b = node.client().await;
    b.subscribe(json!({"topic": "h.one"})).await;
    b.subscribe(json!({"topic": "h.two"})).await;
    node.publish("h.one", json!(1)).await;
    assert_eq!(seqs(&a.recv_pubs(1).await), [1]);
    assert_eq!(seqs(&b.recv_pubs(1).await), [1]);
    // connected + ack (a); connected + 2 acks (b); one delta each. The counter is
    // bumped after the write the client already read, so wait for it, then demand
    // exactly 7 from /health.
    eventually(
        Duration::from_secs(10),
        "7 frames counted as sent",
        || async { node.frames_sent() >= 7 },
    )
    .await;

    for path in ["/health", "/ws/health"] {
        let (s, h) = node.get_json(path, None).await;
        assert_eq!(s, 200, "{path}: {h}");
        let obj = h.as_object().expect("object");
        const SPEC_FIELDS: [&str; 8] = [
            "status",
            "node_id",
            "active_connections",
            "messages_sent",
            "connections_handled",
            "topics_active",
            "uptime_seconds",
            "redis_connected",
        ];
        for field in SPEC_FIELDS {
            assert!(obj.contains_key(field), "{path} lacks {field}: {h}");
        }
        // Beyond the contract's fields only `broker` (which backend serves) is added.
        let extra: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !SPEC_FIELDS.contains(k))
            .collect();
        assert_eq!(extra, ["broker"], "{path}: {h}");
        assert_eq!(h["broker"], "memory", "{h}");
        assert_eq!(h["status"], "healthy", "{h}");
        assert_eq!(
            h["node_id"],
            node.node().state.config.node_id.as_str(),
            "{h}"
        );
        assert_eq!(h["node_id"], a.connected["node_id"], "{h}");
        assert_eq!(h["active_connections"], 2, "{h}");
        assert_eq!(h["connections_handled"], 2, "{h}");
        assert_eq!(h["topics_active"], 2, "{h}");
        assert_eq!(h["redis_connected"], false, "embedded broker: {h}");
        assert!(h["uptime_seconds"].is_u64(), "{h}");
        assert_eq!(h["messages_sent"], 7, "{h}");
    }

    drop(a);
    node.wait_sessions(1, Duration::from_secs(5)).await;
    let (_, h) = node.get_json("/health", None).await;
    assert_eq!(h["active_connections"], 1, "{h}");
    assert_eq!(h["connections_handled"], 2, "{h}");
}

#[tokio::test]
async fn metrics_expose_every_contract_metric_and_a_real_latency_histogram() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    c.subscribe(json!({"topic": "m.t"})).await;
    for i in 1..=3 {
        node.publish("m.t", json!(i)).await;
    }
    assert_eq!(seqs(&c.recv_pubs(3).await), [1, 2, 3]);

    let (s, text) = node.get("/metrics", None).await;
    assert_eq!(s, 200);
    for name in [
        "sluice_connections_active",
        "sluice_connections_total",
        "sluice_messages_sent_total",
        "sluice_messages_received_total",
        "sluice_messages_dropped_total",
        "sluice_slow_consumer_disconnects_total",
        "sluice_rate_limited_total",
        "sluice_auth_failures_total",
        "sluice_delivery_latency_seconds_bucket",
        "sluice_delivery_latency_seconds_sum",
        "sluice_delivery_latency_seconds_count",
    ] {
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE sluice_delivery_latency_seconds histogram"),
        "latency must be a histogram, not a summary:\n{text}"
    );
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("sluice_delivery_latency_seconds_bucket{"))
        .count();
    assert!(buckets >= 5, "{buckets} latency buckets:\n{text}");
    let inf = text
        .lines()
        .find(|l| l.starts_with("sluice_delivery_latency_seconds_bucket{le=\"+Inf\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(inf, Some(3.0), "three deliveries were timed:\n{text}");
    assert_eq!(node.metric("sluice_connections_active").await, Some(1.0));
    assert_eq!(node.metric("sluice_connections_total").await, Some(1.0));
    assert_eq!(
        node.metric("sluice_delivery_latency_seconds_count").await,
        Some(3.0)
    );
    // One subscribe from the client.
    assert_eq!(
        node.metric("sluice_messages_received_total").await,
        Some(1.0)
    );
    assert_eq!(
        node.metric("sluice_slow_consumer_disconnects_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn connections_lists_each_session_with_its_subscriptions() {
    let node = start_node(|_| {}).await;
    let mut a = node.client().await;
    a.subscribe(json!({"topic": "c.b"})).await;
    a.subscribe(json!({"topic": "c.a"})).await;
    let b = node.client().await;

    let (s, v) = node.get_json("/connections", Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 2, "{v}");
    let list = v["connections"].as_array().expect("connections");
    assert_eq!(list.len(), 2, "{v}");
    let find = |id: &Value| {
        list.iter()
            .find(|c| c["connection_id"] == *id)
            .unwrap_or_else(|| panic!("{id} not listed: {v}"))
            .clone()
    };
    let ca = find(&a.connected["connection_id"]);
    let mut subs: Vec<String> = ca["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| s.as_str().expect("topic").to_owned())
        .collect();
    subs.sort();
    assert_eq!(subs, ["c.a", "c.b"], "{ca}");
    assert_eq!(ca["client_ip"], "127.0.0.1", "{ca}");
    assert!(ca["connect_time"].is_string(), "{ca}");
    assert!(ca["last_heartbeat"].is_string(), "{ca}");
    assert!(ca.as_object().expect("obj").contains_key("user"), "{ca}");
    let cb = find(&b.connected["connection_id"]);
    assert_eq!(cb["subscriptions"], json!([]), "{cb}");

    a.send_json(json!({"type": "unsubscribe", "topic": "c.b"}))
        .await;
    let ack = a.recv().await.expect("unsubscribe ack");
    assert_eq!(ack["type"], "ack", "{ack}");
    let (_, v) = node.get_json("/connections", Some(ADMIN_TOKEN)).await;
    let list = v["connections"].as_array().expect("connections");
    let ca = list
        .iter()
        .find(|c| c["connection_id"] == a.connected["connection_id"])
        .expect("a listed");
    assert_eq!(ca["subscriptions"], json!(["c.a"]), "{ca}");
}

#[tokio::test]
async fn topics_show_subscriber_counts_and_head_seqs() {
    let node = start_node(|_| {}).await;
    let mut c1 = node.client().await;
    c1.subscribe(json!({"topic": "tp.x"})).await;
    let mut c2 = node.client().await;
    c2.send_json(json!({"type": "subscribe", "topics": ["tp.x", "tp.y"]}))
        .await;
    for _ in 0..2 {
        assert_eq!(c2.recv().await.expect("ack")["type"], "ack");
    }
    for i in 1..=3 {
        node.publish("tp.x", json!(i)).await;
    }
    node.publish("tp.unwatched", json!(1)).await;
    for path in ["/topics", "/ws/topics"] {
        let (s, v) = node.get_json(path, Some(ADMIN_TOKEN)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            json!({
                "topic_count": 2,
                "topics": {
                    "tp.x": {"subscriber_count": 2, "head_seq": 3},
                    "tp.y": {"subscriber_count": 1, "head_seq": 0},
                },
            }),
            "{path}"
        );
    }
}

#[tokio::test]
async fn cluster_lists_this_node_with_its_connection_count() {
    let node = start_node(|_| {}).await;
    let _c = node.client().await;
    let (s, v) = node.get_json("/cluster", Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 200, "{v}");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(
        nodes[0]["node_id"],
        node.node().state.config.node_id.as_str()
    );
    assert_eq!(nodes[0]["connections"], 1, "{v}");
}

#[tokio::test]
async fn ready_is_200_while_serving() {
    let node = start_node(|_| {}).await;
    let (s, v) = node.get_json("/ready", None).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_without_an_answer() {
    // Every TCP connection counts against SLUICE_MAX_CONNECTIONS from its accept,
    // so a full node closes a new one before reading it: no HTTP status (0).
    let node = start_node(|cfg| cfg.max_connections = 2).await;
    let _a = node.client().await;
    let mut b = node.client().await;
    assert_eq!(
        sluice_tests::WsClient::try_connect(&node.ws_url("/ws"))
            .await
            .err(),
        Some(0)
    );
    b.ping_pong("b-still-served").await;
    b.close().await;
    node.wait_sessions(1, Duration::from_secs(5)).await;
    let mut c = node.client().await;
    c.ping_pong("room-again").await;
}
