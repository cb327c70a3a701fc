//! The product's promise with nodes as real processes: drain one (SIGTERM), kill one
//! (SIGKILL), pause Redis, all while an engine publishes — and the server sent every
//! resuming client every message exactly once, in seq order (counted raw, before any
//! dedupe), and the Rust client delivered each exactly once.

use std::time::Duration;

use sluice_common::{
    client::{Backoff, Client, ClientConfig},
    publisher::Publisher,
};
use sluice_tests::{
    counting::{CountingClient, Ended},
    eventually,
    follow::{assert_every_message_exactly_once, follow, wait_all_receiving},
    process::NodeProcess,
    redis::TestRedis,
    traffic::Traffic,
    ADMIN_TOKEN,
};

const TOPIC: &str = "prices.FAILOVER";
/// Rust clients (exactly-once delivery) and, as many again, raw counting clients
/// (what the server sent).
const CLIENTS: usize = 12;
/// Acknowledged publishes each phase must see before the test moves on.
const PER_PHASE: u64 = 20;

async fn cluster_ids(node: &NodeProcess) -> Vec<String> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(node.http_url("/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("cluster")
        .json()
        .await
        .expect("json");
    let mut ids: Vec<String> = v["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Client `i`'s URL list: all three nodes, starting at node `i % 3`.
fn urls_for(i: usize, urls: &[String]) -> Vec<String> {
    (0..3).map(|k| urls[(i + k) % 3].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_kill_and_redis_pause_under_traffic_send_every_client_every_message_once() {
    let redis = TestRedis::start().await;
    let env = || {
        vec![
            ("REDIS_URL", redis.url.clone()),
            ("SLUICE_DRAIN_SECONDS", "1".to_owned()),
            ("SLUICE_REGISTRY_TTL", "3".to_owned()),
        ]
    };
    let mut nodes = Vec::new();
    for id in ["proc-a", "proc-b", "proc-c"] {
        nodes.push(NodeProcess::start(id, &env()).await);
    }
    let urls: Vec<String> = nodes.iter().map(NodeProcess::ws_url).collect();

    // Clients spread over the nodes; each lists all three, starting at a different one.
    let mut readers = Vec::new();
    let mut logs = Vec::new();
    let mut counting = Vec::new();
    for i in 0..CLIENTS {
        let list = urls_for(i, &urls);
        let mut cfg = ClientConfig::new(list[0].clone());
        cfg.urls.extend(list[1..].iter().cloned());
        cfg.backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let client = Client::connect(cfg);
        client.subscribe(TOPIC);
        let (log, task) = follow(client);
        logs.push(log);
        readers.push(task);
        counting.push(CountingClient::start(list, &[TOPIC]));
    }
    let engine = Publisher::connect(&redis.url, 2).await.expect("publisher");
    // Retries are 100 ms apart: 100 of them outlast the 3 s Redis pause many times.
    let traffic = Traffic::start(engine, TOPIC, Duration::from_millis(5), 100);
    wait_all_receiving(&logs, Duration::from_secs(20)).await;
    for c in &counting {
        c.wait_seq(TOPIC, 1, Duration::from_secs(20)).await;
    }
    traffic.phase("before drain");
    traffic.wait_acked(PER_PHASE, Duration::from_secs(20)).await;

    // 1. Drain node a: sessions close with 1012 and clients resume elsewhere.
    traffic.phase("drain");
    nodes[0].terminate();
    let drain_time = nodes[0].wait_exit(Duration::from_secs(30)).await;
    eprintln!("drain of proc-a took {drain_time:?}");
    eventually(
        Duration::from_secs(15),
        "the drained node left the registry",
        || async { cluster_ids(&nodes[2]).await == ["proc-b", "proc-c"] },
    )
    .await;
    traffic.phase("after drain");
    traffic.wait_acked(PER_PHASE, Duration::from_secs(20)).await;

    // 2. Kill node b outright.
    traffic.phase("kill");
    nodes[1].kill();
    eventually(
        Duration::from_secs(20),
        "the killed node dropped out of the registry",
        || async { cluster_ids(&nodes[2]).await == ["proc-c"] },
    )
    .await;
    traffic.phase("after kill");
    traffic.wait_acked(PER_PHASE, Duration::from_secs(20)).await;

    // 3. Pause Redis for three seconds (the length of the fault, not a wait).
    traffic.phase("redis paused");
    redis.pause().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.unpause().await;

    let report = traffic.finish(200, Duration::from_secs(60)).await;
    report.assert_acked_in(&[
        "before drain",
        "drain",
        "after drain",
        "kill",
        "after kill",
        "tail",
    ]);
    // Redis was frozen: the engine kept trying (what it began then lands after).
    // Redis was frozen under traffic: a publish begun then waited the pause out.
    let paused = report.phase("redis paused");
    assert!(
        paused.slowest >= Duration::from_secs(2),
        "no publish waited out the 3 s Redis pause: {:?}",
        report.phases
    );
    let last = report.last_seq;

    let reconnected = assert_every_message_exactly_once(&logs, last, Duration::from_secs(60)).await;
    for (i, l) in logs.iter().enumerate() {
        if i % 3 != 2 {
            let n = l.lock().await.reconnects;
            assert!(
                n >= 1,
                "Rust client {i} was on a node that went away but never reconnected"
            );
        }
    }
    let mut raw_reconnects = 0;
    for (i, c) in counting.into_iter().enumerate() {
        c.wait_seq(TOPIC, last, Duration::from_secs(60)).await;
        let counts = c.stop().await;
        let who = format!("counting client {i} (nodes {:?})", counts.nodes());
        counts.topic(TOPIC).assert_exactly_once_up_to(last, &who);
        let nodes_seen = counts.nodes();
        // Every client ends on the one node left; those that began on a or b say how
        // they left it: a drained session closes with 1012, a killed one without a frame.
        assert_eq!(
            nodes_seen.last().map(String::as_str),
            Some("proc-c"),
            "{who}"
        );
        // Exactly the moves the faults force, in URL-list order: a's clients go to b
        // (the next URL) and on to c when b dies; b's go to c; c's never move.
        let want: &[&str] = match i % 3 {
            0 => &["proc-a", "proc-b", "proc-c"],
            1 => &["proc-b", "proc-c"],
            _ => &["proc-c"],
        };
        assert_eq!(nodes_seen, want, "{who}");
        match i % 3 {
            0 => {
                assert_eq!(counts.connections[0].ended, Ended::Code(1012), "{who}");
                assert_eq!(counts.connections[1].ended, Ended::NoFrame, "{who}");
            }
            1 => assert_eq!(counts.connections[0].ended, Ended::NoFrame, "{who}"),
            _ => {}
        }
        raw_reconnects += counts.reconnects();
    }
    eprintln!(
        "{reconnected} of {CLIENTS} Rust clients reconnected, {raw_reconnects} reconnects of \
         {CLIENTS} counting clients; {last} messages each"
    );
    for r in readers {
        r.abort();
    }
}

/// A node whose Redis is gone still exits on SIGTERM, within its drain plus the
/// bounded waits of each shutdown step (it used to hang on the registry writes,
/// waiting for Redis to come back: still running 40 s after SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_is_gone_still_exits_on_sigterm() {
    let redis = TestRedis::start().await;
    let env = vec![
        ("REDIS_URL", redis.url.clone()),
        ("SLUICE_DRAIN_SECONDS", "1".to_owned()),
    ];
    let mut node = NodeProcess::start("proc-redis-gone", &env).await;
    // A session open across the loss, so the drain has something to close.
    let client = CountingClient::start(vec![node.ws_url()], &[TOPIC]);
    client.wait_connections(1, Duration::from_secs(10)).await;
    redis.stop().await;
    node.terminate();
    // Drain 1 s, then at most 2 s for each of three Redis steps and 2 s for the
    // HTTP server: 9 s; 15 s leaves room for a loaded machine, far below a hang.
    let took = node.wait_exit(Duration::from_secs(15)).await;
    assert!(
        took >= Duration::from_millis(900),
        "it drained first: {took:?}"
    );
    client.stop().await;
}
