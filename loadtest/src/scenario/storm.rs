//! `storm`: every client follows one topic on node A while an engine publishes;
//! A is killed or drained mid-run; every client reconnects to another node and
//! resumes from its last seq. Reports the time until all are back and caught up,
//! the reconnect+resume rate, and the usual loss and duplicate accounting.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};

use crate::{
    fleet::{Fleet, Shared},
    payload::{self, Stamp},
    report::Report,
    run::{account, await_fleet, redis_stats_client, topic_names, CpuMeter, Progress, RunConfig},
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
    if cfg.system != System::Sluice {
        bail!("storm needs resume, which only --system sluice offers");
    }
    ensure!(
        cfg.urls.len() >= 2,
        "storm needs at least two --url: the node to lose first, then where to go"
    );
    ensure!(
        opt.action_at < cfg.duration,
        "--action-at must fall inside --duration"
    );
    let topics = topic_names(1);
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
    let mut publisher =
        Publish::connect(cfg.system, cfg.redis.as_deref(), &cfg.http, &cfg.urls[0]).await?;
    let redis = redis_stats_client(cfg.redis.as_deref()).await;
    let meter = CpuMeter::start(&cfg.server_pids, redis.as_ref()).await;
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
            act(&opt.action)?;
            let at = Instant::now();
            acted = Some((at, ok));
            eprintln!("storm: {:?} at seq {ok}", opt.action);
            monitor = Some(tokio::spawn(watch_recovery(
                shared.clone(),
                watched.clone(),
                at,
                ok,
            )));
        }
        let body = payload::build(
            Stamp {
                topic: 0,
                seq: ok + 1,
                sent_ns: due.duration_since(origin).as_nanos() as u64,
            },
            cfg.payload,
        );
        match publisher.publish(&topics[0], &body).await {
            Ok(()) => ok += 1,
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
    let subscribers = shared.subscribers[0].load(Relaxed);
    while shared.unique() < subscribers * ok && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    report.topics = 1;
    report.published = ok + errors;
    report.publish_errors = errors;
    account(&mut report, &out, &[subscribers], &[ok], cfg.duration);
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
    head: u64,
) {
    let subscribers = shared.subscribers[0].load(Relaxed) as usize;
    loop {
        let (lost, back) = (
            shared.disconnects.load(Relaxed),
            shared.resubscribed.load(Relaxed),
        );
        let caught = shared
            .highest
            .iter()
            .filter(|h| h.load(Relaxed) >= head)
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
