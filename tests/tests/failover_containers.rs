//! The deployment's promise, in containers: Redis, three nodes and HAProxy (the
//! compose topology, from locally built images) on a private network. Reconnecting
//! clients connect through the load balancer while an engine publishes; then a node
//! is drained (SIGTERM), another is killed, and Redis is paused, all under traffic.
//! The server must have sent every raw counting client every message exactly once, in
//! seq order; every Rust client must deliver each exactly once; every client that was
//! on a node that went away must have left it and ended on the last node; and the
//! registry must show each change.
//!
//! Images: `$SLUICE_TEST_NODE_IMAGE` (default `sluice/node:local`) and
//! `$SLUICE_TEST_HAPROXY_IMAGE` (default `sluice/haproxy:local`), built by
//! `scripts/build-images.sh` (which `scripts/test.sh` runs).

use std::time::Duration;

use serde_json::Value;
use sluice_common::{
    client::{Backoff, Client, ClientConfig},
    publisher::Publisher,
};
use sluice_tests::{
    counting::{CountingClient, Ended},
    eventually,
    follow::{assert_every_message_exactly_once, follow, wait_all_receiving},
    traffic::Traffic,
    ADMIN_TOKEN,
};
use testcontainers::{
    core::{IntoContainerPort, WaitFor},
    runners::AsyncRunner,
    ContainerAsync, GenericImage, ImageExt,
};
use testcontainers_modules::redis::{Redis, REDIS_PORT};

const TOPIC: &str = "prices.CONTAINERS";
/// Rust clients, and as many raw counting clients.
const CLIENTS: usize = 12;
/// Acknowledged publishes each phase must see before the test moves on.
const PER_PHASE: u64 = 20;

fn image(var: &str, default: &str) -> (String, String) {
    let full = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    match full.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (full, "latest".to_owned()),
    }
}

async fn start_node(net: &str, prefix: &str, n: usize) -> ContainerAsync<GenericImage> {
    let (name, tag) = image("SLUICE_TEST_NODE_IMAGE", "sluice/node:local");
    GenericImage::new(name.clone(), tag.clone())
        .with_wait_for(WaitFor::message_on_stdout("sluice node serving"))
        .with_network(net)
        .with_container_name(format!("{prefix}-node{n}"))
        .with_env_var("REDIS_URL", format!("redis://{prefix}-redis:6379"))
        .with_env_var("SLUICE_NODE_ID", format!("node{n}"))
        .with_env_var("SLUICE_ADVERTISE_ADDR", format!("{prefix}-node{n}:8080"))
        .with_env_var("SLUICE_DRAIN_SECONDS", "1")
        // Clients presume a connection dead after three silent heartbeats: a killed
        // container leaves the proxy's tunnel open without a reset.
        .with_env_var("SLUICE_HEARTBEAT_INTERVAL", "1")
        .with_env_var("SLUICE_REGISTRY_TTL", "3")
        .with_env_var("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        // HAProxy sends PROXY v2 (deploy/haproxy.cfg), so the per-IP cap counts
        // the real client (the host, for all of this test's clients) and keeps
        // its default of 1000.
        .with_env_var("SLUICE_PROXY_PROTOCOL", "on")
        .with_env_var("RUST_LOG", "info")
        .start()
        .await
        .unwrap_or_else(|e| {
            panic!("start node image {name}:{tag} (build it with scripts/build-images.sh): {e}")
        })
}

/// The compose HAProxy config, pointed at this test's container names.
fn haproxy_config(prefix: &str) -> Vec<u8> {
    let cfg = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/haproxy.cfg"
    ))
    .expect("deploy/haproxy.cfg");
    let mut out = cfg;
    for n in 1..=3 {
        out = out.replace(
            &format!(" node{n}:8080"),
            &format!(" {prefix}-node{n}:8080"),
        );
    }
    assert!(
        out.contains(&format!("{prefix}-node3:8080")),
        "haproxy.cfg no longer names node1..node3"
    );
    out.into_bytes()
}

