//! How publications become WebSocket frames for one session: one envelope per text
//! frame by default; with `batch_size`, queued envelopes go out together as one JSON
//! array (never holding back a lone message); with `compression`, frames over
//! 1 KiB go out as binary frames holding the gzip of the JSON text.

use std::io::Write;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};

use crate::publication::Publication;

/// Frames larger than this are compressed when the subscription asked for it.
pub const COMPRESS_OVER: usize = 1024;

/// The delivery options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameOptions {
    /// Envelopes per frame at most; 1 means no batching.
    pub batch: u32,
    pub compress: bool,
}

impl Default for FrameOptions {
    fn default() -> Self {
        FrameOptions {
            batch: 1,
            compress: false,
        }
    }
}

/// Envelopes waiting to go out together.
#[derive(Debug, Default)]
pub(crate) struct Batcher {
    items: Vec<Utf8Bytes>,
    opts: FrameOptions,
}

pub(crate) fn gzip(data: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 3 + 32), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// The frame for one publication on its own.
pub(crate) fn single(p: &Publication, compress: bool) -> Message {
    if compress && p.frame.len() > COMPRESS_OVER {
        Message::Binary(p.gzip.get_or_init(|| gzip(p.frame.as_bytes())).clone())
    } else {
        Message::Text(p.frame.clone())
    }
}

impl Batcher {
    /// Adds an envelope. Returns frames that must be written now, in order: the
    /// previous batch when the options change, and this batch when it is full.
    pub(crate) fn push(&mut self, p: &Publication, opts: FrameOptions, out: &mut Vec<Message>) {
        if !self.items.is_empty() && self.opts != opts {
            out.extend(self.take());
        }
        self.opts = opts;
        if self.items.is_empty() && opts.batch <= 1 {
            out.push(single(p, opts.compress));
            return;
        }
        self.items.push(p.frame.clone());
        if self.items.len() >= opts.batch as usize {
            out.extend(self.take());
        }
    }

    /// The pending envelopes as one frame: a lone one as itself, several as an array.
    pub(crate) fn take(&mut self) -> Option<Message> {
        let items = std::mem::take(&mut self.items);
        let text = match items.len() {
            0 => return None,
            1 => items
                .into_iter()
                .next()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            n => {
                let len: usize = items.iter().map(|i| i.len() + 1).sum();
                let mut s = String::with_capacity(len + 2);
                s.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(item.as_str());
                }
                s.push(']');
                debug_assert!(n > 1);
                s
            }
        };
        Some(if self.opts.compress && text.len() > COMPRESS_OVER {
            Message::Binary(gzip(text.as_bytes()))
        } else {
            Message::Text(text.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::{protocol::FrameType, Topic};
    use std::io::Read;

    fn pubn(seq: u64, size: usize) -> std::sync::Arc<Publication> {
        let payload = format!("\"{}\"", "x".repeat(size));
        Publication::new(
            Topic::parse("t").unwrap(),
            seq,
            "e".into(),
            FrameType::Delta,
            0,
            &payload,
        )
    }

    fn text(m: &Message) -> String {
        match m {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Binary(b) => {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&b[..])
                    .read_to_string(&mut s)
                    .unwrap();
                s
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn without_batching_each_envelope_is_its_own_frame() {
        let mut b = Batcher::default();
        let mut out = Vec::new();
        b.push(&pubn(1, 1), FrameOptions::default(), &mut out);
        b.push(&pubn(2, 1), FrameOptions::default(), &mut out);
        assert_eq!(out.len(), 2);
        assert!(b.take().is_none());
    }

    #[test]
    fn a_backlog_becomes_arrays_of_at_most_batch_size_and_a_lone_one_stays_an_object() {
        let opts = FrameOptions {
            batch: 3,
            compress: false,
        };
        let mut b = Batcher::default();
        let mut out = Vec::new();
        for s in 1..=4 {
            b.push(&pubn(s, 1), opts, &mut out);
        }
        assert_eq!(out.len(), 1);
        let arr: Vec<serde_json::Value> = serde_json::from_str(&text(&out[0])).unwrap();
        assert_eq!(
            arr.iter()
                .map(|v| v["seq"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let last = b.take().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text(&last)).unwrap();
        assert_eq!(v["seq"], 4, "a lone envelope is not wrapped in an array");
    }

    #[test]
    fn large_frames_are_gzipped_small_ones_are_not() {
        let opts = FrameOptions {
            batch: 1,
            compress: true,
        };
        let mut b = Batcher::default();
        let mut out = Vec::new();
        let big = pubn(1, 2000);
        b.push(&pubn(0, 10), opts, &mut out);
        b.push(&big, opts, &mut out);
        assert!(matches!(out[0], Message::Text(_)));
        assert!(matches!(out[1], Message::Binary(_)));
        assert_eq!(text(&out[1]), big.frame.as_str());
        assert!(
            big.gzip.get().is_some(),
            "the compressed bytes are cached on the publication"
        );
    }
}
