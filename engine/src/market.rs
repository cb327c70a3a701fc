//! The simulated market: instruments with a random-walk price, users with
//! positions and an exposure limit, and a repeating auction. [`Market::next`]
//! says what to publish next.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_common::{rng::Rng, time_fmt};

use crate::settings::Settings;

const BOOK_LEVELS: usize = 5;
const SNAPSHOT_EVERY: u64 = 10;
const AUCTION_ID: &str = "A1";

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
pub enum Outgoing {
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
    pub fn topic(&self) -> &str {
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
pub struct Market {
    rng: Rng,
    instruments: Vec<Instrument>,
    users: Vec<User>,
    auction: Auction,
    tick: u64,
    trade_id: u64,
    pending: Vec<Outgoing>,
}

impl Market {
    pub fn new(settings: &Settings) -> Self {
        Self::with_rng(settings, Rng::seeded())
    }

    fn with_rng(settings: &Settings, mut rng: Rng) -> Self {
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

    pub fn next(&mut self) -> Outgoing {
        if let Some(out) = self.pending.pop() {
            return out;
        }
        self.tick += 1;
        match self.tick % 20 {
            0..=11 => self.price(),
            12..=14 => self.trade(),
            15 | 16 => self.auction(),
            _ => {
                if self.rng.next_f64() < 0.1 {
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
        let buy = self.rng.next_f64() < 0.55;
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

/// Rounds to cents.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests;
