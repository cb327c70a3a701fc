//! The session task: the only owner of its socket.
//!
//! One `select!` loop over: the node's stop signal, the hub's slow-consumer flag, the
//! outbox of publications, frames from the client, the heartbeat tick and the idle
//! deadline. Generic over any `Sink + Stream` of WebSocket messages, so unit tests
//! drive it with channels and paused time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use sluice_common::{
    protocol::{ClientFrame, FrameType, ServerFrame, SubscribeEntry},
    ErrorCode, Topic, PROTOCOL_VERSION,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    delivery::SubState,
    limits::{Limits, Verdict},
    outbound::{Batcher, FrameOptions},
    SessionEnd,
};
use crate::{
    auth::Identity,
    broker::Pub,
    hub::{SessionHandle, SessionId},
    state::{AppState, SessionInfo},
};

/// How long a closing session waits for its close frame to reach the client.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// How long it then waits for the client's answering close.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// How many queued publications are written before one flush.
const WRITE_BURST: usize = 64;

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
    pub(super) info: Arc<SessionInfo>,
    pub(super) state: Arc<AppState>,
    pub(super) socket: S,
    pub(super) outbox: mpsc::Receiver<Pub>,
    pub(super) handle: SessionHandle,
    pub(super) subs: HashMap<Topic, SubState>,
    /// Background mode: deliver at most the newest message per topic per interval.
    pub(super) background: bool,
    pub(super) identity: Option<Identity>,
    pub(super) limits: Limits,
    batcher: Batcher,
    initial: Vec<SubscribeEntry>,
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<S, E> Session<S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    pub fn new(state: Arc<AppState>, socket: S, params: SessionParams) -> Self {
        let (tx, rx) = mpsc::channel(state.config.queue_size);
        let limits = Limits::new(&state.config);
        Session {
            id: params.id,
            info: params.info,
            state,
            socket,
            outbox: rx,
            handle: SessionHandle {
                outbox: tx,
                slow: CancellationToken::new(),
            },
            subs: HashMap::new(),
            background: params.background,
            identity: params.identity,
            limits,
            batcher: Batcher::default(),
            initial: params.initial,
        }
    }

    /// Runs the session to its end, then leaves every topic. Returns why it ended.
    pub async fn run(mut self) -> SessionEnd {
        let end = match self.serve().await {
            Ok(()) => SessionEnd::ClientGone,
            Err(end) => end,
        };
        // Leave the hub first: nothing more is queued for a session that is closing.
        self.leave_all();
        if matches!(end, SessionEnd::SlowConsumer(_)) {
            self.state.metrics.slow_consumer_disconnects.increment(1);
        }
        if let Some((code, reason)) = end.close() {
            // One deadline for every closing step: a stalled client never holds the
            // session longer than CLOSE_LINGER.
            let deadline = Instant::now() + CLOSE_LINGER;
            let mut sent = true;
            if end == SessionEnd::TooLarge {
                let limit = self.state.config.max_message_bytes;
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
        if self.state.is_draining() {
            // Upgraded after the drain took its list of sessions.
            return Err(SessionEnd::Draining);
        }
        let cfg = &self.state.config;
        let (hb, timeout) = (cfg.heartbeat_interval, cfg.connection_timeout);
        let connected = ServerFrame::new(FrameType::Connected).with_payload(json!({
            "connection_id": self.info.connection_id,
            "node_id": cfg.node_id,
            "heartbeat_interval_ms": hb.as_millis() as u64,
            "protocol": PROTOCOL_VERSION,
        }));
        Box::pin(self.send_frame(&connected)).await?;
        for entry in std::mem::take(&mut self.initial) {
            Box::pin(self.subscribe(entry, FrameOptions::default(), None)).await?;
        }
        self.flush().await?;

        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        let idle = tokio::time::sleep(timeout);
        tokio::pin!(idle);
        let expiry = tokio::time::sleep(self.token_remaining());
        tokio::pin!(expiry);
        let mut conflate = tokio::time::interval(self.state.config.conflate);
        let stop = self.info.stop.clone();
        let slow = self.handle.slow.clone();
        let killed = self.state.killed.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(SessionEnd::Draining),
                _ = killed.cancelled() => return Err(SessionEnd::Killed),
                _ = slow.cancelled() => return Err(SessionEnd::SlowConsumer("outbox full")),
                // The heavy handlers run boxed: their state lives on the heap only
                // while they run, so an idle session's future stays small.
                Some(p) = self.outbox.recv() => Box::pin(self.on_burst(p)).await?,
                frame = self.socket.next() => {
                    idle.as_mut().reset(Instant::now() + timeout);
                    self.info.touch();
                    match frame {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(read_error(&e)),
                        Some(Ok(msg)) => Box::pin(self.on_message(msg)).await?,
                    }
                    self.flush().await?;
                }
                _ = heartbeat.tick() => Box::pin(self.heartbeat()).await?,
                _ = conflate.tick(), if self.background => {
                    Box::pin(self.flush_conflated()).await?;
                    self.flush().await?;
                }
                _ = &mut idle => return Err(SessionEnd::IdleTimeout),
                _ = &mut expiry, if self.identity.is_some() => {
                    // A refresh may have extended the token since the timer was set.
                    let left = self.token_remaining();
                    if left.is_zero() {
                        let f = ServerFrame::error(ErrorCode::TokenExpired, "token expired; refresh it or reconnect");
                        Box::pin(self.send_frame(&f)).await?;
                        return Err(SessionEnd::Policy("token expired".into()));
                    }
                    expiry.as_mut().reset(Instant::now() + left);
                }
            }
        }
    }

    /// Time until the session's token expires; effectively never without one.
    fn token_remaining(&self) -> Duration {
        const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
        // The same leeway as at the door, so a token admitted within it is not
        // declared expired the moment the session starts.
        let leeway = self.state.config.jwt_leeway;
        self.identity.as_ref().map_or(FOREVER, |id| {
            Duration::from_secs((id.expires_at + leeway.as_secs()).saturating_sub(unix_now()))
        })
    }

    /// A `heartbeat` frame plus a WebSocket ping, so both the application and any
    /// proxy in between see traffic.
    async fn heartbeat(&mut self) -> Result<(), SessionEnd> {
        self.send_frame(&ServerFrame::new(FrameType::Heartbeat))
            .await?;
        self.write(Message::Ping(Default::default())).await?;
        self.flush().await
    }

    /// A publication from the outbox, then whatever else is queued, then one flush.
    async fn on_burst(&mut self, first: Pub) -> Result<(), SessionEnd> {
        self.on_publication(first).await?;
        for _ in 1..WRITE_BURST {
            match self.outbox.try_recv() {
                Ok(p) => self.on_publication(p).await?,
                Err(_) => break,
            }
        }
        self.flush().await
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), SessionEnd> {
        self.state.metrics.messages_received.increment(1);
        // Every data frame, text or binary, spends from the connection's budget.
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            match self.limits.message() {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    self.state.metrics.rate_limited.increment(1);
                    let cfg = &self.state.config;
                    let details = json!({ "limit": format!("{} per second, burst {}", cfg.message_rate, cfg.message_burst) });
                    return self
                        .send_error(
                            ErrorCode::RateLimitExceeded,
                            "Rate limit exceeded",
                            details,
                            None,
                        )
                        .await;
                }
                Verdict::Abuse => {
                    self.state.metrics.rate_limited.increment(1);
                    return Err(SessionEnd::RateLimited);
                }
            }
        }
        match msg {
            Message::Text(text) => {
                if text.len() > self.state.config.max_message_bytes {
                    return Err(SessionEnd::TooLarge);
                }
                match ClientFrame::parse(text.as_str()) {
                    Ok(frame) => self.on_frame(frame).await,
                    Err(e) => self.send_frame(&e.to_frame()).await,
                }
            }
            Message::Binary(b) if b.len() > self.state.config.max_message_bytes => {
                Err(SessionEnd::TooLarge)
            }
            Message::Binary(_) => {
                let f = ServerFrame::error(
                    ErrorCode::InvalidMessage,
                    "binary frames are not accepted; send JSON text",
                );
                self.send_frame(&f).await
            }
            Message::Close(_) => Err(SessionEnd::ClientGone),
            // Pings are answered by the WebSocket layer; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), SessionEnd> {
        match frame {
            ClientFrame::Subscribe(sub) => {
                let opts = FrameOptions {
                    batch: sub.batch_size.map_or(1, |b| b as usize),
                    compress: sub.compression,
                };
                for entry in sub.entries {
                    self.subscribe(entry, opts, sub.correlation_id.clone())
                        .await?;
                }
                Ok(())
            }
            ClientFrame::Unsubscribe {
                topics,
                correlation_id,
            } => {
                for filter in topics {
                    let name = filter.to_string();
                    let was = match filter.exact() {
                        Ok(topic) => self.unsubscribe(&topic),
                        Err(_) => false,
                    };
                    let ack = ServerFrame::new(FrameType::Ack)
                        .with_topic(&name)
                        .with_correlation_id(correlation_id.clone())
                        .with_payload(json!({ "unsubscribed": true, "was_subscribed": was }));
                    self.send_frame(&ack).await?;
                }
                self.publish_subscriptions();
                Ok(())
            }
            ClientFrame::Ping { correlation_id, ts } => {
                let mut pong =
                    ServerFrame::new(FrameType::Pong).with_correlation_id(correlation_id);
                if let Some(ts) = ts {
                    pong.payload = Some(json!({ "ts": ts }));
                }
                self.send_frame(&pong).await
            }
            ClientFrame::BackgroundMode {
                enabled,
                correlation_id,
            } => {
                let was = self.background;
                self.background = enabled;
                if was && !enabled {
                    self.leave_background().await?;
                }
                let ack = ServerFrame::new(FrameType::Ack)
                    .with_correlation_id(correlation_id)
                    .with_payload(json!({ "background_mode": enabled }));
                self.send_frame(&ack).await
            }
            ClientFrame::Refresh {
                token,
                correlation_id,
            } => self.refresh(&token, correlation_id).await,
        }
    }

    /// Replaces the session's token with a fresh one for the same `sub`. A bad token
    /// ends the session (1008); with auth off there is nothing to replace.
    async fn refresh(
        &mut self,
        token: &str,
        correlation_id: Option<Value>,
    ) -> Result<(), SessionEnd> {
        if let Some(current) = &self.identity {
            let verdict = match self.state.auth.verify(token) {
                Ok(new) if new.sub == current.sub => Ok(new),
                Ok(_) => Err((
                    ErrorCode::Forbidden,
                    "refresh token is for another user".to_owned(),
                )),
                Err(e) => Err((e.code(), e.to_string())),
            };
            match verdict {
                Ok(new) => self.identity = Some(new),
                Err((code, msg)) => {
                    self.state.metrics.auth_failures.increment(1);
                    let f = ServerFrame::error(code, &msg).with_correlation_id(correlation_id);
                    self.send_frame(&f).await?;
                    return Err(SessionEnd::Policy(format!("refresh refused: {msg}")));
                }
            }
        }
        let expires = self.identity.as_ref().map(|i| i.expires_at);
        let ack = ServerFrame::new(FrameType::Ack)
            .with_correlation_id(correlation_id)
            .with_payload(json!({ "refreshed": true, "expires_at": expires }));
        self.send_frame(&ack).await
    }

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
    async fn emit_batch(&mut self) -> Result<(), SessionEnd> {
        match self.batcher.take() {
            Some(m) => self.write(m).await,
            None => Ok(()),
        }
    }

    /// Writes without flushing; gives up if the session is told to stop meanwhile.
    async fn write(&mut self, msg: Message) -> Result<(), SessionEnd> {
        let stop = self.info.stop.clone();
        let slow = self.handle.slow.clone();
        tokio::select! {
            r = self.socket.feed(msg) => r.map_err(|_| SessionEnd::ClientGone)?,
            _ = stop.cancelled() => return Err(SessionEnd::Draining),
            _ = slow.cancelled() => return Err(SessionEnd::SlowConsumer("outbox full")),
        }
        self.state.metrics.frames_sent(1);
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> Result<(), SessionEnd> {
        self.emit_batch().await?;
        let stop = self.info.stop.clone();
        let slow = self.handle.slow.clone();
        tokio::select! {
            r = self.socket.flush() => r.map_err(|_| SessionEnd::ClientGone),
            _ = stop.cancelled() => Err(SessionEnd::Draining),
            _ = slow.cancelled() => Err(SessionEnd::SlowConsumer("outbox full")),
        }
    }

    /// Mirrors the subscription list into the registry for `/connections`.
    pub(super) fn publish_subscriptions(&self) {
        self.info
            .set_subscriptions(self.subs.keys().cloned().collect());
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Maps a socket read error to how the session ends: an oversized frame is a 1009,
/// anything else means the connection is gone.
fn read_error<E: std::error::Error + 'static>(e: &E) -> SessionEnd {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return SessionEnd::TooLarge;
        }
        cur = err.source();
    }
    SessionEnd::ClientGone
}
