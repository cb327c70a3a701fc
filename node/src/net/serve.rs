//! The accept loop: every TCP connection takes a slot under `SLUICE_MAX_CONNECTIONS`
//! before anything is read, must deliver its PROXY header (when on) and its HTTP
//! request headers within `SLUICE_HANDSHAKE_TIMEOUT`, and is then served by hyper
//! with axum's router; a WebSocket upgrade carries the slot on into the session.
//!
//! `axum::serve` is not used because it gives hyper no timer, so hyper's header
//! timeout never fires (a socket sending one header line a second stayed open for
//! good), and because it cannot read a PROXY header before HTTP.

use std::{
    io,
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo, Router};
use bytes::{Buf, Bytes};
use hyper::{body::Incoming, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use sluice_common::lock::MutexExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{
    hold::{HoldSwitch, Holding},
    proxy::{self, ProxyError},
};
use crate::state::{Admission, AppState};

/// What the router's handlers learn about the connection a request came on (a
/// request extension).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The TCP peer: the client, or the load balancer in front of it.
    pub peer: SocketAddr,
    /// The client as the PROXY header gave it, else the TCP peer. `X-Forwarded-For`
    /// is weighed against this address (see `net::client_ip`).
    pub client: SocketAddr,
    /// The connection's place under `SLUICE_MAX_CONNECTIONS` and its write hold.
    conn: Arc<Conn>,
}

/// What a connection's handlers and its IO share (one allocation per connection).
#[derive(Debug)]
struct Conn {
    /// The place under `SLUICE_MAX_CONNECTIONS`, until an upgrade takes it for its
    /// session; released with the connection otherwise.
    slot: Mutex<Option<Admission>>,
    /// Holds the upgrade's `101` for the session's first frame ([`super::hold`]).
    hold: HoldSwitch,
}

impl Conn {
    fn new(admission: Admission) -> Arc<Conn> {
        Arc::new(Conn {
            slot: Mutex::new(Some(admission)),
            hold: HoldSwitch::default(),
        })
    }
}

/// The connection's shared part, as the IO wrapper holds it.
struct ConnRef(Arc<Conn>);

impl AsRef<HoldSwitch> for ConnRef {
    fn as_ref(&self) -> &HoldSwitch {
        &self.0.hold
    }
}

impl Accepted {
    /// Takes the connection's admission, for a session to hold. `None` once taken.
    pub fn take_admission(&self) -> Option<Admission> {
        self.conn.slot.lock_unpoisoned().take()
    }

    /// The response about to be written (an upgrade's `101`) is held until the
    /// session's first write or flush, to leave with it.
    pub fn hold_writes(&self) {
        self.conn.hold.hold();
    }

    /// Ends [`Accepted::hold_writes`]: the next write sends the held bytes first.
    pub fn release_writes(&self) {
        self.conn.hold.release();
    }

    /// Returns an admission taken by an upgrade that was then refused, so the
    /// connection (which may carry more requests) still holds its place.
    pub fn give_back(&self, admission: Admission) {
        *self.conn.slot.lock_unpoisoned() = Some(admission);
    }
}

