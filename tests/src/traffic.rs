//! An engine publishing one topic for as long as a fault test runs: it publishes until
//! the test has done its fault steps and then for a tail, counts per named phase the
//! publishes begun and acknowledged, and bounds its retries — so a fault can never
//! land after the traffic stopped, and a stuck Redis fails the test instead of
//! hanging it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::json;
use sluice_common::{lock::MutexExt, publisher::Publisher};
use tokio::task::JoinHandle;

/// Publishes begun and acknowledged while one phase of the test was current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    /// Publish calls begun in this phase (retries included).
    pub begun: u64,
    /// Publishes whose acknowledgement (seq, epoch) arrived in this phase.
    pub acked: u64,
    /// Attempts that failed or timed out in this phase.
    pub failed: u64,
    /// The longest a publish begun in this phase waited for its acknowledgement
    /// (retries included): a Redis pause shows here as a wait of about its length.
    pub slowest: Duration,
}

/// The engine's account after [`Traffic::finish`].
#[derive(Debug, Clone)]
pub struct TrafficReport {
    /// The topic's last seq the engine was given.
    pub last_seq: u64,
    pub phases: Vec<Phase>,
    /// Retries over the whole run.
    pub retries: u64,
    /// The most retries one message needed.
    pub max_retries_for_one: u32,
}

impl TrafficReport {
    pub fn phase(&self, name: &str) -> &Phase {
        self.phases
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no phase {name:?} in {:?}", self.phases))
    }

    /// Panics unless every named phase had at least one acknowledged publish.
    pub fn assert_acked_in(&self, names: &[&str]) {
        for n in names {
            assert!(
                self.phase(n).acked > 0,
                "no publish was acknowledged during {n:?}: the fault did not happen under traffic; phases {:?}",
                self.phases
            );
        }
    }
}

#[derive(Debug)]
struct Shared {
    phases: Mutex<Vec<Phase>>,
    stop: AtomicBool,
    last_seq: AtomicU64,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Phase)) {
        let mut phases = self.phases.lock_unpoisoned();
        if let Some(p) = phases.last_mut() {
            f(p);
        }
    }

    fn current_index(&self) -> usize {
        let phases = self.phases.lock_unpoisoned();
        phases.len() - 1
    }

    fn record_wait(&self, phase: usize, waited: Duration) {
        let mut phases = self.phases.lock_unpoisoned();
        let p = &mut phases[phase];
        p.slowest = p.slowest.max(waited);
    }
}

/// A running engine; see the module doc.
#[derive(Debug)]
pub struct Traffic {
    shared: Arc<Shared>,
    task: JoinHandle<Result<(u64, u32), String>>,
}

/// One attempt may take this long before it counts as failed: above a short Redis
/// pause on purpose, so most attempts just wait the pause out.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_DELAY: Duration = Duration::from_millis(100);

impl Traffic {
    /// Publishes `{"n": i}` to `topic` every `every`, in phase `"start"` until the
    /// test names another. One message is given up after `max_retries` retries, which
    /// fails the test at [`Traffic::finish`].
    pub fn start(engine: Publisher, topic: &str, every: Duration, max_retries: u32) -> Traffic {
        let shared = Arc::new(Shared {
            phases: Mutex::new(vec![Phase {
                name: "start".to_owned(),
                begun: 0,
                acked: 0,
                failed: 0,
                slowest: Duration::ZERO,
            }]),
            stop: AtomicBool::new(false),
            last_seq: AtomicU64::new(0),
        });
        let topic = topic.to_owned();
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut n, mut retries, mut max_for_one) = (0u64, 0u64, 0u32);
            while !s.stop.load(Ordering::Acquire) {
                tick.tick().await;
                n += 1;
                let mut tries = 0u32;
                let (began_in, began_at) = (s.current_index(), tokio::time::Instant::now());
                loop {
                    s.count(|p| p.begun += 1);
                    let body = json!({ "n": n });
                    let attempt = engine.publish(&topic, &body);
                    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                        Ok(Ok(pos)) => {
                            let prev = s.last_seq.load(Ordering::Acquire);
                            // An attempt that timed out may still have landed, so a
                            // retry can skip a seq; it can never go backwards.
                            if pos.seq <= prev {
                                return Err(format!("seq went from {prev} to {}", pos.seq));
                            }
                            s.last_seq.store(pos.seq, Ordering::Release);
                            s.count(|p| p.acked += 1);
                            s.record_wait(began_in, began_at.elapsed());
                            break;
                        }
                        Ok(Err(_)) | Err(_) => {
                            s.count(|p| p.failed += 1);
                            tries += 1;
                            retries += 1;
                            max_for_one = max_for_one.max(tries);
                            if tries > max_retries {
                                return Err(format!(
                                    "message {n} not acknowledged after {max_retries} retries"
                                ));
                            }
                            tokio::time::sleep(RETRY_DELAY).await;
                        }
                    }
                }
            }
            Ok((retries, max_for_one))
        });
        Traffic { shared, task }
    }

    /// Starts a new phase; what happens from now on counts toward it.
    pub fn phase(&self, name: &str) {
        self.shared.phases.lock_unpoisoned().push(Phase {
            name: name.to_owned(),
            begun: 0,
            acked: 0,
            failed: 0,
            slowest: Duration::ZERO,
        });
    }

    /// The current phase's counts.
    pub fn current(&self) -> Phase {
        let phases = self.shared.phases.lock_unpoisoned();
        phases.last().cloned().expect("a phase")
    }

    /// The last seq acknowledged so far.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// Waits until the current phase has `n` acknowledged publishes.
    pub async fn wait_acked(&self, n: u64, within: Duration) {
        let what = format!(
            "{n} publishes acknowledged in phase {:?}",
            self.current().name
        );
        // A finished task (a message out of retries) ends the wait; `finish` reports why.
        crate::eventually(within, &what, || async {
            self.current().acked >= n || self.task.is_finished()
        })
        .await;
    }

    /// Publishes a tail (phase `"tail"`) of at least `tail` acknowledged messages,
    /// stops, and returns the account. Panics if a message exhausted its retries.
    pub async fn finish(self, tail: u64, within: Duration) -> TrafficReport {
        self.phase("tail");
        self.wait_acked(tail, within).await;
        self.shared.stop.store(true, Ordering::Release);
        let (retries, max_retries_for_one) = tokio::time::timeout(within, self.task)
            .await
            .expect("the engine stops")
            .expect("the engine task")
            .unwrap_or_else(|e| panic!("the engine failed: {e}"));
        let report = TrafficReport {
            last_seq: self.shared.last_seq.load(Ordering::Acquire),
            phases: self.shared.phases.lock_unpoisoned().clone(),
            retries,
            max_retries_for_one,
        };
        eprintln!(
            "engine: last seq {}, {} retries (at most {} for one message); phases {:?}",
            report.last_seq, report.retries, report.max_retries_for_one, report.phases
        );
        report
    }
}
