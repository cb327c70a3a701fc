//! `GET /topics/{topic}` and `GET /topics/{topic}/history` against real nodes: exact
//! bodies (the history holds the very envelopes a socket gets), bounds, `recovered`,
//! the codes 200/400/401/403/404, the subscribe permissions, and the same answers
//! from the embedded broker and from Redis (on any node).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_node::config::{AuthMode, JwtKey};
use sluice_tests::{
    redis::TestRedis,
    security::{mint, now, Signer},
    seqs, start_node, start_redis_node, TestNode, WsClient, ADMIN_TOKEN,
};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "rest-reads-hs256-secret-of-32-bytes-or-more";

fn token(claims: Value) -> String {
    mint(&claims, &Signer::hs256(SECRET))
}

/// Publishes `n` deltas `{"n": i}` to `topic`, the third with the snapshot `{"s": 3}`.
async fn seed(node: &TestNode, topic: &str, n: u64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let mut body = json!({ "topic": topic, "payload": { "n": i } });
        if i == 3 {
            body["snapshot"] = json!({ "s": 3 });
        }
        let (seq, e) = node.publish_body(body).await;
        assert_eq!(seq, i);
        epoch = e;
    }
    epoch
}

/// The exact state answer, with the snapshot's `ts` checked for shape and removed.
fn assert_state(v: &Value, topic: &str, epoch: &str, head: u64) {
    let ts = v["snapshot"]["ts"].as_str().expect("snapshot ts");
    assert!(ts.ends_with('Z') && ts.len() == 24, "ts {ts}");
    let mut v = v.clone();
    v["snapshot"]
        .as_object_mut()
        .expect("snapshot object")
        .remove("ts");
    assert_eq!(
        v,
        json!({
            "topic": topic,
            "epoch": epoch,
            "head_seq": head,
            "snapshot": { "seq": 3, "payload": { "s": 3 } },
        })
    );
}

/// `GET path` with a bearer token; the status and the error code (or the body).
async fn code(node: &TestNode, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, v) = node.get_json(path, token).await;
    if status == 200 {
        (status, v)
    } else {
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        (status, v["code"].clone())
    }
}

