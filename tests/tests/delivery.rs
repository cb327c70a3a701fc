//! Live delivery: every subscriber gets every publication exactly once, in seq order;
//! `topics: [..]` acks each topic; a fresh subscriber gets the snapshot, then only the
//! deltas after it.

use serde_json::json;
use sluice_tests::{seqs, start_node};

#[tokio::test]
async fn live_publications_reach_every_client_once_in_seq_order() {
    let node = start_node(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = node.client().await;
        let ack = c.subscribe(json!({"topic": "prices.LIVE1"})).await;
        assert_eq!(ack["topic"], "prices.LIVE1");
        assert_eq!(ack["payload"]["head_seq"], 0);
        clients.push(c);
    }

    let mut epoch = None;
    for i in 1..=200u64 {
        let body = if i % 10 == 0 {
            json!({"topic": "prices.LIVE1", "payload": {"i": i}, "type": "alert"})
        } else {
            json!({"topic": "prices.LIVE1", "data": {"i": i}})
        };
        let (seq, e) = node.publish_body(body).await;
        assert_eq!(seq, i, "publish answers the topic's next seq");
        assert_eq!(*epoch.get_or_insert_with(|| e.clone()), e, "one epoch");
    }
    let epoch = epoch.expect("published");

    for (n, c) in clients.iter_mut().enumerate() {
        let pubs = c.recv_pubs(200).await;
        assert_eq!(seqs(&pubs), (1..=200).collect::<Vec<_>>(), "client {n}");
        for p in &pubs {
            let seq = p["seq"].as_u64().expect("seq");
            let want_type = if seq % 10 == 0 { "alert" } else { "delta" };
            assert_eq!(p["type"], want_type, "client {n}: {p}");
            assert_eq!(p["topic"], "prices.LIVE1");
            assert_eq!(p["epoch"], epoch.as_str(), "client {n}: {p}");
            assert_eq!(p["payload"], json!({"i": seq}), "client {n}: {p}");
            assert!(p["ts"].is_string(), "{p}");
        }
    }

    // Nothing was duplicated or left over: the very next frame is the next seq.
    node.publish("prices.LIVE1", json!({"i": 201})).await;
    for (n, c) in clients.iter_mut().enumerate() {
        let next = c.recv_pubs(1).await;
        assert_eq!(seqs(&next), [201], "client {n}");
    }
}

#[tokio::test]
async fn publications_of_other_topics_are_not_delivered() {
    let node = start_node(|_| {}).await;
    let mut a = node.client().await;
    a.subscribe(json!({"topic": "t.a"})).await;
    let mut b = node.client().await;
    b.subscribe(json!({"topic": "t.b"})).await;
    for i in 1..=5 {
        node.publish("t.a", json!({"a": i})).await;
        node.publish("t.other", json!({"o": i})).await;
    }
    node.publish("t.b", json!({"b": 1})).await;
    let got_a = a.recv_pubs(5).await;
    assert!(got_a.iter().all(|p| p["topic"] == "t.a"), "{got_a:?}");
    assert_eq!(seqs(&got_a), [1, 2, 3, 4, 5]);
    let got_b = b.recv_pubs(1).await;
    assert_eq!(got_b[0]["topic"], "t.b");
    assert_eq!(got_b[0]["payload"], json!({"b": 1}));
}

#[tokio::test]
async fn a_topics_list_gets_one_ack_per_topic_with_position() {
    let node = start_node(|_| {}).await;
    let (_, epoch_a) = node.publish("multi.a", json!(1)).await;
    node.publish("multi.a", json!(2)).await;
    let (_, epoch_b) = node.publish("multi.b", json!(1)).await;

    let mut c = node.client().await;
    c.send_json(json!({
        "type": "subscribe",
        "topics": ["multi.a", "multi.b", "multi.empty"],
        "correlation_id": "sub-1",
    }))
    .await;
    let mut acks = Vec::new();
    for _ in 0..3 {
        let f = c.recv().await.expect("ack");
        assert_eq!(f["type"], "ack", "only acks are due (no snapshots): {f}");
        assert_eq!(f["correlation_id"], "sub-1", "{f}");
        acks.push(f);
    }
    let by_topic = |t: &str| {
        acks.iter()
            .find(|a| a["topic"] == t)
            .unwrap_or_else(|| panic!("no ack for {t}: {acks:?}"))
            .clone()
    };
    assert_eq!(
        by_topic("multi.a")["payload"],
        json!({"subscribed": true, "head_seq": 2, "epoch": epoch_a, "recovered": false})
    );
    assert_eq!(
        by_topic("multi.b")["payload"],
        json!({"subscribed": true, "head_seq": 1, "epoch": epoch_b, "recovered": false})
    );
    let empty = by_topic("multi.empty")["payload"].clone();
    assert_eq!(empty["subscribed"], true, "{empty}");
    assert_eq!(empty["head_seq"], 0, "{empty}");
    assert_eq!(empty["recovered"], false, "{empty}");
    assert!(
        empty["epoch"].is_null(),
        "a topic with no messages has no epoch yet: {empty}"
    );

    // All three are live now; the session was already at each head, so the next
    // message of each is the first it sees.
    node.publish("multi.b", json!(2)).await;
    node.publish("multi.empty", json!(1)).await;
    node.publish("multi.a", json!(3)).await;
    let pubs = c.recv_pubs(3).await;
    let got: Vec<(String, u64)> = pubs
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().expect("topic").to_owned(),
                p["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("multi.b".to_owned(), 2),
            ("multi.empty".to_owned(), 1),
            ("multi.a".to_owned(), 3)
        ]
    );
}

