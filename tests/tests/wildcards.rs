//! Wildcard subscriptions (`prefix.*`, `prefix.>`) on the embedded broker, with real
//! clients: the topics of each depth, existing and new, each message once and in
//! seq order per topic; a wildcard and a concrete subscription each deliver their
//! own copy; unsubscribe; resume refused; permissions; limits.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{json, Value};
use sluice_tests::{
    auth::{assert_forbidden, hs, hs_node, token_for, try_subscribe},
    eventually,
    security::{connect_query, now},
    start_node, TestNode, WsClient, ADMIN_TOKEN,
};

/// The publications received until (and including) `last_topic`'s seq `last_seq`,
/// grouped by topic: topic → seqs in the order received.
async fn collect_until(c: &mut WsClient, last_topic: &str) -> BTreeMap<String, Vec<u64>> {
    let mut by_topic: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    loop {
        let v = c.recv().await.expect("publication");
        assert_eq!(v["type"], "delta", "only deltas expected: {v}");
        let topic = v["topic"].as_str().expect("topic").to_owned();
        by_topic
            .entry(topic.clone())
            .or_default()
            .push(v["seq"].as_u64().expect("seq"));
        if topic == last_topic {
            return by_topic;
        }
    }
}

fn assert_wildcard_ack(ack: &Value, filter: &str) {
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["topic"], filter, "{ack}");
    assert_eq!(
        ack["payload"],
        json!({"subscribed": true, "wildcard": true}),
        "{ack}"
    );
}

async fn subscribe_wildcard(c: &mut WsClient, filter: &str) {
    let ack = c.subscribe(json!({ "topic": filter })).await;
    assert_wildcard_ack(&ack, filter);
}

fn map(entries: &[(&str, &[u64])]) -> BTreeMap<String, Vec<u64>> {
    entries
        .iter()
        .map(|(t, s)| ((*t).to_owned(), s.to_vec()))
        .collect()
}

#[tokio::test]
async fn wildcards_get_existing_and_new_topics_of_their_depth_once_each_in_seq_order() {
    let node = start_node(|_| {}).await;
    // prices.A exists before the subscribes; its first message is not owed.
    node.publish("prices.A", json!({"n": 0})).await;
    let mut one = node.client().await;
    let mut any = node.client().await;
    subscribe_wildcard(&mut one, "prices.*").await;
    subscribe_wildcard(&mut any, "prices.>").await;

    // Interleaved: existing and new topics, deeper ones, look-alikes.
    for round in 0..3 {
        node.publish("prices.A", json!({ "r": round })).await;
        node.publish("prices.B", json!({ "r": round })).await;
        node.publish("prices.A.bid", json!({ "r": round })).await;
        node.publish("pricesX.A", json!({ "r": round })).await;
        node.publish("other.prices.A", json!({ "r": round })).await;
        node.publish("prices", json!({ "r": round })).await;
    }
    node.publish("prices.END", json!({})).await;

    let got_one = collect_until(&mut one, "prices.END").await;
    assert_eq!(
        got_one,
        map(&[
            ("prices.A", &[2, 3, 4]),
            ("prices.B", &[1, 2, 3]),
            ("prices.END", &[1])
        ])
    );
    let got_any = collect_until(&mut any, "prices.END").await;
    assert_eq!(
        got_any,
        map(&[
            ("prices.A", &[2, 3, 4]),
            ("prices.A.bid", &[1, 2, 3]),
            ("prices.B", &[1, 2, 3]),
            ("prices.END", &[1]),
        ])
    );
    // Topics are followed for the wildcards: prices.A, B, A.bid and END.
    let (_, topics) = node.get_json("/topics", Some(ADMIN_TOKEN)).await;
    let names: Vec<&str> = topics["topics"]
        .as_object()
        .expect("topics")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names.len(),
        4,
        "followed for wildcards, nothing else: {names:?}"
    );
    one.close().await;
    any.close().await;
    eventually(Duration::from_secs(5), "every topic unfollowed", || async {
        let (_, h) = node.get_json("/health", None).await;
        h["topics_active"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_topic_matched_by_a_wildcard_and_a_concrete_subscription_is_delivered_to_each() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    subscribe_wildcard(&mut c, "prices.*").await;
    let ack = c.subscribe(json!({ "topic": "prices.A" })).await;
    assert_eq!(ack["payload"]["subscribed"], true, "{ack}");
    assert!(ack["payload"].get("wildcard").is_none(), "{ack}");
    subscribe_wildcard(&mut c, "prices.>").await;
    for i in 1..=3 {
        node.publish("prices.A", json!({ "i": i })).await;
    }
    // Three subscriptions match: three copies of each seq, in seq order.
    let pubs = c.recv_pubs(9).await;
    let seqs: Vec<u64> = pubs.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 1, 1, 2, 2, 2, 3, 3, 3]);
    assert!(pubs.iter().all(|p| p["topic"] == "prices.A"));

    // Re-subscribing a held wildcard is acked and changes nothing.
    let again = c.subscribe(json!({ "topic": "prices.*" })).await;
    assert_eq!(again["payload"]["already_subscribed"], true, "{again}");

    // Unsubscribe each wildcard: the copies go with them.
    for filter in ["prices.*", "prices.>"] {
        c.send_json(json!({"type": "unsubscribe", "topic": filter}))
            .await;
        let ack = c.recv().await.expect("unsubscribe ack");
        assert_eq!(ack["topic"], filter, "{ack}");
        assert_eq!(ack["payload"]["was_subscribed"], true, "{ack}");
    }
    node.publish("prices.B", json!({})).await; // new topic: no wildcard wants it now
    node.publish("prices.A", json!({ "i": 4 })).await;
    let next = c.recv_pubs(1).await;
    assert_eq!(next[0]["topic"], "prices.A", "{}", next[0]);
    assert_eq!(next[0]["seq"], 4);
    c.send_json(json!({"type": "unsubscribe", "topic": "prices.*"}))
        .await;
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["payload"]["was_subscribed"], false, "{ack}");
    c.ping_pong("after").await;
}

