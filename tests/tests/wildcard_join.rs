//! What a wildcard joined over many existing topics costs Redis. A pattern is owed
//! live messages only (SPEC §3: no snapshot, no resume), so the node follows its
//! N existing matches from their positions alone: one `SSUBSCRIBE` per topic (fred
//! sends them one by one on the subscribed connection) and one `HMGET` per topic
//! sent in pipelines of `FOLLOW_BATCH` (256), no stream read (`XREVRANGE`), no
//! transaction. Before, each topic was followed in turn with its own transaction
//! (`MULTI HMGET XREVRANGE EXEC`, up to 256 entries read): 2N round trips and N
//! stream reads. Redis's own counters prove it: `INFO commandstats` for the
//! commands, and `total_reads_processed` (`INFO stats`, read events: one per round
//! trip, however many commands a pipeline carries) for the round trips. Measured
//! on a debug build (2 shared cores): 110 read events and 23 ms for the join of
//! 300 topics; following them one after another took 1431 read events, 300
//! `XREVRANGE`s and 206 ms.
//!
//! Redis is a `redis-server` process of this test's own, so nothing else touches
//! its counters.

use std::{
    collections::{BTreeMap, HashMap},
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
    redis_topology::{free_port, temp_dir, RedisProcess},
    start_node,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_over_300_topics_follows_them_in_pipelines_without_reading_their_history() {
    let dir = temp_dir("wildcard-join");
    let port = free_port();
    let _redis = RedisProcess::data(&dir, port, &[]);
    let url = format!("redis://127.0.0.1:{port}");
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    let engine = Publisher::connect(&url, 2).await.expect("publisher");
    let topic = |k: u64| format!("wj.T{k}");
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
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in c.recv_pubs(N as usize).await {
        assert_eq!(p["type"], "delta", "{p}");
        assert_eq!(p["payload"]["i"], p["seq"], "{p}");
        got.entry(p["topic"].as_str().expect("topic").to_owned())
            .or_default()
            .push(p["seq"].as_u64().expect("seq"));
    }
    assert_eq!(got.len() as u64, N, "every topic");
    assert!(
        got.values().all(|s| *s == [BEFORE + 1]),
        "each topic's next message once: {got:?}"
    );
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );

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
