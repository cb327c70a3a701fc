//! What a session reaches of its node, and nothing more: no HTTP state, no session
//! registry, no admission counters. One per node, shared by every session.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio_util::sync::CancellationToken;

use crate::{auth::Authenticator, broker::Broker, config::Config, hub::Hub, metrics::Metrics};

#[derive(Debug)]
pub struct SessionContext {
    pub config: Arc<Config>,
    /// Where a session joins and leaves topics (the hub tells the broker).
    pub hub: Arc<Hub>,
    /// For reads only: a topic's state and history.
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// Checks refreshed tokens.
    pub auth: Arc<Authenticator>,
    pub lifecycle: Arc<Lifecycle>,
}

/// Whether the node is draining or was killed, as sessions see it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Set when the node starts draining: `/ready` answers 503, upgrades are refused.
    pub draining: AtomicBool,
    /// Cancelled to simulate a crash: sessions drop their sockets without a close frame
    /// (each open session is also signalled; one starting later checks this).
    pub killed: CancellationToken,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
