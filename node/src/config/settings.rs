//! The table of settings: each one's name, default, accepted values and help, written
//! once; the parser, the checks, `--help` and the flags all read it.

use std::net::SocketAddr;

use super::*;

/// One setting: the environment variable (and, derived from it, the `--flag`).
#[derive(Debug)]
pub struct Setting {
    /// The environment variable; the flag is [`flag_name`] of it.
    pub name: &'static str,
    pub default: Initial,
    pub kind: Kind,
    /// One line for `--help`.
    pub help: &'static str,
}

/// What a setting is when nothing sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    /// This text, parsed by the setting's own [`Kind`] like any value given.
    Value(&'static str),
    /// No value; the text says what that means (off, or derived from other settings).
    Unset(&'static str),
}

/// Which values a setting accepts, and so which parser reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number within `min..=max` (its unit is in the help).
    Int { min: usize, max: usize },
    /// Exactly one of these words.
    Word(&'static [&'static str]),
    /// `HOST:PORT`.
    Addr,
    /// A Redis URL (see `check_redis_url`); shown redacted in errors.
    RedisUrl,
    /// Any text.
    Text,
    /// A path to a file.
    File,
    /// A secret of at least [`MIN_SECRET_BYTES`]; never shown in an error.
    Secret,
    /// Comma-separated HTTP Origins.
    Origins,
    /// Comma-separated CIDRs (or bare addresses).
    Cidrs,
    /// `class=burst/per-minute,…` (see [`SubscribeLimits::parse`]).
    SubscribeLimits,
}

/// A value read by a [`Kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Int(usize),
    Word(&'static str),
    Addr(SocketAddr),
    Text(String),
    List(Vec<String>),
    Cidrs(Vec<Cidr>),
    Limits(SubscribeLimits),
}

const fn int(
    name: &'static str,
    default: &'static str,
    min: usize,
    max: usize,
    help: &'static str,
) -> Setting {
    Setting {
        name,
        default: Initial::Value(default),
        kind: Kind::Int { min, max },
        help,
    }
}

const fn other(name: &'static str, default: Initial, kind: Kind, help: &'static str) -> Setting {
    Setting {
        name,
        default,
        kind,
        help,
    }
}

use Initial::{Unset, Value};

/// Every setting, in the order `--help` lists them.
pub const SETTINGS: &[Setting] = &[
    other(BIND, Value("0.0.0.0:8080"), Kind::Addr, "listen address"),
    other(
        REDIS_URL,
        Unset("(unset)"),
        Kind::RedisUrl,
        "Redis URL; unset runs the embedded in-memory broker (one node)",
    ),
    other(
        REDIS_TLS_CA,
        Unset("the system's roots"),
        Kind::File,
        "PEM file of the CA(s) that sign the Redis servers' certificates (rediss://)",
    ),
    other(
        PUBLISH_REPLICAS,
        Value("auto"),
        Kind::Word(&["auto", "0", "1", "2", "3", "4", "5"]),
        "replicas a publish waits for: auto (1 when the master has one) or 0-5",
    ),
    int(
        PUBLISH_REPLICAS_TIMEOUT_MS,
        "1000",
        1,
        4000,
        "ms a publish waits for its replicas; then it answers 504 (published, unconfirmed)",
    ),
    other(
        NODE_ID,
        Unset("hostname or a uuid"),
        Kind::Text,
        "this node's name in logs, /health and the cluster registry",
    ),
    other(
        JWT_SECRET,
        Unset("(none)"),
        Kind::Secret,
        "HS256 secret, at least 32 bytes",
    ),
    other(
        JWT_PUBLIC_KEY,
        Unset("(none)"),
        Kind::File,
        "RS256 or ES256 public key, PEM file",
    ),
    other(JWKS_FILE, Unset("(none)"), Kind::File, "JWKS file"),
    other(
        AUTH,
        Unset("required when a JWT key is set, else off"),
        Kind::Word(&["required", "off"]),
        "required | off",
    ),
    other(
        ADMIN_TOKEN,
        Unset("(none: only admin JWTs, or 403 without a JWT key)"),
        Kind::Secret,
        "bearer token for publish and admin HTTP endpoints, at least 32 bytes",
    ),
    int(
        HISTORY_SIZE,
        "10000",
        1,
        10_000_000,
        "entries kept per topic",
    ),
    int(
        HISTORY_TTL,
        "86400",
        1,
        365 * 86_400,
        "seconds a topic with no publish keeps its history",
    ),
    int(
        MAX_CONNECTIONS,
        "100000",
        1,
        10_000_000,
        "connections per node",
    ),
    int(
        HEARTBEAT_INTERVAL,
        "30",
        1,
        3600,
        "seconds between server heartbeats",
    ),
    int(
        CONNECTION_TIMEOUT,
        "90",
        1,
        86_400,
        "seconds without any client frame before the session is closed",
    ),
    int(
        QUEUE_SIZE,
        "1024",
        1,
        1_000_000,
        "outbound messages buffered per session before it is a slow consumer",
    ),
    int(
        MAX_MESSAGE_BYTES,
        "65536",
        64,
        64 << 20,
        "largest client frame accepted",
    ),
    int(
        DRAIN_SECONDS,
        "10",
        0,
        3600,
        "seconds over which a draining node closes its sessions",
    ),
    int(
        MAX_SUBSCRIPTIONS,
        "1000",
        1,
        1_000_000,
        "subscriptions per connection",
    ),
    other(
        JWT_ISSUER,
        Unset("(not checked)"),
        Kind::Text,
        "required 'iss' claim",
    ),
    other(
        JWT_AUDIENCE,
        Unset("(not checked)"),
        Kind::Text,
        "required 'aud' claim",
    ),
    int(
        JWT_LEEWAY,
        "5",
        0,
        3600,
        "seconds of clock skew allowed on exp and nbf",
    ),
    other(
        ALLOWED_ORIGINS,
        Unset("(any)"),
        Kind::Origins,
        "comma-separated Origins allowed to upgrade and for CORS",
    ),
    int(
        MAX_CONNECTIONS_PER_IP,
        "1000",
        1,
        10_000_000,
        "connections per client IP (429 beyond)",
    ),
    int(
        MESSAGE_RATE,
        "50",
        1,
        1_000_000,
        "client frames per second per connection (token bucket refill)",
    ),
    int(
        MESSAGE_BURST,
        "100",
        1,
        1_000_000,
        "client frames a connection may send at once (bucket size)",
    ),
    int(
        RATE_LIMIT_STRIKES,
        "20",
        1,
        1_000_000,
        "refused frames within 10 s that close the connection with 4029",
    ),
    other(
        SUBSCRIBE_LIMITS,
        Value(DEFAULT_SUBSCRIBE_LIMITS),
        Kind::SubscribeLimits,
        "subscribe requests per connection per topic class: burst/per-minute",
    ),
    int(
        CONFLATE_MS,
        "1000",
        10,
        3_600_000,
        "background mode: at most one message per topic per this many ms",
    ),
    other(
        ADVERTISE_ADDR,
        Unset("node id and bind port"),
        Kind::Text,
        "address other nodes and operators see in the cluster registry",
    ),
    int(
        REGISTRY_TTL,
        "15",
        3,
        3600,
        "seconds a node's registry record lives without a refresh (refreshed every third of it)",
    ),
    int(
        MAX_TOPICS,
        "100000",
        1,
        100_000_000,
        "distinct topics this node follows at once (TOO_MANY_SUBSCRIPTIONS beyond)",
    ),
    int(
        HANDSHAKE_TIMEOUT,
        "10",
        1,
        3600,
        "seconds a new TCP connection has to send its HTTP request; then it is closed",
    ),
    other(
        PROXY_PROTOCOL,
        Value("off"),
        Kind::Word(&["on", "off"]),
        "on: every connection starts with a PROXY v1/v2 header giving the client's address",
    ),
    other(
        TRUSTED_PROXIES,
        Unset("(none)"),
        Kind::Cidrs,
        "comma-separated CIDRs whose X-Forwarded-For is believed",
    ),
    other(
        LOG_FORMAT,
        Value("text"),
        Kind::Word(&["text", "json"]),
        "text | json: one JSON object per log line, for log collectors",
    ),
];

