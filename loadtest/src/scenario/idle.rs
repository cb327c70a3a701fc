//! `idle`: N idle subscribed connections held open; the node's resident memory
//! per connection, read from /proc before and after, and whether they all stay
//! connected (keep-alives answered) for the hold time.

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    fleet::Fleet,
    procfs,
    report::Report,
    run::{await_fleet, topic_names, Progress, RunConfig},
};

#[derive(Debug, Clone, Copy)]
pub struct IdleOptions {
    /// The node whose memory is measured.
    pub pid: u32,
    pub hold: Duration,
}

pub async fn run(cfg: &RunConfig, opt: IdleOptions) -> anyhow::Result<Report> {
    let before = procfs::rss_kib(opt.pid).context("--pid: the node's process")?;
    // 1000 topics: the subscriptions are spread as a real node's would be.
    let topics = topic_names(cfg.topics.max(1));
    let fleet = Fleet::start(cfg.fleet(topics, false), Instant::now())?;
    let shared = fleet.shared.clone();
    let progress = Progress::start(
        "idle".into(),
        shared.clone(),
        Default::default(),
        cfg.progress,
    );
    if let Err(e) = await_fleet(cfg, &shared).await {
        let _ = fleet.stop();
        return Err(e);
    }
    tokio::time::sleep(cfg.settle).await;
    let after = procfs::rss_kib(opt.pid)?;
    let ready = shared.ready.load(Relaxed);
    tokio::time::sleep(opt.hold).await;
    let held = ready - shared.disconnects.load(Relaxed).min(ready);
    let at_end = procfs::rss_kib(opt.pid)?;
    drop(progress);
    let mut report = cfg.report("idle");
    report.offered_rate = 0.0;
    report.duration_s = opt.hold.as_secs_f64();
    report.connect_errors = shared.connect_errors.load(Relaxed);
    report.disconnects = shared.disconnects.load(Relaxed);
    report.server_errors = shared.server_errors.load(Relaxed);
    report.first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let _ = fleet.stop()?;
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / ready.max(1) as f64;
    let x = &mut report.extra;
    x.insert("connections".into(), ready.into());
    x.insert("still_connected".into(), held.into());
    x.insert("rss_before_kib".into(), before.into());
    x.insert("rss_after_kib".into(), after.into());
    x.insert("rss_after_hold_kib".into(), at_end.into());
    x.insert("rss_per_connection_bytes".into(), per_conn.round().into());
    Ok(report)
}