async fn cluster(lb: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{lb}/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn ids(v: &Value) -> Vec<String> {
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
async fn through_the_load_balancer_drain_kill_and_redis_pause_lose_nothing() {
    let prefix = format!("sfo{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let net = format!("{prefix}-net");
    let (rname, rtag) = image(
        "SLUICE_TEST_REDIS_IMAGE_FULL",
        &format!(
            "{}:{}",
            std::env::var("SLUICE_TEST_REDIS_IMAGE").unwrap_or_else(|_| "redis".into()),
            std::env::var("SLUICE_TEST_REDIS_TAG").unwrap_or_else(|_| "7.0".into())
        ),
    );
    let redis = Redis::default()
        .with_name(rname)
        .with_tag(rtag)
        .with_network(&net)
        .with_container_name(format!("{prefix}-redis"))
        .start()
        .await
        .expect("redis container");
    let redis_url = format!(
        "redis://127.0.0.1:{}",
        redis
            .get_host_port_ipv4(REDIS_PORT)
            .await
            .expect("redis port")
    );
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(Some(start_node(&net, &prefix, n).await));
    }
    let (hname, htag) = image("SLUICE_TEST_HAPROXY_IMAGE", "sluice/haproxy:local");
    let lb = GenericImage::new(hname, htag)
        .with_exposed_port(8080.tcp())
        .with_wait_for(WaitFor::seconds(1))
        .with_network(&net)
        .with_container_name(format!("{prefix}-lb"))
        .with_copy_to(
            "/usr/local/etc/haproxy/haproxy.cfg",
            haproxy_config(&prefix),
        )
        .start()
        .await
        .expect("haproxy container (build it with scripts/build-images.sh)");
    let lb_port = lb.get_host_port_ipv4(8080).await.expect("lb port");
    let lb_http = format!("http://127.0.0.1:{lb_port}");
    eventually(
        Duration::from_secs(20),
        "all three nodes registered, seen through the LB",
        || async { ids(&cluster(&lb_http).await) == ["node1", "node2", "node3"] },
    )
    .await;

    let mut logs = Vec::new();
    let mut readers = Vec::new();
    let mut counting = Vec::new();
    let lb_ws = format!("ws://127.0.0.1:{lb_port}/ws");
    for _ in 0..CLIENTS {
        let mut cfg = ClientConfig::new(lb_ws.clone());
        cfg.backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let client = Client::connect(cfg);
        client.subscribe(TOPIC);
        let (log, task) = follow(client);
        logs.push(log);
        readers.push(task);
        counting.push(CountingClient::start(vec![lb_ws.clone()], &[TOPIC]));
    }
    let engine = Publisher::connect(&redis_url, 2).await.expect("publisher");
    let traffic = Traffic::start(engine, TOPIC, Duration::from_millis(5), 100);
    wait_all_receiving(&logs, Duration::from_secs(30)).await;
    for c in &counting {
        c.wait_seq(TOPIC, 1, Duration::from_secs(30)).await;
    }
    // Where each counting client is before any fault: those on node1 and node2 must move.
    let first_nodes: Vec<String> = counting
        .iter()
        .map(|c| c.counts().nodes()[0].clone())
        .collect();
    eprintln!("counting clients start on {first_nodes:?}");
    for n in ["node1", "node2", "node3"] {
        assert!(
            first_nodes.iter().any(|f| f == n),
            "leastconn put no counting client on {n}: {first_nodes:?}"
        );
    }
    traffic.phase("before drain");
    traffic.wait_acked(PER_PHASE, Duration::from_secs(20)).await;

    // 1. Drain node1 (docker stop = SIGTERM, then up to 10 s).
    traffic.phase("drain");
    let drained = nodes[0].take().expect("node1");
    let started = std::time::Instant::now();
    drained
        .stop_with_timeout(Some(10))
        .await
        .expect("stop node1");
    eprintln!("node1 drained and exited in {:?}", started.elapsed());
    eventually(
        Duration::from_secs(20),
        "the registry shows node1 gone",
        || async { ids(&cluster(&lb_http).await) == ["node2", "node3"] },
    )
    .await;
    traffic.phase("after drain");
    traffic.wait_acked(PER_PHASE, Duration::from_secs(20)).await;

    // 2. Kill node2 (no grace).
    traffic.phase("kill");
    let killed = nodes[1].take().expect("node2");
    // SIGKILL itself: `docker stop -t 0` sends SIGTERM first, and a node that sees it
    // starts draining (its first session got 1012 once in a CI run) before the KILL.
    let status = std::process::Command::new("docker")
        .args(["kill", "--signal", "KILL", killed.id()])
        .status()
        .expect("run docker kill");
    assert!(status.success(), "docker kill node2 failed");
    eventually(
        Duration::from_secs(20),
        "the registry drops the killed node",
        || async { ids(&cluster(&lb_http).await) == ["node3"] },
    )
    .await;
    traffic.phase("after kill");
    traffic.wait_acked(PER_PHASE, Duration::from_secs(20)).await;

    // 3. Pause Redis for three seconds (the length of the fault, not a wait).
    traffic.phase("redis paused");
    redis.pause().await.expect("pause");
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.unpause().await.expect("unpause");

    let report = traffic.finish(200, Duration::from_secs(60)).await;
    report.assert_acked_in(&[
        "before drain",
        "drain",
        "after drain",
        "kill",
        "after kill",
        "tail",
    ]);
    // Redis was frozen under traffic: a publish begun then waited the pause out.
    let paused = report.phase("redis paused");
    assert!(
        paused.slowest >= Duration::from_secs(2),
        "no publish waited out the 3 s Redis pause: {:?}",
        report.phases
    );
    let last = report.last_seq;
    let reconnected = assert_every_message_exactly_once(&logs, last, Duration::from_secs(60)).await;
    for (i, c) in counting.into_iter().enumerate() {
        c.wait_seq(TOPIC, last, Duration::from_secs(60)).await;
        let counts = c.stop().await;
        let who = format!("counting client {i} (nodes {:?})", counts.nodes());
        counts.topic(TOPIC).assert_exactly_once_up_to(last, &who);
        assert_eq!(
            counts.nodes().last().map(String::as_str),
            Some("node3"),
            "{who}"
        );
        // Which clients had to move, and how: node3's never moved; node2's moved once,
        // to node3; node1's moved to node2 or node3 (the proxy's choice), and from
        // node2 on to node3 when it was killed.
        let nodes_seen = counts.nodes();
        let first = &counts.connections[0];
        let killed_ended = |e: &Ended| matches!(e, Ended::NoFrame | Ended::Silent);
        match first.node_id.as_str() {
            "node1" => {
                // The drained node said goodbye with 1012.
                assert_eq!(first.ended, Ended::Code(1012), "{who}");
                assert!(
                    nodes_seen == ["node1", "node3"] || nodes_seen == ["node1", "node2", "node3"],
                    "{who}"
                );
                if nodes_seen.len() == 3 {
                    assert!(killed_ended(&counts.connections[1].ended), "{who}");
                }
            }
            // A killed container sends nothing: the proxy closes the tunnel, or it
            // stays open and the client presumes it dead after three heartbeats.
            "node2" => {
                assert!(killed_ended(&first.ended), "{who}: {:?}", first.ended);
                assert_eq!(nodes_seen, ["node2", "node3"], "{who}");
            }
            _ => assert_eq!(
                nodes_seen,
                ["node3"],
                "{who}: the clients of the last node stay"
            ),
        }
    }
    eprintln!(
        "{reconnected} of {CLIENTS} Rust clients reconnected through the LB; {last} messages each"
    );
    for r in readers {
        r.abort();
    }
    drop(drained);
    drop(killed);
}
