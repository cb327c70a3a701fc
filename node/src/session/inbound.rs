//! Frames from the client: the frame budget (every data frame and WebSocket ping
//! spends from it), the size limit, parsing, and what each client frame does.

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use serde_json::json;
use sluice_common::{
    protocol::{ClientFrame, FrameType, ServerFrame},
    ErrorCode,
};

use tracing::debug;

use super::{actor::Session, limits::Verdict, outbound::FrameOptions, SessionEnd};

impl<S, E> Session<S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    pub(super) async fn on_message(&mut self, msg: Message) -> Result<(), SessionEnd> {
        self.ctx.metrics.messages_received.increment(1);
        // Every data frame, text or binary, and every WebSocket ping spends from the
        // connection's budget (SPEC §3): the WebSocket layer answers each ping with a
        // pong, so an uncounted ping flood costs the node a write per frame for free.
        // Pongs answer our own heartbeat pings and are not counted.
        if matches!(
            msg,
            Message::Text(_) | Message::Binary(_) | Message::Ping(_)
        ) {
            match self.limits.message(&self.ctx.config) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    self.ctx.metrics.rate_limited.increment(1);
                    let cfg = &self.ctx.config;
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
                    self.ctx.metrics.rate_limited.increment(1);
                    return Err(SessionEnd::RateLimited);
                }
            }
        }
        match msg {
            Message::Text(text) => {
                if text.len() > self.ctx.config.max_message_bytes {
                    return Err(SessionEnd::TooLarge);
                }
                match ClientFrame::parse_bounded(text.as_str(), self.ctx.config.max_subscriptions) {
                    Ok(frame) => self.on_frame(frame).await,
                    Err(e) => {
                        debug!(session = self.id, code = e.code.as_str(), error = %e.message, "bad client frame");
                        self.send_frame(&e.to_frame()).await?;
                        self.count_strikes(e.refused_entries)
                    }
                }
            }
            Message::Binary(b) if b.len() > self.ctx.config.max_message_bytes => {
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
                    batch: sub.batch_size.unwrap_or(1),
                    compress: sub.compression,
                };
                self.subscribe_frame(sub.entries, opts, sub.correlation_id)
                    .await
            }
            ClientFrame::Unsubscribe {
                topics,
                correlation_id,
            } => {
                for filter in topics {
                    let name = filter.to_string();
                    let was = if filter.is_wildcard() {
                        self.unsubscribe_pattern(&filter)
                    } else {
                        match filter.exact() {
                            Ok(topic) => self.unsubscribe(&topic),
                            Err(_) => false,
                        }
                    };
                    self.ctx.metrics.unsubscribes.increment(u64::from(was));
                    let ack = ServerFrame::new(FrameType::Ack)
                        .with_topic(&name)
                        .with_correlation_id(correlation_id.clone())
                        .with_payload(json!({ "unsubscribed": true, "was_subscribed": was }));
                    self.send_frame(&ack).await?;
                }
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
}
