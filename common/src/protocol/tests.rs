//! Parsing every kind of client frame, good and bad, and server frame round-trips.

use super::*;
use crate::topic::Topic;
use proptest::prelude::*;
use serde_json::json;

fn code_of(text: &str) -> ErrorCode {
    ClientFrame::parse(text)
        .expect_err("should be refused")
        .code
}

#[test]
fn bad_input_maps_to_its_code() {
    assert_eq!(code_of("not json"), ErrorCode::InvalidMessage);
    assert_eq!(code_of("[1,2]"), ErrorCode::InvalidMessage);
    assert_eq!(code_of("42"), ErrorCode::InvalidMessage);
    assert_eq!(code_of("{}"), ErrorCode::InvalidMessage);
    assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::InvalidMessage);
    assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    assert_eq!(
        code_of(r#"{"type":"subscribe"}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topic":5}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topics":"a"}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topics":[]}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topic":"a b"}"#),
        ErrorCode::InvalidTopic
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topic":"a","resume_from_seq":-1}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topic":"a","resume_from_seq":"3"}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topic":"a","batch_size":0}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"subscribe","topic":"a.*","resume_from_seq":1}"#),
        ErrorCode::InvalidTopic
    );
    assert_eq!(
        code_of(r#"{"type":"background_mode"}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code_of(r#"{"type":"background_mode","enabled":"yes"}"#),
        ErrorCode::InvalidMessage
    );
    assert_eq!(code_of(r#"{"type":"refresh"}"#), ErrorCode::InvalidMessage);
    assert_eq!(
        code_of(r#"{"type":"ping","correlation_id":{"a":1}}"#),
        ErrorCode::InvalidMessage
    );
}

#[test]
fn errors_keep_the_correlation_id() {
    let e = ClientFrame::parse(r#"{"type":"nope","correlation_id":"c-1"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.correlation_id, Some(json!("c-1")));
    let f = e.to_frame();
    assert_eq!(f.kind, FrameType::Error);
    assert_eq!(f.code, Some(ErrorCode::UnknownType));
    let e = ClientFrame::parse(r#"{"type":"subscribe","topic":"bad topic","correlation_id":7}"#)
        .unwrap_err();
    assert_eq!(e.details, Some(json!({"topic": "bad topic"})));
    assert_eq!(e.correlation_id, Some(json!(7)));
}

#[test]
fn subscribe_accepts_topic_topics_objects_and_subtopics() {
    let ClientFrame::Subscribe(s) = ClientFrame::parse(
        r#"{"type":"subscribe","topics":["a.b",{"topic":"c","resume_from_seq":5,"epoch":"e1"}],
            "resume_from_seq":2,"epoch":"e0","batch_size":10,"compression":true}"#,
    )
    .unwrap() else {
        panic!("not a subscribe")
    };
    assert_eq!(s.entries.len(), 2);
    assert_eq!(s.entries[0].resume_from_seq, Some(2));
    assert_eq!(s.entries[0].epoch.as_deref(), Some("e0"));
    assert_eq!(
        s.entries[1].filter,
        TopicFilter::Exact(Topic::parse("c").unwrap())
    );
    assert_eq!(s.entries[1].resume_from_seq, Some(5));
    assert_eq!(s.batch_size, Some(10));
    assert!(s.compression);

    let ClientFrame::Subscribe(s) =
        ClientFrame::parse(r#"{"type":"subscribe","topic":"prices","subtopics":["A","B"]}"#)
            .unwrap()
    else {
        panic!("not a subscribe")
    };
    let names: Vec<String> = s.entries.iter().map(|e| e.filter.to_string()).collect();
    assert_eq!(names, ["prices.A", "prices.B"]);
}

#[test]
fn an_expansion_over_the_bound_is_refused_before_it_is_built() {
    // 3000 topics × 3000 subtopics: 48 KB of JSON asking for 9 million entries.
    let topics: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
    let subs: Vec<String> = (0..3000).map(|i| format!("s{i}")).collect();
    let text = json!({"type":"subscribe","topics":topics,"subtopics":subs,"correlation_id":"c"})
        .to_string();
    assert!(text.len() < 64 * 1024, "{}", text.len());
    let started = std::time::Instant::now();
    let e = ClientFrame::parse_bounded(&text, 1000).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManySubscriptions);
    assert_eq!(e.refused_entries, 9_000_000);
    assert_eq!(e.correlation_id, Some(json!("c")));
    assert_eq!(
        e.details,
        Some(json!({"requested": 9_000_000u64, "limit": 1000}))
    );
    // Nothing was expanded: far below the seconds 9 million strings would take.
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // Exactly at the bound is fine; one over is not.
    let ok = json!({"type":"subscribe","topic":"p","subtopics":["a","b","c"]}).to_string();
    assert!(ClientFrame::parse_bounded(&ok, 3).is_ok());
    assert_eq!(
        ClientFrame::parse_bounded(&ok, 2)
            .unwrap_err()
            .refused_entries,
        3
    );
    // A malformed frame refuses no entries.
    assert_eq!(ClientFrame::parse("{").unwrap_err().refused_entries, 0);
}

#[test]
fn a_topic_named_twice_in_one_frame_is_one_entry() {
    let ClientFrame::Subscribe(s) = ClientFrame::parse(
        r#"{"type":"subscribe","topics":["a",{"topic":"a","resume_from_seq":9},"b","a"]}"#,
    )
    .unwrap() else {
        panic!("not a subscribe")
    };
    let names: Vec<String> = s.entries.iter().map(|e| e.filter.to_string()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.entries[0].resume_from_seq, None, "the first mention wins");
}

#[test]
fn ping_keeps_its_echo_fields() {
    assert_eq!(
        ClientFrame::parse(r#"{"type":"ping","correlation_id":"x","ts":123}"#).unwrap(),
        ClientFrame::Ping {
            correlation_id: Some(json!("x")),
            ts: Some(json!(123))
        }
    );
}

#[test]
fn publication_encoding_is_valid_json_with_raw_payload() {
    let text = encode_publication(
        FrameType::Delta,
        "prices.IN1",
        42,
        "e7",
        0,
        r#"{"bid":99.1}"#,
        r#"{"node":"n1","source":"feed"}"#,
    );
    let f: ServerFrame = serde_json::from_str(&text).unwrap();
    assert_eq!(f.kind, FrameType::Delta);
    assert_eq!(f.topic.as_deref(), Some("prices.IN1"));
    assert_eq!(f.seq, Some(42));
    assert_eq!(f.epoch.as_deref(), Some("e7"));
    assert_eq!(f.ts.as_deref(), Some("1970-01-01T00:00:00.000Z"));
    assert_eq!(f.payload, Some(json!({"bid": 99.1})));
    assert_eq!(f.meta, Some(json!({"node": "n1", "source": "feed"})));
    assert!(!text.contains("correlation_id"));
}

#[test]
fn publication_encoding_escapes_what_json_needs_escaped_in_topic_and_epoch() {
    for (topic, epoch) in [
        ("a\"b", "e\\1"),
        ("tab\there", "nl\n"),
        ("ünï.côdé", "\u{1}"),
        ("plain.topic", "e7f1c2"),
    ] {
        let text = encode_publication(FrameType::Delta, topic, 1, epoch, 0, "1", "{}");
        let f: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(f.topic.as_deref(), Some(topic), "{text}");
        assert_eq!(f.epoch.as_deref(), Some(epoch), "{text}");
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,20}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn parse_never_panics(s in ".{0,200}") {
        let _ = ClientFrame::parse(&s);
    }

    #[test]
    fn any_json_object_parses_or_gets_a_code(v in json_value()) {
        if let Err(e) = ClientFrame::parse(&v.to_string()) {
            prop_assert!(matches!(e.code, ErrorCode::InvalidMessage | ErrorCode::UnknownType | ErrorCode::InvalidTopic));
        }
    }

    #[test]
    fn server_frames_round_trip(payload in json_value(), seq in any::<u64>(), cid in proptest::option::of("[a-z0-9]{1,8}")) {
        let f = ServerFrame { seq: Some(seq), ..ServerFrame::new(FrameType::Ack) }
            .with_payload(payload)
            .with_topic("a.b")
            .with_correlation_id(cid.map(Value::String));
        let back: ServerFrame = serde_json::from_str(&f.to_json()).unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn encoded_publications_decode_to_their_parts(payload in json_value(), seq in 1u64.., ts in 0i64..4_000_000_000_000) {
        let text = encode_publication(FrameType::Alert, "risk.u1.alerts", seq, "ep", ts, &payload.to_string(), r#"{"node":"n"}"#);
        let f: ServerFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(f.kind, FrameType::Alert);
        prop_assert_eq!(f.seq, Some(seq));
        prop_assert_eq!(f.payload, Some(payload));
        prop_assert_eq!(f.meta, Some(json!({"node": "n"})));
    }

    #[test]
    fn subscribe_round_trips_resume_positions(seq in any::<u64>(), epoch in "[a-z0-9]{1,12}", topic in "[a-z]{1,8}(\\.[a-z0-9]{1,8}){0,3}") {
        let text = json!({"type":"subscribe","topic":topic,"resume_from_seq":seq,"epoch":epoch}).to_string();
        let ClientFrame::Subscribe(s) = ClientFrame::parse(&text).unwrap() else { panic!() };
        prop_assert_eq!(s.entries.len(), 1);
        prop_assert_eq!(s.entries[0].resume_from_seq, Some(seq));
        prop_assert_eq!(s.entries[0].epoch.as_deref(), Some(epoch.as_str()));
        prop_assert_eq!(s.entries[0].filter.to_string(), topic);
    }
}
