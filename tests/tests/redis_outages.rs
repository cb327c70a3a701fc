//! Nodes sharing one Redis when Redis or the nodes come and go: a Redis restart
//! or pause, a node started while Redis is down, a function library flushed
//! behind the node's back, and the node registry (draining and dead nodes).
//! Redis runs in a testcontainers container per test (see `sluice_tests::redis`).

use std::time::Duration;

use serde_json::{json, Value};
use sluice_common::publisher::PublishKind;
use sluice_tests::{eventually, redis::TestRedis, seqs, start_redis_node, TestNode};

async fn cluster_view(node: &TestNode) -> Value {
    let (status, body) = node
        .get_json("/cluster", Some(sluice_tests::ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn node_ids(view: &Value) -> Vec<String> {
    let mut ids: Vec<String> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node_id"].as_str().expect("node_id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_sessions_and_delivery_continues() {
    let redis = TestRedis::start().await;
    let (a, b) = (
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    );
    let topic = "prices.RESTART";
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    ca.subscribe_to(topic).await;
    cb.subscribe_to(topic).await;
    a.publish_n(topic, 1, 5).await;
    assert_eq!(seqs(&ca.recv_pubs(5).await), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&cb.recv_pubs(5).await), [1, 2, 3, 4, 5]);

    redis.stop().await;
    for n in [&a, &b] {
        eventually(
            Duration::from_secs(10),
            "/ready 503 while Redis is down",
            || async { n.ready_status().await == 503 },
        )
        .await;
        assert_eq!(n.redis_connected().await, false);
    }
    // Sessions stay open meanwhile.
    ca.send_json(json!({ "type": "ping", "correlation_id": "still-here" }))
        .await;
    assert_eq!(ca.recv().await.unwrap()["correlation_id"], "still-here");

    redis.start_again().await;
    for n in [&a, &b] {
        eventually(
            Duration::from_secs(20),
            "/ready 200 after Redis is back",
            || async { n.ready_status().await == 200 },
        )
        .await;
        assert_eq!(n.redis_connected().await, true);
    }
    // Data survived the restart (the image persists), so seqs continue.
    let (seq, _) = b.publish(topic, json!({ "i": 6 })).await;
    assert_eq!(seq, 6);
    b.publish_n(topic, 7, 10).await;
    assert_eq!(seqs(&ca.recv_pubs(5).await), [6, 7, 8, 9, 10]);
    assert_eq!(seqs(&cb.recv_pubs(5).await), [6, 7, 8, 9, 10]);
    assert_eq!(a.get_json("/health", None).await.1["active_connections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pause_makes_nodes_unready_then_they_recover_by_themselves() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |_| {}).await;
    let topic = "devices.u9";
    let mut c = node.client().await;
    c.subscribe_to(topic).await;
    node.publish_n(topic, 1, 3).await;
    assert_eq!(seqs(&c.recv_pubs(3).await), [1, 2, 3]);

    redis.pause().await;
    eventually(
        Duration::from_secs(10),
        "/ready 503 while Redis is paused",
        || async { node.ready_status().await == 503 },
    )
    .await;
    redis.unpause().await;
    eventually(
        Duration::from_secs(20),
        "/ready 200 after unpause",
        || async { node.ready_status().await == 200 },
    )
    .await;

    node.publish_n(topic, 4, 8).await;
    assert_eq!(seqs(&c.recv_pubs(5).await), [4, 5, 6, 7, 8]);
    node.publish_n(topic, 9, 9).await;
    c.expect_sentinel(topic, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_function_library_is_reloaded_on_the_next_publish() {
    use fred::interfaces::{ClientLike, FunctionInterface};
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |_| {}).await;
    let client = redis.client().await;
    client.function_flush::<()>(false).await.unwrap();
    let (seq, _) = node.publish("prices.RELOAD", json!(1)).await;
    assert_eq!(seq, 1);
    let engine = redis.publisher().await;
    let pos = engine
        .publish_json("prices.RELOAD", PublishKind::Alert, "{\"a\":1}", None)
        .await
        .unwrap();
    assert_eq!(pos.seq, 2);
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lists_live_nodes_marks_draining_ones_and_drops_dead_ones() {
    let redis = TestRedis::start().await;
    let ttl = |c: &mut sluice_node::Config| c.registry_ttl = Duration::from_secs(3);
    let a = start_redis_node(&redis, |c| {
        ttl(c);
        c.node_id = "reg-a".into();
    })
    .await;
    let b = start_redis_node(&redis, |c| {
        ttl(c);
        c.node_id = "reg-b".into();
        c.drain = Duration::from_secs(6);
    })
    .await;
    let c = start_redis_node(&redis, |c| {
        ttl(c);
        c.node_id = "reg-c".into();
    })
    .await;
    let _clients = [a.client().await, a.client().await];
    eventually(
        Duration::from_secs(5),
        "all three nodes registered with their connections",
        || async {
            let v = cluster_view(&c).await;
            node_ids(&v) == ["reg-a", "reg-b", "reg-c"]
                && v["nodes"][0]["connections"] == 2
                && v["nodes"][0]["address"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
        },
    )
    .await;

    // Draining: says so at once, then leaves the registry when it exits.
    // Two sessions: the second closes drain / 2 = 3 s in, so the draining state
    // (and its registry mark) lasts at least that long.
    let _held = [b.client().await, b.client().await];
    let drain = tokio::spawn(b.shutdown());
    eventually(
        Duration::from_secs(6),
        "the draining node is marked draining",
        || async {
            let v = cluster_view(&a).await;
            v["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["node_id"] == "reg-b" && n["draining"] == true)
            })
        },
    )
    .await;
    drain.await.unwrap();
    assert_eq!(
        node_ids(&cluster_view(&a).await),
        ["reg-a", "reg-c"],
        "a cleanly stopped node deregisters"
    );

    // Killed: no goodbye; it drops out when its record expires.
    c.kill();
    eventually(
        Duration::from_secs(15),
        "the killed node disappears after its TTL",
        || async { node_ids(&cluster_view(&a).await) == ["reg-a"] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_starts_unready_and_recovers() {
    let redis = TestRedis::start().await;
    redis.stop().await;
    let node = start_redis_node(&redis, |_| {}).await;
    assert_eq!(node.ready_status().await, 503, "not ready without Redis");
    assert_eq!(node.redis_connected().await, false);
    redis.start_again().await;
    eventually(
        Duration::from_secs(20),
        "ready once Redis is up",
        || async { node.ready_status().await == 200 },
    )
    .await;
    let mut c = node.client().await;
    c.subscribe_to("prices.LATE").await;
    let (seq, _) = node.publish("prices.LATE", json!(1)).await;
    assert_eq!(seq, 1, "the library was loaded when Redis came up");
    assert_eq!(seqs(&c.recv_pubs(1).await), [1]);
}
