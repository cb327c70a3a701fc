//! The payload every system carries: which topic (`lk`), the per-topic seq (`ls`)
//! and the scheduled send time (`lt`, ns since the run's clock origin), padded to
//! the requested size. Read back by scanning the raw frame for the three keys, so
//! the same parser works inside a Sluice envelope, a Socket.IO event or a bare body.

use memchr::memmem::Finder;
use std::sync::LazyLock;

/// The fields the load generator put into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub topic: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Builds the JSON payload, padded with `p` so the whole object is at least
/// `size` bytes.
pub fn build(stamp: Stamp, size: usize) -> String {
    let mut s = format!(
        r#"{{"lk":{},"ls":{},"lt":{},"p":""#,
        stamp.topic, stamp.seq, stamp.sent_ns
    );
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

static LK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""lk":"#));
static LS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""ls":"#));
static LT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""lt":"#));

fn number_after(frame: &[u8], finder: &Finder<'_>) -> Option<u64> {
    let at = finder.find(frame)? + finder.needle().len();
    let rest = frame.get(at..)?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = &rest[start..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    digits[..len].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Finds the stamp in a received frame; `None` for frames that carry none
/// (acks, heartbeats, pings).
pub fn parse(frame: &[u8]) -> Option<Stamp> {
    let seq = number_after(frame, &LS)?;
    let sent_ns = number_after(frame, &LT)?;
    let topic = u32::try_from(number_after(frame, &LK)?).ok()?;
    Some(Stamp {
        topic,
        seq,
        sent_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp {
        topic: 3,
        seq: 17,
        sent_ns: 1_234_567_890_123,
    };

    #[test]
    fn round_trip_bare_and_padded() {
        let p = build(S, 0);
        assert_eq!(p, r#"{"lk":3,"ls":17,"lt":1234567890123,"p":""}"#);
        assert_eq!(parse(p.as_bytes()), Some(S));
        let big = build(S, 256);
        assert_eq!(big.len(), 256);
        assert_eq!(parse(big.as_bytes()), Some(S));
        serde_json::from_str::<serde_json::Value>(&big).expect("valid JSON");
    }

    #[test]
    fn found_inside_each_systems_frame() {
        let p = build(S, 64);
        let frames = [
            format!(r#"{{"type":"delta","topic":"bench.x.0","seq":9,"epoch":"e","payload":{p}}}"#),
            format!(r#"42["msg",{p}]"#),
            p.clone(),
            // Re-serialised with spaces, as a Python server might.
            r#"{"lk": 3, "ls": 17, "lt": 1234567890123, "p": ""}"#.to_owned(),
        ];
        for f in &frames {
            assert_eq!(parse(f.as_bytes()), Some(S), "{f}");
        }
    }

    #[test]
    fn frames_without_a_stamp_or_with_a_bad_one_are_none() {
        for f in [
            r#"{"type":"heartbeat"}"#,
            r#"{"type":"ack","payload":{"subscribed":true}}"#,
            "2",
            r#"{"lk":1,"ls":"x","lt":5}"#,
            r#"{"lk":1,"ls":99999999999999999999999,"lt":5}"#,
            r#"{"lk":99999999999,"ls":1,"lt":5}"#,
            r#"{"lk":1,"ls":1,"lt":"#,
        ] {
            assert_eq!(parse(f.as_bytes()), None, "{f}");
        }
    }
}
