//! A published message as it travels from a broker to the sessions, and the seam
//! through which a broker hands live ones over.
//!
//! Nothing here depends on the hub, the sessions or a broker: the broker pushes
//! into a [`Sink`] (the hub implements it), so imports only point downward.

use std::{borrow::Cow, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use sluice_common::{
    protocol::{meta, FrameType},
    Topic,
};

/// One published message, encoded once per node (its envelope names the node in
/// `meta.node`). Every session that delivers it shares the same bytes.
#[derive(Debug)]
pub struct Publication {
    pub topic: Topic,
    pub seq: u64,
    pub epoch: Arc<str>,
    pub kind: FrameType,
    /// When it was published (Unix ms), for the delivery-latency histogram.
    pub published_ms: i64,
    /// When this node built it (read it from Redis, or took the embedded broker's
    /// publish), for the node-stage histograms (`sluice_{alert,delta}_stage_seconds`).
    pub received: std::time::Instant,
    /// The complete envelope JSON, ready for the socket.
    pub frame: Utf8Bytes,
    /// The gzip of `frame`, made by the first session that asks for compression
    /// and shared by every other one.
    pub gzip: std::sync::OnceLock<bytes::Bytes>,
}

pub type Pub = Arc<Publication>;

/// This node, as every envelope it encodes names it: `meta.node`. Brokers hold one
/// and build every publication through it (live, history, snapshot), so whichever
/// way a message reaches a client, its `meta.node` is the node that delivered it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `{"node":"<id>"}`, built once: the whole `meta` of every publication that
    /// has no engine meta, so those cost no allocation for it.
    node_meta: Arc<str>,
}

impl Origin {
    pub fn new(node_id: &str) -> Self {
        Origin {
            node_meta: meta::node_meta(node_id).into(),
        }
    }

    /// The `meta` object of an envelope: `{"node":…}`, plus the engine's members.
    fn meta<'a>(&'a self, engine: Option<&str>) -> Cow<'a, str> {
        match engine {
            None => Cow::Borrowed(&self.node_meta),
            Some(m) => Cow::Owned(meta::merge_meta(&self.node_meta, m)),
        }
    }

    /// Encodes one publication. `meta_json`, the engine's meta, must be a JSON
    /// object without `node` ([`meta::check_meta`]): brokers check it before.
    pub fn publication(&self, topic: Topic, parts: Parts<'_>) -> Pub {
        let frame = sluice_common::protocol::encode_publication(
            parts.kind,
            topic.as_str(),
            parts.seq,
            &parts.epoch,
            parts.published_ms,
            parts.payload_json,
            &self.meta(parts.meta_json),
        );
        Arc::new(Publication {
            topic,
            seq: parts.seq,
            epoch: parts.epoch,
            kind: parts.kind,
            published_ms: parts.published_ms,
            received: std::time::Instant::now(),
            frame: frame.into(),
            gzip: std::sync::OnceLock::new(),
        })
    }
}

/// What a publication is made of, besides its topic.
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    pub seq: u64,
    pub epoch: Arc<str>,
    pub kind: FrameType,
    pub published_ms: i64,
    /// JSON text, sent as it is.
    pub payload_json: &'a str,
    /// The engine's meta object, if it gave one.
    pub meta_json: Option<&'a str>,
}

#[cfg(test)]
impl Publication {
    /// A publication without engine meta, stamped by node `test`: for unit tests.
    pub fn new(
        topic: Topic,
        seq: u64,
        epoch: Arc<str>,
        kind: FrameType,
        published_ms: i64,
        payload_json: &str,
    ) -> Pub {
        Origin::new("test").publication(
            topic,
            Parts {
                seq,
                epoch,
                kind,
                published_ms,
                payload_json,
                meta_json: None,
            },
        )
    }
}

/// Where a broker hands live publications: this node's fan-out.
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    /// Whether some local session follows `topic` now.
    fn wants(&self, topic: &str) -> bool;

    /// Hands a live publication of a followed topic to its local subscribers;
    /// returns how many took it. Never blocks.
    fn deliver(&self, p: &Pub) -> usize;

    /// A topic started `epoch` (it is new, or its state was lost): wildcard
    /// subscriptions may want to follow it, from the epoch's first seq. Never
    /// blocks.
    fn announce(&self, _topic: &Topic, _epoch: &str) {}

    /// Whether a wildcard subscription held here matches `topic` (so an
    /// announcement of it would be followed). Never blocks.
    fn wildcard_matches(&self, _topic: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(payload: &'a str, meta: Option<&'a str>) -> Parts<'a> {
        Parts {
            seq: 3,
            epoch: "ep".into(),
            kind: FrameType::Delta,
            published_ms: 0,
            payload_json: payload,
            meta_json: meta,
        }
    }

    #[test]
    fn every_envelope_names_its_node_and_keeps_the_engine_meta() {
        let origin = Origin::new("node-1");
        let t = Topic::parse("a").unwrap();
        let bare = origin.publication(t.clone(), parts("{}", None));
        assert!(
            bare.frame
                .as_str()
                .ends_with(r#""payload":{},"meta":{"node":"node-1"}}"#),
            "{}",
            bare.frame.as_str()
        );
        let with = origin.publication(t, parts("[1]", Some(r#"{"source":"feed"}"#)));
        let v: serde_json::Value = serde_json::from_str(with.frame.as_str()).unwrap();
        assert_eq!(
            v["meta"],
            serde_json::json!({"node":"node-1","source":"feed"})
        );
        assert_eq!(v["payload"], serde_json::json!([1]));
        assert_eq!(v["seq"], 3);
    }
}
