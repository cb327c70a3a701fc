//! Nodes sharing one Redis: cross-node fan-out, resume on any node, concurrent
//! engines, history loss, and Redis outages. Redis runs in a testcontainers
//! container per test (see `sluice_tests::redis`).

use std::{collections::HashSet, time::Duration};

use serde_json::{json, Value};
use sluice_common::publisher::{PublishKind, Publisher};
use sluice_tests::{eventually, redis::TestRedis, seqs, start_redis_node, TestNode, WsClient};

async fn publisher(redis: &TestRedis) -> Publisher {
    Publisher::connect(&redis.url, 2)
        .await
        .expect("publisher connects")
}

/// Subscribes `client` to `topic` and returns the ack payload.
async fn sub(client: &mut WsClient, topic: &str) -> Value {
    client.subscribe(json!({ "topic": topic })).await["payload"].clone()
}

fn assert_consecutive(seqs: &[u64], from: u64, to: u64, who: &str) {
    let want: Vec<u64> = (from..=to).collect();
    assert_eq!(
        seqs,
        want.as_slice(),
        "{who} did not get exactly {from}..={to} in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_on_every_node_gets_every_message_once_in_seq_order() {
    let redis = TestRedis::start().await;
    let nodes = [
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    ];
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut c = node.client().await;
            let ack = sub(&mut c, "prices.FANOUT").await;
            assert_eq!(ack["head_seq"], 0);
            clients.push(c);
        }
    }
    let engine = publisher(&redis).await;
    let mut epoch = String::new();
    for i in 1..=300u64 {
        let pos = engine
            .publish("prices.FANOUT", &json!({ "i": i }))
            .await
            .unwrap();
        assert_eq!(pos.seq, i);
        epoch = pos.epoch;
    }
    for (n, c) in clients.iter_mut().enumerate() {
        let pubs = c.recv_pubs(300).await;
        assert_consecutive(&seqs(&pubs), 1, 300, &format!("client {n}"));
        assert!(pubs
            .iter()
            .all(|p| p["epoch"] == epoch.as_str() && p["type"] == "delta"));
        assert!(pubs
            .iter()
            .enumerate()
            .all(|(i, p)| p["payload"]["i"] == (i as u64 + 1)));
    }
    // A sentinel behind the 300: each client's very next frame must be it.
    engine
        .publish("prices.FANOUT", &json!({ "sentinel": true }))
        .await
        .unwrap();
    for c in &mut clients {
        c.expect_sentinel("prices.FANOUT", 301).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_gets_exactly_the_missed_messages_while_publishes_race() {
    let redis = TestRedis::start().await;
    let (a, b) = (
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    );
    let engine = publisher(&redis).await;
    let topic = "orders.u1";

    let mut c = a.client().await;
    sub(&mut c, topic).await;
    let mut epoch = String::new();
    for i in 1..=100u64 {
        epoch = engine
            .publish(topic, &json!({ "i": i }))
            .await
            .unwrap()
            .epoch;
    }
    let seen = c.recv_pubs(100).await;
    assert_consecutive(&seqs(&seen), 1, 100, "first connection");
    c.close().await;

    for i in 101..=200u64 {
        engine.publish(topic, &json!({ "i": i })).await.unwrap();
    }
    // An engine keeps publishing while the client resumes on the other node.
    let racing = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for i in 201..=400u64 {
                engine.publish(topic, &json!({ "i": i })).await.unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let mut c = b.client().await;
    let ack = c
        .subscribe(json!({ "topic": topic, "resume_from_seq": 101, "epoch": epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    racing.await.unwrap();
    let got = c.recv_pubs(300).await;
    assert_consecutive(&seqs(&got), 101, 400, "resumed connection");
    assert!(got.iter().all(|p| p["epoch"] == epoch.as_str()));
    // No duplicate after 400: the next frame is the sentinel 401.
    engine
        .publish(topic, &json!({ "sentinel": true }))
        .await
        .unwrap();
    c.expect_sentinel(topic, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_engines_get_gap_free_seqs_and_every_node_delivers_the_same_order() {
    let redis = TestRedis::start().await;
    let nodes = [
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    ];
    let topic = "auctions.A1";
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = n.client().await;
        sub(&mut c, topic).await;
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for engine_id in 0..4u64 {
        let engine = publisher(&redis).await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..100u64 {
                got.push(
                    engine
                        .publish(topic, &json!({ "engine": engine_id, "i": i }))
                        .await
                        .unwrap()
                        .seq,
                );
            }
            got
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_consecutive(&all, 1, 400, "the seqs handed to engines");
    let mut orders = Vec::new();
    for c in &mut clients {
        let pubs = c.recv_pubs(400).await;
        assert_consecutive(&seqs(&pubs), 1, 400, "a client");
        orders.push(
            pubs.iter()
                .map(|p| p["payload"].clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(orders[0], orders[1], "nodes delivered different orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_older_than_history_gets_recovered_false_and_the_snapshot() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| c.history_size = 10).await;
    let topic = "positions.u7";
    let (_, epoch) = publish_n(&node, topic, 1, 44).await;
    node.publish_body(
        json!({ "topic": topic, "payload": { "i": 45 }, "snapshot": { "state": 45 } }),
    )
    .await;
    publish_n(&node, topic, 46, 50).await;

    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({ "topic": topic, "resume_from_seq": 5, "epoch": epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], false);
    assert_eq!(ack["payload"]["head_seq"], 50);
    let pubs = c.recv_pubs(6).await;
    assert_eq!(pubs[0]["type"], "snapshot");
    assert_eq!(pubs[0]["seq"], 45);
    assert_eq!(pubs[0]["payload"], json!({ "state": 45 }));
    assert_consecutive(&seqs(&pubs[1..]), 46, 50, "deltas after the snapshot");

    // Within the retained history (41..=50) the same request recovers.
    let mut c2 = node.client().await;
    let ack = c2
        .subscribe(json!({ "topic": topic, "resume_from_seq": 41, "epoch": epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true);
    assert_consecutive(
        &seqs(&c2.recv_pubs(10).await),
        41,
        50,
        "resume within history",
    );
}

async fn publish_n(node: &TestNode, topic: &str, from: u64, to: u64) -> (u64, String) {
    let mut last = (0, String::new());
    for i in from..=to {
        last = node.publish(topic, json!({ "i": i })).await;
        assert_eq!(last.0, i);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_resume_is_not_recovered_and_live_continues_under_the_new_epoch() {
    let redis = TestRedis::start().await;
    let (a, b) = (
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    );
    let topic = "exposure.u3";
    let mut live = a.client().await;
    sub(&mut live, topic).await;
    let (_, old_epoch) = publish_n(&a, topic, 1, 20).await;
    assert_consecutive(&seqs(&live.recv_pubs(20).await), 1, 20, "before the flush");

    redis.flushall().await;
    let (seq, new_epoch) = b.publish(topic, json!({ "after": 1 })).await;
    assert_eq!(seq, 1, "seq restarts with the new epoch");
    assert_ne!(new_epoch, old_epoch);
    b.publish(topic, json!({ "after": 2 })).await;
    let pubs = live.recv_pubs(2).await;
    assert_eq!(seqs(&pubs), [1, 2]);
    assert!(
        pubs.iter().all(|p| p["epoch"] == new_epoch.as_str()),
        "live delivery is under the new epoch"
    );

    // Resume at seq 2, inside the new head: only the epoch shows the history is not
    // the one the client came from.
    let mut resumer = b.client().await;
    let ack = resumer
        .subscribe(json!({ "topic": topic, "resume_from_seq": 2, "epoch": old_epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], false);
    assert_eq!(ack["payload"]["epoch"], new_epoch.as_str());
    assert_eq!(ack["payload"]["head_seq"], 2);
    b.publish(topic, json!({ "after": 3 })).await;
    let next = resumer.recv_pubs(1).await;
    assert_eq!(seqs(&next), [3]);
}

async fn ready(node: &TestNode) -> u16 {
    node.get("/ready", None).await.0
}

async fn redis_connected(node: &TestNode) -> Value {
    node.get_json("/health", None).await.1["redis_connected"].clone()
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
    sub(&mut ca, topic).await;
    sub(&mut cb, topic).await;
    publish_n(&a, topic, 1, 5).await;
    assert_eq!(seqs(&ca.recv_pubs(5).await), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&cb.recv_pubs(5).await), [1, 2, 3, 4, 5]);

    redis.stop().await;
    for n in [&a, &b] {
        eventually(
            Duration::from_secs(10),
            "/ready 503 while Redis is down",
            || async { ready(n).await == 503 },
        )
        .await;
        assert_eq!(redis_connected(n).await, false);
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
            || async { ready(n).await == 200 },
        )
        .await;
        assert_eq!(redis_connected(n).await, true);
    }
    // Data survived the restart (the image persists), so seqs continue.
    let (seq, _) = b.publish(topic, json!({ "i": 6 })).await;
    assert_eq!(seq, 6);
    publish_n(&b, topic, 7, 10).await;
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
    sub(&mut c, topic).await;
    publish_n(&node, topic, 1, 3).await;
    assert_eq!(seqs(&c.recv_pubs(3).await), [1, 2, 3]);

    redis.pause().await;
    eventually(
        Duration::from_secs(10),
        "/ready 503 while Redis is paused",
        || async { ready(&node).await == 503 },
    )
    .await;
    redis.unpause().await;
    eventually(
        Duration::from_secs(20),
        "/ready 200 after unpause",
        || async { ready(&node).await == 200 },
    )
    .await;

    publish_n(&node, topic, 4, 8).await;
    assert_eq!(seqs(&c.recv_pubs(5).await), [4, 5, 6, 7, 8]);
    publish_n(&node, topic, 9, 9).await;
    c.expect_sentinel(topic, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_rejects_bad_arguments_and_writes_nothing() {
    use fred::interfaces::{ClientLike, FunctionInterface};
    let redis = TestRedis::start().await;
    let _node = start_redis_node(&redis, |_| {}).await; // loads the library
    let client = redis.client().await;
    let cases: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (vec![], vec!["{}"], "exactly 1 key"),
        (vec!["a", "b"], vec!["{}"], "exactly 1 key"),
        (vec!["bad topic"], vec!["{}"], "topic may only contain"),
        (vec!["a..b"], vec!["{}"], "empty segment"),
        (vec!["ok.topic"], vec![], "payload is missing"),
        (vec!["ok.topic"], vec!["{not json"], "not valid JSON"),
        (vec!["ok.topic"], vec!["{}", "shout"], "type must be"),
        (
            vec!["ok.topic"],
            vec!["{}", "delta", "[1,"],
            "snapshot is not valid JSON",
        ),
        (
            vec!["ok.topic"],
            vec!["{}", "delta", "{}", "[1]"],
            "meta must be a JSON object",
        ),
        (
            vec!["ok.topic"],
            vec!["{}", "delta", "{}", "{}", "extra"],
            "too many arguments",
        ),
    ];
    for (keys, args, expect) in &cases {
        let err = client
            .fcall::<Value_, _, _, _>("sluice_publish", keys.clone(), args.clone())
            .await
            .expect_err("bad arguments must fail");
        assert!(
            err.details().contains(expect),
            "{keys:?} {args:?}: {}",
            err.details()
        );
    }
    assert_eq!(redis.sluice_keys().await, 0, "a refused publish wrote keys");
    let (seq, _): (u64, String) = client
        .fcall("sluice_publish", "ok.topic", vec!["{\"x\":1}"])
        .await
        .unwrap();
    assert_eq!(seq, 1);
    assert_eq!(redis.sluice_keys().await, 2, "meta and stream");
    let _ = client.quit().await;
}

type Value_ = fred::types::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_function_library_is_reloaded_on_the_next_publish() {
    use fred::interfaces::{ClientLike, FunctionInterface};
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |_| {}).await;
    let client = redis.client().await;
    client.function_flush::<()>(false).await.unwrap();
    let (seq, _) = node.publish("prices.RELOAD", json!(1)).await;
    assert_eq!(seq, 1);
    let engine = publisher(&redis).await;
    let pos = engine
        .publish_json("prices.RELOAD", PublishKind::Alert, "{\"a\":1}", None)
        .await
        .unwrap();
    assert_eq!(pos.seq, 2);
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_on_one_node_reaches_subscribers_of_many_topics_on_another() {
    let redis = TestRedis::start().await;
    let (a, b) = (
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    );
    let topics: Vec<String> = (0..40).map(|i| format!("market_data.S{i}")).collect();
    let mut c = b.client().await;
    c.send_json(json!({ "type": "subscribe", "topics": topics }))
        .await;
    for _ in 0..topics.len() {
        assert_eq!(c.recv().await.unwrap()["type"], "ack");
    }
    for (i, t) in topics.iter().enumerate() {
        a.publish(t, json!({ "i": i })).await;
    }
    let pubs = c.recv_pubs(topics.len()).await;
    let got: HashSet<String> = pubs
        .iter()
        .map(|p| p["topic"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), topics.len());
    assert!(pubs.iter().all(|p| p["seq"] == 1));
    let (status, body) = b.get_json("/topics", Some(sluice_tests::ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["topic_count"], 40);
    assert_eq!(body["topics"]["market_data.S3"]["head_seq"], 1);
    assert_eq!(body["topics"]["market_data.S3"]["subscriber_count"], 1);
}

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
    assert_eq!(ready(&node).await, 503, "not ready without Redis");
    assert_eq!(redis_connected(&node).await, false);
    redis.start_again().await;
    eventually(
        Duration::from_secs(20),
        "ready once Redis is up",
        || async { ready(&node).await == 200 },
    )
    .await;
    let mut c = node.client().await;
    sub(&mut c, "prices.LATE").await;
    let (seq, _) = node.publish("prices.LATE", json!(1)).await;
    assert_eq!(seq, 1, "the library was loaded when Redis came up");
    assert_eq!(seqs(&c.recv_pubs(1).await), [1]);
}
