//! Resuming: `resume_from_seq: N` replays exactly `seq >= N` then goes live, when N
//! is inside the retained history and the epoch matches; otherwise the ack says
//! `recovered: false` and the client gets the snapshot and continues from it.

use serde_json::json;
use sluice_tests::{seqs, start_node};

#[tokio::test]
async fn resume_from_n_replays_exactly_seq_n_onwards_then_goes_live() {
    let node = start_node(|_| {}).await;
    let topic = "prices.RES1";
    let mut epoch = String::new();
    for i in 1..=10u64 {
        // A snapshot exists, but a recovered resume must not send it.
        let snap = (i == 6).then_some(r#"{"state":6}"#);
        let (seq, e) = node
            .publish_direct(topic, &format!(r#"{{"i":{i}}}"#), snap)
            .await;
        assert_eq!(seq, i);
        epoch = e;
    }

    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 4, "epoch": epoch}))
        .await;
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "head_seq": 10, "epoch": epoch, "recovered": true})
    );
    let pubs = c.recv_pubs(7).await;
    assert_eq!(seqs(&pubs), (4..=10).collect::<Vec<_>>());
    for p in &pubs {
        assert_eq!(
            p["type"], "delta",
            "replay carries the deltas, not the snapshot: {p}"
        );
        assert_eq!(p["payload"]["i"], p["seq"], "{p}");
        assert_eq!(p["epoch"], epoch.as_str());
    }
    node.publish(topic, json!({"i": 11})).await;
    assert_eq!(
        seqs(&c.recv_pubs(1).await),
        [11],
        "then live, nothing twice"
    );
}

#[tokio::test]
async fn resume_without_an_epoch_is_a_mismatch_and_at_the_head_is_recovered() {
    let node = start_node(|_| {}).await;
    let topic = "prices.RES2";
    let mut epoch = String::new();
    for i in 1..=5u64 {
        epoch = node.publish_direct(topic, &i.to_string(), None).await.1;
    }
    // No epoch given: the node cannot tell which history the seq is from (SPEC §3),
    // so it is a mismatch; with no snapshot the client continues live from the head.
    let mut a = node.client().await;
    let ack = a
        .subscribe(json!({"topic": topic, "resume_from_seq": 5}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], 5, "{ack}");
    assert_eq!(
        a.recv_within(std::time::Duration::from_millis(300)).await,
        None
    );

    // Resuming at head + 1 in the right epoch: nothing missed, recovered, the next
    // message is live.
    let mut b = node.client().await;
    let ack = b
        .subscribe(json!({"topic": topic, "resume_from_seq": 6, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], 5, "{ack}");
    node.publish(topic, json!(6)).await;
    assert_eq!(seqs(&a.recv_pubs(1).await), [6]);
    assert_eq!(seqs(&b.recv_pubs(1).await), [6]);
}

#[tokio::test]
async fn resume_across_more_than_one_history_page_is_complete_and_ordered() {
    let node = start_node(|_| {}).await;
    let topic = "prices.RES3";
    let mut epoch = String::new();
    for i in 1..=1_300u64 {
        epoch = node.publish_direct(topic, &i.to_string(), None).await.1;
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 3, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], 1_300, "{ack}");
    let pubs = c.recv_pubs(1_298).await;
    assert_eq!(seqs(&pubs), (3..=1_300).collect::<Vec<_>>());
    node.publish(topic, json!(1_301)).await;
    assert_eq!(seqs(&c.recv_pubs(1).await), [1_301]);
}

