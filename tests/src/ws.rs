//! [`WsClient`]: a tokio-tungstenite client speaking protocol v1 as JSON values,
//! with helpers to subscribe, read publications and see how the connection closed.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{protocol::frame::coding::CloseCode as WsCloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{seqs, RECV_TIMEOUT};

/// A WebSocket client speaking protocol v1 as JSON values.
#[derive(Debug)]
pub struct WsClient {
    pub(crate) ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
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

    /// Subscribes to `topic` with no options and returns the ack's payload.
    pub async fn subscribe_to(&mut self, topic: &str) -> Value {
        self.subscribe(json!({ "topic": topic })).await["payload"].clone()
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

    /// Reads what a server that cut this client off still sends (it lingers until
    /// the client reads): every `delta` up to the close frame, then the close code
    /// (`None` for a close frame without one). Each frame must come within `gap`;
    /// the stream must end with a close frame.
    pub async fn deltas_until_close(&mut self, gap: Duration) -> (Vec<Value>, Option<u16>) {
        let mut deltas = Vec::new();
        loop {
            let msg = tokio::time::timeout(gap, self.ws.next())
                .await
                .expect("the close frame arrives while the node lingers")
                .expect("the stream is open until the close frame")
                .expect("a frame, not a read error");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["type"] == "delta" {
                        deltas.push(v);
                    }
                }
                Message::Close(f) => return (deltas, f.map(|f| u16::from(f.code))),
                _ => {}
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
