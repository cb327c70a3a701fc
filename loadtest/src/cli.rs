//! The command line: one subcommand per scenario and the dispatch. The options
//! every scenario shares live in `cli/common.rs`.

use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};

mod common;

pub use common::{default_bind_ips, parse_duration, Common};

use crate::{
    baseline, procfs,
    report::Report,
    scenario::{fanout, idle, latency, mixed_run, storm, topics},
};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-loadtest",
    version,
    about = "Load generator and benchmarks for Sluice, its peers and a raw baseline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N clients on one topic (or a few), constant publish rate.
    Fanout(#[command(flatten)] Common),
    /// Many topics with few subscribers each, Zipf-distributed publishing.
    Topics {
        #[command(flatten)]
        common: Common,
        /// Zipf exponent of topic popularity.
        #[arg(long, default_value_t = 1.0)]
        zipf: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bare XADDs to time first, for Redis cost per publish vs XADD (0: skip).
        #[arg(long, default_value_t = 20_000)]
        calibrate: u64,
        // --- scale-out benchmark (issue 12 part 6) ---
        /// Redis masters (host:port, comma-separated) whose INFO cpu and
        /// commandstats are reported one by one: a Cluster's masters.
        #[arg(long, value_delimiter = ',')]
        redis_info: Vec<String>,
    },
    /// Find the sustainable maximum, then measure latency at a share of it.
    Latency {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 0.5)]
        share: f64,
        /// Known maximum publish rate (skips the search).
        #[arg(long)]
        max_rate: Option<f64>,
        /// First rate of the search (doubles from here).
        #[arg(long, default_value_t = 50.0)]
        start_rate: f64,
        #[arg(long, default_value = "4s", value_parser = parse_duration)]
        step_duration: Duration,
        /// p99 (ms) a step must stay under to count as sustained.
        #[arg(long, default_value_t = 100.0)]
        p99_bound_ms: f64,
        #[arg(long, default_value_t = 12)]
        max_steps: u32,
    },
    /// Kill or drain a node mid-run; every client reconnects and resumes.
    Storm {
        #[command(flatten)]
        common: Common,
        /// SIGKILL this pid.
        #[arg(long, conflicts_with_all = ["drain_pid", "action_cmd"])]
        kill_pid: Option<u32>,
        /// SIGTERM this pid (graceful drain).
        #[arg(long, conflicts_with = "action_cmd")]
        drain_pid: Option<u32>,
        /// A shell command that takes the node away (e.g. `docker kill a`).
        #[arg(long)]
        action_cmd: Option<String>,
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        action_at: Duration,
    },
    /// N idle subscribed connections; the node's RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// The node's pid (its /proc/<pid>/status is read).
        #[arg(long)]
        pid: u32,
        /// How long to hold the connections after they are all open.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Attack a node for a while (expansion bombs, forbidden frames, slowloris,
    /// subscribers that never read), to run beside `fanout` ("Under attack").
    Attack {
        /// The node's WebSocket URL, e.g. ws://127.0.0.1:8080/ws.
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 2)]
        bombs: usize,
        #[arg(long, default_value_t = 1)]
        forbidden: usize,
        #[arg(long, default_value_t = 50)]
        slowloris: usize,
        #[arg(long, default_value_t = 20)]
        stalls: usize,
        /// The topic the never-reading subscribers follow.
        #[arg(long, default_value = "attack.stall")]
        stall_topic: String,
        /// The node's admin token: the attack then publishes to the stall topic.
        #[arg(long)]
        admin_token: Option<String>,
        /// Publishes per second to the stall topic.
        #[arg(long, default_value_t = 20)]
        stall_rate: u32,
        /// Payload bytes of each publish to the stall topic.
        #[arg(long, default_value_t = 16_384)]
        stall_bytes: usize,
    },
    // --- mixed traffic (issue 14 part 7) ---
    /// Auth on: 50 % market subscribers, 30 % private trading and risk streams,
    /// 20 % mobile clients in background mode; deltas and alerts. `--topics` is
    /// the number of market topics.
    Mixed {
        #[command(flatten)]
        common: Common,
        /// The nodes' SLUICE_JWT_SECRET (default: that variable): every client
        /// gets its own user's token.
        #[arg(long)]
        jwt_secret: Option<String>,
        /// Share of the private users whose risk topic gets alerts.
        #[arg(long, default_value_t = 0.25)]
        alert_share: f64,
        /// Market topics each trader also watches on its alerts' session.
        #[arg(long, default_value_t = crate::scenario::mixed::TRADER_WATCH)]
        trader_watch: usize,
        /// Zipf exponent of market topic popularity.
        #[arg(long, default_value_t = 1.0)]
        zipf: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Wait after the drain for background sessions' last conflated flush.
        #[arg(long, default_value = "2500ms", value_parser = parse_duration)]
        conflate_wait: Duration,
    },
    // --- Wildcards (issue 14): a self-contained block. ---
    /// Hold wildcard subscriptions on extra connections, to run beside `fanout`
    /// ("Wildcards" in BENCHMARKS.md).
    Patterns {
        /// The node's WebSocket URL, e.g. ws://127.0.0.1:8080/ws.
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Wildcards held in all (spread over the connections).
        #[arg(long, default_value_t = 10_000)]
        patterns: usize,
        /// How many of them match the fan-out topics (`bench.>`, one on each of the
        /// first N connections).
        #[arg(long, default_value_t = 0)]
        matching: usize,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        hold: Duration,
    },
    // --- end of the Wildcards block ---
    /// Run the raw fan-out baseline server (the physical-limit comparison).
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:9100")]
        bind: std::net::SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The envelope each publication is wrapped in.
        #[arg(long, value_enum, default_value_t = baseline::Envelope::Spec)]
        envelope: baseline::Envelope,
    },
}

