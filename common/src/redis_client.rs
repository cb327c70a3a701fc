//! The Redis plumbing the node's broker and the engines' `Publisher` share: a fred
//! `Config` for every `REDIS_URL` form (one server, Cluster, Sentinel, each with or
//! without TLS), loading the function library on every master (by the version rule
//! of `function_library.rs`), the one
//! `FCALL sluice_publish` wrapper (the wait for replicas after it is in
//! `replica_wait.rs`).
//!
//! Errors are classified here once: fred's own failures by their `ErrorKind`, and
//! error replies from Redis by their error code (first word) and the function's
//! `sluice: ` prefix, so no caller matches on error text.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use fred::{
    clients::Client,
    error::{Error as FredError, ErrorKind},
    interfaces::{ClientLike, FunctionInterface},
    types::config::{
        ClusterDiscoveryPolicy, Config, Options, Server, ServerConfig, TlsConfig, TlsConnector,
    },
};

use crate::{
    function_library::{ensure_library, version_of, MasterLibrary, Outcome, Replace},
    redact,
    redis_url::{HostPort, RedisUrl, Topology},
    StreamPosition,
};

/// The name of the publishing function in the `sluice` library.
pub const PUBLISH_FUNCTION: &str = "sluice_publish";

/// Kind of message a publish creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    Delta,
    Alert,
}

impl PublishKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            PublishKind::Delta => "delta",
            PublishKind::Alert => "alert",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delta" => Some(PublishKind::Delta),
            "alert" => Some(PublishKind::Alert),
            _ => None,
        }
    }
}

/// PEM file of the CA(s) that sign the Redis servers' certificates (`rediss…`).
/// Unset: the system's trusted roots.
pub const TLS_CA_VAR: &str = "SLUICE_REDIS_TLS_CA";
/// Replicas a publish waits for: `auto` (1 when the master has a replica, else 0),
/// or a number (0 turns the wait off).
pub const PUBLISH_REPLICAS_VAR: &str = "SLUICE_PUBLISH_REPLICAS";
/// How long a publish waits for its replicas before it answers with an error.
pub const PUBLISH_REPLICAS_TIMEOUT_VAR: &str = "SLUICE_PUBLISH_REPLICAS_TIMEOUT_MS";
/// Default of [`PUBLISH_REPLICAS_TIMEOUT_VAR`].
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(1000);

/// How the client reaches Redis, beyond the URL: the settings above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub tls_ca: Option<PathBuf>,
    pub replicas: Replicas,
    pub replica_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            tls_ca: None,
            replicas: Replicas::Auto,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
        }
    }
}

/// How many replicas must hold a publish before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// One when the topic's master has at least one connected replica, else none.
    Auto,
    /// Exactly this many (0: no wait).
    Exactly(u32),
}

impl RedisSettings {
    /// Reads the settings through `lookup` (e.g. `|k| std::env::var(k).ok()`); every
    /// bad value is reported, one line each naming its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut errors = Vec::new();
        let mut s = RedisSettings::default();
        if let Some(ca) = get(TLS_CA_VAR) {
            if Path::new(&ca).is_file() {
                s.tls_ca = Some(PathBuf::from(ca));
            } else {
                errors.push(format!("{TLS_CA_VAR}={ca:?}: no such file"));
            }
        }
        if let Some(v) = get(PUBLISH_REPLICAS_VAR) {
            match v.as_str() {
                "auto" => s.replicas = Replicas::Auto,
                n => match n.parse::<u32>() {
                    Ok(n) if n <= 5 => s.replicas = Replicas::Exactly(n),
                    _ => errors.push(format!(
                        "{PUBLISH_REPLICAS_VAR}={v:?}: expected auto or a number 0-5"
                    )),
                },
            }
        }
        if let Some(v) = get(PUBLISH_REPLICAS_TIMEOUT_VAR) {
            match v.parse::<u64>() {
                // Below the 5 s after which a call fails anyway (node and Publisher).
                Ok(ms) if (1..=4_000).contains(&ms) => {
                    s.replica_timeout = Duration::from_millis(ms)
                }
                _ => errors.push(format!(
                    "{PUBLISH_REPLICAS_TIMEOUT_VAR}={v:?}: expected milliseconds 1-4000"
                )),
            }
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }
}

/// Why a client could not be configured (bad CA file, no trusted roots).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

fn server(hp: &HostPort) -> Server {
    Server::new(hp.host.as_str(), hp.port)
}

