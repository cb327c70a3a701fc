//! What the replica wait costs a publisher: one master + one replica on loopback
//! (`redis-server` processes), two `Publisher`s on it, one without the wait
//! (`SLUICE_PUBLISH_REPLICAS=0`) and one with the default (`auto`: `WAIT 1`), each
//! publishing one message at a time, as engines do. Rounds alternate between the
//! two so both see the same machine; prints the latency per publish of each and
//! their ratio.
//!
//! cargo run -p sluice-tests --example replica_wait -- --rounds 10 --per-round 500

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_common::{
    publisher::Publisher,
    redis_client::{RedisSettings, Replicas},
};
use sluice_tests::{
    example_args::ExampleArgs,
    redis_topology::{cli, free_port, temp_dir, RedisProcess},
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ExampleArgs::from_env();
    let rounds: usize = args.get("rounds", "10").parse()?;
    let per_round: usize = args.get("per-round", "500").parse()?;

    let dir = temp_dir("replica-wait");
    let mport = free_port();
    let _master = RedisProcess::data(&dir, mport, &[]);
    let rport = free_port();
    let _replica = RedisProcess::data(
        &dir,
        rport,
        &["--replicaof", "127.0.0.1", &mport.to_string()],
    );
    while !cli(mport, &["INFO", "replication"]).contains("state=online") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("redis://127.0.0.1:{mport}");
    let library = sluice_node::broker::redis::library_source(10_000, Duration::from_secs(86_400));
    let settings = |replicas| RedisSettings {
        tls_ca: None,
        replicas,
        replica_timeout: Duration::from_millis(1000),
    };
    let plain = Publisher::connect_with(&url, 1, &settings(Replicas::Exactly(0)))
        .await?
        .with_library(library.as_str());
    let waiting = Publisher::connect_with(&url, 1, &settings(Replicas::Auto)).await?;
    // Warm up (loads the library; `auto` reads the replica count).
    for i in 0..200 {
        plain
            .publish("bench.wait.plain", &json!({ "i": i }))
            .await?;
        waiting
            .publish("bench.wait.replica", &json!({ "i": i }))
            .await?;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (p, topic, out) in [
            (&plain, "bench.wait.plain", &mut a),
            (&waiting, "bench.wait.replica", &mut b),
        ] {
            for i in 0..per_round {
                let t = Instant::now();
                p.publish(topic, &json!({ "round": round, "i": i, "bid": 99.5 }))
                    .await?;
                out.push(t.elapsed());
            }
        }
    }
    a.sort();
    b.sort();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    println!("publishes per side: {}", a.len());
    for (name, v) in [("no wait (0)", &a), ("WAIT 1 (auto)", &b)] {
        println!(
            "{name:>14}: mean {:?}  p50 {:?}  p99 {:?}",
            mean(v),
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    println!(
        "ratio (auto / no wait): mean {:.2}x  p50 {:.2}x  p99 {:.2}x",
        mean(&b).as_secs_f64() / mean(&a).as_secs_f64(),
        percentile(&b, 0.5).as_secs_f64() / percentile(&a, 0.5).as_secs_f64(),
        percentile(&b, 0.99).as_secs_f64() / percentile(&a, 0.99).as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
