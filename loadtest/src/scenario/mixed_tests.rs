//! Unit tests of the `mixed` plan, publish mix, accounting and tokens.

use super::*;

#[test]
fn clients_split_fifty_thirty_twenty() {
    assert_eq!(split(1000), (500, 300, 200));
    assert_eq!(split(10), (5, 3, 2));
    // Rounding leftovers go to mobile; nobody is dropped.
    assert_eq!(split(7), (3, 2, 2));
    assert_eq!(split(1), (0, 0, 1));
}

#[test]
fn the_plan_gives_each_class_its_routes_and_topics() {
    let p = Plan::new(100, 10, 0.25, "r1");
    let count = |c: Class| p.clients.iter().filter(|x| x.class == c).count();
    assert_eq!(count(Class::Market), 50);
    assert_eq!(count(Class::Private), 30);
    assert_eq!(count(Class::MobileBackground), 18);
    assert_eq!(count(Class::MobileForeground), 2);
    assert_eq!(p.market.len(), 10);
    assert_eq!((p.trading.len(), p.mobile.len()), (30, 20));
    // A quarter of the 30 risk topics get alerts: 8 (rounded up).
    assert_eq!(p.alerted.len(), 8);
    for c in &p.clients {
        for &t in &c.topics {
            sluice_common::topic::Topic::parse(&p.topics[t].name).expect("valid topic");
        }
        match c.class {
            Class::Market => {
                assert_eq!(c.topics.len(), 1);
                assert!(p.topics[c.topics[0]].name.starts_with("prices."));
                assert!(c
                    .subscribe_frame
                    .as_deref()
                    .is_some_and(|f| f.contains("prices.")));
            }
            Class::Private => {
                let names: Vec<&str> = c
                    .topics
                    .iter()
                    .map(|&t| p.topics[t].name.as_str())
                    .collect();
                assert_eq!(
                    names,
                    [
                        format!("trading.{}", c.user),
                        format!("risk.{}.alerts", c.user)
                    ]
                );
                assert_eq!(c.path, "/ws");
            }
            Class::MobileBackground | Class::MobileForeground => {
                assert_eq!(c.path, format!("/ws/mobile/{}", c.user));
                assert_eq!(p.topics[c.topics[0]].name, format!("mobile.{}", c.user));
                assert!(c.subscribe_frame.is_none(), "the route subscribes itself");
                assert_eq!(c.background, Some(c.class == Class::MobileBackground));
            }
        }
    }
    let subs = p.subscribers();
    assert_eq!(subs[p.market[0]], 5);
    assert_eq!(subs.iter().sum::<u64>(), 50 + 60 + 20);
}

#[test]
fn the_publish_mix_follows_the_shares() {
    let p = Plan::new(1000, 100, 0.5, "r2");
    let mut picker = Picker::new(&p, 1.0, 7);
    let n = 100_000;
    let mut kinds = [0u32; 4];
    for _ in 0..n {
        let t = picker.pick(&p);
        let k = match p.topics[t].kind {
            TopicKind::Market => 0,
            TopicKind::Trading => 1,
            TopicKind::Mobile => 2,
            TopicKind::Alerts => {
                assert!(p.alerted.contains(&t), "alerts only to the alerted share");
                3
            }
        };
        kinds[k] += 1;
    }
    let share = |k: usize| f64::from(kinds[k]) / f64::from(n);
    for (k, want) in [MARKET_SHARE, TRADING_SHARE, MOBILE_SHARE, ALERT_SHARE]
        .into_iter()
        .enumerate()
    {
        assert!(
            (share(k) - want).abs() < 0.01,
            "family {k}: {} vs {want}",
            share(k)
        );
    }
}

