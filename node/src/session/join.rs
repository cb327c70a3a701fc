//! Joining and leaving a topic: a subscribe entry checked (pattern, permission,
//! rate, room), the hub joined, the head (and, only when it will be sent, the
//! snapshot) read, the ack, then the replay or snapshot `Position::resume` chose;
//! a re-subscribe of a held topic; unsubscribe.

use std::sync::Arc;

use serde_json::json;
use sluice_common::{
    protocol::{FrameType, ServerFrame, SubscribeEntry},
    ErrorCode, Topic,
};

use super::{
    actor::Session,
    delivery::{broker_failure, SubState, PAGE},
    outbound::FrameOptions,
    position::{Position, Resume},
    subscribe::Refusal,
    SessionEnd,
};
use crate::{broker::read_state, config::TopicClass, hub::JoinError, publication::Pub};

impl<S, E> Session<S>
where
    S: futures_util::Sink<axum::extract::ws::Message, Error = E>
        + futures_util::Stream<Item = Result<axum::extract::ws::Message, E>>
        + Unpin
        + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    /// Subscribes one topic: ack, then the replay or snapshot the entry asks for,
    /// then live messages (through the outbox). A refused entry is returned, not
    /// sent: the frame's refusals go out together ([`super::subscribe`]).
    pub(super) async fn subscribe(
        &mut self,
        entry: SubscribeEntry,
        opts: FrameOptions,
        correlation_id: Option<serde_json::Value>,
    ) -> Result<Option<Refusal>, SessionEnd> {
        let name = entry.filter.to_string();
        if entry.filter.is_wildcard() {
            return self
                .subscribe_pattern(entry.filter, opts, correlation_id)
                .await;
        }
        let Ok(topic) = entry.filter.exact() else {
            return Ok(None); // not a wildcard, so exact
        };
        if !crate::auth::may_read(self.identity.as_deref(), &topic) {
            let msg = if self.identity.is_some() {
                "this token may not read this topic"
            } else {
                "private topics need a token naming their owner"
            };
            return Ok(Some(Refusal::new(ErrorCode::Forbidden, msg, &name)));
        }
        let class = TopicClass::of(topic.as_str());
        if !self.limits.subscribe(class, &self.ctx.config) {
            let (burst, per_minute) = self.ctx.config.subscribe_limits.get(class);
            return Ok(Some(
                Refusal::new(ErrorCode::RateLimitExceeded, "Rate limit exceeded", &name)
                    .with("limit", json!(format!("{per_minute} per minute")))
                    .with("burst", json!(burst)),
            ));
        }
        if self.subs.contains_key(&topic) {
            return self.resubscribe(&topic, opts, correlation_id).await;
        }
        let limit = self.ctx.config.max_subscriptions;
        if self.subs.len() + self.pattern_count() >= limit {
            let msg = "too many subscriptions on this connection";
            return Ok(Some(
                Refusal::new(ErrorCode::TooManySubscriptions, msg, &name)
                    .with("limit", json!(limit)),
            ));
        }

        // Join the hub first: once it returns, every publication queues in the
        // mailbox, so whatever the replay below does not cover arrives live.
        let mailbox = self.info.mailbox.clone();
        let topic = match self.ctx.hub.join(&topic, self.id, mailbox).await {
            Ok(shared) => shared,
            Err(JoinError::TopicLimit) => {
                let msg = "this node follows as many topics as it may (SLUICE_MAX_TOPICS)";
                return Ok(Some(
                    Refusal::new(ErrorCode::TooManySubscriptions, msg, &name)
                        .with("node_topic_limit", json!(self.ctx.config.max_topics))
                        .without_strike(),
                ));
            }
            Err(JoinError::Broker(e)) => {
                let msg = format!("could not subscribe: {e}");
                return Ok(Some(Refusal::new(ErrorCode::InternalError, msg, &name)));
            }
        };
        self.subs.insert(
            topic.clone(),
            SubState {
                opts,
                ..SubState::default()
            },
        );
        // A resume reads the head alone; the snapshot is read below only if the
        // resume fails, since only then is it sent. (The hub's join armed live
        // delivery already.)
        let resuming = entry.resume_from_seq.is_some();
        // A resume that fits the position this node's live path has reached needs
        // no Redis read at all (a reconnect storm on a followed topic); one that
        // does not fit is decided on Redis's head, as always.
        let local = resuming
            .then(|| self.ctx.broker.local_head(&topic))
            .flatten()
            .filter(|p| {
                Position::resume(
                    entry.resume_from_seq,
                    entry.epoch.as_deref(),
                    Some(p.epoch.as_str()),
                    p.seq,
                    self.ctx.broker.fork_of(&topic, &p.epoch).as_ref(),
                ) != Resume::Mismatch
            });
        let mut state = match local {
            Some(position) => crate::broker::TopicState {
                position: Some(position),
                snapshot: None,
            },
            None => match read_state(&*self.ctx.broker, &topic, !resuming).await {
                Ok(s) => s,
                Err(e) => {
                    self.unsubscribe(&topic);
                    let msg = format!("could not subscribe: {e}");
                    return Ok(Some(Refusal::new(ErrorCode::InternalError, msg, &name)));
                }
            },
        };
        let mut head = state.position.as_ref().map_or(0, |p| p.seq);
        let mut epoch: Option<Arc<str>> =
            state.position.as_ref().map(|p| Arc::from(p.epoch.as_str()));

        // Resume when the client's position is still in the retained history.
        // A continuation epoch (a Redis takeover) also resumes its parent's
        // positions below the fork; the head read taught the broker its fork.
        let fork = epoch
            .as_deref()
            .and_then(|e| self.ctx.broker.fork_of(&topic, e));
        let plan = Position::resume(
            entry.resume_from_seq,
            entry.epoch.as_deref(),
            epoch.as_deref(),
            head,
            fork.as_ref(),
        );
        let replay: Option<(u64, Vec<Pub>)> = match plan {
            Resume::AtHead => Some((head.saturating_add(1), Vec::new())),
            Resume::Replay(n) => {
                let page = self
                    .ctx
                    .broker
                    .history(&topic, n, PAGE)
                    .await
                    .map_err(broker_failure)?;
                let from = Position::at(epoch.clone(), n - 1);
                let n_ok = from.continues(page.iter().map(|p| (&p.epoch, p.seq)), u64::MAX);
                // History must still start at N; a page that breaks off later is
                // continued by the gap fill below.
                (n_ok > 0).then(|| {
                    let mut page = page;
                    page.truncate(n_ok);
                    (n, page)
                })
            }
            Resume::Mismatch => None,
        };
        if resuming && replay.is_none() {
            // The snapshot will be sent: read it now, with the head it belongs to (one
            // atomic read), and go on from there as a first subscribe does. Whatever
            // was published since the first read is queued in the outbox by seq.
            state = match read_state(&*self.ctx.broker, &topic, true).await {
                Ok(s) => s,
                Err(e) => {
                    self.unsubscribe(&topic);
                    let msg = format!("could not subscribe: {e}");
                    return Ok(Some(Refusal::new(ErrorCode::InternalError, msg, &name)));
                }
            };
            head = state.position.as_ref().map_or(0, |p| p.seq);
            epoch = state.position.as_ref().map(|p| Arc::from(p.epoch.as_str()));
        }

        let ack = ServerFrame::new(FrameType::Ack)
            .with_topic(topic.as_str())
            .with_correlation_id(correlation_id)
            .with_payload(json!({
                "subscribed": true,
                "head_seq": head,
                "epoch": epoch.as_deref(),
                "recovered": replay.is_some(),
            }));
        self.ctx.metrics.subscribes.increment(1);
        self.send_frame(&ack).await?;

        match replay {
            Some((n, page)) => {
                self.set_position(&topic, Position::at(epoch.clone(), n - 1));
                for p in page {
                    self.deliver(&p).await?;
                }
                if !self.fill_gap(&topic, head.saturating_add(1)).await? {
                    return Err(SessionEnd::SlowConsumer("history trimmed during replay"));
                }
            }
            None => match state.snapshot.filter(|s| Some(&s.epoch) == epoch.as_ref()) {
                Some(snap) => {
                    self.set_position(&topic, Position::at(epoch.clone(), 0));
                    self.deliver(&snap).await?;
                    // Deltas after the snapshot; if they were trimmed already, the
                    // snapshot is the best state there is and live continues from head.
                    if !self.fill_gap(&topic, head.saturating_add(1)).await? {
                        self.set_position(&topic, Position::at(epoch.clone(), head));
                    }
                }
                None => self.set_position(&topic, Position::at(epoch.clone(), head)),
            },
        }
        Ok(None)
    }

    /// A subscribe of a topic the connection already holds: the ack, new frame
    /// options, and nothing replayed — the subscription keeps its position, so what
    /// it delivered is never delivered again.
    async fn resubscribe(
        &mut self,
        topic: &Topic,
        opts: FrameOptions,
        correlation_id: Option<serde_json::Value>,
    ) -> Result<Option<Refusal>, SessionEnd> {
        let position = match self.ctx.broker.head(topic).await {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("could not subscribe: {e}");
                return Ok(Some(Refusal::new(
                    ErrorCode::InternalError,
                    msg,
                    topic.as_str(),
                )));
            }
        };
        let head = position.as_ref().map_or(0, |p| p.seq);
        let epoch = position.map(|p| p.epoch);
        let Some(sub) = self.subs.get_mut(topic) else {
            return Ok(None);
        };
        sub.opts = opts;
        // Gap-free as long as the position is in the topic's current history.
        let recovered = sub.pos.epoch().map(|e| &**e) == epoch.as_deref();
        let ack = ServerFrame::new(FrameType::Ack)
            .with_topic(topic.as_str())
            .with_correlation_id(correlation_id)
            .with_payload(json!({
                "subscribed": true,
                "head_seq": head,
                "epoch": epoch,
                "recovered": recovered,
                "already_subscribed": true,
            }));
        self.send_frame(&ack).await?;
        Ok(None)
    }

    fn set_position(&mut self, topic: &Topic, pos: Position) {
        if let Some(sub) = self.subs.get_mut(topic) {
            sub.pos = pos;
        }
    }

    /// Stops delivering `topic`; returns whether it was subscribed.
    pub(super) fn unsubscribe(&mut self, topic: &Topic) -> bool {
        let was = self.subs.remove(topic).is_some();
        // The hub unfollows the topic when this was its last local subscriber.
        self.ctx.hub.leave(topic, self.id);
        was
    }

    pub(super) fn leave_all(&mut self) {
        let topics: Vec<Topic> = self.subs.keys().cloned().collect();
        for t in topics {
            self.unsubscribe(&t);
        }
        for f in self.pattern_filters() {
            self.unsubscribe_pattern(&f);
        }
    }
}
