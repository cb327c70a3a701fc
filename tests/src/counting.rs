//! A raw counting client: it records every publication frame the server sent, before
//! any dedupe, so a test can prove the *server* sent no duplicate and nothing out of
//! order — the Rust client's own dedupe would hide both.
//!
//! It speaks protocol v1 over tokio-tungstenite, follows a list of URLs, and after
//! any disconnect resubscribes each topic with `resume_from_seq` (last seq + 1) and
//! the `epoch` it last saw, exactly as SPEC §3 asks of a resuming client. Per topic it
//! counts, over its whole life and across every connection:
//! * `duplicates`: a frame whose `(epoch, seq)` this client had already received;
//! * `out_of_order`: a seq lower than the last one of the same epoch, or a frame of
//!   an epoch that an other epoch had already replaced;
//! * `gaps`: a seq more than one past the last of the same epoch (a lost message).
//!
//! A `recovered: false` ack starts a new baseline (SPEC: the server then sends the
//! snapshot and continues from it, which may repeat seqs), and is counted in `resets`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_common::lock::MutexExt;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

/// How one connection of a [`CountingClient`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Still open.
    Open,
    /// A close frame with this code.
    Code(u16),
    /// The TCP stream ended (or failed) without a close frame.
    NoFrame,
    /// Nothing arrived for three heartbeat intervals: presumed dead, dropped by us.
    Silent,
}

/// One connection the client made.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    /// `node_id` of the `connected` frame: which node served this connection.
    pub node_id: String,
    pub ended: Ended,
}

/// One `ack` of a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Index into [`Counts::connections`].
    pub connection: usize,
    /// The `resume_from_seq` this client sent, if it resumed.
    pub resumed_from: Option<u64>,
    pub recovered: bool,
    pub head_seq: u64,
    pub epoch: String,
}

/// One publication frame exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub connection: usize,
    /// `snapshot`, `delta` or `alert`.
    pub kind: String,
    pub seq: u64,
    pub epoch: String,
}

/// Everything seen for one topic.
#[derive(Debug, Clone, Default)]
pub struct TopicCounts {
    /// Every publication frame, in arrival order, duplicates included.
    pub frames: Vec<Frame>,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// `recovered: false` answers to a resume.
    pub resets: u64,
    pub acks: Vec<Ack>,
    /// `(epoch, seq)` of the newest frame of the current baseline.
    pub last: Option<(String, u64)>,
    seen: HashSet<(String, u64)>,
    retired_epochs: HashSet<String>,
    /// Index into `frames` where the current baseline (after the last reset) starts.
    baseline_start: usize,
}

impl TopicCounts {
    /// Seqs of the current epoch's frames in arrival order, since the last reset.
    pub fn seqs(&self) -> Vec<u64> {
        let Some((epoch, _)) = &self.last else {
            return Vec::new();
        };
        self.frames[self.baseline_start..]
            .iter()
            .filter(|f| &f.epoch == epoch)
            .map(|f| f.seq)
            .collect()
    }

    fn on_frame(&mut self, frame: Frame) {
        let key = (frame.epoch.clone(), frame.seq);
        if self.retired_epochs.contains(&frame.epoch) {
            self.out_of_order += 1;
        } else if self.seen.contains(&key) {
            self.duplicates += 1;
        } else {
            match &self.last {
                Some((epoch, last)) if *epoch == frame.epoch => {
                    if frame.seq < *last {
                        self.out_of_order += 1;
                    } else if frame.seq > last + 1 {
                        self.gaps += 1;
                    }
                }
                Some((epoch, _)) => {
                    // A new epoch without a `recovered: false` first: the old one is over.
                    let old = epoch.clone();
                    self.retired_epochs.insert(old);
                }
                None => {}
            }
            let newer = match &self.last {
                Some((epoch, last)) => *epoch != frame.epoch || frame.seq > *last,
                None => true,
            };
            if newer {
                self.last = Some((frame.epoch.clone(), frame.seq));
            }
            self.seen.insert(key);
        }
        self.frames.push(frame);
    }

    fn on_reset(&mut self) {
        self.resets += 1;
        self.seen.clear();
        self.baseline_start = self.frames.len();
        self.last = None;
    }

    /// Panics unless the server sent this topic no duplicate, nothing out of order
    /// and no gap, and never answered a resume with `recovered: false`.
    pub fn assert_clean(&self, who: &str) {
        assert_eq!(
            (self.duplicates, self.out_of_order, self.gaps, self.resets),
            (0, 0, 0, 0),
            "{who}: (duplicates, out of order, gaps, not-recovered resumes) sent by the server; acks {:?}",
            self.acks
        );
    }

    /// [`TopicCounts::assert_clean`], and the frames form one run of seqs that ends at
    /// `last`: every message from where the client joined, exactly once, in order.
    pub fn assert_exactly_once_up_to(&self, last: u64, who: &str) {
        self.assert_clean(who);
        let seqs = self.seqs();
        let first = *seqs
            .first()
            .unwrap_or_else(|| panic!("{who}: no frame at all"));
        assert!(
            seqs.iter().copied().eq(first..=last),
            "{who}: seqs {first}..={last} expected, got {} frames ending {:?}",
            seqs.len(),
            seqs.last()
        );
    }
}

