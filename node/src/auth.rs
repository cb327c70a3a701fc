//! Authentication and topic permissions: the only module that knows jsonwebtoken.
//!
//! A token is checked against exactly one configured key source: an HS256 secret,
//! an RS256/ES256 public key (PEM), or a JWKS file (key chosen by `kid`, the file
//! re-read when it changes). Only the algorithm of the chosen key is accepted, so
//! `alg: none`, algorithm confusion (an HS256 token signed with a public key) and
//! forged signatures all fail. `exp` is required, `nbf` is checked, with a small
//! leeway; issuer and audience are checked when configured.
//!
//! `identity` holds the permission rules (who may read which topic), `keys` the
//! key sources and their loading; this file verifies tokens with them.

mod identity;
mod keys;

use std::{
    path::Path,
    sync::RwLock,
    time::{Duration, Instant},
};

use jsonwebtoken::{decode, decode_header, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sluice_common::{lock::RwLockExt, ErrorCode, TopicPattern};

pub use identity::{is_private, may_read, may_read_filter, Identity, PRIVATE_FAMILIES};
use keys::{load_jwks, load_pem, JwksState, Key, Keys};

use crate::config::{AuthMode, Config, JwtKey};

/// How often a JWKS file's modification time is looked at.
const JWKS_RECHECK: Duration = Duration::from_secs(1);

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
