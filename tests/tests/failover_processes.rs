//! The product's promise with nodes as real processes: drain one (SIGTERM), kill one
//! (SIGKILL), pause Redis — and every reconnecting client still holds every message
//! exactly once, in seq order.

use std::time::Duration;

use serde_json::json;
use sluice_common::{
    client::{Backoff, Client, ClientConfig},
    publisher::Publisher,
};
use sluice_tests::{
    eventually,
    follow::{assert_every_message_exactly_once, follow, wait_all_receiving},
    process::NodeProcess,
    redis::TestRedis,
    ADMIN_TOKEN,
};

const TOPIC: &str = "prices.FAILOVER";
const CLIENTS: usize = 24;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_kill_and_redis_pause_lose_and_duplicate_nothing() {
    let redis = TestRedis::start().await;
    let env = |_: &str| {
        vec![
            ("REDIS_URL", redis.url.clone()),
            ("SLUICE_DRAIN_SECONDS", "1".to_owned()),
            ("SLUICE_REGISTRY_TTL", "3".to_owned()),
        ]
    };
    let mut nodes = Vec::new();
    for id in ["proc-a", "proc-b", "proc-c"] {
        nodes.push(NodeProcess::start(id, &env(id)).await);
    }
    let urls: Vec<String> = nodes.iter().map(NodeProcess::ws_url).collect();

    // Clients spread over the nodes; each lists all three, starting at a different one.
    let mut readers = Vec::new();
    let mut logs = Vec::new();
    for i in 0..CLIENTS {
        let mut cfg = ClientConfig::new(urls[i % 3].clone());
        cfg.urls.extend((1..3).map(|k| urls[(i + k) % 3].clone()));
        cfg.backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let client = Client::connect(cfg);
        client.subscribe(TOPIC);
        let (log, task) = follow(client);
        logs.push(log);
        readers.push(task);
    }
    // Wait until every client is subscribed (a first publish reaches all).
    let engine = Publisher::connect(&redis.url, 2).await.expect("publisher");
    let publishing = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let stop_at = tokio::time::Instant::now() + Duration::from_secs(14);
            while tokio::time::Instant::now() < stop_at {
                tick.tick().await;
                // Redis may be paused: retry the same message until it lands.
                loop {
                    match engine.publish(TOPIC, &json!({ "n": seq + 1 })).await {
                        Ok(pos) => {
                            assert_eq!(pos.seq, seq + 1, "the engine's seqs are gap-free");
                            seq = pos.seq;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            seq
        })
    };
    wait_all_receiving(&logs, Duration::from_secs(10)).await;

    // 1. Drain node a: sessions close with 1012 and clients resume elsewhere.
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes[0].terminate();
    let drain_time = nodes[0].wait_exit(Duration::from_secs(15)).await;
    eprintln!("drain of proc-a took {drain_time:?}");
    eventually(
        Duration::from_secs(5),
        "the drained node left the registry",
        || async { cluster_ids(&nodes[2]).await == ["proc-b", "proc-c"] },
    )
    .await;

    // 2. Kill node b outright.
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes[1].kill();
    eventually(
        Duration::from_secs(8),
        "the killed node dropped out of the registry",
        || async { cluster_ids(&nodes[2]).await == ["proc-c"] },
    )
    .await;

    // 3. Pause Redis for a few seconds.
    redis.pause().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.unpause().await;

    let last = publishing.await.expect("publisher task");
    assert!(last > 500, "the engine published only {last} messages");
    let reconnected = assert_every_message_exactly_once(&logs, last, Duration::from_secs(30)).await;
    for (i, l) in logs.iter().enumerate() {
        if i % 3 != 2 {
            let n = l.lock().await.reconnects;
            assert!(
                n >= 1,
                "client {i} was on a node that went away but never reconnected"
            );
        }
    }
    eprintln!("{reconnected} of {CLIENTS} clients reconnected; {last} messages each");
    for r in readers {
        r.abort();
    }
}
