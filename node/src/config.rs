//! Node configuration: every setting's name, default and parser, in one place.
//!
//! Settings come from the environment and from `--flags` of the same name
//! (`SLUICE_QUEUE_SIZE` ⇔ `--queue-size`, `REDIS_URL` ⇔ `--redis-url`); a flag wins
//! over the environment. Everything is parsed before anything starts, and every bad
//! value is reported at once, one line per problem, each naming its variable.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use crate::net::Cidr;

pub const BIND: &str = "SLUICE_BIND";
pub const REDIS_URL: &str = "REDIS_URL";
pub const NODE_ID: &str = "SLUICE_NODE_ID";
pub const JWT_SECRET: &str = "SLUICE_JWT_SECRET";
pub const JWT_PUBLIC_KEY: &str = "SLUICE_JWT_PUBLIC_KEY";
pub const JWKS_FILE: &str = "SLUICE_JWKS_FILE";
pub const AUTH: &str = "SLUICE_AUTH";
pub const ADMIN_TOKEN: &str = "SLUICE_ADMIN_TOKEN";
/// Shortest `SLUICE_JWT_SECRET` / `SLUICE_ADMIN_TOKEN` accepted (256 bits, as HS256's
/// key length; RFC 7518 §3.2 asks for at least that).
pub const MIN_SECRET_BYTES: usize = 32;
pub const HISTORY_SIZE: &str = "SLUICE_HISTORY_SIZE";
pub const HISTORY_TTL: &str = "SLUICE_HISTORY_TTL";
pub const MAX_CONNECTIONS: &str = "SLUICE_MAX_CONNECTIONS";
pub const HEARTBEAT_INTERVAL: &str = "SLUICE_HEARTBEAT_INTERVAL";
pub const CONNECTION_TIMEOUT: &str = "SLUICE_CONNECTION_TIMEOUT";
pub const QUEUE_SIZE: &str = "SLUICE_QUEUE_SIZE";
pub const MAX_MESSAGE_BYTES: &str = "SLUICE_MAX_MESSAGE_BYTES";
pub const DRAIN_SECONDS: &str = "SLUICE_DRAIN_SECONDS";
pub const MAX_SUBSCRIPTIONS: &str = "SLUICE_MAX_SUBSCRIPTIONS";
pub const JWT_ISSUER: &str = "SLUICE_JWT_ISSUER";
pub const JWT_AUDIENCE: &str = "SLUICE_JWT_AUDIENCE";
pub const JWT_LEEWAY: &str = "SLUICE_JWT_LEEWAY";
pub const ALLOWED_ORIGINS: &str = "SLUICE_ALLOWED_ORIGINS";
pub const MAX_CONNECTIONS_PER_IP: &str = "SLUICE_MAX_CONNECTIONS_PER_IP";
pub const MESSAGE_RATE: &str = "SLUICE_MESSAGE_RATE";
pub const MESSAGE_BURST: &str = "SLUICE_MESSAGE_BURST";
pub const RATE_LIMIT_STRIKES: &str = "SLUICE_RATE_LIMIT_STRIKES";
pub const SUBSCRIBE_LIMITS: &str = "SLUICE_SUBSCRIBE_LIMITS";
pub const CONFLATE_MS: &str = "SLUICE_CONFLATE_MS";
pub const ADVERTISE_ADDR: &str = "SLUICE_ADVERTISE_ADDR";
pub const REGISTRY_TTL: &str = "SLUICE_REGISTRY_TTL";
pub const MAX_TOPICS: &str = "SLUICE_MAX_TOPICS";
pub const HANDSHAKE_TIMEOUT: &str = "SLUICE_HANDSHAKE_TIMEOUT";
pub const PROXY_PROTOCOL: &str = "SLUICE_PROXY_PROTOCOL";
pub const TRUSTED_PROXIES: &str = "SLUICE_TRUSTED_PROXIES";
pub const LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";

/// The default subscribe-rate table: per topic class, burst / refill per minute.
pub const DEFAULT_SUBSCRIBE_LIMITS: &str =
    "market=1000/100,auctions=500/50,trading=200/20,risk=100/10,mobile=300/30";

