//! `mixed`: the traffic of a trading venue on one deployment with auth on. Half the
//! clients watch market prices (public `prices.*` topics, Zipf popularity), 30 %
//! are traders following their own `trading.{user}` and `risk.{user}.alerts`, 20 %
//! are phones on `/ws/mobile/{user}` in background mode (every tenth in foreground,
//! as the control for bytes per minute). One engine publishes market deltas,
//! private deltas and alerts to a share of the risk topics.
//!
//! This file holds the plan and the accounting (pure, unit-tested); the run itself
//! is `mixed_run.rs`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    accounting::SeqTracker,
    schedule::{Rng, Zipf},
};

/// The kind of client, for per-class figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Subscribes one public `prices.*` topic.
    Market,
    /// Subscribes its own `trading.{user}` and `risk.{user}.alerts`, and (with a
    /// watchlist, [`Plan::with_watchlists`]) a few `prices.*` topics: a trader
    /// watches prices on the same session that brings its alerts.
    Private,
    /// `/ws/mobile/{user}` with `x-background-mode: true` (conflated).
    MobileBackground,
    /// `/ws/mobile/{user}` with `x-background-mode: false`: the control.
    MobileForeground,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Market,
        Class::Private,
        Class::MobileBackground,
        Class::MobileForeground,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Market => "market",
            Class::Private => "private",
            Class::MobileBackground => "mobile_background",
            Class::MobileForeground => "mobile_foreground",
        }
    }

    /// Conflated: missing intermediate seqs are the point, not a loss.
    pub fn conflated(self) -> bool {
        self == Class::MobileBackground
    }
}

/// What a topic is, which decides the publish type and its share of publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Market,
    Trading,
    Alerts,
    Mobile,
}

/// Shares of the publishes (they add up to 1): mostly market deltas.
pub const MARKET_SHARE: f64 = 0.6;
pub const TRADING_SHARE: f64 = 0.2;
pub const MOBILE_SHARE: f64 = 0.1;
pub const ALERT_SHARE: f64 = 0.1;

/// Market topics each trader watches by default (`--trader-watch`): a desk's
/// screen shows prices beside its alerts, so they share one session.
pub const TRADER_WATCH: usize = 5;

/// Every tenth mobile client stays in foreground.
pub const MOBILE_FOREGROUND_EVERY: usize = 10;

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub kind: TopicKind,
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub class: Class,
    /// The token's `sub`.
    pub user: String,
    /// The upgrade path: `/ws`, or `/ws/mobile/{user}` (which subscribes itself).
    pub path: String,
    /// Indexes into `Plan::topics`: what the client follows.
    pub topics: Vec<usize>,
    /// Topics to subscribe with a frame after `connected` (none on the mobile route).
    pub subscribe_frame: Option<String>,
    /// `x-background-mode` to send.
    pub background: Option<bool>,
}

/// Who connects where, and which topics exist.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topics: Vec<TopicSpec>,
    pub clients: Vec<ClientSpec>,
    pub market: Vec<usize>,
    pub trading: Vec<usize>,
    /// The alert topics that are published to (a share of all of them).
    pub alerted: Vec<usize>,
    pub mobile: Vec<usize>,
}

/// Clients per class: 50 % market, 30 % private, the rest (20 %) mobile.
pub fn split(clients: usize) -> (usize, usize, usize) {
    let market = clients / 2;
    let private = clients * 3 / 10;
    (market, private, clients - market - private)
}

