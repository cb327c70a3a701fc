//! Continuation epochs on the live path: when a topic's stream moves to another
//! epoch, the reader reads where that epoch came from (`par` and `fork` in the
//! topic's meta, written by `sluice_publish` when a new master took over) and
//! moves its position into it instead of starting over from seq 1, and it keeps
//! the fork for the sessions ([`crate::broker::Broker::fork_of`]).

use std::sync::Arc;

use fred::interfaces::HashesInterface;
use sluice_common::{keys, position::Fork, Topic};
use tracing::{debug, warn};

use super::{unavailable, Live};

/// A topic's current epoch and, for a continuation epoch, its fork.
type EpochAndFork = (Option<Arc<str>>, Option<Fork>);

impl Live {
    /// The fork of `epoch`, when it is the continuation epoch this node last read
    /// of `topic`.
    pub(in crate::broker::redis) fn fork_of(&self, topic: &Topic, epoch: &str) -> Option<Fork> {
        let m = self.lock();
        let (e, fork) = m.get(topic)?.fork.as_ref()?;
        (**e == *epoch).then(|| fork.clone())
    }

    /// Keeps the fork of `epoch` for `topic` (read with its head, or by the reader).
    pub(in crate::broker::redis) fn learn_fork(&self, topic: &Topic, epoch: &Arc<str>, fork: Fork) {
        if let Some(f) = self.lock().get_mut(topic) {
            let newer = f.fork.as_ref().is_none_or(|(e, _)| {
                sluice_common::position::epoch_cmp(epoch, e) != std::cmp::Ordering::Less
            });
            if newer {
                f.fork = Some((epoch.clone(), fork));
            }
        }
    }

    /// Reads the topic's epoch and its fork, if it has one.
    pub(in crate::broker::redis) async fn read_fork(
        &self,
        topic: &Topic,
    ) -> Result<EpochAndFork, crate::broker::BrokerError> {
        let (epoch, parent, at): (Option<String>, Option<String>, Option<u64>) = self
            .pool
            .next()
            .hmget(keys::meta(topic.as_str()), vec!["epoch", "par", "fork"])
            .await
            .map_err(|e| unavailable("reading the topic's epoch", e.details()))?;
        let epoch = epoch.filter(|e| !e.is_empty()).map(Arc::<str>::from);
        let fork = parent.zip(at).map(|(p, at)| Fork {
            parent: p.into(),
            at,
        });
        if let (Some(e), Some(f)) = (&epoch, &fork) {
            self.learn_fork(topic, e, f.clone());
        }
        Ok((epoch, fork))
    }

    /// The topic's stream is in another epoch than the reader's position. A
    /// continuation of the position's epoch is followed on: from the same seq when
    /// the reader delivered nothing the new epoch lacks, else from the fork (the
    /// sessions that delivered more are told, [`crate::session`]). Any other epoch
    /// is a new history, read from its first seq. When the topic's epoch is still
    /// the tail's (a late message of an older epoch; or entries labelled with
    /// another epoch than meta's, which only a foreign `XADD` makes), the tail is
    /// kept, or with `reset_if_same` read again from seq 1 as any other history.
    /// Returns false when the read failed (the topic is marked stale and read
    /// again later) or nothing changed.
    pub(in crate::broker::redis) async fn switch_epoch(
        &self,
        topic: &Topic,
        reset_if_same: bool,
    ) -> bool {
        let read = self.read_fork(topic).await;
        let mut m = self.lock();
        let Some(f) = m.get_mut(topic).filter(|f| f.armed) else {
            return false;
        };
        let (epoch, fork) = match read {
            Ok(r) => r,
            Err(e) => {
                warn!(%topic, error = %e, "reading the topic's epoch failed; retrying");
                f.stale = true;
                return false;
            }
        };
        let position = f.tail.position().map(|(e, s)| (e.clone(), s));
        match (epoch, fork, position) {
            (Some(epoch), _, Some((ours, _))) if epoch == ours => {
                if !reset_if_same {
                    return false;
                }
                f.tail.reset(None, 0);
            }
            (Some(epoch), Some(fork), Some((ours, head))) if fork.parent == ours => {
                let from = head.min(fork.at.saturating_sub(1));
                debug!(%topic, %epoch, parent = %ours, at = fork.at, head, "continuation epoch");
                f.tail.reset(Some(epoch), from);
            }
            _ => f.tail.reset(None, 0),
        }
        true
    }
}
