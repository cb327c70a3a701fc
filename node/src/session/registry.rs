//! The sessions of this node: each one's id, what others may see of it, and the
//! registry `/connections` and the drain walk.

use sluice_common::lock::MutexExt;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
};

use sluice_common::time_fmt;

use crate::hub::{Mailbox, Signal, SubscriberId};

/// Identifies a session within this node (its id as the hub's subscriber).
pub type SessionId = SubscriberId;

/// What `/connections` shows of a session (its subscriptions come from the hub),
/// and its mailbox: how the hub, the drain and a kill reach it. Shared by the
/// session task and the registry; the hub holds the mailbox alone.
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
    pub mailbox: Arc<Mailbox>,
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
            mailbox: Arc::new(Mailbox::new(queue_size)),
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
        self.inner.lock_unpoisoned().insert(id, info);
    }

    pub fn remove(&self, id: SessionId) {
        self.inner.lock_unpoisoned().remove(&id);
    }

    /// Every session with its id.
    pub fn entries(&self) -> Vec<(SessionId, Arc<SessionInfo>)> {
        self.inner
            .lock_unpoisoned()
            .iter()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    pub fn snapshot(&self) -> Vec<Arc<SessionInfo>> {
        self.inner.lock_unpoisoned().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock_unpoisoned().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
