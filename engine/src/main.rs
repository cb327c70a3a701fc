//! `sluice-demo-engine`: publishes simulated market data, trades, positions, risk alerts and auction updates into Sluice through `Publisher`, for demos and the compose cluster.
//!
//! Settings (environment):
//! * `REDIS_URL` (required): the Redis the nodes use. The nodes load the
//!   `sluice` function library; until one has, publishing fails and is retried.
//! * `DEMO_RATE`: messages per second over all topics (default 20).
//! * `DEMO_INSTRUMENTS`: comma-separated ISINs (default `IN0001,IN0002,IN0003`).
//! * `DEMO_USERS`: comma-separated user ids (default `alice,bob`).
//!
//! What it publishes, one message per tick:
//! * `prices.{isin}`: a quote delta; the first and then every 10th publish per
//!   instrument also stores a snapshot of the order book;
//! * `trading.{user}`: a fill; each fill is followed by
//! * `portfolio.{user}`: the changed position, with the whole portfolio as snapshot;
//! * `risk.{user}.alerts`: an `alert` when a user's exposure crosses a limit, and
//!   now and then a margin warning;
//! * `auctions.A1`: the state of a repeating auction, with snapshot.
//!
//! The `trading`, `portfolio` and `risk` topics are private: a client reads them
//! with a token for that user, e.g. `sluice token --sub alice` (docker-compose runs
//! the nodes with auth on).
//!
//! Redis errors (and publishes that take longer than 5 s, e.g. a paused Redis)
//! are retried with exponential backoff (200 ms to 10 s), reconnecting when the
//! connection is gone; the message is published once it succeeds. SIGTERM or
//! ctrl-c stops it cleanly. It logs one line per 1000 messages.
//!
//! Modules: `settings` (the environment), `market` (the simulation: what to
//! publish next), `publish` (one publish, and whether a failure needs a new
//! connection), `run` (the loop: tick, publish with retries, stop on a signal).

mod market;
mod publish;
mod run;
mod settings;

use std::process::ExitCode;

use settings::Settings;

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{}", settings::help());
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(errors) => {
            for line in errors {
                eprintln!("sluice-demo-engine: config: {line}");
            }
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-demo-engine: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run::run(settings));
    ExitCode::SUCCESS
}
