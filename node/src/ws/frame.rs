//! WebSocket frame headers as the server writes them (RFC 6455 §5.2): FIN, the
//! opcode, and the payload length in 1, 3 or 9 bytes. Server frames are never
//! masked, so a header is all a frame adds to its (shared, uncopied) payload.

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The longest header a server writes: 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;
/// The longest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One frame's header, kept inline (no allocation per frame).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({:02x?})", self.as_bytes())
    }
}

impl Header {
    /// The header of a final, unmasked frame with `opcode` and `payload_len` bytes.
    pub fn new(opcode: u8, payload_len: usize) -> Header {
        let mut bytes = [0u8; MAX_HEADER];
        bytes[0] = 0x80 | (opcode & 0x0F);
        let len = if payload_len <= 125 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Header { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a header has at least two bytes. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A close frame's payload: the code, then the reason cut (at a character boundary)
/// so the whole fits a control frame.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut b = BytesMut::with_capacity(2 + cut);
    b.put_u16(code);
    b.put_slice(&reason.as_bytes()[..cut]);
    b.freeze()
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4): the defined
/// codes except those reserved for local use (1004-1006, 1015), or 3000-4999.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A client frame (masked with `mask`), as a browser would send it: for the
/// decoder's tests and fuzz target.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    let head = Header::new(opcode, payload.len());
    out.extend_from_slice(head.as_bytes());
    if !fin {
        out[0] &= 0x7F;
    }
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_one_three_or_nine_bytes_at_the_boundaries() {
        let cases: [(usize, &[u8]); 6] = [
            (0, &[0x81, 0]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65_535, &[0x81, 126, 0xFF, 0xFF]),
            (65_536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            ((1usize << 32) + 5, &[0x81, 127, 0, 0, 0, 1, 0, 0, 0, 5]),
        ];
        for (len, want) in cases {
            let h = Header::new(OP_TEXT, len);
            assert_eq!(h.as_bytes(), want, "payload of {len} bytes");
            assert_eq!(h.len(), want.len());
        }
    }

    #[test]
    fn the_opcode_and_fin_are_in_the_first_byte_and_nothing_is_masked() {
        for (op, first) in [
            (OP_TEXT, 0x81),
            (OP_BINARY, 0x82),
            (OP_CLOSE, 0x88),
            (OP_PING, 0x89),
            (OP_PONG, 0x8A),
        ] {
            let h = Header::new(op, 3);
            assert_eq!(h.as_bytes(), [first, 3]);
        }
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame_at_a_char_boundary() {
        let p = close_payload(1009, "too big");
        assert_eq!(&p[..], b"\x03\xf1too big");
        let long = "é".repeat(100); // 200 bytes
        let p = close_payload(4008, &long);
        assert!(p.len() <= MAX_CONTROL_PAYLOAD, "{}", p.len());
        assert_eq!(p.len(), 2 + 122, "61 two-byte characters fit in 123 bytes");
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    #[test]
    fn close_codes_a_peer_may_send() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }
}
