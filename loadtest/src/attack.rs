//! The attacks of issue 10, run against a node for a while so honest clients can be
//! measured beside them (BENCHMARKS.md, "Under attack"): subscribe expansion bombs,
//! frames of forbidden topics, slowloris sockets and subscribers that never read.
//! Every loop is bounded by the run's deadline and stops by itself.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use crate::ws::{Op, WsConn, WsUrl};

/// What to run, and how much of each.
#[derive(Debug, Clone)]
pub struct AttackOptions {
    pub url: String,
    pub duration: Duration,
    /// Concurrent expansion-bomb connections.
    pub bombs: usize,
    /// Concurrent forbidden-topic connections.
    pub forbidden: usize,
    /// Slowloris sockets held open.
    pub slowloris: usize,
    /// Subscribers to this topic that never read.
    pub stalls: usize,
    pub stall_topic: String,
    /// With the admin token, the attack itself publishes to `stall_topic`
    /// (`stall_rate` per second of `stall_bytes`), so the stalled sockets fill.
    pub admin_token: Option<String>,
    pub stall_rate: u32,
    pub stall_bytes: usize,
}

/// Counts of what the attacks did and how the node answered.
#[derive(Debug, Default, Serialize)]
pub struct AttackReport {
    pub scenario: &'static str,
    pub duration_s: f64,
    pub bombs_sent: u64,
    pub bombs_closed_4029: u64,
    pub forbidden_frames_sent: u64,
    pub forbidden_closed_4029: u64,
    pub slowloris_opened: u64,
    pub slowloris_closed_by_node: u64,
    /// The longest a slowloris socket stayed open before the node closed it.
    pub slowloris_longest_s: f64,
    pub stalls_opened: u64,
    pub stalls_cut_by_node: u64,
    pub stall_publishes: u64,
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    bombs_sent: AtomicU64,
    bombs_4029: AtomicU64,
    forbidden_sent: AtomicU64,
    forbidden_4029: AtomicU64,
    slow_opened: AtomicU64,
    slow_closed: AtomicU64,
    slow_longest_ms: AtomicU64,
    stalls_opened: AtomicU64,
    stalls_cut: AtomicU64,
    stall_publishes: AtomicU64,
    errors: AtomicU64,
}

/// 3000 topics × 3000 subtopics in one 48 KB frame.
fn bomb_frame() -> String {
    let topics: Vec<String> = (0..3000).map(|i| format!("p{i}")).collect();
    let subs: Vec<String> = (0..3000).map(|i| format!("s{i}")).collect();
    serde_json::json!({"type": "subscribe", "topics": topics, "subtopics": subs}).to_string()
}

fn forbidden_frame() -> String {
    let topics: Vec<String> = (0..25).map(|i| format!("trading.victim{i}")).collect();
    serde_json::json!({"type": "subscribe", "topics": topics}).to_string()
}

