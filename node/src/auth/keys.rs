//! The keys tokens are verified with: an HS256 secret, one PEM public key, or a
//! JWKS file that is re-read when it changes.

use std::{
    path::{Path, PathBuf},
    sync::RwLock,
    time::{Instant, SystemTime},
};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse},
    Algorithm, DecodingKey,
};

/// One verification key and the one algorithm it accepts.
pub(super) struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Where an authenticator's keys come from.
pub(super) enum Keys {
    None,
    Fixed(Key),
    Jwks {
        path: PathBuf,
        state: RwLock<JwksState>,
    },
}

/// The JWKS keys last loaded, and when the file was last looked at.
pub(super) struct JwksState {
    pub keys: Vec<Key>,
    pub modified: Option<SystemTime>,
    pub checked: Instant,
}

pub(super) fn load_pem(path: &Path) -> Result<Key, String> {
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

pub(super) fn load_jwks(path: &Path) -> Result<(Vec<Key>, Option<SystemTime>), String> {
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
    use jsonwebtoken::Algorithm;

    use super::*;
    use crate::{
        auth::{AuthError, Authenticator},
        config::{AuthMode, Config, JwtKey},
    };

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
}