/// Every rule of the two routes, on `reader` (`writer` published).
async fn check_reads(writer: &TestNode, reader: &TestNode) {
    let epoch = seed(writer, "prices.REST1", 5).await;

    let (status, v) = reader.get_json("/topics/prices.REST1", None).await;
    assert_eq!(status, 200, "{v}");
    assert_state(&v, "prices.REST1", &epoch, 5);

    // The history holds exactly what a resuming socket on the same node gets (each
    // envelope's `meta.node` names the node that answers).
    let mut ws = reader.client().await;
    ws.subscribe(
        json!({"type": "subscribe", "topic": "prices.REST1", "resume_from_seq": 1, "epoch": epoch}),
    )
    .await;
    let live = ws.recv_pubs(5).await;
    let (status, v) = reader
        .get_json("/topics/prices.REST1/history?from_seq=1", None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({
            "topic": "prices.REST1",
            "epoch": epoch,
            "head_seq": 5,
            "recovered": true,
            "messages": live,
        })
    );

    let page = |q: &'static str| async move {
        let (status, v) = reader
            .get_json(&format!("/topics/prices.REST1/history{q}"), None)
            .await;
        assert_eq!(status, 200, "{q}: {v}");
        let msgs = v["messages"].as_array().expect("messages").clone();
        (seqs(&msgs), v["recovered"].clone())
    };
    assert_eq!(page("?from_seq=2&limit=2").await, (vec![2, 3], json!(true)));
    assert_eq!(page("?from_seq=0&limit=1").await, (vec![1], json!(true)));
    // Without from_seq: the latest `limit` messages (default 100).
    assert_eq!(page("?limit=2").await, (vec![4, 5], json!(true)));
    assert_eq!(page("").await, (vec![1, 2, 3, 4, 5], json!(true)));
    assert_eq!(page("?from_seq=6").await, (vec![], json!(true)));
    // Past the head: messages this topic never had.
    assert_eq!(page("?from_seq=9").await, (vec![], json!(false)));

    for (path, status, want) in [
        ("/topics/nope.never", 404, "INVALID_TOPIC"),
        ("/topics/nope.never/history", 404, "INVALID_TOPIC"),
        ("/topics/bad%20topic", 400, "INVALID_TOPIC"),
        ("/topics/a..b/history", 400, "INVALID_TOPIC"),
        (
            "/topics/prices.REST1/history?limit=0",
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/topics/prices.REST1/history?limit=1001",
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/topics/prices.REST1/history?limit=ten",
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/topics/prices.REST1/history?from_seq=-1",
            400,
            "INVALID_MESSAGE",
        ),
        // Auth is off: private families are refused without an identity.
        ("/topics/trading.bob", 403, "FORBIDDEN"),
        ("/topics/risk.bob.alerts/history", 403, "FORBIDDEN"),
    ] {
        assert_eq!(
            code(reader, path, None).await,
            (status, json!(want)),
            "{path}"
        );
    }
    // The limit is honoured at its maximum.
    assert_eq!(page("?limit=1000").await.0.len(), 5);
    // The admin token reads private topics.
    writer
        .publish_body(json!({"topic": "trading.bob", "payload": {"order": 1}}))
        .await;
    let (status, v) = reader
        .get_json("/topics/trading.bob", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (status, &v["head_seq"], &v["snapshot"]),
        (200, &json!(1), &Value::Null),
        "{v}"
    );
    let (status, _) = reader
        .get_json(
            &format!("/topics/trading.bob/history?token={ADMIN_TOKEN}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn topic_state_and_history_on_the_embedded_broker() {
    let node = start_node(|_| {}).await;
    check_reads(&node, &node).await;
}

#[tokio::test]
async fn topic_state_and_history_on_redis_from_another_node() {
    let redis = TestRedis::start().await;
    let a = start_redis_node(&redis, |_| {}).await;
    let b = start_redis_node(&redis, |_| {}).await;
    check_reads(&a, &b).await;
}

/// History older than what is retained: the answer starts later and says so.
async fn check_trimmed(node: &TestNode) {
    for i in 1..=6 {
        node.publish("prices.TRIM", json!({ "n": i })).await;
    }
    let (status, v) = node
        .get_json("/topics/prices.TRIM/history?from_seq=1&limit=10", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(seqs(msgs), vec![4, 5, 6]);
    assert_eq!(
        (&v["recovered"], &v["head_seq"]),
        (&json!(false), &json!(6))
    );
    let (_, v) = node
        .get_json("/topics/prices.TRIM/history?from_seq=4", None)
        .await;
    assert_eq!(v["recovered"], json!(true));
}

#[tokio::test]
async fn history_older_than_retained_is_not_recovered_embedded() {
    let node = start_node(|c| c.history_size = 3).await;
    check_trimmed(&node).await;
}

#[tokio::test]
async fn history_older_than_retained_is_not_recovered_on_redis() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |c| c.history_size = 3).await;
    check_trimmed(&node).await;
}

