//! REST reads of one topic: `GET /topics/{topic}` (head and snapshot) and
//! `GET /topics/{topic}/history` (retained messages), so a screen can catch up
//! without a socket.
//!
//! Permissions are the subscribe rules: the caller's token must be allowed to read
//! the topic (private families only for their owner), or be the admin token. The
//! answers come straight from the broker, so every node gives the same answer.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_common::{ErrorCode, Topic};

use super::{
    admin::{bearer, token_matches},
    ApiError,
};
use crate::{
    broker::{BrokerError, TopicState},
    publication::Pub,
    state::AppState,
};

/// Messages one history answer holds when the caller names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The most one history answer holds: bounds the node's memory and the answer's
/// size whatever the caller asks for.
pub const MAX_LIMIT: usize = 1000;

/// `GET /topics/{topic}`: `{topic, epoch, head_seq, snapshot}`.
pub async fn state(
    State(st): State<Arc<AppState>>,
    Path(topic): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<StateAnswer>, ApiError> {
    let topic = authorize(&st, &topic, &q, &headers)?;
    let (epoch, head, ts) = existing(&st, &topic, true).await?;
    let snapshot = match ts.snapshot.filter(|s| *s.epoch == *epoch) {
        Some(s) => Some(snapshot_of(&s)?),
        None => None,
    };
    Ok(Json(StateAnswer {
        topic,
        epoch,
        head_seq: head,
        snapshot,
    }))
}

/// The answer of `GET /topics/{topic}`. Stored JSON (the snapshot's payload) is
/// passed through as the engine wrote it, never re-serialized: `1.50` stays `1.50`.
#[derive(Debug, Serialize)]
pub struct StateAnswer {
    topic: Topic,
    epoch: String,
    head_seq: u64,
    snapshot: Option<SnapshotAnswer>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotAnswer {
    seq: u64,
    ts: String,
    payload: Box<RawValue>,
}

/// The answer of `GET /topics/{topic}/history`; each message is its envelope
/// exactly as a socket on this node gets it.
#[derive(Debug, Serialize)]
pub struct HistoryAnswer {
    topic: Topic,
    epoch: String,
    head_seq: u64,
    recovered: bool,
    messages: Vec<Box<RawValue>>,
}

/// `GET /topics/{topic}/history?from_seq=N&limit=L`:
/// `{topic, epoch, head_seq, recovered, messages}`, oldest first.
pub async fn history(
    State(st): State<Arc<AppState>>,
    Path(topic): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let topic = authorize(&st, &topic, &q, &headers)?;
    let window = Window::parse(&q)?;
    let (epoch, head, _) = existing(&st, &topic, false).await?;
    let from = window.from(head);
    let page = st
        .broker
        .history(&topic, from, window.limit)
        .await
        .map_err(broker_error)?;
    // A publish between the two reads may have started a new epoch; only messages
    // of the epoch named in the answer belong in it.
    let page: Vec<Pub> = page.into_iter().filter(|p| *p.epoch == *epoch).collect();
    let head = page.last().map_or(head, |p| p.seq.max(head));
    let recovered = recovered(from, head, page.first().map(|p| p.seq));
    let messages = page
        .iter()
        .map(|p| RawValue::from_string(p.frame.as_str().to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal(format!("stored envelope is not JSON: {e}")))?;
    Ok(Json(HistoryAnswer {
        topic,
        epoch,
        head_seq: head,
        recovered,
        messages,
    }))
}

/// Which messages a history call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// `from_seq`; `None`: the latest `limit` messages.
    from_seq: Option<u64>,
    limit: usize,
}

impl Window {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = |msg: String| ApiError::bad_request(ErrorCode::InvalidMessage, msg);
        let from_seq = match q.get("from_seq") {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                bad(format!(
                    "from_seq must be a whole number of 0 or more, not {v:?}"
                ))
            })?),
        };
        let limit = match q.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(bad(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, not {v:?}"
                    )))
                }
            },
        };
        Ok(Window { from_seq, limit })
    }

    /// The first seq to read: `from_seq` (seqs start at 1), or the start of the
    /// latest `limit` messages.
    fn from(self, head: u64) -> u64 {
        match self.from_seq {
            Some(n) => n.max(1),
            None => head.saturating_sub(self.limit as u64 - 1).max(1),
        }
    }
}

