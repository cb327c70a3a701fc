//! The command line: one subcommand per scenario, the options they share, and the
//! dispatch. Durations are written `10s`, `500ms`, `2m` or plain seconds.

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::{
    baseline, procfs,
    report::Report,
    run::RunConfig,
    scenario::{fanout, idle, latency, mixed_run, storm, topics},
    target::System,
    ws::WsUrl,
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
    },
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The system under test.
    #[arg(long, value_enum, default_value_t = System::Sluice)]
    pub system: System,
    /// WebSocket URL(s); clients are spread over them. Peers take ws://HOST:PORT.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Redis URL: Sluice's publisher (FCALL), the Redis peers' PUBLISH, CPU readings.
    #[arg(long)]
    pub redis: Option<String>,
    /// HTTP base for systems that publish over HTTP (default: the first URL's host).
    #[arg(long)]
    pub http: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Publishes per second (all topics together).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Subscriber worker threads (current-thread runtimes).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Publishing connections (each topic keeps to one, in order).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// New connections per second while the fleet opens.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Source addresses, comma-separated (default: 127.0.0.1.. as many as the
    /// client count needs, for a loopback target).
    #[arg(long, value_delimiter = ',')]
    pub bind_ips: Vec<IpAddr>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Pause between the last subscription and the first publish.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Longest wait for late deliveries after the last publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Pid(s) of the system under test, for its CPU use (children included).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// A JWT for Sluice (sent as Authorization: Bearer).
    #[arg(long)]
    pub token: Option<String>,
    /// Print only the JSON report on stdout (its last line); people's text on stderr.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// `10s`, `250ms`, `2m`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 10s, 500ms, 2m)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?}: a duration must be a non-negative number"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Loopback source addresses enough for `clients` connections (20k per address,
/// well under the ~28k ephemeral ports of each).
pub fn default_bind_ips(first: &WsUrl, clients: usize) -> Vec<IpAddr> {
    if !first.addr.ip().is_loopback() || clients <= 20_000 {
        return Vec::new();
    }
    let n = clients.div_ceil(20_000).min(250);
    (1..=n as u8)
        .map(|i| IpAddr::from([127, 0, 0, i]))
        .collect()
}

impl Common {
    pub fn config(&self) -> anyhow::Result<RunConfig> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.topics == 0 {
            bail!("--topics must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be a non-negative number");
        }
        if self.workers == 0 || self.workers > 64 {
            bail!("--workers must be between 1 and 64");
        }
        let urls = self
            .urls
            .iter()
            .map(|u| WsUrl::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let first = urls.first().context("at least one --url is needed")?;
        let http = self
            .http
            .clone()
            .unwrap_or_else(|| format!("http://{}", first.host))
            .trim_end_matches('/')
            .to_owned();
        let bind_ips = if self.bind_ips.is_empty() {
            default_bind_ips(first, self.clients)
        } else {
            self.bind_ips.clone()
        };
        let headers = match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        Ok(RunConfig {
            system: self.system,
            urls,
            redis: self.redis.clone(),
            http,
            clients: self.clients,
            topics: self.topics,
            rate: self.rate,
            duration: self.duration,
            payload: self.payload,
            workers: self.workers,
            publishers: self.publishers.max(1),
            connect_rate: self.connect_rate,
            bind_ips,
            timeout: self.timeout,
            settle: self.settle,
            drain: self.drain,
            server_pids: self.server_pids.clone(),
            headers,
            progress: !self.quiet,
        })
    }
}

/// Runs the chosen subcommand.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Command::BaselineServer { bind, threads } = cli.command {
        procfs::raise_fd_limit(100_000)?;
        return baseline::serve(bind, threads);
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
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn many_clients_get_many_source_addresses() {
        let local = WsUrl::parse("ws://127.0.0.1:8080/ws").expect("url");
        assert!(default_bind_ips(&local, 1000).is_empty());
        let ips = default_bind_ips(&local, 100_001);
        assert_eq!(ips.len(), 6);
        assert_eq!(ips[5], IpAddr::from([127, 0, 0, 6]));
    }

    #[test]
    fn the_documented_command_line_parses() {
        let cli = Cli::try_parse_from([
            "sluice-loadtest",
            "fanout",
            "--url",
            "ws://127.0.0.1:8080/ws",
            "--url",
            "ws://127.0.0.1:8081/ws",
            "--redis",
            "redis://127.0.0.1:6379",
            "--clients",
            "1000",
            "--rate",
            "200",
            "--duration",
            "10s",
            "--topics",
            "1",
            "--payload",
            "128",
            "--json",
        ])
        .expect("parses");
        let Command::Fanout(c) = cli.command else {
            panic!("fanout expected")
        };
        let cfg = c.config().expect("valid");
        assert_eq!(cfg.urls.len(), 2);
        assert_eq!(cfg.clients, 1000);
        assert_eq!(cfg.http, "http://127.0.0.1:8080");
        assert!(c.json);
    }

    #[test]
    fn bad_values_are_refused_with_the_option_named() {
        let parse = |args: &[&str]| {
            let mut v = vec!["sluice-loadtest", "fanout", "--url", "ws://127.0.0.1:1/ws"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
                .map_err(|e| e.to_string())
                .and_then(|c| match c.command {
                    Command::Fanout(c) => c.config().map(|_| ()).map_err(|e| e.to_string()),
                    _ => Err("wrong command".into()),
                })
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--clients", "0"])
            .unwrap_err()
            .contains("--clients"));
        assert!(parse(&["--rate", "-5"]).is_err());
        assert!(parse(&["--duration", "soon"])
            .unwrap_err()
            .contains("duration"));
        assert!(parse(&["--system", "kafka"]).is_err());
    }
}
