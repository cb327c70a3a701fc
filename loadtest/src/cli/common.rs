//! The options every scenario shares (`Common`), their checks and the `RunConfig`
//! they make, and the duration syntax (`10s`, `500ms`, `2m`, plain seconds).

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context};
use clap::Args;

use crate::{run::RunConfig, target::System, ws::WsUrl};

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
