//! Authentication and topic permissions: the only module that knows jsonwebtoken.
//!
//! A token is checked against exactly one configured key source: an HS256 secret,
//! an RS256/ES256 public key (PEM), or a JWKS file (key chosen by `kid`, the file
//! re-read when it changes). Only the algorithm of the chosen key is accepted, so
//! `alg: none`, algorithm confusion (an HS256 token signed with a public key) and
//! forged signatures all fail. `exp` is required, `nbf` is checked, with a small
//! leeway; issuer and audience are checked when configured.

use std::{
    path::{Path, PathBuf},
    sync::RwLock,
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    decode, decode_header,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse},
    Algorithm, DecodingKey, Validation,
};
use serde::Deserialize;
use sluice_common::{lock::RwLockExt, ErrorCode, Topic, TopicPattern};

use crate::config::{AuthMode, Config, JwtKey};

/// Topic families private to one user: `<family>.<user>` and everything below it.
pub const PRIVATE_FAMILIES: &[&str] = &["trading", "portfolio", "risk", "mobile"];
/// How often a JWKS file's modification time is looked at.
const JWKS_RECHECK: Duration = Duration::from_secs(1);

/// Who a verified token speaks for and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: u64,
    /// The `topics` claim: when present, the public topics this token may read.
    pub topics: Option<Vec<TopicPattern>>,
    /// `admin: true`: every topic, and the admin HTTP API.
    pub admin: bool,
}

impl Identity {
    /// Whether this identity may subscribe to `topic`.
    pub fn may_read(&self, topic: &Topic) -> bool {
        if self.admin {
            return true;
        }
        let mut segs = topic.segments();
        let family = segs.next().unwrap_or_default();
        if PRIVATE_FAMILIES.contains(&family) {
            // Private topics: the owner only, whatever the `topics` claim says.
            return segs.next() == Some(self.sub.as_str());
        }
        match &self.topics {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(topic.as_str())),
        }
    }

    /// How long until the token expires (zero if it has), before any leeway.
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

/// Whether `topic` is in a private family (`trading.{user}`, `portfolio.{user}`,
/// `risk.{user}…`, `mobile.{user}`).
pub fn is_private(topic: &Topic) -> bool {
    topic
        .segments()
        .next()
        .is_some_and(|family| PRIVATE_FAMILIES.contains(&family))
}

