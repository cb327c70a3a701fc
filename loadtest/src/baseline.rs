//! The physical-limit baseline: a raw tokio fan-out with no broker, no protocol
//! and no per-message work beyond what any gateway must do. Subscribers open
//! `/sub/<topic>`; a publisher opens `/pub` and sends text frames `<topic>\n<payload>`.
//! Each publication is wrapped once in a Sluice-shaped delta envelope and framed
//! once; every subscriber's writer task takes all frames queued for it and writes
//! them with one `writev`. What Sluice does on top (Redis, ordering, resume, limits)
//! is the difference between the two.

use std::{
    collections::HashMap,
    io::IoSlice,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use crate::ws::{accept_key, payload_length, server_header, unmask};

type Subscribers = Arc<RwLock<HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>>;

/// Serves until the process is stopped.
pub fn serve(bind: SocketAddr, threads: usize, envelope: Envelope) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // The same deep accept queue as the node's (`TcpListener::bind` asks for
        // 1024): in a reconnect storm a short queue drops SYNs, and each dropped
        // client waits a 1 s retransmit, which would measure the queue, not the server.
        let socket = if bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket
            .bind(bind)
            .with_context(|| format!("binding {bind}"))?;
        let listener = socket.listen(65_535)?;
        eprintln!("baseline-server listening on {}", listener.local_addr()?);
        let subs: Subscribers = Arc::default();
        loop {
            let (stream, _) = listener.accept().await?;
            let subs = subs.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, subs, envelope).await {
                    tracing_free_log(&e);
                }
            });
        }
    })
}

fn tracing_free_log(e: &anyhow::Error) {
    let msg = format!("{e:#}");
    if !msg.contains("closed") && !msg.contains("reset") {
        eprintln!("baseline-server: {msg}");
    }
}

async fn connection(
    mut stream: TcpStream,
    subs: Subscribers,
    envelope: Envelope,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 8192 || stream.read_buf(&mut buf).await? == 0 {
            bail!("bad handshake");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        })
        .context("no Sec-WebSocket-Key")?;
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    if let Some(topic) = path.strip_prefix("/sub/") {
        // Registered before the 101 goes out, so a subscriber that has its
        // answer misses nothing published after.
        let (tx, rx) = mpsc::unbounded_channel();
        subs.write()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        stream.write_all(reply.as_bytes()).await?;
        subscriber(stream, rx).await
    } else if path == "/pub" {
        stream.write_all(reply.as_bytes()).await?;
        publisher(stream, buf, subs, envelope).await
    } else {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            .await?;
        Ok(())
    }
}

