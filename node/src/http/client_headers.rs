//! The headers a mobile client describes itself with on the upgrade request:
//! `x-device-type` and `x-client-version` (sanitized and bounded) and
//! `x-background-mode` (true or false, anything else refused).

use axum::http::HeaderMap;
use sluice_common::ErrorCode;

use super::ApiError;

/// The most characters kept of `x-device-type` and `x-client-version`: room for any
/// real value ("iPadOS 17.4 iPad13,4"), while a client cannot grow its session's
/// record or a log line with a long header.
pub const CLIENT_HEADER_MAX: usize = 64;

/// What a client says about itself in the upgrade request's headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct ClientHeaders {
    pub(super) device_type: Option<String>,
    pub(super) client_version: Option<String>,
    /// `x-background-mode`, when sent.
    pub(super) background: Option<bool>,
}

impl ClientHeaders {
    /// Reads the mobile headers; a `x-background-mode` that is neither true nor
    /// false is refused rather than guessed.
    pub(super) fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| sanitize(&String::from_utf8_lossy(v.as_bytes())))
        };
        let background = match headers.get("x-background-mode") {
            None => None,
            Some(v) => match v.to_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
                Ok("true" | "1" | "on") => Some(true),
                Ok("false" | "0" | "off") => Some(false),
                _ => {
                    return Err(ApiError::bad_request(
                        ErrorCode::InvalidMessage,
                        "x-background-mode must be true or false",
                    ))
                }
            },
        };
        Ok(ClientHeaders {
            device_type: text("x-device-type"),
            client_version: text("x-client-version"),
            background,
        })
    }
}

/// Keeps letters, digits and ` ._-:/+(),` (what device names and versions use), at
/// most [`CLIENT_HEADER_MAX`] of them: nothing a client sends can forge a log line
/// or break a JSON consumer. `None` when nothing is left.
fn sanitize(raw: &str) -> Option<String> {
    let kept: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " ._-:/+(),".contains(*c))
        .take(CLIENT_HEADER_MAX)
        .collect();
    let kept = kept.trim();
    (!kept.is_empty()).then(|| kept.to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn client_headers_are_sanitized_bounded_and_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(ClientHeaders::parse(&h).unwrap(), ClientHeaders::default());
        h.insert(
            "x-device-type",
            "iOS 17.4 iPhone15,2\"\t<b>".parse().unwrap(),
        );
        h.insert("x-client-version", "x".repeat(500).parse().unwrap());
        h.insert("x-background-mode", " TRUE ".parse().unwrap());
        let c = ClientHeaders::parse(&h).unwrap();
        assert_eq!(c.device_type.as_deref(), Some("iOS 17.4 iPhone15,2b"));
        assert_eq!(c.client_version, Some("x".repeat(CLIENT_HEADER_MAX)));
        assert_eq!(c.background, Some(true));
        h.insert("x-background-mode", "false".parse().unwrap());
        h.insert("x-device-type", "\"<>".parse().unwrap());
        let c = ClientHeaders::parse(&h).unwrap();
        assert_eq!((c.background, c.device_type), (Some(false), None));
        h.insert("x-background-mode", "maybe".parse().unwrap());
        let e = ClientHeaders::parse(&h).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage)
        );
    }
}
