//! The decoder against hand-made client frames, and a property: any split of the
//! byte stream decodes to the same messages.

use axum::extract::ws::{CloseFrame, Message};
use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::ws::frame::client_frame;

const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Feeds `chunks` one after the other and collects every result, stopping at a
/// fatal error (what the socket does).
fn decode_all(max: usize, chunks: &[&[u8]]) -> Vec<Result<Message, DecodeError>> {
    let mut d = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => out.push(Ok(m)),
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

fn one(max: usize, bytes: &[u8]) -> Vec<Result<Message, DecodeError>> {
    decode_all(max, &[bytes])
}

#[test]
fn a_masked_text_frame_is_unmasked() {
    let f = client_frame(true, OP_TEXT, br#"{"type":"ping"}"#, M);
    assert_eq!(
        one(1024, &f),
        [Ok(Message::Text(r#"{"type":"ping"}"#.into()))]
    );
}

#[test]
fn lengths_in_16_and_64_bits_are_read() {
    for len in [125usize, 126, 65_535, 65_536, 70_000] {
        let payload = vec![b'a'; len];
        let f = client_frame(true, OP_BINARY, &payload, M);
        assert_eq!(
            one(1 << 20, &f),
            [Ok(Message::Binary(payload.into()))],
            "{len}"
        );
    }
}

#[test]
fn fragments_join_with_control_frames_between_them() {
    let mut s = client_frame(false, OP_TEXT, b"hel", M);
    s.extend(client_frame(true, OP_PING, b"p", M));
    s.extend(client_frame(false, OP_CONTINUATION, b"lo ", M));
    s.extend(client_frame(true, OP_CONTINUATION, "wörld".as_bytes(), M));
    assert_eq!(
        one(1024, &s),
        [
            Ok(Message::Ping(b"p"[..].into())),
            Ok(Message::Text("hello wörld".into()))
        ]
    );
}

#[test]
fn a_message_over_the_limit_is_refused_once_and_skipped() {
    // Fragmented: refused at the fragment that crosses the limit, the rest skipped;
    // the frames after it still decode.
    let mut s = client_frame(false, OP_TEXT, &[b'x'; 60], M);
    s.extend(client_frame(false, OP_CONTINUATION, &[b'x'; 60], M));
    s.extend(client_frame(true, OP_CONTINUATION, &[b'x'; 60], M));
    s.extend(client_frame(true, OP_BINARY, &[1; 101], M));
    s.extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8], M));
    assert_eq!(
        one(100, &s),
        [
            Err(DecodeError::TooLarge(120)),
            Err(DecodeError::TooLarge(101)),
            Ok(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into()
            })))
        ]
    );
    // Exactly at the limit is fine.
    let f = client_frame(true, OP_TEXT, &[b'y'; 100], M);
    assert!(matches!(&one(100, &f)[..], [Ok(Message::Text(t))] if t.len() == 100));
}

#[test]
fn the_limit_is_checked_before_the_payload_arrives() {
    // Only the header of a 1 GiB frame: refused at once, nothing buffered.
    let f = client_frame(true, OP_BINARY, &[], M);
    let mut head = f[..2].to_vec();
    head[1] = 0x80 | 127;
    head.extend((1u64 << 30).to_be_bytes());
    head.extend(M);
    let mut d = Decoder::new(1024);
    let mut buf = BytesMut::from(&head[..]);
    assert_eq!(d.decode(&mut buf), Err(DecodeError::TooLarge(1 << 30)));
    assert!(buf.is_empty());
    assert_eq!(d.decode(&mut buf), Ok(None));
}

#[test]
fn invalid_utf8_is_its_own_error() {
    let f = client_frame(true, OP_TEXT, &[0xff, 0xfe], M);
    assert_eq!(one(1024, &f), [Err(DecodeError::Utf8)]);
    // Split inside a character across fragments is valid.
    let e = "é".as_bytes();
    let mut s = client_frame(false, OP_TEXT, &e[..1], M);
    s.extend(client_frame(true, OP_CONTINUATION, &e[1..], M));
    assert_eq!(one(1024, &s), [Ok(Message::Text("é".into()))]);
    let close = client_frame(true, OP_CLOSE, &[0x03, 0xe8, 0xc3], M);
    assert_eq!(one(1024, &close), [Err(DecodeError::Utf8)]);
}

