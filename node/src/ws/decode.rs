//! Reading client frames (RFC 6455 §5): masked, possibly fragmented, with control
//! frames between the fragments. Pure: fed whatever bytes arrived, it returns whole
//! messages, so it is tested and fuzzed without a socket.
//!
//! The size limit is checked on each frame's header, before its payload is read: a
//! message over the limit is reported once and its bytes are then skipped, so the
//! client's next frames (its answer to our close) can still be read.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{Buf, BytesMut};

use super::frame::{
    close_code_allowed, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING,
    OP_PONG, OP_TEXT,
};

/// Why a client's bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A message over the size limit; its bytes are skipped and reading goes on.
    #[error("message of at least {0} bytes is over the limit")]
    TooLarge(u64),
    /// Text (or a close reason) that is not UTF-8: close 1007.
    #[error("text is not valid UTF-8")]
    Utf8,
    /// Anything else RFC 6455 forbids: close 1002. Reading cannot go on.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
}

/// The reading state of one connection.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    partial: Option<Partial>,
    /// Payload bytes still to skip of a frame over the limit.
    skip: u64,
    /// The rest of an oversized fragmented message is skipped too.
    discarding: bool,
}

impl Decoder {
    /// `max_message`: the most bytes a data message (all its fragments) may hold.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: None,
            skip: 0,
            discarding: false,
        }
    }

    /// The next whole message in `buf`, consuming its bytes; `Ok(None)` when more
    /// bytes are needed. After a `Protocol` or `Utf8` error the connection is over
    /// and the decoder must not be fed again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() as u64);
                buf.advance(n as usize);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let Some(head) = parse_header(buf)? else {
                return Ok(None);
            };
            let control = head.opcode & 0x8 != 0;
            if control {
                if !head.fin {
                    return Err(DecodeError::Protocol("fragmented control frame"));
                }
                if head.len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(DecodeError::Protocol("control frame over 125 bytes"));
                }
                if !matches!(head.opcode, OP_CLOSE | OP_PING | OP_PONG) {
                    return Err(DecodeError::Protocol("unknown control opcode"));
                }
            } else {
                let in_message = self.partial.is_some() || self.discarding;
                match head.opcode {
                    OP_CONTINUATION if !in_message => {
                        return Err(DecodeError::Protocol("continuation outside a message"))
                    }
                    OP_TEXT | OP_BINARY if in_message => {
                        return Err(DecodeError::Protocol("new message inside a fragmented one"))
                    }
                    OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
                    _ => return Err(DecodeError::Protocol("unknown data opcode")),
                }
                if self.discarding {
                    buf.advance(head.header_len);
                    self.skip = head.len;
                    self.discarding = !head.fin;
                    continue;
                }
                let held = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
                if held + head.len > self.max_message as u64 {
                    buf.advance(head.header_len);
                    self.skip = head.len;
                    self.discarding = !head.fin;
                    self.partial = None;
                    return Err(DecodeError::TooLarge(held + head.len));
                }
            }
            // Within the limit (or a control frame), so `len` fits in memory.
            let len = head.len as usize;
            if buf.len() < head.header_len + len {
                buf.reserve(head.header_len + len - buf.len());
                return Ok(None);
            }
            let mask = head.mask;
            buf.advance(head.header_len);
            let mut payload = buf.split_to(len);
            unmask(&mut payload, mask);
            if control {
                return control_message(head.opcode, payload).map(Some);
            }
            let partial = match (self.partial.take(), head.opcode) {
                (None, op) => Partial {
                    text: op == OP_TEXT,
                    data: payload,
                },
                (Some(mut p), _) => {
                    p.data.unsplit(payload);
                    p
                }
            };
            if !head.fin {
                self.partial = Some(partial);
                continue;
            }
            let data = partial.data.freeze();
            return Ok(Some(if partial.text {
                Message::Text(Utf8Bytes::try_from(data).map_err(|_| DecodeError::Utf8)?)
            } else {
                Message::Binary(data)
            }));
        }
    }
}

#[derive(Debug)]
struct FrameHead {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: [u8; 4],
    header_len: usize,
}

/// The header at the start of `buf`, without consuming it; `None` until complete.
fn parse_header(buf: &[u8]) -> Result<Option<FrameHead>, DecodeError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(DecodeError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(DecodeError::Protocol("client frame not masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(DecodeError::Protocol("length with its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        len,
        mask: [m[0], m[1], m[2], m[3]],
        header_len: at + 4,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn control_message(opcode: u8, payload: BytesMut) -> Result<Message, DecodeError> {
    Ok(match opcode {
        OP_PING => Message::Ping(payload.freeze()),
        OP_PONG => Message::Pong(payload.freeze()),
        _ => match payload.len() {
            0 => Message::Close(None),
            1 => return Err(DecodeError::Protocol("close payload of one byte")),
            _ => {
                let mut payload = payload.freeze();
                let code = payload.get_u16();
                if !close_code_allowed(code) {
                    return Err(DecodeError::Protocol("close code not allowed"));
                }
                let reason = Utf8Bytes::try_from(payload).map_err(|_| DecodeError::Utf8)?;
                Message::Close(Some(CloseFrame { code, reason }))
            }
        },
    })
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
