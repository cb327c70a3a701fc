//! `redis-cluster://` against a 3-master + 3-replica Redis Cluster on loopback:
//! topics spread over every master, each topic's keys in one slot; publish
//! (node and `Publisher`), state, history and resume work; the function library is
//! on every master and comes back on a master that lost it; a replica promoted by
//! `CLUSTER FAILOVER` keeps serving the topics of its slots.
//!
//! Live delivery across slots depends on the per-topic live path (branch `live`);
//! this file proves the paths that do not.

use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use serde_json::json;
use sluice_common::{
    keys,
    position::epoch_cmp,
    publisher::{PublishError, Publisher},
    redis_client::{RedisSettings, Replicas},
};
use sluice_tests::{
    eventually,
    redis_topology::{cli, library_on, TestCluster},
    seqs, start_node, ADMIN_TOKEN,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_publish_state_history_and_resume_on_every_master() {
    let cluster = TestCluster::start();
    let url = cluster.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        assert!(library_on(m), "library missing on master {m}");
    }

    // 30 topics through the Publisher (waiting for each master's replica).
    let engine = cluster.publisher(2).await;
    let topics: Vec<String> = (0..30).map(|i| format!("prices.CL{i:02}")).collect();
    let mut epochs = BTreeMap::new();
    for round in 1..=5u64 {
        for t in &topics {
            let p = engine
                .publish(t, &json!({ "round": round }))
                .await
                .expect("publish on Cluster");
            assert_eq!(p.seq, round, "{t}");
            epochs.insert(t.clone(), p.epoch);
        }
    }
    // Every topic's keys sit on one master; every master holds some topics.
    let mut per_master: BTreeMap<u16, usize> = BTreeMap::new();
    for t in &topics {
        let m = cluster.owner(&keys::meta(t));
        assert_eq!(cluster.owner(&keys::stream(t)), m, "{t}'s keys split");
        *per_master.entry(m).or_default() += 1;
    }
    assert_eq!(per_master.len(), 3, "topics by master: {per_master:?}");

    // The node's HTTP publish, state and history on topics of every master.
    for t in &topics {
        let (seq, epoch) = node.publish(t, json!({ "round": 6 })).await;
        assert_eq!((seq, &epoch), (6, &epochs[t]));
        let (status, state) = node
            .get_json(&format!("/topics/{t}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(status, 200, "{state}");
        assert_eq!(state["head_seq"], 6, "{state}");
        let (status, h) = node
            .get_json(
                &format!("/topics/{t}/history?from_seq=2&limit=3"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(status, 200, "{h}");
        let msgs = h["messages"].as_array().expect("messages").clone();
        assert_eq!(seqs(&msgs), vec![2, 3, 4], "{t}: {h}");
    }

    // Resume on a WebSocket from Redis' history.
    let t = &topics[7];
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({ "topic": t, "resume_from_seq": 3, "epoch": epochs[t] }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(seqs(&c.recv_pubs(4).await), vec![3, 4, 5, 6]);

    // A master that lost the library gets it back: from the health watcher on
    // its own, and on the spot when a publish finds it missing.
    let (a, b) = (masters[0], masters[1]);
    cli(a, &["FUNCTION", "FLUSH", "SYNC"]);
    assert!(!library_on(a));
    eventually(
        Duration::from_secs(10),
        "library reloaded on the flushed master",
        || async { library_on(a) },
    )
    .await;
    let on_b = topics
        .iter()
        .find(|t| cluster.owner(&keys::meta(t)) == b)
        .expect("a topic on b");
    cli(b, &["FUNCTION", "FLUSH", "SYNC"]);
    let (seq, _) = node.publish(on_b, json!({ "round": 7 })).await;
    assert_eq!(seq, 7, "a publish reloads the library and retries once");
    assert!(library_on(b));

    // Asking for two replicas where each master has one: written, then reported.
    let greedy = Publisher::connect_with(
        &url,
        1,
        &RedisSettings {
            replicas: Replicas::Exactly(2),
            replica_timeout: Duration::from_millis(300),
            tls_ca: None,
        },
    )
    .await
    .expect("publisher");
    let on_a = topics
        .iter()
        .find(|t| cluster.owner(&keys::meta(t)) == a)
        .expect("a topic on a");
    match greedy.publish(on_a, &json!({ "round": 7 })).await {
        Err(PublishError::NotReplicated(n)) => {
            assert_eq!((n.position.seq, n.acked, n.wanted), (7, 1, 2));
        }
        other => panic!("expected NotReplicated, got {other:?}"),
    }

    // A replica takes over its master's slots (graceful failover): the topics it
    // now serves keep their history, publishing goes on at the next seq under a
    // continuation epoch (a new master), and a resume from the old epoch is
    // recovered.
    let t = topics
        .iter()
        .find(|t| cluster.owner(&keys::meta(t)) == masters[2])
        .expect("a topic on the third master")
        .clone();
    let replica = cluster.replica_of(masters[2]);
    cli(replica, &["CLUSTER", "FAILOVER"]);
    eventually(Duration::from_secs(15), "replica promoted", || async {
        cli(replica, &["ROLE"]).starts_with("master")
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let seq = loop {
        match engine.publish(&t, &json!({ "round": 8 })).await {
            Ok(p) => {
                assert_eq!(
                    epoch_cmp(&p.epoch, &epochs[&t]),
                    Ordering::Greater,
                    "a continuation epoch after the failover"
                );
                break p.seq;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no publish after failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(seq, 7, "{t}: history kept across the failover");
    assert_eq!(cluster.owner(&keys::meta(&t)), replica);
    assert!(library_on(replica));
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({ "topic": t, "resume_from_seq": 5, "epoch": epochs[&t] }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(seqs(&c.recv_pubs(3).await), vec![5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_every_acknowledged_publish_survives() {
    let mut cluster = TestCluster::start();
    let url = cluster.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = cluster.publisher(2).await;
    let topics: Vec<String> = (0..12).map(|i| format!("trades.KILL{i:02}")).collect();
    let mut epochs = BTreeMap::new();
    for t in &topics {
        let p = engine
            .publish(t, &json!({ "id": 0 }))
            .await
            .expect("first publish");
        epochs.insert(t.clone(), p.epoch);
    }
    let victim = cluster.owner(&keys::meta(&topics[0]));
    let replica = cluster.replica_of(victim);

    // Publish round-robin over all topics; kill the victim after 60 acknowledged.
    // acked: topic -> seq -> id; a failed call is retried with the same id.
    let mut acked: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for t in &topics {
        acked.entry(t.clone()).or_default().insert(1, 0);
    }
    let owner_at_start: BTreeMap<String, u16> = topics
        .iter()
        .map(|t| (t.clone(), cluster.owner(&keys::meta(t))))
        .collect();
    let (mut id, mut count, mut killed, mut failures) = (1u64, 0usize, false, 0u32);
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    let mut victim_after_kill = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while count < 240 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not recover: {count} acknowledged, {failures} failures"
        );
        let t = &topics[(id as usize) % topics.len()];
        match engine.publish(t, &json!({ "id": id })).await {
            Ok(p) => {
                // The killed master's topics go on under continuation epochs.
                let newest = latest.entry(t.clone()).or_insert_with(|| epochs[t].clone());
                assert_ne!(
                    epoch_cmp(&p.epoch, newest),
                    Ordering::Less,
                    "{t}: epochs only move on"
                );
                *newest = p.epoch.clone();
                if killed && owner_at_start[t] == victim {
                    victim_after_kill += 1;
                }
                let before = acked.get_mut(t).expect("topic").insert(p.seq, id);
                assert!(before.is_none(), "{t} seq {} acknowledged twice", p.seq);
                id += 1;
                count += 1;
            }
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if count == 60 && !killed {
            let n = cluster
                .nodes
                .iter_mut()
                .find(|n| n.port == victim)
                .expect("victim process");
            n.kill();
            killed = true;
        }
    }
    // fred holds commands while it reconnects and re-routes them to the promoted
    // replica, so failed calls are possible but not required; what must hold is
    // that the victim's topics were published to after the kill, on the new master.
    assert!(
        victim_after_kill > 0,
        "no publish to the killed master's topics after the kill"
    );
    assert!(
        cli(replica, &["ROLE"]).starts_with("master"),
        "replica promoted"
    );
    assert!(library_on(replica));

    // Every topic's history holds every acknowledged publish at its seq, gap-free.
    for t in &topics {
        let (status, h) = node
            .get_json(
                &format!("/topics/{t}/history?from_seq=1&limit=1000"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["epoch"], latest[t].as_str(), "{t}: {h}");
        let msgs = h["messages"].as_array().expect("messages").clone();
        let s = seqs(&msgs);
        assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>(), "{t}: gap-free");
        for (seq, id) in &acked[t] {
            let m = msgs
                .get((*seq - 1) as usize)
                .unwrap_or_else(|| panic!("{t}: acknowledged seq {seq} missing"));
            assert_eq!(m["payload"]["id"], *id, "{t} seq {seq}");
        }
    }
    // And a client resuming a topic of the killed master gets it from the new one.
    let t = &topics[0];
    let last = *acked[t].keys().last().expect("acked");
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({ "topic": t, "resume_from_seq": 1, "epoch": epochs[t] }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(
        seqs(&c.recv_pubs_until(last).await),
        (1..=last).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shuts_down_promptly_when_the_whole_cluster_is_gone() {
    let cluster = TestCluster::start();
    let url = cluster.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let (seq, _) = node.publish("prices.GONE", json!({ "x": 1 })).await;
    assert_eq!(seq, 1);
    drop(cluster); // every Redis process killed
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), node.shutdown())
        .await
        .expect("shutdown finishes without Redis");
    assert!(started.elapsed() < Duration::from_secs(15));
}