#[tokio::test]
async fn resume_older_than_history_is_not_recovered_and_gets_the_snapshot() {
    let node = start_node(|cfg| cfg.history_size = 5).await;
    let topic = "prices.RES4";
    let mut epoch = String::new();
    for i in 1..=20u64 {
        let snap = (i == 18).then_some(r#"{"state":18}"#);
        epoch = node
            .publish_direct(topic, &format!(r#"{{"i":{i}}}"#), snap)
            .await
            .1;
    }
    // History now holds 16..=20; seq 3 is long gone.
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 3, "epoch": epoch}))
        .await;
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "head_seq": 20, "epoch": epoch, "recovered": false})
    );
    let pubs = c.recv_pubs(3).await;
    assert_eq!(pubs[0]["type"], "snapshot", "{:?}", pubs[0]);
    assert_eq!(pubs[0]["payload"], json!({"state": 18}));
    assert_eq!(seqs(&pubs), [18, 19, 20]);
    assert_eq!(pubs[1]["type"], "delta");
    node.publish(topic, json!({"i": 21})).await;
    assert_eq!(seqs(&c.recv_pubs(1).await), [21], "then live");

    // Just inside the retained history is still recovered.
    let mut d = node.client().await;
    let ack = d
        .subscribe(json!({"topic": topic, "resume_from_seq": 17, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(seqs(&d.recv_pubs(5).await), [17, 18, 19, 20, 21]);
}

#[tokio::test]
async fn resume_older_than_history_without_a_snapshot_continues_live() {
    let node = start_node(|cfg| cfg.history_size = 5).await;
    let topic = "prices.RES5";
    let mut epoch = String::new();
    for i in 1..=12u64 {
        epoch = node.publish_direct(topic, &i.to_string(), None).await.1;
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 2, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    assert_eq!(ack["payload"]["head_seq"], 12, "{ack}");
    node.publish(topic, json!(13)).await;
    assert_eq!(seqs(&c.recv_pubs(1).await), [13]);
}

#[tokio::test]
async fn resume_with_a_different_epoch_is_not_recovered_and_gets_the_snapshot() {
    let node = start_node(|_| {}).await;
    let topic = "prices.RES6";
    let mut epoch = String::new();
    for i in 1..=6u64 {
        let snap = (i == 4).then_some(r#"{"state":4}"#);
        epoch = node.publish_direct(topic, &i.to_string(), snap).await.1;
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 2, "epoch": "not-the-epoch"}))
        .await;
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "head_seq": 6, "epoch": epoch, "recovered": false})
    );
    let pubs = c.recv_pubs(3).await;
    assert_eq!(pubs[0]["type"], "snapshot", "{:?}", pubs[0]);
    assert_eq!(pubs[0]["payload"], json!({"state": 4}));
    assert_eq!(seqs(&pubs), [4, 5, 6]);
    node.publish(topic, json!(7)).await;
    assert_eq!(seqs(&c.recv_pubs(1).await), [7]);
}

#[tokio::test]
async fn per_topic_resume_positions_in_a_topics_list_are_honoured() {
    let node = start_node(|_| {}).await;
    let mut epochs = Vec::new();
    for t in ["pos.a", "pos.b"] {
        for i in 1..=6u64 {
            let e = node.publish_direct(t, &i.to_string(), None).await.1;
            if i == 6 {
                epochs.push(e);
            }
        }
    }
    let mut c = node.client().await;
    c.send_json(json!({
        "type": "subscribe",
        "topics": [
            {"topic": "pos.a", "resume_from_seq": 5, "epoch": epochs[0]},
            {"topic": "pos.b", "resume_from_seq": 2, "epoch": epochs[1]},
        ],
    }))
    .await;
    let mut frames = Vec::new();
    while frames.len() < 2 + 2 + 5 {
        frames.push(c.recv().await.expect("frame"));
    }
    let of = |t: &str| -> Vec<u64> {
        frames
            .iter()
            .filter(|f| f["topic"] == t && f["type"] == "delta")
            .map(|f| f["seq"].as_u64().expect("seq"))
            .collect()
    };
    let acks: Vec<_> = frames.iter().filter(|f| f["type"] == "ack").collect();
    assert_eq!(acks.len(), 2, "{frames:?}");
    assert!(
        acks.iter().all(|a| a["payload"]["recovered"] == true),
        "{acks:?}"
    );
    assert_eq!(of("pos.a"), [5, 6]);
    assert_eq!(of("pos.b"), [2, 3, 4, 5, 6]);
}