#[tokio::test]
async fn a_fresh_subscriber_gets_the_snapshot_then_only_later_deltas() {
    let node = start_node(|_| {}).await;
    let topic = "book.SNAP1";
    node.publish(topic, json!({"d": 1})).await;
    node.publish(topic, json!({"d": 2})).await;
    let (seq3, epoch) = node
        .publish_body(json!({"topic": topic, "payload": {"d": 3}, "snapshot": {"state": 3}}))
        .await;
    assert_eq!(seq3, 3);
    node.publish(topic, json!({"d": 4})).await;
    node.publish(topic, json!({"d": 5})).await;

    let mut c = node.client().await;
    let ack = c.subscribe(json!({"topic": topic})).await;
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "head_seq": 5, "epoch": epoch, "recovered": false})
    );
    let pubs = c.recv_pubs(3).await;
    assert_eq!(pubs[0]["type"], "snapshot", "{:?}", pubs[0]);
    assert_eq!(pubs[0]["seq"], 3);
    assert_eq!(pubs[0]["epoch"], epoch.as_str());
    assert_eq!(pubs[0]["payload"], json!({"state": 3}));
    assert_eq!(pubs[1]["type"], "delta");
    assert_eq!(pubs[1]["payload"], json!({"d": 4}));
    assert_eq!(pubs[2]["type"], "delta");
    assert_eq!(pubs[2]["payload"], json!({"d": 5}));
    assert_eq!(seqs(&pubs), [3, 4, 5]);

    // Live continues right after, with no duplicate of 4 or 5.
    node.publish(topic, json!({"d": 6})).await;
    let live = c.recv_pubs(1).await;
    assert_eq!(seqs(&live), [6]);
    assert_eq!(live[0]["type"], "delta");

    // A new snapshot: the existing subscriber sees only the delta of that publish,
    // a newer subscriber starts from the new snapshot.
    node.publish_body(json!({"topic": topic, "payload": {"d": 7}, "snapshot": {"state": 7}}))
        .await;
    let next = c.recv_pubs(1).await;
    assert_eq!(next[0]["type"], "delta", "{:?}", next[0]);
    assert_eq!(next[0]["seq"], 7);
    assert_eq!(next[0]["payload"], json!({"d": 7}));

    let mut late = node.client().await;
    let ack = late.subscribe(json!({"topic": topic})).await;
    assert_eq!(ack["payload"]["head_seq"], 7);
    let first = late.recv_pubs(1).await;
    assert_eq!(first[0]["type"], "snapshot");
    assert_eq!(first[0]["seq"], 7);
    assert_eq!(first[0]["payload"], json!({"state": 7}));
    node.publish(topic, json!({"d": 8})).await;
    for c in [&mut c, &mut late] {
        let p = c.recv_pubs(1).await;
        assert_eq!(seqs(&p), [8]);
        assert_eq!(p[0]["type"], "delta");
    }
}

#[tokio::test]
async fn a_fresh_subscriber_without_a_snapshot_starts_at_the_next_live_seq() {
    let node = start_node(|_| {}).await;
    for i in 1..=4 {
        node.publish("nosnap.t", json!(i)).await;
    }
    let mut c = node.client().await;
    let ack = c.subscribe(json!({"topic": "nosnap.t"})).await;
    assert_eq!(ack["payload"]["head_seq"], 4);
    assert_eq!(ack["payload"]["recovered"], false);
    node.publish("nosnap.t", json!(5)).await;
    let p = c.recv_pubs(1).await;
    assert_eq!(
        seqs(&p),
        [5],
        "no history is replayed without resume_from_seq"
    );
}

#[tokio::test]
async fn unsubscribe_acks_and_stops_delivery_of_that_topic_only() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    c.send_json(json!({"type": "subscribe", "topics": ["u.a", "u.b"]}))
        .await;
    for _ in 0..2 {
        assert_eq!(c.recv().await.expect("ack")["type"], "ack");
    }
    c.send_json(json!({"type": "unsubscribe", "topic": "u.a", "correlation_id": "un-1"}))
        .await;
    let ack = c.recv().await.expect("unsubscribe ack");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["topic"], "u.a", "{ack}");
    assert_eq!(ack["correlation_id"], "un-1", "{ack}");
    node.publish("u.a", json!(1)).await;
    node.publish("u.b", json!(1)).await;
    let p = c.recv_pubs(1).await;
    assert_eq!(
        p[0]["topic"], "u.b",
        "u.a is no longer delivered: {:?}",
        p[0]
    );
    let (_, topics) = node
        .get_json("/topics", Some(sluice_tests::ADMIN_TOKEN))
        .await;
    assert_eq!(topics["topic_count"], 1, "{topics}");
    assert!(topics["topics"]["u.a"].is_null(), "{topics}");
}
