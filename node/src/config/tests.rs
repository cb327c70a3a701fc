//! The configuration's tests: parsing, errors, flags, and the settings table
//! against `--help` and the contract (SPEC §2).

use std::{collections::HashMap, time::Duration};

use super::{
    flags::parse_flags,
    settings::{help, setting, Initial, Kind, SETTINGS},
    *,
};

fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_match_the_contract() {
    let c = with(&[]).unwrap();
    assert_eq!(c.bind.to_string(), "0.0.0.0:8080");
    assert_eq!(c.redis_url, None);
    assert_eq!(c.auth, AuthMode::Off);
    assert_eq!(c.history_size, 10_000);
    assert_eq!(c.history_ttl, Duration::from_secs(86_400));
    assert_eq!(c.max_connections, 100_000);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.connection_timeout, Duration::from_secs(90));
    assert_eq!(c.queue_size, 1024);
    assert_eq!(c.max_message_bytes, 65_536);
    assert!(!c.node_id.is_empty());
    assert_eq!(c.max_topics, 100_000);
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert!(!c.proxy_protocol);
    assert!(c.trusted_proxies.is_empty());
}

#[test]
fn edge_settings_parse_and_bad_ones_are_named() {
    let c = with(&[
        (PROXY_PROTOCOL, "on"),
        (TRUSTED_PROXIES, "10.0.0.0/8, 127.0.0.1,::1/128"),
        (HANDSHAKE_TIMEOUT, "3"),
        (MAX_TOPICS, "50"),
    ])
    .unwrap();
    assert!(c.proxy_protocol);
    assert_eq!(c.trusted_proxies.len(), 3);
    assert_eq!(c.handshake_timeout, Duration::from_secs(3));
    assert_eq!(c.max_topics, 50);
    let err = with(&[
        (PROXY_PROTOCOL, "yes"),
        (TRUSTED_PROXIES, "10.0.0.0/33"),
        (HANDSHAKE_TIMEOUT, "0"),
        (MAX_TOPICS, "none"),
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 4, "{err}");
    for var in [
        PROXY_PROTOCOL,
        TRUSTED_PROXIES,
        HANDSHAKE_TIMEOUT,
        MAX_TOPICS,
    ] {
        assert!(err.0.iter().any(|l| l.starts_with(var)), "{var} in {err}");
    }
}

#[test]
fn a_jwt_key_makes_auth_required_by_default() {
    let secret = "a-jwt-secret-of-at-least-32-bytes";
    let c = with(&[(JWT_SECRET, secret)]).unwrap();
    assert_eq!(c.auth, AuthMode::Required);
    assert_eq!(c.jwt_key, Some(JwtKey::Secret(secret.into())));
    assert_eq!(
        with(&[(JWT_SECRET, secret), (AUTH, "off")]).unwrap().auth,
        AuthMode::Off
    );
}

#[test]
fn short_secrets_are_refused_with_one_line_each_that_never_shows_them() {
    let err = with(&[
        (JWT_SECRET, "short-jwt-secret-31-bytes-long!"),
        (ADMIN_TOKEN, "tiny-admin"),
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.0[0].starts_with(JWT_SECRET), "{err}");
    assert!(err.0[1].starts_with(ADMIN_TOKEN), "{err}");
    let text = err.to_string();
    assert!(text.contains("at least 32 bytes"), "{text}");
    assert!(!text.contains("short-jwt-secret"), "{text}");
    assert!(!text.contains("tiny-admin"), "{text}");
    // Exactly 32 bytes is enough.
    let c = with(&[
        (JWT_SECRET, "j".repeat(32).as_str()),
        (ADMIN_TOKEN, "a".repeat(32).as_str()),
    ])
    .unwrap();
    assert_eq!(c.admin_token.as_deref().map(str::len), Some(32));
}

#[test]
fn a_bad_redis_url_is_reported_without_its_password() {
    let err = with(&[(REDIS_URL, "http://user:hunter2-secret@cache:6379")]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].starts_with(REDIS_URL), "{err}");
    assert!(!err.0[0].contains("hunter2-secret"), "{err}");
    assert!(err.0[0].contains("user:***@cache:6379"), "{err}");
}

#[test]
fn every_bad_value_is_reported_naming_its_variable() {
    let err = with(&[
        (BIND, "nope"),
        (QUEUE_SIZE, "0"),
        (HISTORY_SIZE, "ten"),
        (AUTH, "maybe"),
        (REDIS_URL, "http://x"),
        (JWKS_FILE, "/does/not/exist"),
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 6, "{err}");
    for (line, var) in
        err.0
            .iter()
            .zip([BIND, REDIS_URL, JWKS_FILE, AUTH, HISTORY_SIZE, QUEUE_SIZE])
    {
        assert!(line.starts_with(var), "{line} should name {var}");
    }
}

#[test]
fn auth_required_without_a_key_is_refused() {
    let err = with(&[(AUTH, "required")]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].contains(AUTH));
}

#[test]
fn subscribe_limits_default_to_the_seed_table_and_can_be_overridden() {
    let c = with(&[]).unwrap();
    assert_eq!(c.subscribe_limits.get(TopicClass::Market), (1000, 100));
    assert_eq!(c.subscribe_limits.get(TopicClass::Auctions), (500, 50));
    assert_eq!(c.subscribe_limits.get(TopicClass::Trading), (200, 20));
    assert_eq!(c.subscribe_limits.get(TopicClass::Risk), (100, 10));
    assert_eq!(c.subscribe_limits.get(TopicClass::Mobile), (300, 30));
    let c = with(&[(SUBSCRIBE_LIMITS, "risk=5/1")]).unwrap();
    assert_eq!(c.subscribe_limits.get(TopicClass::Risk), (5, 1));
    assert_eq!(c.subscribe_limits.get(TopicClass::Mobile), (300, 30));
    assert!(with(&[(SUBSCRIBE_LIMITS, "risk=0/1")]).is_err());
    assert!(with(&[(SUBSCRIBE_LIMITS, "cats=1/1")]).is_err());
    assert_eq!(TopicClass::of("portfolio.u1"), TopicClass::Trading);
    assert_eq!(TopicClass::of("risk.u1.alerts"), TopicClass::Risk);
    assert_eq!(TopicClass::of("whatever.x"), TopicClass::Market);
}

#[test]
fn flags_override_and_are_checked() {
    let flags = parse_flags([
        "--queue-size".into(),
        "7".into(),
        "--redis-url=redis://h:1".into(),
    ])
    .unwrap();
    assert_eq!(flags.get(QUEUE_SIZE).map(String::as_str), Some("7"));
    assert_eq!(
        flags.get(REDIS_URL).map(String::as_str),
        Some("redis://h:1")
    );
    let err = parse_flags(["--bogus".into(), "1".into(), "--bind".into()]).unwrap_err();
    assert_eq!(err.0.len(), 2);
    assert_eq!(flag_name(HEARTBEAT_INTERVAL), "heartbeat-interval");
}

#[test]
fn every_default_parses_and_lies_within_its_range() {
    assert_eq!(SETTINGS.len(), 37);
    let mut literal = 0;
    for s in SETTINGS {
        assert!(!s.help.is_empty(), "{} has help", s.name);
        assert!(
            s.name.starts_with("SLUICE_") || s.name == REDIS_URL,
            "{}",
            s.name
        );
        if let Kind::Int { min, max } = s.kind {
            assert!(min <= max, "{}: {min} <= {max}", s.name);
            // The reader hands some of them out as u32.
            assert!(u32::try_from(max).is_ok(), "{}: {max} fits a u32", s.name);
            assert!(
                matches!(s.default, Initial::Value(_)),
                "{} has a number",
                s.name
            );
        }
        if let Initial::Value(d) = s.default {
            literal += 1;
            let parsed = s.kind.parse(d);
            assert!(parsed.is_ok(), "{}'s default {d:?}: {parsed:?}", s.name);
            if let (Kind::Int { min, max }, Ok(settings::Parsed::Int(n))) = (s.kind, parsed) {
                assert!(
                    (min..=max).contains(&n),
                    "{}: {min} <= {n} <= {max}",
                    s.name
                );
            }
        }
    }
    assert_eq!(literal, 24, "settings with a literal default");
}

#[test]
fn the_parser_reads_every_table_entry_and_nothing_else() {
    let asked = std::cell::RefCell::new(Vec::new());
    Config::from_lookup(|k| {
        asked.borrow_mut().push(k.to_owned());
        None
    })
    .unwrap();
    let mut asked = asked.into_inner();
    asked.sort();
    asked.dedup();
    let mut names: Vec<String> = SETTINGS.iter().map(|s| s.name.to_owned()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "every name is in the table once");
    assert_eq!(asked, names);
}

#[test]
fn every_number_out_of_range_is_refused_with_the_tables_bounds() {
    let mut checked = 0;
    for s in SETTINGS {
        let Kind::Int { min, max } = s.kind else {
            continue;
        };
        let too_big = (max + 1).to_string();
        let err = with(&[(s.name, too_big.as_str())]).unwrap_err();
        assert_eq!(
            err.0,
            [format!(
                "{}=\"{too_big}\": must be between {min} and {max}",
                s.name
            )]
        );
        if min > 0 {
            let too_small = (min - 1).to_string();
            assert_eq!(
                with(&[(s.name, too_small.as_str())]).unwrap_err().0.len(),
                1
            );
        }
        let ok = max.to_string();
        assert!(with(&[(s.name, ok.as_str())]).is_ok(), "{}={ok}", s.name);
        checked += 1;
    }
    assert_eq!(checked, 19);
}

#[test]
fn a_bad_word_names_every_word_allowed() {
    let err = with(&[
        (AUTH, "maybe"),
        (LOG_FORMAT, "xml"),
        (PROXY_PROTOCOL, "yes"),
    ])
    .unwrap_err();
    assert_eq!(
        err.0,
        [
            "SLUICE_AUTH=\"maybe\": expected 'required' or 'off'",
            "SLUICE_PROXY_PROTOCOL=\"yes\": expected 'on' or 'off'",
            "SLUICE_LOG_FORMAT=\"xml\": expected 'text' or 'json'",
        ]
    );
    assert_eq!(
        Kind::Word(&["a", "b", "c"]).parse("d"),
        Err("expected 'a', 'b' or 'c'".to_owned())
    );
}

#[test]
fn help_lists_every_setting_once_with_its_flag_and_default() {
    let text = help();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), SETTINGS.len(), "{text}");
    for (line, s) in lines.iter().zip(SETTINGS) {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(s.name), "{line}");
        assert_eq!(
            words.next(),
            Some(format!("--{}", flag_name(s.name)).as_str())
        );
        let tail = format!("{} [default: {}]", s.help, s.default.text());
        assert!(line.ends_with(&tail), "{line} ends with {tail}");
        let count = text.split_whitespace().filter(|w| *w == s.name).count();
        assert_eq!(count, 1, "{} once in --help", s.name);
    }
}

