//! CPU readings for a measured window: the system under test's process tree,
//! Redis's own (from `INFO cpu`) and the load generator's, as percentages.

use std::time::Instant;

use fred::{clients::Client as RedisClient, interfaces::ClientLike};

use crate::{procfs, report::Cpu};

/// Redis's own CPU seconds (user + sys) from INFO.
pub async fn redis_cpu(client: &RedisClient) -> Option<f64> {
    let info: String = client.info(Some(fred::types::InfoKind::Cpu)).await.ok()?;
    sluice_common::redis_info::cpu_seconds(&info)
}

pub async fn redis_stats_client(url: Option<&str>) -> Option<RedisClient> {
    let config = fred::types::config::Config::from_url(url?).ok()?;
    let client = fred::types::Builder::from_config(config).build().ok()?;
    client.init().await.ok()?;
    Some(client)
}

/// CPU readings at the start of a window; `finish` turns them into percentages.
#[derive(Debug)]
pub struct CpuMeter {
    at: Instant,
    server: Option<f64>,
    redis: Option<f64>,
    own: f64,
}

impl CpuMeter {
    pub async fn start(server_pids: &[u32], redis: Option<&RedisClient>) -> Self {
        CpuMeter {
            at: Instant::now(),
            server: (!server_pids.is_empty()).then(|| procfs::tree_cpu_seconds(server_pids)),
            redis: match redis {
                Some(r) => redis_cpu(r).await,
                None => None,
            },
            own: procfs::tree_cpu_seconds(&[std::process::id()]),
        }
    }

    /// (percentages, Redis CPU seconds used).
    pub async fn finish(
        &self,
        server_pids: &[u32],
        redis: Option<&RedisClient>,
    ) -> (Cpu, Option<f64>) {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let pct = |used: f64| (used / secs * 1000.0).round() / 10.0;
        let redis_used = match (redis, self.redis) {
            (Some(r), Some(before)) => redis_cpu(r).await.map(|now| now - before),
            _ => None,
        };
        let cpu = Cpu {
            server: self
                .server
                .map(|before| pct(procfs::tree_cpu_seconds(server_pids) - before)),
            redis: redis_used.map(pct),
            loadtest: pct(procfs::tree_cpu_seconds(&[std::process::id()]) - self.own),
        };
        (cpu, redis_used)
    }
}
