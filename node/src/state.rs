//! What every part of a running node shares: config, hub, broker, metrics, the
//! session registry, and the shutdown signals.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use sluice_common::time_fmt;
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::Authenticator,
    broker::Broker,
    config::Config,
    hub::Hub,
    hub::SessionId,
    metrics::Metrics,
    session::{Mailbox, Signal},
};

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub sessions: SessionRegistry,
    /// Open connections per client (`net::cap_key`: IPv4 address or IPv6 /64), for
    /// `SLUICE_MAX_CONNECTIONS_PER_IP`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Admitted connections, for `SLUICE_MAX_CONNECTIONS`: every accepted TCP
    /// connection (before its request, idle between requests, or upgraded).
    admitted: AtomicUsize,
    /// Set when the node starts draining: `/ready` answers 503, upgrades are refused.
    pub draining: AtomicBool,
    /// Cancelled when the node stops: background tasks end.
    pub shutdown: CancellationToken,
    /// Cancelled to simulate a crash: sessions drop their sockets without a close frame
    /// (each open session is also signalled; one starting later checks this).
    pub killed: CancellationToken,
    /// Every session task, so shutdown can wait for them (axum's `on_upgrade`
    /// spawns outside graceful shutdown).
    pub tracker: TaskTracker,
    pub started: Instant,
    /// Start time in protocol format, for the registry.
    pub started_at: String,
    next_session: AtomicU64,
}

impl AppState {
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        auth: Authenticator,
    ) -> Self {
        AppState {
            config,
            hub,
            broker,
            metrics,
            auth,
            sessions: SessionRegistry::default(),
            per_ip: Mutex::new(HashMap::new()),
            admitted: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            killed: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            started_at: time_fmt::now(),
            next_session: AtomicU64::new(1),
        }
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Reserves one of `SLUICE_MAX_CONNECTIONS` slots atomically, so a burst of
    /// simultaneous connections cannot overshoot; `None` when the node is full. The
    /// accept loop takes one per TCP connection; an upgrade carries it into its
    /// session.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admission> {
        let max = self.config.max_connections;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission {
                state: self.clone(),
                ip: None,
            })
    }

    /// Counts a connection from `ip`; false (nothing counted) when the IP is at its limit.
    fn try_add_ip(&self, ip: IpAddr) -> bool {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    fn remove_ip(&self, ip: IpAddr) {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// A connection's place under the node's limits; released when dropped, however
/// the upgrade or the session ends.
#[derive(Debug)]
pub struct Admission {
    state: Arc<AppState>,
    ip: Option<IpAddr>,
}

impl Admission {
    /// Also takes a slot of the client's budget (its IPv4 address, or the /64 of
    /// its IPv6 address); gives the admission back when that budget is spent.
    /// Taking a second one first releases the first.
    pub fn with_ip(mut self, ip: IpAddr) -> Result<Self, Self> {
        if let Some(old) = self.ip.take() {
            self.state.remove_ip(old);
        }
        let key = crate::net::cap_key(ip);
        if self.state.try_add_ip(key) {
            self.ip = Some(key);
            Ok(self)
        } else {
            Err(self)
        }
    }

    /// The session `id`, admitted under this, has ended: unregisters it and gives the
    /// slot back.
    pub fn session_ended(self, id: SessionId) {
        let state = self.state.clone();
        state.sessions.remove(id);
        drop(self);
        state.metrics.session_closed();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state.admitted.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            self.state.remove_ip(ip);
        }
    }
}

/// What `/connections` shows of a session (its subscriptions come from the hub),
/// and its mailbox: how the hub, the drain and a kill reach it. One allocation per
/// session, shared by the session task, the registry and the hub.
#[derive(Debug)]
pub struct SessionInfo {
    pub connection_id: uuid::Uuid,
    pub client_ip: SocketAddr,
    /// Unix ms when the connection was accepted.
    pub connected_ms: i64,
    /// Unix ms of the last frame (of any kind) from the client.
    pub last_seen_ms: AtomicI64,
    /// The token's subject, when the session is authenticated.
    pub user: Option<String>,
    /// `x-device-type` from the upgrade request, sanitized and bounded.
    pub device_type: Option<String>,
    /// `x-client-version` from the upgrade request, sanitized and bounded.
    pub client_version: Option<String>,
    /// Publications queued for the session, and the signals that end it.
    pub mailbox: Mailbox,
}

impl SessionInfo {
    /// `queue_size`: how many publications may wait for the session (`SLUICE_QUEUE_SIZE`).
    pub fn new(client_ip: SocketAddr, user: Option<String>, queue_size: usize) -> Self {
        let now = time_fmt::now_ms();
        SessionInfo {
            connection_id: uuid::Uuid::new_v4(),
            client_ip,
            connected_ms: now,
            last_seen_ms: AtomicI64::new(now),
            user,
            device_type: None,
            client_version: None,
            mailbox: Mailbox::new(queue_size),
        }
    }

    /// What the client said about itself at the upgrade (mobile headers).
    pub fn with_client(
        mut self,
        device_type: Option<String>,
        client_version: Option<String>,
    ) -> Self {
        self.device_type = device_type;
        self.client_version = client_version;
        self
    }

    pub fn touch(&self) {
        self.last_seen_ms
            .store(time_fmt::now_ms(), Ordering::Relaxed);
    }

    /// Makes the session close with 1012 (drain).
    pub fn stop(&self) {
        self.mailbox.signal(Signal::Stop);
    }
}

/// The sessions of this node, for `/connections` and for draining.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    inner: Mutex<HashMap<SessionId, Arc<SessionInfo>>>,
}

impl SessionRegistry {
    pub fn insert(&self, id: SessionId, info: Arc<SessionInfo>) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, info);
    }

    pub fn remove(&self, id: SessionId) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Every session with its id.
    pub fn entries(&self) -> Vec<(SessionId, Arc<SessionInfo>)> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    pub fn snapshot(&self) -> Vec<Arc<SessionInfo>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
