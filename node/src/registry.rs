//! The cluster registry: each node keeps a short-lived record of itself in the
//! broker (Redis, or the embedded broker for a single node), refreshed every third
//! of `SLUICE_REGISTRY_TTL`. A node that dies stops refreshing and drops out when
//! its record expires; a draining node says so at once; a clean exit removes it.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use tracing::warn;

use crate::state::AppState;

/// This node's record as it is stored.
pub fn record(st: &AppState) -> Value {
    json!({
        "node_id": st.config.node_id,
        "address": st.config.advertise_addr,
        "connections": st.sessions.len(),
        "subscriptions": st.hub.topic_count(),
        "started_at": st.started_at,
        "version": env!("CARGO_PKG_VERSION"),
        "draining": st.is_draining(),
        "redis_connected": st.broker.is_connected(),
        "updated_at": sluice_common::time_fmt::now(),
    })
}

/// Writes the record once.
pub async fn publish(st: &AppState) {
    let r = record(st).to_string();
    if let Err(e) = st
        .broker
        .register_node(&st.config.node_id, &r, st.config.registry_ttl)
        .await
    {
        warn!(error = %e, "could not refresh the cluster registry record");
    }
}

/// Refreshes the record until the node shuts down.
pub async fn run(st: Arc<AppState>) {
    let every = (st.config.registry_ttl / 3).max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tick.tick() => publish(&st).await,
        }
    }
}

/// The live nodes' records, parsed; unreadable ones are skipped.
pub async fn live(st: &AppState) -> Result<Vec<Value>, crate::broker::BrokerError> {
    let mut nodes: Vec<Value> = st
        .broker
        .live_nodes()
        .await?
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect();
    nodes.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    Ok(nodes)
}
