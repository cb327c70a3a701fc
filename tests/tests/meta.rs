//! `meta` in the envelope: every snapshot, delta and alert a node delivers carries
//! `meta.node` = that node's id (live, replayed from Redis or from the node's tail,
//! in REST history), plus the engine's own meta members when the publish gave some
//! (`FCALL sluice_publish … <meta>`, `Publisher::publish_with_meta`, `POST
//! /publish` with `meta`). Bad meta is refused with a clear error and publishes
//! nothing.

use fred::{
    clients::Client,
    interfaces::{ClientLike, FunctionInterface, HashesInterface, StreamsInterface},
};
use serde_json::{json, Value};
use sluice_common::publisher::{PublishError, PublishKind, Publisher};
use sluice_tests::{
    process::NodeProcess, redis::TestRedis, seqs, start_node, start_redis_node, TestNode, WsClient,
    ADMIN_TOKEN,
};

fn meta_of(frames: &[Value]) -> Vec<Value> {
    frames.iter().map(|f| f["meta"].clone()).collect()
}

/// `(status, body)` of a `POST /publish` with the admin token.
async fn post_publish(node: &TestNode, body: Value) -> (u16, Value) {
    node.post("/publish", Some(ADMIN_TOKEN), &body.to_string())
        .await
}

/// REST history of `topic` from seq 1, as the node answers it.
async fn rest_history(node: &TestNode, topic: &str) -> Vec<Value> {
    let (status, v) = node
        .get_json(
            &format!("/topics/{topic}/history?from_seq=1"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["messages"].as_array().expect("messages").clone()
}

/// `POST /publish` refuses every kind of bad meta with a 400 naming `meta`, and
/// nothing is published (the next good publish gets the next seq).
async fn check_bad_meta_over_http(node: &TestNode, topic: &str) {
    let (seq, _) = node.publish(topic, json!({"ok": 1})).await;
    let big = json!({ "pad": "x".repeat(5000) });
    for bad in [
        json!([1, 2]),
        json!(7),
        json!("text"),
        json!(true),
        json!({"node": "forged"}),
        big,
    ] {
        let (status, v) =
            post_publish(node, json!({"topic": topic, "payload": 1, "meta": bad})).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["code"], "INVALID_MESSAGE", "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("meta"),
            "the error names meta: {v}"
        );
    }
    let (next, _) = node.publish(topic, json!({"ok": 2})).await;
    assert_eq!(next, seq + 1, "no bad publish took a seq");
}

#[tokio::test]
async fn embedded_broker_every_delivery_names_the_node_and_carries_engine_meta() {
    let node = start_node(|c| c.node_id = "mem-a".into()).await;
    let topic = "prices.META1";
    let mut live = node.client().await;
    live.subscribe(json!({"topic": topic})).await;

    let (status, v) = post_publish(
        &node,
        json!({"topic": topic, "payload": {"bid": 1}, "snapshot": {"state": 1},
               "meta": {"source": "feed", "trace": "t-1"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    node.publish(topic, json!({"bid": 2})).await;
    let (status, v) = post_publish(
        &node,
        json!({"topic": topic, "payload": {"halt": true}, "type": "alert", "meta": {}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let want = vec![
        json!({"node": "mem-a", "source": "feed", "trace": "t-1"}),
        json!({"node": "mem-a"}),
        json!({"node": "mem-a"}),
    ];
    let got = live.recv_pubs(3).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert_eq!(got[2]["type"], "alert");
    assert_eq!(meta_of(&got), want, "live");

    // A new subscriber gets the snapshot (the node's meta alone: a snapshot is
    // state, not one engine message), then the deltas after it.
    let mut fresh = node.client().await;
    fresh.subscribe(json!({"topic": topic})).await;
    let got = fresh.recv_pubs(3).await;
    assert_eq!(got[0]["type"], "snapshot");
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert_eq!(
        meta_of(&got),
        [json!({"node": "mem-a"}), want[1].clone(), want[2].clone()]
    );

    // A resume replays from history with the same meta.
    let epoch = got[1]["epoch"].as_str().expect("epoch").to_owned();
    let mut resumed = node.client().await;
    let ack = resumed
        .subscribe(json!({"topic": topic, "resume_from_seq": 1, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(meta_of(&resumed.recv_pubs(3).await), want, "resumed");
    assert_eq!(meta_of(&rest_history(&node, topic).await), want, "REST");

    check_bad_meta_over_http(&node, "prices.META1b").await;
}

/// `FCALL sluice_publish` with `args`; the error text when Redis refuses it.
async fn fcall(redis: &Client, topic: &str, args: &[&str]) -> Result<(u64, String), String> {
    redis
        .fcall::<(u64, String), _, _, _>("sluice_publish", topic, args.to_vec())
        .await
        .map_err(|e| e.details().to_owned())
}

/// `FCALL_RO` calls Redis has served (history and state reads).
/// Stream reads Redis served: `sluice_history` calls (`FCALL_RO`) and the follow's
/// fill of the node's tail (`XREVRANGE`).
async fn history_reads(redis: &Client) -> u64 {
    let info: String = redis
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    ["cmdstat_fcall_ro:calls=", "cmdstat_xrevrange:calls="]
        .iter()
        .map(|prefix| {
            info.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

async fn head_seq(redis: &Client, topic: &str) -> Option<u64> {
    redis
        .hget(format!("sluice:{{{topic}}}:meta"), "seq")
        .await
        .expect("HGET seq")
}

#[tokio::test]
async fn on_redis_each_node_names_itself_on_live_resumed_and_snapshot_frames() {
    let redis = TestRedis::start().await;
    let a = start_redis_node(&redis, |c| c.node_id = "red-a".into()).await;
    let b = start_redis_node(&redis, |c| c.node_id = "red-b".into()).await;
    let rc = redis.client().await;
    let engine = Publisher::connect(&redis.url, 1).await.expect("publisher");
    let topic = "prices.META2";

    let mut on_a = a.client().await;
    on_a.subscribe(json!({"topic": topic})).await;
    let mut on_b = b.client().await;
    on_b.subscribe(json!({"topic": topic})).await;

    // 1: an old-style publish, no meta (an entry without `m`).
    fcall(&rc, topic, &["{\"i\":1}"])
        .await
        .expect("plain FCALL");
    // 2: meta straight through FCALL, with a snapshot; whitespace and number text
    //    are kept as the engine wrote them.
    fcall(
        &rc,
        topic,
        &[
            "{\"i\":2}",
            "delta",
            "{\"s\":2}",
            " {\"source\": \"fcall\", \"n\": 1.50} ",
        ],
    )
    .await
    .expect("FCALL with meta");
    // 3: meta without a snapshot (an empty snapshot argument).
    fcall(
        &rc,
        topic,
        &["{\"i\":3}", "alert", "", "{\"trace\":\"t-3\"}"],
    )
    .await
    .expect("FCALL with meta, no snapshot");
    // 4: through the Rust Publisher.
    engine
        .publish_with_meta(
            topic,
            PublishKind::Delta,
            &json!({"i": 4}),
            &json!({"source": "rust"}),
        )
        .await
        .expect("publish_with_meta");
    // 5: through POST /publish on node a.
    let (status, v) = post_publish(
        &a,
        json!({"topic": topic, "payload": {"i": 5}, "meta": {"source": "http"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let engine_meta = [
        json!({}),
        json!({"source": "fcall", "n": 1.5}),
        json!({"trace": "t-3"}),
        json!({"source": "rust"}),
        json!({"source": "http"}),
    ];
    let want = |node: &str| -> Vec<Value> {
        engine_meta
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m["node"] = json!(node);
                m
            })
            .collect()
    };
    for (client, node) in [(&mut on_a, "red-a"), (&mut on_b, "red-b")] {
        let got = client.recv_pubs(5).await;
        assert_eq!(seqs(&got), [1, 2, 3, 4, 5], "{node}");
        assert_eq!(meta_of(&got), want(node), "live on {node}");
        assert_eq!(got[2]["type"], "alert");
    }
    let frames = rest_history(&b, topic).await;
    assert_eq!(meta_of(&frames), want("red-b"), "REST history on b");

    // A third node that does not follow the topic yet reads the stream (its follow
    // fills the tail from it); a second resume there, while the first client keeps
    // the topic followed, is answered from the node's tail (no stream read reaches
    // Redis). Both name that node.
    let c = start_redis_node(&redis, |c| c.node_id = "red-c".into()).await;
    let epoch = frames[0]["epoch"].as_str().expect("epoch").to_owned();
    let mut held = Vec::new();
    for round in ["stream", "tail"] {
        let reads_before = history_reads(&rc).await;
        let mut r = c.client().await;
        let ack = r
            .subscribe(json!({"topic": topic, "resume_from_seq": 1, "epoch": epoch}))
            .await;
        assert_eq!(ack["payload"]["recovered"], true, "{round}: {ack}");
        let got = r.recv_pubs(5).await;
        assert_eq!(seqs(&got), [1, 2, 3, 4, 5], "{round}");
        assert_eq!(meta_of(&got), want("red-c"), "resumed from the {round}");
        let reads = history_reads(&rc).await - reads_before;
        match round {
            "stream" => assert!(reads >= 1, "the first resume reads Redis"),
            _ => assert_eq!(reads, 0, "the second resume is served from the tail"),
        }
        held.push(r);
    }

    // A fresh subscriber gets the snapshot (seq 2) with the node's meta alone.
    let mut fresh = c.client().await;
    fresh.subscribe(json!({"topic": topic})).await;
    let got = fresh.recv_pubs(4).await;
    assert_eq!(got[0]["type"], "snapshot");
    assert_eq!(seqs(&got), [2, 3, 4, 5]);
    assert_eq!(got[0]["meta"], json!({"node": "red-c"}));
    let _ = rc.quit().await;
}

#[tokio::test]
async fn on_redis_bad_meta_is_refused_everywhere_and_publishes_nothing() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| c.node_id = "red-bad".into()).await;
    let rc = redis.client().await;
    let topic = "prices.META3";
    fcall(&rc, topic, &["1"]).await.expect("first publish");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let cases: [(&str, &str); 7] = [
        ("[1]", "meta must be a JSON object"),
        ("7", "meta must be a JSON object"),
        ("\"s\"", "meta must be a JSON object"),
        ("{oops", "meta is not valid JSON"),
        ("", "meta is missing"),
        ("{\"node\":\"forged\"}", "meta key \"node\" is reserved"),
        (&big, "more than the 4096 allowed"),
    ];
    for (meta, why) in cases {
        let err = fcall(&rc, topic, &["2", "delta", "", meta])
            .await
            .expect_err(meta);
        assert!(err.contains(why), "{meta:.40}: {err}");
        assert!(err.contains("sluice:"), "{err}");
    }
    let err = fcall(&rc, topic, &["2", "delta", "", "{}", "extra"])
        .await
        .expect_err("five arguments");
    assert!(err.contains("too many arguments"), "{err}");
    // A bad snapshot is still refused when meta is good.
    let err = fcall(&rc, topic, &["2", "delta", "{x", "{}"])
        .await
        .expect_err("bad snapshot");
    assert!(err.contains("snapshot is not valid JSON"), "{err}");
    assert_eq!(head_seq(&rc, topic).await, Some(1), "nothing was published");

    let engine = Publisher::connect(&redis.url, 1).await.expect("publisher");
    for meta in [json!([1]), json!(3), json!({"node": "x"})] {
        let r = engine
            .publish_with_meta(topic, PublishKind::Delta, &json!(1), &meta)
            .await;
        assert!(matches!(r, Err(PublishError::Meta(_))), "{meta}: {r:?}");
    }
    let r = engine
        .publish_json_with_meta(topic, PublishKind::Delta, "1", None, Some("{oops"))
        .await;
    assert!(matches!(r, Err(PublishError::Meta(_))), "{r:?}");
    assert_eq!(head_seq(&rc, topic).await, Some(1), "nothing was published");

    check_bad_meta_over_http(&node, topic).await;
    let _ = rc.quit().await;
}

#[tokio::test]
async fn on_redis_an_entry_with_foreign_meta_is_delivered_with_the_node_meta_alone() {
    // Anyone with Redis access can XADD: an entry whose `m` is not an object, or
    // forges `node`, goes out with the node's meta and no gap.
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| c.node_id = "red-x".into()).await;
    let rc = redis.client().await;
    let topic = "prices.META4";
    let (_, epoch) = fcall(&rc, topic, &["1", "delta", "", "{\"a\":1}"])
        .await
        .expect("publish");
    let key = format!("sluice:{{{topic}}}:meta");
    let ems: String = rc.hget(&key, "ems").await.expect("ems");
    for (seq, m) in [(2u64, "[1]"), (3, "{\"node\":\"forged\"}")] {
        let _: u64 = rc.hincrby(&key, "seq", 1).await.expect("HINCRBY");
        let _: String = rc
            .xadd(
                format!("sluice:{{{topic}}}:stream"),
                false,
                None::<()>,
                format!("{ems}-{seq}"),
                vec![
                    ("e", epoch.as_str()),
                    ("t", "delta"),
                    ("p", "2"),
                    ("ts", "0"),
                    ("m", m),
                ],
            )
            .await
            .expect("XADD");
    }
    let mut c = node.client().await;
    let ack = c
        .subscribe(json!({"topic": topic, "resume_from_seq": 1, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let got = c.recv_pubs(3).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert_eq!(
        meta_of(&got),
        [
            json!({"node": "red-x", "a": 1}),
            json!({"node": "red-x"}),
            json!({"node": "red-x"}),
        ]
    );
    let _ = rc.quit().await;
}

#[tokio::test]
async fn node_processes_name_themselves_live_and_after_a_resume_on_another_node() {
    let redis = TestRedis::start().await;
    let env = [("REDIS_URL", redis.url.clone())];
    let mut a = NodeProcess::start("proc-meta-a", &env).await;
    let b = NodeProcess::start("proc-meta-b", &env).await;
    let topic = "prices.META5";
    let mut on_a = WsClient::connect(&a.ws_url()).await.expect("connect a");
    on_a.subscribe(json!({"topic": topic})).await;
    let mut on_b = WsClient::connect(&b.ws_url()).await.expect("connect b");
    on_b.subscribe(json!({"topic": topic})).await;

    let engine = Publisher::connect(&redis.url, 1).await.expect("publisher");
    for i in 1..=3 {
        engine
            .publish_with_meta(
                topic,
                PublishKind::Delta,
                &json!({"i": i}),
                &json!({"source": "proc"}),
            )
            .await
            .expect("publish");
    }
    let got_a = on_a.recv_pubs(3).await;
    assert_eq!(
        meta_of(&got_a),
        vec![json!({"node": "proc-meta-a", "source": "proc"}); 3]
    );
    assert_eq!(
        meta_of(&on_b.recv_pubs(3).await),
        vec![json!({"node": "proc-meta-b", "source": "proc"}); 3]
    );

    // Node a dies; its client resumes on b and gets the missed message from b.
    a.kill();
    engine
        .publish(topic, &json!({"i": 4}))
        .await
        .expect("publish");
    let epoch = got_a[0]["epoch"].as_str().expect("epoch").to_owned();
    let mut moved = WsClient::connect(&b.ws_url()).await.expect("connect b");
    let ack = moved
        .subscribe(json!({"topic": topic, "resume_from_seq": 3, "epoch": epoch}))
        .await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let got = moved.recv_pubs(2).await;
    assert_eq!(seqs(&got), [3, 4]);
    assert_eq!(
        meta_of(&got),
        [
            json!({"node": "proc-meta-b", "source": "proc"}),
            json!({"node": "proc-meta-b"}),
        ]
    );
}
