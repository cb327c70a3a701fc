//! WebSocket upgrades: `/ws` and the alias routes that subscribe on connect.
//!
//! Everything that can refuse a connection does so here with an HTTP status and a
//! JSON body, before anything is upgraded, in this order: draining (503), Origin
//! not allowed (403), token missing or bad (401), an alias topic the token may not
//! read (403), too many connections from the client (429). A full node never gets
//! this far: the accept loop closed the socket. Accepted sockets run as tracked
//! tasks so shutdown can wait for them.
//!
//! Mobile clients describe themselves with headers: `x-device-type` and
//! `x-client-version` (kept sanitized and bounded, shown in `/connections` and the
//! connect log line) and `x-background-mode` (`true` starts the session conflated,
//! on any route; `false` starts `/ws/mobile/{user}` in the foreground).

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ws::WebSocketUpgrade, ConnectInfo, Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::{future::Either, FutureExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sluice_common::{protocol::SubscribeEntry, time_fmt, ErrorCode, TopicFilter};
use tracing::{debug, info};

use super::{client_headers::ClientHeaders, ApiError};
use crate::{
    auth::Identity,
    net::{self, Accepted},
    session::{Session, SessionEnd, SessionInfo, SessionParams},
    state::{Admission, AppState},
    ws::WsSocket,
};

/// The socket a session runs over: the project's own WebSocket over hyper's
/// upgraded connection.
pub type Socket = WsSocket<TokioIo<Upgraded>>;
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// What every upgrade handler extracts.
pub struct Upgrade {
    state: Arc<AppState>,
    /// The client's address: from the PROXY header or the socket, then from
    /// `X-Forwarded-For` when the sender is a trusted proxy.
    addr: SocketAddr,
    /// The connection the request came on, holding its admission.
    accepted: Option<Accepted>,
    headers: HeaderMap,
    token: Option<String>,
    /// The connection, once hyper hands it over after our 101 response.
    on_upgrade: OnUpgrade,
    /// `Sec-WebSocket-Accept` for the 101 response.
    accept: HeaderValue,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Upgrade
where
    Arc<AppState>: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &S,
    ) -> Result<Self, Self::Rejection> {
        let State(state) = State::<Arc<AppState>>::from_request_parts(parts, s)
            .await
            .map_err(IntoResponse::into_response)?;
        // The accept loop marks every request with its connection; without it (a
        // router served some other way) the socket's peer is all there is.
        let accepted = parts.extensions.get::<Accepted>().cloned();
        let conn_addr = match &accepted {
            Some(a) => a.client,
            None => {
                let ConnectInfo(addr) = ConnectInfo::<SocketAddr>::from_request_parts(parts, s)
                    .await
                    .map_err(IntoResponse::into_response)?;
                addr
            }
        };
        let ip = net::client_ip(
            conn_addr.ip(),
            &parts.headers,
            &state.config.trusted_proxies,
        );
        // A client named by X-Forwarded-For has no port we know of.
        let addr = if ip == net::canonical(conn_addr.ip()) {
            SocketAddr::new(ip, conn_addr.port())
        } else {
            SocketAddr::new(ip, 0)
        };
        let Query(q) = Query::<TokenQuery>::from_request_parts(parts, s)
            .await
            .map_err(|e| {
                ApiError::bad_request(ErrorCode::InvalidMessage, e.body_text()).into_response()
            })?;
        // axum's extractor checks the upgrade request (and answers a bad one as it
        // always has); the connection itself is taken from hyper here, since the
        // session speaks WebSocket over it with the project's own frame writer.
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let _checked: WebSocketUpgrade = WebSocketUpgrade::from_request_parts(parts, s)
            .await
            .map_err(IntoResponse::into_response)?;
        let (Some(on_upgrade), Some(key)) =
            (on_upgrade, parts.headers.get(header::SEC_WEBSOCKET_KEY))
        else {
            // axum accepted it, so this is an HTTP/2 extended CONNECT, which the
            // node does not serve (its accept loop speaks HTTP/1.1 only).
            return Err(ApiError::bad_request(
                ErrorCode::InvalidMessage,
                "WebSocket upgrades need HTTP/1.1",
            )
            .into_response());
        };
        let accept = HeaderValue::from_str(&crate::ws::accept_key(key.as_bytes()))
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::to_owned);
        Ok(Upgrade {
            state,
            addr,
            accepted,
            headers: parts.headers.clone(),
            // An empty `?token=` does not hide a header token.
            token: q.token.filter(|t| !t.trim().is_empty()).or(bearer),
            on_upgrade,
            accept,
        })
    }
}

