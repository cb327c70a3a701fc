//! The product's promise with nodes as real processes: drain one (SIGTERM), kill one
//! (SIGKILL), pause Redis — and every reconnecting client still holds every message
//! exactly once, in seq order.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use sluice_common::{
    client::{Backoff, Client, ClientConfig, ClientState, Event},
    publisher::Publisher,
};
use sluice_tests::{eventually, process::NodeProcess, redis::TestRedis, ADMIN_TOKEN};
use tokio::sync::Mutex;

const TOPIC: &str = "prices.FAILOVER";
const CLIENTS: usize = 24;

/// Each client's received seqs, and how often it saw `recovered: false`.
#[derive(Debug, Default)]
struct Received {
    seqs: Vec<u64>,
    not_recovered: usize,
    reconnects: usize,
}

fn spawn_reader(mut client: Client, into: Arc<Mutex<Received>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(ev) = client.next_event().await {
            match ev {
                Event::Publication(f) => into.lock().await.seqs.push(f.seq.unwrap_or(0)),
                Event::Subscribed {
                    recovered: false,
                    resumed: true,
                    ..
                } => into.lock().await.not_recovered += 1,
                Event::State(ClientState::Reconnecting) => into.lock().await.reconnects += 1,
                _ => {}
            }
        }
    })
}

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
        let log = Arc::new(Mutex::new(Received::default()));
        logs.push(log.clone());
        readers.push(spawn_reader(client, log));
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
    eventually(
        Duration::from_secs(10),
        "every client received something",
        || async {
            let mut all = true;
            for l in &logs {
                all &= !l.lock().await.seqs.is_empty();
            }
            all
        },
    )
    .await;

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
    eventually(
        Duration::from_secs(30),
        "every client caught up to the last seq",
        || async {
            let mut all = true;
            for l in &logs {
                all &= l.lock().await.seqs.last() == Some(&last);
            }
            all
        },
    )
    .await;
    let want: Vec<u64> = (1..=last).collect();
    let mut reconnected = 0;
    for (i, l) in logs.iter().enumerate() {
        let r = l.lock().await;
        // A client subscribed after a few messages had gone out: it starts where it joined.
        let start = r.seqs[0];
        assert_eq!(
            r.seqs,
            want[(start - 1) as usize..],
            "client {i}: lost, duplicated or reordered messages"
        );
        assert_eq!(r.not_recovered, 0, "client {i} was told history was lost");
        if i % 3 != 2 {
            assert!(
                r.reconnects >= 1,
                "client {i} was on a node that went away but never reconnected"
            );
        }
        reconnected += usize::from(r.reconnects > 0);
    }
    eprintln!("{reconnected} of {CLIENTS} clients reconnected; {last} messages each");
    for r in readers {
        r.abort();
    }
}
