//! A Redis master fails over under traffic, in containers: a 3-master + 3-replica
//! Cluster, and a master + replica with three sentinels, each on a private Docker
//! network of its own (see `sluice_tests::redis_containers`). Two Sluice nodes run
//! in this process and reach Redis at its addresses on that network. Raw counting
//! clients on both nodes (so a duplicate the server sends is seen) follow topics on
//! every master; an engine publishes round-robin, through the `Publisher` and
//! `POST /publish`, both waiting for one replica. Then the master holding some of
//! the topics is killed (SIGKILL), its replica is promoted, and publishing goes on.
//!
//! Proven: live delivery of the failed-over topics resumes on both nodes within a
//! bound; every client receives every message of every topic exactly once, in seq
//! order, from seq 1, with no `recovered: false`; every acknowledged message is in
//! the history at its seq; every message Redis kept without acknowledging it was
//! reported to the engine as an error.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_common::{
    keys,
    publisher::Publisher,
    redis_client::{RedisSettings, Replicas},
};
use sluice_tests::{
    counting::CountingClient,
    eventually,
    redis_containers::{unique_prefix, ContainerCluster, ContainerSentinel},
    spread_traffic::SpreadTraffic,
    start_node, TestNode, ADMIN_TOKEN,
};

/// Counting clients per node.
const CLIENTS_PER_NODE: usize = 2;
/// Live delivery of a failed-over topic must be back on every client within this
/// long of the kill: fault detection (1 s), election, the reader's recovery.
const RESUME_BOUND: Duration = Duration::from_secs(30);
/// Once Redis has acknowledged a publish on the new master, every client must have it
/// within this long (the readers resubscribed; nothing waits for a timeout).
const DELIVERY_BOUND: Duration = Duration::from_secs(5);

fn settings() -> RedisSettings {
    RedisSettings {
        tls_ca: None,
        replicas: Replicas::Auto,
        replica_timeout: Duration::from_millis(1000),
    }
}

async fn node(url: &str, id: &str) -> TestNode {
    let (url, id) = (url.to_owned(), id.to_owned());
    start_node(move |c| {
        c.redis_url = Some(url);
        c.redis = settings();
        c.node_id = id;
    })
    .await
}

/// What one scenario measured.
struct Outcome {
    failures: usize,
    /// From the kill until every client had the first post-failover message.
    since_kill: Duration,
    /// From the engine's acknowledgement of that message until every client had it.
    since_ack: Duration,
}