/// Every setting, in the order `--help` lists them, with its default as text.
pub const ALL: &[(&str, &str, &str)] = &[
    (BIND, "0.0.0.0:8080", "listen address"),
    (
        REDIS_URL,
        "(unset)",
        "Redis URL; unset runs the embedded in-memory broker (one node)",
    ),
    (
        NODE_ID,
        "hostname or a uuid",
        "this node's name in logs, /health and the cluster registry",
    ),
    (JWT_SECRET, "(none)", "HS256 secret, at least 32 bytes"),
    (
        JWT_PUBLIC_KEY,
        "(none)",
        "RS256 or ES256 public key, PEM file",
    ),
    (JWKS_FILE, "(none)", "JWKS file"),
    (
        AUTH,
        "required when a JWT key is set, else off",
        "required | off",
    ),
    (
        ADMIN_TOKEN,
        "(none: only admin JWTs, or 403 without a JWT key)",
        "bearer token for publish and admin HTTP endpoints, at least 32 bytes",
    ),
    (HISTORY_SIZE, "10000", "entries kept per topic"),
    (
        HISTORY_TTL,
        "86400",
        "seconds a topic with no publish keeps its history",
    ),
    (MAX_CONNECTIONS, "100000", "connections per node"),
    (
        HEARTBEAT_INTERVAL,
        "30",
        "seconds between server heartbeats",
    ),
    (
        CONNECTION_TIMEOUT,
        "90",
        "seconds without any client frame before the session is closed",
    ),
    (
        QUEUE_SIZE,
        "1024",
        "outbound messages buffered per session before it is a slow consumer",
    ),
    (MAX_MESSAGE_BYTES, "65536", "largest client frame accepted"),
    (
        DRAIN_SECONDS,
        "10",
        "seconds over which a draining node closes its sessions",
    ),
    (MAX_SUBSCRIPTIONS, "1000", "subscriptions per connection"),
    (JWT_ISSUER, "(not checked)", "required 'iss' claim"),
    (JWT_AUDIENCE, "(not checked)", "required 'aud' claim"),
    (
        JWT_LEEWAY,
        "5",
        "seconds of clock skew allowed on exp and nbf",
    ),
    (
        ALLOWED_ORIGINS,
        "(any)",
        "comma-separated Origins allowed to upgrade and for CORS",
    ),
    (
        MAX_CONNECTIONS_PER_IP,
        "1000",
        "connections per client IP (429 beyond)",
    ),
    (
        MESSAGE_RATE,
        "50",
        "client frames per second per connection (token bucket refill)",
    ),
    (
        MESSAGE_BURST,
        "100",
        "client frames a connection may send at once (bucket size)",
    ),
    (
        RATE_LIMIT_STRIKES,
        "20",
        "refused frames within 10 s that close the connection with 4029",
    ),
    (
        SUBSCRIBE_LIMITS,
        DEFAULT_SUBSCRIBE_LIMITS,
        "subscribe requests per connection per topic class: burst/per-minute",
    ),
    (
        CONFLATE_MS,
        "1000",
        "background mode: at most one message per topic per this many ms",
    ),
    (
        ADVERTISE_ADDR,
        "node id and bind port",
        "address other nodes and operators see in the cluster registry",
    ),
    (
        REGISTRY_TTL,
        "15",
        "seconds a node's registry record lives without a refresh (refreshed every third of it)",
    ),
    (
        MAX_TOPICS,
        "100000",
        "distinct topics this node follows at once (TOO_MANY_SUBSCRIPTIONS beyond)",
    ),
    (
        HANDSHAKE_TIMEOUT,
        "10",
        "seconds a new TCP connection has to send its HTTP request; then it is closed",
    ),
    (
        PROXY_PROTOCOL,
        "off",
        "on: every connection starts with a PROXY v1/v2 header giving the client's address",
    ),
    (
        TRUSTED_PROXIES,
        "(none)",
        "comma-separated CIDRs whose X-Forwarded-For is believed",
    ),
    (
        LOG_FORMAT,
        "text",
        "text | json: one JSON object per log line, for log collectors",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Off,
}

/// Where JWTs are verified from, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    Secret(String),
    PublicKeyFile(PathBuf),
    JwksFile(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// `None` selects the embedded in-memory broker.
    pub redis_url: Option<String>,
    pub node_id: String,
    pub jwt_key: Option<JwtKey>,
    pub auth: AuthMode,
    /// `None`: admin and publish endpoints refuse every request with 403.
    pub admin_token: Option<String>,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub max_connections: usize,
    pub heartbeat_interval: Duration,
    pub connection_timeout: Duration,
    pub queue_size: usize,
    pub max_message_bytes: usize,
    /// Sessions are closed spread over this long when the node drains.
    pub drain: Duration,
    pub max_subscriptions: usize,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway: Duration,
    /// `None`: any Origin may upgrade.
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections_per_ip: usize,
    pub message_rate: u32,
    pub message_burst: u32,
    pub rate_limit_strikes: u32,
    pub subscribe_limits: SubscribeLimits,
    pub conflate: Duration,
    pub advertise_addr: String,
    pub registry_ttl: Duration,
    /// Distinct topics the node follows at once (`SLUICE_MAX_TOPICS`).
    pub max_topics: usize,
    /// Time a TCP connection has to complete its HTTP request.
    pub handshake_timeout: Duration,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `SLUICE_LOG_FORMAT=json`: log lines as JSON objects.
    pub log_json: bool,
}

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

    pub fn get(&self, class: TopicClass) -> (u32, u32) {
        self.classes
            .iter()
            .find(|(c, _, _)| *c == class)
            .map_or((1000, 100), |(_, b, m)| (*b, *m))
    }
}

