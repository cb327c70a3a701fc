//! Fixtures for the integration tests: nodes started in-process on port 0, real
//! WebSocket clients (tokio-tungstenite), HTTP helpers, and Redis for cluster tests.

pub mod counting;
pub mod follow;
pub mod process;
pub mod redis;
pub mod redis_topology;
pub mod security;
pub mod traffic;

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_common::{publisher::PublishKind, Topic};
use sluice_node::{
    broker::{Broker, PublishRequest},
    Config, RunningNode,
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{protocol::frame::coding::CloseCode as WsCloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

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

/// A WebSocket client speaking protocol v1 as JSON values.
#[derive(Debug)]
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The payload of the `connected` frame.
    pub connected: Value,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The TCP connection ended without a close frame.
    NoFrame,
}

impl WsClient {
    /// Connects and reads the `connected` frame.
    pub async fn connect(url: &str) -> anyhow::Result<WsClient> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let mut c = WsClient {
            ws,
            connected: Value::Null,
        };
        let first = c.recv().await?;
        if first["type"] != "connected" {
            bail!("first frame is not 'connected': {first}");
        }
        c.connected = first["payload"].clone();
        Ok(c)
    }

    /// Connects without reading anything; returns the HTTP status of a refused upgrade.
    pub async fn try_connect(url: &str) -> Result<WsClient, u16> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => {
                let mut c = WsClient {
                    ws,
                    connected: Value::Null,
                };
                let first = c.recv().await.map_err(|_| 0u16)?;
                c.connected = first["payload"].clone();
                Ok(c)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(_) => Err(0),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_message(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next JSON text frame, skipping heartbeats; fails after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            let v = self.recv_any().await?;
            if v["type"] != "heartbeat" {
                return Ok(v);
            }
        }
    }

    /// The next JSON text frame of any type, heartbeats included.
    pub async fn recv_any(&mut self) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {RECV_TIMEOUT:?}"))?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                Message::Close(f) => bail!("closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for a frame within `d`; `None` if nothing arrived.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        tokio::time::timeout(d, self.recv())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Subscribes and returns the ack.
    pub async fn subscribe(&mut self, req: Value) -> Value {
        let mut req = req;
        req["type"] = json!("subscribe");
        self.send_json(req).await;
        let ack = self.recv().await.expect("ack");
        assert_eq!(ack["type"], "ack", "expected an ack, got {ack}");
        ack
    }

    /// Reads frames until `n` publications (delta/alert/snapshot) arrived; returns them.
    pub async fn recv_pubs(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self
                .recv()
                .await
                .unwrap_or_else(|e| panic!("after {} of {n} publications: {e}", out.len()));
            if matches!(v["type"].as_str(), Some("delta" | "alert" | "snapshot")) {
                out.push(v);
            }
        }
        out
    }

    /// Reads until the server closes; returns the close code. Fails after [`RECV_TIMEOUT`].
    pub async fn expect_close(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("server did not close within {RECV_TIMEOUT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::NoFrame,
                Ok(Some(Ok(Message::Close(f)))) => {
                    return f.map_or(Closed::NoFrame, |f| Closed::Code(u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }

    /// Sends a protocol `ping` and waits for its `pong`, proving the session is open
    /// and still answering. Asserts both `correlation_id` and `ts` are echoed.
    pub async fn ping_pong(&mut self, correlation_id: &str) {
        let ts = format!("ts-{correlation_id}");
        self.send_json(json!({"type": "ping", "correlation_id": correlation_id, "ts": ts}))
            .await;
        let pong = self
            .recv()
            .await
            .unwrap_or_else(|e| panic!("no pong for {correlation_id}: {e}"));
        assert_eq!(pong["type"], "pong", "expected a pong, got {pong}");
        assert_eq!(pong["correlation_id"], correlation_id, "{pong}");
        assert_eq!(pong["payload"]["ts"], ts.as_str(), "{pong}");
    }

    /// Asserts the next frame (heartbeats skipped) is the delta `seq` of `topic`. Called
    /// after publishing a sentinel behind the messages a test expects: a duplicate or
    /// stray frame would have to arrive before it on this connection, so this proves
    /// "nothing else arrived" without waiting out a quiet window.
    pub async fn expect_sentinel(&mut self, topic: &str, seq: u64) {
        let v = self
            .recv()
            .await
            .unwrap_or_else(|e| panic!("no sentinel {topic}#{seq}: {e}"));
        assert!(
            v["type"] == "delta" && v["topic"] == topic && v["seq"] == seq,
            "the next frame is not the sentinel {topic}#{seq}: {v}"
        );
    }

    /// Reads publications until one with `seq >= last` arrives; returns all of them.
    pub async fn recv_pubs_until(&mut self, last: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        loop {
            let v = self.recv().await.unwrap_or_else(|e| {
                panic!("waiting for seq {last}, after {:?}: {e}", seqs(&out).last())
            });
            if matches!(v["type"].as_str(), Some("delta" | "alert" | "snapshot")) {
                let seq = v["seq"].as_u64().expect("seq");
                out.push(v);
                if seq >= last {
                    return out;
                }
            }
        }
    }

    /// The raw stream, for tests that need frame-level control.
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

/// A bare WebSocket client over raw TCP: it does the handshake, then only reads when
/// told to and never answers anything, not even pings. A tungstenite client answers
/// pings whenever it reads, so "silent" clients need this one.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame as [`RawClient`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// A close frame and its code, if it carried one.
    Close(Option<u16>),
}

impl RawClient {
    /// Connects to `path` and completes the upgrade; nothing else is read.
    pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<RawClient> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no upgrade response"))??;
            if n == 0 {
                bail!("connection closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        buf.drain(..end);
        Ok(RawClient { stream, buf })
    }

    async fn fill(&mut self, want: usize, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no frame within the deadline"))??;
            if n == 0 {
                bail!("connection ended");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Reads the next frame (server frames are never masked nor, here, fragmented).
    pub async fn read_frame(&mut self, within: Duration) -> anyhow::Result<RawFrame> {
        let deadline = tokio::time::Instant::now() + within;
        self.fill(2, deadline).await?;
        let opcode = self.buf[0] & 0x0f;
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                self.fill(4, deadline).await?;
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                self.fill(10, deadline).await?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (usize::try_from(u64::from_be_bytes(b))?, 10)
            }
            n => (usize::from(n), 2),
        };
        self.fill(header + len, deadline).await?;
        let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        Ok(match opcode {
            0x1 => RawFrame::Text(String::from_utf8(payload)?),
            0x2 => RawFrame::Binary(payload),
            0x8 => RawFrame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            0x9 => RawFrame::Ping,
            0xa => RawFrame::Pong,
            other => bail!("unexpected opcode {other}"),
        })
    }

    /// Reads every frame up to and including the close frame; fails if the
    /// connection ends without one or nothing arrives `within`.
    pub async fn read_until_close(&mut self, within: Duration) -> anyhow::Result<Vec<RawFrame>> {
        let mut frames = Vec::new();
        loop {
            let f = self.read_frame(within).await.with_context(|| {
                format!("after {} frames, last {:?}", frames.len(), frames.last())
            })?;
            let done = matches!(f, RawFrame::Close(_));
            frames.push(f);
            if done {
                return Ok(frames);
            }
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
