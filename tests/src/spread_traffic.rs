//! An engine publishing round-robin over many topics for as long as a failover test
//! runs, half through the Rust `Publisher` and half through a node's `POST /publish`
//! (both wait for a replica when there is one). It keeps what was acknowledged
//! (topic → seq → message number) and every failed attempt with its reason, per
//! named phase, so a test can prove that each acknowledged message survived and
//! that each message Redis kept without acknowledging it was reported as an error.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};
use sluice_common::{lock::MutexExt, publisher::Publisher};
use tokio::task::JoinHandle;

use crate::ADMIN_TOKEN;

/// One attempt may take this long before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// One message is given up (failing the test) after this many failed attempts.
const MAX_RETRIES: u32 = 300;

/// What the engine has been told so far.
#[derive(Debug, Clone, Default)]
pub struct Account {
    /// topic → seq → the message number acknowledged at that seq.
    pub acked: BTreeMap<String, BTreeMap<u64, u64>>,
    /// `(phase, how)` of every failed attempt.
    pub failures: Vec<(String, String)>,
    /// `(phase, topic)` of every acknowledgement, in order.
    pub acks: Vec<(String, String)>,
    /// Set when a message ran out of retries or a seq was acknowledged twice.
    pub broken: Option<String>,
}

impl Account {
    /// Acknowledgements of `topic` during `phase`.
    pub fn acked_in(&self, phase: &str, topic: &str) -> usize {
        self.acks
            .iter()
            .filter(|(p, t)| p == phase && t == topic)
            .count()
    }

    /// The last acknowledged seq of `topic` (0 if none).
    pub fn last_seq(&self, topic: &str) -> u64 {
        self.acked
            .get(topic)
            .and_then(|s| s.keys().next_back().copied())
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct Shared {
    phase: Mutex<String>,
    account: Mutex<Account>,
    stop: AtomicBool,
}

/// What the engine does after an attempt.
enum Step {
    Done,
    Retry,
    Broken,
}

impl Shared {
    /// Books one attempt's result.
    fn record(
        &self,
        topic: &str,
        n: u64,
        phase: String,
        result: Result<u64, String>,
        tries: &mut u32,
    ) -> Step {
        let mut a = self.account.lock_unpoisoned();
        match result {
            Ok(seq) => {
                let t = a.acked.entry(topic.to_owned()).or_default();
                if let Some(before) = t.insert(seq, n) {
                    a.broken = Some(format!(
                        "{topic} seq {seq} acknowledged for {before} and {n}"
                    ));
                    return Step::Broken;
                }
                a.acks.push((phase, topic.to_owned()));
                Step::Done
            }
            Err(how) => {
                a.failures.push((phase, how));
                *tries += 1;
                if *tries > MAX_RETRIES {
                    a.broken = Some(format!("message {n} to {topic}: {MAX_RETRIES} retries"));
                    return Step::Broken;
                }
                Step::Retry
            }
        }
    }
}

/// A running engine; see the module doc.
#[derive(Debug)]
pub struct SpreadTraffic {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Publishes `{"n": n}` via `POST /publish` on `base` (a node's URL); returns the seq.
async fn post(http: &reqwest::Client, base: &str, topic: &str, n: u64) -> Result<u64, String> {
    let resp = http
        .post(format!("{base}/publish"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "topic": topic, "payload": { "n": n } }))
        .send()
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match (status, body["seq"].as_u64()) {
        (200, Some(seq)) => Ok(seq),
        _ => Err(format!("http {status}: {body}")),
    }
}

impl SpreadTraffic {
    /// Publishes to `topics` in turn every `every`; even message numbers through
    /// `engine`, odd ones through `POST /publish` on `node_http`.
    pub fn start(
        engine: Publisher,
        node_http: String,
        topics: Vec<String>,
        every: Duration,
    ) -> SpreadTraffic {
        let shared = Arc::new(Shared {
            phase: Mutex::new("start".to_owned()),
            account: Mutex::new(Account::default()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !s.stop.load(Ordering::Acquire) {
                tick.tick().await;
                n += 1;
                let topic = &topics[(n as usize) % topics.len()];
                let mut tries = 0u32;
                loop {
                    let attempt = async {
                        if n % 2 == 0 {
                            engine
                                .publish(topic, &json!({ "n": n }))
                                .await
                                .map(|p| p.seq)
                                .map_err(|e| format!("publisher: {e}"))
                        } else {
                            post(&http, &node_http, topic, n).await
                        }
                    };
                    let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err("timed out".to_owned()),
                    };
                    let phase = s.phase.lock_unpoisoned().clone();
                    match s.record(topic, n, phase, result, &mut tries) {
                        Step::Done => break,
                        Step::Broken => return,
                        Step::Retry => {}
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        });
        SpreadTraffic { shared, task }
    }

    /// Starts a new phase; what happens from now on counts toward it.
    pub fn phase(&self, name: &str) {
        *self.shared.phase.lock_unpoisoned() = name.to_owned();
    }

    /// A copy of the account so far.
    pub fn account(&self) -> Account {
        self.shared.account.lock_unpoisoned().clone()
    }

    /// Waits until each of `topics` has `n` acknowledgements in the current phase.
    pub async fn wait_acked(&self, topics: &[String], n: usize, within: Duration) {
        let phase = self.shared.phase.lock_unpoisoned().clone();
        let what = format!("{n} acknowledgements of each of {topics:?} in phase {phase:?}");
        crate::eventually(within, &what, || async {
            let a = self.account();
            a.broken.is_some() || topics.iter().all(|t| a.acked_in(&phase, t) >= n)
        })
        .await;
        if let Some(b) = self.account().broken {
            panic!("the engine failed: {b}");
        }
    }

    /// Stops publishing and returns the account; panics if the engine broke.
    pub async fn finish(self) -> Account {
        self.shared.stop.store(true, Ordering::Release);
        tokio::time::timeout(ATTEMPT_TIMEOUT * 2, self.task)
            .await
            .expect("the engine stops")
            .expect("the engine task");
        let a = self.shared.account.lock_unpoisoned().clone();
        if let Some(b) = &a.broken {
            panic!("the engine failed: {b}");
        }
        a
    }
}
