//! The wait for replicas after a publish (`SLUICE_PUBLISH_REPLICAS`): `WAIT n ms`
//! on the connection that wrote, sent to the topic's master, with `auto` knowing
//! how many replicas each master has. Shared by the node's broker and `Publisher`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, ClusterInterface, ServerInterface},
    types::{config::Server, InfoKind},
};

use crate::{
    redis_client::{classify, RedisFailure, Replicas},
    StreamPosition,
};

/// How long a master's replica count is trusted before `INFO replication` again.
const REPLICA_COUNT_TTL: Duration = Duration::from_secs(1);

/// A publish that Redis took but that too few replicas confirmed in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "published as seq {} (epoch {}), but {acked} of {wanted} replica(s) confirmed it within \
     {timeout_ms} ms: it may be lost if the master fails now", position.seq, position.epoch
)]
pub struct NotReplicated {
    pub position: StreamPosition,
    pub acked: u32,
    pub wanted: u32,
    pub timeout_ms: u64,
}

/// `WAIT`s for replicas after a publish, knowing how many each master has.
#[derive(Debug)]
pub struct ReplicaWait {
    replicas: Replicas,
    timeout: Duration,
    /// Connected replicas per master (`host:port`), with when it was read.
    counts: Mutex<HashMap<String, (u32, Instant)>>,
}

impl ReplicaWait {
    pub fn new(replicas: Replicas, timeout: Duration) -> Self {
        ReplicaWait {
            replicas,
            timeout,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// After a publish to `topic` through `client`: waits until the wanted number of
    /// replicas hold it (`WAIT n ms` on the connection that wrote it, on the topic's
    /// master). `Ok` when none is wanted or all confirmed.
    pub async fn wait(
        &self,
        client: &Client,
        topic: &str,
        position: StreamPosition,
    ) -> Result<StreamPosition, WaitFailure> {
        let master = master_of(client, topic);
        let wanted = match self.replicas {
            Replicas::Exactly(n) => n,
            Replicas::Auto => self.replica_count(client, master.as_ref()).await.min(1),
        };
        if wanted == 0 {
            return Ok(position);
        }
        let timeout_ms = self.timeout.as_millis() as i64;
        let acked: Result<i64, _> = match &master {
            Some(server) => {
                client
                    .with_cluster_node(server)
                    .wait(i64::from(wanted), timeout_ms)
                    .await
            }
            None => client.wait(i64::from(wanted), timeout_ms).await,
        };
        let acked = acked.map_err(|e| WaitFailure::Redis(classify(&e)))?;
        let acked = u32::try_from(acked.max(0)).unwrap_or(u32::MAX);
        if acked >= wanted {
            Ok(position)
        } else {
            Err(WaitFailure::NotReplicated(NotReplicated {
                position,
                acked,
                wanted,
                timeout_ms: self.timeout.as_millis() as u64,
            }))
        }
    }

    /// The master's connected replicas, read at most once a second per master.
    async fn replica_count(&self, client: &Client, master: Option<&Server>) -> u32 {
        let key = master
            .map(|s| format!("{}:{}", s.host, s.port))
            .unwrap_or_default();
        if let Some((n, at)) = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if at.elapsed() < REPLICA_COUNT_TTL {
                return *n;
            }
        }
        let info: Result<String, _> = match master {
            Some(server) => {
                client
                    .with_cluster_node(server)
                    .info(Some(InfoKind::Replication))
                    .await
            }
            None => client.info(Some(InfoKind::Replication)).await,
        };
        // Unknown (the read failed): assume none, so a publish is not held up by a
        // wait that cannot succeed; the next call asks again.
        let Ok(info) = info else { return 0 };
        let n = connected_replicas(&info);
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (n, Instant::now()));
        n
    }
}

/// Why a replica wait failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitFailure {
    #[error(transparent)]
    NotReplicated(NotReplicated),
    #[error("waiting for replicas: {0}")]
    Redis(RedisFailure),
}

/// `connected_slaves:N` of `INFO replication` (0 when absent).
fn connected_replicas(info: &str) -> u32 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// On Cluster, the primary that owns `topic`'s slot (the key of `sluice_publish`).
fn master_of(client: &Client, topic: &str) -> Option<Server> {
    if !client.is_clustered() {
        return None;
    }
    let slot = fred::util::redis_keyslot(topic.as_bytes());
    client
        .cached_cluster_state()
        .and_then(|state| state.get_server(slot).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_count_is_read_from_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=...\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(connected_replicas("role:master\r\n"), 0);
    }
}
