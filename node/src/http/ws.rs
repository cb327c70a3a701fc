//! WebSocket upgrades: `/ws` and the alias routes that subscribe on connect.
//!
//! Everything that can refuse a connection (draining, connection cap, bad alias
//! topic) does so here with an HTTP status, before anything is upgraded. Accepted
//! sockets run as tracked tasks so shutdown can wait for them.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ws::WebSocketUpgrade, ConnectInfo, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_common::{protocol::SubscribeEntry, ErrorCode, TopicFilter};

use super::ApiError;
use crate::{
    session::{Session, SessionParams},
    state::{AppState, SessionInfo},
};

/// tungstenite preallocates its read buffer per socket (128 KiB by default); a few
/// KiB keeps an idle connection small, and the buffer still grows for big frames.
const READ_BUFFER: usize = 4 * 1024;
/// Frames are flushed explicitly after each burst; no need for a large write buffer.
const WRITE_BUFFER: usize = 8 * 1024;

type Upgrade = (
    State<Arc<AppState>>,
    ConnectInfo<SocketAddr>,
    WebSocketUpgrade,
);

pub async fn plain(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(st, addr, ws, &[], false)
}

pub async fn market(
    Path(isin): Path<String>,
    (State(st), ConnectInfo(a), ws): Upgrade,
) -> Response {
    upgrade(st, a, ws, &[format!("prices.{isin}")], false)
}

pub async fn auction(Path(id): Path<String>, (State(st), ConnectInfo(a), ws): Upgrade) -> Response {
    upgrade(st, a, ws, &[format!("auctions.{id}")], false)
}

pub async fn trading(
    Path(user): Path<String>,
    (State(st), ConnectInfo(a), ws): Upgrade,
) -> Response {
    upgrade(
        st,
        a,
        ws,
        &[format!("trading.{user}"), format!("portfolio.{user}")],
        false,
    )
}

pub async fn risk(Path(user): Path<String>, (State(st), ConnectInfo(a), ws): Upgrade) -> Response {
    upgrade(
        st,
        a,
        ws,
        &[format!("risk.{user}"), format!("risk.{user}.alerts")],
        false,
    )
}

pub async fn mobile(
    Path(user): Path<String>,
    (State(st), ConnectInfo(a), ws): Upgrade,
) -> Response {
    upgrade(st, a, ws, &[format!("mobile.{user}")], false)
}

pub async fn market_data(
    Path(symbol): Path<String>,
    (State(st), ConnectInfo(a), ws): Upgrade,
) -> Response {
    upgrade(st, a, ws, &[format!("market_data.{symbol}")], false)
}

fn upgrade(
    st: Arc<AppState>,
    addr: SocketAddr,
    ws: WebSocketUpgrade,
    topics: &[String],
    background: bool,
) -> Response {
    if st.is_draining() {
        return ApiError::unavailable("node is draining; connect to another node").into_response();
    }
    if st.sessions.len() >= st.config.max_connections {
        return ApiError::unavailable("node is at its connection limit").into_response();
    }
    let mut initial = Vec::with_capacity(topics.len());
    for t in topics {
        match TopicFilter::parse(t) {
            Ok(filter @ TopicFilter::Exact(_)) => initial.push(SubscribeEntry {
                filter,
                resume_from_seq: None,
                epoch: None,
            }),
            _ => {
                let msg = format!("the path gives an invalid topic {t:?}");
                return ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidTopic, msg)
                    .into_response();
            }
        }
    }
    let limit = st.config.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let id = st.next_session_id();
            let info = Arc::new(SessionInfo::new(addr, None));
            st.sessions.insert(id, info.clone());
            st.metrics.session_opened();
            let session = Session::new(
                st.clone(),
                socket,
                SessionParams {
                    id,
                    info,
                    initial,
                    background,
                },
            );
            let tracker = st.tracker.clone();
            tracker.track_future(async move {
                session.run().await;
                st.sessions.remove(id);
                st.metrics.session_closed();
            })
        })
}
