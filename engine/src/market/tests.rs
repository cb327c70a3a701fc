//! The simulation's mix, positions, alerts, snapshots and auction rounds, on a
//! seeded generator.

use std::collections::HashMap;

use super::*;

fn settings(instruments: &[&str], users: &[&str]) -> Settings {
    Settings {
        redis_url: "redis://unused".into(),
        rate: 1.0,
        instruments: instruments.iter().map(|s| s.to_string()).collect(),
        users: users.iter().map(|s| s.to_string()).collect(),
    }
}

fn family(topic: &str) -> &str {
    topic.split('.').next().unwrap_or_default()
}

/// Every message of the first `ticks` ticks (a trade's follow-ups included).
fn run(market: &mut Market, ticks: u64) -> Vec<Outgoing> {
    let mut out = Vec::new();
    while market.tick < ticks || !market.pending.is_empty() {
        out.push(market.next());
    }
    out
}

#[test]
fn every_twenty_ticks_give_twelve_to_fifteen_quotes_three_trades_and_two_auction_updates() {
    let mut m = Market::with_rng(&settings(&["I1", "I2"], &["u1", "u2"]), Rng::new(3));
    let all = run(&mut m, 2000);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for o in &all {
        *count.entry(family(o.topic())).or_default() += 1;
    }
    assert_eq!(count["trading"], 300);
    assert_eq!(count["portfolio"], 300);
    assert_eq!(count["auctions"], 200);
    // Ticks 17..=19 of each 20 are a quote, or one time in ten a margin warning.
    let warnings = all
        .iter()
        .filter(
            |o| matches!(o, Outgoing::Alert { payload, .. } if payload["kind"] == "margin_usage"),
        )
        .count();
    assert_eq!(count["prices"] + warnings, 1500);
    assert!(
        (10..=60).contains(&warnings),
        "{warnings} margin warnings of 300 chances"
    );
    let alerts = all
        .iter()
        .filter(|o| matches!(o, Outgoing::Alert { .. }))
        .count();
    assert_eq!(count.get("risk").copied().unwrap_or(0), alerts);
    assert_eq!(all.len(), 2000 + 300 + alerts - warnings);
}

#[test]
fn each_fill_is_followed_by_its_position_with_the_whole_portfolio() {
    let mut m = Market::with_rng(&settings(&["I1", "I2"], &["u1"]), Rng::new(11));
    let all = run(&mut m, 400);
    let mut held: HashMap<String, i64> = HashMap::new();
    let mut fills = 0;
    for (i, o) in all.iter().enumerate() {
        let Outgoing::Delta {
            topic,
            payload,
            snapshot,
        } = o
        else {
            continue;
        };
        if topic != "trading.u1" {
            continue;
        }
        fills += 1;
        assert_eq!(snapshot, &None);
        let qty = payload["quantity"].as_i64().unwrap();
        let signed = if payload["side"] == "buy" { qty } else { -qty };
        let isin = payload["isin"].as_str().unwrap().to_owned();
        let total = *held
            .entry(isin.clone())
            .and_modify(|q| *q += signed)
            .or_insert(signed);
        let Some(Outgoing::Delta {
            topic,
            payload,
            snapshot: Some(portfolio),
        }) = all.get(i + 1)
        else {
            panic!(
                "message {i} is not followed by a position: {:?}",
                all.get(i + 1)
            );
        };
        assert_eq!(topic, "portfolio.u1");
        assert_eq!(payload["isin"], isin.as_str());
        assert_eq!(payload["quantity"], total);
        let positions = portfolio["positions"].as_array().unwrap();
        assert_eq!(positions.len(), held.len());
        for p in positions {
            assert_eq!(p["quantity"], held[p["isin"].as_str().unwrap()]);
        }
    }
    assert_eq!(fills, 60);
}

#[test]
fn an_exposure_alert_is_sent_once_per_crossing() {
    let mut m = Market::with_rng(&settings(&["I1"], &["u1"]), Rng::new(5));
    m.users[0].exposure_limit = 1.0;
    let all = run(&mut m, 100);
    let crossings: Vec<(usize, &str)> = all
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outgoing::Alert { topic, payload } if topic == "risk.u1.alerts" => payload["kind"]
                .as_str()
                .filter(|k| k.starts_with("exposure"))
                .map(|k| (i, k)),
            _ => None,
        })
        .collect();
    // Over the limit from the first fill on: one alert, right after that fill's
    // position; later fills stay over it (or come back and cross again, alternating).
    let (first, kind) = crossings[0];
    assert_eq!(kind, "exposure_limit_breached");
    assert_eq!(all[first - 1].topic(), "portfolio.u1");
    assert_eq!(all[first - 2].topic(), "trading.u1");
    for pair in crossings.windows(2) {
        assert_ne!(pair[0].1, pair[1].1, "alerts alternate: {crossings:?}");
    }
    let flat_fills = all
        .iter()
        .filter(|o| matches!(o, Outgoing::Delta { topic, payload, .. } if topic == "portfolio.u1" && payload["quantity"] == 0))
        .count();
    assert!(crossings.len() <= 1 + 2 * flat_fills, "{crossings:?}");
}

#[test]
fn a_quote_carries_the_book_on_its_first_and_every_tenth_publish() {
    let mut m = Market::with_rng(&settings(&["I1"], &["u1"]), Rng::new(9));
    let quotes: Vec<bool> = run(&mut m, 400)
        .iter()
        .filter_map(|o| match o {
            Outgoing::Delta {
                topic, snapshot, ..
            } if topic == "prices.I1" => Some(snapshot.is_some()),
            _ => None,
        })
        .collect();
    assert!(quotes.len() > 250, "{}", quotes.len());
    for (n, with_book) in quotes.iter().enumerate() {
        assert_eq!(*with_book, n % 10 == 0, "publish {}", n + 1);
    }
}

#[test]
fn an_auction_counts_down_closes_and_starts_the_next_round() {
    let mut m = Market::with_rng(&settings(&["I1"], &["u1"]), Rng::new(1));
    let states: Vec<(u64, String, i64)> = (0..13)
        .map(|_| match m.auction() {
            Outgoing::Delta {
                topic,
                payload,
                snapshot,
            } => {
                assert_eq!(topic, "auctions.A1");
                assert_eq!(snapshot.as_ref(), Some(&payload));
                (
                    payload["round"].as_u64().unwrap(),
                    payload["status"].as_str().unwrap().to_owned(),
                    payload["time_remaining_s"].as_i64().unwrap(),
                )
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<(u64, String, i64)> = (1..=11)
        .map(|k| (1, "open".to_owned(), 60 - 5 * k))
        .chain([(1, "closed".to_owned(), 0), (2, "open".to_owned(), 60)])
        .collect();
    assert_eq!(states, expected);
}

#[test]
fn round2_rounds_to_cents() {
    assert_eq!(round2(1.234), 1.23);
    assert_eq!(round2(1.235_1), 1.24);
    assert_eq!(round2(-0.004), -0.0);
}
