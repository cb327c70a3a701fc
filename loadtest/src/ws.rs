//! A minimal WebSocket client (RFC 6455) for many thousands of connections: the
//! handshake, unmasked server frames parsed in place from one small buffer, masked
//! client frames, pong replies. No UTF-8 validation and no copies on the receive
//! path, so the load generator spends far less CPU per message than the systems it
//! measures.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use bytes::{Buf, BytesMut};
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Where to connect: `ws://host:port/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl WsUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .with_context(|| format!("{url}: host:port needed"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{url}: no IPv4 address"))?;
        Ok(WsUrl {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The same server with another path.
    pub fn with_path(&self, path: &str) -> Self {
        WsUrl {
            path: path.to_owned(),
            ..self.clone()
        }
    }
}

/// Opcodes the client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// One open connection.
#[derive(Debug)]
pub struct WsConn {
    stream: TcpStream,
    buf: BytesMut,
    /// A fragmented message being assembled (rare: servers fragment big ones).
    partial: Option<(Op, BytesMut)>,
    mask_state: u32,
}

const READ_CHUNK: usize = 4096;
/// Largest message accepted, against a runaway peer.
const MAX_MESSAGE: usize = 16 << 20;

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

impl WsConn {
    /// Connects from `bind` (a loopback source address, to spread connections
    /// over more than one address's 64k ports) and completes the handshake.
    pub async fn connect(
        url: &WsUrl,
        bind: Option<IpAddr>,
        headers: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(url, bind, headers))
            .await
            .with_context(|| format!("connect to {} timed out", url.addr))?
    }

    async fn connect_inner(
        url: &WsUrl,
        bind: Option<IpAddr>,
        headers: &str,
    ) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(url.addr).await?;
        stream.set_nodelay(true)?;
        let seed = rand_seed(&stream);
        // A 16-byte nonce, as RFC 6455 requires (some servers check its length).
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&seed.to_le_bytes());
        nonce[8..].copy_from_slice(
            &seed
                .rotate_left(29)
                .wrapping_mul(0x2545_F491_4F6C_DD1D)
                .to_le_bytes(),
        );
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n",
            url.path, url.host
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let end = loop {
            if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(buf.len() < 16 * 1024, "handshake response too large");
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during the handshake");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 101 ") {
            bail!("handshake refused: {}", status.trim());
        }
        let want = accept_key(&key);
        ensure!(
            head.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("sec-websocket-accept:") && l.contains(&want.to_ascii_lowercase())
            }),
            "handshake: missing or wrong Sec-WebSocket-Accept"
        );
        buf.advance(end);
        Ok(WsConn {
            stream,
            buf,
            partial: None,
            mask_state: (seed as u32) | 1,
        })
    }

    /// The next whole message: its opcode and payload. Pings are answered here and
    /// also returned (as `Op::Ping`) so callers can count them.
    pub async fn next(&mut self) -> anyhow::Result<(Op, BytesMut)> {
        loop {
            if let Some((fin, op, payload)) = self.parse_frame()? {
                match (op, fin, self.partial.take()) {
                    (Some(Op::Ping), _, partial) => {
                        self.partial = partial;
                        self.send(Op::Pong, &payload).await?;
                        return Ok((Op::Ping, payload));
                    }
                    (Some(op @ (Op::Pong | Op::Close)), _, partial) => {
                        self.partial = partial;
                        return Ok((op, payload));
                    }
                    (Some(op), true, None) => return Ok((op, payload)),
                    (Some(op), false, None) => self.partial = Some((op, payload)),
                    (None, fin, Some((op, mut acc))) => {
                        ensure!(
                            acc.len() + payload.len() <= MAX_MESSAGE,
                            "message too large"
                        );
                        acc.extend_from_slice(&payload);
                        if fin {
                            return Ok((op, acc));
                        }
                        self.partial = Some((op, acc));
                    }
                    (None, _, None) => bail!("continuation frame without a start"),
                    (Some(_), _, Some(_)) => bail!("new message inside a fragmented one"),
                }
                continue;
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed by the server");
            }
        }
    }

    /// Splits one complete frame off the buffer: (fin, opcode or None for a
    /// continuation, payload).
    fn parse_frame(&mut self) -> anyhow::Result<Option<(bool, Option<Op>, BytesMut)>> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let op = match b[0] & 0x0f {
            0x0 => None,
            0x1 => Some(Op::Text),
            0x2 => Some(Op::Binary),
            0x8 => Some(Op::Close),
            0x9 => Some(Op::Ping),
            0xA => Some(Op::Pong),
            other => bail!("unknown opcode {other:#x}"),
        };
        ensure!(b[1] & 0x80 == 0, "server frames must not be masked");
        let Some((len, hdr)) = payload_length(b)? else {
            return Ok(None);
        };
        if b.len() < hdr + len {
            if self.buf.capacity() < hdr + len {
                self.buf.reserve(hdr + len - self.buf.len());
            }
            return Ok(None);
        }
        self.buf.advance(hdr);
        Ok(Some((fin, op, self.buf.split_to(len))))
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, op: Op, payload: &[u8]) -> anyhow::Result<()> {
        let frame = self.frame(op, payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send(Op::Text, text.as_bytes()).await
    }

    /// Sends a close frame and shuts the socket down.
    pub async fn close(mut self) {
        let _ = self.send(Op::Close, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }

    fn frame(&mut self, op: Op, payload: &[u8]) -> Vec<u8> {
        let opcode = match op {
            Op::Text => 0x1,
            Op::Binary => 0x2,
            Op::Close => 0x8,
            Op::Ping => 0x9,
            Op::Pong => 0xA,
        };
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // xorshift32 for the masking key (RFC 6455 wants it unpredictable to
        // proxies; nothing here needs more).
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let mask = x.to_be_bytes();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }
}

/// A frame's payload length and where its payload (or, for a masked frame, its
/// masking key) starts, from the first bytes of `b`; `None` until the length bytes
/// are all there (RFC 6455 §5.2: 7 bits, or 16 or 64 more).
pub fn payload_length(b: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let Some(&second) = b.get(1) else {
        return Ok(None);
    };
    let (len, hdr) = match second & 0x7f {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (usize::try_from(u64::from_be_bytes(n))?, 10)
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    ensure!(len <= MAX_MESSAGE, "frame of {len} bytes is too large");
    Ok(Some((len, hdr)))
}

/// Per-connection seed for the key and masks: the local port and the clock.
fn rand_seed(stream: &TcpStream) -> u64 {
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(port) << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// Removes a client mask in place (used by the baseline server).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// An unmasked server text frame header for a payload of `len` bytes.
pub fn server_header(len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(10);
    h.push(0x81);
    match len {
        n if n < 126 => h.push(n as u8),
        n if n <= 0xffff => {
            h.push(126);
            h.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            h.push(127);
            h.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn url_parsing() {
        let u = WsUrl::parse("ws://127.0.0.1:8080/ws?x=1").expect("parses");
        assert_eq!(u.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(u.path, "/ws?x=1");
        assert_eq!(WsUrl::parse("ws://127.0.0.1:9").expect("parses").path, "/");
        assert!(WsUrl::parse("http://127.0.0.1:8080/ws").is_err());
        assert!(WsUrl::parse("ws://nohostport/ws").is_err());
    }

    #[test]
    fn payload_lengths_of_all_three_encodings() {
        for len in [0usize, 125, 126, 65_535, 70_000] {
            let h = server_header(len);
            assert_eq!(
                payload_length(&h).expect("valid"),
                Some((len, h.len())),
                "{len}"
            );
            // A header cut short waits for more bytes.
            assert_eq!(payload_length(&h[..h.len() - 1]).expect("valid"), None);
        }
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(payload_length(&huge).is_err(), "over the cap");
        assert_eq!(payload_length(&[0x81]).expect("valid"), None);
    }

    #[test]
    fn server_header_lengths() {
        assert_eq!(server_header(5), vec![0x81, 5]);
        assert_eq!(server_header(300), vec![0x81, 126, 1, 44]);
        assert_eq!(server_header(70_000)[1], 127);
    }

    /// A frame written by `frame()` unmasks back to its payload.
    #[tokio::test]
    async fn masked_frames_unmask_to_the_payload() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut conn = WsConn {
            stream,
            buf: BytesMut::new(),
            partial: None,
            mask_state: 12345,
        };
        for len in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = conn.frame(Op::Text, &payload);
            assert_eq!(f[0], 0x81);
            assert!(f[1] & 0x80 != 0, "client frames are masked");
            let (hdr, mask_at) = match len {
                n if n < 126 => (6, 2),
                n if n <= 0xffff => (8, 4),
                _ => (14, 10),
            };
            assert_eq!(f.len(), hdr + len);
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&f[mask_at..mask_at + 4]);
            let mut body = f[hdr..].to_vec();
            unmask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }
}
