//! A server WebSocket over the upgraded connection, written by this project: a
//! `Sink` of messages whose frames are queued as (inline header, shared payload)
//! pairs and written with one vectored write per flush, so a publication's bytes
//! are never copied on their way to the kernel; and a `Stream` of the client's
//! messages from [`Decoder`].
//!
//! It answers the protocol itself, as a WebSocket library would: a ping with a
//! pong, a close with a close; a protocol error with close 1002, invalid UTF-8 with
//! 1007. Replies join the same queue as everything else, so frames never
//! interleave.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};

use axum::extract::ws::Message;
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    decode::{DecodeError, Decoder},
    frame::{close_payload, Header, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT},
};

/// Frames queued before `poll_ready` makes the writer wait for the socket: what one
/// wake-up's burst of small publications needs, with room to spare.
const QUEUE_HIGH_WATER_BYTES: usize = 64 * 1024;
/// Slices handed to one `writev` (well under Linux's IOV_MAX of 1024): 64 frames.
const MAX_IOV: usize = 128;
/// Bytes taken from the socket per read. On the stack: an idle connection holds no
/// read buffer at all.
const READ_CHUNK: usize = 4096;
/// An emptied queue keeps its allocation up to this many frames; a bigger one (after a
/// burst) is freed, so idle connections stay small.
const KEEP_QUEUE_CAPACITY: usize = 8;

/// Why the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// A frame was queued after our close frame.
    #[error("the WebSocket is closed")]
    Closed,
}

/// One queued frame: its header and its payload, written one after the other.
#[derive(Debug)]
struct Queued {
    head: Header,
    body: Bytes,
}

impl Queued {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

/// The server side of one WebSocket connection.
#[derive(Debug)]
pub struct WsSocket<T> {
    io: T,
    decoder: Decoder,
    /// Bytes read and not yet decoded; empty (no allocation) between messages.
    read_buf: BytesMut,
    /// Frames to write; `queue[front..]` are pending, the first `written` bytes of
    /// `queue[front]` already went out.
    queue: Vec<Queued>,
    front: usize,
    written: usize,
    queued_bytes: usize,
    /// Our close frame is queued: nothing more may follow it.
    close_sent: bool,
    /// No more reading: the client closed, the stream ended or broke.
    read_done: bool,
}

impl<T> WsSocket<T> {
    /// Wraps an upgraded connection; client messages over `max_message` bytes are
    /// refused with [`DecodeError::TooLarge`].
    pub fn new(io: T, max_message: usize) -> Self {
        WsSocket {
            io,
            decoder: Decoder::new(max_message),
            read_buf: BytesMut::new(),
            queue: Vec::new(),
            front: 0,
            written: 0,
            queued_bytes: 0,
            close_sent: false,
            read_done: false,
        }
    }

    /// Bytes queued and not yet taken by the socket.
    pub fn pending_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn push(&mut self, opcode: u8, body: Bytes) {
        let q = Queued {
            head: Header::new(opcode, body.len()),
            body,
        };
        self.queued_bytes += q.len();
        self.queue.push(q);
    }

    /// Queues our close frame, once.
    fn push_close(&mut self, body: Bytes) {
        if !self.close_sent {
            self.close_sent = true;
            self.push(OP_CLOSE, body);
        }
    }

    /// Takes `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued_bytes -= n;
        while n > 0 {
            let left = self.queue[self.front].len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.front += 1;
            self.written = 0;
        }
        if self.front == self.queue.len() {
            if self.queue.capacity() > KEEP_QUEUE_CAPACITY {
                self.queue = Vec::new();
            } else {
                self.queue.clear();
            }
            self.front = 0;
        }
    }
}

impl<T: AsyncWrite + Unpin> WsSocket<T> {
    /// Writes queued frames until the queue is empty: one vectored write per round,
    /// resuming mid-frame after a partial write.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.front < self.queue.len() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut skip = self.written;
            for q in &self.queue[self.front..] {
                if n + 2 > MAX_IOV {
                    break;
                }
                for part in [q.head.as_bytes(), &q.body[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    iov[n] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    n += 1;
                }
            }
            let w = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..n]))?;
            if w == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(w);
        }
        Poll::Ready(Ok(()))
    }

    /// Tries to send replies (pong, close) queued while reading, without waiting.
    fn write_replies(&mut self, cx: &mut Context<'_>) {
        if self.front < self.queue.len() {
            // A failure shows on the next read or write; a full socket waits for the
            // next flush.
            let _ = self.poll_write_queue(cx);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for WsSocket<T> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.read_done {
                return Poll::Ready(None);
            }
            match this.decoder.decode(&mut this.read_buf) {
                Ok(Some(msg)) => {
                    match &msg {
                        Message::Ping(data) if !this.close_sent => {
                            this.push(OP_PONG, data.clone());
                            this.write_replies(cx);
                        }
                        Message::Close(frame) => {
                            this.read_done = true;
                            // Echo the client's code, as RFC 6455 §5.5.1 suggests.
                            let body = frame
                                .as_ref()
                                .map_or_else(Bytes::new, |f| close_payload(f.code, ""));
                            this.push_close(body);
                            this.write_replies(cx);
                        }
                        _ => {}
                    }
                    if this.read_buf.is_empty() && this.read_buf.capacity() > READ_CHUNK {
                        this.read_buf = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
                Err(e @ DecodeError::TooLarge(_)) => return Poll::Ready(Some(Err(e.into()))),
                Err(e) => {
                    this.read_done = true;
                    let code = match e {
                        DecodeError::Utf8 => 1007,
                        _ => 1002,
                    };
                    this.push_close(close_payload(code, &e.to_string()));
                    this.write_replies(cx);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            // Uninitialised: this runs at every wake-up of the session, and zeroing
            // 4 KiB each time cost more than the (usually empty) read.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb)) {
                this.read_done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            if rb.filled().is_empty() {
                this.read_done = true;
                return Poll::Ready(None);
            }
            this.read_buf.extend_from_slice(rb.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> Sink<Message> for WsSocket<T> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.queued_bytes >= QUEUE_HIGH_WATER_BYTES {
            ready!(this.poll_write_queue(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        if this.close_sent {
            return Err(WsError::Closed);
        }
        match msg {
            Message::Text(t) => this.push(OP_TEXT, Bytes::from(t)),
            Message::Binary(b) => this.push(OP_BINARY, b),
            Message::Ping(b) => this.push(OP_PING, b),
            Message::Pong(b) => this.push(OP_PONG, b),
            Message::Close(frame) => {
                let body = frame.map_or_else(Bytes::new, |f| close_payload(f.code, &f.reason));
                this.push_close(body);
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_write_queue(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Sends a close frame (unless one went already), writes everything out and
    /// shuts the connection's write side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        this.push_close(Bytes::new());
        ready!(this.poll_write_queue(cx))?;
        ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
