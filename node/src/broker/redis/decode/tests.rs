//! Unit tests of the stream-entry and live-message decoders.

use super::*;

fn dec() -> Decoder {
    Decoder::new(Origin::new("n1"))
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Bytes> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

#[test]
fn a_snapshot_that_is_not_json_becomes_a_json_string() {
    let t = Topic::parse("a").unwrap();
    for raw in [&b"{\"bid\":"[..], b"\xff\xfe", b"NaN"] {
        let p = snapshot(&Origin::new("n1"), &t, 3, "e".into(), 1, raw);
        let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
        assert!(v["payload"].is_string(), "{v}");
        assert_eq!(v["type"], "snapshot");
        assert_eq!(v["seq"], 3);
    }
    let good = snapshot(&Origin::new("n1"), &t, 4, "e".into(), 1, br#"{"bid":1}"#);
    let v: serde_json::Value = serde_json::from_str(good.frame.as_str()).unwrap();
    assert_eq!(v["payload"]["bid"], 1);
}

#[test]
fn a_non_utf8_payload_becomes_a_json_string_not_a_failure() {
    let t = Topic::parse("a").unwrap();
    let mut f = fields(&[("e", "x")]);
    f.insert("p".into(), Bytes::from_static(b"\"\xff\""));
    let p = decode_entry(&t, "1-1", &f, &mut dec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
    assert_eq!(v["payload"], "\u{fffd}", "lossy UTF-8, still a valid frame");
}

#[test]
fn decodes_the_fields_the_function_writes() {
    let t = Topic::parse("prices.A").unwrap();
    let mut cache = dec();
    let p = decode_entry(
        &t,
        "1700000000000-7",
        &fields(&[("e", "ep"), ("t", "alert"), ("p", "{\"x\":1}"), ("ts", "5")]),
        &mut cache,
    )
    .unwrap();
    assert_eq!(p.seq, 7);
    assert_eq!(&*p.epoch, "ep");
    assert_eq!(p.kind, FrameType::Alert);
    assert_eq!(p.published_ms, 5);
    assert!(p
        .frame
        .as_str()
        .ends_with(r#""payload":{"x":1},"meta":{"node":"n1"}}"#));
    let q = decode_entry(
        &t,
        "1700000000000-8",
        &fields(&[("e", "ep"), ("p", "1")]),
        &mut cache,
    )
    .unwrap();
    assert!(Arc::ptr_eq(&p.epoch, &q.epoch), "epochs are shared");
}

#[test]
fn an_invalid_payload_is_delivered_as_a_json_string() {
    let t = Topic::parse("a").unwrap();
    let p = decode_entry(&t, "1-1", &fields(&[("e", "x"), ("p", "1.")]), &mut dec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
    assert_eq!(v["payload"], "1.");
}

#[test]
fn a_payload_clients_cannot_parse_is_delivered_as_a_json_string() {
    // Valid JSON grammar, but past what a client's parser takes: a number out of
    // f64 range (the fuzzer's find) and nesting deeper than 128.
    let t = Topic::parse("a").unwrap();
    let deep = "[".repeat(200) + &"]".repeat(200);
    for payload in ["9223e53685477", "-1e400", deep.as_str()] {
        let p = decode_entry(
            &t,
            "1-1",
            &fields(&[("e", "x"), ("p", payload)]),
            &mut dec(),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).expect("a valid frame");
        assert_eq!(v["payload"], payload);
        let live = format!("1\nx\ndelta\n0\n{payload}");
        let q = decode_live(&t, live.as_bytes(), &mut dec()).unwrap();
        let w: serde_json::Value = serde_json::from_str(q.frame.as_str()).expect("a valid frame");
        assert_eq!(w["payload"], payload);
    }
}

fn live(topic: &Topic, msg: &[u8]) -> Result<Pub, LiveError> {
    decode_live(topic, msg, &mut dec())
}

#[test]
fn decodes_a_live_message_with_newlines_in_its_payload() {
    let t = Topic::parse("prices.A").unwrap();
    let p = live(&t, b"42\nep1\nalert\n1700000000123\n{\"a\":\n[1,\n2]}").unwrap();
    assert_eq!(p.seq, 42);
    assert_eq!(&*p.epoch, "ep1");
    assert_eq!(p.kind, FrameType::Alert);
    assert_eq!(p.published_ms, 1_700_000_000_123);
    let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
    assert_eq!(v["payload"]["a"], serde_json::json!([1, 2]));
    assert_eq!(v["topic"], "prices.A");
    assert_eq!(v["seq"], 42);
    assert_eq!(v["epoch"], "ep1");
    assert_eq!(v["type"], "alert");
    let d = live(&t, b"1\ne\ndelta\n0\n7").unwrap();
    assert_eq!((d.seq, d.kind), (1, FrameType::Delta));
}

#[test]
fn a_live_message_and_its_stream_entry_give_the_same_frame() {
    let t = Topic::parse("a").unwrap();
    let mut cache = dec();
    let from_live = decode_live(&t, b"7\nep\ndelta\n5\n{\"x\":1}", &mut cache).unwrap();
    let from_stream = decode_entry(
        &t,
        "99-7",
        &fields(&[("e", "ep"), ("t", "delta"), ("p", "{\"x\":1}"), ("ts", "5")]),
        &mut cache,
    )
    .unwrap();
    assert_eq!(from_live.frame.as_str(), from_stream.frame.as_str());
    assert!(Arc::ptr_eq(&from_live.epoch, &from_stream.epoch));
}

#[test]
fn refuses_live_messages_that_are_not_ours() {
    let t = Topic::parse("a").unwrap();
    let cases: [(&[u8], LiveError); 14] = [
        (b"", LiveError::Short),
        (b"1\ne\ndelta\n5", LiveError::Short),
        (b"0\ne\ndelta\n5\n1", LiveError::Seq),
        (b"-1\ne\ndelta\n5\n1", LiveError::Seq),
        (b"x\ne\ndelta\n5\n1", LiveError::Seq),
        (b"99999999999999999999\ne\ndelta\n5\n1", LiveError::Seq),
        (b"1\n\ndelta\n5\n1", LiveError::Epoch),
        (b"1\ne\nsnapshot\n5\n1", LiveError::Kind),
        (b"1\ne\ndelta\n5.5\n1", LiveError::Ts),
        (b"1\ne\ndelta:\n5\n1", LiveError::Kind),
        (b"1\ne\ndelta:x\n5\n{}1", LiveError::Kind),
        (b"1\ne\nsnapshot:2\n5\n{}1", LiveError::Kind),
        (b"1\ne\ndelta:3\n5\n{}", LiveError::Meta),
        (b"1\ne\ndelta:99999999999999999999\n5\n{}", LiveError::Kind),
    ];
    for (msg, want) in cases {
        assert_eq!(
            live(&t, msg).unwrap_err(),
            want,
            "{:?}",
            String::from_utf8_lossy(msg)
        );
    }
    // A payload that is not JSON still yields a valid frame (as a string).
    let p = live(&t, b"1\ne\ndelta\n5\n{oops").unwrap();
    let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
    assert_eq!(v["payload"], "{oops");
}

#[test]
fn refuses_entries_that_are_not_ours() {
    let t = Topic::parse("a").unwrap();
    let mut cache = dec();
    assert!(decode_entry(&t, "bad", &fields(&[("e", "x"), ("p", "1")]), &mut cache).is_none());
    assert!(decode_entry(&t, "1-1", &fields(&[("p", "1")]), &mut cache).is_none());
    assert!(decode_entry(&t, "1-1", &fields(&[("e", "x")]), &mut cache).is_none());
    assert!(decode_entry(
        &t,
        "1-1",
        &fields(&[("e", "x"), ("p", "1"), ("t", "weird")]),
        &mut cache
    )
    .is_none());
}

fn frame(p: &Pub) -> serde_json::Value {
    serde_json::from_str(p.frame.as_str()).expect("a valid frame")
}

#[test]
fn engine_meta_of_a_live_message_and_its_entry_gives_the_same_frame() {
    let t = Topic::parse("a").unwrap();
    let mut d = dec();
    let meta = "{ \"source\": \"feed\",\n \"n\": 1.50 }";
    let msg = format!("7\nep\nalert:{}\n5\n{meta}{{\"x\":\n1}}", meta.len());
    let from_live = decode_live(&t, msg.as_bytes(), &mut d).unwrap();
    let from_stream = decode_entry(
        &t,
        "99-7",
        &fields(&[
            ("e", "ep"),
            ("t", "alert"),
            ("p", "{\"x\":\n1}"),
            ("ts", "5"),
            ("m", meta),
        ]),
        &mut d,
    )
    .unwrap();
    assert_eq!(from_live.frame.as_str(), from_stream.frame.as_str());
    assert_eq!(from_live.kind, FrameType::Alert);
    // The engine's members verbatim after the node's, the payload untouched.
    assert!(
        from_live.frame.as_str().ends_with(
            "\"payload\":{\"x\":\n1},\"meta\":{\"node\":\"n1\",\"source\": \"feed\",\n \"n\": 1.50}}"
        ),
        "{}",
        from_live.frame.as_str()
    );
    let v = frame(&from_live);
    assert_eq!(
        v["meta"],
        serde_json::json!({"node": "n1", "source": "feed", "n": 1.5})
    );
    assert_eq!(v["payload"], serde_json::json!({"x": 1}));
}

#[test]
fn a_live_meta_of_length_zero_or_an_empty_object_adds_nothing() {
    let t = Topic::parse("a").unwrap();
    for msg in [&b"1\ne\ndelta:0\n5\n[1]"[..], b"1\ne\ndelta:2\n5\n{}[1]"] {
        let p = live(&t, msg).unwrap();
        let v = frame(&p);
        assert_eq!(v["meta"], serde_json::json!({"node": "n1"}));
        assert_eq!(v["payload"], serde_json::json!([1]));
    }
}

#[test]
fn an_entry_without_meta_has_the_node_alone_and_bad_meta_is_dropped() {
    let t = Topic::parse("a").unwrap();
    let mut d = dec();
    let old = decode_entry(&t, "1-1", &fields(&[("e", "x"), ("p", "1")]), &mut d).unwrap();
    assert_eq!(frame(&old)["meta"], serde_json::json!({"node": "n1"}));
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(5000));
    for bad in [
        "[1]",
        "7",
        "{oops",
        "{\"node\":\"forged\"}",
        "",
        big.as_str(),
    ] {
        let p = decode_entry(
            &t,
            "1-2",
            &fields(&[("e", "x"), ("p", "1"), ("m", bad)]),
            &mut d,
        )
        .unwrap();
        let v = frame(&p);
        assert_eq!(v["meta"], serde_json::json!({"node": "n1"}), "{bad:.20}");
        assert_eq!(
            (v["seq"].as_u64(), &v["payload"]),
            (Some(2), &serde_json::json!(1))
        );
        // The same on the live path: delivered, meta dropped, no gap.
        let msg = format!("2\nx\ndelta:{}\n0\n{bad}1", bad.len());
        let q = live(&t, msg.as_bytes()).unwrap();
        assert_eq!(
            frame(&q)["meta"],
            serde_json::json!({"node": "n1"}),
            "{bad:.20}"
        );
    }
    let mut f = fields(&[("e", "x"), ("p", "1")]);
    f.insert("m".into(), Bytes::from_static(b"{\"a\":\"\xff\"}"));
    let p = decode_entry(&t, "1-3", &f, &mut d).unwrap();
    assert_eq!(frame(&p)["meta"], serde_json::json!({"node": "n1"}));
}

#[test]
fn a_snapshot_carries_the_node_meta_alone() {
    let t = Topic::parse("a").unwrap();
    let p = snapshot(&Origin::new("n2"), &t, 4, "e".into(), 1, b"{\"s\":1}");
    assert_eq!(frame(&p)["meta"], serde_json::json!({"node": "n2"}));
}