/// Every problem found in the configuration, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads the process environment and command-line flags.
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let flags = parse_flags(args)?;
        Self::from_lookup(|k| flags.get(k).cloned().or_else(|| std::env::var(k).ok()))
    }

    /// Builds a config from any key lookup, so tests pass a map instead of touching
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut p = Parser {
            lookup: &|k| lookup(k).filter(|v| !v.trim().is_empty()),
            errors: Vec::new(),
        };
        let bind = p.parse(BIND, SocketAddr::from(([0, 0, 0, 0], 8080)), |v| {
            v.parse::<SocketAddr>()
                .map_err(|_| "expected HOST:PORT, e.g. 0.0.0.0:8080".into())
        });
        let redis_url = p.get(REDIS_URL).and_then(|v| match check_redis_url(&v) {
            Ok(()) => Some(v),
            Err(e) => {
                // The URL may carry a password: print it redacted.
                let shown = sluice_common::redact::redact_url(&v);
                p.errors.push(format!("{REDIS_URL}={shown:?}: {e}"));
                None
            }
        });
        let node_id = p.get(NODE_ID).unwrap_or_else(default_node_id);
        let keys: Vec<JwtKey> = [
            p.get(JWT_SECRET).map(JwtKey::Secret),
            p.get(JWT_PUBLIC_KEY)
                .map(|v| JwtKey::PublicKeyFile(v.into())),
            p.get(JWKS_FILE).map(|v| JwtKey::JwksFile(v.into())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if keys.len() > 1 {
            p.errors.push(format!(
                "set only one of {JWT_SECRET}, {JWT_PUBLIC_KEY}, {JWKS_FILE}"
            ));
        }
        let jwt_key = keys.into_iter().next();
        if let Some(JwtKey::Secret(s)) = &jwt_key {
            p.check_secret_len(JWT_SECRET, s);
        }
        if let Some(key) = &jwt_key {
            if let JwtKey::PublicKeyFile(path) | JwtKey::JwksFile(path) = key {
                if !path.is_file() {
                    let var = if matches!(key, JwtKey::JwksFile(_)) {
                        JWKS_FILE
                    } else {
                        JWT_PUBLIC_KEY
                    };
                    p.errors
                        .push(format!("{var}={}: no such file", path.display()));
                }
            }
        }
        let auth_default = if jwt_key.is_some() {
            AuthMode::Required
        } else {
            AuthMode::Off
        };
        let auth = p.parse(AUTH, auth_default, |v| match v {
            "required" => Ok(AuthMode::Required),
            "off" => Ok(AuthMode::Off),
            _ => Err("expected 'required' or 'off'".into()),
        });
        if auth == AuthMode::Required && jwt_key.is_none() && p.get(AUTH).is_some() {
            p.errors.push(format!(
                "{AUTH}=required needs a key: set {JWT_SECRET}, {JWT_PUBLIC_KEY} or {JWKS_FILE}"
            ));
        }
        let admin_token = p.get(ADMIN_TOKEN);
        if let Some(t) = &admin_token {
            p.check_secret_len(ADMIN_TOKEN, t);
        }
        let history_size = p.int(HISTORY_SIZE, 10_000, 1, 10_000_000);
        let history_ttl = Duration::from_secs(p.int(HISTORY_TTL, 86_400, 1, 365 * 86_400) as u64);
        let max_connections = p.int(MAX_CONNECTIONS, 100_000, 1, 10_000_000);
        let heartbeat_interval = Duration::from_secs(p.int(HEARTBEAT_INTERVAL, 30, 1, 3600) as u64);
        let connection_timeout =
            Duration::from_secs(p.int(CONNECTION_TIMEOUT, 90, 1, 86_400) as u64);
        let queue_size = p.int(QUEUE_SIZE, 1024, 1, 1_000_000);
        let max_message_bytes = p.int(MAX_MESSAGE_BYTES, 65_536, 64, 64 << 20);
        let drain = Duration::from_secs(p.int(DRAIN_SECONDS, 10, 0, 3600) as u64);
        let max_subscriptions = p.int(MAX_SUBSCRIPTIONS, 1000, 1, 1_000_000);
        let jwt_issuer = p.get(JWT_ISSUER);
        let jwt_audience = p.get(JWT_AUDIENCE);
        let jwt_leeway = Duration::from_secs(p.int(JWT_LEEWAY, 5, 0, 3600) as u64);
        let allowed_origins = p.get(ALLOWED_ORIGINS).map(|v| {
            v.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect()
        });
        let max_connections_per_ip = p.int(MAX_CONNECTIONS_PER_IP, 1000, 1, 10_000_000);
        let message_rate = p.int(MESSAGE_RATE, 50, 1, 1_000_000) as u32;
        let message_burst = p.int(MESSAGE_BURST, 100, 1, 1_000_000) as u32;
        let rate_limit_strikes = p.int(RATE_LIMIT_STRIKES, 20, 1, 1_000_000) as u32;
        let subscribe_limits = p.parse(
            SUBSCRIBE_LIMITS,
            SubscribeLimits::parse(DEFAULT_SUBSCRIBE_LIMITS).unwrap_or(SubscribeLimits {
                classes: Vec::new(),
            }),
            SubscribeLimits::parse,
        );
        let conflate = Duration::from_millis(p.int(CONFLATE_MS, 1000, 10, 3_600_000) as u64);
        let advertise_addr = p
            .get(ADVERTISE_ADDR)
            .unwrap_or_else(|| format!("{node_id}:{}", bind.port()));
        let registry_ttl = Duration::from_secs(p.int(REGISTRY_TTL, 15, 3, 3600) as u64);
        let max_topics = p.int(MAX_TOPICS, 100_000, 1, 100_000_000);
        let handshake_timeout = Duration::from_secs(p.int(HANDSHAKE_TIMEOUT, 10, 1, 3600) as u64);
        let proxy_protocol = p.parse(PROXY_PROTOCOL, false, |v| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err("expected 'on' or 'off'".into()),
        });
        let trusted_proxies = p.parse(TRUSTED_PROXIES, Vec::new(), |v| {
            v.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| c.parse::<Cidr>().map_err(|e| format!("{c:?}: {e}")))
                .collect()
        });
        let log_json = p.parse(LOG_FORMAT, false, |v| match v {
            "text" => Ok(false),
            "json" => Ok(true),
            _ => Err("expected 'text' or 'json'".into()),
        });
        if !p.errors.is_empty() {
            return Err(ConfigError(p.errors));
        }
        Ok(Config {
            bind,
            redis_url,
            node_id,
            jwt_key,
            auth,
            admin_token,
            history_size,
            history_ttl,
            max_connections,
            heartbeat_interval,
            connection_timeout,
            queue_size,
            max_message_bytes,
            drain,
            max_subscriptions,
            jwt_issuer,
            jwt_audience,
            jwt_leeway,
            allowed_origins,
            max_connections_per_ip,
            message_rate,
            message_burst,
            rate_limit_strikes,
            subscribe_limits,
            conflate,
            advertise_addr,
            registry_ttl,
            max_topics,
            handshake_timeout,
            proxy_protocol,
            trusted_proxies,
            log_json,
        })
    }

    /// A configuration for tests and embedding: loopback, port 0, everything else default.
    pub fn for_tests() -> Self {
        let mut c =
            Self::from_lookup(|_| None).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        c.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        c.drain = Duration::from_millis(0);
        c
    }
}

