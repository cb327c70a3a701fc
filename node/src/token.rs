//! `sluice token`: mints an HS256 token the node accepts, from the command line, so
//! a development setup turns auth on in one step. Verifying stays in `auth.rs`; this
//! module only signs.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Map, Value};
use sluice_common::TopicPattern;

/// Shortest secret accepted: the node's own minimum (HS256 keys below 256 bits can
/// be brute-forced), so a minted token always verifies on a node with that secret.
pub use crate::config::MIN_SECRET_BYTES;
use crate::config::{JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET};

/// Lifetime of a token without `--ttl`: one hour.
pub const DEFAULT_TTL: u64 = 3600;
/// Longest `--ttl`: one year.
pub const MAX_TTL: u64 = 365 * 24 * 3600;

/// The usage line, printed by `sluice token --help`.
pub const USAGE: &str = "usage: sluice token --sub NAME [--admin] [--ttl SECONDS] [--topics PATTERN,...] [--jwt-secret SECRET]
  Prints an HS256 token signed with SLUICE_JWT_SECRET (or --jwt-secret) on stdout.
  --sub NAME          the user (claim `sub`); private topics trading.NAME, risk.NAME... are theirs
  --admin             claim `admin: true`: every topic and the admin HTTP API
  --ttl SECONDS       lifetime, 1 to 31536000 (default 3600)
  --topics P1,P2      claim `topics`: the public topics the token may read (e.g. prices.*,auctions.>)
  SLUICE_JWT_ISSUER / SLUICE_JWT_AUDIENCE, when set, become the `iss` / `aud` claims.
";

