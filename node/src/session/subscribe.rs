//! A `subscribe` frame as a whole: the connection's room is checked before any
//! entry is worked on, refused entries are gathered into one error per code (the
//! refused topics listed, at most [`LISTED`]), and every refusal the client caused
//! counts as a strike toward 4029.
//!
//! Why gather: a frame of 1000 topics the token may not read used to cost the node
//! 1000 error frames, each echoing the client's `correlation_id`, and no strike — a
//! free amplifier. Now it costs one frame and closes the connection.

use serde_json::{json, Map, Value};
use sluice_common::{
    protocol::{ServerFrame, SubscribeEntry},
    ErrorCode, TopicFilter,
};

use super::{actor::Session, limits::Verdict, outbound::FrameOptions, SessionEnd};

/// Refused topics named in one error's `details.topics`; the rest are counted.
pub(crate) const LISTED: usize = 20;

/// One refused subscribe entry.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub topic: String,
    /// Extra `details` fields (e.g. the limit), taken from the first refusal of a code.
    pub extra: Map<String, Value>,
    /// Whether the client caused it (rate, permission, its own limit), so it counts
    /// toward 4029; a node-wide limit or a broker failure does not.
    pub strike: bool,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>, topic: &str) -> Self {
        Refusal {
            code,
            message: message.into(),
            topic: topic.to_owned(),
            extra: Map::new(),
            strike: matches!(
                code,
                ErrorCode::Forbidden
                    | ErrorCode::RateLimitExceeded
                    | ErrorCode::TooManySubscriptions
            ),
        }
    }

    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub(crate) fn without_strike(mut self) -> Self {
        self.strike = false;
        self
    }
}

/// The refusals of one frame, one group per code in order of first appearance.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    first: Refusal,
    topics: Vec<String>,
    count: u64,
}

impl Refusals {
    pub(crate) fn push(&mut self, r: Refusal) {
        match self.groups.iter_mut().find(|g| g.first.code == r.code) {
            Some(g) => {
                g.count += 1;
                g.first.strike |= r.strike;
                if g.topics.len() < LISTED {
                    g.topics.push(r.topic);
                }
            }
            None => self.groups.push(Group {
                topics: vec![r.topic.clone()],
                count: 1,
                first: r,
            }),
        }
    }

    /// Refusals that count toward 4029.
    pub(crate) fn strikes(&self) -> u64 {
        self.groups
            .iter()
            .filter(|g| g.first.strike)
            .map(|g| g.count)
            .sum()
    }

    /// One `error` frame per code: `details.topic` is the first refused topic,
    /// `details.topics` up to [`LISTED`] of them, `details.refused` how many.
    pub(crate) fn into_frames(self, correlation_id: Option<Value>) -> Vec<ServerFrame> {
        self.groups
            .into_iter()
            .map(|g| {
                let mut details = g.first.extra;
                details.insert("topic".into(), json!(g.topics[0]));
                details.insert("refused".into(), json!(g.count));
                if g.count > 1 {
                    let more = g.count - g.topics.len() as u64;
                    details.insert("topics".into(), json!(g.topics));
                    if more > 0 {
                        details.insert("more".into(), json!(more));
                    }
                }
                let message = if g.count > 1 {
                    format!("{} ({} topics)", g.first.message, g.count)
                } else {
                    g.first.message
                };
                ServerFrame::error(g.first.code, &message)
                    .with_details(Value::Object(details))
                    .with_correlation_id(correlation_id.clone())
            })
            .collect()
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
    /// Subscribes every entry of one frame (or of an alias route), then sends one
    /// error per refused code and counts the strikes.
    pub(super) async fn subscribe_frame(
        &mut self,
        entries: Vec<SubscribeEntry>,
        opts: FrameOptions,
        correlation_id: Option<Value>,
    ) -> Result<(), SessionEnd> {
        let mut refusals = Refusals::default();
        let limit = self.ctx.config.max_subscriptions;
        let new = entries
            .iter()
            .filter(|e| match &e.filter {
                TopicFilter::Exact(t) => !self.subs.contains_key(t),
                f => !self.holds_pattern(f),
            })
            .count();
        // A wildcard counts as one subscription, whatever it matches.
        let held = self.subs.len() + self.pattern_count();
        if held.saturating_add(new) > limit {
            // Refused as a whole: no entry is worked on.
            let room = limit.saturating_sub(held);
            for e in &entries {
                refusals.push(
                    Refusal::new(
                        ErrorCode::TooManySubscriptions,
                        "too many subscriptions on this connection",
                        &e.filter.to_string(),
                    )
                    .with("limit", json!(limit))
                    .with("room", json!(room)),
                );
            }
        } else {
            for entry in entries {
                if let Some(r) = self.subscribe(entry, opts, correlation_id.clone()).await? {
                    refusals.push(r);
                }
            }
        }
        let strikes = refusals.strikes();
        for f in refusals.into_frames(correlation_id) {
            self.send_frame(&f).await?;
        }
        self.count_strikes(strikes)
    }

    /// Adds refusals to the connection's strikes; too many end it with 4029.
    pub(super) fn count_strikes(&mut self, n: u64) -> Result<(), SessionEnd> {
        if n > 0 {
            self.ctx.metrics.rate_limited.increment(n);
        }
        match self.limits.strike(n, &self.ctx.config) {
            Verdict::Abuse => Err(SessionEnd::RateLimited),
            Verdict::Allow | Verdict::Refuse => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: ErrorCode, topic: &str) -> Refusal {
        Refusal::new(code, "no", topic).with("limit", json!(5))
    }

    #[test]
    fn one_error_per_code_lists_twenty_topics_and_counts_the_rest() {
        let mut r = Refusals::default();
        for i in 0..25 {
            r.push(refusal(ErrorCode::Forbidden, &format!("trading.u{i}")));
        }
        r.push(refusal(ErrorCode::InvalidTopic, "a.*").without_strike());
        r.push(Refusal::new(ErrorCode::InternalError, "down", "b"));
        assert_eq!(r.strikes(), 25, "only the client's refusals strike");
        let frames = r.into_frames(Some(json!("c1")));
        assert_eq!(frames.len(), 3);
        let f: Value = serde_json::from_str(&frames[0].to_json()).unwrap();
        assert_eq!(f["code"], "FORBIDDEN");
        assert_eq!(f["correlation_id"], "c1");
        assert_eq!(f["details"]["topic"], "trading.u0");
        assert_eq!(f["details"]["refused"], 25);
        assert_eq!(f["details"]["more"], 5);
        assert_eq!(f["details"]["limit"], 5);
        let listed = f["details"]["topics"].as_array().unwrap();
        assert_eq!(listed.len(), LISTED);
        assert_eq!(listed[19], "trading.u19");
        let single: Value = serde_json::from_str(&frames[1].to_json()).unwrap();
        assert_eq!(single["code"], "INVALID_TOPIC");
        assert_eq!(single["details"]["topic"], "a.*");
        assert_eq!(single["details"]["refused"], 1);
        assert!(single["details"].get("topics").is_none());
    }
}
