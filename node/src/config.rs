//! Node configuration: every setting's name, default and parser, in one place.
//!
//! Settings come from the environment and from `--flags` of the same name
//! (`SLUICE_QUEUE_SIZE` ⇔ `--queue-size`, `REDIS_URL` ⇔ `--redis-url`); a flag wins
//! over the environment. Everything is parsed before anything starts, and every bad
//! value is reported at once, one line per problem, each naming its variable.
//!
//! The names are the constants below; [`settings::SETTINGS`] is the one table that
//! gives each its default, the values it accepts and its help line. Parsing,
//! validation, `--help` and the flags are all derived from that table.

mod flags;
mod limits;
mod read;
pub mod settings;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use sluice_common::redis_client::{RedisSettings, Replicas};

use crate::net::Cidr;

pub use limits::{SubscribeLimits, TopicClass, DEFAULT_SUBSCRIBE_LIMITS};
pub use settings::{flag_name, help};

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
pub const REDIS_TLS_CA: &str = sluice_common::redis_client::TLS_CA_VAR;
pub const PUBLISH_REPLICAS: &str = sluice_common::redis_client::PUBLISH_REPLICAS_VAR;
pub const PUBLISH_REPLICAS_TIMEOUT_MS: &str =
    sluice_common::redis_client::PUBLISH_REPLICAS_TIMEOUT_VAR;

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
    /// `SLUICE_REDIS_TLS_CA`, `SLUICE_PUBLISH_REPLICAS`, `SLUICE_PUBLISH_REPLICAS_TIMEOUT_MS`.
    pub redis: RedisSettings,
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

/// Every problem found in the configuration, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads the process environment and command-line flags.
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let flags = flags::parse_flags(args)?;
        Self::from_lookup(|k| flags.get(k).cloned().or_else(|| std::env::var(k).ok()))
    }

    /// Builds a config from any key lookup, so tests pass a map instead of touching
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut p = read::Reader::new(&lookup);
        let bind = p.addr(BIND);
        let redis_url = p.text(REDIS_URL);
        let redis = redis_settings(&mut p);
        let node_id = p.text(NODE_ID).unwrap_or_else(default_node_id);
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
            p.check(JWT_SECRET, s);
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
        let auth = match p.word(AUTH) {
            Some("required") => AuthMode::Required,
            Some(_) => AuthMode::Off,
            None if jwt_key.is_some() => AuthMode::Required,
            None => AuthMode::Off,
        };
        if auth == AuthMode::Required && jwt_key.is_none() && p.get(AUTH).is_some() {
            p.errors.push(format!(
                "{AUTH}=required needs a key: set {JWT_SECRET}, {JWT_PUBLIC_KEY} or {JWKS_FILE}"
            ));
        }
        let admin_token = p.get(ADMIN_TOKEN);
        if let Some(t) = &admin_token {
            p.check(ADMIN_TOKEN, t);
        }
        let history_size = p.int(HISTORY_SIZE);
        let history_ttl = p.secs(HISTORY_TTL);
        let max_connections = p.int(MAX_CONNECTIONS);
        let heartbeat_interval = p.secs(HEARTBEAT_INTERVAL);
        let connection_timeout = p.secs(CONNECTION_TIMEOUT);
        let queue_size = p.int(QUEUE_SIZE);
        let max_message_bytes = p.int(MAX_MESSAGE_BYTES);
        let drain = p.secs(DRAIN_SECONDS);
        let max_subscriptions = p.int(MAX_SUBSCRIPTIONS);
        let jwt_issuer = p.text(JWT_ISSUER);
        let jwt_audience = p.text(JWT_AUDIENCE);
        let jwt_leeway = p.secs(JWT_LEEWAY);
        let allowed_origins = p.list(ALLOWED_ORIGINS);
        let max_connections_per_ip = p.int(MAX_CONNECTIONS_PER_IP);
        let message_rate = p.int32(MESSAGE_RATE);
        let message_burst = p.int32(MESSAGE_BURST);
        let rate_limit_strikes = p.int32(RATE_LIMIT_STRIKES);
        let subscribe_limits = p.limits(SUBSCRIBE_LIMITS);
        let conflate = p.millis(CONFLATE_MS);
        let advertise_addr = p
            .text(ADVERTISE_ADDR)
            .unwrap_or_else(|| format!("{node_id}:{}", bind.port()));
        let registry_ttl = p.secs(REGISTRY_TTL);
        let max_topics = p.int(MAX_TOPICS);
        let handshake_timeout = p.secs(HANDSHAKE_TIMEOUT);
        let proxy_protocol = p.word(PROXY_PROTOCOL) == Some("on");
        let trusted_proxies = p.cidrs(TRUSTED_PROXIES);
        let log_json = p.word(LOG_FORMAT) == Some("json");
        if !p.errors.is_empty() {
            return Err(ConfigError(p.errors));
        }
        Ok(Config {
            bind,
            redis_url,
            redis,
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

/// How the broker reaches Redis beyond the URL: TLS roots and the replica wait.
fn redis_settings(p: &mut read::Reader<'_>) -> RedisSettings {
    let tls_ca = p.text(REDIS_TLS_CA).map(PathBuf::from);
    if let Some(ca) = &tls_ca {
        if !ca.is_file() {
            p.errors
                .push(format!("{REDIS_TLS_CA}={}: no such file", ca.display()));
        }
    }
    let replicas = match p.word(PUBLISH_REPLICAS) {
        None | Some("auto") => Replicas::Auto,
        Some(n) => Replicas::Exactly(n.parse().unwrap_or(0)),
    };
    RedisSettings {
        tls_ca,
        replicas,
        replica_timeout: p.millis(PUBLISH_REPLICAS_TIMEOUT_MS),
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
