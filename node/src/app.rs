//! The composition root: builds metrics, hub, broker and router, serves, and shuts
//! down in order: readiness 503 → refuse upgrades → close sessions with 1012 spread
//! over the drain period → wait for them under a deadline → stop the listener and the
//! broker.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    broker::{coalesce::Coalescing, memory::MemoryBroker, redis::RedisBroker, Broker},
    config::Config,
    http,
    hub::Hub,
    metrics::Metrics,
    publication::Origin,
    state::AppState,
};

/// Extra time after the drain period for the last close frames to go out.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(6);

/// A node serving in this process.
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

/// Binds, builds everything and starts serving; returns once the port is open.
pub async fn start(config: Config) -> anyhow::Result<RunningNode> {
    let auth = crate::auth::Authenticator::from_config(&config)
        .map_err(|e| anyhow::anyhow!("JWT key: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone(), config.max_topics));
    let mut background = Vec::new();
    let broker: Arc<dyn Broker> = match &config.redis_url {
        None => {
            let memory = Arc::new(MemoryBroker::new(
                hub.clone(),
                Origin::new(&config.node_id),
                config.history_size,
                config.history_ttl,
            ));
            let sweeper = memory.clone();
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    sweeper.sweep();
                }
            }));
            memory
        }
        // Concurrent reads of one topic share one Redis read (a resume storm costs
        // a read per topic, not per client); the memory broker's reads are a lock
        // away and gain nothing.
        Some(url) => Arc::new(Coalescing::new(
            RedisBroker::connect(
                url,
                &config.redis,
                hub.clone(),
                Origin::new(&config.node_id),
                metrics.clone(),
                config.history_size,
                config.history_ttl,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        )),
    };
    // The hub tells the broker which topics to follow.
    hub.attach(&broker);
    let listener = listen(config.bind)
        .with_context(|| format!("cannot listen on {} ({})", config.bind, crate::config::BIND))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState::new(config, hub, broker, metrics.clone(), auth));
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.upkeep();
        }
    }));
    crate::registry::publish(&state).await;
    background.push(tokio::spawn(crate::registry::run(state.clone())));
    let app = http::router(state.clone());
    let server = tokio::spawn(crate::net::serve(listener, app, state.clone()));
    info!(node = %state.config.node_id, %addr, broker = if state.config.redis_url.is_some() { "redis" } else { "memory" }, "sluice node serving");
    Ok(RunningNode {
        addr,
        state,
        server,
        background,
    })
}

/// How long shutdown waits on each of its Redis steps (registry, broker stop): a node
/// whose Redis is down still exits.
const REGISTRY_WAIT: Duration = Duration::from_secs(2);

impl RunningNode {
    /// Drains and stops the node; returns when it is down or the deadline passed.
    pub async fn shutdown(self) {
        let st = self.state.clone();
        st.lifecycle
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        // Tell the cluster at once rather than at the next refresh, but never wait
        // long on it: with Redis down, a registry write would wait for a reconnect.
        if tokio::time::timeout(REGISTRY_WAIT, crate::registry::publish(&st))
            .await
            .is_err()
        {
            warn!("registry: could not mark this node draining (Redis unreachable?)");
        }
        let sessions = st.sessions.snapshot();
        let drain = st.config.drain;
        info!(
            sessions = sessions.len(),
            drain_ms = drain.as_millis() as u64,
            "draining"
        );
        let start = tokio::time::Instant::now();
        let n = sessions.len().max(1) as u32;
        for (i, s) in sessions.iter().enumerate() {
            // Spread the closes so clients do not all reconnect in the same instant.
            tokio::time::sleep_until(start + drain * i as u32 / n).await;
            s.stop();
        }
        // Sessions that registered after the list above was taken.
        for s in st.sessions.snapshot() {
            s.stop();
        }
        st.tracker.close();
        if tokio::time::timeout(SHUTDOWN_SLACK, st.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                left = st.sessions.len(),
                "sessions still open at the shutdown deadline"
            );
        }
        st.shutdown.cancel();
        if tokio::time::timeout(REGISTRY_WAIT, st.broker.deregister_node(&st.config.node_id))
            .await
            .is_err()
        {
            warn!("registry: could not remove this node's record; it expires with its TTL");
        }
        if tokio::time::timeout(REGISTRY_WAIT, st.broker.shutdown())
            .await
            .is_err()
        {
            warn!("broker did not stop within {REGISTRY_WAIT:?}");
        }
        if tokio::time::timeout(Duration::from_secs(2), self.server)
            .await
            .is_err()
        {
            warn!("HTTP server did not stop within 2s");
        }
        for t in self.background {
            t.abort();
        }
        info!("node stopped");
    }

    /// Stops the node abruptly, as a crash would: no close frames.
    pub fn kill(self) {
        // Sessions that register after the snapshot see the token when they start.
        self.state.lifecycle.killed.cancel();
        for s in self.state.sessions.snapshot() {
            s.mailbox.signal(crate::hub::Signal::Killed);
        }
        self.server.abort();
        for t in self.background {
            t.abort();
        }
        self.state.shutdown.cancel();
    }
}

/// Runs a node until SIGTERM or SIGINT, then drains. A second signal exits at once.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let node = start(config).await?;
    shutdown_signal().await;
    info!("shutdown signal received");
    tokio::spawn(async {
        shutdown_signal().await;
        warn!("second signal: exiting now");
        std::process::exit(1);
    });
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Connections the kernel may hold waiting for `accept` (it caps this at
/// `net.core.somaxconn`, 4096 on current kernels). `TcpListener::bind` asks for
/// 1024; when a node dies and thousands of clients reconnect to this one at once,
/// a full queue drops their SYNs and each dropped client waits a 1 s (then 3 s)
/// retransmit — measured: 5000 reconnects took 6.5 s with the short queue.
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds the listening socket with a deep accept queue and `SO_REUSEADDR`, so a
/// restarted node can bind while old connections linger in TIME_WAIT.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
