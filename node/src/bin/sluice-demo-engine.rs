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

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use fred::interfaces::ClientLike;
use serde_json::{json, Value};
use sluice_common::{
    publisher::{PublishError, Publisher},
    redis_client::RedisFailure,
    time_fmt, Topic,
};
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tracing::{info, warn};

const POOL_SIZE: usize = 2;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const LOG_EVERY: u64 = 1000;
const BOOK_LEVELS: usize = 5;
const SNAPSHOT_EVERY: u64 = 10;
const AUCTION_ID: &str = "A1";

const HELP: &str = "sluice-demo-engine — publishes simulated trading data into Sluice

Environment:
  REDIS_URL         Redis the Sluice nodes use (required), e.g. redis://redis:6379
  DEMO_RATE         messages per second over all topics [default: 20]
  DEMO_INSTRUMENTS  comma-separated ISINs [default: IN0001,IN0002,IN0003]
  DEMO_USERS        comma-separated user ids [default: alice,bob]
  RUST_LOG          log filter [default: info]

Topics: prices.{isin}, trading.{user}, portfolio.{user}, risk.{user}.alerts, auctions.A1
";

#[derive(Debug)]
struct Settings {
    redis_url: String,
    rate: f64,
    instruments: Vec<String>,
    users: Vec<String>,
}

impl Settings {
    /// Reads the environment; every problem is reported, one line each.
    fn from_env() -> Result<Self, Vec<String>> {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut errors = Vec::new();
        let redis_url = var("REDIS_URL").unwrap_or_else(|| {
            errors.push("REDIS_URL is required, e.g. redis://localhost:6379".to_owned());
            String::new()
        });
        let rate = match var("DEMO_RATE") {
            None => 20.0,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 && r <= 100_000.0 => r,
                _ => {
                    errors.push(format!(
                        "DEMO_RATE={v:?}: expected messages per second, above 0 and at most 100000"
                    ));
                    20.0
                }
            },
        };
        let list = |key: &str, default: &str, errors: &mut Vec<String>| -> Vec<String> {
            let raw = var(key).unwrap_or_else(|| default.to_owned());
            let items: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if items.is_empty() {
                errors.push(format!("{key}={raw:?}: give at least one name"));
            }
            for item in &items {
                // Each name is one topic segment: no dots, topic characters only.
                if item.contains('.') || Topic::parse(item).is_err() {
                    errors.push(format!(
                        "{key}: {item:?} is not a valid topic segment ([A-Za-z0-9_:-], no dots)"
                    ));
                }
            }
            items
        };
        let instruments = list("DEMO_INSTRUMENTS", "IN0001,IN0002,IN0003", &mut errors);
        let users = list("DEMO_USERS", "alice,bob", &mut errors);
        if errors.is_empty() {
            Ok(Settings {
                redis_url,
                rate,
                instruments,
                users,
            })
        } else {
            Err(errors)
        }
    }
}

/// xorshift64*: good enough for fake prices, no dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform index below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug)]
struct Instrument {
    isin: String,
    mid: f64,
    volume: u64,
    publishes: u64,
}

impl Instrument {
    fn book(&self, rng: &mut Rng) -> Value {
        let spread = (self.mid * 0.0005).max(0.01);
        let level = |i: usize, side: f64, rng: &mut Rng| {
            json!({
                "price": round2(self.mid + side * (spread / 2.0 + i as f64 * spread)),
                "size": 100 * (1 + rng.below(50)),
            })
        };
        let bids: Vec<Value> = (0..BOOK_LEVELS).map(|i| level(i, -1.0, rng)).collect();
        let asks: Vec<Value> = (0..BOOK_LEVELS).map(|i| level(i, 1.0, rng)).collect();
        json!({"isin": self.isin, "bids": bids, "asks": asks, "volume": self.volume})
    }
}

#[derive(Debug, Default)]
struct Position {
    quantity: i64,
    avg_price: f64,
}

#[derive(Debug)]
struct User {
    id: String,
    positions: BTreeMap<String, Position>,
    exposure_limit: f64,
    over_limit: bool,
}

#[derive(Debug)]
struct Auction {
    round: u64,
    price: f64,
    bids: u64,
    remaining_s: i64,
}

/// One message to publish.
#[derive(Debug)]
enum Outgoing {
    Delta {
        topic: String,
        payload: Value,
        snapshot: Option<Value>,
    },
    Alert {
        topic: String,
        payload: Value,
    },
}

impl Outgoing {
    fn topic(&self) -> &str {
        match self {
            Outgoing::Delta { topic, .. } | Outgoing::Alert { topic, .. } => topic,
        }
    }
}

/// The simulated market. `next()` yields the next message in a fixed mix: out of
/// every 20 ticks, 15 price quotes (a tenth of 3 of them replaced by margin
/// warnings), 3 trades and 2 auction updates. Each trade is followed by its
/// position, and by a risk alert when the user's exposure crosses the limit.
#[derive(Debug)]
struct Market {
    rng: Rng,
    instruments: Vec<Instrument>,
    users: Vec<User>,
    auction: Auction,
    tick: u64,
    trade_id: u64,
    pending: Vec<Outgoing>,
}