/// The table's entry for `name`. Every name the parser asks for is in the table (a
/// unit test reads every one of them), so a miss is a bug in this file.
pub fn setting(name: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| unreachable!("{name} is not in config::SETTINGS"))
}

impl Initial {
    /// The text `--help` shows after `default:`.
    pub fn text(self) -> &'static str {
        match self {
            Initial::Value(t) | Initial::Unset(t) => t,
        }
    }
}

impl Kind {
    /// Reads one (trimmed, non-empty) value; the error says what was expected.
    pub fn parse(self, v: &str) -> Result<Parsed, String> {
        match self {
            Kind::Int { min, max } => match v.parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Parsed::Int(n)),
                Ok(_) => Err(format!("must be between {min} and {max}")),
                Err(_) => Err("expected a whole number".into()),
            },
            Kind::Word(words) => words
                .iter()
                .find(|w| **w == v)
                .map(|w| Parsed::Word(w))
                .ok_or_else(|| format!("expected {}", one_of(words))),
            Kind::Addr => v
                .parse::<SocketAddr>()
                .map(Parsed::Addr)
                .map_err(|_| "expected HOST:PORT, e.g. 0.0.0.0:8080".into()),
            Kind::RedisUrl => check_redis_url(v).map(|()| Parsed::Text(v.to_owned())),
            Kind::Text | Kind::File => Ok(Parsed::Text(v.to_owned())),
            Kind::Secret if v.len() < MIN_SECRET_BYTES => Err(format!(
                "must be at least {MIN_SECRET_BYTES} bytes (value not shown); \
                 e.g. `openssl rand -hex 32`"
            )),
            Kind::Secret => Ok(Parsed::Text(v.to_owned())),
            Kind::Origins => Ok(Parsed::List(
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            )),
            Kind::Cidrs => v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| c.parse::<Cidr>().map_err(|e| format!("{c:?}: {e}")))
                .collect::<Result<_, _>>()
                .map(Parsed::Cidrs),
            Kind::SubscribeLimits => SubscribeLimits::parse(v).map(Parsed::Limits),
        }
    }

    /// How a bad value appears in its error line: a secret not at all, a Redis URL
    /// without its password.
    pub fn shown(self, v: &str) -> Option<String> {
        match self {
            Kind::Secret => None,
            Kind::RedisUrl => Some(sluice_common::redact::redact_url(v)),
            _ => Some(v.to_owned()),
        }
    }
}

/// `'a' or 'b'`, `'a', 'b' or 'c'`.
fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
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
    for Setting {
        name,
        default,
        help,
        ..
    } in SETTINGS
    {
        s.push_str(&format!(
            "  {name:<28} --{:<22} {help} [default: {}]\n",
            flag_name(name),
            default.text()
        ));
    }
    s
}