/// fred's configuration for `url`. TLS trusts `tls_ca` (PEM) when given, else the
/// system's roots.
pub fn fred_config(url: &RedisUrl, tls_ca: Option<&Path>) -> Result<Config, SetupError> {
    let server = match &url.topology {
        Topology::Standalone(hp) => ServerConfig::Centralized { server: server(hp) },
        Topology::Cluster(nodes) => ServerConfig::Clustered {
            hosts: nodes.iter().map(server).collect(),
            policy: ClusterDiscoveryPolicy::default(),
        },
        Topology::Sentinel {
            sentinels,
            service_name,
        } => ServerConfig::Sentinel {
            hosts: sentinels.iter().map(server).collect(),
            service_name: service_name.clone(),
        },
    };
    let tls = if url.tls {
        Some(tls_config(tls_ca)?)
    } else {
        None
    };
    Ok(Config {
        server,
        username: url.username.clone(),
        password: url.password().map(str::to_owned),
        database: url.database,
        tls,
        ..Config::default()
    })
}

/// A rustls client config on the ring provider (the one this workspace builds),
/// trusting `ca` or the system's roots.
fn tls_config(ca: Option<&Path>) -> Result<TlsConfig, SetupError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| SetupError(format!("{TLS_CA_VAR} {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(SetupError(format!(
                    "{TLS_CA_VAR} {}: no certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(SetupError(format!(
                    "rediss://: the system has no trusted root certificates; set {TLS_CA_VAR}"
                )));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SetupError(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfig::from(TlsConnector::from(config)))
}

/// What went wrong with a Redis call, classified once for every caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    /// The function refused the call (bad JSON, bad type): nothing was written.
    #[error("refused: {0}")]
    Refused(String),
    /// The `sluice` function library is not loaded on that master.
    #[error("the sluice function library is not loaded")]
    NotLoaded,
    /// Redis did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Configuration refused by Redis or fred: credentials, TLS, URL.
    #[error("configuration: {0}")]
    Config(String),
    /// Redis answered with another error: out of memory under `noeviction`,
    /// `READONLY` (a replica, during a failover), `LOADING`, `BUSY`, a reply of an
    /// unexpected shape. The connection itself is fine.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Unreachable, connection lost or cancelled, cluster or sentinel reconfiguring.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Sorts a fred error into a [`RedisFailure`], its text scrubbed of URL secrets.
pub fn classify(e: &FredError) -> RedisFailure {
    let text = redact::scrub(e.details());
    match e.kind() {
        ErrorKind::Timeout => RedisFailure::Timeout(text),
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url | ErrorKind::Tls => {
            RedisFailure::Config(text)
        }
        // An error reply from Redis itself: `CODE message`.
        ErrorKind::Unknown | ErrorKind::InvalidArgument | ErrorKind::InvalidCommand => {
            let (code, message) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            match (code, message) {
                ("ERR", m) if m.starts_with("sluice: ") => {
                    RedisFailure::Refused(m["sluice: ".len()..].to_owned())
                }
                ("ERR", "Function not found") => RedisFailure::NotLoaded,
                _ => RedisFailure::Rejected(text),
            }
        }
        ErrorKind::Parse | ErrorKind::NotFound => RedisFailure::Rejected(text),
        _ => RedisFailure::Unavailable(text),
    }
}

/// Loads `library` on every master that lacks it or holds an older version (each
/// primary on Cluster, the one master otherwise, through Sentinel the current one),
/// by the rule of [`function_library`](crate::function_library): a newer version
/// is left in place, with a warning naming both versions. `replace` says whether
/// the same version with another text (other history settings) is replaced too.
pub async fn load_library(
    client: &Client,
    library: &str,
    replace: Replace,
) -> Result<Vec<MasterLibrary>, RedisFailure> {
    let report = ensure_library(client, library, replace).await?;
    warn_newer(&report, library);
    Ok(report)
}

/// A warning for each master that kept a newer library than `library`.
fn warn_newer(report: &[MasterLibrary], library: &str) {
    let ours = version_of(library);
    for m in report.iter().filter(|m| m.outcome == Outcome::KeptNewer) {
        tracing::warn!(
            master = %m.master,
            loaded = m.found.unwrap_or_default(),
            ours,
            "a newer sluice function library is loaded than this program's: left in place"
        );
    }
}

/// One publish call: the arguments of `sluice_publish` after its key.
#[derive(Debug, Clone, Copy)]
pub struct PublishArgs<'a> {
    pub topic: &'a str,
    pub kind: PublishKind,
    pub payload_json: &'a str,
    pub snapshot_json: Option<&'a str>,
    /// The engine's meta object; `None` keeps the call at three arguments.
    pub meta_json: Option<&'a str>,
}

