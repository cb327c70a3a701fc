//! `REDIS_URL`, parsed once: the one place that knows which URL forms name which
//! Redis deployment (SPEC §2), used by the node's config check, its broker and the
//! engines' `Publisher`. Pure (no Redis client, no runtime), so it is cheap to test.
//!
//! Accepted forms (fred's): `redis://` and `rediss://` (one server),
//! `redis-cluster://` and `rediss-cluster://` (Redis Cluster, more seed nodes as
//! `?node=host:port`), `redis-sentinel://` and `rediss-sentinel://` (the URL's host
//! and every `?node=` are sentinels; `?sentinelServiceName=NAME` is required).
//! Everything else is refused with a reason, and no error text ever carries the
//! URL's password: every message passes through [`scrub_with`] before it leaves.

use std::fmt;

use crate::redact;

/// Port of a server or cluster node when the URL names none.
pub const DEFAULT_PORT: u16 = 6379;
/// Port of a sentinel when the URL's host names none (Redis' own default).
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The schemes accepted, as shown in errors.
const SCHEMES: &str = "redis://, rediss://, redis-cluster://, rediss-cluster://, \
                       redis-sentinel:// or rediss-sentinel://";

/// One `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name or an IP address; IPv6 without its brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which kind of deployment the URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (it may have replicas; the client talks to it alone).
    Standalone(HostPort),
    /// Redis Cluster: seed nodes, the rest is discovered (`CLUSTER SLOTS`).
    Cluster(Vec<HostPort>),
    /// A master found through sentinels.
    Sentinel {
        sentinels: Vec<HostPort>,
        service_name: String,
    },
}

/// A checked `REDIS_URL`. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss…`: connect with TLS.
    pub tls: bool,
    pub topology: Topology,
    /// ACL user (percent-decoded); `None` for the default user.
    pub username: Option<String>,
    password: Option<String>,
    /// `SELECT`ed database; always `None` on Cluster (it has only database 0).
    pub database: Option<u8>,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("tls", &self.tls)
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| redact::MASK))
            .field("database", &self.database)
            .finish()
    }
}

/// Why a `REDIS_URL` was refused. The text never contains the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedisUrlError(String);

impl RedisUrl {
    /// Parses and checks every part of `url`.
    pub fn parse(url: &str) -> Result<RedisUrl, RedisUrlError> {
        parse_inner(url).map_err(|msg| RedisUrlError(scrub_with(url, &msg)))
    }

    /// The password (percent-decoded), for the Redis client only: never print it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The scheme this URL was written with, e.g. `rediss-cluster`.
    pub fn scheme(&self) -> &'static str {
        match (&self.topology, self.tls) {
            (Topology::Standalone(_), false) => "redis",
            (Topology::Standalone(_), true) => "rediss",
            (Topology::Cluster(_), false) => "redis-cluster",
            (Topology::Cluster(_), true) => "rediss-cluster",
            (Topology::Sentinel { .. }, false) => "redis-sentinel",
            (Topology::Sentinel { .. }, true) => "rediss-sentinel",
        }
    }
}

