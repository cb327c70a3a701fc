//! The browser assets under `web/` (client, console, dashboard), compiled into the binary and served with a content type and a strong ETag.
//!
//! Trading desks often have no route to the internet, so nothing is fetched at run
//! time and no file is read from disk: one binary serves everything. Each body is a
//! `&'static [u8]`, so a request costs no allocation beyond the response headers.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

/// One embedded file and the URL it is served at.
pub struct Asset {
    pub route: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// FNV-1a of the body, computed at compile time: the ETag changes exactly when
    /// the content does, and costs nothing at start-up.
    pub hash: u64,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// For the two pages, which take admin tokens: scripts only from this node (no inline
/// script), sockets to any gateway URL typed in, and no framing by another site.
/// `style-src 'unsafe-inline'` is for the status element's shadow-root `<style>`.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

macro_rules! asset {
    ($route:expr, $ct:expr, $file:expr) => {
        Asset {
            route: $route,
            content_type: $ct,
            body: include_bytes!(concat!("../../../web/", $file)),
            hash: fnv1a(include_bytes!(concat!("../../../web/", $file))),
        }
    };
}

/// Every asset; the routes of SPEC §5 (`/`, `/client/sluice.js`, `/dashboard`) and
/// the scripts and styles those pages load.
pub static ASSETS: &[Asset] = &[
    asset!("/", HTML, "console/index.html"),
    asset!("/dashboard", HTML, "dashboard/index.html"),
    asset!("/client/sluice.js", JS, "client/sluice.js"),
    asset!("/client/sluice-status.js", JS, "client/sluice-status.js"),
    asset!("/web/console.js", JS, "console/console.js"),
    asset!("/web/dashboard.js", JS, "dashboard/dashboard.js"),
    asset!("/web/metrics.js", JS, "dashboard/metrics.js"),
    asset!("/web/sluice.css", CSS, "sluice.css"),
];

/// 64-bit FNV-1a. Not a cryptographic hash: an ETag only has to change when the
/// bytes do, and these bytes are ours.
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

impl Asset {
    /// The strong ETag: length and hash, quoted.
    pub fn etag(&self) -> String {
        format!("\"{:x}-{:016x}\"", self.body.len(), self.hash)
    }
}

/// Does an `If-None-Match` header list this ETag (or `*`)? GET compares weakly
/// (RFC 9110 §13.1.2), so a `W/` prefix added by a proxy still matches.
fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// 304 when the browser already holds this version, else the body.
pub fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches(v, &etag));
    // `no-cache` still lets the browser keep the file, but makes it ask each time, so
    // a node upgrade is picked up at once while an unchanged file costs only a 304.
    let common = [
        (header::ETAG, HeaderValue::from_str(&etag).ok()),
        (
            header::CACHE_CONTROL,
            Some(HeaderValue::from_static("no-cache")),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            Some(HeaderValue::from_static("nosniff")),
        ),
    ];
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    for (name, value) in common {
        if let Some(v) = value {
            resp.headers_mut().insert(name, v);
        }
    }
    if asset.content_type == HTML {
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
    }
    resp
}

/// One GET route per asset.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |r, asset| {
        r.route(
            asset.route,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    fn get(path: &str, inm: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(v) = inm {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        serve(find(path), &headers)
    }

    fn find(route: &str) -> &'static Asset {
        ASSETS.iter().find(|a| a.route == route).unwrap()
    }

    #[tokio::test]
    async fn each_asset_is_served_with_its_content_type_and_exact_bytes() {
        for (path, ct, needle) in [
            ("/", HTML, "<sluice-status"),
            ("/dashboard", HTML, "dashboard.js"),
            ("/client/sluice.js", JS, "export class SluiceClient"),
            ("/client/sluice-status.js", JS, "customElements.define"),
            ("/web/sluice.css", CSS, "sluice-status"),
        ] {
            let resp = get(path, None);
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ct, "{path}");
            assert_eq!(resp.headers()[header::ETAG], find(path).etag().as_str());
            let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            assert_eq!(&body[..], find(path).body, "{path}");
            assert!(
                String::from_utf8_lossy(&body).contains(needle),
                "{path} lacks {needle}"
            );
        }
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_with_no_body() {
        let tag = find("/client/sluice.js").etag();
        for inm in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            "*".into(),
        ] {
            let resp = get("/client/sluice.js", Some(&inm));
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(resp.headers()[header::ETAG], tag.as_str());
            let body = to_bytes(resp.into_body(), 1024).await.unwrap();
            assert!(body.is_empty());
        }
        let stale = get("/client/sluice.js", Some("\"0-0000000000000000\""));
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[test]
    fn pages_carry_a_csp_and_scripts_do_not() {
        for (path, has) in [
            ("/", true),
            ("/dashboard", true),
            ("/client/sluice.js", false),
        ] {
            let resp = get(path, None);
            let csp = resp.headers().get(header::CONTENT_SECURITY_POLICY);
            assert_eq!(csp.is_some(), has, "{path}");
            if let Some(v) = csp {
                let v = v.to_str().unwrap();
                assert!(v.contains("script-src 'self';"), "{v}");
                assert!(v.contains("frame-ancestors 'none'"), "{v}");
            }
        }
    }

    #[test]
    fn etags_are_strong_distinct_and_follow_the_content() {
        let tags: std::collections::HashSet<String> = ASSETS.iter().map(Asset::etag).collect();
        assert_eq!(tags.len(), ASSETS.len());
        for a in ASSETS {
            let t = a.etag();
            assert!(t.starts_with('"') && t.ends_with('"') && !t.starts_with("W/"));
            assert_eq!(a.hash, fnv1a(a.body));
        }
        // Known FNV-1a vectors, so a broken hash cannot pass by being constant.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"ab"), fnv1a(b"ba"));
    }

    #[test]
    fn every_route_is_listed_once() {
        assert!(ASSETS.iter().all(|a| a.route.starts_with('/')));
        let routes: std::collections::HashSet<_> = ASSETS.iter().map(|a| a.route).collect();
        assert_eq!(routes.len(), ASSETS.len(), "a route is listed twice");
    }
}
