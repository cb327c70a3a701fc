//! The session task: the only owner of its socket.
//!
//! One `select!` loop over: the node's stop signal, the hub's slow-consumer flag, the
//! outbox of publications, frames from the client, the heartbeat tick and the idle
//! deadline. Generic over any `Sink + Stream` of WebSocket messages, so unit tests
//! drive it with channels and paused time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use sluice_common::{
    protocol::{ClientFrame, FrameType, ServerFrame, SubscribeEntry},
    ErrorCode, Topic, PROTOCOL_VERSION,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{delivery::SubState, SessionEnd};
use crate::{
    broker::Pub,
    hub::{SessionHandle, SessionId},
    state::{AppState, SessionInfo},
};

/// How long a closing session waits for its close frame to reach the client.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
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
            initial: params.initial,
        }
    }

    /// Runs the session to its end, then leaves every topic. Returns why it ended.
    pub async fn run(mut self) -> SessionEnd {
        let end = match self.serve().await {
            Ok(()) => SessionEnd::ClientGone,
            Err(end) => end,
        };
        if let Some((code, reason)) = end.close() {
            if matches!(end, SessionEnd::SlowConsumer(_)) {
                self.state.metrics.slow_consumer_disconnects.increment(1);
            }
            let frame = Message::Close(Some(CloseFrame {
                code: code.code(),
                reason: reason.into(),
            }));
            // Best effort: a stalled client may never take it.
            let _ = tokio::time::timeout(CLOSE_LINGER, self.socket.send(frame)).await;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, self.socket.close()).await;
        self.leave_all();
        debug!(session = self.id, reason = ?end, "session ended");
        end
    }

    async fn serve(&mut self) -> Result<(), SessionEnd> {
        let cfg = &self.state.config;
        let (hb, timeout) = (cfg.heartbeat_interval, cfg.connection_timeout);
        let connected = ServerFrame::new(FrameType::Connected).with_payload(json!({
            "connection_id": self.info.connection_id,
            "node_id": cfg.node_id,
            "heartbeat_interval_ms": hb.as_millis() as u64,
            "protocol": PROTOCOL_VERSION,
        }));
        self.send_frame(&connected).await?;
        for entry in std::mem::take(&mut self.initial) {
            self.subscribe(entry, None).await?;
        }
        self.flush().await?;

        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        let idle = tokio::time::sleep(timeout);
        tokio::pin!(idle);
        let mut conflate = tokio::time::interval(super::delivery::CONFLATE_INTERVAL);
        let stop = self.info.stop.clone();
        let slow = self.handle.slow.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(SessionEnd::Draining),
                _ = slow.cancelled() => return Err(SessionEnd::SlowConsumer("outbox full")),
                Some(p) = self.outbox.recv() => {
                    self.on_publication(p).await?;
                    // Write what else is already queued, then flush once.
                    for _ in 1..WRITE_BURST {
                        match self.outbox.try_recv() {
                            Ok(p) => self.on_publication(p).await?,
                            Err(_) => break,
                        }
                    }
                    self.flush().await?;
                }
                frame = self.socket.next() => {
                    idle.as_mut().reset(Instant::now() + timeout);
                    self.info.touch();
                    match frame {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(read_error(&e)),
                        Some(Ok(msg)) => self.on_message(msg).await?,
                    }
                    self.flush().await?;
                }
                _ = heartbeat.tick() => {
                    self.send_frame(&ServerFrame::new(FrameType::Heartbeat)).await?;
                    self.write(Message::Ping(Default::default())).await?;
                    self.flush().await?;
                }
                _ = conflate.tick(), if self.background => {
                    self.flush_conflated().await?;
                    self.flush().await?;
                }
                _ = &mut idle => return Err(SessionEnd::IdleTimeout),
            }
        }
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), SessionEnd> {
        self.state.metrics.messages_received.increment(1);
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
                for entry in sub.entries {
                    self.subscribe(entry, sub.correlation_id.clone()).await?;
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
            ClientFrame::Refresh { correlation_id, .. } => {
                // Tokens are verified at the door only when auth is on; with auth off a
                // refresh has nothing to replace.
                let ack = ServerFrame::new(FrameType::Ack)
                    .with_correlation_id(correlation_id)
                    .with_payload(json!({ "refreshed": true }));
                self.send_frame(&ack).await
            }
        }
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
        self.write(Message::Text(frame.to_json().into())).await
    }

    /// Queues one publication frame for the socket and records its latency.
    pub(super) async fn write_pub(&mut self, p: &Pub) -> Result<(), SessionEnd> {
        self.write_text(p.frame.clone()).await?;
        let lag_ms = sluice_common::time_fmt::now_ms() - p.published_ms;
        self.state
            .metrics
            .delivery_latency
            .record(lag_ms.max(0) as f64 / 1000.0);
        Ok(())
    }

    async fn write_text(&mut self, text: Utf8Bytes) -> Result<(), SessionEnd> {
        self.write(Message::Text(text)).await
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
