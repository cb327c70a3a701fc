//! The common case of a live publication, without the general path's awaits: the
//! next seq of a subscription's own epoch, for a foreground session with plain
//! frames (no batching, no compression, no wildcard). A burst of such publications
//! is decided synchronously and handed to the socket in one write; anything else
//! (a gap to fill, another epoch, background mode, patterns, batching) goes through
//! [`Session::on_publication`] in its place in the burst, so order holds.

use std::{future::poll_fn, pin::Pin, sync::Arc, task::Poll};

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};

use super::{
    actor::{signal_end, Session, WHILE_WRITING},
    outbound::FrameOptions,
    writer::under_deadline,
    SessionEnd,
};
use crate::publication::Pub;

/// What the fast path made of one publication.
pub(super) enum Fast {
    /// The next message of its subscription: this frame goes out (the position has
    /// moved past it).
    Write(Message),
    /// Nothing to send: delivered already, or no longer subscribed.
    Skip,
    /// Needs the general path.
    Slow,
}

impl<S, E> Session<S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    /// Decides `p` when it is the common case; never awaits, and changes nothing
    /// when it answers [`Fast::Slow`].
    pub(super) fn fast(&mut self, p: &Pub) -> Fast {
        if self.background || self.patterns.is_some() {
            return Fast::Slow;
        }
        let Some(sub) = self.subs.get_mut(&p.topic) else {
            return Fast::Skip; // unsubscribed meanwhile
        };
        // Epochs are shared per node: compare the address first.
        let same_epoch = sub
            .pos
            .epoch()
            .is_some_and(|e| Arc::ptr_eq(e, &p.epoch) || **e == *p.epoch);
        if !same_epoch || sub.opts != FrameOptions::default() {
            return Fast::Slow;
        }
        // In its own epoch a publication is the next one, a duplicate, or after a
        // gap (`Position::on_live`'s rules, which the general path applies).
        let next = sub.pos.next();
        if p.seq == next {
            sub.pos.delivered(p.seq);
            Fast::Write(Message::Text(p.frame.clone()))
        } else if p.seq < next {
            Fast::Skip
        } else {
            Fast::Slow
        }
    }

    /// Writes `msgs` in order without flushing, after any batch the general path
    /// left pending; gives up like [`Session::write`] does (a stop or slow signal,
    /// or the write deadline).
    pub(super) async fn write_many(&mut self, msgs: Vec<Message>) -> Result<(), SessionEnd> {
        self.emit_batch().await?;
        for m in &msgs {
            self.tally.add(m);
        }
        let deadline = self.write_deadline();
        let mailbox = &self.info.mailbox;
        let socket = &mut self.socket;
        let mut msgs = msgs.into_iter().peekable();
        let feed = poll_fn(|cx| {
            if let Some(s) = mailbox.poll_signal(cx, &WHILE_WRITING) {
                return Poll::Ready(Err(signal_end(s)));
            }
            while msgs.peek().is_some() {
                match Pin::new(&mut *socket).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(SessionEnd::ClientGone)),
                    Poll::Pending => return Poll::Pending,
                }
                if let Some(m) = msgs.next() {
                    if Pin::new(&mut *socket).start_send(m).is_err() {
                        return Poll::Ready(Err(SessionEnd::ClientGone));
                    }
                }
            }
            Poll::Ready(Ok(()))
        });
        under_deadline(feed, deadline).await
    }

    /// A burst from the mailbox, in order: runs of common-case publications go out
    /// in one write each, the rest one by one through the general path. Returns the
    /// publish time of the oldest live delivery, for the batch's latency sample.
    pub(super) async fn deliver_burst(
        &mut self,
        batch: Vec<Pub>,
    ) -> Result<Option<i64>, SessionEnd> {
        let mut oldest: Option<i64> = None;
        let mut note = |ms: i64| oldest = Some(oldest.map_or(ms, |o: i64| o.min(ms)));
        let mut run: Vec<Message> = Vec::with_capacity(batch.len());
        for p in batch {
            match self.fast(&p) {
                Fast::Write(m) => {
                    run.push(m);
                    note(p.published_ms);
                }
                Fast::Skip => {}
                Fast::Slow => {
                    if !run.is_empty() {
                        self.write_many(std::mem::take(&mut run)).await?;
                    }
                    if let Some(ms) = self.on_publication(p).await? {
                        note(ms);
                    }
                }
            }
        }
        if !run.is_empty() {
            self.write_many(run).await?;
        }
        Ok(oldest)
    }
}
