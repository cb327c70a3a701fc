//! The engine's loop: one message per tick, each published with retries
//! (reconnecting when the connection is gone) until it goes through; a signal
//! stops it cleanly.

use std::time::Duration;

use fred::interfaces::ClientLike;
use sluice_common::publisher::Publisher;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::{
    market::Market,
    publish::{next_backoff, publish, Failure, BACKOFF_START, PUBLISH_TIMEOUT},
    settings::Settings,
};

const POOL_SIZE: usize = 2;
const LOG_EVERY: u64 = 1000;

/// Resolves on SIGTERM or ctrl-c (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM ({e}); ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(settings: Settings) {
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut market = Market::new(&settings);
    info!(
        rate = settings.rate,
        instruments = %settings.instruments.join(","),
        users = %settings.users.join(","),
        "demo engine starting"
    );
    // The private topics it feeds are readable only with their user's token (or an
    // admin one); say how to get one, since that is the first thing a demo needs.
    if let Some(user) = settings.users.first() {
        info!(
            "to read trading.{user}, portfolio.{user} and risk.{user}.alerts, connect with \
             ?token=$(sluice token --sub {user}) (same SLUICE_JWT_SECRET as the nodes)"
        );
    }

    let mut publisher: Option<Publisher> = None;
    let mut backoff = BACKOFF_START;
    let mut total: u64 = 0;
    let mut errors: u64 = 0;
    let started = Instant::now();
    let mut window = Instant::now();

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);

    'ticks: loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => break 'ticks,
        }
        let out = market.next();
        // Publish this message, retrying until it goes through or we are told to stop.
        loop {
            let p = match &publisher {
                Some(p) => p.clone(),
                None => {
                    let connected = tokio::select! {
                        r = timeout(PUBLISH_TIMEOUT, Publisher::connect(&settings.redis_url, POOL_SIZE)) => r,
                        () = &mut shutdown => break 'ticks,
                    };
                    match connected {
                        Ok(Ok(p)) => {
                            info!(redis = %sluice_common::redact::redact_url(&settings.redis_url), "connected to Redis");
                            publisher = Some(p.clone());
                            p
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, retry_in = ?backoff, "cannot connect to Redis");
                            tokio::select! {
                                () = sleep(backoff) => {}
                                () = &mut shutdown => break 'ticks,
                            }
                            backoff = next_backoff(backoff);
                            continue;
                        }
                        Err(_) => {
                            warn!(retry_in = ?backoff, "connecting to Redis timed out");
                            tokio::select! {
                                () = sleep(backoff) => {}
                                () = &mut shutdown => break 'ticks,
                            }
                            backoff = next_backoff(backoff);
                            continue;
                        }
                    }
                }
            };
            let result = tokio::select! {
                r = publish(&p, &out) => r,
                () = &mut shutdown => break 'ticks,
            };
            match result {
                Ok(()) => {
                    backoff = BACKOFF_START;
                    break;
                }
                Err(Failure { message, reconnect }) => {
                    errors += 1;
                    if message.contains("Function not found") {
                        warn!(topic = out.topic(), error = %message, retry_in = ?backoff,
                            "publish failed: no Sluice node has loaded its function library into this Redis yet");
                    } else {
                        warn!(topic = out.topic(), error = %message, retry_in = ?backoff, "publish failed");
                    }
                    if reconnect || !p.pool().is_connected() {
                        let _ = timeout(Duration::from_secs(1), p.pool().quit()).await;
                        publisher = None;
                    }
                    tokio::select! {
                        () = sleep(backoff) => {}
                        () = &mut shutdown => break 'ticks,
                    }
                    backoff = next_backoff(backoff);
                }
            }
        }
        total += 1;
        if total % LOG_EVERY == 0 {
            let secs = window.elapsed().as_secs_f64().max(1e-9);
            info!(
                messages = total,
                rate = format!("{:.1}/s", LOG_EVERY as f64 / secs),
                retries = errors,
                "published"
            );
            window = Instant::now();
        }
    }

    info!(
        messages = total,
        retries = errors,
        uptime_s = started.elapsed().as_secs(),
        "demo engine stopping"
    );
    if let Some(p) = publisher {
        let _ = timeout(Duration::from_secs(2), p.pool().quit()).await;
    }
}