/// What `sluice token` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub sub: String,
    pub admin: bool,
    pub ttl: u64,
    pub topics: Option<Vec<String>>,
    pub secret: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl Request {
    /// Reads the arguments after `token` and, for what they leave out, the
    /// environment through `env`. Errors are one line and never contain the secret.
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Request, String> {
        let mut sub = None;
        let mut admin = false;
        let mut ttl = None;
        let mut topics = None;
        let mut secret = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
                _ => (arg.as_str(), None),
            };
            if name == "--admin" {
                if inline.is_some() {
                    return Err("--admin takes no value".into());
                }
                admin = true;
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name {
                "--sub" => sub = Some(value()?),
                "--ttl" => ttl = Some(value()?),
                "--topics" => topics = Some(value()?),
                "--jwt-secret" => secret = Some(value()?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let sub = sub.ok_or("--sub NAME is required")?;
        if sub.trim().is_empty() {
            return Err("--sub must not be empty".into());
        }
        let ttl = match ttl {
            None => DEFAULT_TTL,
            Some(t) => match t.parse::<u64>() {
                Ok(n) if (1..=MAX_TTL).contains(&n) => n,
                _ => return Err(format!("--ttl {t:?}: must be 1 to {MAX_TTL} seconds")),
            },
        };
        let topics = match topics {
            None => None,
            Some(list) => {
                let patterns: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                if patterns.is_empty() {
                    return Err("--topics needs at least one pattern".into());
                }
                for p in &patterns {
                    // The node refuses a token with a malformed pattern as a whole.
                    TopicPattern::parse(p)
                        .map_err(|e| format!("--topics: {p:?} is not a topic pattern: {e}"))?;
                }
                Some(patterns)
            }
        };
        let secret = secret
            .or_else(|| env(JWT_SECRET))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no secret: set {JWT_SECRET} or pass --jwt-secret"))?;
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{JWT_SECRET} is {} bytes; it must be at least {MIN_SECRET_BYTES}",
                secret.len()
            ));
        }
        let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
        Ok(Request {
            sub,
            admin,
            ttl,
            topics,
            secret,
            issuer: nonempty(JWT_ISSUER),
            audience: nonempty(JWT_AUDIENCE),
        })
    }

    /// The claims, with `iat` = `now` and `exp` = `now + ttl` (Unix seconds).
    pub fn claims(&self, now: u64) -> Value {
        let mut c = Map::new();
        c.insert("sub".into(), json!(self.sub));
        c.insert("iat".into(), json!(now));
        c.insert("exp".into(), json!(now.saturating_add(self.ttl)));
        if self.admin {
            c.insert("admin".into(), json!(true));
        }
        if let Some(t) = &self.topics {
            c.insert("topics".into(), json!(t));
        }
        if let Some(i) = &self.issuer {
            c.insert("iss".into(), json!(i));
        }
        if let Some(a) = &self.audience {
            c.insert("aud".into(), json!(a));
        }
        Value::Object(c)
    }

    /// The signed token.
    pub fn mint(&self) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_owned())?
            .as_secs();
        encode(
            &Header::default(),
            &self.claims(now),
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .map_err(|e| format!("cannot sign the token: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn env_with_secret(k: &str) -> Option<String> {
        (k == JWT_SECRET).then(|| SECRET.to_owned())
    }

    #[test]
    fn flags_become_claims() {
        let r = Request::parse(
            &args(&[
                "--sub",
                "alice",
                "--admin",
                "--ttl=60",
                "--topics",
                "prices.*, auctions.>",
            ]),
            env_with_secret,
        )
        .unwrap();
        let c = r.claims(1000);
        assert_eq!(
            c,
            json!({"sub": "alice", "iat": 1000, "exp": 1060, "admin": true,
                   "topics": ["prices.*", "auctions.>"]})
        );
        let r = Request::parse(&args(&["--sub=bob"]), env_with_secret).unwrap();
        assert_eq!(
            r.claims(5),
            json!({"sub": "bob", "iat": 5, "exp": 5 + DEFAULT_TTL})
        );
    }

    #[test]
    fn bad_arguments_get_one_line_without_the_secret() {
        let short = |k: &str| (k == JWT_SECRET).then(|| "short-secret".to_owned());
        let cases: Vec<(Vec<String>, Result<(), &str>)> = vec![
            (args(&[]), Err("--sub NAME is required")),
            (args(&["--sub", ""]), Err("--sub must not be empty")),
            (args(&["--sub"]), Err("--sub needs a value")),
            (
                args(&["--sub", "a", "--ttl", "0"]),
                Err("--ttl \"0\": must be 1 to 31536000 seconds"),
            ),
            (
                args(&["--sub", "a", "--ttl", "x"]),
                Err("--ttl \"x\": must be 1 to 31536000 seconds"),
            ),
            (
                args(&["--sub", "a", "--topics", ","]),
                Err("--topics needs at least one pattern"),
            ),
            (
                args(&["--sub", "a", "--admin=yes"]),
                Err("--admin takes no value"),
            ),
            (
                args(&["--sub", "a", "--bogus"]),
                Err("unknown argument \"--bogus\""),
            ),
        ];
        for (a, want) in cases {
            let got = Request::parse(&a, env_with_secret).map(|_| ());
            assert_eq!(got.as_ref().map_err(String::as_str).copied(), want, "{a:?}");
        }
        let e = Request::parse(
            &args(&["--sub", "a", "--topics", "pri ces"]),
            env_with_secret,
        )
        .unwrap_err();
        assert!(e.starts_with("--topics: \"pri ces\""), "{e}");
        let e = Request::parse(&args(&["--sub", "a"]), |_| None).unwrap_err();
        assert_eq!(e, "no secret: set SLUICE_JWT_SECRET or pass --jwt-secret");
        let e = Request::parse(&args(&["--sub", "a"]), short).unwrap_err();
        assert_eq!(e, "SLUICE_JWT_SECRET is 12 bytes; it must be at least 32");
        assert!(!e.contains("short-secret"));
    }

    #[test]
    fn the_flag_secret_wins_and_issuer_and_audience_come_from_the_environment() {
        let flag = "ffffffffffffffffffffffffffffffff-flag";
        let env = |k: &str| match k {
            JWT_SECRET => Some(SECRET.to_owned()),
            JWT_ISSUER => Some("sluice-dev".to_owned()),
            JWT_AUDIENCE => Some(String::new()),
            _ => None,
        };
        let r = Request::parse(&args(&["--sub", "a", "--jwt-secret", flag]), env).unwrap();
        assert_eq!(r.secret, flag);
        assert_eq!(r.claims(0)["iss"], "sluice-dev");
        assert!(r.claims(0).get("aud").is_none());
    }
}
