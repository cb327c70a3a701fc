//! Issue 12: a client that saw a message the new master lacks is told. Two
//! `redis-server` processes on loopback, master A and replica B: topics are
//! written on A and replicated, then B is promoted (`REPLICAOF NO ONE`, a new
//! replication id) while A still takes one more publish that B never gets (the
//! message a failover loses after it was delivered live). Publishes on B open a
//! continuation epoch that forks at that seq; resumes and live sessions from
//! below the fork go on seamlessly, those that saw the lost message get
//! `recovered: false` and the snapshot.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_common::position::epoch_cmp;
use sluice_tests::{
    eventually,
    redis_topology::{cli, free_port, temp_dir, RedisProcess},
    seqs, start_node, Closed, TestNode, ADMIN_TOKEN,
};

const LOST: &str = "fork.lost";
const KEPT: &str = "fork.kept";

async fn node_on(port: u16) -> TestNode {
    start_node(move |c| c.redis_url = Some(format!("redis://127.0.0.1:{port}"))).await
}

/// Publishes `{"v": v}` with the same document as the snapshot.
async fn publish(node: &TestNode, topic: &str, v: &str) -> (u64, String) {
    node.publish_body(json!({"topic": topic, "payload": {"v": v}, "snapshot": {"v": v}}))
        .await
}

fn link_up(replica: u16) -> bool {
    cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
}

async fn wait_link(replica: u16) {
    eventually(
        Duration::from_secs(30),
        "the replica's link is up",
        || async move { link_up(replica) },
    )
    .await;
}

fn values(pubs: &[Value]) -> Vec<String> {
    pubs.iter()
        .map(|p| p["payload"]["v"].as_str().expect("v").to_owned())
        .collect()
}

