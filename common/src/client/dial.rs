//! Opening one WebSocket connection: the TLS connector a URL needs, and the
//! handshake with the bearer token under a 10-second deadline.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
    Connector, MaybeTlsStream, WebSocketStream,
};

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The TLS connector for `url`: none for `ws://`; for `wss://` the one in
/// `cache` (the configured one), or one trusting the system roots, built once
/// and kept there.
pub(super) fn connector(
    url: &str,
    cache: &mut Option<Arc<rustls::ClientConfig>>,
) -> Result<Option<Connector>, String> {
    if !url
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("wss://"))
    {
        return Ok(None);
    }
    let tls = match cache {
        Some(t) => t.clone(),
        None => {
            let t = super::tls_system_roots()?;
            *cache = Some(t.clone());
            t
        }
    };
    Ok(Some(Connector::Rustls(tls)))
}

/// The WebSocket handshake with `url`, sending `token` as `Authorization: Bearer`.
pub(super) async fn connect(
    url: &str,
    token: Option<&str>,
    tls: Option<Connector>,
) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| e.to_string())?;
        req.headers_mut().insert("authorization", v);
    }
    let connecting = tokio_tungstenite::connect_async_tls_with_config(req, None, false, tls);
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}