#[test]
fn protocol_violations_are_refused() {
    let mut unmasked = client_frame(true, OP_TEXT, b"hi", M);
    unmasked[1] &= 0x7F;
    let mut rsv = client_frame(true, OP_TEXT, b"hi", M);
    rsv[0] |= 0x40;
    let mut top_bit = vec![0x82, 0x80 | 127];
    top_bit.extend(u64::MAX.to_be_bytes());
    top_bit.extend(M);
    let mut nested = client_frame(false, OP_TEXT, b"a", M);
    nested.extend(client_frame(true, OP_TEXT, b"b", M));
    let cases: [(&str, Vec<u8>); 10] = [
        ("unmasked", unmasked),
        ("reserved bits", rsv),
        ("top bit", top_bit),
        ("fragmented ping", client_frame(false, OP_PING, b"", M)),
        ("long ping", client_frame(true, OP_PING, &[0; 126], M)),
        ("control 0xB", client_frame(true, 0xB, b"", M)),
        ("data 0x3", client_frame(true, 0x3, b"", M)),
        (
            "lone continuation",
            client_frame(true, OP_CONTINUATION, b"a", M),
        ),
        ("nested message", nested),
        (
            "close code 1005",
            client_frame(true, OP_CLOSE, &[0x03, 0xed], M),
        ),
    ];
    for (name, bytes) in cases {
        let out = one(1 << 20, &bytes);
        assert!(
            matches!(out.last(), Some(Err(DecodeError::Protocol(_)))),
            "{name}: {out:?}"
        );
    }
    let short_close = client_frame(true, OP_CLOSE, &[3], M);
    assert!(matches!(
        &one(1024, &short_close)[..],
        [Err(DecodeError::Protocol(_))]
    ));
}

/// A client message as frames: (fin, opcode, payload) each.
fn arb_message() -> impl Strategy<Value = Vec<(bool, u8, Vec<u8>)>> {
    let text = "[a-zé€😀]{0,40}".prop_map(String::into_bytes);
    let data = prop_oneof![
        text.clone().prop_map(|t| (OP_TEXT, t)),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (OP_BINARY, b)),
    ];
    let control = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(|b| (OP_PING, b)),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(|b| (OP_PONG, b)),
    ];
    prop_oneof![
        3 => (data, 1usize..4).prop_map(|((op, bytes), parts)| {
            // Split the payload into `parts` fragments (at byte positions: a text
            // may be cut inside a character).
            let step = bytes.len().div_ceil(parts).max(1);
            let mut frames: Vec<(bool, u8, Vec<u8>)> = bytes
                .chunks(step)
                .enumerate()
                .map(|(i, c)| (false, if i == 0 { op } else { OP_CONTINUATION }, c.to_vec()))
                .collect();
            if frames.is_empty() {
                frames.push((false, op, Vec::new()));
            }
            if let Some(last) = frames.last_mut() {
                last.0 = true;
            }
            frames
        }),
        1 => control.prop_map(|(op, b)| vec![(true, op, b)]),
    ]
}

proptest! {
    #[test]
    fn any_split_of_the_stream_decodes_the_same(
        messages in prop::collection::vec(arb_message(), 1..12),
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        max in prop_oneof![Just(1usize << 20), 50usize..200],
    ) {
        let mut stream = Vec::new();
        for frames in &messages {
            for (fin, op, payload) in frames {
                stream.extend(client_frame(*fin, *op, payload, mask));
            }
        }
        let whole = decode_all(max, &[&stream]);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for a in at {
            chunks.push(&stream[prev..a]);
            prev = a;
        }
        chunks.push(&stream[prev..]);
        prop_assert_eq!(&decode_all(max, &chunks), &whole);
        // And byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(&decode_all(max, &bytes), &whole);
        // Under a large limit every message comes out, in order.
        if max == 1 << 20 {
            prop_assert_eq!(whole.len(), messages.len());
            prop_assert!(whole.iter().all(Result::is_ok));
        }
    }
}
