//! `storm`: every client follows one of `--topics` topics on node A while an engine
//! publishes to them in turn; A is killed or drained mid-run; every client
//! reconnects to another node and resumes from its last seq. Reports the time until
//! all are back and caught up, the reconnect+resume rate, the Redis commands the
//! storm caused (`INFO commandstats`, less what the publishes meanwhile explain),
//! and the usual loss and duplicate accounting.
//!
//! With `--system baseline` it measures the ceiling the machine sets: two raw
//! baseline servers each get every publication (they share nothing), the clients
//! start on the first, it is killed, and they reconnect and subscribe on the
//! second: the same connections, handshakes and live fan-out as Sluice's storm,
//! without resume (what is published in the gap is lost, by design). Its
//! `reconnect_resume_per_sec` is the rate Sluice's is compared with in one run.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};

use crate::{
    commandstats::{self, Calls},
    cpu::{redis_stats_client, CpuMeter},
    fleet::{Fleet, Shared},
    payload::{self, Stamp},
    report::Report,
    run::{account, await_fleet, topic_names, Progress, RunConfig},
    schedule::RateSchedule,
    target::{Publish, System},
};

#[derive(Debug, Clone)]
pub enum Action {
    Kill(u32),
    Drain(u32),
    Command(String),
}

#[derive(Debug, Clone)]
pub struct StormOptions {
    pub action: Action,
    /// Seconds into publishing at which the node is killed or drained.
    pub action_at: Duration,
}

fn act(action: &Action) -> anyhow::Result<()> {
    let status = match action {
        Action::Kill(pid) => std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status(),
        Action::Drain(pid) => std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status(),
        Action::Command(cmd) => std::process::Command::new("sh").args(["-c", cmd]).status(),
    }
    .context("running the storm action")?;
    ensure!(
        status.success(),
        "the storm action {action:?} failed: {status}"
    );
    Ok(())
}

