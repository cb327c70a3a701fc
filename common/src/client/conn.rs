//! The connection task: connect, resubscribe with positions, read and deduplicate,
//! and on any loss back off and do it again.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{
    protocol::{frame::coding::CloseCode as WsCloseCode, CloseFrame},
    Message,
};

use super::{
    backoff::Jitter,
    dial::{self, Ws},
    inflate::{gunzip, InflateError},
    tracker::Tracker,
    ClientConfig, ClientState, Command, Event, Shared,
};
use crate::{
    close_code::CloseCode,
    error_code::ErrorCode,
    protocol::{FrameType, ServerFrame},
    time_fmt,
};

/// Subscribes to send again after the node refused them for want of its broker.
#[derive(Debug, Default)]
struct Retries {
    topics: std::collections::BTreeSet<String>,
    at: Option<tokio::time::Instant>,
    /// Rounds so far on this connection, for the backoff.
    attempt: u32,
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What the connection does after one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FrameOutcome {
    Continue,
    /// The node could not serve this subscription now: send it again later.
    RetrySubscribe(String),
}

/// Why a connection ended.
enum Ended {
    /// The application closed the client.
    ByUser,
    /// Lost; reconnect unless the close code says not to.
    Lost { code: Option<u16> },
    /// The client closed it for a reason retrying cannot fix (a frame over a
    /// limit); the reason is already in `last_error`.
    Refused,
}

struct Conn {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    tracker: Tracker,
    /// Frames sent while offline.
    offline: VecDeque<Value>,
    /// Topics resubscribed with a position on this connection (acks report `resumed`).
    resumed: std::collections::HashSet<String>,
    /// The heartbeat interval of the current connection, known once its `connected`
    /// frame arrived: how long it must live before the backoff starts over.
    heartbeat: Option<Duration>,
    /// TLS for `wss://`: the caller's, or the system roots' built on first use.
    tls: Option<Arc<rustls::ClientConfig>>,
}

pub(super) async fn run(
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
) {
    let seed = time_fmt::now_ms() as u64 ^ (Arc::as_ptr(&shared) as u64);
    let tls = config.tls.clone();
    let mut conn = Conn {
        config,
        commands,
        events,
        shared,
        tracker: Tracker::default(),
        offline: VecDeque::new(),
        resumed: Default::default(),
        heartbeat: None,
        tls,
    };
    let mut jitter = Jitter::new(seed);
    let mut failures: u32 = 0;
    let mut url_index = 0usize;
    let mut ever_connected = false;
    loop {
        let url = conn.config.urls[url_index % conn.config.urls.len().max(1)].clone();
        conn.set_state(if ever_connected {
            ClientState::Reconnecting
        } else {
            ClientState::Connecting
        })
        .await;
        let connected = match dial::connector(&url, &mut conn.tls) {
            Ok(tls) => dial::connect(&url, conn.config.token.as_deref(), tls).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(ws) => {
                if ever_connected {
                    conn.shared
                        .stats
                        .reconnections
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ever_connected = true;
                let started = tokio::time::Instant::now();
                conn.heartbeat = None;
                let ended = conn.serve(ws).await;
                // Only a connection that lived one heartbeat interval proves the
                // server is healthy. One that is accepted and dropped at once (a
                // crashing node, a proxy with no backend) counts as a failure, or
                // every client would hammer it at the base delay forever.
                let lived = conn.heartbeat.is_some_and(|hb| started.elapsed() >= hb);
                failures = if lived { 0 } else { failures.saturating_add(1) };
                match ended {
                    Ended::ByUser | Ended::Refused => break,
                    Ended::Lost { code } => {
                        let stop = code
                            .and_then(CloseCode::from_code)
                            .is_some_and(|c| !c.should_reconnect());
                        if stop {
                            conn.shared
                                .set_error(format!("closed with {code:?}; not reconnecting"));
                            break;
                        }
                        // 1012: that node is draining; go straight to the next URL.
                        if code == Some(CloseCode::NodeDraining.code()) {
                            url_index += 1;
                        }
                        if !lived && conn.config.max_attempts.is_some_and(|m| failures >= m) {
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                conn.shared.set_error(format!("{url}: {e}"));
                failures += 1;
                url_index += 1;
                if conn.config.max_attempts.is_some_and(|m| failures >= m) {
                    break;
                }
            }
        }
        let delay = conn.config.backoff.delay(failures, jitter.next_f64());
        if !conn.wait_offline(delay).await {
            break;
        }
    }
    conn.set_state(ClientState::Disconnected).await;
}

impl Conn {
    async fn set_state(&self, s: ClientState) {
        self.shared.set_state(s);
        let _ = self.events.send(Event::State(s)).await;
    }

    /// Applies commands while offline for `delay`; false if the user closed.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Close) => return false,
                    Some(Command::Subscribe(t)) => self.tracker.add(&t),
                    Some(Command::Unsubscribe(t)) => self.tracker.remove(&t),
                    Some(Command::Send(v)) => self.queue_offline(v),
                },
            }
        }
    }

    fn queue_offline(&mut self, v: Value) {
        if self.offline.len() >= self.config.offline_queue.max(1) {
            self.offline.pop_front();
        }
        self.offline.push_back(v);
    }

    fn subscribe_frame(&self, topic: &str) -> Value {
        match self.tracker.position(topic) {
            Some(p) => {
                json!({ "type": "subscribe", "topic": topic, "resume_from_seq": p.seq + 1, "epoch": p.epoch })
            }
            None => json!({ "type": "subscribe", "topic": topic }),
        }
    }

    async fn serve(&mut self, mut ws: Ws) -> Ended {
        // The first frame is `connected`; it announces the heartbeat interval.
        let heartbeat = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ServerFrame>(t.as_str())
                .ok()
                .and_then(|f| f.payload)
                .and_then(|p| p.get("heartbeat_interval_ms").and_then(Value::as_u64))
                .map(Duration::from_millis),
            _ => return Ended::Lost { code: None },
        };
        // A connection that says nothing for three heartbeats (or pings) is dead even
        // if the socket looks open: a killed node behind a proxy never sends a reset.
        let dead_after = 3 * heartbeat
            .unwrap_or(self.config.ping_interval)
            .min(self.config.ping_interval)
            .max(Duration::from_millis(100));
        self.heartbeat = Some(heartbeat.unwrap_or(self.config.ping_interval));
        let silence = tokio::time::sleep(dead_after);
        tokio::pin!(silence);
        self.resumed.clear();
        let topics: Vec<String> = self.tracker.topics().map(|(t, _)| t.clone()).collect();
        for t in topics {
            if self.tracker.position(&t).is_some() {
                self.resumed.insert(t.clone());
            }
            let frame = self.subscribe_frame(&t);
            if ws.send(Message::text(frame.to_string())).await.is_err() {
                return Ended::Lost { code: None };
            }
        }
        while let Some(v) = self.offline.pop_front() {
            if ws.send(Message::text(v.to_string())).await.is_err() {
                self.offline.push_front(v);
                return Ended::Lost { code: None };
            }
        }
        self.set_state(ClientState::Connected).await;
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut retries = Retries::default();
        let mut jitter = Jitter::new(time_fmt::now_micros() as u64);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Close) => {
                        let _ = ws.close(None).await;
                        return Ended::ByUser;
                    }
                    Some(Command::Subscribe(t)) => {
                        self.tracker.add(&t);
                        let frame = self.subscribe_frame(&t);
                        if ws.send(Message::text(frame.to_string())).await.is_err() {
                            return Ended::Lost { code: None };
                        }
                    }
                    Some(Command::Unsubscribe(t)) => {
                        self.tracker.remove(&t);
                        let frame = json!({ "type": "unsubscribe", "topic": t });
                        if ws.send(Message::text(frame.to_string())).await.is_err() {
                            return Ended::Lost { code: None };
                        }
                    }
                    Some(Command::Send(v)) => {
                        if ws.send(Message::text(v.to_string())).await.is_err() {
                            self.queue_offline(v);
                            return Ended::Lost { code: None };
                        }
                    }
                },
                _ = &mut silence => {
                    self.shared.set_error(format!("no frame for {dead_after:?}; presumed dead"));
                    let _ = self.events.send(Event::Closed { code: None, reason: "connection went silent".into() }).await;
                    return Ended::Lost { code: None };
                }
                msg = ws.next() => {
                    silence.as_mut().reset(tokio::time::Instant::now() + dead_after);
                    match msg {
                    Some(Ok(Message::Text(t))) => {
                        let retry = self.on_text(t.as_str()).await;
                        self.schedule_retries(retry, &mut retries, &mut jitter);
                    }
                    Some(Ok(Message::Binary(b))) => match gunzip(&b, self.config.max_inflated_bytes) {
                        Ok(t) => {
                            let retry = self.on_text(&t).await;
                            self.schedule_retries(retry, &mut retries, &mut jitter);
                        }
                        Err(InflateError::Invalid) => self.shared.set_error("binary frame is not gzip of UTF-8 text"),
                        Err(InflateError::TooLarge) => return self.refuse_inflated(&mut ws).await,
                    },
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = f.map_or((None, String::new()), |f| (Some(u16::from(f.code)), f.reason.to_string()));
                        let _ = self.events.send(Event::Closed { code, reason }).await;
                        return Ended::Lost { code };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.shared.set_error(e.to_string());
                        let _ = self.events.send(Event::Closed { code: None, reason: e.to_string() }).await;
                        return Ended::Lost { code: None };
                    }
                    None => {
                        let _ = self.events.send(Event::Closed { code: None, reason: "connection ended".into() }).await;
                        return Ended::Lost { code: None };
                    }
                }},
                _ = sleep_until_opt(retries.at), if retries.at.is_some() => {
                    retries.at = None;
                    for t in std::mem::take(&mut retries.topics) {
                        if self.tracker.topics().any(|(k, _)| *k == t) {
                            let frame = self.subscribe_frame(&t);
                            if ws.send(Message::text(frame.to_string())).await.is_err() {
                                return Ended::Lost { code: None };
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    let frame = json!({ "type": "ping", "ts": time_fmt::now_micros() });
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
                        return Ended::Lost { code: None };
                    }
                }
            }
        }
    }

    /// A compressed frame inflated past `max_inflated_bytes`: close with 1009 and
    /// stop, as for a server's 1009 (reconnecting would fetch the same frame again).
    async fn refuse_inflated(&mut self, ws: &mut Ws) -> Ended {
        let reason = format!(
            "a compressed frame inflates past max_inflated_bytes ({} bytes); refused",
            self.config.max_inflated_bytes
        );
        self.shared.set_error(reason.clone());
        let close = CloseFrame {
            code: WsCloseCode::Size,
            reason: "compressed frame too large".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(Some(close))).await;
        let code = Some(CloseCode::TooLarge.code());
        let _ = self.events.send(Event::Closed { code, reason }).await;
        Ended::Refused
    }

    /// One text frame: a single envelope or a batch (JSON array). Returns the
    /// topics whose subscribe must be retried.
    async fn on_text(&mut self, text: &str) -> Vec<String> {
        let frames = if text.starts_with('[') {
            serde_json::from_str::<Vec<ServerFrame>>(text).unwrap_or_default()
        } else {
            serde_json::from_str::<ServerFrame>(text)
                .map(|f| vec![f])
                .unwrap_or_default()
        };
        let mut retry = Vec::new();
        for f in frames {
            if let FrameOutcome::RetrySubscribe(t) = self.on_frame(f).await {
                retry.push(t);
            }
        }
        retry
    }

    fn schedule_retries(&self, topics: Vec<String>, retries: &mut Retries, jitter: &mut Jitter) {
        if topics.is_empty() {
            return;
        }
        let delay = self
            .config
            .backoff
            .delay(retries.attempt, jitter.next_f64());
        retries.attempt = retries.attempt.saturating_add(1);
        retries.topics.extend(topics);
        let at = tokio::time::Instant::now() + delay;
        retries.at = Some(retries.at.map_or(at, |t| t.min(at)));
    }

    async fn on_frame(&mut self, f: ServerFrame) -> FrameOutcome {
        use std::sync::atomic::Ordering::Relaxed;
        match f.kind {
            FrameType::Delta | FrameType::Alert | FrameType::Snapshot => {
                let (Some(topic), Some(epoch), Some(seq)) =
                    (f.topic.as_deref(), f.epoch.as_deref(), f.seq)
                else {
                    return FrameOutcome::Continue;
                };
                if self.tracker.accept(topic, epoch, seq) {
                    self.shared.stats.publications.fetch_add(1, Relaxed);
                    let _ = self.events.send(Event::Publication(f)).await;
                } else {
                    self.shared.stats.duplicates_dropped.fetch_add(1, Relaxed);
                }
            }
            FrameType::Ack => {
                let payload = f.payload.as_ref();
                if payload
                    .and_then(|p| p.get("subscribed"))
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    let topic = f.topic.clone().unwrap_or_default();
                    let recovered = payload
                        .and_then(|p| p.get("recovered"))
                        .and_then(Value::as_bool)
                        == Some(true);
                    let resumed = self.resumed.remove(&topic);
                    if resumed && !recovered {
                        // The server restarts this topic from its snapshot (whose seq
                        // may be below ours): forget the old position so it is accepted.
                        self.tracker.forget_position(&topic);
                    }
                    let _ = self
                        .events
                        .send(Event::Subscribed {
                            topic,
                            resumed,
                            recovered,
                        })
                        .await;
                }
            }
            FrameType::Pong => {
                let sent = f
                    .payload
                    .as_ref()
                    .and_then(|p| p.get("ts"))
                    .and_then(Value::as_i64);
                if let Some(sent) = sent {
                    let rtt = (time_fmt::now_micros() - sent).max(0) as u64;
                    self.shared.stats.rtt_micros.store(rtt, Relaxed);
                }
            }
            FrameType::Error => {
                // A subscribe the node could not serve (its broker failed or was
                // overloaded): retry that subscribe later on this connection. A
                // reconnect would only add load to a node that is already struggling.
                let failed_topic = f
                    .details
                    .as_ref()
                    .and_then(|d| d.get("topic"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let retry = f.code == Some(ErrorCode::InternalError)
                    && failed_topic
                        .as_ref()
                        .is_some_and(|t| self.tracker.topics().any(|(k, _)| k == t));
                let _ = self.events.send(Event::Error(f)).await;
                if let (true, Some(t)) = (retry, failed_topic) {
                    return FrameOutcome::RetrySubscribe(t);
                }
            }
            FrameType::Connected | FrameType::Heartbeat => {}
        }
        FrameOutcome::Continue
    }
}
