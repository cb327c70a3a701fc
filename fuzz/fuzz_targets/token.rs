//! Fuzzes the token path (`Authenticator::authenticate`) with a fixed HS256 secret:
//! raw token text, and fuzzed claims correctly signed so that claim handling is
//! reached too. It must never panic and must only accept what it was signed with.
#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use sluice_node::{
    auth::Authenticator,
    config::{AuthMode, JwtKey},
    Config,
};

const SECRET: &str = "fuzz-hs256-secret-of-at-least-32-bytes";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut cfg = Config::for_tests();
        cfg.jwt_key = Some(JwtKey::Secret(SECRET.into()));
        cfg.auth = AuthMode::Required;
        Authenticator::from_config(&cfg).expect("an HS256 authenticator")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let auth = authenticator();
    if mode & 1 == 0 {
        // Raw text, as it arrives in `?token=` or `Authorization: Bearer`.
        let text = String::from_utf8_lossy(rest);
        if let Ok(Some(id)) = auth.authenticate(Some(&text)) {
            assert!(!id.sub.is_empty());
        }
        return;
    }
    // Fuzzed claims, signed with the right key.
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(token) = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key) else {
        return;
    };
    if let Ok(Some(id)) = auth.authenticate(Some(&token)) {
        assert_eq!(claims["sub"].as_str(), Some(id.sub.as_str()));
        assert_eq!(claims["exp"].as_u64(), Some(id.expires_at));
        assert_eq!(claims["admin"].as_bool().unwrap_or(false), id.admin);
    }
});
