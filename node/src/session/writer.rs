//! Writing to the socket: frames, publications (batched and compressed as their
//! subscription asked) and flushes, each interrupted by a stop or slow signal and
//! bounded by the write deadline, so a socket that takes no bytes cannot hold a
//! session (or its token expiry) forever.

use std::{
    future::{poll_fn, Future},
    pin::Pin,
    task::Poll,
    time::Duration,
};

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt, Stream};
use serde_json::Value;
use sluice_common::{protocol::ServerFrame, ErrorCode};

use super::{
    actor::{signal_end, Session, WHILE_WRITING},
    outbound::FrameOptions,
    SessionEnd,
};
use crate::publication::Pub;

impl<S, E> Session<S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    /// Sends an `error` frame; the session stays open.
    pub(super) async fn send_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        details: Value,
        correlation_id: Option<Value>,
    ) -> Result<(), SessionEnd> {
        let f = ServerFrame::error(code, message)
            .with_details(details)
            .with_correlation_id(correlation_id);
        self.send_frame(&f).await
    }

    pub(super) async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), SessionEnd> {
        self.ctx.metrics.error_sent(frame.code);
        self.emit_batch().await?;
        self.write(Message::Text(frame.to_json().into())).await
    }

    /// Queues one publication frame for the socket and records its latency.
    /// Queues one publication for the socket (batched and compressed as its
    /// subscription asked).
    pub(super) async fn write_pub(
        &mut self,
        p: &Pub,
        opts: FrameOptions,
    ) -> Result<(), SessionEnd> {
        let mut ready = Vec::new();
        self.batcher.push(p, opts, &mut ready);
        for m in ready {
            self.write(m).await?;
        }
        Ok(())
    }

    /// Writes the pending batch, if any.
    pub(super) async fn emit_batch(&mut self) -> Result<(), SessionEnd> {
        match self.batcher.take() {
            Some(m) => self.write(m).await,
            None => Ok(()),
        }
    }

    /// Writes without flushing; gives up if the session is told to stop meanwhile,
    /// or when the socket takes nothing until the write deadline.
    pub(super) async fn write(&mut self, msg: Message) -> Result<(), SessionEnd> {
        let deadline = self.write_deadline();
        let mailbox = &self.info.mailbox;
        self.tally.add(&msg);
        let mut feed = self.socket.feed(msg);
        let feed = poll_fn(|cx| {
            if let Some(s) = mailbox.poll_signal(cx, &WHILE_WRITING) {
                return Poll::Ready(Err(signal_end(s)));
            }
            Pin::new(&mut feed)
                .poll(cx)
                .map_err(|_| SessionEnd::ClientGone)
        });
        under_deadline(feed, deadline).await
    }

    pub(super) async fn flush(&mut self) -> Result<(), SessionEnd> {
        self.emit_batch().await?;
        self.tally.account(&self.ctx.metrics);
        let deadline = self.write_deadline();
        let mailbox = &self.info.mailbox;
        let mut flush = self.socket.flush();
        let flush = poll_fn(|cx| {
            if let Some(s) = mailbox.poll_signal(cx, &WHILE_WRITING) {
                return Poll::Ready(Err(signal_end(s)));
            }
            Pin::new(&mut flush)
                .poll(cx)
                .map_err(|_| SessionEnd::ClientGone)
        });
        under_deadline(flush, deadline).await
    }

    /// How long a blocked write may wait, and how the session ends when it has: a
    /// socket that accepts no bytes for `SLUICE_CONNECTION_TIMEOUT` is a slow
    /// consumer (4008, even on a quiet topic, where the outbox never fills); a token
    /// that expires meanwhile still ends the session at its expiry.
    pub(super) fn write_deadline(&self) -> WriteDeadline {
        let stall = self.ctx.config.connection_timeout;
        let expiry = self.token_remaining();
        if expiry < stall {
            WriteDeadline {
                limit: expiry,
                token_expires: true,
            }
        } else {
            WriteDeadline {
                limit: stall,
                token_expires: false,
            }
        }
    }
}

/// What a session wrote since its last flush, for the metrics (accounted per flush,
/// not per frame).
#[derive(Debug, Default)]
pub(super) struct Tally {
    frames: u32,
    data: u32,
    bytes: u64,
}

impl Tally {
    pub(super) fn add(&mut self, msg: &Message) {
        self.frames += 1;
        let len = match msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => return,
        };
        self.data += 1;
        self.bytes += len as u64;
    }

    /// Hands the tally to the metrics and starts a new one.
    pub(super) fn account(&mut self, metrics: &crate::metrics::Metrics) {
        let t = std::mem::take(self);
        metrics.written(t.frames.into(), t.data.into(), t.bytes);
    }
}

/// How long a blocked write may wait, and what ends then.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriteDeadline {
    limit: Duration,
    /// The token expires first (else the socket counts as stalled).
    token_expires: bool,
}

/// Runs a socket write under `deadline`. The write is polled once first, so the
/// common case — the socket takes the bytes at once — never arms a timer.
pub(super) async fn under_deadline(
    write: impl Future<Output = Result<(), SessionEnd>>,
    deadline: WriteDeadline,
) -> Result<(), SessionEnd> {
    let mut write = std::pin::pin!(write);
    if let Poll::Ready(r) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return r;
    }
    match tokio::time::timeout(deadline.limit, write).await {
        Ok(r) => r,
        Err(_) if deadline.token_expires => Err(SessionEnd::Policy("token expired".into())),
        Err(_) => Err(SessionEnd::SlowConsumer(
            "the socket accepted no bytes within the connection timeout",
        )),
    }
}