/// Whether a session may read `topic`: with a token, as the token allows; with auth
/// off (no identity), every topic but the private families, which only their owner
/// (or an admin) may read — so a gateway run without auth never serves one user's
/// orders to another.
pub fn may_read(identity: Option<&Identity>, topic: &Topic) -> bool {
    match identity {
        Some(id) => id.may_read(topic),
        None => !is_private(topic),
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: pass ?token=<JWT> or Authorization: Bearer <JWT>")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::AuthRequired,
            AuthError::Invalid(_) => ErrorCode::AuthInvalid,
            AuthError::Expired => ErrorCode::TokenExpired,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    topics: Option<TopicsClaim>,
    #[serde(default)]
    admin: bool,
}

/// `topics` as an array of patterns or one space-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TopicsClaim {
    List(Vec<String>),
    Spaced(String),
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

enum Keys {
    None,
    Fixed(Key),
    Jwks {
        path: PathBuf,
        state: RwLock<JwksState>,
    },
}

struct JwksState {
    keys: Vec<Key>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Verifies tokens for one node.
pub struct Authenticator {
    mode: AuthMode,
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads the configured key; a key that cannot be read or parsed stops start-up.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        let keys = match &cfg.jwt_key {
            None => Keys::None,
            Some(JwtKey::Secret(s)) => Keys::Fixed(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(s.as_bytes()),
            }),
            Some(JwtKey::PublicKeyFile(path)) => Keys::Fixed(load_pem(path)?),
            Some(JwtKey::JwksFile(path)) => {
                let (keys, modified) = load_jwks(path)?;
                Keys::Jwks {
                    path: path.clone(),
                    state: RwLock::new(JwksState {
                        keys,
                        modified,
                        checked: Instant::now(),
                    }),
                }
            }
        };
        Ok(Authenticator {
            mode: cfg.auth,
            keys,
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
            leeway: cfg.jwt_leeway.as_secs(),
        })
    }

    /// Whether every connection must present a valid token.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Required
    }

    /// The identity of a connection: `Ok(None)` when auth is off.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Identity>, AuthError> {
        if !self.required() {
            return Ok(None);
        }
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Err(AuthError::Missing),
            Some(t) => self.verify(t).map(Some),
        }
    }

    /// Verifies one token.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        let claims = match &self.keys {
            Keys::None => {
                return Err(AuthError::Invalid(
                    "no key is configured to verify tokens".into(),
                ))
            }
            Keys::Fixed(k) => self.check(token, header.alg, k)?,
            Keys::Jwks { path, state } => {
                self.refresh_jwks(path, state);
                let st = state.read_unpoisoned();
                let key = match header.kid.as_deref() {
                    Some(kid) => st.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
                    None if st.keys.len() == 1 => st.keys.first(),
                    None => None,
                }
                .ok_or_else(|| {
                    AuthError::Invalid("no key in the JWKS matches the token's kid".into())
                })?;
                self.check(token, header.alg, key)?
            }
        };
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Invalid("token has no 'sub' claim".into()))?;
        let topics = match claims.topics {
            None => None,
            Some(c) => {
                let list = match c {
                    TopicsClaim::List(l) => l,
                    TopicsClaim::Spaced(s) => s.split_whitespace().map(str::to_owned).collect(),
                };
                Some(
                    list.iter()
                        .map(|p| TopicPattern::parse(p))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            AuthError::Invalid(format!("bad pattern in 'topics' claim: {e}"))
                        })?,
                )
            }
        };
        Ok(Identity {
            sub,
            expires_at: claims.exp,
            topics,
            admin: claims.admin,
        })
    }

    fn check(&self, token: &str, alg: Algorithm, key: &Key) -> Result<Claims, AuthError> {
        if alg != key.alg {
            return Err(AuthError::Invalid(format!(
                "algorithm {alg:?} is not accepted; expected {:?}",
                key.alg
            )));
        }
        let mut v = Validation::new(key.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        // jsonwebtoken checks `aud`/`iss` only when present; configured ones must be.
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        decode::<Claims>(token, &key.key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                k => AuthError::Invalid(describe(k)),
            })
    }

    fn refresh_jwks(&self, path: &Path, state: &RwLock<JwksState>) {
        {
            let st = state.read_unpoisoned();
            if st.checked.elapsed() < JWKS_RECHECK {
                return;
            }
        }
        let mut st = state.write_unpoisoned();
        st.checked = Instant::now();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == st.modified {
            return;
        }
        match load_jwks(path) {
            Ok((keys, modified)) => {
                tracing::info!(path = %path.display(), keys = keys.len(), "JWKS reloaded");
                st.keys = keys;
                st.modified = modified;
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS changed but could not be loaded; keeping the old keys")
            }
        }
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "signature does not verify".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "algorithm is not accepted".into()
        }
        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim '{c}'"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token".into(),
        other => format!("{other:?}"),
    }
}

fn load_pem(path: &Path) -> Result<Key, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            kid: None,
            alg: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Key {
            kid: None,
            alg: Algorithm::ES256,
            key,
        });
    }
    Err(format!(
        "{}: not an RSA or EC (P-256) public key in PEM form",
        path.display()
    ))
}

