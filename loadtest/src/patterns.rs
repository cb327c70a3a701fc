//! `sluice-loadtest patterns`: connections that hold wildcard subscriptions while
//! another scenario (`fanout`) measures, for the cost of wildcards held on a node
//! (BENCHMARKS.md, "Wildcards"). Each connection subscribes its share in one frame,
//! checks every ack, then reads and counts deliveries until the hold ends.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::ws::{Op, WsConn, WsUrl};

/// What to hold.
#[derive(Debug, Clone)]
pub struct PatternOptions {
    pub url: String,
    pub connections: usize,
    /// Wildcards held in all, spread evenly over the connections.
    pub patterns: usize,
    /// How many of them match the fan-out topics: `bench.>`, one on each of the
    /// first `matching` connections (at most one per connection). The rest are
    /// `idle.<connection>.<n>.*`, which match nothing.
    pub matching: usize,
    pub hold: Duration,
}

/// What was held and received.
#[derive(Debug, Serialize)]
pub struct PatternReport {
    pub connections: usize,
    pub patterns: usize,
    pub matching: usize,
    /// Deliveries the holding connections received (the matching wildcards').
    pub deliveries: u64,
}

/// The wildcards connection `i` of `n` holds.
pub fn share(o: &PatternOptions, i: usize) -> Vec<String> {
    let n = o.connections.max(1);
    let count = o.patterns / n + usize::from(i < o.patterns % n);
    let first = i * (o.patterns / n) + i.min(o.patterns % n);
    (first..first + count)
        .map(|k| {
            if k == first && i < o.matching {
                "bench.>".to_owned()
            } else {
                format!("idle.{i}.{k}.*")
            }
        })
        .collect()
}

pub async fn run(o: PatternOptions) -> anyhow::Result<PatternReport> {
    let url = WsUrl::parse(&o.url)?;
    let mut tasks = Vec::new();
    for i in 0..o.connections {
        let filters = share(&o, i);
        let url = url.clone();
        let hold = o.hold;
        tasks.push(tokio::spawn(
            async move { hold_one(url, filters, hold).await },
        ));
    }
    let mut deliveries = 0;
    for t in tasks {
        deliveries += t.await.context("holder task")??;
    }
    Ok(PatternReport {
        connections: o.connections,
        patterns: o.patterns,
        matching: o.matching,
        deliveries,
    })
}

async fn hold_one(url: WsUrl, filters: Vec<String>, hold: Duration) -> anyhow::Result<u64> {
    let mut conn = WsConn::connect(&url, None, "", Duration::from_secs(10)).await?;
    let (_, first) = conn.next().await?;
    if !first.starts_with(br#"{"type":"connected""#) {
        bail!("expected the connected frame");
    }
    if filters.is_empty() {
        tokio::time::sleep(hold).await;
        return Ok(0);
    }
    let req = serde_json::json!({"type": "subscribe", "topics": filters});
    conn.send_text(&req.to_string()).await?;
    let mut acked = 0;
    while acked < filters.len() {
        let (op, frame) = conn.next().await?;
        if op != Op::Text {
            continue;
        }
        if frame.starts_with(br#"{"type":"error""#) {
            bail!("subscribe refused: {}", String::from_utf8_lossy(&frame));
        }
        if frame.starts_with(br#"{"type":"ack""#) {
            if !frame.windows(15).any(|w| w == br#""wildcard":true"#) {
                bail!("not a wildcard ack: {}", String::from_utf8_lossy(&frame));
            }
            acked += 1;
        }
    }
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Err(_) => break,
            Ok(Ok((Op::Text, f))) if f.starts_with(br#"{"type":"delta""#) => deliveries += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    conn.close().await;
    Ok(deliveries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_spread_evenly_with_a_matching_one_first_on_the_first_connections() {
        let o = PatternOptions {
            url: String::new(),
            connections: 3,
            patterns: 10,
            matching: 2,
            hold: Duration::ZERO,
        };
        let all: Vec<Vec<String>> = (0..3).map(|i| share(&o, i)).collect();
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!(all[0][..2], ["bench.>", "idle.0.1.*"]);
        assert_eq!(all[1][0], "bench.>");
        assert_eq!(all[2][0], "idle.2.7.*");
        assert_eq!(all[2][2], "idle.2.9.*");
        let idle: usize = all
            .iter()
            .flatten()
            .filter(|f| f.starts_with("idle."))
            .count();
        assert_eq!(idle, 8);
    }
}
