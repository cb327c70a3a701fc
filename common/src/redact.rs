//! Keeping Redis passwords out of logs, errors and HTTP answers: the one place that
//! knows how a secret sits in a `REDIS_URL` and how to take it out of any text.
//!
//! Two steps, because a URL is not the only way a password travels: [`redact_url`]
//! rewrites a URL for printing (`redis://user:***@host:port`), and [`scrub`] takes
//! every secret of every URL passed to [`remember_url_secrets`] out of arbitrary text,
//! such as an error string a Redis client builds and that may echo its configuration.

use std::sync::{Mutex, OnceLock};

use crate::lock::MutexExt;

/// What a removed secret is replaced with.
pub const MASK: &str = "***";

/// Query parameters whose value is a secret (fred's Sentinel URLs carry
/// `sentinelPassword`); matched case-insensitively on the name containing one of these.
const SECRET_PARAMS: &[&str] = &["password", "passwd", "pass", "secret", "token"];

/// `url` fit to print: the password of its user info and every secret query
/// parameter replaced by `***`. A user info without `:` is masked whole, since
/// people do write `redis://PASSWORD@host`. Text that is not a URL is returned as is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; user info is before its last '@'
    // (a password may itself contain '@' when not percent-encoded).
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => format!("{MASK}@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query(tail))
}

/// Masks the values of secret parameters in `?a=b&c=d` (the path before it and a
/// fragment after it are kept).
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if is_secret_param(k) && !v.is_empty() => format!("{k}={MASK}"),
            _ => kv.to_owned(),
        })
        .collect();
    let mut out = format!("{path}?{}", params.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| n.contains(s))
}

/// The secrets in `url`: the user-info password (or the whole user info when it has
/// no `:`) and secret query values, each as written and percent-decoded.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = url.split_once("://") else {
        return out;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
        out.push(secret.to_owned());
    }
    if let Some((_, query)) = tail.split_once('?') {
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=') {
                if is_secret_param(k) {
                    out.push(v.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = out.iter().map(|s| percent_decode(s)).collect();
    out.extend(decoded);
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    // Longest first, so a secret that contains another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `%41` → `A`; a malformed escape is kept as written. Lossy on invalid UTF-8.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn registry() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers the secrets of `url` so that [`scrub`] removes them from any text later.
/// Process-wide on purpose: an error string can surface far from the code that knew
/// the URL (a reader task, a reconnect, a pool), and every such path must be covered.
pub fn remember_url_secrets(url: &str) {
    let mut known = registry().lock_unpoisoned();
    for s in url_secrets(url) {
        if !known.contains(&s) {
            known.push(s);
        }
    }
    known.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every remembered secret replaced by `***`. Use it on any error text
/// that came from a Redis client.
pub fn scrub(text: &str) -> String {
    let known = registry().lock_unpoisoned();
    let mut out = text.to_owned();
    for s in known.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_a_url_is_masked_and_the_rest_kept() {
        assert_eq!(
            redact_url("redis://user:hunter2@cache:6379/0"),
            "redis://user:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379"),
            "redis://:***@cache:6379"
        );
        assert_eq!(
            redact_url("redis://hunter2@cache:6379"),
            "redis://***@cache:6379"
        );
        assert_eq!(
            redact_url("redis://u:p@ss@w:rd@cache:6379"),
            "redis://u:***@cache:6379"
        );
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("redis-sentinel://u:pw@s1:26379?node=s2:26379&sentinelServiceName=m&sentinelPassword=spw"),
            "redis-sentinel://u:***@s1:26379?node=s2:26379&sentinelServiceName=m&sentinelPassword=***"
        );
        assert_eq!(
            redact_url("rediss-cluster://u:pw@h:1?node=h:2"),
            "rediss-cluster://u:***@h:1?node=h:2"
        );
    }

    #[test]
    fn secrets_are_found_as_written_and_percent_decoded() {
        let s = url_secrets("redis://u:p%40ss%2Fword@h:1?sentinelPassword=x%20y");
        assert_eq!(s.len(), 4, "{s:?}");
        for want in ["p%40ss%2Fword", "p@ss/word", "x%20y", "x y"] {
            assert!(s.iter().any(|v| v == want), "{want} in {s:?}");
        }
        assert!(url_secrets("redis://h:1").is_empty());
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a%zz%41"), "a%zzA");
    }

    #[test]
    fn scrub_removes_every_remembered_secret_from_any_text() {
        remember_url_secrets("redis://u:scrub-test-Pw%21@h:1");
        let text = "auth failed for redis://u:scrub-test-Pw%21@h:1 (password scrub-test-Pw!)";
        let out = scrub(text);
        assert!(!out.contains("scrub-test-Pw"), "{out}");
        assert_eq!(out, "auth failed for redis://u:***@h:1 (password ***)");
        assert_eq!(scrub("nothing secret"), "nothing secret");
    }
}
