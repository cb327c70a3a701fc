//! A resume storm reads Redis once per topic, not once per client: N clients on K
//! topics resume at once on one node, and Redis's own `INFO commandstats` counts
//! the reads they caused. Redis runs in a testcontainers container per test (see
//! `sluice_tests::redis`), so nothing else touches its counters.

use std::{collections::HashMap, time::Duration};

use fred::interfaces::ClientLike;
use serde_json::json;
use sluice_common::publisher::Publisher;
use sluice_tests::{redis::TestRedis, seqs, start_redis_node, WsClient};

/// `calls` per command from `INFO commandstats` (`cmdstat_fcall_ro:calls=12,…`).
async fn command_calls(redis: &TestRedis) -> HashMap<String, u64> {
    let c = redis.client().await;
    let info: String = c
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    let _ = c.quit().await;
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

const MESSAGES_RECEIVED: &str = "sluice_messages_received_total";
/// How long Redis holds commands while the storm's frames reach the node (well
/// below the node's 5 s command timeout).
const PAUSE: Duration = Duration::from_millis(1500);

/// `CLIENT PAUSE`: Redis runs no client's command for `d` (it ends on its own).
async fn pause(redis: &TestRedis, d: Duration) {
    let c = redis.client().await;
    let ms = d.as_millis().to_string();
    let _: String = c
        .custom(fred::cmd!("CLIENT"), vec!["PAUSE", ms.as_str(), "ALL"])
        .await
        .expect("CLIENT PAUSE");
    let _ = c.quit().await;
}

async fn reset_stats(redis: &TestRedis) {
    let c = redis.client().await;
    let _: String = c
        .custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"])
        .await
        .expect("CONFIG RESETSTAT");
    let _ = c.quit().await;
}

/// Topic `k` of a storm (a fresh name per storm), each with 10 messages and a
/// snapshot at 5.
fn topic(run: &str, k: usize) -> String {
    format!("prices.STORM{run}.{k}")
}

/// Runs a storm of `clients` resuming from seq 7 on `topics` topics (each at seq
/// 10); returns the calls per command it cost Redis.
async fn storm(clients: usize, topics: usize) -> HashMap<String, u64> {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| {
        c.max_connections_per_ip = clients + 10;
    })
    .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = |k| topic(&run, k);
    let engine = Publisher::connect(&redis.url, 1).await.expect("publisher");
    let mut epochs = Vec::new();
    for k in 0..topics {
        for i in 1..=10u64 {
            let payload = json!({ "i": i });
            let pos = if i == 5 {
                engine
                    .publish_with_snapshot(&topic(k), &payload, &json!({ "state": i }))
                    .await
            } else {
                engine.publish(&topic(k), &payload).await
            }
            .expect("publish");
            assert_eq!(pos.seq, i);
            if i == 10 {
                epochs.push(pos.epoch);
            }
        }
    }
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(
            WsClient::connect(&node.ws_url("/ws"))
                .await
                .expect("connect"),
        );
    }
    // Let the node's start-up traffic (registry, library check) settle first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reset_stats(&redis).await;

    // The storm: every client resumes at once, each from seq 7 of its topic. Redis
    // holds every command for a moment (CLIENT PAUSE) so that the storm meets it
    // all at once, as it does a node that takes over thousands of clients — not
    // spread over the time this test takes to write its frames one by one.
    let received = node.metric(MESSAGES_RECEIVED).await.unwrap_or(0.0);
    pause(&redis, PAUSE).await;
    for (i, c) in conns.iter_mut().enumerate() {
        let k = i % topics;
        c.send_json(json!({
            "type": "subscribe", "topic": topic(k), "resume_from_seq": 7, "epoch": epochs[k],
        }))
        .await;
    }
    node.wait_metric(MESSAGES_RECEIVED, received + clients as f64, PAUSE)
        .await;
    for (i, c) in conns.iter_mut().enumerate() {
        let k = i % topics;
        let ack = c.recv().await.expect("ack");
        assert_eq!(ack["type"], "ack", "client {i}: {ack}");
        assert_eq!(ack["topic"], topic(k).as_str());
        assert_eq!(ack["payload"]["recovered"], true, "client {i}: {ack}");
        assert_eq!(ack["payload"]["head_seq"], 10);
        let pubs = c.recv_pubs(4).await;
        assert_eq!(seqs(&pubs), [7, 8, 9, 10], "client {i}");
        assert!(pubs.iter().all(|p| p["type"] == "delta"), "client {i}");
    }
    let calls = command_calls(&redis).await;
    for c in conns {
        c.close().await;
    }
    node.shutdown().await;
    calls
}

fn calls(stats: &HashMap<String, u64>, cmd: &str) -> u64 {
    stats.get(cmd).copied().unwrap_or(0)
}

/// What a storm of N on K must stay within: per topic, one follow (one `SSUBSCRIBE`
/// and one position read, `HMGET`) and at most one history read (`FCALL_RO
/// sluice_history`; none when the topic's tail holds the range). A resume takes the
/// head from the position the node's live path reached (`Broker::local_head`), so
/// it reads no head from Redis, except a client whose join raced the topic's arming
/// (then a shared head read): at most K more, and one per 25 clients, as for
/// history reads that start after a shared one finished. Never a snapshot read
/// (`sluice_state`, which a successful resume does not send). Before coalescing the
/// same storm cost N head reads and N history reads; before `local_head`, 2K HMGETs.
fn assert_per_topic(stats: &HashMap<String, u64>, clients: u64, topics: u64) {
    let (fcall_ro, hmget, ssubscribe, xrange) = (
        calls(stats, "fcall_ro"),
        calls(stats, "hmget"),
        calls(stats, "ssubscribe"),
        calls(stats, "xrange"),
    );
    eprintln!(
        "storm of {clients} on {topics}: fcall_ro {fcall_ro}, hmget {hmget}, \
         ssubscribe {ssubscribe}, xrange {xrange} (all: {stats:?})"
    );
    // Every FCALL_RO was a history read: each runs exactly one XRANGE, and a
    // sluice_state would run an HMGET instead.
    assert_eq!(fcall_ro, xrange, "a snapshot read (sluice_state) happened");
    assert_eq!(ssubscribe, topics, "one live subscription per topic");
    let late = topics + clients / 25;
    assert!(
        (topics..=topics + late).contains(&hmget),
        "follow + head (HMGET): {hmget} reads for {clients} clients on {topics} topics"
    );
    assert!(
        fcall_ro <= topics + late,
        "history (FCALL_RO): {fcall_ro} reads for {clients} clients on {topics} topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_200_clients_on_4_topics_reads_redis_per_topic_not_per_client() {
    let stats = storm(200, 4).await;
    assert_per_topic(&stats, 200, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_300_clients_on_one_topic_reads_redis_a_handful_of_times() {
    let stats = storm(300, 1).await;
    assert_per_topic(&stats, 300, 1);
}
