//! The HTTP surface: one router for WebSocket upgrades, probes, metrics and the
//! admin API, all on the same port.

mod admin;
mod client_headers;
mod error;
mod probes;
mod topics;
mod web;
mod ws;

use std::sync::Arc;

use axum::{
    routing::{get, post},
    Router,
};

pub use error::ApiError;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::AppState;

/// CORS for the HTTP API, with the same allow-list as WebSocket upgrades.
fn cors(state: &AppState) -> CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    let origins = match &state.config.allowed_origins {
        None => AllowOrigin::any(),
        Some(list) if list.iter().any(|o| o == "*") => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

/// Every route of SPEC §5 and §3; the WebSocket aliases also live under `/api/v1`.
pub fn router(state: Arc<AppState>) -> Router {
    let ws_routes = Router::new()
        .route("/ws", get(ws::plain))
        .route("/ws/stream", get(ws::plain))
        .route("/ws/market/{isin}", get(ws::market))
        .route("/ws/auction/{id}", get(ws::auction))
        .route("/ws/trading/{user_id}", get(ws::trading))
        .route("/ws/risk/{user_id}", get(ws::risk))
        .route("/ws/mobile/{user_id}", get(ws::mobile))
        .route("/ws/market-data/{symbol}", get(ws::market_data));
    Router::new()
        .merge(ws_routes.clone())
        .nest("/api/v1", ws_routes)
        .route("/health", get(probes::health))
        .route("/ws/health", get(probes::health))
        .route("/ready", get(probes::ready))
        .route("/metrics", get(probes::metrics))
        .route("/publish", post(admin::publish))
        .route("/broadcast", post(admin::publish))
        .route("/connections", get(admin::connections))
        .route("/topics", get(admin::topics))
        .route("/ws/topics", get(admin::topics))
        .route("/cluster", get(admin::cluster))
        .route("/topics/{topic}", get(topics::state))
        .route("/topics/{topic}/history", get(topics::history))
        // The console (`/`), the dashboard (`/dashboard`), `/client/sluice.js` and their assets.
        .merge(web::routes())
        .layer(cors(&state))
        .with_state(state)
}