#[test]
fn traders_watch_distinct_market_topics_on_the_session_of_their_alerts() {
    let p = Plan::new(100, 10, 0.25, "r4").with_watchlists(3, 1.0);
    let mut watched = vec![0u64; p.topics.len()];
    for c in &p.clients {
        if c.class != Class::Private {
            assert_eq!(c.topics.len(), 1, "only traders get watchlists");
            continue;
        }
        assert_eq!(c.topics.len(), 5, "trading, alerts and 3 prices");
        assert_eq!(p.topics[c.topics[1]].kind, TopicKind::Alerts);
        let market = &c.topics[2..];
        assert!(market
            .iter()
            .all(|&t| p.topics[t].kind == TopicKind::Market));
        let mut distinct = market.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "no topic twice");
        let frame: serde_json::Value =
            serde_json::from_str(c.subscribe_frame.as_deref().expect("frame")).unwrap();
        assert_eq!(frame["topics"].as_array().map(Vec::len), Some(5));
        for &t in market {
            watched[t] += 1;
        }
    }
    assert_eq!(watched.iter().sum::<u64>(), 90, "30 traders x 3");
    // Zipf: with 300 traders over 100 topics the top topic is watched by far more
    // traders than the median one (about 1/H(100) = 19 % of draws against 0.4 %).
    let p = Plan::new(1000, 100, 0.25, "r7").with_watchlists(3, 1.0);
    let mut watched = vec![0u64; p.topics.len()];
    for c in p.clients.iter().filter(|c| c.class == Class::Private) {
        for &t in &c.topics[2..] {
            watched[t] += 1;
        }
    }
    let mut counts: Vec<u64> = p.market.iter().map(|&t| watched[t]).collect();
    let top = counts[0];
    counts.sort_unstable();
    assert!(
        top >= 10 * counts[50].max(1),
        "top {top}, median {}",
        counts[50]
    );
    // More than there are market topics: each trader watches all of them.
    let all = Plan::new(10, 2, 1.0, "r5").with_watchlists(9, 1.0);
    let trader = all
        .clients
        .iter()
        .find(|c| c.class == Class::Private)
        .unwrap();
    assert_eq!(trader.topics.len(), 4);
    // 0 changes nothing.
    let none = Plan::new(100, 10, 0.25, "r6").with_watchlists(0, 1.0);
    assert!(none
        .clients
        .iter()
        .all(|c| c.class != Class::Private || c.topics.len() == 2));
}

#[test]
fn a_plan_with_no_private_users_publishes_only_market() {
    let p = Plan::new(1, 3, 1.0, "r3");
    assert!(p.trading.is_empty() && p.alerted.is_empty());
    let mut picker = Picker::new(&p, 1.0, 1);
    for _ in 0..1000 {
        let t = picker.pick(&p);
        assert!(matches!(
            p.topics[t].kind,
            TopicKind::Market | TopicKind::Mobile
        ));
    }
}

fn tracker(seqs: &[u64]) -> SeqTracker {
    let mut t = SeqTracker::starting_at(1);
    for &s in seqs {
        t.observe(s);
    }
    t
}

#[test]
fn conflation_is_counted_apart_from_loss() {
    let ok = vec![5, 4];
    let conns = vec![
        // Foreground: misses seq 3 of topic 0 and gets 2 twice.
        ConnTally {
            class: Class::Market,
            topics: vec![(0, tracker(&[1, 2, 2, 4, 5]))],
            window_bytes: 600,
            misrouted: 1,
            subscribed: true,
        },
        // Background, latest (4) arrived: 2 conflated, no loss.
        ConnTally {
            class: Class::MobileBackground,
            topics: vec![(1, tracker(&[2, 4]))],
            window_bytes: 100,
            misrouted: 0,
            subscribed: true,
        },
        // Background, latest missing.
        ConnTally {
            class: Class::MobileBackground,
            topics: vec![(1, tracker(&[3]))],
            window_bytes: 300,
            misrouted: 0,
            subscribed: true,
        },
        // Never subscribed: not counted.
        ConnTally {
            class: Class::Market,
            topics: vec![(0, SeqTracker::starting_at(1))],
            window_bytes: 0,
            misrouted: 0,
            subscribed: false,
        },
    ];
    let a = account(&conns, &ok, 30.0);
    let m = &a[&Class::Market];
    assert_eq!((m.clients, m.owed, m.received, m.lost), (1, 5, 4, 1));
    assert_eq!((m.duplicated, m.misrouted, m.conflated), (1, 1, 0));
    assert_eq!(m.bytes_per_min_per_client, 1200.0);
    let b = &a[&Class::MobileBackground];
    assert_eq!((b.clients, b.owed, b.received, b.lost), (2, 8, 3, 0));
    assert_eq!((b.conflated, b.latest_missing), (5, 1));
    // (100 + 300) bytes / 2 clients / 0.5 min.
    assert_eq!(b.bytes_per_min_per_client, 400.0);
}

#[test]
fn minted_tokens_carry_the_user_and_verify_with_the_secret() {
    let t = mint("s3cret", "trader-1", 1_000, 3_600).expect("mint");
    #[derive(serde::Deserialize)]
    struct C {
        sub: String,
        exp: u64,
    }
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_exp = false;
    let d = jsonwebtoken::decode::<C>(&t, &jsonwebtoken::DecodingKey::from_secret(b"s3cret"), &v)
        .expect("verifies");
    assert_eq!((d.claims.sub.as_str(), d.claims.exp), ("trader-1", 4_600));
    assert!(
        jsonwebtoken::decode::<C>(&t, &jsonwebtoken::DecodingKey::from_secret(b"other"), &v)
            .is_err()
    );
}
