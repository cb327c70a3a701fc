//! A resume storm reads Redis once per topic, not once per client: N clients on K
//! topics resume at once on one node, and Redis's own `INFO commandstats` counts
//! the reads they caused. Redis runs in a testcontainers container per test (see
//! `sluice_tests::redis`), so nothing else touches its counters. An engine keeps
//! publishing throughout, so live messages race the node's first read of each
//! topic, and every client must still get each seq once, in order, with its own
//! payload.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use fred::interfaces::ClientLike;
use serde_json::json;
use sluice_common::publisher::Publisher;
use sluice_tests::{eventually, redis::TestRedis, seqs, start_redis_node, WsClient};

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

/// Topic `k` of a storm (a fresh name per storm).
fn topic(run: &str, k: usize) -> String {
    format!("prices.STORM{run}.{k}")
}

/// Messages per topic before the storm (a snapshot at 5).
const BEFORE: u64 = 40;
/// Every topic gets a publish this often while the storm goes on (about the
/// 20 per second per topic of `bench-storm.sh`).
const PUBLISH_PERIOD: Duration = Duration::from_millis(50);

/// The engine: publishes `{"i": seq}` to every topic each [`PUBLISH_PERIOD`] (round
/// robin) until `stop`; `heads` holds each topic's last seq.
fn keep_publishing(
    engine: Publisher,
    topics: Vec<String>,
    heads: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let every = PUBLISH_PERIOD / topics.len() as u32;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for k in (0..topics.len()).cycle() {
            tick.tick().await;
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let next = heads.lock().expect("heads")[k] + 1;
            let pos = engine
                .publish(&topics[k], &json!({ "i": next }))
                .await
                .expect("publish");
            assert_eq!(pos.seq, next, "the engine is the topic's only publisher");
            heads.lock().expect("heads")[k] = next;
        }
    })
}

/// The resume points: client `i` of `n` follows topic `i % topics`; the first
/// half resume from points spread over seqs 11..=40 (all before the node follows
/// the topic), the second half, once the topic is past `head_b`, over
/// 21..=`head_b` (before and after the follow).
fn resume_point(i: usize, clients: usize, topics: usize, head_b: u64) -> u64 {
    let j = (i / topics) as u64;
    if i < clients / 2 {
        BEFORE - j % 30
    } else {
        21 + j % (head_b - 20)
    }
}

