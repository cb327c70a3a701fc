//! Stream entries and live messages to publications: the one place that knows the
//! entry fields (`e` epoch, `t` type, `p` payload, `ts` publish ms) and the live
//! message layout the function library writes.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;

use sluice_common::{keys, protocol::FrameType, Topic};

use crate::publication::{Pub, Publication};

/// Shares one allocation per epoch string among all publications of that epoch.
#[derive(Debug, Default)]
pub struct EpochCache {
    epochs: HashMap<String, Arc<str>>,
}

impl EpochCache {
    pub fn get(&mut self, epoch: &str) -> Arc<str> {
        if let Some(e) = self.epochs.get(epoch) {
            return e.clone();
        }
        if self.epochs.len() > 10_000 {
            self.epochs.clear();
        }
        let e: Arc<str> = Arc::from(epoch);
        self.epochs.insert(epoch.to_owned(), e.clone());
        e
    }
}

/// Why a live message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error("live message has fewer than 5 lines")]
    Short,
    #[error("live message seq is not a whole number of at least 1")]
    Seq,
    #[error("live message epoch is empty")]
    Epoch,
    #[error("live message type is not delta or alert")]
    Kind,
    #[error("live message publish time is not a whole number")]
    Ts,
}

/// Decodes a message of a topic's live channel, as `sluice_publish` sends it with
/// `SPUBLISH sluice:{T}:live`: five fields split by `\n`, the payload last (it may
/// itself hold newlines), e.g. `"42\nhodyhjseay\ndelta\n1700000000123\n{\"bid\":1}"`.
/// Only the payload is JSON, and it is checked without building a document.
pub fn decode_live(topic: &Topic, msg: &[u8], epochs: &mut EpochCache) -> Result<Pub, LiveError> {
    let mut parts = msg.splitn(5, |b| *b == b'\n');
    let mut next = || parts.next().ok_or(LiveError::Short);
    let (seq, epoch, kind, ts) = (next()?, next()?, next()?, next()?);
    let payload = next()?;
    let number = |b: &[u8]| -> Option<u64> {
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(b).ok()?.parse().ok()
    };
    let seq = number(seq).filter(|s| *s >= 1).ok_or(LiveError::Seq)?;
    let epoch = std::str::from_utf8(epoch)
        .ok()
        .filter(|e| !e.is_empty())
        .ok_or(LiveError::Epoch)?;
    let kind = match kind {
        b"delta" => FrameType::Delta,
        b"alert" => FrameType::Alert,
        _ => return Err(LiveError::Kind),
    };
    let ts = number(ts).ok_or(LiveError::Ts)? as i64;
    Ok(checked(topic, seq, epochs.get(epoch), kind, ts, payload))
}

/// Whether `text` is one JSON document, checked without building it, under the
/// rules clients parse by (`protocol::is_json`: numbers that fit an f64, nesting of
/// at most 128). serde's `IgnoredAny` would pass `9e99999` and unbounded nesting,
/// which clients then fail to parse (the fuzzer found the first).
fn is_json(text: &str) -> bool {
    sluice_common::protocol::is_json(text)
}

/// Builds the publication for one entry; `None` if the entry is not one of ours.
pub fn decode_entry(
    topic: &Topic,
    id: &str,
    fields: &HashMap<String, Bytes>,
    epochs: &mut EpochCache,
) -> Option<Pub> {
    let (_, seq) = keys::parse_entry_id(id)?;
    let text = |k: &str| fields.get(k).and_then(|b| std::str::from_utf8(b).ok());
    let epoch = epochs.get(text("e")?);
    let kind = match text("t") {
        Some("alert") => FrameType::Alert,
        Some("delta") | None => FrameType::Delta,
        Some(_) => return None,
    };
    let ts = text("ts")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(sluice_common::time_fmt::now_ms);
    Some(checked(topic, seq, epoch, kind, ts, fields.get("p")?))
}

/// The publication for a topic's stored snapshot, checked like a stream entry.
pub(crate) fn snapshot(topic: &Topic, seq: u64, epoch: Arc<str>, ts: i64, doc: &[u8]) -> Pub {
    checked(topic, seq, epoch, FrameType::Snapshot, ts, doc)
}