/// Writes every queued frame with as few `writev` calls as the kernel allows;
/// reads only to notice the peer going away.
async fn subscriber(
    stream: TcpStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> anyhow::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let reader = async {
        let mut sink = [0u8; 512];
        while rd.read(&mut sink).await? > 0 {}
        anyhow::Ok(())
    };
    let writer = async {
        let mut batch: Vec<Bytes> = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 1024).await > 0 {
            let mut offset = 0usize; // bytes of the batch already written
            let total: usize = batch.iter().map(Bytes::len).sum();
            while offset < total {
                let mut skip = offset;
                let slices: Vec<IoSlice<'_>> = batch
                    .iter()
                    .filter_map(|b| {
                        if skip >= b.len() {
                            skip -= b.len();
                            None
                        } else {
                            let s = IoSlice::new(&b[skip..]);
                            skip = 0;
                            Some(s)
                        }
                    })
                    .take(512)
                    .collect();
                let n = wr.write_vectored(&slices).await?;
                if n == 0 {
                    bail!("closed");
                }
                offset += n;
            }
            batch.clear();
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Reads `<topic>\n<payload>` frames and fans each out.
async fn publisher(
    mut stream: TcpStream,
    mut buf: BytesMut,
    subs: Subscribers,
    envelope: Envelope,
) -> anyhow::Result<()> {
    let mut seqs: HashMap<String, u64> = HashMap::new();
    loop {
        while let Some((op, payload)) = parse_client_frame(&mut buf)? {
            match op {
                0x8 => return Ok(()),
                0x1 | 0x2 => {
                    let text =
                        std::str::from_utf8(&payload).context("publish frame is not UTF-8")?;
                    let (topic, body) = text
                        .split_once('\n')
                        .context("publish frame needs topic\\npayload")?;
                    let seq = seqs.entry(topic.to_owned()).or_insert(0);
                    *seq += 1;
                    let frame = envelope_frame_as(envelope, topic, *seq, body);
                    let senders = subs.read().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
                    if let Some(list) = senders.get(topic) {
                        for tx in list {
                            let _ = tx.send(frame.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// What the baseline wraps each publication in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Envelope {
    /// The envelope SPEC §3 asks of a gateway, field for field and byte for byte as
    /// long as Sluice's under `compare.py` (a 10-character epoch, the ISO `ts`,
    /// `meta.node` of the same length as the node id `bench`): a client parsing
    /// every frame does the same work against both systems.
    Spec,
    /// The envelope without `ts` and `meta` (about 70 bytes shorter), as measured
    /// before 2026-12-02: its clients parse less per frame than Sluice's.
    Short,
}

/// The frame subscribers get: header + a Sluice-shaped delta envelope.
pub fn envelope_frame(topic: &str, seq: u64, payload: &str) -> Bytes {
    envelope_frame_as(Envelope::Spec, topic, seq, payload)
}

/// The frame subscribers get, in the given envelope.
pub fn envelope_frame_as(envelope: Envelope, topic: &str, seq: u64, payload: &str) -> Bytes {
    let body = match envelope {
        Envelope::Spec => format!(
            r#"{{"type":"delta","topic":"{topic}","seq":{seq},"epoch":"baseline00","ts":"{}","payload":{payload},"meta":{{"node":"bench"}}}}"#,
            sluice_common::time_fmt::now()
        ),
        Envelope::Short => format!(
            r#"{{"type":"delta","topic":"{topic}","seq":{seq},"epoch":"baseline","payload":{payload}}}"#
        ),
    };
    let mut f = server_header(body.len());
    f.extend_from_slice(body.as_bytes());
    Bytes::from(f)
}

/// One masked client frame off the buffer: (opcode, unmasked payload).
pub fn parse_client_frame(buf: &mut BytesMut) -> anyhow::Result<Option<(u8, BytesMut)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let op = buf[0] & 0x0f;
    if buf[1] & 0x80 == 0 {
        bail!("client frames must be masked");
    }
    let Some((len, hdr)) = payload_length(buf)? else {
        return Ok(None);
    };
    if buf.len() < hdr + 4 + len {
        return Ok(None);
    }
    let mask = [buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]];
    buf.advance(hdr + 4);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some((op, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON body of a server frame, after checking its header.
    fn body(f: &[u8]) -> serde_json::Value {
        assert_eq!(f[0], 0x81);
        let (len, header) = payload_length(f).expect("header").expect("whole header");
        assert_eq!(header + len, f.len());
        serde_json::from_slice(&f[header..]).expect("JSON")
    }

    #[test]
    fn envelope_is_a_sluice_shaped_delta() {
        let v = body(&envelope_frame("bench.a.0", 7, r#"{"ls":7}"#));
        assert_eq!(v["type"], "delta");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["payload"]["ls"], 7);
        assert_eq!(v["meta"]["node"], "bench");
        assert_eq!(v["epoch"].as_str().map(str::len), Some(10));
        assert_eq!(v["ts"].as_str().map(str::len), Some(24), "{v}");
        let short = body(&envelope_frame_as(
            Envelope::Short,
            "bench.a.0",
            7,
            r#"{"ls":7}"#,
        ));
        assert_eq!(short["seq"], 7);
        assert!(short.get("ts").is_none() && short.get("meta").is_none());
    }

    #[test]
    fn the_spec_envelope_is_as_long_as_the_nodes() {
        // The node's envelope for the same publication under compare.py (node id
        // "bench", a 10-character epoch, the ISO ts), as a client receives it.
        let node = r#"{"type":"delta","topic":"bench.t","seq":1,"epoch":"hoow8p6fng","ts":"2026-12-02T02:00:24.135Z","payload":{"p":1},"meta":{"node":"bench"}}"#;
        let f = envelope_frame("bench.t", 1, r#"{"p":1}"#);
        let (len, _) = payload_length(&f).expect("header").expect("whole header");
        assert_eq!(len, node.len());
    }

    #[test]
    fn masked_frames_parse_whole_or_wait() {
        let mask = [1u8, 2, 3, 4];
        let text = b"bench.a.0\n{}";
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert!(
            parse_client_frame(&mut buf).expect("ok").is_none(),
            "incomplete"
        );
        buf.extend_from_slice(&frame[frame.len() - 1..]);
        let (op, payload) = parse_client_frame(&mut buf).expect("ok").expect("whole");
        assert_eq!(op, 1);
        assert_eq!(&payload[..], text);
        assert!(buf.is_empty());
        let mut unmasked = BytesMut::from(&[0x81u8, 0x01, b'x'][..]);
        assert!(parse_client_frame(&mut unmasked).is_err());
    }
}
