//! The subscribers: a few worker threads, each a current-thread tokio runtime
//! holding thousands of connections, each connection one task that subscribes to
//! one topic and checks every message it receives (seq, topic, latency from the
//! scheduled send time). Counters the driver polls live in `Shared`; the full
//! accounting comes back when the fleet stops.

use std::{
    cell::RefCell,
    net::IpAddr,
    rc::Rc,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{
    accounting::{Seen, SeqTracker, Tally},
    latency::Latencies,
    payload,
    target::{close_code, json_str_field, num_field, Incoming, System},
    ws::{Op, WsConn, WsUrl},
};

/// What the fleet is and does.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub system: System,
    /// Connections are spread over these round-robin; with `reconnect`, all
    /// start on the first and move to the next when theirs is lost.
    pub urls: Vec<WsUrl>,
    pub topics: Arc<Vec<String>>,
    pub clients: usize,
    /// Source addresses, used round-robin (each gives ~28k ports).
    pub bind_ips: Vec<IpAddr>,
    pub workers: usize,
    /// New connections per second while the fleet opens.
    pub connect_rate: f64,
    pub timeout: Duration,
    /// Reconnect and resume (Sluice) when a connection is lost.
    pub reconnect: bool,
    /// Extra request headers for the upgrade (`Name: value\r\n` each).
    pub headers: String,
}

