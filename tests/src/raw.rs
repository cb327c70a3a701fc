//! [`RawClient`]: a WebSocket client that reads only when told to and never answers,
//! for tests of silent and slow clients.

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, bail, Context};
use tokio::net::TcpStream;

use crate::RECV_TIMEOUT;

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
