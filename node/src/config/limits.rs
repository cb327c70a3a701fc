//! Subscribe-rate limits per topic class (`SLUICE_SUBSCRIBE_LIMITS`), and which
//! class a topic is in.

/// The default subscribe-rate table: per topic class, burst / refill per minute.
pub const DEFAULT_SUBSCRIBE_LIMITS: &str =
    "market=1000/100,auctions=500/50,trading=200/20,risk=100/10,mobile=300/30";

/// Subscribe-rate limits per topic class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeLimits {
    /// `(class, burst, per_minute)`.
    pub classes: Vec<(TopicClass, u32, u32)>,
}

/// Which rate-limit class a topic's first segment puts it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicClass {
    /// `prices`, `market`, `market_data` and any family not named below.
    Market,
    Auctions,
    /// `trading` and `portfolio`.
    Trading,
    Risk,
    Mobile,
}

impl TopicClass {
    pub fn of(topic: &str) -> Self {
        match topic.split('.').next().unwrap_or_default() {
            "auctions" => TopicClass::Auctions,
            "trading" | "portfolio" => TopicClass::Trading,
            "risk" => TopicClass::Risk,
            "mobile" => TopicClass::Mobile,
            _ => TopicClass::Market,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "market" => TopicClass::Market,
            "auctions" => TopicClass::Auctions,
            "trading" => TopicClass::Trading,
            "risk" => TopicClass::Risk,
            "mobile" => TopicClass::Mobile,
            _ => return None,
        })
    }
}

impl SubscribeLimits {
    /// Parses `market=1000/100,auctions=500/50`; classes not named keep their defaults.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::parse_exact(DEFAULT_SUBSCRIBE_LIMITS)?;
        for (class, burst, per_min) in Self::parse_exact(text)?.classes {
            out.classes.retain(|(c, _, _)| *c != class);
            out.classes.push((class, burst, per_min));
        }
        Ok(out)
    }

    fn parse_exact(text: &str) -> Result<Self, String> {
        let mut classes = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rest) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected class=burst/per-minute"))?;
            let class = TopicClass::parse(name.trim()).ok_or_else(|| {
                format!("{name:?}: classes are market, auctions, trading, risk, mobile")
            })?;
            let (b, m) = rest
                .split_once('/')
                .ok_or_else(|| format!("{item:?}: expected class=burst/per-minute"))?;
            let num = |v: &str| v.trim().parse::<u32>().ok().filter(|n| *n >= 1);
            match (num(b), num(m)) {
                (Some(b), Some(m)) => classes.push((class, b, m)),
                _ => {
                    return Err(format!(
                        "{item:?}: burst and per-minute must be whole numbers of at least 1"
                    ))
                }
            }
        }
        Ok(SubscribeLimits { classes })
    }

    /// The class's `(burst, per_minute)`; a class missing from a hand-built table
    /// gets its default.
    pub fn get(&self, class: TopicClass) -> (u32, u32) {
        let find = |l: &Self| {
            l.classes
                .iter()
                .find(|(c, _, _)| *c == class)
                .map(|(_, b, m)| (*b, *m))
        };
        find(self)
            .or_else(|| {
                Self::parse_exact(DEFAULT_SUBSCRIBE_LIMITS)
                    .ok()
                    .as_ref()
                    .and_then(find)
            })
            .unwrap_or((1, 1))
    }
}
