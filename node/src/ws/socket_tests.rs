//! The socket over a scripted connection: what reaches the wire, in how many
//! writes, after partial writes and stalls; and the replies it makes by itself.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;
use crate::ws::frame::{client_frame, OP_CLOSE};

const M: [u8; 4] = [1, 2, 3, 4];

/// A connection that takes at most `per_call` bytes per write and `budget` bytes in
/// all (then stalls), and records every write.
#[derive(Debug, Default)]
struct Wire {
    input: Vec<u8>,
    read_at: usize,
    out: Vec<u8>,
    per_call: usize,
    budget: usize,
    writes: usize,
    /// The address of every slice handed to a write.
    slices: Vec<usize>,
}

impl Wire {
    fn new(per_call: usize) -> Wire {
        Wire {
            per_call,
            budget: usize::MAX,
            ..Wire::default()
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.input.len() - self.read_at);
        if n == 0 && self.read_at < self.input.len() {
            return Poll::Pending;
        }
        let at = self.read_at;
        buf.put_slice(&self.input[at..at + n]);
        self.read_at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(b)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.budget == 0 {
            return Poll::Pending;
        }
        self.writes += 1;
        let mut take = self.per_call.min(self.budget);
        let mut n = 0;
        for b in bufs {
            self.slices.push(b.as_ptr() as usize);
            let k = take.min(b.len());
            self.out.extend_from_slice(&b[..k]);
            take -= k;
            n += k;
        }
        self.budget -= n;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Server frames on the wire as (opcode, payload), checking each is final and
/// unmasked and that nothing is left over.
fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert_eq!(b[0] & 0xF0, 0x80, "final, no reserved bits");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] {
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        out.push((b[0] & 0x0F, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    out
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(futures_util::task::noop_waker_ref())
}

#[tokio::test]
async fn frames_at_the_length_boundaries_reach_the_wire_exactly() {
    let mut s = WsSocket::new(Wire::new(usize::MAX), 1024);
    let sizes = [0usize, 125, 126, 65_535, 65_536];
    for n in sizes {
        s.feed(Message::Text("a".repeat(n).into())).await.unwrap();
    }
    s.flush().await.unwrap();
    let frames = server_frames(&s.io.out);
    assert_eq!(frames.len(), sizes.len());
    for ((op, payload), n) in frames.iter().zip(sizes) {
        assert_eq!((*op, payload.len()), (OP_TEXT, n));
    }
    let total: usize = sizes
        .iter()
        .map(|n| n + Header::new(OP_TEXT, *n).len())
        .sum();
    assert_eq!(s.io.out.len(), total);
}

#[tokio::test]
async fn a_burst_goes_out_in_one_vectored_write_without_copying_bodies() {
    let mut s = WsSocket::new(Wire::new(usize::MAX), 1024);
    let bodies: Vec<Bytes> = (0..64)
        .map(|i| Bytes::from(format!(r#"{{"seq":{i}}}"#)))
        .collect();
    for b in &bodies {
        s.feed(Message::Binary(b.clone())).await.unwrap();
    }
    s.flush().await.unwrap();
    assert_eq!(s.io.writes, 1, "64 frames, one writev");
    for b in &bodies {
        assert!(
            s.io.slices.contains(&(b.as_ptr() as usize)),
            "the body is written from the shared bytes themselves"
        );
    }
    let frames = server_frames(&s.io.out);
    let got: Vec<Vec<u8>> = frames.into_iter().map(|(_, p)| p).collect();
    let want: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    assert_eq!(got, want);
    assert_eq!(s.pending_bytes(), 0);
}

#[tokio::test]
async fn partial_writes_resume_mid_header_and_mid_body() {
    for per_call in [1usize, 3, 7, 130] {
        let mut s = WsSocket::new(Wire::new(per_call), 1024);
        let texts = ["a".repeat(200), String::new(), "b".repeat(5)];
        for t in &texts {
            s.feed(Message::Text(t.clone().into())).await.unwrap();
        }
        s.feed(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        s.flush().await.unwrap();
        let total = (2 + 2 + 200) + 2 + (2 + 5) + (2 + 1);
        assert_eq!(s.io.out.len(), total, "{per_call} bytes per write");
        assert_eq!(
            s.io.writes,
            total.div_ceil(per_call),
            "{per_call} per write"
        );
        let frames = server_frames(&s.io.out);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].1, texts[0].as_bytes());
        assert_eq!(frames[3], (OP_PING, b"p".to_vec()));
    }
}

#[tokio::test]
async fn more_than_one_writev_worth_of_frames_all_go_out_in_order() {
    let mut s = WsSocket::new(Wire::new(usize::MAX), 1024);
    for i in 0..200u32 {
        s.feed(Message::Text(i.to_string().into())).await.unwrap();
    }
    s.flush().await.unwrap();
    assert_eq!(s.io.writes, 4, "64 frames (128 slices) per writev");
    let seqs: Vec<String> = server_frames(&s.io.out)
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(seqs, (0..200).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn a_stalled_socket_makes_flush_and_a_full_queue_wait() {
    let mut wire = Wire::new(usize::MAX);
    wire.budget = 10;
    let mut s = WsSocket::new(wire, 1024);
    let mut cx = noop_cx();
    let big = Bytes::from(vec![0u8; QUEUE_HIGH_WATER_BYTES]);
    assert!(Pin::new(&mut s).poll_ready(&mut cx).is_ready());
    Pin::new(&mut s).start_send(Message::Binary(big)).unwrap();
    assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending());
    assert_eq!(s.io.out.len(), 10, "what the socket took");
    assert_eq!(
        s.pending_bytes(),
        10 + QUEUE_HIGH_WATER_BYTES - 10,
        "a 64-bit length header"
    );
    // Over the high-water mark, a new frame waits for the socket.
    assert!(Pin::new(&mut s).poll_ready(&mut cx).is_pending());
    s.io.budget = usize::MAX;
    assert!(Pin::new(&mut s).poll_ready(&mut cx).is_ready());
    assert_eq!(s.pending_bytes(), 0);
}

#[tokio::test]
async fn pings_are_answered_and_a_client_close_is_echoed() {
    let mut wire = Wire::new(usize::MAX);
    wire.input = client_frame(true, OP_PING, b"hb", M);
    wire.input.extend(client_frame(true, OP_TEXT, b"{}", M));
    wire.input
        .extend(client_frame(true, OP_CLOSE, &[0x03, 0xe9, b'x'], M));
    let mut s = WsSocket::new(wire, 1024);
    assert_eq!(
        s.next().await.unwrap().unwrap(),
        Message::Ping(Bytes::from_static(b"hb"))
    );
    assert_eq!(s.next().await.unwrap().unwrap(), Message::Text("{}".into()));
    let close = s.next().await.unwrap().unwrap();
    assert_eq!(
        close,
        Message::Close(Some(CloseFrame {
            code: 1001,
            reason: "x".into()
        }))
    );
    assert!(s.next().await.is_none(), "nothing is read after a close");
    assert_eq!(
        server_frames(&s.io.out),
        [(OP_PONG, b"hb".to_vec()), (OP_CLOSE, vec![0x03, 0xe9])]
    );
    assert!(matches!(
        s.send(Message::Text("late".into())).await,
        Err(WsError::Closed)
    ));
    s.close().await.unwrap();
    assert_eq!(server_frames(&s.io.out).len(), 2, "one close frame only");
}

#[tokio::test]
async fn protocol_errors_close_with_1002_and_bad_utf8_with_1007() {
    let mut unmasked = client_frame(true, OP_TEXT, b"hi", M);
    unmasked[1] &= 0x7F;
    for (input, code) in [
        (unmasked, 1002u16),
        (client_frame(true, OP_TEXT, &[0xc3, 0x28], M), 1007),
    ] {
        let mut wire = Wire::new(usize::MAX);
        wire.input = input;
        let mut s = WsSocket::new(wire, 1024);
        assert!(matches!(s.next().await, Some(Err(WsError::Decode(_)))));
        assert!(s.next().await.is_none());
        let frames = server_frames(&s.io.out);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, OP_CLOSE);
        assert_eq!(u16::from_be_bytes([frames[0].1[0], frames[0].1[1]]), code);
    }
}

#[tokio::test]
async fn an_oversized_message_is_an_error_and_reading_goes_on() {
    let mut wire = Wire::new(usize::MAX);
    wire.input = client_frame(true, OP_TEXT, &[b'x'; 2000], M);
    wire.input
        .extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8], M));
    let mut s = WsSocket::new(wire, 1024);
    assert!(matches!(
        s.next().await,
        Some(Err(WsError::Decode(DecodeError::TooLarge(2000))))
    ));
    // The session answers with its error and close 1009, then reads the client's close.
    s.send(Message::Close(Some(CloseFrame {
        code: 1009,
        reason: "too big".into(),
    })))
    .await
    .unwrap();
    assert!(matches!(s.next().await, Some(Ok(Message::Close(_)))));
    let frames = server_frames(&s.io.out);
    assert_eq!(frames.len(), 1, "our close is not sent twice: {frames:?}");
    assert_eq!(frames[0].1[..2], [0x03, 0xf1]);
}

#[tokio::test]
async fn the_queue_is_freed_after_a_burst() {
    let mut s = WsSocket::new(Wire::new(usize::MAX), 1024);
    for _ in 0..40 {
        s.feed(Message::Text("x".into())).await.unwrap();
    }
    s.flush().await.unwrap();
    assert_eq!(s.queue.capacity(), 0);
    assert!(s.read_buf.capacity() == 0);
}