/// Reads until the node closes; returns the close code, if it sent one.
async fn close_code(conn: &mut WsConn, deadline: Instant) -> Option<u16> {
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Ok(Ok((Op::Close, payload))) => {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
            }
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// Sends `frame` on fresh connections until `end`, counting 4029 closes.
async fn frame_loop(
    url: WsUrl,
    frame: String,
    end: Instant,
    sent: impl Fn(&Counters) -> &AtomicU64,
    closed: impl Fn(&Counters) -> &AtomicU64,
    c: Arc<Counters>,
) {
    while Instant::now() < end {
        let mut conn = match WsConn::connect(&url, None, "", Duration::from_secs(5)).await {
            Ok(conn) => conn,
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if conn.send_text(&frame).await.is_err() {
            c.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        sent(&c).fetch_add(1, Ordering::Relaxed);
        if close_code(&mut conn, end.max(Instant::now() + Duration::from_secs(5))).await
            == Some(4029)
        {
            closed(&c).fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds a socket that sends one header line a second and never finishes its
/// request; reopens it when the node closes it.
async fn slowloris(addr: SocketAddr, end: Instant, c: Arc<Counters>) {
    while Instant::now() < end {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        c.slow_opened.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let mut line = 0u64;
        let closed = loop {
            let text = if line == 0 {
                "GET /ws HTTP/1.1\r\n".to_owned()
            } else {
                format!("X-Slow-{line}: a\r\n")
            };
            if s.write_all(text.as_bytes()).await.is_err() {
                break true;
            }
            line += 1;
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) | Err(_) => {}
            }
            if Instant::now() >= end {
                break false;
            }
        };
        if closed {
            c.slow_closed.fetch_add(1, Ordering::Relaxed);
            let ms = opened.elapsed().as_millis() as u64;
            c.slow_longest_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }
}

/// Subscribes and never reads; reconnects when the node cuts it.
async fn stall(url: WsUrl, topic: String, end: Instant, c: Arc<Counters>) {
    while Instant::now() < end {
        let Ok(mut conn) = WsConn::connect(&url, None, "", Duration::from_secs(5)).await else {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let sub = serde_json::json!({"type": "subscribe", "topic": topic}).to_string();
        if conn.send_text(&sub).await.is_err() {
            continue;
        }
        c.stalls_opened.fetch_add(1, Ordering::Relaxed);
        // Never read; probe with a ping every second: a write error means the node cut us.
        let cut = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if Instant::now() >= end {
                break false;
            }
            if conn.send(Op::Ping, b"").await.is_err() {
                break true;
            }
        };
        if cut {
            c.stalls_cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Publishes to the stalled subscribers' topic through `POST /publish`.
async fn feed_stalls(
    addr: SocketAddr,
    o: AttackOptions,
    token: String,
    end: Instant,
    c: Arc<Counters>,
) {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/publish");
    let body =
        serde_json::json!({"topic": o.stall_topic, "payload": {"pad": "x".repeat(o.stall_bytes)}})
            .to_string();
    let every = Duration::from_secs(1) / o.stall_rate.max(1);
    let mut tick = tokio::time::interval(every);
    while Instant::now() < end {
        tick.tick().await;
        let ok = http
            .post(&url)
            .bearer_auth(&token)
            .body(body.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            c.stall_publishes.fetch_add(1, Ordering::Relaxed);
        } else {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs every attack until the deadline; returns what happened.
pub async fn run(o: AttackOptions) -> anyhow::Result<AttackReport> {
    let url = WsUrl::parse(&o.url)?;
    let c = Arc::new(Counters::default());
    let started = Instant::now();
    let end = started + o.duration;
    let mut tasks = Vec::new();
    let bomb = bomb_frame();
    for _ in 0..o.bombs {
        tasks.push(tokio::spawn(frame_loop(
            url.clone(),
            bomb.clone(),
            end,
            |c| &c.bombs_sent,
            |c| &c.bombs_4029,
            c.clone(),
        )));
    }
    for _ in 0..o.forbidden {
        tasks.push(tokio::spawn(frame_loop(
            url.clone(),
            forbidden_frame(),
            end,
            |c| &c.forbidden_sent,
            |c| &c.forbidden_4029,
            c.clone(),
        )));
    }
    for _ in 0..o.slowloris {
        tasks.push(tokio::spawn(slowloris(url.addr, end, c.clone())));
    }
    for _ in 0..o.stalls {
        tasks.push(tokio::spawn(stall(
            url.clone(),
            o.stall_topic.clone(),
            end,
            c.clone(),
        )));
    }
    if let Some(token) = o.admin_token.clone() {
        tasks.push(tokio::spawn(feed_stalls(
            url.addr,
            o.clone(),
            token,
            end,
            c.clone(),
        )));
    }
    for t in tasks {
        let _ = tokio::time::timeout_at(end + Duration::from_secs(10), t).await;
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(AttackReport {
        scenario: "attack",
        duration_s: started.elapsed().as_secs_f64(),
        bombs_sent: get(&c.bombs_sent),
        bombs_closed_4029: get(&c.bombs_4029),
        forbidden_frames_sent: get(&c.forbidden_sent),
        forbidden_closed_4029: get(&c.forbidden_4029),
        slowloris_opened: get(&c.slow_opened),
        slowloris_closed_by_node: get(&c.slow_closed),
        slowloris_longest_s: get(&c.slow_longest_ms) as f64 / 1000.0,
        stalls_opened: get(&c.stalls_opened),
        stalls_cut_by_node: get(&c.stalls_cut),
        stall_publishes: get(&c.stall_publishes),
        errors: get(&c.errors),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bomb_is_the_reported_shape_and_fits_a_default_frame() {
        let b = bomb_frame();
        assert!(b.len() < 64 * 1024, "{}", b.len());
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["topics"].as_array().unwrap().len(), 3000);
        assert_eq!(v["subtopics"].as_array().unwrap().len(), 3000);
        let f: serde_json::Value = serde_json::from_str(&forbidden_frame()).unwrap();
        assert_eq!(f["topics"].as_array().unwrap().len(), 25);
    }
}