impl Market {
    fn new(settings: &Settings) -> Self {
        let mut rng = Rng::seeded();
        let instruments = settings
            .instruments
            .iter()
            .map(|isin| Instrument {
                isin: isin.clone(),
                mid: round2(rng.range(50.0, 150.0)),
                volume: 0,
                publishes: 0,
            })
            .collect();
        let users = settings
            .users
            .iter()
            .map(|id| User {
                id: id.clone(),
                positions: BTreeMap::new(),
                exposure_limit: 250_000.0,
                over_limit: false,
            })
            .collect();
        Market {
            rng,
            instruments,
            users,
            auction: Auction {
                round: 1,
                price: 100.0,
                bids: 0,
                remaining_s: 60,
            },
            tick: 0,
            trade_id: 0,
            pending: Vec::new(),
        }
    }

    fn next(&mut self) -> Outgoing {
        if let Some(out) = self.pending.pop() {
            return out;
        }
        self.tick += 1;
        match self.tick % 20 {
            0..=11 => self.price(),
            12..=14 => self.trade(),
            15 | 16 => self.auction(),
            _ => {
                if self.rng.unit() < 0.1 {
                    self.margin_warning()
                } else {
                    self.price()
                }
            }
        }
    }

    fn price(&mut self) -> Outgoing {
        let i = self.rng.below(self.instruments.len());
        let rng = &mut self.rng;
        let Some(ins) = self.instruments.get_mut(i) else {
            return self.idle();
        };
        // A small random walk, kept away from zero.
        ins.mid = round2((ins.mid * (1.0 + rng.range(-0.002, 0.002))).max(1.0));
        let spread = (ins.mid * 0.0005).max(0.01);
        let last_size = 100 * (1 + rng.below(20)) as u64;
        ins.volume += last_size;
        ins.publishes += 1;
        let payload = json!({
            "isin": ins.isin,
            "bid": round2(ins.mid - spread / 2.0),
            "ask": round2(ins.mid + spread / 2.0),
            "last": ins.mid,
            "last_size": last_size,
            "volume": ins.volume,
            "ts": time_fmt::now(),
        });
        let snapshot = (ins.publishes % SNAPSHOT_EVERY == 1).then(|| {
            let mut book = ins.book(rng);
            if let Some(obj) = book.as_object_mut() {
                obj.insert("last".into(), json!(ins.mid));
                obj.insert("ts".into(), json!(time_fmt::now()));
            }
            book
        });
        Outgoing::Delta {
            topic: format!("prices.{}", ins.isin),
            payload,
            snapshot,
        }
    }

    fn trade(&mut self) -> Outgoing {
        let u = self.rng.below(self.users.len());
        let i = self.rng.below(self.instruments.len());
        let (Some(user), Some(ins)) = (self.users.get_mut(u), self.instruments.get(i)) else {
            return self.idle();
        };
        self.trade_id += 1;
        let buy = self.rng.unit() < 0.55;
        let quantity = 10 * (1 + self.rng.below(100)) as i64;
        let price = round2(ins.mid * (1.0 + self.rng.range(-0.0005, 0.0005)));
        let signed = if buy { quantity } else { -quantity };
        let pos = user.positions.entry(ins.isin.clone()).or_default();
        let new_qty = pos.quantity + signed;
        if new_qty == 0 {
            pos.avg_price = 0.0;
        } else if pos.quantity == 0 || (pos.quantity > 0) != (new_qty > 0) {
            // Opened or flipped: the fill price is the new average.
            pos.avg_price = price;
        } else if new_qty.abs() > pos.quantity.abs() {
            // Added to the position: weighted average.
            pos.avg_price = round2(
                (pos.avg_price * pos.quantity.abs() as f64 + price * quantity as f64)
                    / new_qty.abs() as f64,
            );
        }
        pos.quantity = new_qty;
        let now = time_fmt::now();
        let trade = json!({
            "trade_id": format!("T{:08}", self.trade_id),
            "user_id": user.id,
            "isin": ins.isin,
            "side": if buy { "buy" } else { "sell" },
            "quantity": quantity,
            "price": price,
            "ts": now,
        });
        let changed = json!({
            "isin": ins.isin,
            "quantity": pos.quantity,
            "avg_price": pos.avg_price,
            "market_price": ins.mid,
            "unrealized_pnl": round2((ins.mid - pos.avg_price) * pos.quantity as f64),
        });
        let exposure: f64 = user
            .positions
            .iter()
            .map(|(isin, p)| {
                let mid = self
                    .instruments
                    .iter()
                    .find(|x| &x.isin == isin)
                    .map_or(p.avg_price, |x| x.mid);
                (p.quantity as f64 * mid).abs()
            })
            .sum();
        let portfolio = json!({
            "user_id": user.id,
            "positions": user.positions.iter().map(|(isin, p)| json!({
                "isin": isin, "quantity": p.quantity, "avg_price": p.avg_price,
            })).collect::<Vec<_>>(),
            "gross_exposure": round2(exposure),
            "ts": now,
        });
        // Queued in reverse: the position comes right after the trade, then any alert.
        let over = exposure > user.exposure_limit;
        if over != user.over_limit {
            user.over_limit = over;
            let payload = if over {
                json!({
                    "level": "critical",
                    "kind": "exposure_limit_breached",
                    "user_id": user.id,
                    "gross_exposure": round2(exposure),
                    "limit": user.exposure_limit,
                    "message": format!("gross exposure {:.0} is above the limit {:.0}", exposure, user.exposure_limit),
                    "ts": now,
                })
            } else {
                json!({
                    "level": "info",
                    "kind": "exposure_back_within_limit",
                    "user_id": user.id,
                    "gross_exposure": round2(exposure),
                    "limit": user.exposure_limit,
                    "ts": now,
                })
            };
            self.pending.push(Outgoing::Alert {
                topic: format!("risk.{}.alerts", user.id),
                payload,
            });
        }
        self.pending.push(Outgoing::Delta {
            topic: format!("portfolio.{}", user.id),
            payload: changed,
            snapshot: Some(portfolio),
        });
        Outgoing::Delta {
            topic: format!("trading.{}", user.id),
            payload: trade,
            snapshot: None,
        }
    }

