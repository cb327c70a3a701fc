//! Node configuration: every setting's name, default and parser, in one place.
//!
//! Settings come from the environment and from `--flags` of the same name
//! (`SLUICE_QUEUE_SIZE` ⇔ `--queue-size`, `REDIS_URL` ⇔ `--redis-url`); a flag wins
//! over the environment. Everything is parsed before anything starts, and every bad
//! value is reported at once, one line per problem, each naming its variable.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

pub const BIND: &str = "SLUICE_BIND";
pub const REDIS_URL: &str = "REDIS_URL";
pub const NODE_ID: &str = "SLUICE_NODE_ID";
pub const JWT_SECRET: &str = "SLUICE_JWT_SECRET";
pub const JWT_PUBLIC_KEY: &str = "SLUICE_JWT_PUBLIC_KEY";
pub const JWKS_FILE: &str = "SLUICE_JWKS_FILE";
pub const AUTH: &str = "SLUICE_AUTH";
pub const ADMIN_TOKEN: &str = "SLUICE_ADMIN_TOKEN";
pub const HISTORY_SIZE: &str = "SLUICE_HISTORY_SIZE";
pub const HISTORY_TTL: &str = "SLUICE_HISTORY_TTL";
pub const MAX_CONNECTIONS: &str = "SLUICE_MAX_CONNECTIONS";
pub const HEARTBEAT_INTERVAL: &str = "SLUICE_HEARTBEAT_INTERVAL";
pub const CONNECTION_TIMEOUT: &str = "SLUICE_CONNECTION_TIMEOUT";
pub const QUEUE_SIZE: &str = "SLUICE_QUEUE_SIZE";
pub const MAX_MESSAGE_BYTES: &str = "SLUICE_MAX_MESSAGE_BYTES";
pub const DRAIN_SECONDS: &str = "SLUICE_DRAIN_SECONDS";
pub const MAX_SUBSCRIPTIONS: &str = "SLUICE_MAX_SUBSCRIPTIONS";

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
    (JWT_SECRET, "(none)", "HS256 secret"),
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
        "(none: admin endpoints answer 403)",
        "bearer token for publish and admin HTTP endpoints",
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
                p.errors.push(format!("{REDIS_URL}={v:?}: {e}"));
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

    fn int(&mut self, key: &str, default: usize, min: usize, max: usize) -> usize {
        self.parse(key, default, |v| match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(_) => Err(format!("must be between {min} and {max}")),
            Err(_) => Err("expected a whole number".into()),
        })
    }
}

fn check_redis_url(v: &str) -> Result<(), String> {
    for url in v.split(',').map(str::trim) {
        let ok = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
            "redis-cluster://",
        ]
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len());
        if !ok {
            return Err(format!(
                "{url:?} is not a redis://, rediss:// or redis+cluster:// URL"
            ));
        }
    }
    Ok(())
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
    let mut it = args.into_iter();
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
    }

    #[test]
    fn a_jwt_key_makes_auth_required_by_default() {
        let c = with(&[(JWT_SECRET, "s3cret")]).unwrap();
        assert_eq!(c.auth, AuthMode::Required);
        assert_eq!(c.jwt_key, Some(JwtKey::Secret("s3cret".into())));
        assert_eq!(
            with(&[(JWT_SECRET, "s"), (AUTH, "off")]).unwrap().auth,
            AuthMode::Off
        );
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
