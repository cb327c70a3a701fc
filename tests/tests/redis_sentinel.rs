//! `redis-sentinel://`: a node and an engine find the master through three
//! sentinels; publish, subscribe and resume work; then the master is killed, the
//! replica promoted, publishing continues, and every publish acknowledged (after
//! its replica wait) reaches a client resuming on another node exactly once, at
//! its seq, while the client that stayed connected keeps receiving.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::json;
use sluice_common::{
    publisher::{PublishError, Publisher},
    redis_client::{RedisSettings, Replicas},
};
use sluice_tests::{eventually, redis_topology::SentinelSet, seqs, start_node, ADMIN_TOKEN};
use tokio::sync::Mutex;

const TOPIC: &str = "prices.SENTINEL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_a_sentinel_failover_exactly_once() {
    let mut set = SentinelSet::start();
    let url = set.url();
    let node = start_node(|c| c.redis_url = Some(url.clone())).await;
    eventually(Duration::from_secs(10), "node connected", || async {
        node.get_json("/health", None).await.1["redis_connected"] == true
    })
    .await;

    let mut live = node.client().await;
    assert_eq!(
        live.subscribe(json!({ "topic": TOPIC })).await["payload"]["head_seq"],
        0
    );
    let settings = RedisSettings {
        tls_ca: None,
        replicas: Replicas::Auto,
        replica_timeout: Duration::from_millis(500),
    };
    let engine = Publisher::connect_with(&url, 2, &settings)
        .await
        .expect("publisher through sentinels");

    // Before the failover: both publish paths, live delivery, resume.
    let mut epoch = String::new();
    for i in 1..=20u64 {
        let (seq, e) = if i % 2 == 0 {
            node.publish(TOPIC, json!({ "id": i })).await
        } else {
            let p = engine
                .publish(TOPIC, &json!({ "id": i }))
                .await
                .expect("publish");
            (p.seq, p.epoch)
        };
        assert_eq!(seq, i);
        epoch = e;
    }
    assert_eq!(
        seqs(&live.recv_pubs(20).await),
        (1..=20).collect::<Vec<_>>()
    );
    let mut early = node.client().await;
    let ack = early
        .subscribe(json!({ "topic": TOPIC, "resume_from_seq": 15, "epoch": epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(
        seqs(&early.recv_pubs(6).await),
        (15..=20).collect::<Vec<_>>()
    );

    // Asking for more replicas than exist: written (it has a seq), but the caller
    // is told after the timeout that only one replica confirmed it.
    let greedy = Publisher::connect_with(
        &url,
        1,
        &RedisSettings {
            replicas: Replicas::Exactly(2),
            ..settings.clone()
        },
    )
    .await
    .expect("publisher");
    let started = std::time::Instant::now();
    match greedy.publish(TOPIC, &json!({ "id": 21 })).await {
        Err(PublishError::NotReplicated(n)) => {
            assert_eq!(
                (n.position.seq, n.acked, n.wanted, n.timeout_ms),
                (21, 1, 2, 500)
            );
            assert!(n.to_string().contains("seq 21"), "{n}");
        }
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(seqs(&live.recv_pubs(1).await), vec![21]);
    // The same through a node's POST /publish: 504, naming the seq it was given.
    let strict_node = start_node(|c| {
        c.redis_url = Some(url.clone());
        c.redis.replicas = Replicas::Exactly(2);
        c.redis.replica_timeout = Duration::from_millis(300);
    })
    .await;
    let body = json!({ "topic": TOPIC, "payload": { "id": 22 } }).to_string();
    let (status, answer) = strict_node.post("/publish", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(status, 504, "{answer}");
    let text = answer["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("seq 22") && text.contains("1 of 2"),
        "{answer}"
    );
    assert_eq!(seqs(&live.recv_pubs(1).await), vec![22]);

    let old_master = set.master.port;
    assert_eq!(set.master_port(), Some(old_master));

    // Publishing continues through the failover: every acknowledged (seq, id) is
    // recorded; a failed call is retried with the same id.
    let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    for i in 1..=22u64 {
        acked.lock().await.insert(i, i);
    }
    let publishing = {
        let acked = acked.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut id = 23u64;
            let mut failures = 0u32;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            while id <= 120 && tokio::time::Instant::now() < deadline {
                match engine.publish(TOPIC, &json!({ "id": id })).await {
                    Ok(p) => {
                        let before = acked.lock().await.insert(p.seq, id);
                        assert!(before.is_none(), "seq {} acknowledged twice", p.seq);
                        id += 1;
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (id, failures)
        })
    };
    eventually(Duration::from_secs(10), "publishing under way", || async {
        acked.lock().await.len() >= 40
    })
    .await;
    set.master.kill();
    eventually(
        Duration::from_secs(20),
        "the replica is promoted",
        || async { set.master_port() == Some(set.replica.port) },
    )
    .await;
    let (next_id, failures) = publishing.await.expect("publisher task");
    assert_eq!(
        next_id, 121,
        "publishing did not recover ({failures} failures)"
    );
    let acked = acked.lock().await.clone();
    let last = *acked.keys().last().expect("acknowledged");

    // A client resuming from the start, on a second node, gets the whole history,
    // every acknowledged publish exactly once at its seq.
    let other = start_node(|c| c.redis_url = Some(url.clone())).await;
    let mut resumed = other.client().await;
    let ack = resumed
        .subscribe(json!({ "topic": TOPIC, "resume_from_seq": 1, "epoch": epoch }))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    // The new master continues the history under a continuation epoch.
    let now = ack["payload"]["epoch"].as_str().expect("epoch");
    assert_eq!(
        sluice_common::position::epoch_cmp(now, &epoch),
        std::cmp::Ordering::Greater,
        "{ack}"
    );
    let got = resumed.recv_pubs_until(last).await;
    assert_eq!(seqs(&got), (1..=last).collect::<Vec<_>>());
    for (seq, id) in &acked {
        let p = &got[(*seq - 1) as usize];
        assert_eq!(p["payload"]["id"], *id, "seq {seq}: {p}");
    }
    let ids: Vec<u64> = got
        .iter()
        .filter_map(|p| p["payload"]["id"].as_u64())
        .collect();
    for id in 1..=120u64 {
        let n = ids.iter().filter(|&&x| x == id).count();
        assert!(n >= 1, "acknowledged id {id} missing");
    }

    // The new master has no replica left: `auto` stops waiting, an explicit 1
    // reports that nothing confirmed the write.
    let strict = Publisher::connect_with(
        &url,
        1,
        &RedisSettings {
            replicas: Replicas::Exactly(1),
            ..settings.clone()
        },
    )
    .await
    .expect("publisher on the new master");
    match strict.publish(TOPIC, &json!({ "id": "strict" })).await {
        Err(PublishError::NotReplicated(n)) => {
            assert_eq!((n.position.seq, n.acked, n.wanted), (last + 1, 0, 1));
        }
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    let (seq, _) = node.publish(TOPIC, json!({ "id": "http" })).await;
    assert_eq!(seq, last + 2);

    // The client that stayed connected keeps receiving on the new master, in order.
    engine
        .publish(TOPIC, &json!({ "id": "after" }))
        .await
        .expect("publish after");
    let rest = live.recv_pubs_until(last + 3).await;
    let s = seqs(&rest);
    assert!(
        s.windows(2).all(|w| w[0] < w[1]),
        "live seqs out of order: {s:?}"
    );
    assert_eq!(s.last(), Some(&(last + 3)));
}
