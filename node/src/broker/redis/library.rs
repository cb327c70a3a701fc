//! Keeping the `sluice` function library on every master: loading it (on each
//! primary of a Cluster) by the version rule of `sluice_common::function_library`
//! (never over a newer version), checking every few seconds that no master lost it
//! or got an older one (an older node restarting in a rolling upgrade), and
//! noticing when the Cluster's primaries change (a failover or a resharding brings
//! a new master).

use fred::interfaces::{ClientLike, ClusterInterface};
use sluice_common::function_library::{
    ensure_library, version_of, MasterLibrary, Outcome, Replace,
};
use tracing::{debug, info, warn};

use super::{errors::from_failure, BrokerError, RedisBroker};

impl RedisBroker {
    /// Loads the library on every master that lacks it or holds an older version
    /// (with [`Replace::IfOlderOrOtherText`] also over the same version with other
    /// history settings); a newer one stays. Logs what changed.
    pub(super) async fn load_library(&self, replace: Replace) -> Result<(), BrokerError> {
        let report = ensure_library(self.pool.next(), &self.library, replace)
            .await
            .map_err(|f| match from_failure(f) {
                BrokerError::Unavailable(m) => {
                    BrokerError::NotLoaded(format!("loading the sluice function library: {m}"))
                }
                other => other,
            })?;
        self.note_library(&report);
        Ok(())
    }

    /// The periodic check: loads this node's library where a master lost it or
    /// holds an older version (an older node or engine replaced it); leaves the
    /// same and newer versions alone. A failed read changes nothing (a probe error
    /// must never start a reload storm).
    pub(super) async fn check_library(&self) {
        match ensure_library(self.pool.next(), &self.library, Replace::IfOlder).await {
            Ok(report) => self.note_library(&report),
            Err(e) => debug!(error = %e, "function library check incomplete"),
        }
    }

    /// Logs what a load or check did, each change once: a master that had no
    /// library or an older one (info, warn), and a newer library than this node's
    /// (warn when first seen or when its version changes, not on every check).
    fn note_library(&self, report: &[MasterLibrary]) {
        let ours = version_of(&self.library);
        for m in report.iter().filter(|m| m.outcome == Outcome::Loaded) {
            match m.found {
                None => info!(master = %m.master, version = ours, "function library loaded"),
                Some(v) if v < ours => warn!(
                    master = %m.master,
                    loaded = v,
                    ours,
                    "an older sluice function library was loaded (an older node or engine); replaced with this node's"
                ),
                Some(_) => info!(
                    master = %m.master,
                    version = ours,
                    "function library reloaded with this node's history settings"
                ),
            }
        }
        let newer = report
            .iter()
            .filter(|m| m.outcome == Outcome::KeptNewer)
            .filter_map(|m| m.found)
            .max();
        let mut seen = self.newer_library.lock().unwrap_or_else(|e| e.into_inner());
        if *seen != newer {
            match newer {
                Some(v) => warn!(
                    loaded = v,
                    ours,
                    "a newer sluice function library is loaded than this node's: left in place (this node is the older one)"
                ),
                None => info!(version = ours, "no newer sluice function library is loaded any more"),
            }
            *seen = newer;
        }
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
}
