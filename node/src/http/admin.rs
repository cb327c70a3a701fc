//! The admin API: publish over HTTP and inspect this node. Every route here needs
//! `Authorization: Bearer` with `SLUICE_ADMIN_TOKEN` or a JWT carrying `admin: true`;
//! with neither configured they all answer 403, so a node is never left open by
//! omission.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    Json,
};
use serde_json::{json, value::RawValue, Map, Value};
use sluice_common::{protocol::meta, publisher::PublishKind, time_fmt, ErrorCode, Topic};

use super::ApiError;
use crate::{
    broker::{BrokerError, PublishRequest},
    state::AppState,
};

/// Checks the caller is an admin: `Authorization: Bearer <SLUICE_ADMIN_TOKEN>`, or a
/// valid JWT with `admin: true` when a JWT key is configured. 401 without a bearer,
/// 403 when it is wrong; 403 for everyone when neither is configured, so a node is
/// never left open by omission.
fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |msg: &str| ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, msg);
    let jwt_configured = st.config.jwt_key.is_some();
    if st.config.admin_token.is_none() && !jwt_configured {
        return Err(forbidden("admin API is disabled: set SLUICE_ADMIN_TOKEN"));
    }
    let Some(given) = bearer(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::AuthRequired,
            "admin credentials required: Authorization: Bearer <token>",
        ));
    };
    if let Some(expected) = st.config.admin_token.as_deref() {
        if token_matches(given.as_bytes(), expected.as_bytes()) {
            return Ok(());
        }
    }
    if jwt_configured {
        match st.auth.verify(given) {
            Ok(id) if id.admin => return Ok(()),
            Ok(_) => return Err(forbidden("this token is not an admin token")),
            Err(_) if st.config.admin_token.is_some() => {}
            Err(e) => {
                st.metrics.auth_failures.increment(1);
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    e.code(),
                    e.to_string(),
                ));
            }
        }
    }
    Err(forbidden("wrong admin token"))
}

/// The token of `Authorization: Bearer <token>` (or `bearer`), trimmed; `None`
/// when the header is missing, not a bearer or empty.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Compares SHA-256 digests of both sides in constant time: comparing the tokens
/// themselves would leak their length (an early length check) and, with a
/// short-circuiting compare, the length of the matching prefix. Digests have a
/// fixed length and `subtle` keeps the comparison branch-free.
pub(super) fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (g, e) = (Sha256::digest(given), Sha256::digest(expected));
    g[..].ct_eq(&e[..]).into()
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidMessage, msg)
}

/// A validated publish body.
#[derive(Debug)]
struct PublishBody {
    topic: Topic,
    kind: PublishKind,
    payload: String,
    snapshot: Option<String>,
    /// The engine's meta object as JSON text (checked: an object without `node`).
    meta: Option<String>,
}

/// Checks a publish body field by field. The payload, snapshot and meta are kept as
/// the caller wrote them (raw JSON text, never re-serialized), so a number such as
/// `1.50` reaches every socket as `1.50`, as it does when an engine calls the function.
fn parse_publish(body: &[u8]) -> Result<PublishBody, ApiError> {
    let whole: &RawValue = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
    if !whole.get().starts_with('{') {
        return Err(invalid("body must be a JSON object"));
    }
    let obj: HashMap<String, &RawValue> = serde_json::from_str(whole.get())
        .map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
    let field = |name: &str| obj.get(name).copied().filter(|v| v.get() != "null");
    let string = |name: &str| -> Result<Option<String>, ApiError> {
        field(name)
            .map(|v| {
                serde_json::from_str::<String>(v.get())
                    .map_err(|_| invalid(format!("field '{name}' must be a string")))
            })
            .transpose()
    };
    let topic = match string("topic")? {
        Some(s) => Topic::parse(&s)
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidTopic, e.to_string()))?,
        None => return Err(invalid("field 'topic' is missing")),
    };
    let payload = field("payload")
        .or_else(|| field("data"))
        .ok_or_else(|| invalid("field 'payload' (or 'data') is missing"))?;
    let kind = match string("type")? {
        None => PublishKind::Delta,
        Some(s) => PublishKind::parse(&s)
            .ok_or_else(|| invalid(format!("type {s:?} must be 'delta' or 'alert'")))?,
    };
    let snapshot = field("snapshot").map(|v| v.get().to_owned());
    let meta = match field("meta") {
        None => None,
        Some(m) if m.get().starts_with('{') => {
            meta::check_meta(m.get()).map_err(|e| invalid(format!("field 'meta': {e}")))?;
            Some(m.get().to_owned())
        }
        Some(_) => return Err(invalid("field 'meta' must be a JSON object")),
    };
    Ok(PublishBody {
        topic,
        kind,
        payload: payload.get().to_owned(),
        snapshot,
        meta,
    })
}