fn load_jwks(path: &Path) -> Result<(Vec<Key>, Option<SystemTime>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        // A key published for encryption (`use: enc`) must never verify a signature
        // (RFC 7517 §4.2): an attacker who holds a token encrypted to it gains nothing.
        if !matches!(
            jwk.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        ) {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue, // only RS256 and ES256 keys are used
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: bad key: {e}", path.display()))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: no RS256 or ES256 signing key in the JWKS",
            path.display()
        ));
    }
    Ok((keys, modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(sub: &str, topics: Option<&[&str]>, admin: bool) -> Identity {
        Identity {
            sub: sub.into(),
            expires_at: u64::MAX,
            topics: topics.map(|t| t.iter().map(|p| TopicPattern::parse(p).unwrap()).collect()),
            admin,
        }
    }

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn private_topics_belong_to_their_user_only() {
        let alice = ident("alice", None, false);
        for own in [
            "trading.alice",
            "portfolio.alice",
            "risk.alice",
            "risk.alice.alerts",
            "mobile.alice",
        ] {
            assert!(alice.may_read(&t(own)), "{own}");
        }
        for other in [
            "trading.bob",
            "portfolio.bob",
            "risk.bob.alerts",
            "mobile.bob",
            "trading",
            "risk.alicex",
        ] {
            assert!(!alice.may_read(&t(other)), "{other}");
        }
        assert!(alice.may_read(&t("prices.IN1")));
        assert!(ident("root", None, true).may_read(&t("trading.bob")));
    }

    /// A JWKS file made from the test fixtures' `jwks.json` with key `k1` (RSA) given
    /// `use: rsa_use`, and an authenticator reading it.
    fn jwks_auth(rsa_use: Option<&str>) -> Result<Authenticator, String> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let text = std::fs::read_to_string(fixtures.join("jwks.json")).unwrap();
        let mut set: serde_json::Value = serde_json::from_str(&text).unwrap();
        match rsa_use {
            Some(u) => set["keys"][0]["use"] = u.into(),
            None => {
                set["keys"][0].as_object_mut().unwrap().remove("use");
            }
        }
        let path = std::env::temp_dir().join(format!(
            "sluice-jwks-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, set.to_string()).unwrap();
        let mut cfg = Config::for_tests();
        cfg.jwt_key = Some(JwtKey::JwksFile(path.clone()));
        cfg.auth = AuthMode::Required;
        let auth = Authenticator::from_config(&cfg);
        let _ = std::fs::remove_file(path);
        auth
    }

    fn signed(alg: Algorithm, kid: &str, pem_file: &str) -> String {
        let pem = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures")
                .join(pem_file),
        )
        .unwrap();
        let key = match alg {
            Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &key,
        )
        .unwrap()
    }

    #[test]
    fn jwks_keys_whose_use_is_not_sig_are_ignored() {
        let rsa = signed(Algorithm::RS256, "k1", "rsa_private.pem");
        let ec = signed(Algorithm::ES256, "k2", "ec_private.pem");
        // `use: sig` and no `use` at all both verify.
        for u in [Some("sig"), None] {
            let auth = jwks_auth(u).unwrap();
            assert_eq!(auth.verify(&rsa).unwrap().sub, "alice", "use {u:?}");
        }
        // `use: enc` (or anything else): that key is skipped, the others still work.
        for u in ["enc", "wrap"] {
            let auth = jwks_auth(Some(u)).unwrap();
            match auth.verify(&rsa) {
                Err(AuthError::Invalid(msg)) => assert!(msg.contains("kid"), "{msg}"),
                other => panic!("use {u}: a token of an encryption key verified: {other:?}"),
            }
            assert_eq!(auth.verify(&ec).unwrap().sub, "alice");
        }
    }

    #[test]
    fn a_jwks_with_only_encryption_keys_is_refused_at_start() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let text = std::fs::read_to_string(fixtures.join("jwks.json")).unwrap();
        let mut set: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in set["keys"].as_array_mut().unwrap() {
            k["use"] = "enc".into();
        }
        let path = std::env::temp_dir().join(format!(
            "sluice-jwks-enc-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, set.to_string()).unwrap();
        let err = load_jwks(&path).err().unwrap();
        let _ = std::fs::remove_file(path);
        assert!(err.contains("no RS256 or ES256 signing key"), "{err}");
    }

    #[test]
    fn a_topics_claim_restricts_public_topics_but_not_own_private_ones() {
        let a = ident("alice", Some(&["prices.*", "auctions.>"]), false);
        assert!(a.may_read(&t("prices.IN1")));
        assert!(a.may_read(&t("auctions.x.y")));
        assert!(!a.may_read(&t("market_data.AAPL")));
        assert!(a.may_read(&t("trading.alice")));
        assert!(!a.may_read(&t("trading.bob")));
    }
}