#[tokio::test]
async fn a_resume_on_a_wildcard_is_refused_with_a_clear_error() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    c.send_json(
        json!({"type": "subscribe", "topic": "prices.*", "resume_from_seq": 3, "epoch": "e"}),
    )
    .await;
    let err = c.recv().await.expect("error");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "INVALID_TOPIC", "{err}");
    assert_eq!(err["details"]["topic"], "prices.*", "{err}");
    assert!(err["error"].as_str().unwrap().contains("resumed"), "{err}");
    c.ping_pong("still open").await;
}

#[tokio::test]
async fn wildcards_are_allowed_only_when_the_token_may_read_every_match() {
    // Auth off: private families are refused, public wildcards allowed.
    let open = start_node(|_| {}).await;
    let mut anon = open.client().await;
    for refused in ["trading.*", "risk.bob.>", "mobile.>"] {
        assert_forbidden(&try_subscribe(&mut anon, refused).await, refused);
    }
    assert_wildcard_ack(&try_subscribe(&mut anon, "auctions.>").await, "auctions.>");

    let node = hs_node(|_| {}).await;
    let mut bob = connect_query(&node.ws_url("/ws"), &token_for("bob"))
        .await
        .expect("bob connects");
    assert_wildcard_ack(&try_subscribe(&mut bob, "risk.bob.>").await, "risk.bob.>");
    for refused in ["risk.*", "risk.>", "trading.*", "risk.alice.>"] {
        assert_forbidden(&try_subscribe(&mut bob, refused).await, refused);
    }
    // bob's own wildcard gets his topics, created after the subscribe.
    node.publish("risk.bob.alerts", json!({"x": 1})).await;
    let p = bob.recv_pubs(1).await;
    assert_eq!(p[0]["topic"], "risk.bob.alerts");
    assert_eq!(p[0]["seq"], 1);

    let claims = hs(&json!({"sub": "carol", "exp": now() + 600, "topics": ["prices.>"]}));
    let mut carol = connect_query(&node.ws_url("/ws"), &claims)
        .await
        .expect("carol connects");
    assert_wildcard_ack(
        &try_subscribe(&mut carol, "prices.EU.*").await,
        "prices.EU.*",
    );
    assert_wildcard_ack(&try_subscribe(&mut carol, "prices.>").await, "prices.>");
    assert_forbidden(&try_subscribe(&mut carol, "auctions.*").await, "auctions.*");

    // A refresh to a narrower claim ends the wildcard it no longer covers.
    let narrower = hs(&json!({"sub": "carol", "exp": now() + 600, "topics": ["prices.EU.*"]}));
    carol
        .send_json(json!({"type": "refresh", "token": narrower}))
        .await;
    let ack = carol.recv().await.expect("refresh ack");
    assert_eq!(ack["payload"]["refreshed"], true, "{ack}");
    let err = carol.recv().await.expect("forbidden");
    assert_eq!(err["code"], "FORBIDDEN", "{err}");
    assert_eq!(err["details"]["topic"], "prices.>", "{err}");
    assert_eq!(err["details"]["refused"], 1, "{err}");
    // prices.EU.* stays: a new topic under it is delivered once, not twice.
    node.publish("prices.EU.X", json!({})).await;
    node.publish("prices.US", json!({})).await;
    node.publish("prices.EU.Y", json!({})).await;
    let pubs = carol.recv_pubs(2).await;
    assert_eq!(pubs[0]["topic"], "prices.EU.X", "{}", pubs[0]);
    assert_eq!(pubs[1]["topic"], "prices.EU.Y", "{}", pubs[1]);

    let mut admin = connect_query(
        &node.ws_url("/ws"),
        &hs(&json!({"sub": "ops", "exp": now() + 600, "admin": true})),
    )
    .await
    .expect("admin connects");
    assert_wildcard_ack(&try_subscribe(&mut admin, "trading.*").await, "trading.*");
}

