//! Redis's own cost of a run, read from every master separately (`--redis-info`):
//! `INFO cpu` and `INFO commandstats` before and after the publishing window, so
//! a run on a 3-master Cluster reports each master's CPU and command time per
//! publish and its share of the publishes (its `fcall` calls).
//!
//! One standalone Redis is the one-master case of the same figures.

use std::collections::BTreeMap;

use anyhow::Context;
use fred::{clients::Client as RedisClient, interfaces::ClientLike};
use serde_json::{json, Map, Value};
use sluice_common::redis_info;

/// Per command: (calls, microseconds inside it).
pub type CmdTime = BTreeMap<String, (u64, u64)>;

/// One reading of one master.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// `used_cpu_sys + used_cpu_user`, seconds.
    pub cpu_s: f64,
    pub commands: CmdTime,
}

/// A connection to each named master (`host:port`, or a `redis://` URL).
#[derive(Debug)]
pub struct Masters {
    pub names: Vec<String>,
    clients: Vec<RedisClient>,
}

/// `host:port` becomes `redis://host:port`; URLs pass through.
pub fn url_of(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    }
}

impl Masters {
    pub async fn connect(addrs: &[String]) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(addrs.len());
        for a in addrs {
            let config = fred::types::config::Config::from_url(&url_of(a))
                .with_context(|| format!("--redis-info {a}: not a Redis address"))?;
            let client = fred::types::Builder::from_config(config).build()?;
            client
                .init()
                .await
                .with_context(|| format!("--redis-info {a}: cannot connect"))?;
            clients.push(client);
        }
        Ok(Masters {
            names: addrs.to_vec(),
            clients,
        })
    }

    /// One sample per master, in the order named.
    pub async fn sample(&self) -> anyhow::Result<Vec<Sample>> {
        let mut out = Vec::with_capacity(self.clients.len());
        for (c, name) in self.clients.iter().zip(&self.names) {
            let cpu: String = c
                .info(Some(fred::types::InfoKind::Cpu))
                .await
                .with_context(|| format!("INFO cpu on {name}"))?;
            let stats: String = c
                .info(Some(fred::types::InfoKind::CommandStats))
                .await
                .with_context(|| format!("INFO commandstats on {name}"))?;
            out.push(Sample {
                cpu_s: redis_info::cpu_seconds(&cpu)
                    .with_context(|| format!("INFO cpu on {name}"))?,
                commands: redis_info::command_stats(&stats),
            });
        }
        Ok(out)
    }
}

/// What one master did between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterDelta {
    pub cpu_s: f64,
    /// Per command that ran: (calls, µs).
    pub commands: CmdTime,
}

pub fn delta(before: &Sample, after: &Sample) -> MasterDelta {
    let commands = after
        .commands
        .iter()
        .map(|(k, &(c, u))| {
            let (c0, u0) = before.commands.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (c.saturating_sub(c0), u.saturating_sub(u0)))
        })
        .filter(|(_, (c, _))| *c > 0)
        .collect();
    MasterDelta {
        cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
        commands,
    }
}

/// Commands whose time a publish causes on the master that owns its topic: the
/// function call (with what it runs inside, which `commandstats` counts again
/// under its own name) and the nodes' reads.
const COST_COMMANDS: &[&str] = &["fcall", "fcall_ro", "xread", "xrange", "xrevrange"];

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The report's `masters` entry: per master, CPU µs and command µs per publish
/// (over *all* publishes of the run, so the figures of the masters add up to the
/// cluster's cost per publish), its share of the `fcall`s, and µs per publish of
/// every command that ran.
pub fn report(names: &[String], deltas: &[MasterDelta], publishes: u64) -> Value {
    let per = |x: f64| {
        if publishes == 0 {
            0.0
        } else {
            round2(x / publishes as f64)
        }
    };
    let fcalls_total: u64 = deltas
        .iter()
        .map(|d| d.commands.get("fcall").map_or(0, |c| c.0))
        .sum();
    let masters: Vec<Value> = names
        .iter()
        .zip(deltas)
        .map(|(name, d)| {
            let fcalls = d.commands.get("fcall").map_or(0, |c| c.0);
            let cmd_us: u64 = d
                .commands
                .iter()
                .filter(|(k, _)| COST_COMMANDS.contains(&k.as_str()))
                .map(|(_, (_, u))| *u)
                .sum();
            let by_command: Map<String, Value> = d
                .commands
                .iter()
                .map(|(k, (c, u))| (k.clone(), json!({"calls": c, "us_per_publish": per(*u as f64)})))
                .collect();
            json!({
                "master": name,
                "cpu_us_per_publish": per(d.cpu_s * 1e6),
                "cmd_us_per_publish": per(cmd_us as f64),
                "fcalls": fcalls,
                "publish_share": if fcalls_total == 0 { 0.0 } else { round3(fcalls as f64 / fcalls_total as f64) },
                "commands": by_command,
            })
        })
        .collect();
    let cpu: f64 = deltas.iter().map(|d| d.cpu_s).sum();
    json!({
        "masters": masters,
        "redis_cpu_us_per_publish_all_masters": per(cpu * 1e6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls() {
        assert_eq!(url_of("127.0.0.1:7001"), "redis://127.0.0.1:7001");
        assert_eq!(url_of("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn each_master_reports_its_share_and_cost_per_publish() {
        let s = |cpu: f64, fcall: (u64, u64), xread: (u64, u64)| Sample {
            cpu_s: cpu,
            commands: [("fcall".into(), fcall), ("xread".into(), xread)]
                .into_iter()
                .collect(),
        };
        let before = [s(1.0, (10, 100), (0, 0)), s(2.0, (0, 0), (5, 50))];
        let after = [s(1.3, (310, 9100), (0, 0)), s(2.1, (100, 3000), (5, 50))];
        let deltas: Vec<MasterDelta> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| delta(b, a))
            .collect();
        // An unchanged command drops out of the delta.
        assert!(!deltas[1].commands.contains_key("xread"));
        let names = vec!["a:1".to_owned(), "b:2".to_owned()];
        let r = report(&names, &deltas, 400);
        let m = r["masters"].as_array().expect("masters");
        assert_eq!(m[0]["fcalls"], 300);
        assert_eq!(m[0]["publish_share"], 0.75);
        assert_eq!(m[1]["publish_share"], 0.25);
        // 0.3 s of CPU over 400 publishes: 750 µs; 9000 µs of fcall: 22.5 µs.
        assert_eq!(m[0]["cpu_us_per_publish"], 750.0);
        assert_eq!(m[0]["cmd_us_per_publish"], 22.5);
        assert_eq!(m[1]["cmd_us_per_publish"], 7.5);
        assert_eq!(r["redis_cpu_us_per_publish_all_masters"], 1000.0);
        assert_eq!(
            report(&names, &deltas, 0)["masters"][0]["cpu_us_per_publish"],
            0.0
        );
    }
}
