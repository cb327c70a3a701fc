//! `latency`: find the highest publish rate the system sustains (doubling, then
//! bisecting), then measure latency at a fixed share of it. Every step is kept as
//! a point of the latency-versus-load curve.

use std::time::Duration;

use serde::Serialize;

use crate::{
    report::Report,
    run::{measured_run, Pick, RunConfig},
};

#[derive(Debug, Clone, Copy)]
pub struct LatencyOptions {
    /// Share of the maximum to measure at (0.5 = half load).
    pub share: f64,
    /// Skip the search and take this as the maximum publish rate.
    pub max_rate: Option<f64>,
    pub start_rate: f64,
    pub step_duration: Duration,
    /// A step counts as sustained only with p99 at or under this.
    pub p99_bound_ms: f64,
    pub max_steps: u32,
}

/// One step of the ramp.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub offered_rate: f64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub lost: u64,
    pub sustained: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_percent: Option<f64>,
}

/// Whether a step kept up: nothing lost, deliveries within 5 % of what was
/// offered, p99 within the bound.
pub fn sustained(r: &Report, subscribers_per_publish: f64, p99_bound_ms: f64) -> bool {
    let offered = r.offered_rate * subscribers_per_publish;
    r.lost == 0
        && r.connect_errors == 0
        && r.publish_errors == 0
        && r.deliveries_per_sec >= 0.95 * offered
        && r.latency_ms.p99 <= p99_bound_ms
}

fn point(r: &Report, ok: bool) -> Point {
    Point {
        offered_rate: r.offered_rate,
        deliveries_per_sec: r.deliveries_per_sec,
        p50_ms: r.latency_ms.p50,
        p99_ms: r.latency_ms.p99,
        p999_ms: r.latency_ms.p999,
        lost: r.lost,
        sustained: ok,
        server_cpu_percent: r.cpu_percent.server,
    }
}

pub async fn run(cfg: &RunConfig, opt: LatencyOptions) -> anyhow::Result<Report> {
    let fanout = cfg.clients as f64 / cfg.topics.max(1) as f64;
    let mut points = Vec::new();
    let max = match opt.max_rate {
        Some(m) => m,
        None => {
            let mut step = cfg.clone();
            step.duration = opt.step_duration;
            let (mut good, mut bad) = (0.0f64, None::<f64>);
            let mut rate = opt.start_rate.max(1.0);
            for _ in 0..opt.max_steps {
                step.rate = rate;
                let r = measured_run(&step, "latency-step", Pick::RoundRobin)
                    .await?
                    .report;
                let ok = sustained(&r, fanout, opt.p99_bound_ms);
                eprintln!(
                    "step {rate:.0}/s: {:.0} deliveries/s, p99 {:.2} ms, lost {}, errors: connect {} publish {}{} -> {}",
                    r.deliveries_per_sec,
                    r.latency_ms.p99,
                    r.lost,
                    r.connect_errors,
                    r.publish_errors,
                    r.first_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    if ok { "sustained" } else { "not sustained" }
                );
                points.push(point(&r, ok));
                if ok {
                    good = rate;
                } else {
                    bad = Some(rate);
                }
                rate = match next_rate(good, bad) {
                    Some(r) => r,
                    None => break,
                };
            }
            anyhow::ensure!(
                good > 0.0,
                "not even {:.0} msg/s was sustained",
                opt.start_rate
            );
            good
        }
    };
    let mut measured = cfg.clone();
    measured.rate = (max * opt.share).max(1.0);
    let outcome = measured_run(&measured, "latency", Pick::RoundRobin).await?;
    let mut report = outcome.report;
    let ok = sustained(&report, fanout, opt.p99_bound_ms);
    points.push(point(&report, ok));
    points.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    report.extra.insert("max_rate".into(), max.into());
    report.extra.insert(
        "max_deliveries_per_sec".into(),
        (max * fanout).round().into(),
    );
    report.extra.insert("share".into(), opt.share.into());
    report
        .extra
        .insert("p99_bound_ms".into(), opt.p99_bound_ms.into());
    report
        .extra
        .insert("points".into(), serde_json::to_value(points)?);
    Ok(report)
}

/// The next rate of the search: doubling while every step is sustained, halving
/// while none is, then bisecting until the bracket is within 10 %; `None` when done.
pub fn next_rate(good: f64, bad: Option<f64>) -> Option<f64> {
    match bad {
        None => Some(good * 2.0),
        Some(b) if good == 0.0 => (b / 2.0 >= 1.0).then_some(b / 2.0),
        Some(b) if b - good > 0.1 * good => Some((good + b) / 2.0),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Percentiles;

    fn report(offered: f64, delivered: f64, p99: f64, lost: u64) -> Report {
        Report {
            offered_rate: offered,
            deliveries_per_sec: delivered,
            lost,
            latency_ms: Percentiles {
                p99,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_search_doubles_halves_then_bisects() {
        assert_eq!(next_rate(100.0, None), Some(200.0));
        // First step already too much: go down.
        assert_eq!(next_rate(0.0, Some(25.0)), Some(12.5));
        assert_eq!(next_rate(0.0, Some(1.5)), None, "below 1 msg/s: give up");
        // Bracketed: bisect until within 10 %.
        assert_eq!(next_rate(400.0, Some(800.0)), Some(600.0));
        assert_eq!(next_rate(600.0, Some(700.0)), Some(650.0));
        assert_eq!(next_rate(600.0, Some(650.0)), None, "within 10 %: done");
    }

    #[test]
    fn a_step_is_sustained_only_when_it_keeps_up_within_the_bound() {
        // 100 msg/s to 1000 subscribers: 100k deliveries/s owed.
        assert!(sustained(&report(100.0, 99_000.0, 20.0, 0), 1000.0, 50.0));
        assert!(
            !sustained(&report(100.0, 90_000.0, 20.0, 0), 1000.0, 50.0),
            "fell behind"
        );
        assert!(
            !sustained(&report(100.0, 100_000.0, 60.0, 0), 1000.0, 50.0),
            "p99 over the bound"
        );
        assert!(
            !sustained(&report(100.0, 100_000.0, 20.0, 1), 1000.0, 50.0),
            "lost one"
        );
    }
}