fn epochs(pubs: &[Value]) -> Vec<String> {
    pubs.iter()
        .map(|p| p["epoch"].as_str().expect("epoch").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_continues_below_the_lost_message_and_tells_those_who_saw_it() {
    let dir = temp_dir("fork");
    let (pa, pb) = (free_port(), free_port());
    let mut a = RedisProcess::data(&dir, pa, &[]);
    let _b = RedisProcess::data(&dir, pb, &["--replicaof", "127.0.0.1", &pa.to_string()]);
    wait_link(pb).await;
    let na = node_on(pa).await;

    // Live clients on A's node, one per topic (a fork ends a whole connection).
    let mut live_lost = na.client().await;
    live_lost.subscribe(json!({"topic": LOST})).await;
    let mut live_kept = na.client().await;
    live_kept.subscribe(json!({"topic": KEPT})).await;

    let mut e1 = String::new();
    for i in 1..=3 {
        let (seq, epoch) = publish(&na, LOST, &format!("a{i}")).await;
        assert_eq!(seq, i);
        e1 = epoch;
        publish(&na, KEPT, &format!("a{i}")).await;
    }
    let got = live_lost.recv_pubs(3).await;
    assert_eq!(
        (seqs(&got), epochs(&got)),
        (vec![1, 2, 3], vec![e1.clone(); 3])
    );
    let kept = live_kept.recv_pubs(3).await;
    let k1 = kept[0]["epoch"].as_str().expect("epoch").to_owned();
    let meta = |t: &str| format!("sluice:{{{t}}}:meta");
    eventually(
        Duration::from_secs(10),
        "B has seq 3 of both topics",
        || {
            let (l, k) = (meta(LOST), meta(KEPT));
            async move {
                cli(pb, &["HGET", &l, "seq"]).trim() == "3"
                    && cli(pb, &["HGET", &k, "seq"]).trim() == "3"
            }
        },
    )
    .await;

    // B is promoted; A, cut off, takes seq 4 of LOST and delivers it live.
    assert_eq!(cli(pb, &["REPLICAOF", "NO", "ONE"]).trim(), "OK");
    // (A still counts B as its replica for a moment, or has none: the publish is
    // acknowledged, or written and reported unconfirmed, 504, naming its seq.)
    let body = json!({"topic": LOST, "payload": {"v": "lost4"}, "snapshot": {"v": "lost4"}});
    let (status, v) = na
        .post("/publish", Some(ADMIN_TOKEN), &body.to_string())
        .await;
    match status {
        200 => assert_eq!(
            (v["seq"].as_u64(), v["epoch"].as_str()),
            (Some(4), Some(e1.as_str()))
        ),
        504 => assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("seq 4 (epoch {e1})"))),
            "{v}"
        ),
        _ => panic!("publish on the old master: {status} {v}"),
    }
    let got = live_lost.recv_pubs(1).await;
    assert_eq!(values(&got), ["lost4"]);

    // B continues both topics under continuation epochs, from its own head.
    let nb = node_on(pb).await;
    let (s4, e2) = publish(&nb, LOST, "b4").await;
    assert_eq!(s4, 4, "B had seq 3: the new message takes 4");
    assert_ne!(e2, e1);
    assert_eq!(
        epoch_cmp(&e2, &e1),
        std::cmp::Ordering::Greater,
        "newer epoch"
    );
    assert_eq!(publish(&nb, LOST, "b5").await, (5, e2.clone()));
    assert_eq!(cli(pb, &["HGET", &meta(LOST), "par"]).trim(), e1);
    assert_eq!(cli(pb, &["HGET", &meta(LOST), "fork"]).trim(), "4");

    // Saw 3: resumes seamlessly with exactly the new 4 and 5, in the new epoch.
    let mut r3 = nb.client().await;
    let ack = r3
        .subscribe(json!({"topic": LOST, "resume_from_seq": 4, "epoch": e1}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(ack["payload"]["epoch"], e2.as_str());
    assert_eq!(ack["payload"]["head_seq"], 5);
    let got = r3.recv_pubs(2).await;
    assert_eq!(seqs(&got), [4, 5]);
    assert_eq!(values(&got), ["b4", "b5"]);
    assert_eq!(epochs(&got), [e2.clone(), e2.clone()]);
    assert_eq!(publish(&nb, LOST, "b6").await, (6, e2.clone()));
    r3.expect_sentinel(LOST, 6).await;

    // Saw the lost 4: told, with the snapshot of B's lineage.
    let mut r4 = nb.client().await;
    let ack = r4
        .subscribe(json!({"topic": LOST, "resume_from_seq": 5, "epoch": e1}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    assert_eq!(ack["payload"]["epoch"], e2.as_str());
    let snap = r4.recv_pubs(1).await;
    assert_eq!(snap[0]["type"], "snapshot");
    assert_eq!(
        (snap[0]["seq"].as_u64(), values(&snap)),
        (Some(6), vec!["b6".to_owned()])
    );

    // History across the fork: B's lineage, all in the new epoch.
    let (status, h) = nb
        .get_json(
            &format!("/topics/{LOST}/history?from_seq=1"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{h}");
    let msgs = h["messages"].as_array().expect("messages").clone();
    assert_eq!(seqs(&msgs), [1, 2, 3, 4, 5, 6]);
    assert_eq!(values(&msgs), ["a1", "a2", "a3", "b4", "b5", "b6"]);
    assert!(epochs(&msgs).iter().all(|e| *e == e2), "{msgs:?}");

    // The old master comes back as B's replica: A's node now reads B's data. Its
    // session that delivered the lost 4 is cut (4008) instead of skipping B's 4
    // as a duplicate; the one on the other topic (nothing lost) goes on in the
    // continuation epoch with the next seq.
    assert_eq!(
        cli(pa, &["REPLICAOF", "127.0.0.1", &pb.to_string()]).trim(),
        "OK"
    );
    wait_link(pa).await;
    let (s7, _) = publish(&nb, LOST, "b7").await;
    assert_eq!(s7, 7);
    let (k4, k2) = publish(&nb, KEPT, "b4").await;
    assert_eq!(k4, 4);
    assert_eq!(epoch_cmp(&k2, &k1), std::cmp::Ordering::Greater);
    assert_eq!(
        live_lost.expect_close().await,
        Closed::Code(4008),
        "told to resume"
    );
    let got = live_kept.recv_pubs(1).await;
    assert_eq!(
        (seqs(&got), values(&got), epochs(&got)),
        (vec![4], vec!["b4".to_owned()], vec![k2.clone()])
    );
    let (k5, _) = publish(&nb, KEPT, "b5").await;
    live_kept.expect_sentinel(KEPT, k5).await;

    // The cut client resumes where it was, (e1, 4): recovered false, the snapshot.
    let mut again = nb.client().await;
    let ack = again
        .subscribe(json!({"topic": LOST, "resume_from_seq": 5, "epoch": e1}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    let snap = again.recv_pubs(1).await;
    assert_eq!(
        (snap[0]["type"].as_str(), snap[0]["seq"].as_u64()),
        (Some("snapshot"), Some(7))
    );

    na.shutdown().await;
    nb.shutdown().await;
    a.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
