//! The reconnecting client against small WebSocket servers written here: `wss://`
//! with a self-signed certificate, a gzip bomb, and servers that drop connections
//! young or old (how the backoff grows and starts over).

// The servers here are test helpers outside `#[test]` functions; clippy's
// allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_common::client::{
    tls_trusting, Backoff, Client, ClientConfig, ClientState, Event, DEFAULT_MAX_INFLATED_BYTES,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

/// How long a test waits for any one expected event.
const WAIT: Duration = Duration::from_secs(30);

fn connected_frame(heartbeat_ms: u64) -> Message {
    Message::text(
        json!({"type": "connected", "ts": "2026-12-01T00:00:00.000Z", "payload": {
            "connection_id": "c1", "node_id": "test", "heartbeat_interval_ms": heartbeat_ms, "protocol": 1
        }})
        .to_string(),
    )
}

fn delta(topic: &str, seq: u64) -> String {
    json!({"type": "delta", "topic": topic, "seq": seq, "epoch": "e1",
           "ts": "2026-12-01T00:00:00.000Z", "payload": {"seq": seq}})
    .to_string()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The next event the test cares about, skipping state changes unless asked for.
async fn next_event(client: &mut Client, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .expect("an event in time")
            .expect("the client is still running");
        if want(&ev) {
            return ev;
        }
    }
}

/// Serves one subscription: answers a `subscribe` with an ack and one delta.
async fn serve_subscription<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    ws.send(connected_frame(30_000)).await.unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] == "subscribe" {
            let topic = v["topic"].as_str().unwrap().to_owned();
            let ack = json!({"type": "ack", "topic": topic, "ts": "2026-12-01T00:00:00.000Z",
                "payload": {"subscribed": true, "head_seq": 0, "epoch": "e1", "recovered": false}});
            ws.send(Message::text(ack.to_string())).await.unwrap();
            ws.send(Message::text(delta(&topic, 1))).await.unwrap();
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert DER, key DER).
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    (c.cert.der().to_vec(), c.key_pair.serialize_der())
}

/// A `wss://` server with `cert`; every connection serves one subscription.
async fn tls_server(cert: Vec<u8>, key: Vec<u8>) -> SocketAddr {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate fails the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(ws) = tokio_tungstenite::accept_async(tls).await {
                    serve_subscription(ws).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_works_with_a_trusted_self_signed_certificate() {
    let (cert, key) = self_signed();
    let addr = tls_server(cert.clone(), key).await;
    let mut config = ClientConfig::new(format!("wss://127.0.0.1:{}/ws", addr.port()));
    config.tls = Some(tls_trusting([cert]).unwrap());
    let mut client = Client::connect(config);
    client.subscribe("prices.TLS");
    let ev = next_event(&mut client, |e| matches!(e, Event::Publication(_))).await;
    let Event::Publication(f) = ev else {
        unreachable!()
    };
    assert_eq!(f.topic.as_deref(), Some("prices.TLS"));
    assert_eq!(f.seq, Some(1));
    assert_eq!(client.state(), ClientState::Connected);
    client.close().await;
}

#[tokio::test]
async fn wss_refuses_a_certificate_it_does_not_trust() {
    let (cert, key) = self_signed();
    let addr = tls_server(cert, key).await;
    // Trust another self-signed certificate, not the server's.
    let (other, _) = self_signed();
    let mut config = ClientConfig::new(format!("wss://127.0.0.1:{}/ws", addr.port()));
    config.tls = Some(tls_trusting([other]).unwrap());
    config.max_attempts = Some(1);
    let mut client = Client::connect(config);
    next_event(&mut client, |e| {
        *e == Event::State(ClientState::Disconnected)
    })
    .await;
    let err = client.stats().last_error.lock().unwrap().clone().unwrap();
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );
}

#[tokio::test]
async fn a_gzip_bomb_closes_the_connection_with_1009_and_stops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0u32));
    let close_seen = Arc::new(Mutex::new(None::<u16>));
    let (acc, seen) = (accepted.clone(), close_seen.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            *acc.lock().unwrap() += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                ws.send(connected_frame(30_000)).await.unwrap();
                // Only after the client's subscribe: a delta for a topic it has not
                // subscribed yet would be dropped, and the test would race.
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(&m, Message::Text(t) if t.as_str().contains("subscribe")) {
                        break;
                    }
                }
                // A legitimate compressed frame first: it is delivered.
                let ok = delta("prices.GZ", 1);
                ws.send(Message::binary(gzip(ok.as_bytes()))).await.unwrap();
                // Then 8 MiB of zeros in about 8 KiB: over the client's 1 MiB limit.
                let bomb = gzip(&vec![0u8; 8 << 20]);
                assert!(bomb.len() < 64 << 10);
                ws.send(Message::binary(bomb)).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Close(Some(f)) = m {
                        *seen.lock().unwrap() = Some(u16::from(f.code));
                    }
                }
            });
        }
    });
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.max_inflated_bytes = 1 << 20;
    let mut client = Client::connect(config);
    client.subscribe("prices.GZ");
    let ev = next_event(&mut client, |e| matches!(e, Event::Publication(_))).await;
    assert!(matches!(ev, Event::Publication(f) if f.seq == Some(1)));
    let ev = next_event(&mut client, |e| matches!(e, Event::Closed { .. })).await;
    let Event::Closed { code, reason } = ev else {
        unreachable!()
    };
    assert_eq!(code, Some(1009));
    assert!(reason.contains("max_inflated_bytes"), "{reason}");
    next_event(&mut client, |e| {
        *e == Event::State(ClientState::Disconnected)
    })
    .await;
    let err = client.stats().last_error.lock().unwrap().clone().unwrap();
    assert!(err.contains("max_inflated_bytes (1048576 bytes)"), "{err}");
    // The server saw the close with 1009, and the client did not come back.
    let deadline = Instant::now() + WAIT;
    while close_seen.lock().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*close_seen.lock().unwrap(), Some(1009));
    assert_eq!(*accepted.lock().unwrap(), 1);
    assert_eq!(ClientConfig::new("ws://x").max_inflated_bytes, 16 << 20);
    assert_eq!(DEFAULT_MAX_INFLATED_BYTES, 16 << 20);
}

