//! Nodes sharing one Redis: cross-node fan-out, resume on any node, concurrent
//! engines, history loss, and the function's argument checks. Redis outages and
//! the node registry are in `redis_outages.rs`. Redis runs in a testcontainers
//! container per test (see `sluice_tests::redis`).

use std::{collections::HashSet, time::Duration};

use serde_json::json;
use sluice_tests::{assert_consecutive, redis::TestRedis, seqs, start_redis_node};

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
            let ack = c.subscribe_to("prices.FANOUT").await;
            assert_eq!(ack["head_seq"], 0);
            clients.push(c);
        }
    }
    let engine = redis.publisher().await;
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
    let engine = redis.publisher().await;
    let topic = "orders.u1";

    let mut c = a.client().await;
    c.subscribe_to(topic).await;
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
        c.subscribe_to(topic).await;
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for engine_id in 0..4u64 {
        let engine = redis.publisher().await;
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
    let (_, epoch) = node.publish_n(topic, 1, 44).await;
    node.publish_body(
        json!({ "topic": topic, "payload": { "i": 45 }, "snapshot": { "state": 45 } }),
    )
    .await;
    node.publish_n(topic, 46, 50).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_resume_is_not_recovered_and_live_continues_under_the_new_epoch() {
    let redis = TestRedis::start().await;
    let (a, b) = (
        start_redis_node(&redis, |_| {}).await,
        start_redis_node(&redis, |_| {}).await,
    );
    let topic = "exposure.u3";
    let mut live = a.client().await;
    live.subscribe_to(topic).await;
    let (_, old_epoch) = a.publish_n(topic, 1, 20).await;
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
