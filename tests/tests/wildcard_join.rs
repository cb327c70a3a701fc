//! What a wildcard joined over many existing topics costs Redis. A pattern is owed
//! live messages only (SPEC §3: no snapshot, no resume), so the node follows its
//! N existing matches from their positions alone: one `SSUBSCRIBE` per topic
//! (issued together on the subscribed connection) and one `HMGET` per topic sent
//! in pipelines of `FOLLOW_BATCH` (256), no stream read (`XREVRANGE`), no
//! transaction. Before, each topic was followed in turn with its own transaction
//! (`MULTI HMGET XREVRANGE EXEC`, up to 256 entries read): 2N round trips at least
//! and N stream reads. Redis's own counters prove it: `INFO commandstats` for the
//! commands, and `total_reads_processed` (`INFO stats`: read events, at most one
//! per command, one for many when they arrive together, as a pipeline's do) for
//! the round trips. Measured on a debug build (2 shared cores): 58 to 110 read
//! events and about 20 ms for the join of 300 topics; following them one after
//! another took 1431 read events, 300 `XREVRANGE`s and 206 ms.
//!
//! Redis is a `redis-server` process of this test's own, so nothing else touches
//! its counters; on Cluster (3 masters as processes) the pipeline of positions is
//! split by fred among the masters, and every topic still goes live.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use fred::{
    clients::Client,
    interfaces::ClientLike,
    types::{config::Config as RedisConfig, Builder, InfoKind},
};
use serde_json::json;
use sluice_common::publisher::Publisher;
use sluice_tests::{
    redis_topology::{cli, free_port, temp_dir, RedisProcess, TestCluster},
    start_node, WsClient,
};

/// Topics the wildcard matches.
const N: u64 = 300;
/// Messages each topic has before the subscribe.
const BEFORE: u64 = 2;
/// The node's batch of topics per pipeline (`reader::FOLLOW_BATCH`).
const BATCH: u64 = 256;

async fn client(url: &str) -> Client {
    let c = Builder::from_config(RedisConfig::from_url(url).expect("url"))
        .build()
        .expect("client");
    c.init().await.expect("redis answers");
    c
}