/// What a [`CountingClient`] has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub connections: Vec<Connection>,
    pub topics: HashMap<String, TopicCounts>,
    /// `error` frames, as received.
    pub errors: Vec<Value>,
    /// Connect attempts that failed before a `connected` frame.
    pub failed_connects: u64,
}

impl Counts {
    pub fn topic(&self, topic: &str) -> &TopicCounts {
        self.topics
            .get(topic)
            .unwrap_or_else(|| panic!("topic {topic} was never subscribed"))
    }

    /// Connections after the first one.
    pub fn reconnects(&self) -> usize {
        self.connections.len().saturating_sub(1)
    }

    /// The node of every connection, in order.
    pub fn nodes(&self) -> Vec<String> {
        self.connections.iter().map(|c| c.node_id.clone()).collect()
    }
}

/// A counting client running in its own task until [`CountingClient::stop`].
#[derive(Debug)]
pub struct CountingClient {
    counts: Arc<Mutex<Counts>>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

/// Delay before the next URL after a connection ended (none after 1012, as SPEC §7
/// asks of a client: a draining node sends its clients elsewhere at once).
const RETRY_DELAY: Duration = Duration::from_millis(100);

impl CountingClient {
    /// Starts connecting to `urls[0]` (then the next URL after each disconnect) and
    /// subscribes `topics` on every connection.
    pub fn start(urls: Vec<String>, topics: &[&str]) -> CountingClient {
        assert!(!urls.is_empty(), "a counting client needs a URL");
        let counts = Arc::new(Mutex::new(Counts::default()));
        {
            let mut c = counts.lock_unpoisoned();
            for t in topics {
                c.topics.insert((*t).to_owned(), TopicCounts::default());
            }
        }
        let stop = Arc::new(Notify::new());
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let task = tokio::spawn(run(urls, topics, counts.clone(), stop.clone()));
        CountingClient { counts, stop, task }
    }

    /// A copy of everything counted so far.
    pub fn counts(&self) -> Counts {
        self.counts.lock_unpoisoned().clone()
    }

    /// The newest `(epoch, seq)` of `topic`.
    pub fn last(&self, topic: &str) -> Option<(String, u64)> {
        self.counts.lock_unpoisoned().topic(topic).last.clone()
    }

    /// Waits until `topic`'s newest seq is at least `seq`; panics after `within`.
    pub async fn wait_seq(&self, topic: &str, seq: u64, within: Duration) {
        let what = format!("{topic} reaches seq {seq}");
        crate::eventually(within, &what, || async {
            self.last(topic).is_some_and(|(_, s)| s >= seq)
        })
        .await;
    }

    /// Waits until at least `n` connections were made; panics after `within`.
    pub async fn wait_connections(&self, n: usize, within: Duration) {
        crate::eventually(within, &format!("{n} connections"), || async {
            self.counts.lock_unpoisoned().connections.len() >= n
        })
        .await;
    }

