//! Fuzzes topic parsing and matching (`Topic`, `TopicFilter`, `TopicPattern`)
//! against a plain segment-by-segment model of the rules in SPEC §3.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_common::{topic::MAX_TOPIC_LEN, Topic, TopicFilter, TopicPattern};

/// Whether `topic` has `prefix`'s segments followed by `more` further ones
/// (`None`: one or more).
fn below(prefix: &str, topic: &str, more: Option<usize>) -> bool {
    let p: Vec<&str> = prefix.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    let extra_ok = match more {
        Some(n) => t.len() == p.len() + n,
        None => t.len() > p.len(),
    };
    extra_ok && t[..p.len()] == p[..]
}

fuzz_target!(|data: &[u8]| {
    // Input: `<filter or pattern> 0xFF <topic>`.
    let split = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let (a, b) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
        return;
    };
    let topic = Topic::parse(b);
    if let Ok(t) = &topic {
        assert!((1..=MAX_TOPIC_LEN).contains(&t.as_str().len()));
        assert!(t
            .as_str()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')));
        assert!(t.segments().all(|s| !s.is_empty()));
    }
    let filter = TopicFilter::parse(a);
    if let Ok(f) = &filter {
        assert_eq!(f.to_string(), a, "a filter prints as it was written");
        if topic.is_ok() {
            let want = match f {
                TopicFilter::Exact(e) => e.as_str() == b,
                TopicFilter::OneLevel(p) => below(p.as_str(), b, Some(1)),
                TopicFilter::AnyDepth(p) => below(p.as_str(), b, None),
            };
            assert_eq!(f.matches(b), want, "filter {a:?} on {b:?}");
        }
    }
    if let Ok(p) = TopicPattern::parse(a) {
        let m = p.matches(b);
        if topic.is_ok() {
            if !a.contains(['*', '>']) {
                assert_eq!(m, a == b, "plain pattern {a:?} on {b:?}");
            }
            // Where a pattern is also a subscription filter, both mean the same.
            if let Ok(f) = &filter {
                assert_eq!(m, f.matches(b), "pattern and filter {a:?} on {b:?}");
            }
        }
    }
});
