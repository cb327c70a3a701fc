//! `/health`, `/ready` and `/metrics`: unauthenticated, cheap, never touching Redis
//! on the request path.

use std::sync::{atomic::Ordering, Arc};

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde_json::json;

use crate::state::AppState;

pub async fn health(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let m = &st.metrics;
    let redis_mode = st.config.redis_url.is_some();
    let connected = st.broker.is_connected();
    let status = if st.is_draining() {
        "draining"
    } else if !connected {
        "degraded"
    } else {
        "healthy"
    };
    Json(json!({
        "status": status,
        "node_id": st.config.node_id,
        "active_connections": m.active.load(Ordering::Relaxed),
        "messages_sent": m.sent.load(Ordering::Relaxed),
        "connections_handled": m.handled.load(Ordering::Relaxed),
        "topics_active": st.hub.topic_count(),
        "uptime_seconds": st.started.elapsed().as_secs(),
        "redis_connected": redis_mode && connected,
        "broker": if redis_mode { "redis" } else { "memory" },
    }))
}

pub async fn ready(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    if st.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "draining"})),
        )
    } else if !st.broker.is_connected() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "redis unreachable"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"ready": true})))
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let ready = !st.is_draining() && st.broker.is_connected();
    st.metrics.sample(st.config.max_connections, ready);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        st.metrics.render(),
    )
}