/// Builds a publication from bytes read from Redis, which anyone with access can
/// write. They are read as bytes, so one that is not UTF-8 does not fail the whole
/// read of its reader group; and since the function's JSON check (Lua cjson) lets a
/// few malformed forms through and a frame a client cannot parse must never leave
/// the node (while dropping it would leave a seq gap), a bad document goes out as a
/// JSON string.
fn checked(topic: &Topic, seq: u64, epoch: Arc<str>, kind: FrameType, ts: i64, raw: &[u8]) -> Pub {
    let payload = String::from_utf8_lossy(raw);
    if !is_json(&payload) {
        tracing::warn!(%topic, seq, "document in Redis is not valid JSON; delivering it as a string");
        let quoted = serde_json::Value::String(payload.into_owned()).to_string();
        return Publication::new(topic.clone(), seq, epoch, kind, ts, &quoted);
    }
    Publication::new(topic.clone(), seq, epoch, kind, ts, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let p = snapshot(&t, 3, "e".into(), 1, raw);
            let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
            assert!(v["payload"].is_string(), "{v}");
            assert_eq!(v["type"], "snapshot");
            assert_eq!(v["seq"], 3);
        }
        let good = snapshot(&t, 4, "e".into(), 1, br#"{"bid":1}"#);
        let v: serde_json::Value = serde_json::from_str(good.frame.as_str()).unwrap();
        assert_eq!(v["payload"]["bid"], 1);
    }

    #[test]
    fn a_non_utf8_payload_becomes_a_json_string_not_a_failure() {
        let t = Topic::parse("a").unwrap();
        let mut f = fields(&[("e", "x")]);
        f.insert("p".into(), Bytes::from_static(b"\"\xff\""));
        let p = decode_entry(&t, "1-1", &f, &mut EpochCache::default()).unwrap();
        let v: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
        assert_eq!(v["payload"], "\u{fffd}", "lossy UTF-8, still a valid frame");
    }

    #[test]
    fn decodes_the_fields_the_function_writes() {
        let t = Topic::parse("prices.A").unwrap();
        let mut cache = EpochCache::default();
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
        assert!(p.frame.as_str().ends_with(r#""payload":{"x":1}}"#));
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
        let p = decode_entry(
            &t,
            "1-1",
            &fields(&[("e", "x"), ("p", "1.")]),
            &mut EpochCache::default(),
        )
        .unwrap();
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
                &mut EpochCache::default(),
            )
            .unwrap();
            let v: serde_json::Value =
                serde_json::from_str(p.frame.as_str()).expect("a valid frame");
            assert_eq!(v["payload"], payload);
            let live = format!("1\nx\ndelta\n0\n{payload}");
            let q = decode_live(&t, live.as_bytes(), &mut EpochCache::default()).unwrap();
            let w: serde_json::Value =
                serde_json::from_str(q.frame.as_str()).expect("a valid frame");
            assert_eq!(w["payload"], payload);
        }
    }

    fn live(topic: &Topic, msg: &[u8]) -> Result<Pub, LiveError> {
        decode_live(topic, msg, &mut EpochCache::default())
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
        let mut cache = EpochCache::default();
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
        let cases: [(&[u8], LiveError); 9] = [
            (b"", LiveError::Short),
            (b"1\ne\ndelta\n5", LiveError::Short),
            (b"0\ne\ndelta\n5\n1", LiveError::Seq),
            (b"-1\ne\ndelta\n5\n1", LiveError::Seq),
            (b"x\ne\ndelta\n5\n1", LiveError::Seq),
            (b"99999999999999999999\ne\ndelta\n5\n1", LiveError::Seq),
            (b"1\n\ndelta\n5\n1", LiveError::Epoch),
            (b"1\ne\nsnapshot\n5\n1", LiveError::Kind),
            (b"1\ne\ndelta\n5.5\n1", LiveError::Ts),
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
        let mut cache = EpochCache::default();
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
}
