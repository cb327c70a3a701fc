//! Wildcard subscriptions of a session: `prefix.*` and `prefix.>`, live only.
//!
//! The hub puts the session on every topic a held wildcard matches, once per
//! publication whatever number of its subscriptions want the topic; here each
//! matching subscription delivers its own copy (a concrete subscription of the
//! same topic delivers another, by its own rules in [`super::delivery`]).
//!
//! A wildcard has no snapshot, no history and no resume: it delivers what is
//! published after its ack. Per topic it delivers in seq order and never a seq
//! twice: it remembers the last (epoch, seq) it sent per topic. In background mode
//! it conflates per topic like a concrete subscription (an alert goes out at once,
//! after its topic's newest pending message); leaving background mode sends each
//! topic's newest pending message (a wildcard does not read history to fill in).

use std::{collections::HashMap, sync::Arc};

use serde_json::json;
use sluice_common::{
    protocol::{FrameType, ServerFrame},
    ErrorCode, Topic, TopicFilter,
};

use super::{actor::Session, outbound::FrameOptions, subscribe::Refusal, SessionEnd};
use crate::{config::TopicClass, hub::JoinError, publication::Pub};

/// One held wildcard.
#[derive(Debug)]
pub(crate) struct PatternSub {
    filter: TopicFilter,
    opts: FrameOptions,
    /// Per topic, the epoch and seq last delivered.
    last: HashMap<Topic, (Arc<str>, u64)>,
    /// Background mode: per topic, the newest message not yet delivered.
    pending: HashMap<Topic, Pub>,
}

/// A session's wildcards; boxed in the session, since most hold none.
pub(crate) type Patterns = Option<Box<Vec<PatternSub>>>;