/// Serves `router` on `listener` until the node's `shutdown` token is cancelled;
/// then stops accepting, lets every connection finish its request in flight, and
/// returns when the last one is closed (upgraded sessions are not among them: they
/// belong to the session tracker).
pub async fn serve(listener: TcpListener, router: Router, st: Arc<AppState>) -> io::Result<()> {
    let connections = TaskTracker::new();
    let stop = st.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors and the like: accepting again at once would spin.
                warn!(error = %e, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Counted before a byte is read, so sockets that never finish a request are
        // capped like sessions; a full node closes the new socket at once.
        let Some(admission) = st.try_admit() else {
            debug!(%peer, "connection closed: node at SLUICE_MAX_CONNECTIONS");
            drop(stream);
            continue;
        };
        // No Nagle: a frame is written when the session flushes it, not held until
        // the client acknowledges the previous one (with delayed ACKs that held
        // small frames for up to 40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        connections.spawn(connection(
            stream,
            peer,
            admission,
            router.clone(),
            st.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one half-open connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    router: Router,
    st: Arc<AppState>,
) {
    // One deadline for the PROXY header and the request headers together.
    let deadline = Instant::now() + st.config.handshake_timeout;
    if !st.config.proxy_protocol {
        let accepted = Accepted {
            peer,
            client: peer,
            conn: Conn::new(admission),
        };
        return http(stream, accepted, deadline, router, st).await;
    }
    let header = tokio::time::timeout_at(deadline, read_proxy_header(&mut stream)).await;
    let (source, rest) = match header {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => {
            debug!(%peer, reason = why, "connection closed: no valid PROXY header");
            return;
        }
        Err(_) => {
            debug!(%peer, "connection closed: no PROXY header within SLUICE_HANDSHAKE_TIMEOUT");
            return;
        }
    };
    let accepted = Accepted {
        peer,
        client: source.unwrap_or(peer),
        conn: Conn::new(admission),
    };
    let io = Rewind {
        pre: rest,
        inner: stream,
    };
    http(io, accepted, deadline, router, st).await
}

/// Reads exactly one PROXY header; returns its source address and whatever bytes
/// came after it in the same reads (the start of the HTTP request).
async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<(Option<SocketAddr>, Bytes), &'static str> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match proxy::parse(&buf) {
            Ok(p) => {
                let rest = Bytes::copy_from_slice(&buf[p.header_len..]);
                return Ok((p.source, rest));
            }
            Err(ProxyError::Invalid(why)) => return Err(why),
            Err(ProxyError::Incomplete) => {}
        }
        // The parser refuses anything longer than MAX_HEADER; this only makes the
        // bound local.
        let room = proxy::MAX_HEADER.saturating_sub(buf.len());
        if room == 0 {
            return Err("PROXY header too long");
        }
        let limit = u64::try_from(room.min(4096)).unwrap_or(4096);
        match (&mut *stream).take(limit).read_buf(&mut buf).await {
            Ok(0) => return Err("closed before the end of the PROXY header"),
            Ok(_) => {}
            Err(_) => return Err("read error in the PROXY header"),
        }
    }
}

/// Serves HTTP/1.1 on `io`: the first request's headers must be complete by
/// `deadline`; hyper's header timeout, set to what was left of it, then bounds how
/// long an idle keep-alive connection waits for its next request.
async fn http<I>(io: I, accepted: Accepted, deadline: Instant, router: Router, st: Arc<AppState>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return;
    }
    let peer = accepted.peer;
    let io = Holding::new(io, ConnRef(accepted.conn.clone()));
    // Set when the first request's headers are complete (hyper calls the service).
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(accepted.client));
        req.extensions_mut().insert(accepted.clone());
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, req).await }
    });
    // hyper-util's auto builder (HTTP/1 only in this build, as under axum::serve)
    // rather than hyper's http1 builder: measured with scripts/measure/idle_memory.py
    // at 5000 idle sessions, the plain http1 connection left 3.5 KB of RSS per
    // session against 2.7 KB for this one.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(left);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    // The auto builder first waits for bytes to tell HTTP/1 from HTTP/2, with no
    // timeout, and only then arms hyper's header timeout: so the first request is
    // held to the deadline here. Later keep-alive requests have hyper's timeout.
    let handshake = tokio::time::sleep_until(deadline);
    let mut handshake = pin!(handshake);
    let mut handshake_done = false;
    let mut stopping = false;
    let stop = st.shutdown.clone();
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut handshake, if !handshake_done => {
                handshake_done = true;
                if !started.load(Ordering::Relaxed) {
                    debug!(%peer, "connection closed: no request within SLUICE_HANDSHAKE_TIMEOUT");
                    return;
                }
            }
            _ = stop.cancelled(), if !stopping => {
                // Finish the request in flight, then close; idle connections close now.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        // Header timeouts, malformed requests, resets: the client's problem.
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A connection whose first bytes were already read (after the PROXY header): they
/// are given back to the reader before anything else from the socket.
struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