/// Runs the chosen subcommand.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Command::BaselineServer {
        bind,
        threads,
        envelope,
    } = cli.command
    {
        procfs::raise_fd_limit(100_000)?;
        return baseline::serve(bind, threads, envelope);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // --- Wildcards (issue 14) ---
    if let Command::Patterns {
        url,
        connections,
        patterns,
        matching,
        hold,
    } = cli.command
    {
        procfs::raise_fd_limit(connections as u64 + 1000)?;
        let report = rt.block_on(crate::patterns::run(crate::patterns::PatternOptions {
            url,
            connections,
            patterns,
            matching,
            hold,
        }))?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    // --- end of the Wildcards block ---
    if let Command::Attack {
        url,
        duration,
        bombs,
        forbidden,
        slowloris,
        stalls,
        stall_topic,
        admin_token,
        stall_rate,
        stall_bytes,
    } = cli.command
    {
        procfs::raise_fd_limit((slowloris + stalls + bombs + forbidden) as u64 + 1000)?;
        let report = rt.block_on(crate::attack::run(crate::attack::AttackOptions {
            url,
            duration,
            bombs,
            forbidden,
            slowloris,
            stalls,
            stall_topic,
            admin_token,
            stall_rate,
            stall_bytes,
        }))?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let (common, json) = match &cli.command {
        Command::Fanout(c)
        | Command::Topics { common: c, .. }
        | Command::Latency { common: c, .. }
        | Command::Storm { common: c, .. }
        | Command::Idle { common: c, .. }
        | Command::Mixed { common: c, .. } => (c.clone(), c.json),
        Command::BaselineServer { .. } | Command::Attack { .. } | Command::Patterns { .. } => {
            unreachable!("handled above")
        }
    };
    let cfg = common.config()?;
    procfs::raise_fd_limit(cfg.clients as u64 + 1000)?;
    let report: Report = rt.block_on(async {
        match cli.command {
            Command::Fanout(_) => fanout::run(&cfg).await,
            Command::Topics {
                zipf,
                seed,
                calibrate,
                redis_info,
                ..
            } => {
                topics::run(
                    &cfg,
                    topics::TopicsOptions {
                        zipf,
                        seed,
                        calibrate,
                    },
                    &topics::TopicsProbes { redis_info },
                )
                .await
            }
            Command::Latency {
                share,
                max_rate,
                start_rate,
                step_duration,
                p99_bound_ms,
                max_steps,
                ..
            } => {
                latency::run(
                    &cfg,
                    latency::LatencyOptions {
                        share,
                        max_rate,
                        start_rate,
                        step_duration,
                        p99_bound_ms,
                        max_steps,
                    },
                )
                .await
            }
            Command::Storm {
                kill_pid,
                drain_pid,
                action_cmd,
                action_at,
                ..
            } => {
                let action = match (kill_pid, drain_pid, action_cmd) {
                    (Some(p), _, _) => storm::Action::Kill(p),
                    (_, Some(p), _) => storm::Action::Drain(p),
                    (_, _, Some(c)) => storm::Action::Command(c),
                    _ => bail!("storm needs --kill-pid, --drain-pid or --action-cmd"),
                };
                storm::run(&cfg, storm::StormOptions { action, action_at }).await
            }
            Command::Idle { pid, hold, .. } => {
                idle::run(&cfg, idle::IdleOptions { pid, hold }).await
            }
            Command::Mixed {
                jwt_secret,
                alert_share,
                trader_watch,
                zipf,
                seed,
                conflate_wait,
                ..
            } => {
                if !(0.0..=1.0).contains(&alert_share) {
                    bail!("--alert-share must be between 0 and 1");
                }
                let Some(jwt_secret) = jwt_secret
                    .or_else(|| std::env::var("SLUICE_JWT_SECRET").ok())
                    .filter(|s| !s.is_empty())
                else {
                    bail!("mixed runs with auth on: --jwt-secret or SLUICE_JWT_SECRET is required");
                };
                mixed_run::run(
                    &cfg,
                    mixed_run::MixedOptions {
                        secret: jwt_secret,
                        alert_share,
                        trader_watch,
                        zipf,
                        seed,
                        conflate_wait,
                    },
                )
                .await
            }
            Command::BaselineServer { .. } | Command::Attack { .. } | Command::Patterns { .. } => {
                unreachable!("handled above")
            }
        }
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    if json {
        eprintln!("{}", report.human());
    } else {
        println!("{}", report.human());
    }
    println!("{}", report.to_json_line());
    Ok(())
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
