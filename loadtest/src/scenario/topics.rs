//! `topics`: many topics with few subscribers each, publishing Zipf-distributed
//! over the topics (a few hot instruments, a long tail), plus Redis's CPU cost per
//! publish next to the cost of a bare `XADD` measured on the same server.

use std::time::Instant;

use anyhow::Context;
use fred::{
    interfaces::{KeysInterface, StreamsInterface},
    types::streams::XCap,
};

use crate::{
    cpu::{redis_cpu, redis_stats_client},
    report::Report,
    run::{measured_run_with, run_id, Pick, RunConfig},
};

#[derive(Debug, Clone, Copy)]
pub struct TopicsOptions {
    pub zipf: f64,
    pub seed: u64,
    /// Bare XADDs to time for the comparison (0: skip).
    pub calibrate: u64,
}

/// Options of `topics` that are not `Copy`.
#[derive(Debug, Clone, Default)]
pub struct TopicsProbes {
    /// Masters (`host:port`) whose INFO cpu and commandstats are read around the
    /// window, each reported on its own (a Cluster's masters, or one Redis).
    pub redis_info: Vec<String>,
}

pub async fn run(
    cfg: &RunConfig,
    opt: TopicsOptions,
    probes: &TopicsProbes,
) -> anyhow::Result<Report> {
    let masters = if probes.redis_info.is_empty() {
        None
    } else {
        Some(crate::masters::Masters::connect(&probes.redis_info).await?)
    };
    let (xadd_us, fcall_us) = match (opt.calibrate, cfg.redis.as_deref()) {
        (n, Some(url)) if n > 0 => {
            let x = xadd_cost_us(url, n).await?;
            let f = if cfg.system == crate::target::System::Sluice {
                Some(fcall_cost_us(url, n).await?)
            } else {
                None
            };
            (Some(x), f)
        }
        _ => (None, None),
    };
    let outcome = measured_run_with(
        cfg,
        "topics",
        Pick::Zipf {
            exponent: opt.zipf,
            seed: opt.seed,
        },
        masters.as_ref(),
    )
    .await?;
    let mut report = outcome.report;
    let ok = report.published - report.publish_errors;
    if let (Some(m), Some((before, after))) = (&masters, &outcome.masters) {
        let deltas: Vec<_> = before
            .iter()
            .zip(after)
            .map(|(b, a)| crate::masters::delta(b, a))
            .collect();
        if let serde_json::Value::Object(fields) = crate::masters::report(&m.names, &deltas, ok) {
            report.extra.extend(fields);
        }
    }
    report.extra.insert("zipf_exponent".into(), opt.zipf.into());
    report.extra.insert(
        "publishes_per_sec".into(),
        (ok as f64 / cfg.duration.as_secs_f64()).round().into(),
    );
    if let (Some(s), true) = (outcome.redis_cpu_s, ok > 0) {
        let per = s * 1e6 / ok as f64;
        report
            .extra
            .insert("redis_cpu_us_per_publish".into(), round2(per).into());
        if let Some(f) = fcall_us {
            report
                .extra
                .insert("redis_cpu_us_per_unread_publish".into(), round2(f).into());
        }
        if let Some(x) = xadd_us {
            report
                .extra
                .insert("redis_cpu_us_per_xadd".into(), round2(x).into());
            report
                .extra
                .insert("publish_cost_vs_xadd".into(), round2(per / x).into());
        }
    }
    Ok(report)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Redis CPU microseconds per bare `XADD key MAXLEN ~ 1000 * field value`,
/// measured with INFO over `n` calls on a scratch key (deleted afterwards).
pub async fn xadd_cost_us(url: &str, n: u64) -> anyhow::Result<f64> {
    let client = redis_stats_client(Some(url))
        .await
        .context("connecting to Redis for the XADD calibration")?;
    let key = format!("sluice-loadtest:xadd:{}", run_id());
    let body = calibration_payload();
    let cap = XCap::try_from(("MAXLEN", "~", 1000))?;
    let before = redis_cpu(&client).await.context("INFO cpu")?;
    let t = Instant::now();
    // Pipelined in chunks, as a publisher under load would be.
    for chunk in 0..n.div_ceil(100) {
        let calls = (0..100.min(n - chunk * 100)).map(|_| {
            client.xadd::<String, _, _, _, _>(&key, false, cap.clone(), "*", ("d", body.as_str()))
        });
        for r in futures_util::future::join_all(calls).await {
            r?;
        }
    }
    let after = redis_cpu(&client).await.context("INFO cpu")?;
    let _: i64 = client.del(&key).await?;
    eprintln!(
        "calibration: {n} XADDs in {:.2}s, Redis CPU {:.1} us each",
        t.elapsed().as_secs_f64(),
        (after - before) * 1e6 / n as f64
    );
    Ok((after - before) * 1e6 / n as f64)
}

/// Redis CPU microseconds per `FCALL sluice_publish` on topics no node reads
/// (the function's own cost, without any reader being woken), over `n` calls
/// spread over 1000 scratch topics (which expire with the history TTL).
pub async fn fcall_cost_us(url: &str, n: u64) -> anyhow::Result<f64> {
    let publisher = sluice_common::publisher::Publisher::connect(url, 1).await?;
    let client = redis_stats_client(Some(url))
        .await
        .context("connecting to Redis for the FCALL calibration")?;
    let id = run_id();
    let body = calibration_payload();
    let before = redis_cpu(&client).await.context("INFO cpu")?;
    for chunk in 0..n.div_ceil(100) {
        let calls = (0..100.min(n - chunk * 100)).map(|i| {
            let topic = format!("calib.{id}.{}", (chunk * 100 + i) % 1000);
            let (p, body) = (publisher.clone(), body.clone());
            async move {
                p.publish_json(
                    &topic,
                    sluice_common::publisher::PublishKind::Delta,
                    &body,
                    None,
                )
                .await
            }
        });
        for r in futures_util::future::join_all(calls).await {
            r?;
        }
    }
    let after = redis_cpu(&client).await.context("INFO cpu")?;
    let per = (after - before) * 1e6 / n as f64;
    eprintln!("calibration: {n} FCALL sluice_publish on unread topics, Redis CPU {per:.1} us each");
    Ok(per)
}

/// The 64-byte payload the calibrations write.
fn calibration_payload() -> String {
    crate::payload::build(
        crate::payload::Stamp {
            topic: 0,
            seq: 1,
            sent_ns: 0,
        },
        64,
    )
}
