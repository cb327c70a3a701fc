//! One measured run: open the fleet, publish on the schedule, wait for the last
//! deliveries, and account for every message. Fan-out, many-topics and each step of
//! the latency ramp are runs of this one procedure with other parameters.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::{
    cpu::redis_stats_client,
    fleet::{Fleet, FleetSpec, Shared, WorkerOut},
    payload::{self, Stamp},
    report::Report,
    schedule::{RateSchedule, Rng, Zipf},
    target::{Publish, System},
    ws::WsUrl,
};

/// Everything a run needs, from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub system: System,
    pub urls: Vec<WsUrl>,
    pub redis: Option<String>,
    /// Base URL for HTTP publishing (Nchan, socketioxide).
    pub http: String,
    pub clients: usize,
    pub topics: usize,
    pub rate: f64,
    pub duration: Duration,
    pub payload: usize,
    pub workers: usize,
    pub publishers: usize,
    pub connect_rate: f64,
    pub bind_ips: Vec<IpAddr>,
    pub timeout: Duration,
    pub settle: Duration,
    pub drain: Duration,
    pub server_pids: Vec<u32>,
    pub headers: String,
    pub progress: bool,
}

/// How the publisher picks the topic of each message.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    RoundRobin,
    Zipf { exponent: f64, seed: u64 },
}

/// A fresh prefix per run, so every topic starts at seq 1 with no history.
pub fn run_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("r{micros:x}")
}

pub fn topic_names(n: usize) -> Arc<Vec<String>> {
    let id = run_id();
    Arc::new((0..n.max(1)).map(|k| format!("bench.{id}.{k}")).collect())
}

impl RunConfig {
    pub fn fleet(&self, topics: Arc<Vec<String>>, reconnect: bool) -> FleetSpec {
        FleetSpec {
            system: self.system,
            urls: self.urls.clone(),
            topics,
            clients: self.clients,
            bind_ips: self.bind_ips.clone(),
            workers: self.workers,
            connect_rate: self.connect_rate,
            timeout: self.timeout,
            reconnect,
            headers: self.headers.clone(),
        }
    }

    /// A report with the run's parameters filled in.
    pub fn report(&self, scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            system: self.system.to_string(),
            clients: self.clients as u64,
            topics: self.topics as u64,
            offered_rate: self.rate,
            duration_s: self.duration.as_secs_f64(),
            payload_bytes: self.payload as u64,
            ..Default::default()
        }
    }
}

