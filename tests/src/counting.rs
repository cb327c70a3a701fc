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

mod counts;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_common::lock::MutexExt;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

pub use counts::{Ack, Connection, Counts, Ended, Frame, TopicCounts};

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
