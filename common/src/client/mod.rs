//! A reconnecting Sluice client for Rust engines, bots, tests and the load
//! generator (feature `client`).
//!
//! States go `Connecting → Connected → Reconnecting → Connected …`, ending in
//! `Disconnected` when closed or out of attempts. Every reconnect re-subscribes each
//! topic with `resume_from_seq = last + 1` and the epoch last seen, drops anything
//! already delivered, and reports `recovered: false` to the application (its state
//! must then be rebuilt from the snapshot that follows). Frames sent while offline
//! wait in a bounded queue that drops its oldest entry when full.
//!
//! `wss://` goes through rustls. The backoff between attempts grows while
//! connections keep failing or dying young, and starts over only after a connection
//! has lived one heartbeat interval.

mod backoff;
mod conn;
mod dial;
mod inflate;
mod tracker;

use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::Value;
use tokio::sync::mpsc;

pub use backoff::{Backoff, Jitter};
pub use inflate::{gunzip, InflateError};
/// The rustls the client is built with, for callers that build [`ClientConfig::tls`]
/// themselves.
pub use rustls;
pub use tracker::Tracker;

use crate::{lock::MutexExt, protocol::ServerFrame};

/// How to connect and reconnect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Tried in turn after each failure; usually one URL behind a load balancer.
    pub urls: Vec<String>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    pub backoff: Backoff,
    /// Consecutive failed attempts before giving up; `None`: never give up.
    pub max_attempts: Option<u32>,
    /// Frames kept while offline (the oldest is dropped when full).
    pub offline_queue: usize,
    /// How often to measure round-trip time with `ping`.
    pub ping_interval: Duration,
    /// Events buffered for the application before the client stops reading the
    /// socket (the server then treats it as a slow consumer and it resumes).
    pub event_buffer: usize,
    /// Largest text a compressed (gzip) binary frame may inflate to. A frame past it
    /// is refused and the connection closed with 1009, without reconnecting: a
    /// gzip bomb costs at most this much memory, never more.
    pub max_inflated_bytes: usize,
    /// TLS settings for `wss://` URLs; `None`: the system's root certificates. Use
    /// [`tls_trusting`] to trust a private CA or a self-signed certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Default of [`ClientConfig::max_inflated_bytes`]: 16 MiB.
pub const DEFAULT_MAX_INFLATED_BYTES: usize = 16 << 20;

/// A TLS configuration that trusts exactly `roots` (DER certificates), for
/// [`ClientConfig::tls`].
pub fn tls_trusting(
    roots: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| format!("bad root certificate: {e}"))?;
    }
    tls_with(store)
}

/// A TLS configuration that trusts the system's root certificates.
pub fn tls_system_roots() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no usable root certificates in the system store ({} errors); set ClientConfig::tls",
            found.errors.len()
        ));
    }
    tls_with(store)
}

/// The ring provider is named here rather than installed process-wide, so the
/// client works whatever else in the program uses rustls.
fn tls_with(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            urls: vec![url.into()],
            token: None,
            backoff: Backoff::default(),
            max_attempts: None,
            offline_queue: 1000,
            ping_interval: Duration::from_secs(15),
            event_buffer: 10_000,
            max_inflated_bytes: DEFAULT_MAX_INFLATED_BYTES,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Disconnected,
    Connecting,
    Connected,
    Reconnecting,
}

impl ClientState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Connecting,
            2 => ClientState::Connected,
            3 => ClientState::Reconnecting,
            _ => ClientState::Disconnected,
        }
    }
}

/// What the client tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `delta`, `alert` or `snapshot`; never twice for the same epoch and seq.
    Publication(ServerFrame),
    /// A subscription was made or remade. `resumed` says a position was sent;
    /// `recovered: false` then means messages were lost: rebuild from the snapshot.
    Subscribed {
        topic: String,
        resumed: bool,
        recovered: bool,
    },
    /// An `error` frame from the server.
    Error(ServerFrame),
    State(ClientState),
    /// The connection ended; `code` is the close code if the server sent one.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// Connection statistics.
#[derive(Debug, Default)]
pub struct Stats {
    pub publications: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub reconnections: AtomicU64,
    /// Last `ping` round trip, microseconds.
    pub rtt_micros: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: AtomicU8,
    pub(crate) stats: Stats,
}

impl Shared {
    pub(crate) fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn set_error(&self, e: impl Into<String>) {
        *self.stats.last_error.lock_unpoisoned() = Some(e.into());
    }
}

#[derive(Debug)]
pub(crate) enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Send(Value),
    Close,
}

/// A handle on the connection task. Dropping it closes the connection.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Starts connecting in the background; returns at once.
    pub fn connect(config: ClientConfig) -> Client {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(config.event_buffer.max(1));
        let shared = Arc::new(Shared {
            state: AtomicU8::new(ClientState::Connecting as u8),
            stats: Stats::default(),
        });
        let task = tokio::spawn(conn::run(config, command_rx, event_tx, shared.clone()));
        Client {
            commands,
            events,
            shared,
            task,
        }
    }

    /// Subscribes `topic` now and after every reconnect, resuming where it left off.
    pub fn subscribe(&self, topic: impl Into<String>) {
        let _ = self.commands.send(Command::Subscribe(topic.into()));
    }

    pub fn unsubscribe(&self, topic: impl Into<String>) {
        let _ = self.commands.send(Command::Unsubscribe(topic.into()));
    }

    /// Sends any client frame; queued (bounded, drop-oldest) while offline.
    pub fn send(&self, frame: Value) {
        let _ = self.commands.send(Command::Send(frame));
    }

    /// The next event; `None` once the client is closed and drained.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
