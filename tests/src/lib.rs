//! Fixtures for the integration tests: nodes started in-process on port 0, real
//! WebSocket clients (tokio-tungstenite), HTTP helpers, and Redis for cluster tests.

pub mod auth;
pub mod counting;
pub mod example_args;
pub mod follow;
pub mod process;
mod raw;
pub mod redis;
pub mod redis_containers;
pub mod redis_topology;
pub mod security;
pub mod spread_traffic;
pub mod traffic;
mod ws;

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};
use sluice_common::{publisher::PublishKind, Topic};
use sluice_node::{
    broker::{Broker, PublishRequest},
    Config, RunningNode,
};

pub use raw::{RawClient, RawFrame};
pub use ws::{Closed, WsClient};

/// The admin token every test node is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-at-least-32-bytes-long";
/// How long a test waits for any single expected frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A node running in this process.
#[derive(Debug)]
pub struct TestNode {
    pub addr: SocketAddr,
    node: Option<RunningNode>,
    http: reqwest::Client,
}

/// Starts a node on 127.0.0.1:0 with test defaults, adjusted by `tweak`.
pub async fn start_node(tweak: impl FnOnce(&mut Config)) -> TestNode {
    let mut config = Config::for_tests();
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.node_id = format!("test-{}", uuid::Uuid::new_v4().simple());
    tweak(&mut config);
    let node = sluice_node::start(config).await.expect("node starts");
    TestNode {
        addr: node.addr,
        node: Some(node),
        http: reqwest::Client::new(),
    }
}

impl TestNode {
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn node(&self) -> &RunningNode {
        self.node.as_ref().expect("node is running")
    }

    /// Connects to `/ws` and consumes the `connected` frame.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url("/ws"))
            .await
            .expect("client connects")
    }

    /// `POST /publish` with the admin token; returns `(seq, epoch)`.
    pub async fn publish(&self, topic: &str, payload: Value) -> (u64, String) {
        self.publish_body(json!({ "topic": topic, "payload": payload }))
            .await
    }

    /// Publishes `{"i": i}` for each `i` in `from..=to` over HTTP, asserting each
    /// gets seq `i` (a topic that starts at `from`); returns the last (seq, epoch).
    pub async fn publish_n(&self, topic: &str, from: u64, to: u64) -> (u64, String) {
        let mut last = (0, String::new());
        for i in from..=to {
            last = self.publish(topic, json!({ "i": i })).await;
            assert_eq!(last.0, i);
        }
        last
    }

    /// The status of `GET /ready`.
    pub async fn ready_status(&self) -> u16 {
        self.get("/ready", None).await.0
    }

    /// `redis_connected` of `GET /health`.
    pub async fn redis_connected(&self) -> Value {
        self.get_json("/health", None).await.1["redis_connected"].clone()
    }

    pub async fn publish_body(&self, body: Value) -> (u64, String) {
        let (status, v) = self
            .post("/publish", Some(ADMIN_TOKEN), &body.to_string())
            .await;
        assert_eq!(status, 200, "publish failed: {v}");
        (
            v["seq"].as_u64().expect("seq in publish answer"),
            v["epoch"]
                .as_str()
                .expect("epoch in publish answer")
                .to_owned(),
        )
    }

    /// Any POST; returns status and the body parsed as JSON (or `null`).
    pub async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self.http.post(self.http_url(path)).body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Any GET; returns status and body text.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(self.http_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http request");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    pub async fn get_json(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, body) = self.get(path, token).await;
        (s, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Publishes straight into the node's broker (no HTTP round trip), for tests that
    /// need thousands of messages quickly. Returns `(seq, epoch)`.
    pub async fn publish_direct(
        &self,
        topic: &str,
        payload_json: &str,
        snapshot_json: Option<&str>,
    ) -> (u64, String) {
        publish_to(
            &*self.node().state.broker,
            topic,
            payload_json,
            snapshot_json,
        )
        .await
    }

    /// The value of an unlabelled metric in `GET /metrics`; `None` when it is absent.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (status, text) = self.get("/metrics", None).await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        metric_value(&text, name)
    }

    /// Polls `GET /metrics` until `name` reaches at least `at_least`; returns its value.
    pub async fn wait_metric(&self, name: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.metric(name).await.unwrap_or(0.0);
            if v >= at_least {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {v} (< {at_least}) for {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Frames this node has written to sockets so far (what `/health` calls
    /// `messages_sent`), read without an HTTP round trip.
    pub fn frames_sent(&self) -> u64 {
        self.node()
            .state
            .metrics
            .sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Polls the session registry until it holds exactly `n` sessions.
    pub async fn wait_sessions(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let have = self.node().state.sessions.len();
            if have == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node still has {have} sessions (want {n}) after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Graceful shutdown (drain), as on SIGTERM.
    pub async fn shutdown(mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }

    /// Abrupt stop, as a crash: no close frames.
    pub fn kill(mut self) {
        if let Some(n) = self.node.take() {
            n.kill();
        }
    }
}

/// Publishes through any broker handle; returns `(seq, epoch)`.
pub async fn publish_to(
    broker: &dyn Broker,
    topic: &str,
    payload_json: &str,
    snapshot_json: Option<&str>,
) -> (u64, String) {
    let topic = Topic::parse(topic).expect("valid topic");
    let pos = broker
        .publish(PublishRequest {
            topic: &topic,
            kind: PublishKind::Delta,
            payload_json,
            snapshot_json,
            meta_json: None,
        })
        .await
        .expect("broker publish");
    (pos.seq, pos.epoch)
}

/// The value of the unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The resident set size of process `pid`, in kB, from `/proc/PID/status`.
pub fn read_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Asserts that `got` is exactly `from..=to` in order; `who` names the receiver.
pub fn assert_consecutive(got: &[u64], from: u64, to: u64, who: &str) {
    let want: Vec<u64> = (from..=to).collect();
    assert!(
        got == want.as_slice(),
        "{who}: expected exactly {from}..={to} in order, got {} seqs starting {:?}, ending {:?}",
        got.len(),
        got.first(),
        got.last()
    );
}

/// Seqs of publications, in order received.
pub fn seqs(pubs: &[Value]) -> Vec<u64> {
    pubs.iter()
        .map(|p| p["seq"].as_u64().expect("seq"))
        .collect()
}

/// Starts a node backed by `redis`, with test defaults adjusted by `tweak`.
pub async fn start_redis_node(
    redis: &redis::TestRedis,
    tweak: impl FnOnce(&mut Config),
) -> TestNode {
    let url = redis.url.clone();
    start_node(move |c| {
        c.redis_url = Some(url);
        tweak(c);
    })
    .await
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
