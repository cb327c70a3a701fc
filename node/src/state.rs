//! What every part of a running node shares: config, hub, broker, metrics, the
//! session registry, and the shutdown signals.

use sluice_common::lock::MutexExt;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
    metrics::Metrics,
    session::{Lifecycle, SessionContext, SessionId, SessionRegistry},
};

#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    pub sessions: SessionRegistry,
    /// Open connections per client (`net::cap_key`: IPv4 address or IPv6 /64), for
    /// `SLUICE_MAX_CONNECTIONS_PER_IP`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Admitted connections, for `SLUICE_MAX_CONNECTIONS`: every accepted TCP
    /// connection (before its request, idle between requests, or upgraded).
    admitted: AtomicUsize,
    /// Draining and killed: shared with every session.
    pub lifecycle: Arc<Lifecycle>,
    /// What sessions reach of the node.
    pub session: Arc<SessionContext>,
    /// Cancelled when the node stops: background tasks end.
    pub shutdown: CancellationToken,
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
        let config = Arc::new(config);
        let auth = Arc::new(auth);
        let lifecycle = Arc::new(Lifecycle::default());
        let session = Arc::new(SessionContext {
            config: config.clone(),
            hub: hub.clone(),
            broker: broker.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            lifecycle: lifecycle.clone(),
        });
        AppState {
            config,
            hub,
            broker,
            metrics,
            auth,
            lifecycle,
            session,
            sessions: SessionRegistry::default(),
            per_ip: Mutex::new(HashMap::new()),
            admitted: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
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
        self.lifecycle.is_draining()
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
        let mut map = self.per_ip.lock_unpoisoned();
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    fn remove_ip(&self, ip: IpAddr) {
        let mut map = self.per_ip.lock_unpoisoned();
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