pub async fn plain(u: Upgrade) -> Response {
    upgrade(u, &[], false)
}

pub async fn market(Path(isin): Path<String>, u: Upgrade) -> Response {
    upgrade(u, &[format!("prices.{isin}")], false)
}

pub async fn auction(Path(id): Path<String>, u: Upgrade) -> Response {
    upgrade(u, &[format!("auctions.{id}")], false)
}

pub async fn trading(Path(user): Path<String>, u: Upgrade) -> Response {
    upgrade(
        u,
        &[format!("trading.{user}"), format!("portfolio.{user}")],
        false,
    )
}

pub async fn risk(Path(user): Path<String>, u: Upgrade) -> Response {
    upgrade(
        u,
        &[format!("risk.{user}"), format!("risk.{user}.alerts")],
        false,
    )
}

/// Mobile clients start in background (conflated) mode, unless the upgrade says
/// `x-background-mode: false`.
pub async fn mobile(Path(user): Path<String>, u: Upgrade) -> Response {
    upgrade(u, &[format!("mobile.{user}")], true)
}

pub async fn market_data(Path(symbol): Path<String>, u: Upgrade) -> Response {
    upgrade(u, &[format!("market_data.{symbol}")], false)
}

fn origin_allowed(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(allowed) = &st.config.allowed_origins else {
        return true;
    };
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // Non-browser clients send no Origin; the allow-list guards browsers.
        None => true,
        Some(origin) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin.trim_end_matches('/'))),
    }
}

/// `background`: whether the route starts sessions in background mode when the
/// client sends no `x-background-mode`.
fn upgrade(u: Upgrade, topics: &[String], background: bool) -> Response {
    let Upgrade {
        state: st,
        addr,
        accepted,
        headers,
        token,
        on_upgrade,
        accept,
    } = u;
    if st.is_draining() {
        return ApiError::unavailable("node is draining; connect to another node").into_response();
    }
    if !origin_allowed(&st, &headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "Origin not allowed",
        )
        .into_response();
    }
    let identity = match st.auth.authenticate(token.as_deref()) {
        Ok(id) => id,
        Err(e) => {
            st.metrics.auth_failures.increment(1);
            return ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
                .into_response();
        }
    };
    let client = match ClientHeaders::parse(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let background = client.background.unwrap_or(background);
    let mut initial = Vec::with_capacity(topics.len());
    for t in topics {
        let topic = match TopicFilter::parse(t).and_then(TopicFilter::exact) {
            Ok(topic) => topic,
            Err(_) => {
                let msg = format!("the path gives an invalid topic {t:?}");
                return ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidTopic, msg)
                    .into_response();
            }
        };
        if !crate::auth::may_read(identity.as_ref(), &topic) {
            let msg = match identity {
                Some(_) => format!("this token may not read {topic}"),
                None => format!("{topic} is private: connect with a token naming its owner"),
            };
            return ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, msg).into_response();
        }
        initial.push(SubscribeEntry {
            filter: TopicFilter::Exact(topic),
            resume_from_seq: None,
            epoch: None,
        });
    }
    // The connection's slot under SLUICE_MAX_CONNECTIONS, taken at accept, moves
    // to the session; only a router served without the accept loop admits here.
    let admission = match &accepted {
        Some(a) => a.take_admission(),
        None => st.try_admit(),
    };
    let Some(admission) = admission else {
        return ApiError::unavailable("node is at its connection limit").into_response();
    };
    let admission = match admission.with_ip(addr.ip()) {
        Ok(admission) => admission,
        Err(admission) => {
            if let Some(a) = &accepted {
                a.give_back(admission);
            }
            debug!(client = %addr.ip(), "upgrade refused: SLUICE_MAX_CONNECTIONS_PER_IP");
            st.metrics.rate_limited.increment(1);
            let msg = "too many connections from this address";
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimitExceeded,
                msg,
            )
            .into_response();
        }
    };
    // Everything the session starts with, in one box, freed once the session runs.
    let start = Box::new(Start {
        st,
        addr,
        identity,
        initial,
        background,
        admission,
        device_type: client.device_type,
        client_version: client.client_version,
        conn: accepted.clone(),
    });
    // The session runs as its own tracked task once hyper hands over the connection
    // (after this 101 goes out); if the upgrade fails, `start` is dropped and its
    // admission with it.
    let tracker = start.st.tracker.clone();
    let run = on_upgrade.then(move |upgraded| match upgraded {
        Ok(io) => Either::Left((*start).session(io)),
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            Either::Right(std::future::ready(()))
        }
    });
    tokio::spawn(tracker.track_future(run));
    // The 101 waits for the session's `connected` frame, to leave in one write.
    if let Some(a) = &accepted {
        a.hold_writes();
    }
    switching_protocols(accept)
}

