//! Fuzzes the node's WebSocket frame reader (`sluice_node::ws::Decoder`) on any
//! client byte stream: it must never panic, never hand out a message over the
//! limit, and decode the same messages however the stream is split into reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_node::ws::{DecodeError, Decoder, Message};

type Out = Vec<Result<String, DecodeError>>;

/// Feeds `chunks` in turn; stops at a fatal error, as the socket does.
fn decode(max: usize, chunks: &[&[u8]]) -> Out {
    let mut d = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => {
                    if let Message::Text(t) = &m {
                        assert!(t.len() <= max, "text of {} over {max}", t.len());
                    }
                    if let Message::Binary(b) = &m {
                        assert!(b.len() <= max, "binary of {} over {max}", b.len());
                    }
                    out.push(Ok(format!("{m:?}")));
                }
                Ok(None) => break,
                Err(e @ DecodeError::TooLarge(_)) => out.push(Err(e)),
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [cut_seed, limit_seed, stream @ ..] = data else {
        return;
    };
    let max = 16 + usize::from(*limit_seed) * 8;
    let whole = decode(max, &[stream]);
    let cut = usize::from(*cut_seed) * stream.len() / 255;
    assert_eq!(decode(max, &[&stream[..cut], &stream[cut..]]), whole);
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode(max, &bytes), whole);
});