/// Clients on both nodes, an engine, `kill` under traffic, then every assertion of
/// the module doc. `moved` are the topics whose master `kill` takes down.
async fn scenario(
    url: &str,
    topics: &[String],
    moved: &[String],
    kill: impl FnOnce(),
    promoted: impl Fn() -> bool,
) -> Outcome {
    let (a, b) = (node(url, "fo-a").await, node(url, "fo-b").await);
    // A third node, killed with the master: its client resumes on node a while
    // Redis fails over.
    let c = node(url, "fo-c").await;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut clients = Vec::new();
    for (own, other) in [(&a, &b), (&b, &a)] {
        for _ in 0..CLIENTS_PER_NODE {
            let urls = vec![own.ws_url("/ws"), other.ws_url("/ws")];
            clients.push(CountingClient::start(urls, &refs));
        }
    }
    let resuming = clients.len();
    clients.push(CountingClient::start(
        vec![c.ws_url("/ws"), a.ws_url("/ws")],
        &refs,
    ));
    for c in &clients {
        eventually(
            Duration::from_secs(20),
            "every topic subscribed",
            || async {
                let counts = c.counts();
                topics.iter().all(|t| !counts.topic(t).acks.is_empty())
            },
        )
        .await;
    }
    let engine = Publisher::connect_with(url, 2, &settings())
        .await
        .expect("publisher");
    let traffic = SpreadTraffic::start(
        engine,
        a.http_url(""),
        topics.to_vec(),
        Duration::from_millis(10),
    );
    traffic.wait_acked(topics, 5, Duration::from_secs(30)).await;
    for c in &clients {
        for t in topics {
            c.wait_seq(t, 3, Duration::from_secs(20)).await;
        }
    }

    traffic.phase("failover");
    let killed_at = Instant::now();
    kill();
    c.kill();
    eventually(Duration::from_secs(30), "a replica promoted", || async {
        promoted()
    })
    .await;
    eprintln!("promoted {:?} after the kill", killed_at.elapsed());
    // Until the engine's clients have found the new master, failures are expected.
    traffic.phase("recovery");
    traffic.wait_acked(moved, 1, Duration::from_secs(40)).await;
    // The first seq of each moved topic acknowledged after the kill: every client,
    // on both nodes, must get it within the bound.
    let acked_at = Instant::now();
    let acct = traffic.account();
    let targets: Vec<(String, u64)> = moved
        .iter()
        .map(|t| (t.clone(), acct.last_seq(t)))
        .collect();
    for c in &clients {
        for (t, seq) in &targets {
            c.wait_seq(t, *seq, RESUME_BOUND).await;
        }
    }
    let (since_kill, since_ack) = (killed_at.elapsed(), acked_at.elapsed());
    assert!(
        since_kill <= RESUME_BOUND && since_ack <= DELIVERY_BOUND,
        "failed-over topics back on every client {since_kill:?} after the kill (bound \
         {RESUME_BOUND:?}), {since_ack:?} after the engine's ack (bound {DELIVERY_BOUND:?})"
    );
    // (The engine's acknowledgement is polled every 50 ms: `since_ack` is coarse.)
    eprintln!(
        "every client had the failed-over topics again {since_kill:?} after the kill, \
         {since_ack:?} after the engine's acknowledgement was seen"
    );

    traffic.wait_acked(moved, 5, Duration::from_secs(40)).await;
    traffic.phase("after");
    traffic.wait_acked(topics, 5, Duration::from_secs(30)).await;
    let acct = traffic.finish().await;
    let failures = acct.failures.len();
    eprintln!(
        "engine: {} acknowledged, {failures} failed attempts: {:?}",
        acct.acks.len(),
        acct.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        acct.failures
            .iter()
            .all(|(p, _)| p == "failover" || p == "recovery"),
        "publishes failed outside the failover: {:?}",
        acct.failures
    );

    // Every client: every message of every topic exactly once, in order, from 1.
    for (i, c) in clients.into_iter().enumerate() {
        for t in topics {
            c.wait_seq(t, acct.last_seq(t), Duration::from_secs(30))
                .await;
        }
        let counts = c.stop().await;
        if i < resuming {
            assert_eq!(counts.reconnects(), 0, "client {i} was never disconnected");
        } else {
            assert_eq!(
                counts.nodes(),
                ["fo-c", "fo-a"],
                "client {i} resumed on node a once its node was killed"
            );
        }
        for t in topics {
            let who = format!("client {i} on {:?}, {t}", counts.nodes());
            let tc = counts.topic(t);
            tc.assert_exactly_once_up_to(acct.last_seq(t), &who);
            assert_eq!(tc.seqs().first(), Some(&1), "{who}: from seq 1");
        }
    }

    // The history holds every acknowledged message at its seq; a seq it holds that
    // was never acknowledged was a failed attempt the engine was told about.
    let mut unacked = 0usize;
    for t in topics {
        let (status, h) = a
            .get_json(
                &format!("/topics/{t}/history?from_seq=1&limit=1000"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(status, 200, "{h}");
        let msgs: Vec<Value> = h["messages"].as_array().expect("messages").clone();
        let acked = &acct.acked[t];
        assert_eq!(msgs.len() as u64, acct.last_seq(t), "{t}: history length");
        for (i, m) in msgs.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(m["seq"], seq, "{t}: gap-free history");
            match acked.get(&seq) {
                Some(n) => assert_eq!(m["payload"]["n"], *n, "{t} seq {seq}"),
                None => unacked += 1,
            }
        }
    }
    assert!(
        unacked <= failures,
        "{unacked} messages kept but never acknowledged, only {failures} failures reported"
    );
    a.shutdown().await;
    b.shutdown().await;
    Outcome {
        failures,
        since_kill,
        since_ack,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_fails_over_and_clients_on_two_nodes_miss_nothing() {
    let started = Instant::now();
    let prefix = unique_prefix("focl");
    let net = format!("{prefix}-net");
    let cluster = ContainerCluster::start(&net, &prefix, 1000).await;
    let url = cluster.url();
    // Topics on every master: create them, then see where they live.
    let topics: Vec<String> = (0..9).map(|i| format!("prices.FO{i}")).collect();
    let mut by_master = std::collections::BTreeMap::new();
    for t in &topics {
        // Before any publish: the slot of the topic's keys decides its master.
        let slot_key = keys::meta(t);
        let owner = cluster_owner_by_slot(&cluster, &slot_key);
        by_master
            .entry(owner)
            .or_insert_with(Vec::new)
            .push(t.clone());
    }
    assert_eq!(by_master.len(), 3, "topics by master: {by_master:?}");
    let victim_ip = cluster_owner_by_slot(&cluster, &keys::meta(&topics[0]));
    let moved = by_master[&victim_ip].clone();
    let victim = cluster
        .nodes
        .iter()
        .find(|n| n.ip.to_string() == victim_ip)
        .expect("victim");
    let replica = cluster.replica_of(victim);
    let outcome = scenario(
        &url,
        &topics,
        &moved,
        || victim.kill(),
        || {
            replica.cli(&["ROLE"]).starts_with("master")
                && replica
                    .cli(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
        },
    )
    .await;
    eprintln!(
        "cluster: {} failed attempts; delivered {:?} after the kill, {:?} after the ack; test took {:?}",
        outcome.failures,
        outcome.since_kill,
        outcome.since_ack,
        started.elapsed()
    );
}

/// The address of the master that serves `key`'s slot (asked with `CLUSTER KEYSLOT`
/// and `CLUSTER SLOTS` on any node).
fn cluster_owner_by_slot(cluster: &ContainerCluster, key: &str) -> String {
    let n = &cluster.nodes[0];
    let slot: u16 = n
        .cli(&["CLUSTER", "KEYSLOT", key])
        .trim()
        .parse()
        .expect("slot");
    let shards = n.cli(&["CLUSTER", "SLOTS"]);
    // redis-cli prints each range as: start, end, master ip, master port, id, replicas…
    let lines: Vec<&str> = shards.lines().map(str::trim).collect();
    let mut i = 0;
    while i + 2 < lines.len() {
        if let (Ok(lo), Ok(hi)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>()) {
            if (lo..=hi).contains(&slot) && lines[i + 2].contains('.') {
                return lines[i + 2].to_owned();
            }
        }
        i += 1;
    }
    panic!("no master for slot {slot} in {shards}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_master_fails_over_and_clients_on_two_nodes_miss_nothing() {
    let started = Instant::now();
    let prefix = unique_prefix("fosn");
    let net = format!("{prefix}-net");
    let set = ContainerSentinel::start(&net, &prefix, 1000).await;
    let url = set.url();
    // An odd count, so each topic gets both the Publisher's and HTTP publishes.
    let topics: Vec<String> = (0..5).map(|i| format!("prices.FS{i}")).collect();
    let old = set.master.ip.to_string();
    let outcome = scenario(
        &url,
        &topics,
        &topics,
        || set.master.kill(),
        || {
            set.master_ip().is_some_and(|m| m != old)
                && set.replica.cli(&["ROLE"]).starts_with("master")
        },
    )
    .await;
    eprintln!(
        "sentinel: {} failed attempts; delivered {:?} after the kill, {:?} after the ack; test took {:?}",
        outcome.failures,
        outcome.since_kill,
        outcome.since_ack,
        started.elapsed()
    );
}