/// `msg` with every secret of `url` (as written and percent-decoded) masked.
fn scrub_with(url: &str, msg: &str) -> String {
    let mut out = msg.to_owned();
    for s in redact::url_secrets(url) {
        out = out.replace(&s, redact::MASK);
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Standalone,
    Cluster,
    Sentinel,
}

fn parse_inner(url: &str) -> Result<RedisUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("expected a URL starting with {SCHEMES}"));
    };
    let (kind, tls) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (Kind::Standalone, false),
        "rediss" => (Kind::Standalone, true),
        "redis-cluster" => (Kind::Cluster, false),
        "rediss-cluster" => (Kind::Cluster, true),
        "redis-sentinel" => (Kind::Sentinel, false),
        "rediss-sentinel" => (Kind::Sentinel, true),
        _ => {
            // The scheme is shown only when it looks like one (letters, +, -).
            let shown = if scheme.len() <= 32
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
            {
                format!("{scheme}://")
            } else {
                "this scheme".to_owned()
            };
            return Err(format!("{shown} is not a Redis URL: expected {SCHEMES}"));
        }
    };
    if rest.contains('#') {
        return Err("a URL fragment (#…) has no meaning here".into());
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                // `redis://PASSWORD@host` is a common way to write a bare password.
                None => ("", Some(u)),
            };
            let user = redact::percent_decode(user);
            let pass = pass.map(redact::percent_decode).filter(|p| !p.is_empty());
            ((!user.is_empty()).then_some(user), pass)
        }
    };
    if hostport.contains(',') {
        return Err(
            "a list of servers is not a Redis URL: name more nodes with \
                    ?node=host:port (redis-cluster:// or redis-sentinel://)"
                .into(),
        );
    }
    let first_default = if kind == Kind::Sentinel {
        DEFAULT_SENTINEL_PORT
    } else {
        DEFAULT_PORT
    };
    let first = parse_host_port(hostport, Some(first_default)).map_err(|e| format!("host: {e}"))?;

    let database = match path.trim_start_matches('/') {
        "" => None,
        db => match db.parse::<u8>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Err("the path must be a database number 0-255, e.g. /0".into());
            }
        },
    };
    if kind == Kind::Cluster && database.is_some_and(|d| d != 0) {
        return Err("Redis Cluster has only database 0: remove the /N path".into());
    }

    let mut nodes = Vec::new();
    let mut service_name = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "node" => {
                if kind == Kind::Standalone {
                    return Err("?node= needs redis-cluster:// or redis-sentinel:// \
                                (redis:// names one server)"
                        .into());
                }
                let n = parse_host_port(&redact::percent_decode(value), None)
                    .map_err(|e| format!("?node=: {e}"))?;
                nodes.push(n);
            }
            "sentinelServiceName" => {
                if kind != Kind::Sentinel {
                    return Err("?sentinelServiceName= needs redis-sentinel:// \
                                or rediss-sentinel://"
                        .into());
                }
                let name = redact::percent_decode(value);
                if name.is_empty() {
                    return Err("?sentinelServiceName= is empty".into());
                }
                if service_name.replace(name).is_some() {
                    return Err("?sentinelServiceName= is given twice".into());
                }
            }
            "sentinelUsername" | "sentinelPassword" => {
                return Err(format!(
                    "?{key}= is not supported: sentinels are asked with the URL's own \
                     credentials"
                ));
            }
            other => {
                let shown = if other.len() <= 32
                    && other.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    format!("?{other}=")
                } else {
                    "a query parameter".to_owned()
                };
                return Err(format!(
                    "{shown} is not understood (known: node, sentinelServiceName)"
                ));
            }
        }
    }
    let topology = match kind {
        Kind::Standalone => Topology::Standalone(first),
        Kind::Cluster => {
            let mut all = vec![first];
            all.extend(nodes);
            Topology::Cluster(all)
        }
        Kind::Sentinel => {
            let Some(service_name) = service_name else {
                return Err("redis-sentinel:// needs ?sentinelServiceName=NAME \
                            (the master's name in the sentinels' configuration)"
                    .into());
            };
            let mut sentinels = vec![first];
            sentinels.extend(nodes);
            Topology::Sentinel {
                sentinels,
                service_name,
            }
        }
    };
    Ok(RedisUrl {
        tls,
        topology,
        username,
        password,
        database: if kind == Kind::Cluster {
            None
        } else {
            database
        },
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port is required when
/// `default_port` is `None`.
fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<HostPort, String> {
    let bracketed = s.starts_with('[');
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("an IPv6 address needs its closing ]".into());
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address between [ ]".into());
        }
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err("expected :PORT after ]".into()),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("expected host:port, the host is missing".into());
    }
    if !bracketed
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err("the host name has characters a host name cannot have".into());
    }
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err("the port must be a number 1-65535".into()),
        },
        (None, Some(d)) => d,
        (None, None) => return Err("expected host:port, the port is missing".into()),
    };
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn every_spec_form_parses_to_its_topology() {
        let u = RedisUrl::parse("redis://cache:6380/2").unwrap();
        assert_eq!(u.topology, Topology::Standalone(hp("cache", 6380)));
        assert_eq!((u.tls, u.database, u.password()), (false, Some(2), None));

        let u = RedisUrl::parse("rediss://u:p%40ss@127.0.0.1").unwrap();
        assert_eq!(u.topology, Topology::Standalone(hp("127.0.0.1", 6379)));
        assert_eq!(
            (u.tls, u.username.as_deref(), u.password()),
            (true, Some("u"), Some("p@ss"))
        );

        let u = RedisUrl::parse("redis-cluster://:pw@a:7000?node=b:7001&node=[::1]:7002").unwrap();
        assert_eq!(
            u.topology,
            Topology::Cluster(vec![hp("a", 7000), hp("b", 7001), hp("::1", 7002)])
        );
        assert_eq!(
            (u.tls, u.username.as_deref(), u.password()),
            (false, None, Some("pw"))
        );
        assert_eq!(u.scheme(), "redis-cluster");

        let u = RedisUrl::parse("rediss-cluster://a:7000").unwrap();
        assert_eq!((u.tls, u.scheme()), (true, "rediss-cluster"));

        let u = RedisUrl::parse(
            "redis-sentinel://s1?node=s2:26380&node=s3:26381&sentinelServiceName=mymaster",
        )
        .unwrap();
        assert_eq!(
            u.topology,
            Topology::Sentinel {
                sentinels: vec![hp("s1", 26379), hp("s2", 26380), hp("s3", 26381)],
                service_name: "mymaster".into()
            }
        );
        let u = RedisUrl::parse("rediss-sentinel://h:1/3?sentinelServiceName=m").unwrap();
        assert_eq!(
            (u.tls, u.database, u.scheme()),
            (true, Some(3), "rediss-sentinel")
        );
        assert_eq!(hp("::1", 1).to_string(), "[::1]:1");
    }

    #[test]
    fn bad_urls_get_a_reason() {
        let cases = [
            ("http://h:1", "http:// is not a Redis URL"),
            ("redis+cluster://h:1", "redis+cluster:// is not a Redis URL"),
            ("cache:6379", "expected a URL starting with redis://"),
            ("redis://a:1,b:2", "a list of servers"),
            ("redis://", "host: expected host:port, the host is missing"),
            ("redis://h:0", "port must be a number 1-65535"),
            ("redis://h:99999", "port must be a number 1-65535"),
            ("redis://h:1/x", "database number 0-255"),
            ("redis://h:1/256", "database number 0-255"),
            ("redis://h:1?node=b:2", "?node= needs redis-cluster://"),
            ("redis-cluster://h:1/1", "only database 0"),
            (
                "redis-cluster://h:1?node=b",
                "?node=: expected host:port, the port is missing",
            ),
            ("redis-sentinel://h:1", "needs ?sentinelServiceName=NAME"),
            ("redis-sentinel://h:1?sentinelServiceName=", "is empty"),
            (
                "redis-sentinel://h?sentinelServiceName=a&sentinelServiceName=b",
                "twice",
            ),
            ("redis://h?sentinelServiceName=m", "needs redis-sentinel://"),
            (
                "redis-sentinel://h?sentinelServiceName=m&sentinelPassword=x",
                "not supported",
            ),
            ("redis://h:1?timeout=3", "?timeout= is not understood"),
            ("redis://h:1#frag", "fragment"),
            ("redis://[::1:6379", "closing ]"),
            ("redis://h h:1", "characters a host name cannot have"),
        ];
        for (url, want) in cases {
            let err = RedisUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err:?} should contain {want:?}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_or_errors() {
        let u = RedisUrl::parse("redis://u:hunter2-secret@h:1").unwrap();
        assert!(!format!("{u:?}").contains("hunter2"), "{u:?}");
        // A password that also appears where the error quotes the input.
        let err = RedisUrl::parse("redis://u:sekrit@h:1?sekrit=1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "?***= is not understood (known: node, sentinelServiceName)"
        );
        let err = RedisUrl::parse("sekrit://u:sekrit@h:1").unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,120}") {
            let _ = RedisUrl::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_url_shaped_input(
            scheme in "(redis|rediss|redis-cluster|rediss-cluster|redis-sentinel|rediss-sentinel|x)",
            auth in "[a-z%:@0-9]{0,12}",
            host in "[a-z0-9.:\\[\\],-]{0,20}",
            path in "(/[0-9a-z]{0,4})?",
            query in "(\\?[a-zA-Z=&:0-9\\[\\]]{0,40})?",
        ) {
            let _ = RedisUrl::parse(&format!("{scheme}://{auth}@{host}{path}{query}"));
        }

        #[test]
        fn an_error_never_contains_the_password(
            scheme in "(redis|rediss|redis-cluster|redis-sentinel|bogus)",
            pass in "[A-Za-z0-9!*%]{6,16}",
            host in "[a-z0-9.:,\\[]{0,12}",
            tail in "[a-zA-Z0-9/?=&:]{0,30}",
            echo in 0usize..4,
        ) {
            // Put the password where an error might quote input, too.
            let tail = match echo {
                0 => tail,
                1 => format!("?{pass}={pass}"),
                2 => format!("?node={pass}"),
                _ => format!("/{pass}"),
            };
            let url = format!("{scheme}://user:{pass}@{host}{tail}");
            if let Err(e) = RedisUrl::parse(&url) {
                let text = e.to_string();
                let decoded = crate::redact::percent_decode(&pass);
                prop_assert!(!text.contains(&pass), "{} leaks in {}", pass, text);
                prop_assert!(!text.contains(&decoded), "{} leaks in {}", decoded, text);
            }
        }
    }
}
