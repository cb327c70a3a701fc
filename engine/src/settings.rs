//! The engine's settings, read from the environment; every bad value is reported,
//! one line each. Each default is written once, here, and `--help` shows it.

use sluice_common::Topic;

const REDIS_URL: &str = "REDIS_URL";
const RATE: &str = "DEMO_RATE";
const INSTRUMENTS: &str = "DEMO_INSTRUMENTS";
const USERS: &str = "DEMO_USERS";

const DEFAULT_RATE: f64 = 20.0;
const MAX_RATE: f64 = 100_000.0;
const DEFAULT_INSTRUMENTS: &str = "IN0001,IN0002,IN0003";
const DEFAULT_USERS: &str = "alice,bob";

#[derive(Debug)]
pub struct Settings {
    pub redis_url: String,
    /// Messages per second over all topics.
    pub rate: f64,
    pub instruments: Vec<String>,
    pub users: Vec<String>,
}

/// The text `sluice-demo-engine --help` prints.
pub fn help() -> String {
    format!(
        "sluice-demo-engine — publishes simulated trading data into Sluice

Environment:
  {REDIS_URL:<17} Redis the Sluice nodes use (required), e.g. redis://redis:6379
  {RATE:<17} messages per second over all topics [default: {DEFAULT_RATE}]
  {INSTRUMENTS:<17} comma-separated ISINs [default: {DEFAULT_INSTRUMENTS}]
  {USERS:<17} comma-separated user ids [default: {DEFAULT_USERS}]
  {:<17} log filter [default: info]

Topics: prices.{{isin}}, trading.{{user}}, portfolio.{{user}}, risk.{{user}}.alerts, auctions.A1
",
        "RUST_LOG"
    )
}

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, Vec<String>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings from any lookup (tests pass a map); every problem is
    /// reported, one line each.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let var = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut errors = Vec::new();
        let redis_url = var(REDIS_URL).unwrap_or_else(|| {
            errors.push(format!(
                "{REDIS_URL} is required, e.g. redis://localhost:6379"
            ));
            String::new()
        });
        let rate = match var(RATE) {
            None => DEFAULT_RATE,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_RATE => r,
                _ => {
                    errors.push(format!(
                        "{RATE}={v:?}: expected messages per second, above 0 and at most {MAX_RATE}"
                    ));
                    DEFAULT_RATE
                }
            },
        };
        let list = |key: &str, default: &str, errors: &mut Vec<String>| -> Vec<String> {
            let raw = var(key).unwrap_or_else(|| default.to_owned());
            let items: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if items.is_empty() {
                errors.push(format!("{key}={raw:?}: give at least one name"));
            }
            for item in &items {
                // Each name is one topic segment: no dots, topic characters only.
                if item.contains('.') || Topic::parse(item).is_err() {
                    errors.push(format!(
                        "{key}: {item:?} is not a valid topic segment ([A-Za-z0-9_:-], no dots)"
                    ));
                }
            }
            items
        };
        let instruments = list(INSTRUMENTS, DEFAULT_INSTRUMENTS, &mut errors);
        let users = list(USERS, DEFAULT_USERS, &mut errors);
        if errors.is_empty() {
            Ok(Settings {
                redis_url,
                rate,
                instruments,
                users,
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, Vec<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_only_the_redis_url_is_set() {
        let s = with(&[(REDIS_URL, " redis://r:6379 ")]).unwrap();
        assert_eq!(s.redis_url, "redis://r:6379");
        assert_eq!(s.rate, 20.0);
        assert_eq!(s.instruments, ["IN0001", "IN0002", "IN0003"]);
        assert_eq!(s.users, ["alice", "bob"]);
    }

    #[test]
    fn values_given_are_read_and_trimmed() {
        let s = with(&[
            (REDIS_URL, "redis://r:6379"),
            (RATE, "2.5"),
            (INSTRUMENTS, " X1 , ,X2"),
            (USERS, "carol"),
        ])
        .unwrap();
        assert_eq!(s.rate, 2.5);
        assert_eq!(s.instruments, ["X1", "X2"]);
        assert_eq!(s.users, ["carol"]);
    }

    #[test]
    fn every_bad_value_is_reported_in_order_naming_its_variable() {
        let err = with(&[(RATE, "0"), (INSTRUMENTS, "ok,a.b"), (USERS, " , ")]).unwrap_err();
        assert_eq!(
            err,
            [
                "REDIS_URL is required, e.g. redis://localhost:6379",
                "DEMO_RATE=\"0\": expected messages per second, above 0 and at most 100000",
                "DEMO_INSTRUMENTS: \"a.b\" is not a valid topic segment ([A-Za-z0-9_:-], no dots)",
                "DEMO_USERS=\",\": give at least one name",
            ]
        );
        for rate in ["NaN", "inf", "-1", "100000.5", "fast"] {
            let err = with(&[(REDIS_URL, "redis://r"), (RATE, rate)]).unwrap_err();
            assert_eq!(err.len(), 1, "{rate}: {err:?}");
            assert!(err[0].starts_with("DEMO_RATE="), "{err:?}");
        }
        assert!(with(&[(REDIS_URL, "redis://r"), (RATE, "100000")]).is_ok());
    }

    #[test]
    fn help_shows_each_default() {
        let text = help();
        assert!(
            text.contains(
                "  DEMO_RATE         messages per second over all topics [default: 20]\n"
            ),
            "{text}"
        );
        assert!(text.contains("[default: IN0001,IN0002,IN0003]"), "{text}");
        assert!(text.contains("[default: alice,bob]"), "{text}");
        assert!(text.contains("risk.{user}.alerts, auctions.A1"), "{text}");
        assert_eq!(text.lines().count(), 10, "{text}");
    }
}