/// SPEC.md lives in the steering repo's `shared/`, beside this repo's checkout
/// (`$SLUICE_SPEC_MD` overrides).
fn spec_text() -> String {
    let candidates = [
        std::env::var("SLUICE_SPEC_MD").unwrap_or_default(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/SPEC.md").to_owned(),
        "/work/shared/SPEC.md".to_owned(),
    ];
    candidates
        .iter()
        .filter(|p| !p.is_empty())
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| panic!("SPEC.md not found at any of {candidates:?}"))
}

#[test]
fn every_setting_of_the_contract_is_in_the_table_with_its_default() {
    let spec = spec_text();
    let section = spec
        .split("\n## 2. ")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("SPEC.md has a section 2");
    let (mut names, mut defaults) = (0, 0);
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (vars, default) = (cells[1], cells[cells.len() - 2].replace('`', ""));
        for var in vars.split('/').map(|v| v.trim().trim_matches('`')) {
            names += 1;
            let entry = SETTINGS.iter().find(|s| s.name == var);
            let entry = entry.unwrap_or_else(|| panic!("SPEC §2's {var} is not in SETTINGS"));
            if let Initial::Value(d) = entry.default {
                assert_eq!(default, d, "{var}'s default");
                defaults += 1;
            }
        }
    }
    assert_eq!(names, 21, "names in SPEC §2");
    assert_eq!(defaults, 13, "literal defaults compared with SPEC §2");
    assert_eq!(setting(BIND).default, Initial::Value("0.0.0.0:8080"));
}

