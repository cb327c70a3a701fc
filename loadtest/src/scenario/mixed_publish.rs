//! The `mixed` run's engines: the schedule, and the two connections that publish it
//! (market and trading deltas on one, the risk engine's alerts on the other).

use std::{sync::Arc, time::Instant};

use anyhow::bail;
use fred::interfaces::FunctionInterface;
use sluice_common::publisher::{Publisher, PUBLISH_FUNCTION};
use tokio::sync::mpsc;

use super::{
    mixed::{Picker, Plan, TopicKind},
    mixed_run::MixedOptions,
};
use crate::{
    latency::Latencies,
    payload::{self, Stamp},
    run::RunConfig,
    schedule::RateSchedule,
};

/// The first stage of every message, apart: from its scheduled time to the
/// engine's pipeline getting Redis's answer (the publish is done), deltas and
/// alerts apart. What the clients measure beyond it is Redis to node to socket.
#[derive(Debug, Default)]
pub(super) struct PublishTimings {
    pub(super) deltas: Latencies,
    pub(super) alerts: Latencies,
}

/// Publishes the mix for `cfg.duration` at `cfg.rate` as a desk's engines do: the
/// market and trading engine sends its deltas pipelined per batch on its connection,
/// and the risk engine sends its alerts on its own (`publishers[1]`), so an alert
/// never waits behind a batch of another engine's deltas in the load generator
/// itself (with one connection for both, the publish stage alone had a p99 above
/// the deltas' p50). Each topic's publishes go in schedule order. Returns successful
/// publishes per topic, the error count, the first error and the publish stage's
/// timings.
pub(super) async fn publish(
    cfg: &RunConfig,
    opt: &MixedOptions,
    plan: &Arc<Plan>,
    publishers: [&Publisher; 2],
    start: Instant,
    origin: Instant,
) -> anyhow::Result<(Vec<u64>, u64, Option<String>, PublishTimings)> {
    let (tx_deltas, rx_deltas) = mpsc::unbounded_channel::<(usize, u64, u64)>();
    let (tx_alerts, rx_alerts) = mpsc::unbounded_channel::<(usize, u64, u64)>();
    let schedule = RateSchedule::new(cfg.rate, cfg.duration);
    let (plan2, zipf, seed) = (plan.clone(), opt.zipf, opt.seed);
    let thread = std::thread::spawn(move || {
        let mut picker = Picker::new(&plan2, zipf, seed);
        let mut next_seq = vec![1u64; plan2.topics.len()];
        for i in 0..schedule.len() {
            let due = start + schedule.due(i);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let t = picker.pick(&plan2);
            let seq = next_seq[t];
            next_seq[t] += 1;
            let tx = if plan2.topics[t].kind == TopicKind::Alerts {
                &tx_alerts
            } else {
                &tx_deltas
            };
            if tx
                .send((t, seq, due.duration_since(origin).as_nanos() as u64))
                .is_err()
            {
                break;
            }
        }
    });
    let (deltas, alerts) = tokio::join!(
        engine(cfg, plan, publishers[0], rx_deltas, origin),
        engine(cfg, plan, publishers[1], rx_alerts, origin),
    );
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
    let (mut ok, mut errors, mut first, mut acked) = deltas?;
    let (ok_a, errors_a, first_a, acked_a) = alerts?;
    for (o, a) in ok.iter_mut().zip(ok_a) {
        *o += a;
    }
    errors += errors_a;
    first = first.or(first_a);
    acked.alerts.merge(&acked_a.alerts);
    acked.deltas.merge(&acked_a.deltas);
    Ok((ok, errors, first, acked))
}

/// One engine: publishes what `rx` brings, each time all that is queued (up to 256)
/// as one pipeline, until the schedule ends.
async fn engine(
    cfg: &RunConfig,
    plan: &Plan,
    publisher: &Publisher,
    mut rx: mpsc::UnboundedReceiver<(usize, u64, u64)>,
    origin: Instant,
) -> anyhow::Result<(Vec<u64>, u64, Option<String>, PublishTimings)> {
    let mut acked = PublishTimings::default();
    let mut ok = vec![0u64; plan.topics.len()];
    let (mut errors, mut first) = (0u64, None);
    let mut queued = Vec::with_capacity(256);
    while rx.recv_many(&mut queued, 256).await > 0 {
        let pipe = publisher.pool().next().pipeline();
        for &(t, seq, sent_ns) in &queued {
            let body = payload::build(
                Stamp {
                    topic: t as u32,
                    seq,
                    sent_ns,
                },
                cfg.payload,
            );
            let kind = if plan.topics[t].kind == TopicKind::Alerts {
                "alert"
            } else {
                "delta"
            };
            let _: Result<(), _> = pipe
                .fcall::<(), _, _, _>(
                    PUBLISH_FUNCTION,
                    plan.topics[t].name.as_str(),
                    vec![body, kind.to_owned()],
                )
                .await;
        }
        match pipe
            .try_all::<fred::types::Value>()
            .await
            .into_iter()
            .collect::<Vec<_>>()
        {
            results if results.len() == queued.len() => {
                let now = origin.elapsed().as_nanos() as u64;
                for (&(t, _, sent_ns), r) in queued.iter().zip(results) {
                    match r {
                        Ok(_) => {
                            ok[t] += 1;
                            let stage = if plan.topics[t].kind == TopicKind::Alerts {
                                &mut acked.alerts
                            } else {
                                &mut acked.deltas
                            };
                            stage.record_ns(now.saturating_sub(sent_ns));
                        }
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert_with(|| format!("publish: {e}"));
                        }
                    }
                }
            }
            results => bail!(
                "pipeline answered {} of {} publishes",
                results.len(),
                queued.len()
            ),
        }
        queued.clear();
    }
    Ok((ok, errors, first, acked))
}
