//! The live path when a Cluster slot changes master under a connected client, on the
//! loopback 3 + 3 Cluster (a graceful failover, and a slot migrated to another
//! master with `CLUSTER SETSLOT`): Redis drops the subscribers of the moved shard channels
//! (a `sunsubscribe` push, which fred swallows) while the node's subscriber
//! connection stays up. The reader must subscribe again on the new master and read
//! what it missed from the stream: the client, never disconnected, receives every
//! publication of every topic exactly once and in order.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{json, Value};
use sluice_common::{keys, publisher::Publisher};
use sluice_tests::{
    eventually,
    redis_topology::{cli, TestCluster},
    start_node, WsClient,
};

/// Publishes `{"n": n}` to `topic`, retrying while the cluster settles; returns the seq.
async fn publish(engine: &Publisher, topic: &str, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match engine.publish(topic, &json!({ "n": n })).await {
            Ok(p) => return p.seq,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{topic}: no publish for 20 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads publications until every topic reached `last`; returns each topic's seqs.
async fn read_until(
    c: &mut WsClient,
    topics: &[String],
    last: u64,
    within: Duration,
) -> BTreeMap<String, Vec<u64>> {
    let mut got: BTreeMap<String, Vec<u64>> = topics.iter().map(|t| (t.clone(), vec![])).collect();
    let deadline = tokio::time::Instant::now() + within;
    while got.values().any(|s| s.last() != Some(&last)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v): Option<Value> = c.recv_within(left).await else {
            panic!("no publication within {within:?}; so far {got:?}");
        };
        if v["type"] == "delta" {
            let t = v["topic"].as_str().expect("topic").to_owned();
            got.get_mut(&t)
                .unwrap_or_else(|| panic!("a frame of {t}, not subscribed"))
                .push(v["seq"].as_u64().expect("seq"));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_client_keeps_receiving_when_its_topics_slot_fails_over_gracefully() {
    let cluster = TestCluster::start();
    let url = cluster.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = cluster.publisher(1).await;
    let topics: Vec<String> = (0..9).map(|i| format!("prices.MOVE{i}")).collect();
    let mut c = node.client().await;
    for t in &topics {
        let ack = c.subscribe(json!({ "topic": t })).await;
        assert_eq!(ack["payload"]["subscribed"], true, "{ack}");
    }
    for n in 1..=4 {
        for t in &topics {
            assert_eq!(publish(&engine, t, n).await, n);
        }
    }
    let before = read_until(&mut c, &topics, 4, Duration::from_secs(10)).await;
    for (t, s) in &before {
        assert_eq!(s, &[1, 2, 3, 4], "{t} before the failover");
    }
    let victim = cluster.owner(&keys::meta(&topics[0]));
    let on_victim: Vec<&String> = topics
        .iter()
        .filter(|t| cluster.owner(&keys::meta(t)) == victim)
        .collect();

    // The victim's replica takes over its slots; the old master stays up as a
    // replica and drops the shard-channel subscribers of those slots.
    let replica = cluster.replica_of(victim);
    cli(replica, &["CLUSTER", "FAILOVER"]);
    eventually(
        Duration::from_secs(15),
        "replica promoted, old master demoted",
        || async {
            cli(replica, &["ROLE"]).starts_with("master")
                && cli(victim, &["ROLE"]).starts_with("slave")
        },
    )
    .await;
    assert_eq!(cluster.owner(&keys::meta(on_victim[0])), replica);

    for n in 5..=10 {
        for t in &topics {
            assert_eq!(publish(&engine, t, n).await, n, "{t}");
        }
    }
    let after = read_until(&mut c, &topics, 10, Duration::from_secs(15)).await;
    for (t, s) in &after {
        assert_eq!(
            s,
            &(5..=10).collect::<Vec<_>>(),
            "{t} after the failover (on the moved master: {})",
            on_victim.contains(&t)
        );
    }
    // Live again, not only caught up: one more publish arrives on its own.
    for t in &on_victim {
        assert_eq!(publish(&engine, t, 11).await, 11);
    }
    let topics_moved: Vec<String> = on_victim.iter().map(|t| (*t).clone()).collect();
    let live = read_until(&mut c, &topics_moved, 11, Duration::from_secs(5)).await;
    for (t, s) in &live {
        assert_eq!(s, &[11], "{t}");
    }
    assert!(
        !on_victim.is_empty() && on_victim.len() < topics.len(),
        "topics on the victim: {on_victim:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_client_keeps_receiving_when_its_topics_slot_migrates_to_another_master() {
    let cluster = TestCluster::start();
    let url = cluster.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = cluster.publisher(1).await;
    let topic = "prices.MIGRATE".to_owned();
    let other = "prices.STAYS".to_owned();
    let both = [topic.clone(), other.clone()];
    let mut c = node.client().await;
    for t in &both {
        let ack = c.subscribe(json!({ "topic": t })).await;
        assert_eq!(ack["payload"]["subscribed"], true, "{ack}");
    }
    for n in 1..=3 {
        for t in &both {
            assert_eq!(publish(&engine, t, n).await, n);
        }
    }
    let before = read_until(&mut c, &both, 3, Duration::from_secs(10)).await;
    assert_eq!(before[&topic], [1, 2, 3]);

    // Move the topic's slot, with its keys, from its master to another one.
    let meta = keys::meta(&topic);
    let from = cluster.owner(&meta);
    let to = *cluster
        .masters()
        .iter()
        .find(|&&m| m != from)
        .expect("another master");
    let slot = cli(from, &["CLUSTER", "KEYSLOT", &meta]).trim().to_owned();
    let id = |p: u16| cli(p, &["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(from), id(to));
    cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let keys_in_slot = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
    let mut migrate = vec![
        "MIGRATE".to_owned(),
        "127.0.0.1".to_owned(),
        to.to_string(),
        String::new(),
        "0".to_owned(),
        "5000".to_owned(),
        "KEYS".to_owned(),
    ];
    migrate.extend(keys_in_slot.lines().map(str::to_owned));
    assert!(migrate.len() > 7, "no keys in slot {slot}");
    let args: Vec<&str> = migrate.iter().map(String::as_str).collect();
    assert_eq!(cli(from, &args).trim(), "OK");
    for m in cluster.masters() {
        cli(m, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    eventually(
        Duration::from_secs(10),
        "the slot served by its new master",
        || async { cluster.owner(&meta) == to },
    )
    .await;

    for n in 4..=8 {
        for t in &both {
            assert_eq!(publish(&engine, t, n).await, n, "{t}");
        }
    }
    let after = read_until(&mut c, &both, 8, Duration::from_secs(15)).await;
    for (t, s) in &after {
        assert_eq!(s, &(4..=8).collect::<Vec<_>>(), "{t} after the migration");
    }
}
