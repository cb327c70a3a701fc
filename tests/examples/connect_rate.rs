//! Connections per second a node accepts, with or without a JWT to verify: each
//! connection upgrades, reads `connected`, and closes.
//!
//! cargo run --release -p sluice-tests --example connect_rate -- ws://127.0.0.1:8080/ws 5000 64 [token]

use std::time::Instant;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let total: usize = args.get(1).map_or(Ok(5000), |s| s.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let token = args.get(3).cloned();
    let per_task = total / concurrency.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0usize;
            for _ in 0..per_task {
                let mut req = url.as_str().into_client_request()?;
                if let Some(t) = &token {
                    req.headers_mut().insert(
                        "authorization",
                        HeaderValue::from_str(&format!("Bearer {t}"))?,
                    );
                }
                match tokio_tungstenite::connect_async(req).await {
                    Ok((mut ws, _)) => {
                        let _ = ws.next().await;
                        let _ = ws.close(None).await;
                    }
                    Err(_) => failed += 1,
                }
            }
            anyhow::Ok(failed)
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let done = per_task * concurrency;
    println!(
        "{{\"connections\":{done},\"failed\":{failed},\"seconds\":{secs:.2},\"per_second\":{:.0},\"token\":{}}}",
        done as f64 / secs,
        token.is_some()
    );
    Ok(())
}