#[tokio::test]
async fn with_auth_required_the_subscribe_permissions_apply() {
    let node = start_node(|c| {
        c.jwt_key = Some(JwtKey::Secret(SECRET.into()));
        c.auth = AuthMode::Required;
        c.jwt_leeway = Duration::ZERO;
    })
    .await;
    node.publish_body(json!({"topic": "trading.bob", "payload": {"o": 1}, "snapshot": {"pos": 1}}))
        .await;
    node.publish("prices.AUTH", json!({"p": 1})).await;
    let exp = now() + 600;
    let bob = token(json!({"sub": "bob", "exp": exp}));
    let alice = token(json!({"sub": "alice", "exp": exp}));
    let admin_jwt = token(json!({"sub": "ops", "exp": exp, "admin": true}));
    let expired = token(json!({"sub": "bob", "exp": now() - 60}));
    let bob_prices_only = token(json!({"sub": "bob", "exp": exp, "topics": ["auctions.*"]}));

    let cases: Vec<(&str, Option<&str>, u16, &str)> = vec![
        ("/topics/prices.AUTH", None, 401, "AUTH_REQUIRED"),
        ("/topics/prices.AUTH/history", None, 401, "AUTH_REQUIRED"),
        (
            "/topics/prices.AUTH",
            Some("not.a.jwt"),
            401,
            "AUTH_INVALID",
        ),
        ("/topics/trading.bob", Some(&expired), 401, "TOKEN_EXPIRED"),
        ("/topics/trading.bob", Some(&alice), 403, "FORBIDDEN"),
        (
            "/topics/trading.bob/history",
            Some(&alice),
            403,
            "FORBIDDEN",
        ),
        // The `topics` claim restricts public topics as for subscribe.
        (
            "/topics/prices.AUTH",
            Some(&bob_prices_only),
            403,
            "FORBIDDEN",
        ),
        ("/topics/bad%20name", Some(&bob), 400, "INVALID_TOPIC"),
        (
            "/topics/trading.nobody",
            Some(&admin_jwt),
            404,
            "INVALID_TOPIC",
        ),
    ];
    for (path, tok, status, want) in cases {
        assert_eq!(
            code(&node, path, tok).await,
            (status, json!(want)),
            "{path}"
        );
    }
    for tok in [bob.as_str(), admin_jwt.as_str(), ADMIN_TOKEN] {
        let (status, v) = node.get_json("/topics/trading.bob", Some(tok)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["snapshot"]["payload"], json!({"pos": 1}));
        let (status, v) = node
            .get_json("/topics/prices.AUTH/history", Some(tok))
            .await;
        assert_eq!(
            (status, seqs(v["messages"].as_array().unwrap())),
            (200, vec![1])
        );
    }
    // `?token=` works as the header does.
    let (status, v) = node
        .get_json(&format!("/topics/trading.bob/history?token={bob}"), None)
        .await;
    assert_eq!(
        (status, seqs(v["messages"].as_array().unwrap())),
        (200, vec![1])
    );
}

/// Stored JSON goes out as the engine wrote it: number text (`1.50`, `1e3`), key
/// order and spacing survive both answers, and a history message is byte for byte the
/// frame a socket on the same node gets.
async fn check_verbatim(node: &TestNode) {
    let topic = "prices.RESTRAW";
    let payload = r#"{"px": 1.50, "qty":1e3, "b":[1.0 ,2]}"#;
    let snapshot = r#"{"z":0.10,"a":-0.0}"#;
    let body = format!(r#"{{"topic":"{topic}","payload":{payload},"snapshot":{snapshot}}}"#);
    let (status, v) = node.post("/publish", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["seq"], 1);

    // The frame a socket gets for seq 1 (a resume replays it as a delta).
    let mut ws = WsClient::connect(&node.ws_url("/ws"))
        .await
        .expect("connect");
    ws.send_json(json!({"type": "subscribe", "topic": topic,
        "resume_from_seq": 1, "epoch": v["epoch"]}))
        .await;
    let got = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.inner().next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = m {
            if t.as_str().starts_with(r#"{"type":"delta""#) {
                break t.as_str().to_owned();
            }
        }
    };

    let (status, text) = node
        .get(
            &format!("/topics/{topic}/history?from_seq=1"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(payload), "payload text rewritten: {text}");
    let v: Value = serde_json::from_str(&text).expect("history is JSON");
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{text}");
    let start = text.find(r#"{"type":"#).expect("a message");
    let frame = &text[start..start + got.len()];
    assert_eq!(
        frame, got,
        "the history message differs from the socket's frame"
    );

    let (status, text) = node
        .get(&format!("/topics/{topic}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!(r#""payload":{snapshot}"#)),
        "snapshot text rewritten: {text}"
    );
}

#[tokio::test]
async fn answers_carry_stored_json_verbatim_on_the_embedded_broker() {
    let node = start_node(|_| {}).await;
    check_verbatim(&node).await;
}

#[tokio::test]
async fn answers_carry_stored_json_verbatim_on_redis() {
    let redis = TestRedis::start().await;
    let node = start_redis_node(&redis, |_| {}).await;
    check_verbatim(&node).await;
}