struct Parser<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
}

impl Parser<'_> {
    fn get(&self, key: &str) -> Option<String> {
        (self.lookup)(key).map(|v| v.trim().to_owned())
    }

    /// Parses `key`, recording an error (and returning the default) when it is bad.
    fn parse<T>(&mut self, key: &str, default: T, f: impl Fn(&str) -> Result<T, String>) -> T {
        match self.get(key) {
            None => default,
            Some(v) => match f(&v) {
                Ok(t) => t,
                Err(e) => {
                    self.errors.push(format!("{key}={v:?}: {e}"));
                    default
                }
            },
        }
    }

    /// A short HS256 secret or admin token can be brute-forced offline (from one
    /// token) or online; the value itself is never printed.
    fn check_secret_len(&mut self, key: &str, value: &str) {
        if value.len() < MIN_SECRET_BYTES {
            self.errors.push(format!(
                "{key}: must be at least {MIN_SECRET_BYTES} bytes (value not shown); \
                 e.g. `openssl rand -hex 32`"
            ));
        }
    }

    fn int(&mut self, key: &str, default: usize, min: usize, max: usize) -> usize {
        self.parse(key, default, |v| match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(_) => Err(format!("must be between {min} and {max}")),
            Err(_) => Err("expected a whole number".into()),
        })
    }
}