impl PatternSub {
    /// A held wildcard with default frames that delivered nothing yet (the
    /// session tests hold one without the hub's join).
    #[cfg(test)]
    pub(super) fn new_for_tests(filter: TopicFilter) -> Self {
        PatternSub {
            filter,
            opts: FrameOptions::default(),
            last: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Whether `p` is new to this subscription (not a seq it delivered already).
    fn is_new(&self, p: &Pub) -> bool {
        match self.last.get(&p.topic) {
            Some((epoch, seq)) => **epoch != *p.epoch || p.seq > *seq,
            None => true,
        }
    }
}

impl<S, E> Session<S>
where
    S: futures_util::Sink<axum::extract::ws::Message, Error = E>
        + futures_util::Stream<Item = Result<axum::extract::ws::Message, E>>
        + Unpin
        + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    pub(super) fn pattern_count(&self) -> usize {
        self.patterns.as_ref().map_or(0, |p| p.len())
    }

    pub(super) fn holds_pattern(&self, filter: &TopicFilter) -> bool {
        self.patterns
            .as_ref()
            .is_some_and(|ps| ps.iter().any(|p| p.filter == *filter))
    }

    /// Subscribes a wildcard: permission, rate, room, then the hub's join (every
    /// existing matching topic followed), then the ack. A refused entry is returned.
    pub(super) async fn subscribe_pattern(
        &mut self,
        filter: TopicFilter,
        opts: FrameOptions,
        correlation_id: Option<serde_json::Value>,
    ) -> Result<Option<Refusal>, SessionEnd> {
        let name = filter.to_string();
        if !self.ctx.broker.discovers_topics() {
            let msg = "wildcard subscriptions are not supported with this broker yet";
            return Ok(Some(
                Refusal::new(ErrorCode::InvalidTopic, msg, &name).without_strike(),
            ));
        }
        if !crate::auth::may_read_filter(self.identity.as_deref(), &filter) {
            let msg = "a wildcard needs a token that may read every topic it can match";
            return Ok(Some(Refusal::new(ErrorCode::Forbidden, msg, &name)));
        }
        let class = TopicClass::of(filter.base().as_str());
        if !self.limits.subscribe(class, &self.ctx.config) {
            let (burst, per_minute) = self.ctx.config.subscribe_limits.get(class);
            return Ok(Some(
                Refusal::new(ErrorCode::RateLimitExceeded, "Rate limit exceeded", &name)
                    .with("limit", json!(format!("{per_minute} per minute")))
                    .with("burst", json!(burst)),
            ));
        }
        let already = self.holds_pattern(&filter);
        let limit = self.ctx.config.max_subscriptions;
        if !already && self.subs.len() + self.pattern_count() >= limit {
            let msg = "too many subscriptions on this connection";
            return Ok(Some(
                Refusal::new(ErrorCode::TooManySubscriptions, msg, &name)
                    .with("limit", json!(limit)),
            ));
        }
        if !already {
            let mailbox = self.info.mailbox.clone();
            match self.ctx.hub.join_filter(&filter, self.id, mailbox).await {
                Ok(_) => {}
                Err(JoinError::TopicLimit) => {
                    let msg = "this node cannot follow every topic the wildcard matches \
                               (SLUICE_MAX_TOPICS)";
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
            }
            self.patterns.get_or_insert_default().push(PatternSub {
                filter: filter.clone(),
                opts,
                last: HashMap::new(),
                pending: HashMap::new(),
            });
            self.ctx.metrics.subscribes.increment(1);
        } else if let Some(p) = self
            .patterns
            .as_mut()
            .and_then(|ps| ps.iter_mut().find(|p| p.filter == filter))
        {
            p.opts = opts;
        }
        let mut payload = json!({ "subscribed": true, "wildcard": true });
        if already {
            payload["already_subscribed"] = json!(true);
        }
        let ack = ServerFrame::new(FrameType::Ack)
            .with_topic(&name)
            .with_correlation_id(correlation_id)
            .with_payload(payload);
        self.send_frame(&ack).await?;
        Ok(None)
    }

    /// Stops a wildcard; returns whether it was held.
    pub(super) fn unsubscribe_pattern(&mut self, filter: &TopicFilter) -> bool {
        let Some(ps) = self.patterns.as_mut() else {
            return false;
        };
        let Some(i) = ps.iter().position(|p| p.filter == *filter) else {
            return false;
        };
        ps.swap_remove(i);
        if ps.is_empty() {
            self.patterns = None;
        }
        self.ctx.hub.leave_filter(filter, self.id);
        true
    }

    /// Every held wildcard, for the session's end and for `refresh`.
    pub(super) fn pattern_filters(&self) -> Vec<TopicFilter> {
        self.patterns
            .iter()
            .flat_map(|ps| ps.iter())
            .map(|p| p.filter.clone())
            .collect()
    }

    /// Hands `p` to every held wildcard matching its topic. Returns whether one
    /// delivered it now.
    pub(super) async fn deliver_to_patterns(&mut self, p: &Pub) -> Result<bool, SessionEnd> {
        let background = self.background;
        let mut now: Vec<(Option<Pub>, FrameOptions)> = Vec::new();
        let Some(ps) = self.patterns.as_mut() else {
            return Ok(false);
        };
        for sub in ps.iter_mut() {
            if !sub.filter.matches(p.topic.as_str()) || !sub.is_new(p) {
                continue;
            }
            if background && p.kind != FrameType::Alert {
                if sub.pending.get(&p.topic).is_none_or(|q| q.seq < p.seq) {
                    sub.pending.insert(p.topic.clone(), p.clone());
                }
                continue;
            }
            // An alert in background mode goes after its topic's newest pending one.
            let before = sub
                .pending
                .remove(&p.topic)
                .filter(|q| q.epoch == p.epoch && q.seq < p.seq);
            sub.last.insert(p.topic.clone(), (p.epoch.clone(), p.seq));
            now.push((before, sub.opts));
        }
        let delivered = !now.is_empty();
        for (before, opts) in now {
            if let Some(q) = before {
                self.write_pub(&q, opts).await?;
            }
            self.write_pub(p, opts).await?;
        }
        Ok(delivered)
    }

    /// Background tick, or leaving background mode: each wildcard's newest pending
    /// message per topic.
    pub(super) async fn flush_pattern_pending(&mut self) -> Result<(), SessionEnd> {
        let mut out: Vec<(Pub, FrameOptions)> = Vec::new();
        for sub in self.patterns.iter_mut().flat_map(|ps| ps.iter_mut()) {
            for (topic, p) in sub.pending.drain() {
                sub.last.insert(topic, (p.epoch.clone(), p.seq));
                out.push((p, sub.opts));
            }
        }
        for (p, opts) in out {
            self.write_pub(&p, opts).await?;
        }
        Ok(())
    }
}
