//! What every part of a running node shares: config, hub, broker, metrics, the
//! session registry, and the shutdown signals.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use sluice_common::{time_fmt, Topic};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::Authenticator, broker::Broker, config::Config, hub::Hub, hub::SessionId, metrics::Metrics,
};

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub sessions: SessionRegistry,
    /// Open connections per client IP, for `SLUICE_MAX_CONNECTIONS_PER_IP`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set when the node starts draining: `/ready` answers 503, upgrades are refused.
    pub draining: AtomicBool,
    /// Cancelled when the node stops: background tasks end.
    pub shutdown: CancellationToken,
    /// Cancelled to simulate a crash: sessions drop their sockets without a close frame.
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

    /// Counts a connection from `ip`; false (nothing counted) when the IP is at its limit.
    pub fn try_add_ip(&self, ip: IpAddr) -> bool {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    pub fn remove_ip(&self, ip: IpAddr) {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// What `/connections` shows of a session, and the handle that stops it.
#[derive(Debug)]
pub struct SessionInfo {
    pub connection_id: String,
    pub client_ip: SocketAddr,
    pub connect_time: String,
    /// Unix ms of the last frame (of any kind) from the client.
    pub last_seen_ms: AtomicI64,
    pub subscriptions: Mutex<Vec<Topic>>,
    /// The token's subject, when the session is authenticated.
    pub user: Option<String>,
    /// Cancelled to make the session close with 1012 (drain).
    pub stop: CancellationToken,
}

impl SessionInfo {
    pub fn new(client_ip: SocketAddr, user: Option<String>) -> Self {
        SessionInfo {
            connection_id: uuid::Uuid::new_v4().to_string(),
            client_ip,
            connect_time: time_fmt::now(),
            last_seen_ms: AtomicI64::new(time_fmt::now_ms()),
            subscriptions: Mutex::new(Vec::new()),
            user,
            stop: CancellationToken::new(),
        }
    }

    pub fn touch(&self) {
        self.last_seen_ms
            .store(time_fmt::now_ms(), Ordering::Relaxed);
    }

    pub fn set_subscriptions(&self, topics: Vec<Topic>) {
        *self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()) = topics;
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
