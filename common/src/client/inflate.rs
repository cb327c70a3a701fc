//! Inflating the server's gzip binary frames within a bound, so a compressed frame
//! (a gzip bomb: kilobytes that inflate to gigabytes) costs at most the limit.

use std::io::Read;

/// Why a binary frame could not be turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit; no more than limit + 1 bytes were produced.
    TooLarge,
    /// Not gzip, truncated, or not UTF-8 once inflated.
    Invalid,
}

/// Gunzips a binary frame into text of at most `max` bytes. The decoder is read
/// through `take(max + 1)`: inflation stops one byte past the limit, whatever the
/// frame claims, so memory never grows beyond it.
pub fn gunzip(data: &[u8], max: usize) -> Result<String, InflateError> {
    let mut buf = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take((max as u64).saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|_| InflateError::Invalid)?;
    if buf.len() > max {
        return Err(InflateError::TooLarge);
    }
    String::from_utf8(buf).map_err(|_| InflateError::Invalid)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_frame_up_to_the_limit_inflates_and_one_byte_more_is_refused() {
        let text = "x".repeat(1000);
        assert_eq!(gunzip(&gzip(text.as_bytes()), 1000).as_deref(), Ok(&*text));
        assert_eq!(
            gunzip(&gzip(text.as_bytes()), 999),
            Err(InflateError::TooLarge)
        );
        assert_eq!(gunzip(&gzip(b""), 0).as_deref(), Ok(""));
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_limit() {
        // 16 MiB of zeros is about 16 KiB of gzip; inflating stops after 1 MiB + 1.
        let bomb = gzip(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        assert_eq!(gunzip(&bomb, 1 << 20), Err(InflateError::TooLarge));
    }

    #[test]
    fn bytes_that_are_not_gzip_of_text_are_invalid() {
        assert_eq!(
            gunzip(b"{\"type\":\"delta\"}", 1 << 20),
            Err(InflateError::Invalid)
        );
        let gz = gzip(b"hello");
        assert_eq!(
            gunzip(&gz[..gz.len() - 4], 1 << 20),
            Err(InflateError::Invalid)
        );
        assert_eq!(
            gunzip(&gzip(&[0xff, 0xfe]), 1 << 20),
            Err(InflateError::Invalid)
        );
    }
}