/// A server that records when it accepted each connection, sends `connected`
/// announcing `heartbeat_ms`, and then holds the connection for `hold` (or until
/// the client goes) before dropping it.
async fn dropping_server(
    heartbeat_ms: u64,
    hold: Duration,
) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let log = accepts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            log.lock().unwrap().push(Instant::now());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = ws.send(connected_frame(heartbeat_ms)).await;
                let _ =
                    tokio::time::timeout(hold, async { while ws.next().await.is_some() {} }).await;
                // Dropped without a close frame, like a crashing node.
            });
        }
    });
    (addr, accepts)
}

async fn wait_accepts(accepts: &Mutex<Vec<Instant>>, n: usize) -> Vec<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = accepts.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} connections in 60 s",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connections_dropped_at_once_make_the_backoff_keep_growing() {
    let (addr, accepts) = dropping_server(1_000, Duration::ZERO).await;
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_secs(10),
    };
    let client = Client::connect(config);
    let at = wait_accepts(&accepts, 6).await;
    client.close().await;
    // After the k-th short-lived connection the delay is at least half of
    // base·2^k: 50, 100, 200, 400, 800 ms. A backoff that started over on every
    // connect would stay at 25–50 ms.
    for k in 1..=5u32 {
        let gap = at[k as usize] - at[k as usize - 1];
        let floor = Duration::from_millis(25) * 2u32.pow(k);
        assert!(
            gap >= floor,
            "gap {k} was {gap:?}, expected at least {floor:?}: {at:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_that_lived_a_heartbeat_interval_starts_the_backoff_over() {
    // Heartbeat 100 ms; each connection lives about 300 ms (the client presumes it
    // dead after three silent heartbeats), longer than one interval.
    let (addr, accepts) = dropping_server(100, Duration::from_secs(5)).await;
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.backoff = Backoff {
        base: Duration::from_millis(300),
        cap: Duration::from_secs(10),
    };
    let client = Client::connect(config);
    let at = wait_accepts(&accepts, 5).await;
    client.close().await;
    // Each gap is one lifetime (~300 ms) plus a delay of at most the base (300 ms).
    // A growing backoff would make the fourth gap at least 300 + 2400 ms.
    for k in 1..5 {
        let gap = at[k] - at[k - 1];
        assert!(
            gap < Duration::from_millis(1_800),
            "gap {k} was {gap:?}: the backoff did not start over: {at:?}"
        );
    }
}
