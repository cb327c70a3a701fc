//! Abuse at the network edge, against in-process nodes: slowloris and silent
//! sockets, sockets that never upgrade filling the connection cap, connections
//! without a PROXY header, forged `X-Forwarded-For`, and per-IP caps keyed by the
//! PROXY address and by IPv6 /64.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::Value;
use sluice_node::net::proxy;
use sluice_tests::{start_node, TestNode, ADMIN_TOKEN, RECV_TIMEOUT};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderName, Message},
    WebSocketStream,
};

type Ws = WebSocketStream<TcpStream>;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// Opens a TCP connection to `node`, writes `preamble` (a PROXY header, or
/// nothing), then upgrades on `/ws` with `headers`. Returns the socket after its
/// `connected` frame, or the HTTP status of a refusal (0: closed without one).
async fn ws_via(node: &TestNode, preamble: &[u8], headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    tcp.write_all(preamble).await.expect("write");
    ws_on(tcp, node, headers).await
}

/// Upgrades on `/ws` over `tcp`, whatever was written on it before.
async fn ws_on(tcp: TcpStream, node: &TestNode, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut req = node.ws_url("/ws").into_client_request().expect("request");
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
        req.headers_mut()
            .append(name, v.parse().expect("header value"));
    }
    let (mut ws, _) = match tokio_tungstenite::client_async(req, tcp).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            return Err(resp.status().as_u16())
        }
        Err(_) => return Err(0),
    };
    let first = tokio::time::timeout(RECV_TIMEOUT, ws.next())
        .await
        .expect("connected frame in time");
    match first {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).expect("JSON frame");
            assert_eq!(v["type"], "connected", "{v}");
            Ok(ws)
        }
        other => panic!("expected the connected frame, got {other:?}"),
    }
}

