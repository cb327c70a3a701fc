//! A published message as it travels from a broker to the sessions, and the seam
//! through which a broker hands live ones over.
//!
//! Nothing here depends on the hub, the sessions or a broker: the broker pushes
//! into a [`Sink`] (the hub implements it), so imports only point downward.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use sluice_common::{protocol::FrameType, Topic};

/// One published message, encoded once. Every session that delivers it shares
/// the same bytes.
#[derive(Debug)]
pub struct Publication {
    pub topic: Topic,
    pub seq: u64,
    pub epoch: Arc<str>,
    pub kind: FrameType,
    /// When it was published (Unix ms), for the delivery-latency histogram.
    pub published_ms: i64,
    /// The complete envelope JSON, ready for the socket.
    pub frame: Utf8Bytes,
    /// The gzip of `frame`, made by the first session that asks for compression
    /// and shared by every other one.
    pub gzip: std::sync::OnceLock<bytes::Bytes>,
}

pub type Pub = Arc<Publication>;

impl Publication {
    pub fn new(
        topic: Topic,
        seq: u64,
        epoch: Arc<str>,
        kind: FrameType,
        published_ms: i64,
        payload_json: &str,
    ) -> Pub {
        let frame = sluice_common::protocol::encode_publication(
            kind,
            topic.as_str(),
            seq,
            &epoch,
            published_ms,
            payload_json,
        );
        Arc::new(Publication {
            topic,
            seq,
            epoch,
            kind,
            published_ms,
            frame: frame.into(),
            gzip: std::sync::OnceLock::new(),
        })
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
}
