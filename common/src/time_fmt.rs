//! Timestamps as the protocol writes them: RFC 3339 UTC with milliseconds.

use time::{format_description::FormatItem, macros::format_description, OffsetDateTime};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

/// `2026-11-22T10:00:00.123Z` for a Unix time in milliseconds.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

/// The current time in protocol format.
pub fn now() -> String {
    format_ms(now_ms())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_with_millis_in_utc() {
        assert_eq!(
            super::format_ms(1_795_341_600_123),
            "2026-11-22T10:00:00.123Z"
        );
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