    fn margin_warning(&mut self) -> Outgoing {
        let u = self.rng.below(self.users.len());
        let usage = round2(self.rng.range(0.75, 0.98));
        let Some(user) = self.users.get(u) else {
            return self.idle();
        };
        Outgoing::Alert {
            topic: format!("risk.{}.alerts", user.id),
            payload: json!({
                "level": "warning",
                "kind": "margin_usage",
                "user_id": user.id,
                "margin_usage": usage,
                "message": format!("margin usage at {:.0}%", usage * 100.0),
                "ts": time_fmt::now(),
            }),
        }
    }

    fn auction(&mut self) -> Outgoing {
        let a = &mut self.auction;
        a.remaining_s -= 5;
        let status = if a.remaining_s <= 0 {
            "closed"
        } else {
            a.bids += 1 + self.rng.below(3) as u64;
            a.price = round2(a.price * (1.0 + self.rng.range(0.0, 0.004)));
            "open"
        };
        let state = json!({
            "auction_id": AUCTION_ID,
            "round": a.round,
            "status": status,
            "best_bid": a.price,
            "bid_count": a.bids,
            "time_remaining_s": a.remaining_s.max(0),
            "ts": time_fmt::now(),
        });
        if a.remaining_s <= 0 {
            // Next round starts on the following update.
            a.round += 1;
            a.price = 100.0;
            a.bids = 0;
            a.remaining_s = 65;
        }
        Outgoing::Delta {
            topic: format!("auctions.{AUCTION_ID}"),
            payload: state.clone(),
            snapshot: Some(state),
        }
    }

    /// Unreachable in practice (the lists are never empty); keeps indexing panic-free.
    fn idle(&mut self) -> Outgoing {
        Outgoing::Delta {
            topic: format!("auctions.{AUCTION_ID}"),
            payload: json!({"auction_id": AUCTION_ID, "heartbeat": true}),
            snapshot: None,
        }
    }
}

/// Why a publish failed, and whether the connection pool has to be replaced.
#[derive(Debug)]
struct Failure {
    message: String,
    /// The connection is gone or stuck (not a reply from Redis): start over
    /// with a fresh pool, since `Publisher` pools do not reconnect by themselves.
    reconnect: bool,
}

async fn publish(publisher: &Publisher, out: &Outgoing) -> Result<(), Failure> {
    let call = async {
        match out {
            Outgoing::Delta {
                topic,
                payload,
                snapshot: Some(s),
            } => publisher.publish_with_snapshot(topic, payload, s).await,
            Outgoing::Delta {
                topic,
                payload,
                snapshot: None,
            } => publisher.publish(topic, payload).await,
            Outgoing::Alert { topic, payload } => publisher.alert(topic, payload).await,
        }
    };
    match timeout(PUBLISH_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            // Redis answered with an error (e.g. the function library is not
            // loaded yet, or OOM under noeviction): the connection is fine.
            let replied = !matches!(
                e,
                PublishError::Redis(RedisFailure::Unavailable(_) | RedisFailure::Timeout(_))
            );
            Err(Failure {
                message: e.to_string(),
                reconnect: !replied,
            })
        }
        Err(_) => Err(Failure {
            message: format!("no answer within {PUBLISH_TIMEOUT:?}"),
            reconnect: true,
        }),
    }
}

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

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_CAP)
}

async fn run(settings: Settings) {
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

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
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
    runtime.block_on(run(settings));
    ExitCode::SUCCESS
}