/// Calls per command (`INFO commandstats`) and `total_reads_processed`.
async fn counters(c: &Client) -> (HashMap<String, u64>, u64) {
    let info: String = c
        .info(Some(InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    let calls: HashMap<String, u64> = sluice_common::redis_info::command_calls(&info);
    let stats: String = c.info(Some(InfoKind::Stats)).await.expect("INFO stats");
    let reads = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_reads_processed in INFO stats");
    (calls, reads)
}

fn calls(stats: &HashMap<String, u64>, cmd: &str) -> u64 {
    stats.get(cmd).copied().unwrap_or(0)
}

fn topic(k: u64) -> String {
    format!("wj.T{k}")
}

/// `n` publications, one of each topic, each with `seq` (and `{"i": seq}`), and
/// then nothing more.
async fn each_topic_once(c: &mut WsClient, n: u64, seq: u64) {
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in c.recv_pubs(n as usize).await {
        assert_eq!(p["type"], "delta", "{p}");
        assert_eq!(p["payload"]["i"], p["seq"], "{p}");
        got.entry(p["topic"].as_str().expect("topic").to_owned())
            .or_default()
            .push(p["seq"].as_u64().expect("seq"));
    }
    assert_eq!(got.len() as u64, n, "every topic: {got:?}");
    assert!(
        got.values().all(|s| *s == [seq]),
        "each topic's next message once: {got:?}"
    );
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_over_300_topics_follows_them_in_pipelines_without_reading_their_history() {
    let dir = temp_dir("wildcard-join");
    let port = free_port();
    let _redis = RedisProcess::data(&dir, port, &[]);
    let url = format!("redis://127.0.0.1:{port}");
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = Publisher::connect(&url, 2).await.expect("publisher");
    let mut epochs = Vec::new();
    for k in 0..N {
        for i in 1..=BEFORE {
            let pos = engine
                .publish(&topic(k), &json!({ "i": i }))
                .await
                .expect("publish");
            assert_eq!(pos.seq, i);
            if i == BEFORE {
                epochs.push(pos.epoch);
            }
        }
    }
    let mut c = node.client().await;
    let redis = client(&url).await;
    // Let the node's start-up traffic (registry, library check) settle first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis
        .custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"])
        .await
        .expect("RESETSTAT");

    let t0 = Instant::now();
    let ack = c.subscribe(json!({"topic": "wj.*"})).await;
    let took = t0.elapsed();
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "wildcard": true}),
        "{ack}"
    );
    let (stats, reads) = counters(&redis).await;
    let (ssubscribe, hmget, xrevrange) = (
        calls(&stats, "ssubscribe"),
        calls(&stats, "hmget"),
        calls(&stats, "xrevrange"),
    );
    eprintln!(
        "join of {N} topics: {took:?}, {reads} read events; ssubscribe {ssubscribe}, \
         hmget {hmget}, xrevrange {xrevrange} (all: {stats:?})"
    );
    assert_eq!(ssubscribe, N, "one live subscription per topic");
    assert_eq!(hmget, N, "one position per topic");
    assert_eq!(xrevrange, 0, "no tail fill for a pattern");
    assert_eq!(
        calls(&stats, "multi") + calls(&stats, "exec"),
        0,
        "no transaction"
    );
    assert_eq!(calls(&stats, "fcall_ro"), 0, "no history or snapshot read");
    // The subscriptions' N round trips, the positions' N / BATCH pipelines (a
    // pipeline may take Redis a read or two), the SCAN, the announcements'
    // SUBSCRIBE, health probes, and this test's INFO, at most. Following one
    // topic after another took about 4.8 N (see above).
    let bound = N + 2 * N.div_ceil(BATCH) + 20;
    assert!(
        reads <= bound,
        "{reads} read events for a join of {N} topics (bound {bound})"
    );
    assert!(took < Duration::from_secs(3), "the join took {took:?}");

    // Live: the next publish of each topic arrives once, as that topic's own.
    for k in 0..N {
        let pos = engine
            .publish(&topic(k), &json!({ "i": BEFORE + 1 }))
            .await
            .expect("publish");
        assert_eq!(pos.seq, BEFORE + 1);
    }
    each_topic_once(&mut c, N, BEFORE + 1).await;

    // A concrete resume of a topic the wildcard follows (its tail holds seq 3
    // alone): the tail does not answer what it lacks, Redis does, exactly once.
    let mut r = node.client().await;
    let k = 7;
    let ack = r
        .subscribe(json!({"topic": topic(k), "resume_from_seq": 1, "epoch": epochs[k as usize]}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], BEFORE + 1, "{ack}");
    let pubs = r.recv_pubs((BEFORE + 1) as usize).await;
    assert_eq!(
        sluice_tests::seqs(&pubs),
        (1..=BEFORE + 1).collect::<Vec<_>>()
    );
    assert!(r.recv_within(Duration::from_millis(300)).await.is_none());
    let _ = redis.quit().await;
    c.close().await;
    r.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_wildcards_positions_are_read_on_every_master_and_each_topic_goes_live() {
    const M: u64 = 60;
    let cluster = TestCluster::start();
    let url = cluster.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = cluster.publisher(2).await;
    for k in 0..M {
        let pos = engine
            .publish(&topic(k), &json!({ "i": 1 }))
            .await
            .expect("publish");
        assert_eq!(pos.seq, 1);
    }
    let masters = cluster.masters();
    let owners: HashSet<u16> = (0..M)
        .map(|k| cluster.owner(&sluice_common::keys::meta(&topic(k))))
        .collect();
    assert_eq!(
        owners.len(),
        masters.len(),
        "the topics live on every master"
    );
    let mut c = node.client().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for port in &masters {
        cli(*port, &["CONFIG", "RESETSTAT"]);
    }
    let ack = c.subscribe(json!({"topic": "wj.*"})).await;
    assert_eq!(ack["payload"]["wildcard"], true, "{ack}");
    let mut total: HashMap<String, u64> = HashMap::new();
    for port in &masters {
        let stats: HashMap<String, u64> =
            sluice_common::redis_info::command_calls(&cli(*port, &["INFO", "commandstats"]));
        for (cmd, n) in stats {
            *total.entry(cmd).or_default() += n;
        }
    }
    eprintln!("cluster join of {M} topics: {total:?}");
    assert_eq!(calls(&total, "hmget"), M, "one position per topic");
    assert_eq!(
        calls(&total, "ssubscribe"),
        M,
        "one live subscription per topic"
    );
    assert_eq!(calls(&total, "xrevrange"), 0, "no tail fill for a pattern");
    assert_eq!(calls(&total, "exec"), 0, "no transaction");
    for k in 0..M {
        let pos = engine
            .publish(&topic(k), &json!({ "i": 2 }))
            .await
            .expect("publish");
        assert_eq!(pos.seq, 2);
    }
    each_topic_once(&mut c, M, 2).await;
    c.close().await;
    node.shutdown().await;
}