/// Whether the answer holds every message from `from` on (up to its limit): its
/// first message is `from` itself, or there is nothing after `from - 1` to hold. A
/// `from` beyond `head + 1` names messages the topic never had (the caller saw
/// another history), so that is not a recovery either — as for a resume.
fn recovered(from: u64, head: u64, first: Option<u64>) -> bool {
    match first {
        Some(seq) => seq == from,
        None => from == head.saturating_add(1),
    }
}

/// The topic's state (its snapshot only when `with_snapshot`: the history route
/// needs the head alone), or 404 when it has no messages (it never existed, or its
/// history expired with nothing left).
async fn existing(
    st: &AppState,
    topic: &Topic,
    with_snapshot: bool,
) -> Result<(String, u64, TopicState), ApiError> {
    let ts = crate::broker::read_state(&*st.broker, topic, with_snapshot)
        .await
        .map_err(broker_error)?;
    match &ts.position {
        Some(p) => Ok((p.epoch.clone(), p.seq, ts.clone())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidTopic,
            format!("topic {topic} has no messages"),
        )),
    }
}

/// `{seq, ts, payload}` of a snapshot, read back from its envelope (the payload
/// as stored, not re-serialized).
fn snapshot_of(s: &Pub) -> Result<SnapshotAnswer, ApiError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        ts: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    let e: Envelope<'_> = serde_json::from_str(s.frame.as_str())
        .map_err(|e| internal(format!("stored snapshot envelope is not as encoded: {e}")))?;
    Ok(SnapshotAnswer {
        seq: s.seq,
        ts: e.ts.into_owned(),
        payload: e.payload.to_owned(),
    })
}

/// The topic, once the caller may read it: 401 without a usable token when auth is
/// required, 400 for a bad topic name, 403 when the token may not read it.
fn authorize(
    st: &AppState,
    name: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Topic, ApiError> {
    let token = q
        .get("token")
        .map(String::as_str)
        .filter(|t| !t.trim().is_empty())
        .or_else(|| bearer(headers));
    let admin = match (token, st.config.admin_token.as_deref()) {
        (Some(given), Some(expected)) => token_matches(given.as_bytes(), expected.as_bytes()),
        _ => false,
    };
    let identity = if admin {
        None
    } else {
        st.auth.authenticate(token).map_err(|e| {
            st.metrics.auth_failures.increment(1);
            ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
        })?
    };
    let topic = Topic::parse(name)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidTopic, e.to_string()))?;
    if !admin && !crate::auth::may_read(identity.as_ref(), &topic) {
        let msg = match identity {
            Some(_) => format!("this token may not read {topic}"),
            None => format!("{topic} is private: pass a token naming its owner"),
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            msg,
        ));
    }
    Ok(topic)
}

fn internal(msg: String) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::InternalError,
        msg,
    )
}

fn broker_error(e: BrokerError) -> ApiError {
    match e {
        BrokerError::Invalid(m) => internal(m),
        BrokerError::Unavailable(m) => ApiError::unavailable(m),
        other => ApiError::unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn history_windows_are_bounded_and_checked() {
        let w = |pairs: &[(&str, &str)]| Window::parse(&query(pairs));
        assert_eq!(
            w(&[]).unwrap(),
            Window {
                from_seq: None,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            w(&[("from_seq", "7"), ("limit", "1000")]).unwrap().limit,
            1000
        );
        for bad in [
            [("from_seq", "-1")],
            [("from_seq", "x")],
            [("limit", "0")],
            [("limit", "1001")],
            [("limit", "")],
        ] {
            let e = w(&bad).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage)
            );
        }
        // Without from_seq: the latest `limit` messages; seqs start at 1.
        let latest = Window {
            from_seq: None,
            limit: 10,
        };
        assert_eq!(latest.from(100), 91);
        assert_eq!(latest.from(3), 1);
        let zero = Window {
            from_seq: Some(0),
            limit: 10,
        };
        assert_eq!(zero.from(5), 1);
    }

    #[test]
    fn recovered_only_when_the_answer_starts_where_asked() {
        assert!(recovered(5, 10, Some(5)));
        assert!(!recovered(5, 10, Some(8)), "5..7 were trimmed");
        assert!(recovered(11, 10, None), "nothing after the head");
        assert!(!recovered(3, 10, None), "history expired");
        assert!(!recovered(20, 10, None), "beyond the head");
    }
}