async fn health_topics(node: &TestNode) -> u64 {
    let (_, h) = node.get_json("/health", None).await;
    h["topics_active"].as_u64().expect("topics_active")
}

#[tokio::test]
async fn a_wildcard_counts_as_one_subscription_and_its_topics_toward_the_node_limit() {
    let node = start_node(|c| {
        c.max_subscriptions = 2;
        c.max_topics = 3;
    })
    .await;
    for i in 1..=3 {
        node.publish(&format!("prices.P{i}"), json!({})).await;
    }
    node.publish("big.1", json!({})).await;
    let mut c = node.client().await;
    // prices.* matches three topics and the node may follow three: allowed.
    subscribe_wildcard(&mut c, "prices.*").await;
    assert_eq!(health_topics(&node).await, 3);
    // One more topic does not fit: refused whole, nothing left followed for it.
    let err = try_subscribe(&mut c, "big.*").await;
    assert_eq!(err["code"], "TOO_MANY_SUBSCRIPTIONS", "{err}");
    assert_eq!(err["details"]["node_topic_limit"], 3, "{err}");
    assert_eq!(health_topics(&node).await, 3);
    // The connection holds one subscription: room for one more, not two.
    let ack = c.subscribe(json!({ "topic": "prices.P1" })).await;
    assert_eq!(ack["payload"]["subscribed"], true, "{ack}");
    let err = try_subscribe(&mut c, "prices.>").await;
    assert_eq!(err["code"], "TOO_MANY_SUBSCRIPTIONS", "{err}");
    assert_eq!(err["details"]["limit"], 2, "{err}");
}

#[tokio::test]
async fn in_background_mode_a_wildcard_conflates_per_topic_and_sends_alerts_at_once() {
    // No conflation tick during the test: what is sent comes from the alert and
    // from leaving background mode.
    let node = start_node(|c| c.conflate = Duration::from_secs(3600)).await;
    let mut c = node.client().await;
    subscribe_wildcard(&mut c, "prices.*").await;
    c.send_json(json!({"type": "background_mode", "enabled": true}))
        .await;
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["payload"]["background_mode"], true, "{ack}");
    for i in 1..=5 {
        node.publish("prices.A", json!({ "i": i })).await;
        node.publish("prices.B", json!({ "i": i })).await;
    }
    node.publish_body(json!({"topic": "prices.A", "payload": {"alert": true}, "type": "alert"}))
        .await;
    // The alert goes out at once, after prices.A's newest pending message.
    let pubs = c.recv_pubs(2).await;
    assert_eq!(
        (pubs[0]["topic"].as_str(), pubs[0]["seq"].as_u64()),
        (Some("prices.A"), Some(5))
    );
    assert_eq!(pubs[1]["type"], "alert", "{}", pubs[1]);
    assert_eq!(pubs[1]["seq"], 6);
    // Leaving background mode sends prices.B's newest, once.
    c.send_json(json!({"type": "background_mode", "enabled": false}))
        .await;
    let b = c.recv().await.expect("prices.B's newest");
    assert_eq!(
        (b["topic"].as_str(), b["seq"].as_u64()),
        (Some("prices.B"), Some(5)),
        "{b}"
    );
    let ack = c.recv().await.expect("ack");
    assert_eq!(ack["payload"]["background_mode"], false, "{ack}");
    node.publish("prices.B", json!({ "i": 6 })).await;
    let live = c.recv_pubs(1).await;
    assert_eq!(live[0]["seq"], 6, "{}", live[0]);
}
