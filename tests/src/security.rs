//! Helpers for the security and flow-control tests: the fixture keys under
//! `tests/fixtures/` (test-only), minting JWTs, and connecting with request headers
//! (`Authorization`, `Origin`) while keeping a refused upgrade's status and JSON body.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

use crate::{Closed, WsClient};

/// The path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The bytes of a fixture file.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Unix time in whole seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Unix time in seconds, with fractions.
pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// How a test token is signed.
#[derive(Debug, Clone)]
pub enum Signer {
    /// An HMAC algorithm (HS256/HS384/HS512) with these secret bytes.
    Hmac(Algorithm, Vec<u8>),
    /// RS256 with `fixtures/rsa_private.pem`, and this `kid` in the header.
    Rs256(Option<String>),
    /// ES256 with `fixtures/ec_private.pem`, and this `kid` in the header.
    Es256(Option<String>),
}

impl Signer {
    /// HS256 with a text secret.
    pub fn hs256(secret: &str) -> Signer {
        Signer::Hmac(Algorithm::HS256, secret.as_bytes().to_vec())
    }
}

/// Signs `claims` (a JSON object) as a JWT.
pub fn mint(claims: &Value, signer: &Signer) -> String {
    let (header, key) = match signer {
        Signer::Hmac(alg, secret) => (Header::new(*alg), EncodingKey::from_secret(secret)),
        Signer::Rs256(kid) => {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = kid.clone();
            let k = EncodingKey::from_rsa_pem(&fixture_bytes("rsa_private.pem"))
                .expect("fixtures/rsa_private.pem is an RSA key");
            (h, k)
        }
        Signer::Es256(kid) => {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = kid.clone();
            let k = EncodingKey::from_ec_pem(&fixture_bytes("ec_private.pem"))
                .expect("fixtures/ec_private.pem is a P-256 key");
            (h, k)
        }
    };
    encode(&header, claims, &key).expect("token encodes")
}

/// Unpadded base64url, as JWTs use it.
pub fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

/// A hand-made unsigned token: header `{"alg":"none","typ":"JWT"}`, empty signature.
pub fn alg_none_token(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64url(claims.to_string().as_bytes());
    format!("{header}.{body}.")
}

/// A refused upgrade, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The HTTP status; 0 when the connection failed without an HTTP answer.
    pub status: u16,
    /// The response body parsed as JSON (`null` when it is not JSON).
    pub body: Value,
}

/// Connects to `url` with extra request headers and reads the `connected` frame;
/// a refused upgrade comes back as its status and JSON body.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, Refused> {
    let mut req = url.into_client_request().expect("a valid ws:// URL");
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            k.parse().expect("a valid header name");
        req.headers_mut().insert(
            name,
            HeaderValue::from_str(v).expect("a valid header value"),
        );
    }
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the upgrade is answered within 10 s");
    match connected {
        Ok((ws, _)) => {
            let mut c = WsClient {
                ws,
                connected: Value::Null,
            };
            let first = c.recv().await.map_err(|e| Refused {
                status: 101,
                body: Value::String(format!("upgraded, then: {e}")),
            })?;
            if first["type"] != "connected" {
                return Err(Refused {
                    status: 101,
                    body: first,
                });
            }
            c.connected = first["payload"].clone();
            Ok(c)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        }),
        Err(e) => Err(Refused {
            status: 0,
            body: Value::String(e.to_string()),
        }),
    }
}

/// Connects with `Authorization: Bearer <token>`.
pub async fn connect_bearer(url: &str, token: &str) -> Result<WsClient, Refused> {
    connect_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Connects with `?token=<token>` appended to `url`.
pub async fn connect_query(url: &str, token: &str) -> Result<WsClient, Refused> {
    let sep = if url.contains('?') { '&' } else { '?' };
    connect_with(&format!("{url}{sep}token={token}"), &[]).await
}

/// Asserts that an upgrade was refused with `status` and the JSON error `code`;
/// returns the body.
pub fn assert_refused(r: Result<WsClient, Refused>, status: u16, code: &str, case: &str) -> Value {
    match r {
        Ok(c) => panic!(
            "{case}: upgrade accepted ({:?}), expected {status}",
            c.connected
        ),
        Err(Refused { status: s, body }) => {
            assert_eq!(s, status, "{case}: status (body {body})");
            assert_eq!(body["code"], code, "{case}: error code in {body}");
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{case}: a readable error message in {body}"
            );
            body
        }
    }
}

/// Reads until the server closes; returns the text frames seen (as JSON) and how the
/// connection ended. Fails if nothing ends it `within`.
pub async fn read_until_close(c: &mut WsClient, within: Duration) -> (Vec<Value>, Closed) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.inner().next()).await {
            Err(_) => panic!("no close within {within:?}; frames so far {frames:?}"),
            Ok(None) | Ok(Some(Err(_))) => return (frames, Closed::NoFrame),
            Ok(Some(Ok(Message::Close(f)))) => {
                return (
                    frames,
                    f.map_or(Closed::NoFrame, |f| Closed::Code(u16::from(f.code))),
                )
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                frames.push(serde_json::from_str(t.as_str()).expect("a JSON text frame"))
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// This process's resident set size in bytes, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64url_matches_rfc4648_without_padding() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }
}