/// Runs a storm of `clients` resuming on `topics` topics (see [`resume_point`]);
/// returns the calls per command it cost Redis, from before the first resume to
/// after the last client got everything up to the final head.
async fn storm(clients: usize, topics: usize) -> HashMap<String, u64> {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| {
        c.max_connections_per_ip = clients + 10;
    })
    .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let names: Vec<String> = (0..topics).map(|k| topic(&run, k)).collect();
    let engine = Publisher::connect(&redis.url, 1).await.expect("publisher");
    let mut epochs = Vec::new();
    for name in &names {
        for i in 1..=BEFORE {
            let payload = json!({ "i": i });
            let pos = if i == 5 {
                engine
                    .publish_with_snapshot(name, &payload, &json!({ "state": i }))
                    .await
            } else {
                engine.publish(name, &payload).await
            }
            .expect("publish");
            assert_eq!(pos.seq, i);
            if i == BEFORE {
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
    let heads = Arc::new(Mutex::new(vec![BEFORE; topics]));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = keep_publishing(engine, names.clone(), heads.clone(), stop.clone());
    let subscribe = |i: usize, from: u64| {
        let k = i % topics;
        json!({"type": "subscribe", "topic": names[k], "resume_from_seq": from, "epoch": epochs[k]})
    };
    let check_ack = |i: usize, from: u64, ack: &serde_json::Value| {
        assert_eq!(ack["type"], "ack", "client {i}: {ack}");
        assert_eq!(ack["topic"], names[i % topics].as_str());
        assert_eq!(ack["payload"]["recovered"], true, "client {i}: {ack}");
        let head = ack["payload"]["head_seq"].as_u64().expect("head_seq");
        assert!(head + 1 >= from, "client {i}: head {head} before {from}");
    };

    // The first half: every client at once, from before the follow. Redis holds
    // every command for a moment (CLIENT PAUSE) so that the storm meets it all at
    // once, as it does a node that takes over thousands of clients — not spread
    // over the time this test takes to write its frames one by one.
    let half = clients / 2;
    let received = node.metric(MESSAGES_RECEIVED).await.unwrap_or(0.0);
    pause(&redis, PAUSE).await;
    for (i, c) in conns.iter_mut().enumerate().take(half) {
        c.send_json(subscribe(i, resume_point(i, clients, topics, 0)))
            .await;
    }
    node.wait_metric(MESSAGES_RECEIVED, received + half as f64, PAUSE)
        .await;
    for (i, c) in conns.iter_mut().enumerate().take(half) {
        check_ack(
            i,
            resume_point(i, clients, topics, 0),
            &c.recv().await.expect("ack"),
        );
    }
    // The second half, once every topic has live messages past the follow.
    let head_b = BEFORE + 10;
    let reached = heads.clone();
    eventually(Duration::from_secs(10), "live publishes", move || {
        let h = reached.clone();
        async move { h.lock().expect("heads").iter().all(|h| *h >= head_b) }
    })
    .await;
    for (i, c) in conns.iter_mut().enumerate().skip(half) {
        c.send_json(subscribe(i, resume_point(i, clients, topics, head_b)))
            .await;
    }
    for (i, c) in conns.iter_mut().enumerate().skip(half) {
        check_ack(
            i,
            resume_point(i, clients, topics, head_b),
            &c.recv().await.expect("ack"),
        );
    }
    stop.store(true, Ordering::SeqCst);
    publishing.await.expect("publisher task");
    let finals = heads.lock().expect("heads").clone();
    for (i, c) in conns.iter_mut().enumerate() {
        let from = resume_point(i, clients, topics, head_b);
        let last = finals[i % topics];
        let pubs = c.recv_pubs((last + 1 - from) as usize).await;
        assert_eq!(seqs(&pubs), (from..=last).collect::<Vec<_>>(), "client {i}");
        for p in &pubs {
            assert_eq!(p["type"], "delta", "client {i}: {p}");
            assert_eq!(
                p["payload"]["i"], p["seq"],
                "client {i}: a payload of another seq"
            );
        }
    }
    let calls: HashMap<String, u64> = redis.command_calls().await;
    for c in conns {
        c.close().await;
    }
    node.shutdown().await;
    calls
}

fn calls(stats: &HashMap<String, u64>, cmd: &str) -> u64 {
    stats.get(cmd).copied().unwrap_or(0)
}

/// What a storm of N on K must stay within: per topic, one follow (one `SSUBSCRIBE`,
/// and one transaction reading the position, `HMGET`, and the newest entries,
/// `XREVRANGE`, that fill the topic's tail), at most two top-level reads in all.
/// No history read (`FCALL_RO sluice_history`): resumes from before the follow
/// are answered from the fill, those after it from what the live path added.
/// No head read either: a resume takes the head from the position the node's
/// live path reached (`Broker::local_head`). Each publish of the engine meanwhile
/// runs one `HMGET` inside its `FCALL`, which is not the storm's. Before the fill
/// this storm read history once or twice per topic (2–3 reads per topic); before
/// coalescing, 2N.
fn assert_per_topic(stats: &HashMap<String, u64>, clients: u64, topics: u64) {
    let (fcall, fcall_ro, hmget, ssubscribe, xrevrange) = (
        calls(stats, "fcall"),
        calls(stats, "fcall_ro"),
        calls(stats, "hmget"),
        calls(stats, "ssubscribe"),
        calls(stats, "xrevrange"),
    );
    let head_reads = hmget.saturating_sub(fcall);
    let top_level = head_reads + xrevrange + fcall_ro;
    eprintln!(
        "storm of {clients} on {topics}: top-level reads {top_level} (hmget {head_reads} \
         beyond the {fcall} publishes, xrevrange {xrevrange}, fcall_ro {fcall_ro}), \
         ssubscribe {ssubscribe} (all: {stats:?})"
    );
    assert_eq!(ssubscribe, topics, "one live subscription per topic");
    assert_eq!(xrevrange, topics, "one tail fill per topic");
    assert_eq!(
        fcall_ro, 0,
        "history or snapshot reads: the tail did not answer"
    );
    assert!(
        top_level <= 2 * topics,
        "{top_level} top-level reads for {clients} clients on {topics} topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_200_clients_on_4_topics_reads_redis_per_topic_not_per_client() {
    let stats = storm(200, 4).await;
    assert_per_topic(&stats, 200, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_300_clients_on_one_topic_from_before_and_after_the_follow_reads_it_twice() {
    let stats = storm(300, 1).await;
    assert_per_topic(&stats, 300, 1);
}