#[test]
fn the_readme_table_lists_every_setting_with_its_flag_and_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut seen = Vec::new();
    let mut literal = 0;
    for row in readme
        .lines()
        .filter(|l| l.starts_with("| `SLUICE_") || l.starts_with("| `REDIS_URL`"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        let Some(s) = SETTINGS.iter().find(|s| s.name == name) else {
            continue; // a row of another table (e.g. a test's image variable)
        };
        assert_eq!(cells[2], format!("`--{}`", flag_name(name)), "{row}");
        if let Initial::Value(d) = s.default {
            assert_eq!(cells[3], format!("`{d}`"), "{name}'s default in README.md");
            literal += 1;
        }
        seen.push(name);
    }
    let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    seen.sort_unstable();
    names.sort_unstable();
    assert_eq!(seen, names, "README.md lists every setting once");
    assert_eq!(literal, 24);
}

#[test]
fn redis_settings_default_to_auto_replicas_and_system_roots() {
    use sluice_common::redis_client::Replicas;
    let c = with(&[]).unwrap();
    assert_eq!(c.redis.tls_ca, None);
    assert_eq!(c.redis.replicas, Replicas::Auto);
    assert_eq!(c.redis.replica_timeout, Duration::from_millis(1000));
    let c = with(&[
        (PUBLISH_REPLICAS, "2"),
        (PUBLISH_REPLICAS_TIMEOUT_MS, "250"),
    ])
    .unwrap();
    assert_eq!(c.redis.replicas, Replicas::Exactly(2));
    assert_eq!(c.redis.replica_timeout, Duration::from_millis(250));
    let err = with(&[
        (REDIS_TLS_CA, "/no/such/redis-ca.pem"),
        (PUBLISH_REPLICAS, "all"),
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.0.iter().any(|l| l.starts_with(REDIS_TLS_CA)), "{err}");
    assert!(
        err.0.iter().any(|l| l.starts_with(PUBLISH_REPLICAS)),
        "{err}"
    );
}
