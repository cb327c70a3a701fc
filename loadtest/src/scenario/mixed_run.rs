//! The `mixed` run: connects the planned clients (each with its own token), has
//! two engine connections publish the mix on a constant-rate schedule
//! (`mixed_publish.rs`), and times
//! deltas and alerts per class. See `mixed.rs` for the plan and the accounting.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::json;
use sluice_common::publisher::Publisher;
use tokio_util::sync::CancellationToken;

use super::{
    mixed::{account, mint, Class, ClientSpec, ConnTally, Plan},
    mixed_publish::publish,
};
use crate::{
    accounting::{Seen, SeqTracker},
    latency::Latencies,
    payload,
    report::Report,
    run::{run_id, CpuMeter, RunConfig},
    stage,
    target::close_code,
    ws::{Op, WsConn},
};

#[derive(Debug, Clone)]
pub struct MixedOptions {
    /// The nodes' `SLUICE_JWT_SECRET`: every client gets a token for its own user.
    pub secret: String,
    /// Share of the risk topics that get alerts.
    pub alert_share: f64,
    /// Market topics each trader watches on the session of its alerts.
    pub trader_watch: usize,
    pub zipf: f64,
    pub seed: u64,
    /// Extra wait after the drain for background sessions' last conflated flush.
    pub conflate_wait: Duration,
}

/// Latencies per class, deltas and alerts apart.
#[derive(Debug, Default)]
struct Timings {
    deltas: [Mutex<Latencies>; 4],
    alerts: Mutex<Latencies>,
}

fn class_index(c: Class) -> usize {
    Class::ALL.iter().position(|x| *x == c).unwrap_or(0)
}

/// Shared with every client task.
#[derive(Debug)]
struct Live {
    origin: Instant,
    stop: CancellationToken,
    ready: AtomicU64,
    failed: AtomicU64,
    /// New seqs received by clients that are not conflated.
    foreground_unique: AtomicU64,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    timings: Timings,
    first_error: Mutex<Option<String>>,
}