/// Counters shared with the driver while the fleet runs.
#[derive(Debug)]
pub struct Shared {
    /// The run's clock: stamps carry nanoseconds since this instant.
    pub origin: Instant,
    pub stop: CancellationToken,
    pub ready: AtomicU64,
    pub connect_errors: AtomicU64,
    pub disconnects: AtomicU64,
    pub resubscribed: AtomicU64,
    /// Failed attempts to reconnect (each is retried).
    pub reconnect_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// Receipts of stamped messages, and the distinct ones, per worker.
    pub delivered: Vec<AtomicU64>,
    pub unique: Vec<AtomicU64>,
    /// Per topic: connections subscribed (counted once each).
    pub subscribers: Vec<AtomicU64>,
    /// Per connection: the highest seq received.
    pub highest: Vec<AtomicU64>,
    /// Deliveries after this (ns since origin) fall outside the measured window.
    pub window_end_ns: AtomicU64,
    /// When the first connection was lost and the last one resubscribed.
    pub first_loss_ns: AtomicU64,
    pub last_resubscribe_ns: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn unique(&self) -> u64 {
        self.unique.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn note_error(&self, e: &anyhow::Error) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

/// What one worker measured.
#[derive(Debug, Default)]
pub struct WorkerOut {
    pub tally: Tally,
    pub latencies: Latencies,
    pub in_window: u64,
    pub misrouted: u64,
    /// Per topic: (subscribers, distinct seqs received by them in total).
    pub per_topic_unique: Vec<u64>,
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    pub shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<anyhow::Result<WorkerOut>>>,
}

impl Fleet {
    /// Starts the workers; connections open at `connect_rate` from now.
    pub fn start(spec: FleetSpec, origin: Instant) -> anyhow::Result<Fleet> {
        anyhow::ensure!(!spec.urls.is_empty(), "at least one --url is needed");
        anyhow::ensure!(!spec.topics.is_empty(), "at least one topic is needed");
        let workers = spec.workers.max(1);
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        let shared = Arc::new(Shared {
            origin,
            stop: CancellationToken::new(),
            ready: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            resubscribed: AtomicU64::new(0),
            reconnect_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            delivered: counters(workers),
            unique: counters(workers),
            subscribers: counters(spec.topics.len()),
            highest: counters(spec.clients),
            window_end_ns: AtomicU64::new(u64::MAX),
            first_loss_ns: AtomicU64::new(u64::MAX),
            last_resubscribe_ns: AtomicU64::new(0),
            first_error: Mutex::new(None),
        });
        let spec = Arc::new(spec);
        let start_at = Instant::now();
        let handles = (0..workers)
            .map(|w| {
                let (spec, shared) = (spec.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("loadtest-worker-{w}"))
                    .spawn(move || run_worker(w, workers, spec, shared, start_at))
                    .context("spawning a worker thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Fleet {
            shared,
            workers: handles,
        })
    }

    /// Stops every connection and merges what the workers measured.
    pub fn stop(self) -> anyhow::Result<WorkerOut> {
        self.shared.stop.cancel();
        let mut total = WorkerOut {
            per_topic_unique: vec![0; self.shared.subscribers.len()],
            ..Default::default()
        };
        for h in self.workers {
            let out = h
                .join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            total.tally += out.tally;
            total.latencies.merge(&out.latencies);
            total.in_window += out.in_window;
            total.misrouted += out.misrouted;
            for (t, u) in out.per_topic_unique.iter().enumerate() {
                total.per_topic_unique[t] += u;
            }
        }
        Ok(total)
    }
}

fn run_worker(
    w: usize,
    workers: usize,
    spec: Arc<FleetSpec>,
    shared: Arc<Shared>,
    start_at: Instant,
) -> anyhow::Result<WorkerOut> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let out = Rc::new(RefCell::new(WorkerOut {
        per_topic_unique: vec![0; spec.topics.len()],
        ..Default::default()
    }));
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for i in (w..spec.clients).step_by(workers) {
            let delay = Duration::from_secs_f64(i as f64 / spec.connect_rate.max(1.0));
            let (spec, shared, out) = (spec.clone(), shared.clone(), out.clone());
            tasks.push(tokio::task::spawn_local(async move {
                tokio::time::sleep_until((start_at + delay).into()).await;
                connection(i, w, &spec, &shared, &out).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    drop(local);
    Rc::try_unwrap(out)
        .map(RefCell::into_inner)
        .map_err(|_| anyhow::anyhow!("worker state still shared"))
}

/// How a connection's read loop ended.
enum End {
    Stopped,
    Lost,
}

/// One subscriber, from connect to stop (reconnecting if the spec says so).
async fn connection(
    i: usize,
    w: usize,
    spec: &FleetSpec,
    shared: &Shared,
    out: &RefCell<WorkerOut>,
) {
    let topic_idx = i % spec.topics.len();
    let topic = &spec.topics[topic_idx];
    let bind = spec.bind_ips.get(i % spec.bind_ips.len().max(1)).copied();
    let mut url_idx = if spec.reconnect {
        0
    } else {
        i % spec.urls.len()
    };
    let mut tracker = SeqTracker::starting_at(1);
    let mut latencies = Latencies::new();
    let (mut in_window, mut misrouted) = (0u64, 0u64);
    // Sluice position for resuming: (last seq seen + 1, epoch).
    let mut position: Option<(u64, String)> = None;
    let mut subscribed_once = false;
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        if shared.stop.is_cancelled() {
            break;
        }
        let url = spec.system.subscribe_url(&spec.urls[url_idx], topic);
        let attempt = async {
            let mut conn = WsConn::connect(&url, bind, &spec.headers, spec.timeout).await?;
            let resume = position.as_ref().map(|(s, e)| (*s, e.as_str()));
            let epoch = spec
                .system
                .subscribe(&mut conn, topic, resume, spec.timeout)
                .await?;
            anyhow::Ok((conn, epoch))
        };
        let (mut conn, epoch) = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = attempt => match r {
                Ok(c) => c,
                Err(e) => {
                    if !subscribed_once {
                        shared.connect_errors.fetch_add(1, Relaxed);
                        shared.note_error(&e.context(url.addr.to_string()));
                        break;
                    }
                    // A reconnect refused (the other node is busy or also gone):
                    // try the next URL shortly.
                    shared.reconnect_errors.fetch_add(1, Relaxed);
                    shared.note_error(&e.context(format!("reconnect to {}", url.addr)));
                    url_idx = (url_idx + 1) % spec.urls.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        };
        if subscribed_once {
            shared.resubscribed.fetch_add(1, Relaxed);
            shared
                .last_resubscribe_ns
                .fetch_max(shared.now_ns(), Relaxed);
        } else {
            subscribed_once = true;
            shared.subscribers[topic_idx].fetch_add(1, Relaxed);
            shared.ready.fetch_add(1, Relaxed);
        }
        match (epoch, position.as_mut()) {
            // Resumed: the ack names the epoch now followed.
            (Some((_, e)), Some(p)) => p.1 = e,
            // First subscription: resume later from just past the head it saw.
            (Some((head, e)), None) => position = Some((head + 1, e)),
            _ => {}
        }
        let end = loop {
            let next = tokio::select! {
                biased;
                _ = &mut stop => break End::Stopped,
                r = conn.next() => r,
            };
            let (op, frame) = match next {
                Ok(f) => f,
                Err(_) => break End::Lost,
            };
            match op {
                Op::Text | Op::Binary => {}
                Op::Close => {
                    if close_code(&frame) == Some(1000) && shared.stop.is_cancelled() {
                        break End::Stopped;
                    }
                    break End::Lost;
                }
                Op::Ping | Op::Pong => continue,
            }
            match spec.system.classify(&frame) {
                Incoming::Data => {}
                Incoming::Reply(text) => {
                    if conn.send_text(text).await.is_err() {
                        break End::Lost;
                    }
                    continue;
                }
                Incoming::Error => {
                    shared.server_errors.fetch_add(1, Relaxed);
                    shared.note_error(&anyhow::anyhow!(
                        "server error frame: {}",
                        String::from_utf8_lossy(&frame)
                    ));
                    continue;
                }
                Incoming::Other => continue,
            }
            let Some(stamp) = payload::parse(&frame) else {
                continue;
            };
            if stamp.topic as usize != topic_idx {
                misrouted += 1;
                continue;
            }
            let now = shared.now_ns();
            shared.delivered[w].fetch_add(1, Relaxed);
            if tracker.observe(stamp.seq) != Seen::Duplicate {
                shared.unique[w].fetch_add(1, Relaxed);
                latencies.record_ns(now.saturating_sub(stamp.sent_ns));
                if now <= shared.window_end_ns.load(Relaxed) {
                    in_window += 1;
                }
            }
            shared.highest[i].store(tracker.highest(), Relaxed);
            if spec.reconnect {
                // Resume from the envelope's seq (the topic's, which the
                // publisher keeps equal to the stamp's on a fresh topic).
                let text = String::from_utf8_lossy(&frame);
                let seq = num_field(&text, "seq").unwrap_or(stamp.seq);
                let epoch = json_str_field(&text, "epoch").unwrap_or_default();
                match position.as_mut() {
                    Some(p) => {
                        p.0 = seq + 1;
                        if !epoch.is_empty() {
                            p.1 = epoch;
                        }
                    }
                    None => position = Some((seq + 1, epoch)),
                }
            }
        };
        match end {
            End::Stopped => {
                conn.close().await;
                break;
            }
            End::Lost => {
                shared.disconnects.fetch_add(1, Relaxed);
                shared.first_loss_ns.fetch_min(shared.now_ns(), Relaxed);
                if !spec.reconnect {
                    break;
                }
                url_idx = (url_idx + 1) % spec.urls.len();
            }
        }
    }
    let mut o = out.borrow_mut();
    o.tally += tracker.tally();
    o.latencies.merge(&latencies);
    o.in_window += in_window;
    o.misrouted += misrouted;
    if subscribed_once {
        o.per_topic_unique[topic_idx] += tracker.tally().unique;
    }
}
