//! Stream entries and live messages to publications: the one place that knows the
//! entry fields (`e` epoch, `t` type, `p` payload, `ts` publish ms, `m` engine meta)
//! and the live message layout the function library writes.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;

use sluice_common::{
    keys,
    protocol::{meta::check_meta, FrameType},
    Topic,
};

use crate::publication::{Origin, Parts, Pub};

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

/// What decoding needs besides the bytes: this node's [`Origin`] (every envelope
/// names the node in `meta.node`) and the shared epoch strings.
#[derive(Debug)]
pub struct Decoder {
    origin: Origin,
    epochs: EpochCache,
}

impl Decoder {
    pub fn new(origin: Origin) -> Self {
        Decoder {
            origin,
            epochs: EpochCache::default(),
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
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
    #[error("live message type is not delta or alert (with an optional :<meta length>)")]
    Kind,
    #[error("live message publish time is not a whole number")]
    Ts,
    #[error("live message meta length runs past the message")]
    Meta,
}

fn number(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Decodes a message of a topic's live channel, as `sluice_publish` sends it with
/// `SPUBLISH sluice:{T}:live`: five fields split by `\n`, the payload last (it may
/// itself hold newlines), e.g. `"42\nhodyhjseay\ndelta\n1700000000123\n{\"bid\":1}"`.
/// With engine meta the type field carries the meta's length in bytes and the meta
/// text comes first in the last field, right before the payload:
/// `"42\nhodyhjseay\ndelta:17\n1700000000123\n{\"source\":\"feed\"}{\"bid\":1}"`.
/// Only the payload and the meta are JSON, and they are checked without building
/// the payload.
pub fn decode_live(topic: &Topic, msg: &[u8], dec: &mut Decoder) -> Result<Pub, LiveError> {
    let mut parts = msg.splitn(5, |b| *b == b'\n');
    let mut next = || parts.next().ok_or(LiveError::Short);
    let (seq, epoch, kind, ts) = (next()?, next()?, next()?, next()?);
    let rest = next()?;
    let seq = number(seq).filter(|s| *s >= 1).ok_or(LiveError::Seq)?;
    let epoch = std::str::from_utf8(epoch)
        .ok()
        .filter(|e| !e.is_empty())
        .ok_or(LiveError::Epoch)?;
    let (kind, meta_len) = match kind.iter().position(|b| *b == b':') {
        None => (kind, None),
        Some(i) => (
            &kind[..i],
            Some(number(&kind[i + 1..]).ok_or(LiveError::Kind)?),
        ),
    };
    let kind = match kind {
        b"delta" => FrameType::Delta,
        b"alert" => FrameType::Alert,
        _ => return Err(LiveError::Kind),
    };
    let ts = number(ts).ok_or(LiveError::Ts)? as i64;
    let (meta, payload) = match meta_len {
        None => (None, rest),
        Some(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= rest.len())
                .ok_or(LiveError::Meta)?;
            let (m, p) = rest.split_at(n);
            (Some(m), p)
        }
    };
    let epoch = dec.epochs.get(epoch);
    Ok(checked(dec, topic, (seq, epoch, kind, ts), payload, meta))
}

/// Whether `text` is one JSON document, checked without building it, under the
/// rules clients parse by (`protocol::is_json`: numbers that fit an f64, nesting of
/// at most 128). serde's `IgnoredAny` would pass `9e99999` and unbounded nesting,
/// which clients then fail to parse (the fuzzer found the first).
fn is_json(text: &str) -> bool {
    sluice_common::protocol::is_json(text)
}

/// Builds the publication for one entry; `None` if the entry is not one of ours.
/// Entries written before engine meta existed have no `m` field and decode with
/// `meta: {"node": …}` alone.
pub fn decode_entry(
    topic: &Topic,
    id: &str,
    fields: &HashMap<String, Bytes>,
    dec: &mut Decoder,
) -> Option<Pub> {
    let (_, seq) = keys::parse_entry_id(id)?;
    let text = |k: &str| fields.get(k).and_then(|b| std::str::from_utf8(b).ok());
    let epoch = dec.epochs.get(text("e")?);
    let kind = match text("t") {
        Some("alert") => FrameType::Alert,
        Some("delta") | None => FrameType::Delta,
        Some(_) => return None,
    };
    let ts = text("ts")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(sluice_common::time_fmt::now_ms);
    let payload = fields.get("p")?;
    let meta = fields.get("m").map(|m| &m[..]);
    Some(checked(dec, topic, (seq, epoch, kind, ts), payload, meta))
}

/// The publication for a topic's stored snapshot, checked like a stream entry. A
/// snapshot is the topic's state, not one engine message: its meta is the node's
/// alone.
pub(crate) fn snapshot(
    origin: &Origin,
    topic: &Topic,
    seq: u64,
    epoch: Arc<str>,
    ts: i64,
    doc: &[u8],
) -> Pub {
    let head = (seq, epoch, FrameType::Snapshot, ts);
    let payload = payload_text(topic, seq, doc);
    build(origin, topic, head, &payload, None)
}

/// Builds a publication from bytes read from Redis, which anyone with access can
/// write. They are read as bytes, so one that is not UTF-8 does not fail the whole
/// read of its reader group; and since the function's JSON check (Lua cjson) lets a
/// few malformed forms through and a frame a client cannot parse must never leave
/// the node (while dropping it would leave a seq gap), a bad document goes out as a
/// JSON string. Engine meta that is not a small JSON object without `node` (the
/// function refuses such meta, so it was written some other way) is left out: the
/// envelope keeps the node's meta alone.
fn checked(
    dec: &Decoder,
    topic: &Topic,
    head: (u64, Arc<str>, FrameType, i64),
    raw: &[u8],
    meta: Option<&[u8]>,
) -> Pub {
    let payload = payload_text(topic, head.0, raw);
    let meta = meta.and_then(|m| {
        let checked = std::str::from_utf8(m)
            .map_err(|_| "meta is not UTF-8".to_owned())
            .and_then(|t| check_meta(t).map(|()| t).map_err(|e| e.to_string()));
        checked
            .inspect_err(|e| {
                tracing::warn!(%topic, seq = head.0, error = %e, "stored meta refused; delivering without it");
            })
            .ok()
    });
    build(&dec.origin, topic, head, &payload, meta)
}

/// The payload as JSON text: as stored when it is valid, else as a JSON string.
fn payload_text<'a>(topic: &Topic, seq: u64, raw: &'a [u8]) -> std::borrow::Cow<'a, str> {
    let payload = String::from_utf8_lossy(raw);
    if is_json(&payload) {
        return payload;
    }
    tracing::warn!(%topic, seq, "document in Redis is not valid JSON; delivering it as a string");
    serde_json::Value::String(payload.into_owned())
        .to_string()
        .into()
}

fn build(
    origin: &Origin,
    topic: &Topic,
    (seq, epoch, kind, published_ms): (u64, Arc<str>, FrameType, i64),
    payload_json: &str,
    meta_json: Option<&str>,
) -> Pub {
    origin.publication(
        topic.clone(),
        Parts {
            seq,
            epoch,
            kind,
            published_ms,
            payload_json,
            meta_json,
        },
    )
}

#[cfg(test)]
mod tests {
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
        let p = decode_entry(
            &t,
            "1-1",
            &fields(&[("e", "x"), ("p", "1.")]),
            &mut dec(),
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
                &mut dec(),
            )
            .unwrap();
            let v: serde_json::Value =
                serde_json::from_str(p.frame.as_str()).expect("a valid frame");
            assert_eq!(v["payload"], payload);
            let live = format!("1\nx\ndelta\n0\n{payload}");
            let q = decode_live(&t, live.as_bytes(), &mut dec()).unwrap();
            let w: serde_json::Value =
                serde_json::from_str(q.frame.as_str()).expect("a valid frame");
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
}
