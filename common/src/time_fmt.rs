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

/// The first millisecond of the year 10000: beyond it the year has five digits.
const YEAR_10000_MS: i64 = 253_402_300_800_000;

/// `2026-11-22T10:00:00.123Z` for a Unix time in milliseconds.
///
/// Every frame the node sends carries one, so times from 1970 to 9999 are written
/// by hand (days to a civil date with the era arithmetic of Hinnant's
/// `civil_from_days`), about 20 times fewer instructions than a format description;
/// the rest go through `time`, as before.
pub fn format_ms(ms: i64) -> String {
    if !(0..YEAR_10000_MS).contains(&ms) {
        return format_ms_slow(ms);
    }
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let mut out = [0u8; 24];
    let mut put = |at: usize, value: i64, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, i64::from(month), 2);
    put(8, i64::from(day), 2);
    put(11, in_day / 3_600_000, 2);
    put(14, in_day / 60_000 % 60, 2);
    put(17, in_day / 1000 % 60, 2);
    put(20, in_day % 1000, 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        out[at] = c;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Year, month (1–12) and day (1–31) of a day count from 1970-01-01 (not negative).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn format_ms_slow(ms: i64) -> String {
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
        assert_eq!(
            super::format_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            super::format_ms(super::YEAR_10000_MS - 1),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn the_hand_written_format_agrees_with_the_time_crate() {
        // Every day boundary's neighbours from 1970 to 2200, then a spread of
        // pseudo-random instants up to the year 9999.
        let day = 86_400_000i64;
        for d in 0..(230 * 366) {
            for ms in [
                d * day,
                d * day + 1,
                d * day + day - 1,
                d * day + 45_296_789,
            ] {
                assert_eq!(super::format_ms(ms), super::format_ms_slow(ms), "{ms}");
            }
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = (x % super::YEAR_10000_MS as u64) as i64;
            assert_eq!(super::format_ms(ms), super::format_ms_slow(ms), "{ms}");
        }
    }

    #[test]
    fn instants_outside_1970_to_9999_still_format() {
        assert_eq!(super::format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(super::format_ms(-1), super::format_ms_slow(-1));
        assert_eq!(
            super::format_ms(super::YEAR_10000_MS),
            super::format_ms_slow(super::YEAR_10000_MS)
        );
    }
}
