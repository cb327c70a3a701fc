//! The session task: the only owner of its socket.
//!
//! One loop that waits, in this order of precedence, for: a signal in the session's
//! mailbox (drain, kill, slow consumer), a queued publication, a frame from the
//! client, and the session's timers (heartbeat, background-mode conflation, idle
//! deadline, token expiry). Generic over any `Sink + Stream` of WebSocket messages,
//! so unit tests drive it with channels and paused time.
//!
//! Memory: a waiting session is its socket plus this loop's state, so the state kept
//! across the wait is small: one timer for every deadline, no per-source futures, and
//! every handler runs boxed (its state lives on the heap only while it runs).

use std::{
    future::{poll_fn, Future},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{future::BoxFuture, Sink, SinkExt, Stream, StreamExt};
use serde_json::json;
use sluice_common::{
    protocol::{FrameType, ServerFrame, SubscribeEntry},
    ErrorCode, PROTOCOL_VERSION,
};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::{
    context::SessionContext,
    deadlines::{deadline_in, Deadlines, Due},
    delivery::Subs,
    limits::Limits,
    outbound::{Batcher, FrameOptions},
    registry::{SessionId, SessionInfo},
    writer::Tally,
    SessionEnd,
};
use crate::{
    auth::Identity,
    hub::Signal,
    publication::Pub,
    ws::{DecodeError, WsError},
};

/// How long a closing session waits for its close frame to reach the client.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// How long it then waits for the client's answering close.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// How many queued publications are written before one flush.
const WRITE_BURST: usize = 64;
/// How many times in a row a session with deltas to write steps back for alerts
/// of other sessions (once per alert arrival): a bound on what a stream of alerts
/// costs the deltas, a few passes of the run queue.
const MAX_DEFERS: u8 = 3;
/// The signals that interrupt a write or a flush.
pub(super) const WHILE_WRITING: [Signal; 2] = [Signal::Stop, Signal::Slow];

/// What a session is started with.
#[derive(Debug)]
pub struct SessionParams {
    pub id: SessionId,
    pub info: Arc<SessionInfo>,
    /// Subscriptions made on connect (alias routes such as `/ws/market/{isin}`).
    pub initial: Vec<SubscribeEntry>,
    /// Starts in background (conflated) mode.
    pub background: bool,
    /// The verified token's identity; `None` when auth is off.
    pub identity: Option<Identity>,
}

pub struct Session<S> {
    pub(super) id: SessionId,
    /// Shared with the registry and the hub; holds the session's mailbox.
    pub(super) info: Arc<SessionInfo>,
    pub(super) ctx: Arc<SessionContext>,
    pub(super) socket: S,
    pub(super) subs: Subs,
    /// Wildcard subscriptions ([`super::wildcard`]).
    pub(super) patterns: super::wildcard::Patterns,
    /// Background mode: deliver at most the newest message per topic per interval.
    pub(super) background: bool,
    /// Boxed: read rarely, and an idle session's future carries 8 bytes for it.
    pub(super) identity: Option<Box<Identity>>,
    pub(super) limits: Limits,
    pub(super) batcher: Batcher,
    /// Frames written since the last flush, for the metrics.
    pub(super) tally: Tally,
    initial: Vec<SubscribeEntry>,
    /// The alert arrival this session last stepped back for, and how many times it
    /// has since its last drain ([`crate::hub::Mailbox::defer_to_alerts`]).
    deferred_for: u32,
    defers: u8,
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        // Nothing more is queued for a session that is gone.
        self.info.mailbox.close();
        // Frames written after the last flush (the close frame) still count.
        self.tally.account(&self.ctx.metrics);
    }
}

/// What the session loop does after a wake-up.
enum Step<'a> {
    Continue,
    Run(BoxFuture<'a, Result<(), SessionEnd>>),
    End(Result<(), SessionEnd>),
}

/// What woke the session loop.
enum Wake<E> {
    Signal(Signal),
    /// Publications drained from the mailbox in one go, and how many were queued.
    Batch(Vec<Pub>, usize),
    Frame(Option<Result<Message, E>>),
    Due(Due),
}

pub(super) fn signal_end(s: Signal) -> SessionEnd {
    match s {
        Signal::Stop => SessionEnd::Draining,
        Signal::Killed => SessionEnd::Killed,
        Signal::Slow => SessionEnd::SlowConsumer("outbox full"),
    }
}