impl Plan {
    /// `id` makes names unique per run; `alert_share` of the private users get alerts.
    pub fn new(clients: usize, market_topics: usize, alert_share: f64, id: &str) -> Plan {
        let (n_market, n_private, n_mobile) = split(clients);
        let mut topics = Vec::new();
        let mut add = |name: String, kind| {
            topics.push(TopicSpec { name, kind });
            topics.len() - 1
        };
        let market: Vec<usize> = (0..market_topics.max(1))
            .map(|k| add(format!("prices.{id}-{k}"), TopicKind::Market))
            .collect();
        let mut clients_out = Vec::with_capacity(clients);
        for i in 0..n_market {
            let t = market[i % market.len()];
            clients_out.push(ClientSpec {
                class: Class::Market,
                user: format!("viewer-{id}-{i}"),
                path: "/ws".into(),
                topics: vec![t],
                subscribe_frame: None,
                background: None,
            });
        }
        let (mut trading, mut alerts) = (Vec::new(), Vec::new());
        for i in 0..n_private {
            let user = format!("trader-{id}-{i}");
            let t = add(format!("trading.{user}"), TopicKind::Trading);
            let a = add(format!("risk.{user}.alerts"), TopicKind::Alerts);
            trading.push(t);
            alerts.push(a);
            clients_out.push(ClientSpec {
                class: Class::Private,
                user,
                path: "/ws".into(),
                topics: vec![t, a],
                subscribe_frame: None,
                background: None,
            });
        }
        let mut mobile = Vec::new();
        for i in 0..n_mobile {
            let user = format!("phone-{id}-{i}");
            let t = add(format!("mobile.{user}"), TopicKind::Mobile);
            mobile.push(t);
            let foreground = i % MOBILE_FOREGROUND_EVERY == 0;
            clients_out.push(ClientSpec {
                class: if foreground {
                    Class::MobileForeground
                } else {
                    Class::MobileBackground
                },
                path: format!("/ws/mobile/{user}"),
                user,
                topics: vec![t],
                subscribe_frame: None,
                background: Some(!foreground),
            });
        }
        for c in &mut clients_out {
            if c.path == "/ws" {
                let names: Vec<&str> = c.topics.iter().map(|&t| topics[t].name.as_str()).collect();
                c.subscribe_frame =
                    Some(serde_json::json!({"type": "subscribe", "topics": names}).to_string());
            }
        }
        let n_alerted =
            ((alerts.len() as f64 * alert_share.clamp(0.0, 1.0)).ceil() as usize).min(alerts.len());
        Plan {
            topics,
            clients: clients_out,
            market,
            trading,
            alerted: alerts[..n_alerted].to_vec(),
            mobile,
        }
    }

    /// Adds `watch` market topics (distinct, drawn by Zipf popularity with
    /// exponent `zipf`, so traders watch the busy instruments too) to every
    /// private client, after its own topics; 0 leaves the plan as it is.
    pub fn with_watchlists(mut self, watch: usize, zipf: f64) -> Plan {
        let watch = watch.min(self.market.len());
        if watch == 0 {
            return self;
        }
        let popularity = Zipf::new(self.market.len(), zipf);
        for (i, c) in self.clients.iter_mut().enumerate() {
            if c.class != Class::Private {
                continue;
            }
            let mut rng = Rng::new(0x5eed ^ i as u64);
            let mut picked: Vec<usize> = Vec::with_capacity(watch);
            // Zipf draws repeat the hot topics: draw until `watch` are distinct.
            while picked.len() < watch {
                let t = self.market[popularity.sample(&mut rng)];
                if !picked.contains(&t) {
                    picked.push(t);
                }
            }
            c.topics.extend(picked);
            let names: Vec<&str> = c
                .topics
                .iter()
                .map(|&t| self.topics[t].name.as_str())
                .collect();
            c.subscribe_frame =
                Some(serde_json::json!({"type": "subscribe", "topics": names}).to_string());
        }
        self
    }

    /// Subscribers per topic.
    pub fn subscribers(&self) -> Vec<u64> {
        let mut n = vec![0u64; self.topics.len()];
        for c in &self.clients {
            for &t in &c.topics {
                n[t] += 1;
            }
        }
        n
    }
}

/// Picks the topic of the next publish: a family by its share (a family with no
/// topics gives its share to the market), then market topics by Zipf, the others
/// uniformly.
#[derive(Debug)]
pub struct Picker {
    zipf: Zipf,
    rng: Rng,
}

