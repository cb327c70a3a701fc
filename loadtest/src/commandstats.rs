//! Redis commands a stretch of a run caused, from `INFO commandstats`: samples,
//! their differences, and the share a publish accounts for, so a scenario can
//! report what its storm cost Redis apart from the publishing that goes on
//! meanwhile.
//!
//! `INFO commandstats` counts every command Redis runs, those a function runs
//! included: `FCALL_RO sluice_history` shows up as `fcall_ro` plus its inner
//! `hget` and `xrange`.

use std::collections::BTreeMap;

use fred::{clients::Client as RedisClient, interfaces::ClientLike};

/// Calls per command (lower case, `client|id` for subcommands).
pub type Calls = BTreeMap<String, u64>;

/// Commands that only read: what a resume costs.
pub const READS: &[&str] = &[
    "fcall_ro",
    "evalsha_ro",
    "eval_ro",
    "hmget",
    "hget",
    "hgetall",
    "xrange",
    "xrevrange",
    "get",
    "mget",
    "exists",
];

/// One sample, `None` when Redis is not reachable.
pub async fn sample(client: &RedisClient) -> Option<Calls> {
    let info: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .ok()?;
    Some(sluice_common::redis_info::command_calls(&info))
}

/// `later - earlier` per command (a command missing from `earlier` had 0 calls).
pub fn delta(earlier: &Calls, later: &Calls) -> Calls {
    later
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*earlier.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Reads that `sluice_publish` runs itself (its `HMGET` of the topic's meta); other
/// reads in a publishing-only stretch are background work (a reader reconciling
/// after a hiccup), not a cost per publish.
pub const PUBLISH_READS: &[&str] = &["hmget"];

/// The calls of `window` not explained by its `publishes`, given a `baseline`
/// stretch of `baseline_publishes` publishes and nothing else: per command,
/// `window - baseline * publishes / baseline_publishes`, rounded, at least 0.
/// Reads other than [`PUBLISH_READS`] are never taken out.
pub fn beyond_publishing(
    window: &Calls,
    publishes: u64,
    baseline: &Calls,
    baseline_publishes: u64,
) -> Calls {
    window
        .iter()
        .map(|(k, v)| {
            let by_publishes = !READS.contains(&k.as_str()) || PUBLISH_READS.contains(&k.as_str());
            let per_publish = match (baseline.get(k), baseline_publishes) {
                (Some(b), n) if n > 0 && by_publishes => *b as f64 / n as f64,
                _ => 0.0,
            };
            let expected = (per_publish * publishes as f64).round() as u64;
            (k.clone(), v.saturating_sub(expected))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The read commands of `calls` and their sum.
pub fn reads(calls: &Calls) -> (Calls, u64) {
    let reads: Calls = calls
        .iter()
        .filter(|(k, _)| READS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let total = reads.values().sum();
    (reads, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(v: &[(&str, u64)]) -> Calls {
        v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    }

    #[test]
    fn the_delta_keeps_only_commands_that_ran() {
        let before = calls(&[("fcall_ro", 2), ("ping", 5)]);
        let after = calls(&[("fcall_ro", 12), ("ping", 5), ("hmget", 3)]);
        assert_eq!(
            delta(&before, &after),
            calls(&[("fcall_ro", 10), ("hmget", 3)])
        );
    }

    #[test]
    fn what_publishing_explains_is_taken_out() {
        // Baseline: 100 publishes ran 100 FCALLs and 100 inner HMGETs.
        // (and a reader's reconcile ran 10 XREVRANGEs: not a cost per publish).
        let baseline = calls(&[
            ("fcall", 100),
            ("hmget", 100),
            ("xread", 50),
            ("xrevrange", 10),
        ]);
        // The storm window: 40 publishes, and the storm's 4 head reads, 4 histories
        // and 4 follows.
        let window = calls(&[
            ("fcall", 40),
            ("hmget", 44),
            ("fcall_ro", 4),
            ("xread", 21),
            ("xrevrange", 4),
        ]);
        let storm = beyond_publishing(&window, 40, &baseline, 100);
        assert_eq!(
            storm,
            calls(&[
                ("hmget", 4),
                ("fcall_ro", 4),
                ("xread", 1),
                ("xrevrange", 4)
            ])
        );
        assert_eq!(
            reads(&storm),
            (
                calls(&[("hmget", 4), ("fcall_ro", 4), ("xrevrange", 4)]),
                12
            )
        );
        // Without a baseline nothing is taken out.
        assert_eq!(beyond_publishing(&window, 40, &Calls::new(), 0), window);
    }
}
