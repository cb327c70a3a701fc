//! Tests of the command line: durations, source addresses, parsing and the
//! refusal of bad values.

use std::net::IpAddr;

use super::*;
use crate::ws::WsUrl;

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("5h").is_err());
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn many_clients_get_many_source_addresses() {
    let local = WsUrl::parse("ws://127.0.0.1:8080/ws").expect("url");
    assert!(default_bind_ips(&local, 1000).is_empty());
    let ips = default_bind_ips(&local, 100_001);
    assert_eq!(ips.len(), 6);
    assert_eq!(ips[5], IpAddr::from([127, 0, 0, 6]));
}

#[test]
fn the_documented_command_line_parses() {
    let cli = Cli::try_parse_from([
        "sluice-loadtest",
        "fanout",
        "--url",
        "ws://127.0.0.1:8080/ws",
        "--url",
        "ws://127.0.0.1:8081/ws",
        "--redis",
        "redis://127.0.0.1:6379",
        "--clients",
        "1000",
        "--rate",
        "200",
        "--duration",
        "10s",
        "--topics",
        "1",
        "--payload",
        "128",
        "--json",
    ])
    .expect("parses");
    let Command::Fanout(c) = cli.command else {
        panic!("fanout expected")
    };
    let cfg = c.config().expect("valid");
    assert_eq!(cfg.urls.len(), 2);
    assert_eq!(cfg.clients, 1000);
    assert_eq!(cfg.http, "http://127.0.0.1:8080");
    assert!(c.json);
}

#[test]
fn bad_values_are_refused_with_the_option_named() {
    let parse = |args: &[&str]| {
        let mut v = vec!["sluice-loadtest", "fanout", "--url", "ws://127.0.0.1:1/ws"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map_err(|e| e.to_string())
            .and_then(|c| match c.command {
                Command::Fanout(c) => c.config().map(|_| ()).map_err(|e| e.to_string()),
                _ => Err("wrong command".into()),
            })
    };
    assert!(parse(&[]).is_ok());
    assert!(parse(&["--clients", "0"])
        .unwrap_err()
        .contains("--clients"));
    assert!(parse(&["--rate", "-5"]).is_err());
    assert!(parse(&["--duration", "soon"])
        .unwrap_err()
        .contains("duration"));
    assert!(parse(&["--system", "kafka"]).is_err());
}