impl Picker {
    pub fn new(plan: &Plan, exponent: f64, seed: u64) -> Self {
        Picker {
            zipf: Zipf::new(plan.market.len().max(1), exponent),
            rng: Rng::new(seed),
        }
    }

    pub fn pick(&mut self, plan: &Plan) -> usize {
        let r = self.rng.next_f64();
        let uniform = |rng: &mut Rng, v: &[usize]| v[(rng.next_u64() % v.len() as u64) as usize];
        let family = if r < TRADING_SHARE {
            &plan.trading
        } else if r < TRADING_SHARE + MOBILE_SHARE {
            &plan.mobile
        } else if r < TRADING_SHARE + MOBILE_SHARE + ALERT_SHARE {
            &plan.alerted
        } else {
            &plan.market
        };
        if std::ptr::eq(family, &plan.market) || family.is_empty() {
            plan.market[self.zipf.sample(&mut self.rng)]
        } else {
            uniform(&mut self.rng, family)
        }
    }
}

/// What one connection saw of its topics.
#[derive(Debug, Clone)]
pub struct ConnTally {
    pub class: Class,
    /// (topic, its tracker) for every followed topic.
    pub topics: Vec<(usize, SeqTracker)>,
    /// Bytes of WebSocket frames received inside the publishing window.
    pub window_bytes: u64,
    pub misrouted: u64,
    /// Whether the connection subscribed at all.
    pub subscribed: bool,
}

/// Per-class delivery accounting.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassTally {
    pub clients: u64,
    /// Subscriptions × successful publishes of their topics.
    pub owed: u64,
    /// Distinct seqs received.
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Owed and never received, for a class that is not conflated.
    pub lost: u64,
    /// Owed and skipped by conflation (background mode): by design.
    pub conflated: u64,
    /// Conflated subscriptions whose topic's last publish never arrived: their
    /// latest state is missing, which is a loss.
    pub latest_missing: u64,
    pub misrouted: u64,
    /// Bytes received per client per minute of the window.
    pub bytes_per_min_per_client: f64,
}

/// Sums every connection's tally into its class, given each topic's successful
/// publishes (`ok`, seqs 1..=ok) and the window length.
pub fn account(conns: &[ConnTally], ok: &[u64], window_s: f64) -> BTreeMap<Class, ClassTally> {
    let mut out: BTreeMap<Class, ClassTally> = BTreeMap::new();
    let mut bytes: BTreeMap<Class, u64> = BTreeMap::new();
    for c in conns.iter().filter(|c| c.subscribed) {
        let e = out.entry(c.class).or_default();
        e.clients += 1;
        e.misrouted += c.misrouted;
        *bytes.entry(c.class).or_default() += c.window_bytes;
        for (t, tracker) in &c.topics {
            let last = ok.get(*t).copied().unwrap_or(0);
            let tally = tracker.tally();
            e.owed += last;
            e.received += tally.unique;
            e.duplicated += tally.duplicated;
            e.out_of_order += tally.out_of_order;
            let missing = tracker.missing_up_to(last);
            if c.class.conflated() {
                e.conflated += missing;
                e.latest_missing += u64::from(last > 0 && tracker.highest() < last);
            } else {
                e.lost += missing;
            }
        }
    }
    for (class, e) in out.iter_mut() {
        let b = bytes.get(class).copied().unwrap_or(0) as f64;
        let per = b / e.clients.max(1) as f64 / (window_s / 60.0).max(1e-9);
        e.bytes_per_min_per_client = per.round();
    }
    out
}

/// A signed HS256 token for `sub`, valid for `ttl_s` seconds from `now_s`.
pub fn mint(secret: &str, sub: &str, now_s: u64, ttl_s: u64) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
    }
    let claims = Claims {
        sub,
        exp: now_s + ttl_s,
        iat: now_s,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
#[path = "mixed_tests.rs"]
mod tests;