/// Connects on `/ws` (no PROXY header), retrying for up to 10 s while refused.
async fn ws_eventually(node: &TestNode) -> Ws {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws_via(node, b"", &[]).await {
            Ok(ws) => return ws,
            Err(status) => assert!(
                Instant::now() < deadline,
                "still refused ({status}) after 10 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` with the admin token over a fresh connection that first sends
/// `preamble`; returns the status and the JSON body.
async fn raw_get(node: &TestNode, preamble: &[u8], path: &str) -> (u16, Value) {
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    tcp.write_all(preamble).await.expect("write");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The sorted `client_ip`s of `/connections`.
async fn client_ips(node: &TestNode, preamble: &[u8]) -> Vec<String> {
    let (status, v) = raw_get(node, preamble, "/connections").await;
    assert_eq!(status, 200, "{v}");
    let mut ips: Vec<String> = v["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["client_ip"].as_str().expect("client_ip").to_owned())
        .collect();
    ips.sort();
    ips
}

/// Reads until the server closes the socket; returns when that happened and the
/// bytes it sent first. Write errors (the server already gone) count as closed.
async fn wait_closed(
    tcp: TcpStream,
    trickle: Option<Duration>,
    limit: Duration,
) -> (Instant, Vec<u8>) {
    let (mut rd, mut wr) = tcp.into_split();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(trickle.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    let mut writing = trickle.is_some();
    let deadline = tokio::time::Instant::now() + limit;
    let mut n = 0;
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (Instant::now(), got),
                Ok(k) => got.extend_from_slice(&buf[..k]),
            },
            _ = tick.tick(), if writing => {
                n += 1;
                // One more header line a second, never the blank line that ends them.
                if wr.write_all(format!("X-Slow-{n}: x\r\n").as_bytes()).await.is_err() {
                    writing = false;
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("socket still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn a_slowloris_socket_is_closed_within_the_handshake_timeout() {
    let node = start_node(|c| c.handshake_timeout = Duration::from_secs(2)).await;
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    let start = Instant::now();
    tcp.write_all(b"GET /ws HTTP/1.1\r\n").await.expect("write");
    // The generous limit only keeps a broken build from hanging; the bound under
    // test is asserted below.
    let (closed, got) =
        wait_closed(tcp, Some(Duration::from_secs(1)), Duration::from_secs(30)).await;
    let took = closed - start;
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    // Nothing was upgraded or answered with success.
    assert!(!String::from_utf8_lossy(&got).contains(" 101 "), "{got:?}");
    assert_eq!(node.node().state.sessions.len(), 0);
}

#[tokio::test]
async fn a_slow_http2_preface_is_closed_within_the_handshake_timeout() {
    // The bytes an HTTP/2 client opens with, one a second: before hyper even knows
    // it is HTTP/1, the handshake deadline must already be running.
    let node = start_node(|c| c.handshake_timeout = Duration::from_secs(2)).await;
    let tcp = TcpStream::connect(node.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
        .await
        .expect("closed within 30 s");
    let took = start.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    writer.abort();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() {
    let node = start_node(|c| c.handshake_timeout = Duration::from_secs(2)).await;
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // Read the whole answer (its body is JSON, so it ends with '}').
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"}") {
        let n = tokio::time::timeout(RECV_TIMEOUT, tcp.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Kept alive, then closed once no next request came within the timeout.
    let start = Instant::now();
    let (closed, more) = wait_closed(tcp, None, Duration::from_secs(30)).await;
    let took = closed - start;
    assert!(more.is_empty(), "{:?}", String::from_utf8_lossy(&more));
    assert!(took >= Duration::from_millis(1000), "closed after {took:?}");
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
}

#[tokio::test]
async fn a_silent_socket_is_closed_within_the_handshake_timeout() {
    let node = start_node(|c| c.handshake_timeout = Duration::from_secs(2)).await;
    let tcp = TcpStream::connect(node.addr).await.expect("connect");
    let start = Instant::now();
    let (closed, got) = wait_closed(tcp, None, Duration::from_secs(30)).await;
    let took = closed - start;
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn sockets_that_never_upgrade_count_against_max_connections() {
    let node = start_node(|c| {
        c.max_connections = 2;
        c.handshake_timeout = Duration::from_secs(3);
    })
    .await;
    let idle_a = TcpStream::connect(node.addr).await.expect("connect");
    let idle_b = TcpStream::connect(node.addr).await.expect("connect");
    // Both sockets are in the accept queue before the client's, so they hold the
    // two slots when it arrives: it is closed without an HTTP answer.
    assert_eq!(ws_via(&node, b"", &[]).await.err(), Some(0));
    // A third idle socket is closed at once, long before the handshake timeout.
    let extra = TcpStream::connect(node.addr).await.expect("connect");
    let start = Instant::now();
    let (closed, got) = wait_closed(extra, None, Duration::from_secs(30)).await;
    assert!(got.is_empty());
    assert!(
        closed - start < Duration::from_secs(2),
        "{:?}",
        closed - start
    );
    // Closing one idle socket gives its slot back.
    drop(idle_a);
    let _ws = ws_eventually(&node).await;
    assert_eq!(node.node().state.sessions.len(), 1);
    // The session and the idle socket fill the node again.
    assert_eq!(ws_via(&node, b"", &[]).await.err(), Some(0));
    // The idle socket is closed by the handshake timeout, which frees its slot.
    let (_, got) = wait_closed(idle_b, None, Duration::from_secs(30)).await;
    assert!(got.is_empty());
    let _ws2 = ws_eventually(&node).await;
}

#[tokio::test]
async fn proxy_protocol_clients_are_capped_by_their_own_address() {
    let node = start_node(|c| {
        c.proxy_protocol = true;
        c.max_connections_per_ip = 2;
    })
    .await;
    let lb = sa("10.9.9.9:8080");
    let a = proxy::encode_v2(sa("203.0.113.7:40001"), lb, &[]);
    let b = proxy::encode_v1(sa("203.0.113.7:40002"), lb);
    let c = proxy::encode_v2(sa("203.0.113.7:40003"), lb, &[]);
    let other = proxy::encode_v1(sa("198.51.100.20:5000"), lb);
    let _a = ws_via(&node, &a, &[]).await.expect("first from .7");
    let _b = ws_via(&node, &b, &[]).await.expect("second from .7");
    assert_eq!(ws_via(&node, &c, &[]).await.err(), Some(429));
    let _o = ws_via(&node, &other, &[]).await.expect("another address");
    // An admin call through a health-check style LOCAL header (the peer's address).
    let ips = client_ips(&node, &proxy::encode_v2_local()).await;
    assert_eq!(ips, ["198.51.100.20", "203.0.113.7", "203.0.113.7"]);
}

#[tokio::test]
async fn with_proxy_protocol_a_connection_without_a_header_is_closed() {
    let node = start_node(|c| c.proxy_protocol = true).await;
    // A WebSocket client that speaks HTTP straight away.
    assert_eq!(ws_via(&node, b"", &[]).await.err(), Some(0));
    // A malformed header is refused as soon as it is seen, without an answer.
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    tcp.write_all(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 1\r\nGET /health HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let (closed, got) = wait_closed(tcp, None, Duration::from_secs(30)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        closed - start < Duration::from_secs(3),
        "{:?}",
        closed - start
    );
    // A plain HTTP request gets no answer either.
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (_, got) = wait_closed(tcp, None, Duration::from_secs(30)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(node.node().state.sessions.len(), 0);
    // The same request behind a header is answered.
    let (status, v) = raw_get(
        &node,
        &proxy::encode_v1(sa("192.0.2.1:1"), sa("192.0.2.2:2")),
        "/health",
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Loopback, where the test connects from, is not in the trusted range.
    let node = start_node(|c| {
        c.trusted_proxies = vec!["10.0.0.0/8".parse().expect("a CIDR")];
        c.max_connections_per_ip = 1;
    })
    .await;
    let _a = ws_via(&node, b"", &[("X-Forwarded-For", "198.51.100.1")])
        .await
        .expect("first");
    // A different forged address does not buy a second slot.
    let refused = ws_via(&node, b"", &[("X-Forwarded-For", "198.51.100.2")]).await;
    assert_eq!(refused.err(), Some(429));
    assert_eq!(client_ips(&node, b"").await, ["127.0.0.1"]);
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_is_believed() {
    let node = start_node(|c| {
        c.trusted_proxies = vec![
            "127.0.0.0/8".parse().expect("a CIDR"),
            "10.0.0.0/8".parse().expect("a CIDR"),
        ];
        c.max_connections_per_ip = 1;
    })
    .await;
    // The right-most untrusted hop is the client; a forged left-most one is not.
    let _a = ws_via(
        &node,
        b"",
        &[("X-Forwarded-For", "6.6.6.6, 198.51.100.1, 10.1.1.1")],
    )
    .await
    .expect("first from .1");
    let again = ws_via(&node, b"", &[("X-Forwarded-For", "7.7.7.7, 198.51.100.1")]).await;
    assert_eq!(again.err(), Some(429));
    let _b = ws_via(&node, b"", &[("X-Forwarded-For", "198.51.100.2")])
        .await
        .expect("another client behind the same proxy");
    assert_eq!(
        client_ips(&node, b"").await,
        ["198.51.100.1", "198.51.100.2"]
    );
}

#[tokio::test]
async fn two_ipv6_addresses_in_one_64_share_a_cap() {
    let node = start_node(|c| {
        c.proxy_protocol = true;
        c.max_connections_per_ip = 1;
    })
    .await;
    let lb = sa("[2001:db8::ffff]:8080");
    let first = proxy::encode_v1(sa("[2001:db8:1:2::1]:1000"), lb);
    let same_64 = proxy::encode_v2(sa("[2001:db8:1:2:ffff:0:0:9]:1001"), lb, &[]);
    let next_64 = proxy::encode_v1(sa("[2001:db8:1:3::1]:1002"), lb);
    let _a = ws_via(&node, &first, &[])
        .await
        .expect("first in 2001:db8:1:2::/64");
    assert_eq!(ws_via(&node, &same_64, &[]).await.err(), Some(429));
    let _b = ws_via(&node, &next_64, &[]).await.expect("the next /64");
    let ips = client_ips(&node, &proxy::encode_v2_local()).await;
    assert_eq!(ips, ["2001:db8:1:2::1", "2001:db8:1:3::1"]);
}

#[tokio::test]
async fn a_proxy_header_in_pieces_with_tlvs_is_read_whole() {
    let node = start_node(|c| c.proxy_protocol = true).await;
    // A v2 header with TLVs (ALPN "h1", an authority), sent in three pieces with
    // pauses, the first cut inside the 16 fixed bytes.
    let tlvs = [
        0x01, 0x00, 0x02, b'h', b'1', 0x02, 0x00, 0x03, b'a', b'.', b'b',
    ];
    let header = proxy::encode_v2(sa("192.0.2.44:5555"), sa("10.0.0.1:8080"), &tlvs);
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    for piece in [&header[..7], &header[7..20], &header[20..]] {
        tcp.write_all(piece).await.expect("write");
        tcp.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ws = ws_on(tcp, &node, &[])
        .await
        .expect("upgraded after the header");
    assert_eq!(
        client_ips(&node, &proxy::encode_v2_local()).await,
        ["192.0.2.44"]
    );
}