/// `POST /publish` and `POST /broadcast`.
pub async fn publish(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let b = parse_publish(&body)?;
    let pos = st
        .broker
        .publish(PublishRequest {
            topic: &b.topic,
            kind: b.kind,
            payload_json: &b.payload,
            snapshot_json: b.snapshot.as_deref(),
            meta_json: b.meta.as_deref(),
        })
        .await
        .map_err(|e| match e {
            BrokerError::Invalid(m) => invalid(m),
            // Written but not confirmed by a replica: not a plain failure, since a
            // retry would publish a second message.
            BrokerError::NotReplicated { message, .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::InternalError,
                message,
            ),
            other => ApiError::unavailable(other.to_string()),
        })?;
    st.metrics.published.increment(1);
    Ok(Json(json!({
        "status": "published",
        "topic": b.topic,
        "seq": pos.seq,
        "epoch": pos.epoch,
    })))
}

/// `GET /connections`: this node's sessions.
pub async fn connections(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let mut topics = st.hub.topics_by_subscriber();
    let list: Vec<Value> = st
        .sessions
        .entries()
        .iter()
        .map(|(id, s)| {
            let subs = topics.remove(id).unwrap_or_default();
            json!({
                "connection_id": s.connection_id.to_string(),
                "client_ip": s.client_ip.ip().to_string(),
                "connect_time": time_fmt::format_ms(s.connected_ms),
                "last_heartbeat": time_fmt::format_ms(s.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed)),
                "subscriptions": subs,
                "user": s.user,
                "device_type": s.device_type,
                "client_version": s.client_version,
            })
        })
        .collect();
    Ok(Json(json!({ "count": list.len(), "connections": list })))
}

/// `GET /topics`: topics with local subscribers, and each one's head seq.
pub async fn topics(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let mut topics = Map::new();
    for (topic, count) in st.hub.topic_counts() {
        let head = match st.broker.head(&topic).await {
            Ok(p) => json!(p.map_or(0, |p| p.seq)),
            Err(_) => Value::Null,
        };
        topics.insert(
            topic.to_string(),
            json!({ "subscriber_count": count, "head_seq": head }),
        );
    }
    Ok(Json(
        json!({ "topic_count": topics.len(), "topics": topics }),
    ))
}

/// `GET /cluster`: the live nodes from the registry, each with its connection count.
pub async fn cluster(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let mut nodes = crate::registry::live(&st)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    // The answering node reports itself live rather than as of its last refresh.
    nodes.retain(|n| n["node_id"] != st.config.node_id.as_str());
    nodes.push(crate::registry::record(&st));
    nodes.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    let connections: u64 = nodes.iter().filter_map(|n| n["connections"].as_u64()).sum();
    Ok(Json(
        json!({ "count": nodes.len(), "connections": connections, "nodes": nodes }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies_are_checked_field_by_field() {
        let code = |b: &str| parse_publish(b.as_bytes()).unwrap_err().code;
        assert_eq!(code("nope"), ErrorCode::InvalidMessage);
        assert_eq!(code("[]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"payload":1}"#), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"topic":"a b","payload":1}"#),
            ErrorCode::InvalidTopic
        );
        assert_eq!(code(r#"{"topic":"a"}"#), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"topic":"a","payload":1,"type":"shout"}"#),
            ErrorCode::InvalidMessage
        );
        let ok =
            parse_publish(br#"{"topic":"a.b","data":{"x":1},"type":"alert","snapshot":{"s":1}}"#)
                .unwrap();
        assert_eq!(ok.kind, PublishKind::Alert);
        assert_eq!(ok.payload, r#"{"x":1}"#);
        assert_eq!(ok.snapshot.as_deref(), Some(r#"{"s":1}"#));
        // Kept as written: number text, spacing and key order are the caller's.
        let raw = parse_publish(
            br#"{"topic":"a.b","payload": {"px": 1.50, "q":1e3} ,"snapshot":[0.10],"meta":{"z":1,"a":2.0}}"#,
        )
        .unwrap();
        assert_eq!(raw.payload, r#"{"px": 1.50, "q":1e3}"#);
        assert_eq!(raw.snapshot.as_deref(), Some("[0.10]"));
        assert_eq!(raw.meta.as_deref(), Some(r#"{"z":1,"a":2.0}"#));
        assert_eq!(
            code(r#"{"topic":"a","payload":1,"meta":[1]}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"topic":7,"payload":1}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"topic":"a","payload":1,"type":3}"#),
            ErrorCode::InvalidMessage
        );
        let null_fields =
            parse_publish(br#"{"topic":"a","payload":1,"snapshot":null,"meta":null,"type":null}"#)
                .unwrap();
        assert_eq!(
            (null_fields.snapshot, null_fields.meta, null_fields.kind),
            (None, None, PublishKind::Delta)
        );
    }

    #[test]
    fn the_admin_token_compare_accepts_only_the_exact_token() {
        let right = b"the-admin-token-of-at-least-32-bytes";
        assert!(token_matches(right, right));
        assert!(!token_matches(
            b"the-admin-token-of-at-least-32-bytez",
            right
        ));
        assert!(!token_matches(
            b"the-admin-token-of-at-least-32-byte",
            right
        ));
        assert!(!token_matches(
            b"the-admin-token-of-at-least-32-bytess",
            right
        ));
        assert!(!token_matches(b"", right));
        assert!(!token_matches(&right.to_ascii_uppercase(), right));
    }
}
