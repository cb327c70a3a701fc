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
mod tests;