fn check_redis_url(v: &str) -> Result<(), String> {
    sluice_common::redis_url::RedisUrl::parse(v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Turns `--queue-size 10` / `--queue-size=10` into `SLUICE_QUEUE_SIZE=10`.
fn parse_flags(
    args: impl IntoIterator<Item = String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let names: HashMap<String, &str> = ALL.iter().map(|(k, _, _)| (flag_name(k), *k)).collect();
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            errors.push(format!(
                "unexpected argument {arg:?} (settings are --name value)"
            ));
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.to_owned(), None),
        };
        let Some(key) = names.get(&name) else {
            errors.push(format!("unknown flag --{name} (see --help)"));
            if inline.is_none() {
                // Skip its value too, so one mistake is reported once.
                it.next_if(|v| !v.starts_with("--"));
            }
            continue;
        };
        match inline.or_else(|| it.next()) {
            Some(v) => {
                out.insert((*key).to_owned(), v);
            }
            None => errors.push(format!("--{name} needs a value")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError(errors))
    }
}

/// `SLUICE_QUEUE_SIZE` → `queue-size`, `REDIS_URL` → `redis-url`.
pub fn flag_name(key: &str) -> String {
    key.strip_prefix("SLUICE_")
        .unwrap_or(key)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// The text `sluice --help` prints.
pub fn help() -> String {
    let mut s = String::from("sluice — WebSocket gateway for real-time trading data\n\nSettings (environment variable / flag, default):\n");
    for (key, default, what) in ALL {
        s.push_str(&format!(
            "  {key:<28} --{:<22} {what} [default: {default}]\n",
            flag_name(key)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = with(&[]).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0:8080");
        assert_eq!(c.redis_url, None);
        assert_eq!(c.auth, AuthMode::Off);
        assert_eq!(c.history_size, 10_000);
        assert_eq!(c.history_ttl, Duration::from_secs(86_400));
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.connection_timeout, Duration::from_secs(90));
        assert_eq!(c.queue_size, 1024);
        assert_eq!(c.max_message_bytes, 65_536);
        assert!(!c.node_id.is_empty());
        assert_eq!(c.max_topics, 100_000);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert!(!c.proxy_protocol);
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn edge_settings_parse_and_bad_ones_are_named() {
        let c = with(&[
            (PROXY_PROTOCOL, "on"),
            (TRUSTED_PROXIES, "10.0.0.0/8, 127.0.0.1,::1/128"),
            (HANDSHAKE_TIMEOUT, "3"),
            (MAX_TOPICS, "50"),
        ])
        .unwrap();
        assert!(c.proxy_protocol);
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.max_topics, 50);
        let err = with(&[
            (PROXY_PROTOCOL, "yes"),
            (TRUSTED_PROXIES, "10.0.0.0/33"),
            (HANDSHAKE_TIMEOUT, "0"),
            (MAX_TOPICS, "none"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        for var in [
            PROXY_PROTOCOL,
            TRUSTED_PROXIES,
            HANDSHAKE_TIMEOUT,
            MAX_TOPICS,
        ] {
            assert!(err.0.iter().any(|l| l.starts_with(var)), "{var} in {err}");
        }
    }

    #[test]
    fn a_jwt_key_makes_auth_required_by_default() {
        let secret = "a-jwt-secret-of-at-least-32-bytes";
        let c = with(&[(JWT_SECRET, secret)]).unwrap();
        assert_eq!(c.auth, AuthMode::Required);
        assert_eq!(c.jwt_key, Some(JwtKey::Secret(secret.into())));
        assert_eq!(
            with(&[(JWT_SECRET, secret), (AUTH, "off")]).unwrap().auth,
            AuthMode::Off
        );
    }

    #[test]
    fn short_secrets_are_refused_with_one_line_each_that_never_shows_them() {
        let err = with(&[
            (JWT_SECRET, "short-jwt-secret-31-bytes-long!"),
            (ADMIN_TOKEN, "tiny-admin"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].starts_with(JWT_SECRET), "{err}");
        assert!(err.0[1].starts_with(ADMIN_TOKEN), "{err}");
        let text = err.to_string();
        assert!(text.contains("at least 32 bytes"), "{text}");
        assert!(!text.contains("short-jwt-secret"), "{text}");
        assert!(!text.contains("tiny-admin"), "{text}");
        // Exactly 32 bytes is enough.
        let c = with(&[
            (JWT_SECRET, "j".repeat(32).as_str()),
            (ADMIN_TOKEN, "a".repeat(32).as_str()),
        ])
        .unwrap();
        assert_eq!(c.admin_token.as_deref().map(str::len), Some(32));
    }

    #[test]
    fn a_bad_redis_url_is_reported_without_its_password() {
        let err = with(&[(REDIS_URL, "http://user:hunter2-secret@cache:6379")]).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].starts_with(REDIS_URL), "{err}");
        assert!(!err.0[0].contains("hunter2-secret"), "{err}");
        assert!(err.0[0].contains("user:***@cache:6379"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported_naming_its_variable() {
        let err = with(&[
            (BIND, "nope"),
            (QUEUE_SIZE, "0"),
            (HISTORY_SIZE, "ten"),
            (AUTH, "maybe"),
            (REDIS_URL, "http://x"),
            (JWKS_FILE, "/does/not/exist"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 6, "{err}");
        for (line, var) in
            err.0
                .iter()
                .zip([BIND, REDIS_URL, JWKS_FILE, AUTH, HISTORY_SIZE, QUEUE_SIZE])
        {
            assert!(line.starts_with(var), "{line} should name {var}");
        }
    }

    #[test]
    fn auth_required_without_a_key_is_refused() {
        let err = with(&[(AUTH, "required")]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].contains(AUTH));
    }

    #[test]
    fn subscribe_limits_default_to_the_seed_table_and_can_be_overridden() {
        let c = with(&[]).unwrap();
        assert_eq!(c.subscribe_limits.get(TopicClass::Market), (1000, 100));
        assert_eq!(c.subscribe_limits.get(TopicClass::Auctions), (500, 50));
        assert_eq!(c.subscribe_limits.get(TopicClass::Trading), (200, 20));
        assert_eq!(c.subscribe_limits.get(TopicClass::Risk), (100, 10));
        assert_eq!(c.subscribe_limits.get(TopicClass::Mobile), (300, 30));
        let c = with(&[(SUBSCRIBE_LIMITS, "risk=5/1")]).unwrap();
        assert_eq!(c.subscribe_limits.get(TopicClass::Risk), (5, 1));
        assert_eq!(c.subscribe_limits.get(TopicClass::Mobile), (300, 30));
        assert!(with(&[(SUBSCRIBE_LIMITS, "risk=0/1")]).is_err());
        assert!(with(&[(SUBSCRIBE_LIMITS, "cats=1/1")]).is_err());
        assert_eq!(TopicClass::of("portfolio.u1"), TopicClass::Trading);
        assert_eq!(TopicClass::of("risk.u1.alerts"), TopicClass::Risk);
        assert_eq!(TopicClass::of("whatever.x"), TopicClass::Market);
    }

    #[test]
    fn flags_override_and_are_checked() {
        let flags = parse_flags([
            "--queue-size".into(),
            "7".into(),
            "--redis-url=redis://h:1".into(),
        ])
        .unwrap();
        assert_eq!(flags.get(QUEUE_SIZE).map(String::as_str), Some("7"));
        assert_eq!(
            flags.get(REDIS_URL).map(String::as_str),
            Some("redis://h:1")
        );
        let err = parse_flags(["--bogus".into(), "1".into(), "--bind".into()]).unwrap_err();
        assert_eq!(err.0.len(), 2);
        assert_eq!(flag_name(HEARTBEAT_INTERVAL), "heartbeat-interval");
    }
}
