//! Bad input of every kind gets an `error` frame with its code, the request's
//! `correlation_id` when one was readable, and the session stays open (each case is
//! followed by a ping that must be answered).

use serde_json::{json, Value};
use sluice_tests::{seqs, start_node, WsClient};
use tokio_tungstenite::tungstenite::Message;

/// Sends `frame`, expects one `error` frame with `code`, then proves the session
/// still answers. Returns the error frame for further checks.
async fn expect_error(c: &mut WsClient, case: &str, frame: Message, code: &str) -> Value {
    c.send_message(frame).await;
    let err = c
        .recv()
        .await
        .unwrap_or_else(|e| panic!("{case}: no error frame: {e}"));
    assert_eq!(err["type"], "error", "{case}: {err}");
    assert_eq!(err["code"], code, "{case}: {err}");
    assert!(
        err["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: a human-readable message: {err}"
    );
    assert!(err["ts"].is_string(), "{case}: {err}");
    c.ping_pong(&format!("after {case}")).await;
    err
}

fn text(s: &str) -> Message {
    Message::text(s)
}

#[tokio::test]
async fn every_bad_frame_gets_its_code_and_the_session_stays_open() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    let cases: Vec<(&str, Message, &str, Option<Value>)> = vec![
        (
            "not JSON",
            text("this is not json"),
            "INVALID_MESSAGE",
            None,
        ),
        (
            "truncated JSON",
            text(r#"{"type":"ping""#),
            "INVALID_MESSAGE",
            None,
        ),
        ("JSON array", text("[1,2,3]"), "INVALID_MESSAGE", None),
        (
            "JSON string",
            text(r#""subscribe""#),
            "INVALID_MESSAGE",
            None,
        ),
        ("JSON number", text("42"), "INVALID_MESSAGE", None),
        ("JSON null", text("null"), "INVALID_MESSAGE", None),
        ("empty object", text("{}"), "INVALID_MESSAGE", None),
        (
            "missing type",
            text(r#"{"topic":"a.b","correlation_id":"c-missing-type"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-missing-type")),
        ),
        (
            "type is a number",
            text(r#"{"type":5,"correlation_id":"c-type-num"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-type-num")),
        ),
        (
            "type is null",
            text(r#"{"type":null,"correlation_id":7}"#),
            "INVALID_MESSAGE",
            Some(json!(7)),
        ),
        (
            "unknown type",
            text(r#"{"type":"dance","correlation_id":"c-unknown"}"#),
            "UNKNOWN_TYPE",
            Some(json!("c-unknown")),
        ),
        (
            "subscribe without topic",
            text(r#"{"type":"subscribe","correlation_id":"c-no-topic"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-no-topic")),
        ),
        (
            "subscribe with an empty topics list",
            text(r#"{"type":"subscribe","topics":[],"correlation_id":"c-empty-list"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-empty-list")),
        ),
        (
            "topic is a number",
            text(r#"{"type":"subscribe","topic":5,"correlation_id":"c-topic-num"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-topic-num")),
        ),
        (
            "topics is a string",
            text(r#"{"type":"subscribe","topics":"a.b","correlation_id":"c-topics-str"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-topics-str")),
        ),
        (
            "topics holds a number",
            text(r#"{"type":"subscribe","topics":["a.b",3],"correlation_id":"c-topics-num"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-topics-num")),
        ),
        (
            "resume_from_seq negative",
            text(
                r#"{"type":"subscribe","topic":"a.b","resume_from_seq":-1,"correlation_id":"c-neg"}"#,
            ),
            "INVALID_MESSAGE",
            Some(json!("c-neg")),
        ),
        (
            "resume_from_seq a string",
            text(
                r#"{"type":"subscribe","topic":"a.b","resume_from_seq":"5","correlation_id":"c-str"}"#,
            ),
            "INVALID_MESSAGE",
            Some(json!("c-str")),
        ),
        (
            "resume_from_seq a fraction",
            text(
                r#"{"type":"subscribe","topic":"a.b","resume_from_seq":1.5,"correlation_id":"c-frac"}"#,
            ),
            "INVALID_MESSAGE",
            Some(json!("c-frac")),
        ),
        (
            "epoch is a number",
            text(
                r#"{"type":"subscribe","topic":"a.b","resume_from_seq":1,"epoch":3,"correlation_id":"c-ep"}"#,
            ),
            "INVALID_MESSAGE",
            Some(json!("c-ep")),
        ),
        (
            "background_mode without enabled",
            text(r#"{"type":"background_mode","correlation_id":"c-bg"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-bg")),
        ),
        (
            "background_mode enabled is a string",
            text(r#"{"type":"background_mode","enabled":"yes","correlation_id":"c-bg2"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-bg2")),
        ),
        (
            "unsubscribe without topic",
            text(r#"{"type":"unsubscribe","correlation_id":"c-unsub"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-unsub")),
        ),
        (
            "refresh without token",
            text(r#"{"type":"refresh","correlation_id":"c-refresh"}"#),
            "INVALID_MESSAGE",
            Some(json!("c-refresh")),
        ),
        (
            "binary frame",
            Message::binary(br#"{"type":"ping"}"#.to_vec()),
            "INVALID_MESSAGE",
            None,
        ),
    ];
    for (case, frame, code, corr) in cases {
        let err = expect_error(&mut c, case, frame, code).await;
        match corr {
            Some(id) => assert_eq!(err["correlation_id"], id, "{case}: {err}"),
            None => assert!(err.get("correlation_id").is_none(), "{case}: {err}"),
        }
    }

    // The session not only answers pings: it still subscribes and delivers.
    c.subscribe(json!({"topic": "still.alive"})).await;
    node.publish("still.alive", json!(1)).await;
    assert_eq!(seqs(&c.recv_pubs(1).await), [1]);
}

#[tokio::test]
async fn invalid_topics_get_invalid_topic_naming_the_topic() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    let long = "a".repeat(201);
    let bad = [
        "bad topic",
        "",
        "a..b",
        ".a",
        "a.",
        "prices/IN1",
        "préx",
        "a.*.b",
        "a.>.b",
        long.as_str(),
    ];
    for (i, topic) in bad.iter().enumerate() {
        let corr = format!("bad-topic-{i}");
        let case = format!("subscribe {topic:?}");
        let err = expect_error(
            &mut c,
            &case,
            Message::text(
                json!({"type": "subscribe", "topic": topic, "correlation_id": corr}).to_string(),
            ),
            "INVALID_TOPIC",
        )
        .await;
        assert_eq!(err["details"]["topic"], *topic, "{case}: {err}");
        assert_eq!(err["correlation_id"], corr.as_str(), "{case}: {err}");
    }

    // In a `topics` list, and in `unsubscribe`.
    let err = expect_error(
        &mut c,
        "topics list with a bad one",
        Message::text(
            json!({"type": "subscribe", "topics": ["good.one", "bad one"], "correlation_id": "l"})
                .to_string(),
        ),
        "INVALID_TOPIC",
    )
    .await;
    assert_eq!(err["details"]["topic"], "bad one", "{err}");
    let err = expect_error(
        &mut c,
        "unsubscribe a bad topic",
        Message::text(json!({"type": "unsubscribe", "topic": "bad one"}).to_string()),
        "INVALID_TOPIC",
    )
    .await;
    assert_eq!(err["details"]["topic"], "bad one", "{err}");

    // The refused list subscribed nothing, not even its valid topic.
    node.publish("good.one", json!(1)).await;
    c.subscribe(json!({"topic": "other.one"})).await;
    node.publish("other.one", json!(1)).await;
    let p = c.recv_pubs(1).await;
    assert_eq!(p[0]["topic"], "other.one", "{:?}", p[0]);

    // A topic of exactly 200 bytes is valid.
    let max = "b".repeat(200);
    let ack = c.subscribe(json!({"topic": max})).await;
    assert_eq!(ack["topic"], max.as_str());
}

#[tokio::test]
async fn good_frames_with_unknown_extra_fields_are_accepted() {
    let node = start_node(|_| {}).await;
    let mut c = node.client().await;
    c.send_json(json!({"type": "ping", "correlation_id": "x", "extra": {"a": 1}}))
        .await;
    let pong = c.recv().await.expect("pong");
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["correlation_id"], "x");
    let ack = c
        .subscribe(json!({"topic": "extra.f", "whatever": [1, 2], "correlation_id": 99}))
        .await;
    assert_eq!(ack["correlation_id"], 99);
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_get_too_many_subscriptions_and_the_session_stays() {
    let node = start_node(|cfg| cfg.max_subscriptions = 2).await;
    let mut c = node.client().await;
    c.subscribe(json!({"topic": "lim.a"})).await;
    c.subscribe(json!({"topic": "lim.b"})).await;
    let err = expect_error(
        &mut c,
        "third subscription",
        Message::text(
            json!({"type": "subscribe", "topic": "lim.c", "correlation_id": "l3"}).to_string(),
        ),
        "TOO_MANY_SUBSCRIPTIONS",
    )
    .await;
    assert_eq!(err["details"]["topic"], "lim.c", "{err}");
    assert_eq!(err["correlation_id"], "l3", "{err}");
    // Re-subscribing an existing topic is not a new subscription.
    c.subscribe(json!({"topic": "lim.a"})).await;
    node.publish("lim.c", json!(1)).await;
    node.publish("lim.b", json!(1)).await;
    let p = c.recv_pubs(1).await;
    assert_eq!(p[0]["topic"], "lim.b", "{:?}", p[0]);
}