/// Prints a progress line every second until dropped.
#[derive(Debug)]
pub struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    pub fn start(label: String, shared: Arc<Shared>, published: Arc<AtomicU64>, on: bool) -> Self {
        if !on {
            return Progress(None);
        }
        Progress(Some(tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = shared.delivered();
                eprintln!(
                    "[{label}] {:>5.1}s ready {} connect-errors {} published {} delivered {} ({}/s) disconnects {}",
                    started.elapsed().as_secs_f64(),
                    shared.ready.load(Relaxed),
                    shared.connect_errors.load(Relaxed),
                    published.load(Relaxed),
                    d,
                    d - last,
                    shared.disconnects.load(Relaxed),
                );
                last = d;
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Waits until every client has subscribed or failed to.
pub async fn await_fleet(cfg: &RunConfig, shared: &Shared) -> anyhow::Result<()> {
    let limit = Duration::from_secs_f64(cfg.clients as f64 / cfg.connect_rate.max(1.0))
        + cfg.timeout
        + Duration::from_secs(10);
    let t = Instant::now();
    loop {
        let done = shared.ready.load(Relaxed) + shared.connect_errors.load(Relaxed);
        if done >= cfg.clients as u64 {
            break;
        }
        if t.elapsed() > limit {
            bail!(
                "only {done} of {} clients subscribed or failed within {limit:?}",
                cfg.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if shared.ready.load(Relaxed) == 0 {
        let why = shared.first_error.lock().ok().and_then(|e| e.clone());
        bail!(
            "no client could subscribe: {}",
            why.unwrap_or_else(|| "no error recorded".into())
        );
    }
    Ok(())
}

// `scenario::mixed_run` still imports the meter from here; `crate::cpu` is its home.
pub use crate::cpu::CpuMeter;

/// What a run measured besides the report.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: Report,
    /// Redis CPU seconds used while publishing.
    pub redis_cpu_s: Option<f64>,
    /// Each `--redis-info` master's samples at the start and end of the window.
    pub masters: Option<(Vec<crate::masters::Sample>, Vec<crate::masters::Sample>)>,
}

/// Publishing tasks, one per connection; topic `t` always goes to shard
/// `t % shards`, and each shard publishes in order.
struct Publishers {
    txs: Vec<mpsc::UnboundedSender<(usize, u64, u64)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ok: Arc<Vec<AtomicU64>>,
    errors: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Publishers {
    async fn open(cfg: &RunConfig, topics: &Arc<Vec<String>>) -> anyhow::Result<Self> {
        let shards = cfg.publishers.clamp(1, topics.len());
        let ok: Arc<Vec<AtomicU64>> =
            Arc::new((0..topics.len()).map(|_| AtomicU64::new(0)).collect());
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(None));
        let (mut txs, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..shards {
            let mut publish =
                Publish::connect(cfg.system, cfg.redis.as_deref(), &cfg.http, &cfg.urls[0])
                    .await
                    .with_context(|| format!("opening a publisher for {}", cfg.system))?;
            let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, u64)>();
            let (topics, ok, errors, first_error, size) = (
                topics.clone(),
                ok.clone(),
                errors.clone(),
                first_error.clone(),
                cfg.payload,
            );
            tasks.push(tokio::spawn(async move {
                let mut queued = Vec::with_capacity(256);
                while rx.recv_many(&mut queued, 256).await > 0 {
                    let batch: Vec<(&str, String)> = queued
                        .iter()
                        .map(|&(t, seq, due_ns)| {
                            let stamp = Stamp {
                                topic: t as u32,
                                seq,
                                sent_ns: due_ns,
                            };
                            (topics[t].as_str(), payload::build(stamp, size))
                        })
                        .collect();
                    let results = publish.publish_batch(&batch).await;
                    for (&(t, _, _), r) in queued.iter().zip(results) {
                        match r {
                            Ok(()) => {
                                ok[t].fetch_add(1, Relaxed);
                            }
                            Err(e) => {
                                errors.fetch_add(1, Relaxed);
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert_with(|| format!("publish: {e:#}"));
                                }
                            }
                        }
                    }
                    queued.clear();
                }
            }));
            txs.push(tx);
        }
        Ok(Publishers {
            txs,
            tasks,
            ok,
            errors,
            first_error,
        })
    }
}

/// Runs the schedule on its own OS thread (thread sleeps are precise to tens of
/// microseconds; tokio's timer has millisecond granularity) and hands each due
/// message to its topic's publisher. Returns the number scheduled.
fn schedule_thread(
    schedule: RateSchedule,
    start: Instant,
    origin: Instant,
    topics: usize,
    pick: Pick,
    txs: Vec<mpsc::UnboundedSender<(usize, u64, u64)>>,
    scheduled: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next_seq = vec![1u64; topics];
        let (zipf, mut rng) = match pick {
            Pick::Zipf { exponent, seed } => (Some(Zipf::new(topics, exponent)), Rng::new(seed)),
            Pick::RoundRobin => (None, Rng::new(1)),
        };
        for i in 0..schedule.len() {
            let due = start + schedule.due(i);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let t = match &zipf {
                Some(z) => z.sample(&mut rng),
                None => (i % topics as u64) as usize,
            };
            let seq = next_seq[t];
            next_seq[t] += 1;
            let due_ns = due.duration_since(origin).as_nanos() as u64;
            if txs[t % txs.len()].send((t, seq, due_ns)).is_err() {
                break;
            }
            scheduled.fetch_add(1, Relaxed);
        }
    })
}

/// Opens the fleet, publishes `cfg.rate` msg/s for `cfg.duration`, drains, and
/// reports.
pub async fn measured_run(
    cfg: &RunConfig,
    scenario: &str,
    pick: Pick,
) -> anyhow::Result<RunOutcome> {
    measured_run_with(cfg, scenario, pick, None).await
}

/// [`measured_run`], sampling each of `masters` at the start and end of the
/// publishing window too.
pub async fn measured_run_with(
    cfg: &RunConfig,
    scenario: &str,
    pick: Pick,
    masters: Option<&crate::masters::Masters>,
) -> anyhow::Result<RunOutcome> {
    let topics = topic_names(cfg.topics);
    let origin = Instant::now();
    let fleet = Fleet::start(cfg.fleet(topics.clone(), false), origin)?;
    let shared = fleet.shared.clone();
    let scheduled = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(
        format!("{scenario} {}", cfg.system),
        shared.clone(),
        scheduled.clone(),
        cfg.progress,
    );
    if let Err(e) = await_fleet(cfg, &shared).await {
        let _ = fleet.stop();
        return Err(e);
    }
    let publishers = match Publishers::open(cfg, &topics).await {
        Ok(p) => p,
        Err(e) => {
            let _ = fleet.stop();
            return Err(e);
        }
    };
    tokio::time::sleep(cfg.settle).await;
    let redis = redis_stats_client(cfg.redis.as_deref()).await;
    let masters_before = match masters {
        Some(m) => Some(m.sample().await?),
        None => None,
    };
    let meter = CpuMeter::start(&cfg.server_pids, redis.as_ref()).await;

    let schedule = RateSchedule::new(cfg.rate, cfg.duration);
    let start = Instant::now() + Duration::from_millis(20);
    shared.window_end_ns.store(
        (start + cfg.duration).duration_since(origin).as_nanos() as u64,
        Relaxed,
    );
    let Publishers {
        txs,
        tasks,
        ok,
        errors,
        first_error,
    } = publishers;
    let sched = schedule_thread(
        schedule,
        start,
        origin,
        topics.len(),
        pick,
        txs,
        scheduled.clone(),
    );
    tokio::task::spawn_blocking(move || sched.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
    for t in tasks {
        t.await?;
    }
    let (cpu, redis_cpu_s) = meter.finish(&cfg.server_pids, redis.as_ref()).await;
    let masters = match (masters, masters_before) {
        (Some(m), Some(before)) => Some((before, m.sample().await?)),
        _ => None,
    };

    // Wait for what is owed, up to the drain time.
    let expected = || -> u64 {
        (0..topics.len())
            .map(|t| shared.subscribers[t].load(Relaxed) * ok[t].load(Relaxed))
            .sum()
    };
    let drain_from = Instant::now();
    while shared.unique() < expected() && drain_from.elapsed() < cfg.drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(progress);
    let subscribers: Vec<u64> = shared.subscribers.iter().map(|s| s.load(Relaxed)).collect();
    let connect_errors = shared.connect_errors.load(Relaxed);
    let disconnects = shared.disconnects.load(Relaxed);
    let server_errors = shared.server_errors.load(Relaxed);
    let fleet_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let out = fleet.stop()?;
    let ok: Vec<u64> = ok.iter().map(|o| o.load(Relaxed)).collect();
    let mut report = cfg.report(scenario);
    report.published = ok.iter().sum::<u64>() + errors.load(Relaxed);
    report.publish_errors = errors.load(Relaxed);
    account(&mut report, &out, &subscribers, &ok, cfg.duration);
    report.connect_errors = connect_errors;
    report.disconnects = disconnects;
    report.server_errors = server_errors;
    report.cpu_percent = cpu;
    report.first_error = first_error
        .lock()
        .ok()
        .and_then(|e| e.clone())
        .or(fleet_error);
    Ok(RunOutcome {
        report,
        redis_cpu_s,
        masters,
    })
}

/// Fills the delivery figures: what was owed (per topic, subscribers × successful
/// publishes), what came, what was lost or repeated.
pub fn account(
    report: &mut Report,
    out: &WorkerOut,
    subscribers: &[u64],
    ok: &[u64],
    window: Duration,
) {
    let expected: u64 = subscribers.iter().zip(ok).map(|(s, o)| s * o).sum();
    let lost: u64 = subscribers
        .iter()
        .zip(ok)
        .zip(&out.per_topic_unique)
        .map(|((s, o), u)| (s * o).saturating_sub(*u))
        .sum();
    report.expected = expected;
    report.delivered = out.tally.unique + out.tally.duplicated;
    report.lost = lost;
    report.duplicated = out.tally.duplicated;
    report.out_of_order = out.tally.out_of_order;
    report.misrouted = out.misrouted;
    report.deliveries_per_sec = (out.in_window as f64 / window.as_secs_f64().max(1e-9)).round();
    report.latency_ms = out.latencies.percentiles();
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
