//! Drain time and reconnect-and-catch-up time for many clients: N reconnecting
//! clients on node A (node B as their fallback) follow one topic while an engine
//! publishes; A gets SIGTERM; the harness reports how long A took to exit and how
//! long until every client had reconnected to B and caught up to the last seq,
//! plus lost/duplicate counts: `seq_anomalies` after the client's dedupe, and
//! `server_duplicates`, the frames the clients had to drop because the server sent
//! them twice, out of order or from an older epoch (0 is the contract).
//!
//! cargo run --release -p sluice-tests --example drain_storm -- \
//!     --redis redis://127.0.0.1:6399 --a ws://127.0.0.1:18081/ws --a-pid PID \
//!     --b ws://127.0.0.1:18082/ws --clients 3000 --rate 200

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::json;
use sluice_common::{
    client::{Backoff, Client, ClientConfig, Event},
    publisher::Publisher,
};
use sluice_tests::example_args::ExampleArgs;
use tokio::sync::Mutex;

const TOPIC: &str = "bench.storm";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ExampleArgs::from_env();
    let clients: usize = args.get("clients", "3000").parse()?;
    let rate: u64 = args.get("rate", "200").parse()?;
    let pid = args.get("a-pid", "");
    let (a, b) = (
        args.get("a", "ws://127.0.0.1:18081/ws"),
        args.get("b", "ws://127.0.0.1:18082/ws"),
    );
    let engine = Publisher::connect(&args.get("redis", "redis://127.0.0.1:6379"), 4).await?;

    // Per client: last seq seen, and count of anomalies (gap or repeat).
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let anomalies = Arc::new(AtomicU64::new(0));
    // Per client: frames its tracker dropped (what the server should never send).
    let dropped: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let reconnected = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let t_signal = Arc::new(Mutex::new(None::<Instant>));
    for i in 0..clients {
        let mut cfg = ClientConfig::new(a.clone());
        cfg.urls.push(b.clone());
        cfg.backoff = Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        };
        let mut c = Client::connect(cfg);
        c.subscribe(TOPIC);
        let (last, anomalies, dropped, reconnected, t_signal) = (
            last.clone(),
            anomalies.clone(),
            dropped.clone(),
            reconnected.clone(),
            t_signal.clone(),
        );
        tokio::spawn(async move {
            while let Some(ev) = c.next_event().await {
                dropped[i].store(
                    c.stats().duplicates_dropped.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                match ev {
                    Event::Publication(f) => {
                        let seq = f.seq.unwrap_or(0);
                        let prev = last[i].swap(seq, Ordering::Relaxed);
                        if prev != 0 && seq != prev + 1 {
                            anomalies.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Event::Subscribed { resumed: true, .. } => {
                        if let Some(t) = *t_signal.lock().await {
                            reconnected.lock().await.push(t.elapsed());
                        }
                    }
                    _ => {}
                }
            }
        });
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Publish steadily in the background.
    let head = Arc::new(AtomicU64::new(0));
    let stop = tokio_util_stop();
    {
        let (engine, head, stop) = (engine.clone(), head.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(p) = engine.publish(TOPIC, &json!({ "t": 1 })).await {
                    head.store(p.seq, Ordering::Relaxed);
                }
            }
        });
    }
    // Wait until every client follows.
    let ready = Instant::now();
    while last.iter().any(|l| l.load(Ordering::Relaxed) == 0) {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "clients did not all start receiving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{clients} clients following; draining node A (pid {pid})");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signal_at = Instant::now();
    *t_signal.lock().await = Some(signal_at);
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    let exited = loop {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        if !alive {
            break signal_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // All clients reconnected and caught up with the head at that moment.
    let target = head.load(Ordering::Relaxed);
    loop {
        let behind = last
            .iter()
            .filter(|l| l.load(Ordering::Relaxed) < target)
            .count();
        let n = reconnected.lock().await.len();
        if behind == 0 && n >= clients {
            break;
        }
        anyhow::ensure!(
            signal_at.elapsed() < Duration::from_secs(120),
            "{behind} clients behind, {n} reconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = signal_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut r = reconnected.lock().await.clone();
    r.sort();
    let p = |q: f64| r[((r.len() as f64 - 1.0) * q) as usize].as_millis();
    println!(
        "{}",
        json!({
            "clients": clients, "rate": rate,
            "drain_exit_ms": exited.as_millis(),
            "all_reconnected_and_caught_up_ms": caught_up.as_millis(),
            "resubscribed_ms": {"p50": p(0.5), "p99": p(0.99), "max": p(1.0)},
            "seq_anomalies": anomalies.load(Ordering::Relaxed),
            "server_duplicates": dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>(),
        })
    );
    Ok(())
}

fn tokio_util_stop() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}