/// The 101 answer to a valid upgrade (RFC 6455 §4.2.2); no subprotocol or
/// extension is chosen.
fn switching_protocols(accept: HeaderValue) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

/// What the upgrade callback needs to start the session.
struct Start {
    st: Arc<AppState>,
    addr: SocketAddr,
    identity: Option<Identity>,
    initial: Vec<SubscribeEntry>,
    background: bool,
    admission: Admission,
    device_type: Option<String>,
    client_version: Option<String>,
    /// The connection, to release the held 101 before the first frame.
    conn: Option<Accepted>,
}

impl Start {
    /// Registers the session and returns the future it runs as. Built from
    /// combinators rather than an `async` block, so the session is stored in the
    /// connection's task once (an `async` block would also keep the moved-from copy).
    fn session(self, io: Upgraded) -> impl Future<Output = ()> + Send {
        let Start {
            st,
            addr,
            identity,
            initial,
            background,
            admission,
            device_type,
            client_version,
            conn,
        } = self;
        // The session's first write (`connected`) now carries the held 101 with it.
        if let Some(c) = conn {
            c.release_writes();
        }
        let id = st.next_session_id();
        let info = Arc::new(
            SessionInfo::new(
                addr,
                identity.as_ref().map(|i| i.sub.clone()),
                st.config.queue_size,
            )
            .with_client(device_type, client_version),
        );
        st.sessions.insert(id, info.clone());
        st.metrics.session_opened();
        info!(
            connection_id = %info.connection_id,
            session = id,
            client = %addr,
            user = info.user.as_deref().unwrap_or("-"),
            device_type = info.device_type.as_deref().unwrap_or("-"),
            client_version = info.client_version.as_deref().unwrap_or("-"),
            background,
            "connected"
        );
        let ended = (st.clone(), info.clone());
        let socket: Socket = WsSocket::new(TokioIo::new(io), st.config.max_message_bytes);
        let session = Session::new(
            st.session.clone(),
            socket,
            SessionParams {
                id,
                info,
                initial,
                background,
                identity,
            },
        );
        session.run().map(move |end| {
            log_end(&ended.0, &ended.1, &end);
            admission.session_ended(id);
        })
    }
}

/// The disconnect line and the metrics of a session's end: its close code (none
/// when the client left or the connection broke) and how long it lasted.
fn log_end(st: &AppState, info: &SessionInfo, end: &SessionEnd) {
    let code = end.close().map(|(c, _)| c.code());
    let duration_ms = (time_fmt::now_ms() - info.connected_ms).max(0);
    st.metrics.session_ended(code, duration_ms as f64 / 1000.0);
    info!(
        connection_id = %info.connection_id,
        client = %info.client_ip,
        user = info.user.as_deref().unwrap_or("-"),
        close_code = code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
        duration_ms,
        reason = ?end,
        "disconnected"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // What each open connection's task holds, besides axum's wrapper: the
        // socket, the session and its idle loop. Grows per connection if it grows.
        let size = returned_size(Start::session);
        println!("session future over a real socket: {size} bytes");
        assert!(size <= 1024, "the session future is {size} bytes");
    }
}