/// `FCALL sluice_publish 1 <topic> <payload> <type> [<snapshot> [<meta>]]` (an
/// empty snapshot argument when there is meta but no snapshot). When the library
/// is missing (a new master after a failover or resharding, a restarted Redis) and
/// `library` is given, loads it where it is missing or older (never over a newer
/// one: see [`load_library`]) and retries once.
pub async fn fcall_publish(
    client: &Client,
    args: PublishArgs<'_>,
    library: Option<&str>,
) -> Result<StreamPosition, RedisFailure> {
    let mut argv = vec![args.payload_json, args.kind.as_str()];
    match (args.snapshot_json, args.meta_json) {
        (Some(s), None) => argv.push(s),
        (s, Some(m)) => argv.extend([s.unwrap_or(""), m]),
        (None, None) => {}
    }
    // One attempt only: fred resends a command that was in flight when its
    // connection closed (an unresponsive check, a reset), and a publish that
    // reached Redis before the close would then run twice: two seqs for one call.
    // A failed attempt is the caller's error to handle, as a timeout is.
    let once = client.with_options(&Options {
        max_attempts: Some(1),
        ..Options::default()
    });
    let call = || async {
        once.fcall::<(u64, String), _, _, _>(PUBLISH_FUNCTION, args.topic, argv.clone())
            .await
            .map_err(|e| classify(&e))
    };
    let result = match (call().await, library) {
        (Err(RedisFailure::NotLoaded), Some(lib)) => {
            load_library(client, lib, Replace::IfOlder).await?;
            call().await
        }
        (r, _) => r,
    };
    result.map(|(seq, epoch)| StreamPosition { seq, epoch })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_default_to_auto_and_one_second() {
        let s = RedisSettings::from_lookup(lookup(&[])).unwrap();
        assert_eq!(s, RedisSettings::default());
        assert_eq!(
            (s.replicas, s.replica_timeout),
            (Replicas::Auto, Duration::from_secs(1))
        );
        let s = RedisSettings::from_lookup(lookup(&[
            (PUBLISH_REPLICAS_VAR, "2"),
            (PUBLISH_REPLICAS_TIMEOUT_VAR, "250"),
        ]))
        .unwrap();
        assert_eq!(
            (s.replicas, s.replica_timeout),
            (Replicas::Exactly(2), Duration::from_millis(250))
        );
    }

    #[test]
    fn every_bad_setting_is_reported_naming_its_variable() {
        let errs = RedisSettings::from_lookup(lookup(&[
            (TLS_CA_VAR, "/no/such/ca.pem"),
            (PUBLISH_REPLICAS_VAR, "many"),
            (PUBLISH_REPLICAS_TIMEOUT_VAR, "0"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        for (line, var) in errs.iter().zip([
            TLS_CA_VAR,
            PUBLISH_REPLICAS_VAR,
            PUBLISH_REPLICAS_TIMEOUT_VAR,
        ]) {
            assert!(line.starts_with(var), "{line} names {var}");
        }
        // Above what a call may take at all (5 s).
        let too_long =
            RedisSettings::from_lookup(lookup(&[(PUBLISH_REPLICAS_TIMEOUT_VAR, "5000")]))
                .unwrap_err();
        assert_eq!(
            too_long,
            vec![format!(
                "{PUBLISH_REPLICAS_TIMEOUT_VAR}=\"5000\": expected milliseconds 1-4000"
            )]
        );
    }

    #[test]
    fn error_replies_are_classified_by_code_and_kind() {
        let reply = |t: &str| FredError::new(ErrorKind::Unknown, t.to_owned());
        assert_eq!(
            classify(&reply("ERR sluice: payload is not valid JSON")),
            RedisFailure::Refused("payload is not valid JSON".into())
        );
        assert_eq!(
            classify(&reply("ERR Function not found")),
            RedisFailure::NotLoaded
        );
        assert!(matches!(
            classify(&reply(
                "READONLY You can't write against a read only replica."
            )),
            RedisFailure::Rejected(_)
        ));
        // The same text with a transport kind is not a server reply.
        assert!(matches!(
            classify(&FredError::new(ErrorKind::IO, "ERR Function not found")),
            RedisFailure::Unavailable(_)
        ));
        assert!(matches!(
            classify(&FredError::new(ErrorKind::Timeout, "Request timed out.")),
            RedisFailure::Timeout(_)
        ));
        assert!(matches!(
            classify(&FredError::new(ErrorKind::Auth, "WRONGPASS")),
            RedisFailure::Config(_)
        ));
    }

    #[test]
    fn a_tls_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a pem").unwrap();
        let url = RedisUrl::parse("rediss://127.0.0.1:1").unwrap();
        let err = fred_config(&url, Some(&dir)).unwrap_err();
        assert!(err.0.contains("no certificate"), "{err}");
        let _ = std::fs::remove_file(&dir);
        let plain = fred_config(&RedisUrl::parse("redis://h:1/2").unwrap(), None).unwrap();
        assert_eq!(plain.database, Some(2));
        assert!(plain.tls.is_none());
    }
}