impl<S, E> Session<S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    pub fn new(ctx: Arc<SessionContext>, socket: S, params: SessionParams) -> Self {
        Session {
            id: params.id,
            info: params.info,
            ctx,
            socket,
            subs: Subs::default(),
            patterns: None,
            background: params.background,
            identity: params.identity.map(Box::new),
            limits: Limits::new(),
            batcher: Batcher::default(),
            tally: Tally::default(),
            initial: params.initial,
            deferred_for: 0,
            defers: 0,
        }
    }

    /// Runs the session to its end, then leaves every topic. Returns why it ended.
    ///
    /// Not an `async fn`: one moves `self` into a second slot of its future, storing
    /// the whole session twice (measured: 1976 bytes instead of 1280 at the time).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its by-value argument twice"
    )]
    pub fn run(mut self) -> impl Future<Output = SessionEnd> + Send {
        async move {
            let end = match self.serve().await {
                Ok(()) => SessionEnd::ClientGone,
                Err(end) => end,
            };
            // Boxed: the closing steps' state is no part of the idle future.
            let close = Box::pin(self.close(end));
            close.await
        }
    }

    /// Leaves the hub, then says goodbye to the client as `end` requires.
    async fn close(&mut self, end: SessionEnd) -> SessionEnd {
        // Leave the hub first: nothing more is queued for a session that is closing.
        self.leave_all();
        if matches!(end, SessionEnd::SlowConsumer(_)) {
            self.ctx.metrics.slow_consumer_disconnects.increment(1);
        }
        if let Some((code, reason)) = end.close() {
            // One deadline for every closing step: a stalled client never holds the
            // session longer than CLOSE_LINGER.
            let deadline = Instant::now() + CLOSE_LINGER;
            let mut sent = true;
            if end == SessionEnd::TooLarge {
                self.ctx
                    .metrics
                    .error_sent(Some(ErrorCode::MessageTooLarge));
                let limit = self.ctx.config.max_message_bytes;
                let f =
                    ServerFrame::error(ErrorCode::MessageTooLarge, "frame exceeds the size limit")
                        .with_details(json!({ "limit_bytes": limit }));
                let msg = Message::Text(f.to_json().into());
                sent = tokio::time::timeout_at(deadline, self.socket.send(msg))
                    .await
                    .is_ok_and(|r| r.is_ok());
            }
            let frame = Message::Close(Some(CloseFrame {
                code: code.code(),
                reason: reason.into(),
            }));
            sent = sent
                && tokio::time::timeout_at(deadline, self.socket.send(frame))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if sent {
                self.await_client_close(deadline.min(Instant::now() + CLOSE_REPLY_WAIT))
                    .await;
            }
        } else if end != SessionEnd::Killed {
            let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, self.socket.close()).await;
        }
        debug!(session = self.id, reason = ?end, "session ended");
        end
    }

    /// After our close frame: give the client a moment to read it and answer before
    /// the socket is dropped. Dropping a socket with unread input (an oversized frame
    /// left in the kernel) makes Linux send a reset, which can destroy the close frame
    /// before the client reads it.
    async fn await_client_close(&mut self, until: Instant) {
        loop {
            match tokio::time::timeout_at(until, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Err(_) => return,
                Ok(Some(Ok(_))) => continue,
                // The stream is over or broken (e.g. it stopped at an oversized frame)
                // while the peer may not have read our close yet: wait out the moment.
                Ok(Some(Err(_))) | Ok(None) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
            }
        }
    }

    async fn serve(&mut self) -> Result<(), SessionEnd> {
        if self.ctx.lifecycle.is_draining() {
            // Upgraded after the drain took its list of sessions.
            return Err(SessionEnd::Draining);
        }
        if self.ctx.lifecycle.killed.is_cancelled() {
            // Registered after the kill signalled the open sessions.
            return Err(SessionEnd::Killed);
        }
        let greet = Box::pin(self.greet());
        greet.await?;

        let cfg = &self.ctx.config;
        let now = Instant::now();
        let mut deadlines = Deadlines {
            heartbeat: now + cfg.heartbeat_interval,
            // Background mode flushes at once, then every `conflate`.
            conflate: now,
            idle: now + cfg.connection_timeout,
            expiry: self
                .identity
                .is_some()
                .then(|| deadline_in(self.token_remaining())),
        };
        let timer = tokio::time::sleep_until(deadlines.next(self.background));
        tokio::pin!(timer);
        loop {
            let wake = poll_fn(|cx| self.poll_wake(cx, &deadlines, timer.as_mut())).await;
            let was_background = self.background;
            match self.dispatch(wake, &mut deadlines) {
                Step::Continue => {}
                Step::Run(handler) => handler.await?,
                Step::End(end) => return end,
            }
            if self.background && !was_background {
                // Entering background mode (a `background_mode` frame): the first
                // conflated flush is one period away, not due at once because the
                // deadline still held the session's start (that made it race the
                // first publications).
                deadlines.conflate = Instant::now() + self.ctx.config.conflate;
            }
        }
    }

    /// Acts on what woke the loop. Whatever has to await runs as a boxed handler: its
    /// state lives on the heap only while it runs, so an idle session's future stays
    /// small.
    fn dispatch(&mut self, wake: Wake<E>, deadlines: &mut Deadlines) -> Step<'_> {
        let cfg = &self.ctx.config;
        match wake {
            Wake::Signal(s) => Step::End(Err(signal_end(s))),
            Wake::Batch(batch, depth) => Step::Run(Box::pin(self.on_burst(batch, depth))),
            Wake::Frame(frame) => {
                deadlines.idle = Instant::now() + cfg.connection_timeout;
                self.info.touch();
                match frame {
                    None => Step::End(Ok(())),
                    Some(Err(e)) => Step::End(Err(read_error(&e))),
                    Some(Ok(msg)) => Step::Run(Box::pin(self.on_client_message(msg))),
                }
            }
            Wake::Due(Due::Heartbeat) => {
                // Missed ticks are made up at once, as a tokio `Interval` does.
                deadlines.heartbeat += cfg.heartbeat_interval;
                Step::Run(Box::pin(self.heartbeat()))
            }
            Wake::Due(Due::Conflate) => {
                // One flush for however many periods passed (a busy session, or one
                // that started in the foreground long ago), then the next period.
                let now = Instant::now();
                deadlines.conflate += cfg.conflate;
                if deadlines.conflate <= now {
                    deadlines.conflate = now + cfg.conflate;
                }
                Step::Run(Box::pin(self.on_conflate()))
            }
            Wake::Due(Due::Idle) => Step::End(Err(SessionEnd::IdleTimeout)),
            Wake::Due(Due::Expiry) => {
                // A refresh may have extended the token since the timer was set.
                let left = self.token_remaining();
                if left.is_zero() {
                    return Step::Run(Box::pin(self.token_expired()));
                }
                deadlines.expiry = Some(deadline_in(left));
                Step::Continue
            }
        }
    }

    /// Tells the client its token expired, then ends the session.
    async fn token_expired(&mut self) -> Result<(), SessionEnd> {
        let f = ServerFrame::error(
            ErrorCode::TokenExpired,
            "token expired; refresh it or reconnect",
        );
        self.send_frame(&f).await?;
        Err(SessionEnd::Policy("token expired".into()))
    }

    /// The next thing to handle, in order of precedence: signals, publications,
    /// client frames, deadlines.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        deadlines: &Deadlines,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<Wake<E>> {
        let mailbox = &self.info.mailbox;
        if let Some(s) = mailbox.poll_signal(cx, &Signal::ALL) {
            return Poll::Ready(Wake::Signal(s));
        }
        // `poll_signal` registered the task: a publication queued after this look
        // wakes it, so the mailbox is read without registering twice.
        if self.defers < MAX_DEFERS {
            if let Some(arrival) = mailbox.defer_to_alerts(self.deferred_for) {
                // Another session holds an alert: let the runtime run it first.
                self.deferred_for = arrival;
                self.defers += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let mut batch = Vec::new();
        match mailbox.drain_into(&mut batch, WRITE_BURST) {
            0 => {}
            depth => {
                self.defers = 0;
                return Poll::Ready(Wake::Batch(batch, depth));
            }
        }
        if let Poll::Ready(frame) = self.socket.poll_next_unpin(cx) {
            return Poll::Ready(Wake::Frame(frame));
        }
        let next = deadlines.next(self.background);
        if timer.deadline() != next {
            timer.as_mut().reset(next);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = Instant::now().max(next);
        // `next` is the earliest active deadline, so one is due.
        Poll::Ready(Wake::Due(
            deadlines.due(now, self.background).unwrap_or(Due::Idle),
        ))
    }

    /// The `connected` frame, then the subscriptions made on connect.
    async fn greet(&mut self) -> Result<(), SessionEnd> {
        let cfg = &self.ctx.config;
        let connected = ServerFrame::new(FrameType::Connected).with_payload(json!({
            "connection_id": self.info.connection_id.to_string(),
            "node_id": cfg.node_id,
            "heartbeat_interval_ms": cfg.heartbeat_interval.as_millis() as u64,
            "protocol": PROTOCOL_VERSION,
        }));
        self.send_frame(&connected).await?;
        let initial = std::mem::take(&mut self.initial);
        if !initial.is_empty() {
            self.subscribe_frame(initial, FrameOptions::default(), None)
                .await?;
        }
        self.flush().await
    }

    /// Time until the session's token expires; effectively never without one.
    pub(super) fn token_remaining(&self) -> Duration {
        const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
        // The same leeway as at the door, so a token admitted within it is not
        // declared expired the moment the session starts.
        let leeway = self.ctx.config.jwt_leeway;
        self.identity.as_ref().map_or(FOREVER, |id| {
            Duration::from_secs(
                id.expires_at
                    .saturating_add(leeway.as_secs())
                    .saturating_sub(unix_now()),
            )
        })
    }

    /// A `heartbeat` frame plus a WebSocket ping, so both the application and any
    /// proxy in between see traffic.
    async fn heartbeat(&mut self) -> Result<(), SessionEnd> {
        self.ctx.metrics.heartbeat_sent();
        self.send_frame(&ServerFrame::new(FrameType::Heartbeat))
            .await?;
        self.write(Message::Ping(Default::default())).await?;
        self.flush().await
    }

    /// Background mode tick: the newest pending message of each topic.
    async fn on_conflate(&mut self) -> Result<(), SessionEnd> {
        self.flush_conflated().await?;
        self.flush().await
    }

    /// A frame from the client, then one flush for whatever it caused.
    async fn on_client_message(&mut self, msg: Message) -> Result<(), SessionEnd> {
        self.on_message(msg).await?;
        self.flush().await
    }

    /// A batch of publications from the mailbox, then one flush. The delivery
    /// latency is sampled once per batch: the age of its oldest live delivery.
    ///
    /// The node's own stage (reaching the node to written to the socket) is timed
    /// for every alert and one delta in 8 (by seq, so unbiased), in the foreground
    /// only (background mode holds deltas on purpose).
    async fn on_burst(&mut self, batch: Vec<Pub>, depth: usize) -> Result<(), SessionEnd> {
        self.ctx.metrics.mailbox_depth(depth);
        let timed: Vec<(bool, std::time::Instant)> = if self.background {
            Vec::new()
        } else {
            batch
                .iter()
                .filter(|p| p.kind == FrameType::Alert || p.seq % 8 == 0)
                .map(|p| (p.kind == FrameType::Alert, p.received))
                .collect()
        };
        if let Some(published_ms) = self.deliver_burst(batch).await? {
            let lag_ms = sluice_common::time_fmt::now_ms().saturating_sub(published_ms);
            self.ctx
                .metrics
                .delivery_latency
                .record(lag_ms.max(0) as f64 / 1000.0);
        }
        self.flush().await?;
        let now = std::time::Instant::now();
        for (alert, received) in timed {
            let stage = if alert {
                &self.ctx.metrics.alert_stage
            } else {
                &self.ctx.metrics.delta_stage
            };
            stage.record(now.saturating_duration_since(received).as_secs_f64());
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Maps a socket read error to how the session ends: an oversized message is a
/// 1009, anything else means the connection is gone (a protocol error's 1002 or
/// 1007 was already queued by the socket itself).
fn read_error<E: std::error::Error + 'static>(e: &E) -> SessionEnd {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(DecodeError::TooLarge(_)) = err.downcast_ref::<DecodeError>() {
            return SessionEnd::TooLarge;
        }
        if let Some(WsError::Decode(DecodeError::TooLarge(_))) = err.downcast_ref::<WsError>() {
            return SessionEnd::TooLarge;
        }
        cur = err.source();
    }
    SessionEnd::ClientGone
}