pub async fn run(cfg: &RunConfig, opt: MixedOptions) -> anyhow::Result<Report> {
    let redis = cfg
        .redis
        .as_deref()
        .context("mixed publishes through Redis: --redis is required")?;
    let plan = Arc::new(
        Plan::new(cfg.clients, cfg.topics, opt.alert_share, &run_id())
            .with_watchlists(opt.trader_watch, opt.zipf),
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let live = Arc::new(Live {
        origin: Instant::now(),
        stop: CancellationToken::new(),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        foreground_unique: AtomicU64::new(0),
        window_start_ns: AtomicU64::new(u64::MAX),
        window_end_ns: AtomicU64::new(u64::MAX),
        timings: Timings::default(),
        first_error: Mutex::new(None),
    });
    // The clients run on their own runtime, `cfg.workers` threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers)
        .enable_all()
        .build()?;
    let mut tasks = Vec::with_capacity(plan.clients.len());
    let pace = Duration::from_secs_f64(1.0 / cfg.connect_rate.max(1.0));
    for (i, c) in plan.clients.iter().enumerate() {
        let token = mint(&opt.secret, &c.user, now_s, 3600)?;
        let url = cfg.urls[i % cfg.urls.len()].with_path(&c.path);
        let bind = (!cfg.bind_ips.is_empty()).then(|| cfg.bind_ips[i % cfg.bind_ips.len()]);
        let (spec, live, timeout) = (c.clone(), live.clone(), cfg.timeout);
        tasks.push(rt.spawn(async move { client(spec, token, url, bind, timeout, live).await }));
        tokio::time::sleep(pace).await;
    }
    let limit = Instant::now() + cfg.timeout + Duration::from_secs(10);
    while live.ready.load(Relaxed) + live.failed.load(Relaxed) < plan.clients.len() as u64 {
        if Instant::now() > limit {
            live.stop.cancel();
            rt.shutdown_background();
            bail!("clients did not subscribe in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if live.ready.load(Relaxed) == 0 {
        live.stop.cancel();
        rt.shutdown_background();
        let why = live.first_error.lock().ok().and_then(|e| e.clone());
        bail!("no client could subscribe: {}", why.unwrap_or_default());
    }
    // The market/trading engine's connection and the risk engine's.
    let publisher = Publisher::connect(redis, 1).await?;
    let risk_engine = Publisher::connect(redis, 1).await?;
    tokio::time::sleep(cfg.settle).await;
    let meter = CpuMeter::start(&cfg.server_pids, None).await;
    // The node's own stage per kind, from its /metrics around the window.
    let stage_before = stage::scrape(&cfg.http).await;

    let start = Instant::now() + Duration::from_millis(20);
    let ns = |t: Instant| t.duration_since(live.origin).as_nanos() as u64;
    live.window_start_ns.store(ns(start), Relaxed);
    live.window_end_ns.store(ns(start + cfg.duration), Relaxed);
    let (ok, errors, first_publish_error, acked) = publish(
        cfg,
        &opt,
        &plan,
        [&publisher, &risk_engine],
        start,
        live.origin,
    )
    .await?;
    let (cpu, _) = meter.finish(&cfg.server_pids, None).await;

    // Drain: until every foreground delivery owed arrived (or the drain time is up),
    // then one conflation period more for the background sessions' last flush.
    let subs = plan.subscribers();
    let foreground_owed: u64 = plan
        .clients
        .iter()
        .filter(|c| !c.class.conflated())
        .flat_map(|c| c.topics.iter())
        .map(|&t| ok[t])
        .sum();
    let drain_from = Instant::now();
    while live.foreground_unique.load(Relaxed) < foreground_owed && drain_from.elapsed() < cfg.drain
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(opt.conflate_wait).await;
    live.stop.cancel();
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await?);
    }
    rt.shutdown_background();

    let window_s = cfg.duration.as_secs_f64();
    let classes = account(&conns, &ok, window_s);
    let mut report = cfg.report("mixed");
    report.system = "sluice".into();
    report.topics = plan.topics.len() as u64;
    report.published = ok.iter().sum::<u64>() + errors;
    report.publish_errors = errors;
    report.first_error =
        first_publish_error.or_else(|| live.first_error.lock().ok().and_then(|e| e.clone()));
    report.connect_errors = live.failed.load(Relaxed);
    report.cpu_percent = cpu;
    // Distinct messages received (the drain included), per second of the window.
    let mut received = 0;
    for c in classes.values() {
        report.expected += c.owed;
        report.delivered += c.received + c.duplicated;
        report.lost += c.lost + c.latest_missing;
        report.duplicated += c.duplicated;
        report.out_of_order += c.out_of_order;
        report.misrouted += c.misrouted;
        received += c.received;
    }
    report.deliveries_per_sec = (received as f64 / window_s).round();
    let t = &live.timings;
    let mut all_deltas = Latencies::new();
    let mut per_class = serde_json::Map::new();
    for (i, class) in Class::ALL.iter().enumerate() {
        let l = t.deltas[i]
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        if !class.conflated() {
            all_deltas.merge(&l);
        }
        let tally = classes.get(class).cloned().unwrap_or_default();
        per_class.insert(
            class.name().into(),
            json!({"tally": tally, "delta_latency_ms": l.percentiles(), "deltas_timed": l.count()}),
        );
    }
    let alerts = t
        .alerts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    report.latency_ms = all_deltas.percentiles();
    let (alert_p99, delta_p50) = (alerts.percentiles().p99, all_deltas.percentiles().p50);
    let alert_topics_published = plan.alerted.iter().filter(|&&a| ok[a] > 0).count();
    let e = &mut report.extra;
    e.insert("classes".into(), per_class.into());
    e.insert(
        "alerts".into(),
        json!({"published": plan.alerted.iter().map(|&a| ok[a]).sum::<u64>(),
               "topics": alert_topics_published, "timed": alerts.count(),
               "latency_ms": alerts.percentiles()}),
    );
    e.insert("foreground_delta_p50_ms".into(), delta_p50.into());
    if let (Some(before), Some(after)) = (stage_before, stage::scrape(&cfg.http).await) {
        let kind = |name: &str| {
            let w = stage::window(
                &stage::buckets(&before, name),
                &stage::buckets(&after, name),
            );
            let ms = |q: f64| stage::quantile(&w, q).map(|s| (s * 1e6).round() / 1e3);
            (w.last().map_or(0, |b| b.1), ms(0.5), ms(0.99))
        };
        let (alerts_n, alert_p50, alert_p99) = kind("sluice_alert_stage_seconds");
        let (deltas_n, delta_p50, delta_p99) = kind("sluice_delta_stage_seconds");
        e.insert(
            "node_stage_ms".into(),
            json!({"alerts": {"timed": alerts_n, "p50": alert_p50, "p99": alert_p99},
                   "deltas": {"timed": deltas_n, "p50": delta_p50, "p99": delta_p99}}),
        );
        if let (Some(a), Some(d)) = (alert_p99, delta_p50) {
            e.insert(
                "goal_node_stage_alert_p99_le_delta_p50".into(),
                (a <= d).into(),
            );
        }
    }
    e.insert(
        "publish_acked_ms".into(),
        json!({"deltas": acked.deltas.percentiles(), "alerts": acked.alerts.percentiles()}),
    );
    e.insert("trader_watch".into(), opt.trader_watch.into());
    e.insert(
        "goal_alert_p99_le_delta_p50".into(),
        (alerts.count() > 0 && alert_p99 <= delta_p50).into(),
    );
    let bpm = |c: Class| classes.get(&c).map_or(0.0, |t| t.bytes_per_min_per_client);
    e.insert(
        "bytes_per_min_per_client".into(),
        json!({"mobile_background": bpm(Class::MobileBackground),
               "mobile_foreground": bpm(Class::MobileForeground),
               "market": bpm(Class::Market), "private": bpm(Class::Private)}),
    );
    e.insert("subscriptions".into(), subs.iter().sum::<u64>().into());
    Ok(report)
}

/// One client: connect with its token, subscribe, then account every frame until
/// the run stops.
async fn client(
    spec: ClientSpec,
    token: String,
    url: crate::ws::WsUrl,
    bind: Option<std::net::IpAddr>,
    timeout: Duration,
    live: Arc<Live>,
) -> ConnTally {
    let mut tally = ConnTally {
        class: spec.class,
        topics: spec
            .topics
            .iter()
            .map(|&t| (t, SeqTracker::starting_at(1)))
            .collect(),
        window_bytes: 0,
        misrouted: 0,
        subscribed: false,
    };
    let mut headers = format!("Authorization: Bearer {token}\r\n");
    if let Some(b) = spec.background {
        headers.push_str(&format!("x-background-mode: {b}\r\n"));
    }
    let conn = tokio::time::timeout(timeout, open(&spec, &url, bind, &headers, timeout)).await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        other => {
            let why = match other {
                Ok(Err(e)) => format!("{}: {e:#}", spec.user),
                _ => format!("{}: no subscription within {timeout:?}", spec.user),
            };
            if let Ok(mut f) = live.first_error.lock() {
                f.get_or_insert(why);
            }
            live.failed.fetch_add(1, Relaxed);
            return tally;
        }
    };
    tally.subscribed = true;
    live.ready.fetch_add(1, Relaxed);
    let ci = class_index(spec.class);
    loop {
        let frame = tokio::select! {
            _ = live.stop.cancelled() => break,
            f = conn.next() => f,
        };
        let Ok((op, data)) = frame else { break };
        let now = live.origin.elapsed().as_nanos() as u64;
        if now >= live.window_start_ns.load(Relaxed) && now <= live.window_end_ns.load(Relaxed) {
            tally.window_bytes += data.len() as u64 + frame_header_len(data.len());
        }
        match op {
            Op::Close => {
                let why = format!(
                    "{} closed by the server: {:?}",
                    spec.user,
                    close_code(&data)
                );
                if let Ok(mut f) = live.first_error.lock() {
                    f.get_or_insert(why);
                }
                break;
            }
            Op::Text => {}
            _ => continue,
        }
        let alert = data.starts_with(br#"{"type":"alert""#);
        if !(alert
            || data.starts_with(br#"{"type":"delta""#)
            || data.starts_with(br#"{"type":"snapshot""#))
        {
            if data.starts_with(br#"{"type":"heartbeat""#) {
                let _ = conn.send_text(r#"{"type":"ping"}"#).await;
            }
            continue;
        }
        let Some(stamp) = payload::parse(&data) else {
            continue;
        };
        let Some((_, tracker)) = tally
            .topics
            .iter_mut()
            .find(|(t, _)| *t == stamp.topic as usize)
        else {
            tally.misrouted += 1;
            continue;
        };
        let seen = tracker.observe(stamp.seq);
        if seen == Seen::Duplicate {
            continue;
        }
        if !spec.class.conflated() {
            live.foreground_unique.fetch_add(1, Relaxed);
        }
        let latency = now.saturating_sub(stamp.sent_ns);
        let slot = if alert {
            &live.timings.alerts
        } else {
            &live.timings.deltas[ci]
        };
        if let Ok(mut l) = slot.lock() {
            l.record_ns(latency);
        }
    }
    tally
}

/// Connects and completes the subscription: `connected`, then one `ack` per
/// followed topic (the mobile route subscribes on its own).
async fn open(
    spec: &ClientSpec,
    url: &crate::ws::WsUrl,
    bind: Option<std::net::IpAddr>,
    headers: &str,
    timeout: Duration,
) -> anyhow::Result<WsConn> {
    let mut conn = WsConn::connect(url, bind, headers, timeout).await?;
    let mut acks = 0;
    let mut connected = false;
    while acks < spec.topics.len() {
        let (op, f) = conn.next().await?;
        match op {
            Op::Close => bail!("closed by the server: {:?}", close_code(&f)),
            Op::Text if f.starts_with(br#"{"type":"connected""#) => {
                connected = true;
                if let Some(sub) = &spec.subscribe_frame {
                    conn.send_text(sub).await?;
                }
            }
            Op::Text if f.starts_with(br#"{"type":"ack""#) => {
                let text = String::from_utf8_lossy(&f);
                if !text.contains(r#""subscribed":true"#) {
                    bail!("subscribe refused: {text}");
                }
                acks += 1;
            }
            Op::Text if f.starts_with(br#"{"type":"error""#) => {
                bail!("server error: {}", String::from_utf8_lossy(&f))
            }
            _ => {}
        }
    }
    anyhow::ensure!(connected, "acked before connected");
    Ok(conn)
}

/// Bytes of a server frame's header (unmasked) for a payload of `len`.
fn frame_header_len(len: usize) -> u64 {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}