    /// Stops the client (closing its socket) and returns the final counts.
    pub async fn stop(self) -> Counts {
        self.stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let c = self.counts.lock_unpoisoned().clone();
        c
    }
}

async fn run(
    urls: Vec<String>,
    topics: Vec<String>,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<Notify>,
) {
    let mut next = 0usize;
    loop {
        let url = urls[next % urls.len()].clone();
        next += 1;
        let ended = tokio::select! {
            _ = stop.notified() => return,
            e = session(&url, &topics, &counts) => e,
        };
        // 1012: the node drains; the contract says reconnect elsewhere at once.
        if ended != Some(Ended::Code(1012)) {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }
}

/// One connection: connect, subscribe (resuming), count until it ends. Returns how
/// it ended, or `None` if it never got a `connected` frame.
async fn session(url: &str, topics: &[String], counts: &Arc<Mutex<Counts>>) -> Option<Ended> {
    let connect = tokio::time::timeout(crate::RECV_TIMEOUT, tokio_tungstenite::connect_async(url));
    let Ok(Ok((mut ws, _))) = connect.await else {
        counts.lock_unpoisoned().failed_connects += 1;
        return None;
    };
    let first = tokio::time::timeout(crate::RECV_TIMEOUT, ws.next()).await;
    let connected: Value = match first {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    if connected["type"] != "connected" {
        counts.lock_unpoisoned().failed_connects += 1;
        return None;
    }
    let hb_ms = connected["payload"]["heartbeat_interval_ms"]
        .as_u64()
        .unwrap_or(30_000);
    // SPEC §7: three missed heartbeats and the connection is presumed dead (a killed
    // node behind a proxy leaves the tunnel open). Plus a second of slack.
    let silence = Duration::from_millis(hb_ms * 3 + 1000);
    let (conn, resumes) = {
        let mut c = counts.lock_unpoisoned();
        c.connections.push(Connection {
            url: url.to_owned(),
            node_id: connected["payload"]["node_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ended: Ended::Open,
        });
        let resumes: Vec<(String, Option<(String, u64)>)> = topics
            .iter()
            .map(|t| (t.clone(), c.topics[t].last.clone()))
            .collect();
        (c.connections.len() - 1, resumes)
    };
    let mut pending: HashMap<String, Option<u64>> = HashMap::new();
    for (topic, last) in resumes {
        let mut req = json!({"type": "subscribe", "topic": topic});
        if let Some((epoch, seq)) = &last {
            req["resume_from_seq"] = json!(seq + 1);
            req["epoch"] = json!(epoch);
        }
        pending.insert(topic, last.map(|(_, s)| s + 1));
        if ws.send(Message::text(req.to_string())).await.is_err() {
            return Some(end(counts, conn, Ended::NoFrame));
        }
    }
    loop {
        let msg = match tokio::time::timeout(silence, ws.next()).await {
            Err(_) => return Some(end(counts, conn, Ended::Silent)),
            Ok(None) | Ok(Some(Err(_))) => return Some(end(counts, conn, Ended::NoFrame)),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(f) => {
                let e = f.map_or(Ended::NoFrame, |f| Ended::Code(u16::from(f.code)));
                return Some(end(counts, conn, e));
            }
            _ => continue,
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        let mut c = counts.lock_unpoisoned();
        match v["type"].as_str() {
            Some("snapshot" | "delta" | "alert") => {
                let topic = v["topic"].as_str().unwrap_or_default();
                let frame = Frame {
                    connection: conn,
                    kind: v["type"].as_str().unwrap_or_default().to_owned(),
                    seq: v["seq"].as_u64().unwrap_or(0),
                    epoch: v["epoch"].as_str().unwrap_or_default().to_owned(),
                };
                c.topics
                    .entry(topic.to_owned())
                    .or_default()
                    .on_frame(frame);
            }
            Some("ack") if v["payload"]["subscribed"] == true => {
                let topic = v["topic"].as_str().unwrap_or_default().to_owned();
                let resumed_from = pending.remove(&topic).flatten();
                let recovered = v["payload"]["recovered"] == true;
                let t = c.topics.entry(topic).or_default();
                if resumed_from.is_some() && !recovered {
                    t.on_reset();
                }
                t.acks.push(Ack {
                    connection: conn,
                    resumed_from,
                    recovered,
                    head_seq: v["payload"]["head_seq"].as_u64().unwrap_or(0),
                    epoch: v["payload"]["epoch"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
            Some("error") => c.errors.push(v),
            _ => {}
        }
    }
}

fn end(counts: &Arc<Mutex<Counts>>, conn: usize, how: Ended) -> Ended {
    counts.lock_unpoisoned().connections[conn].ended = how.clone();
    how
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, epoch: &str) -> Frame {
        Frame {
            connection: 0,
            kind: "delta".into(),
            seq,
            epoch: epoch.into(),
        }
    }

    fn counts(frames: &[(u64, &str)]) -> TopicCounts {
        let mut t = TopicCounts::default();
        for (s, e) in frames {
            t.on_frame(frame(*s, e));
        }
        t
    }

    #[test]
    fn a_clean_run_counts_nothing_and_yields_its_seqs() {
        let t = counts(&[(3, "e"), (4, "e"), (5, "e")]);
        t.assert_exactly_once_up_to(5, "clean");
        assert_eq!(t.seqs(), [3, 4, 5]);
    }

    #[test]
    fn a_repeated_seq_is_a_duplicate_even_after_later_ones() {
        let t = counts(&[(1, "e"), (2, "e"), (3, "e"), (2, "e")]);
        assert_eq!((t.duplicates, t.out_of_order, t.gaps), (1, 0, 0));
        assert_eq!(
            t.frames.len(),
            4,
            "every frame is kept, duplicates included"
        );
    }

    #[test]
    fn a_skipped_seq_is_a_gap_and_its_late_arrival_is_out_of_order() {
        let t = counts(&[(1, "e"), (3, "e"), (2, "e")]);
        assert_eq!((t.duplicates, t.out_of_order, t.gaps), (0, 1, 1));
    }

    #[test]
    fn a_frame_of_a_replaced_epoch_is_out_of_order() {
        let t = counts(&[(7, "old"), (1, "new"), (8, "old")]);
        assert_eq!((t.duplicates, t.out_of_order, t.gaps), (0, 1, 0));
        assert_eq!(t.last, Some(("new".into(), 1)));
        assert_eq!(t.seqs(), [1]);
    }

    #[test]
    fn a_not_recovered_resume_starts_a_new_baseline() {
        let mut t = counts(&[(1, "e"), (2, "e"), (3, "e")]);
        t.on_reset();
        // The snapshot at 2 and the deltas after it may repeat seqs legitimately.
        for s in [2, 3, 4] {
            t.on_frame(frame(s, "e"));
        }
        assert_eq!(
            (t.duplicates, t.out_of_order, t.gaps, t.resets),
            (0, 0, 0, 1)
        );
        assert_eq!(t.seqs(), [2, 3, 4]);
    }

    #[test]
    #[should_panic(expected = "duplicates")]
    fn assert_clean_fails_on_a_duplicate() {
        counts(&[(1, "e"), (1, "e")]).assert_clean("dup");
    }
}