pub async fn run(cfg: &RunConfig, opt: StormOptions) -> anyhow::Result<Report> {
    if !matches!(cfg.system, System::Sluice | System::Baseline) {
        bail!(
            "storm runs against --system sluice (resume) or baseline (the raw reconnect ceiling)"
        );
    }
    ensure!(
        cfg.urls.len() >= 2,
        "storm needs at least two --url: the node to lose first, then where to go"
    );
    ensure!(
        opt.action_at < cfg.duration,
        "--action-at must fall inside --duration"
    );
    let topics = topic_names(cfg.topics);
    let origin = Instant::now();
    let fleet = Fleet::start(cfg.fleet(topics.clone(), true), origin)?;
    let shared = fleet.shared.clone();
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = Progress::start(
        "storm".into(),
        shared.clone(),
        published.clone(),
        cfg.progress,
    );
    if let Err(e) = await_fleet(cfg, &shared).await {
        let _ = fleet.stop();
        return Err(e);
    }
    // Sluice: one publisher (Redis or the first node's HTTP). Baseline: one per
    // server, as they share nothing; the killed one's is dropped at the action.
    let mut publishers = Vec::new();
    let targets = if cfg.system == System::Baseline {
        &cfg.urls[..]
    } else {
        &cfg.urls[..1]
    };
    for url in targets {
        publishers.push(Publish::connect(cfg.system, cfg.redis.as_deref(), &cfg.http, url).await?);
    }
    let redis = redis_stats_client(cfg.redis.as_deref()).await;
    let meter = CpuMeter::start(&cfg.server_pids, redis.as_ref()).await;
    // Redis commands: publishing alone until the action, then the storm on top.
    let stats = |r: Option<&fred::clients::Client>| {
        let r = r.cloned();
        async move {
            match r {
                Some(r) => commandstats::sample(&r).await,
                None => None,
            }
        }
    };
    let at_start = stats(redis.as_ref()).await;
    let mut at_action: Option<Calls> = None;
    let mut per_topic = vec![0u64; topics.len()];
    let schedule = RateSchedule::new(cfg.rate, cfg.duration);
    let start = Instant::now();
    shared.window_end_ns.store(
        (start + cfg.duration).duration_since(origin).as_nanos() as u64,
        Relaxed,
    );
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut acted: Option<(Instant, u64)> = None;
    let mut first_error = None;
    let watched = Arc::new(Mutex::new((None::<Duration>, None::<Duration>)));
    let mut monitor = None;
    for i in 0..schedule.len() {
        let due = start + schedule.due(i);
        tokio::time::sleep_until(due.into()).await;
        if acted.is_none() && due.duration_since(start) >= opt.action_at {
            at_action = stats(redis.as_ref()).await;
            act(&opt.action)?;
            if cfg.system == System::Baseline {
                publishers.remove(0);
            }
            let at = Instant::now();
            acted = Some((at, ok));
            eprintln!("storm: {:?} at seq {ok}", opt.action);
            monitor = Some(tokio::spawn(watch_recovery(
                shared.clone(),
                watched.clone(),
                at,
                per_topic.clone(),
            )));
        }
        let t = (i % topics.len() as u64) as usize;
        let body = payload::build(
            Stamp {
                topic: t as u32,
                seq: per_topic[t] + 1,
                sent_ns: due.duration_since(origin).as_nanos() as u64,
            },
            cfg.payload,
        );
        let mut sent = Ok(());
        for p in &mut publishers {
            if let Err(e) = p.publish(&topics[t], &body).await {
                sent = Err(e);
            }
        }
        match sent {
            Ok(()) => {
                ok += 1;
                per_topic[t] += 1;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("publish: {e:#}"));
            }
        }
        published.store(ok, Relaxed);
    }
    let (cpu, _) = meter.finish(&cfg.server_pids, redis.as_ref()).await;
    let (acted_at, head_at_action) = acted.context("the action never ran")?;
    // Then wait (up to the drain time) until nothing is owed at all.
    let limit = Instant::now() + cfg.drain;
    let subscribers: Vec<u64> = shared.subscribers.iter().map(|s| s.load(Relaxed)).collect();
    let owed: u64 = subscribers.iter().zip(&per_topic).map(|(s, n)| s * n).sum();
    while shared.unique() < owed && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every client is caught up (or the drain time is over): the storm is done.
    let at_end = stats(redis.as_ref()).await;
    let (all_back, caught_up) = match monitor {
        Some(m) => {
            m.abort();
            let w = watched.lock().map(|w| *w).unwrap_or_default();
            (w.0, w.1)
        }
        None => (None, None),
    };
    drop(progress);
    let disconnects = shared.disconnects.load(Relaxed);
    let resubscribed = shared.resubscribed.load(Relaxed);
    let first_loss = shared.first_loss_ns.load(Relaxed);
    let last_back = shared.last_resubscribe_ns.load(Relaxed);
    let connect_errors = shared.connect_errors.load(Relaxed);
    let shared_reconnect_errors = shared.reconnect_errors.load(Relaxed);
    let fleet_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let server_errors = shared.server_errors.load(Relaxed);
    let out = fleet.stop()?;
    let mut report = cfg.report("storm");
    report.topics = topics.len() as u64;
    report.published = ok + errors;
    report.publish_errors = errors;
    account(&mut report, &out, &subscribers, &per_topic, cfg.duration);
    report.connect_errors = connect_errors;
    report.disconnects = disconnects;
    report.server_errors = server_errors;
    report.cpu_percent = cpu;
    report.first_error = first_error.or(fleet_error);
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let x = &mut report.extra;
    x.insert("action".into(), format!("{:?}", opt.action).into());
    x.insert("head_at_action".into(), head_at_action.into());
    x.insert("reconnected".into(), resubscribed.into());
    x.insert("reconnect_errors".into(), shared_reconnect_errors.into());
    let _ = acted_at;
    if let (Some(a), Some(b), Some(c)) = (&at_start, &at_action, &at_end) {
        let before = commandstats::delta(a, b);
        let during = commandstats::delta(b, c);
        let storm =
            commandstats::beyond_publishing(&during, ok - head_at_action, &before, head_at_action);
        let (reads, total) = commandstats::reads(&storm);
        x.insert(
            "redis_calls_before_action".into(),
            serde_json::json!(before),
        );
        x.insert("redis_calls_after_action".into(), serde_json::json!(during));
        x.insert("redis_storm_reads".into(), serde_json::json!(reads));
        x.insert("redis_storm_reads_total".into(), total.into());
        x.insert(
            "redis_storm_reads_per_topic".into(),
            ((total as f64 / topics.len() as f64 * 10.0).round() / 10.0).into(),
        );
    }
    if let Some(t) = all_back {
        x.insert("all_resubscribed_ms".into(), ms(t).into());
    }
    if let Some(t) = caught_up {
        x.insert("all_caught_up_ms".into(), ms(t).into());
    }
    if first_loss != u64::MAX && last_back > first_loss && resubscribed > 0 {
        let span = (last_back - first_loss) as f64 / 1e9;
        x.insert(
            "reconnect_span_ms".into(),
            ms(Duration::from_secs_f64(span)).into(),
        );
        x.insert(
            "reconnect_resume_per_sec".into(),
            (resubscribed as f64 / span).round().into(),
        );
    }
    Ok(report)
}

/// From the action on: when every lost connection is back (resubscribed), and
/// when every subscriber has everything published before the action.
async fn watch_recovery(
    shared: Arc<Shared>,
    out: Arc<Mutex<(Option<Duration>, Option<Duration>)>>,
    at: Instant,
    heads: Vec<u64>,
) {
    let subscribers: usize = shared
        .subscribers
        .iter()
        .map(|s| s.load(Relaxed) as usize)
        .sum();
    loop {
        let (lost, back) = (
            shared.disconnects.load(Relaxed),
            shared.resubscribed.load(Relaxed),
        );
        // Connection i follows topic i % topics (as the fleet assigns them).
        let caught = shared
            .highest
            .iter()
            .enumerate()
            .filter(|(i, h)| h.load(Relaxed) >= heads[i % heads.len()])
            .count();
        if let Ok(mut o) = out.lock() {
            // Every subscriber lost its connection (a drain spreads that over
            // SLUICE_DRAIN_SECONDS) and every one of them is back.
            if o.0.is_none() && lost >= subscribers as u64 && back >= lost {
                o.0 = Some(at.elapsed());
            }
            if o.1.is_none() && caught >= subscribers && o.0.is_some() {
                o.1 = Some(at.elapsed());
            }
            if o.0.is_some() && o.1.is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
