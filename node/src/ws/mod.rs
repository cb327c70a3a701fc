//! The WebSocket protocol, owned by this project: the upgrade's accept key, frame
//! headers, the client-frame decoder and the socket the session writes to.
//!
//! Why not tungstenite's stream: it copies every frame into its write buffer; here a
//! publication's shared bytes go to the kernel by `writev`, with a 2-10 byte header
//! beside them (issue 11). No extension is negotiated (no permessage-deflate), as
//! before.

pub mod decode;
pub mod frame;
pub mod socket;

/// The message type the decoder returns and the socket takes (axum's, which the
/// session is written against).
pub use axum::extract::ws::Message;
pub use decode::{DecodeError, Decoder};
pub use socket::{WsError, WsSocket};

/// The `Sec-WebSocket-Accept` value answering a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(client_key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
