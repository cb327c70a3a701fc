//! Keeping the `sluice` function library on every master: loading it (on each
//! primary of a Cluster), checking it is still listed, and noticing when the
//! Cluster's primaries change (a failover or a resharding brings a new master).

use fred::{
    error::Error as RedisError,
    interfaces::{ClientLike, ClusterInterface},
};
use sluice_common::redis_client;

use super::{errors::from_failure, BrokerError, RedisBroker};

impl RedisBroker {
    /// `FUNCTION LOAD REPLACE` of the library on every master (each primary on
    /// Cluster).
    pub(super) async fn load_library(&self) -> Result<(), BrokerError> {
        redis_client::load_library(self.pool.next(), &self.library)
            .await
            .map_err(|f| match from_failure(f) {
                BrokerError::Unavailable(m) => {
                    BrokerError::NotLoaded(format!("loading the sluice function library: {m}"))
                }
                other => other,
            })
    }

    /// The Cluster's primaries now (empty when not on Cluster).
    pub(super) fn current_primaries(&self) -> Vec<String> {
        let client = self.pool.next();
        if !client.is_clustered() {
            return Vec::new();
        }
        let mut out: Vec<String> = client
            .cached_cluster_state()
            .map(|s| {
                s.unique_primary_nodes()
                    .iter()
                    .map(|p| format!("{}:{}", p.host, p.port))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Records the primaries; true when the set differs from the last one seen (a
    /// failover or resharding brought a new master).
    pub(super) fn primaries_changed(&self) -> bool {
        let now = self.current_primaries();
        let mut seen = self.primaries.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return false;
        }
        *seen = now;
        true
    }

    /// Whether the `sluice` library is loaded on every master (true when the check
    /// itself fails, so a probe error never triggers a reload storm).
    pub(super) async fn library_loaded(&self) -> bool {
        let client = self.pool.next();
        let list = || {
            (
                fred::cmd!("FUNCTION"),
                vec!["LIST", "LIBRARYNAME", "sluice"],
            )
        };
        let answers: Vec<Result<fred::types::Value, RedisError>> = if client.is_clustered() {
            let primaries = client
                .cached_cluster_state()
                .map(|s| s.unique_primary_nodes())
                .unwrap_or_default();
            let mut out = Vec::with_capacity(primaries.len());
            for p in primaries {
                let (cmd, args) = list();
                out.push(client.with_cluster_node(p).custom(cmd, args).await);
            }
            out
        } else {
            let (cmd, args) = list();
            vec![client.custom(cmd, args).await]
        };
        answers.into_iter().all(|a| match a {
            Ok(fred::types::Value::Array(libs)) => !libs.is_empty(),
            Ok(_) | Err(_) => true,
        })
    }
}
