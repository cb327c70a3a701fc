//! The PROXY protocol header (v1 text, v2 binary) a load balancer puts before a
//! connection's first byte to say whose connection it relays: a pure parser.
//!
//! [`parse`] looks only at the bytes it is given, never reads past the header and
//! never allocates, so the accept loop can call it after each read and a fuzz target
//! can call it on anything. Bounds: a v1 header is at most 107 bytes (the format's
//! own limit); a v2 header is 16 bytes plus its length field, which this parser caps
//! at [`V2_MAX_LEN`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header, CRLF included (`PROXY TCP6 <39> <39> 65535 65535\r\n`).
pub const V1_MAX: usize = 107;
/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Largest v2 address block (addresses plus TLVs) accepted. HAProxy's TLVs (ALPN,
/// authority, unique id, SSL details) fit well within it; a peer announcing more
/// is not a load balancer worth believing.
pub const V2_MAX_LEN: usize = 2048;
/// The largest header this parser can accept: what a reader must be ready to buffer.
pub const MAX_HEADER: usize = 16 + V2_MAX_LEN;

const V1_PREFIX: &[u8] = b"PROXY ";

/// A complete, valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// How many bytes of the input the header took; the connection's own data
    /// starts right after.
    pub header_len: usize,
    /// The original client's address. `None` for a v2 `LOCAL` command (the
    /// balancer's own health check), a v1 `UNKNOWN` line, and address families this
    /// node has no use for (UNIX sockets, unspecified): the caller then keeps the
    /// TCP peer's address.
    pub source: Option<SocketAddr>,
}

/// Why no header could be taken from the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The input is a valid beginning of a header: read more and call again.
    #[error("incomplete PROXY header")]
    Incomplete,
    /// The input cannot begin a valid header: close the connection.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.is_empty() {
        return Err(ProxyError::Incomplete);
    }
    if buf[0] == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else if buf[0] == V1_PREFIX[0] {
        parse_v1(buf)
    } else {
        Err(ProxyError::Invalid("no PROXY header"))
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyError::Invalid("no PROXY header"));
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Invalid("v1 header longer than 107 bytes"))
        } else {
            Err(ProxyError::Incomplete)
        };
    };
    match buf.get(cr + 1) {
        None if cr + 1 >= V1_MAX => {
            return Err(ProxyError::Invalid("v1 header longer than 107 bytes"))
        }
        None => return Err(ProxyError::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::Invalid("v1 header: CR without LF")),
    }
    let header_len = cr + 2;
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| ProxyError::Invalid("v1 header is not ASCII"))?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The sender does not know the client; whatever follows is to be ignored.
        return Ok(Parsed {
            header_len,
            source: None,
        });
    }
    let mut fields = line.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Invalid("v1 header: wrong number of fields"));
    };
    // The destination is checked for form only: the node knows its own address.
    let src = match proto {
        "TCP4" => {
            v1_addr::<Ipv4Addr>(dst)?;
            IpAddr::V4(v1_addr(src)?)
        }
        "TCP6" => {
            v1_addr::<Ipv6Addr>(dst)?;
            IpAddr::V6(v1_addr(src)?)
        }
        _ => return Err(ProxyError::Invalid("v1 header: unknown protocol")),
    };
    let sport = v1_port(sport)?;
    v1_port(dport)?;
    Ok(Parsed {
        header_len,
        source: Some(SocketAddr::new(src, sport)),
    })
}

fn v1_addr<T: std::str::FromStr>(s: &str) -> Result<T, ProxyError> {
    s.parse()
        .map_err(|_| ProxyError::Invalid("v1 header: bad address"))
}

/// A port in decimal, 0 to 65535, without a sign or leading zeros.
fn v1_port(s: &str) -> Result<u16, ProxyError> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ProxyError::Invalid("v1 header: bad port"));
    }
    s.parse()
        .map_err(|_| ProxyError::Invalid("v1 header: bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::Invalid("no PROXY header"));
    }
    if buf.len() < 16 {
        return Err(ProxyError::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Invalid("v2 header: version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Invalid("v2 header: unknown command")),
    };
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::Invalid("v2 header: address block too long"));
    }
    // Checked before the block is complete, so a bad header is refused at once.
    let need = match family >> 4 {
        1 => 12,
        2 => 36,
        _ => 0,
    };
    if !local && len < need {
        return Err(ProxyError::Invalid("v2 header: address block too short"));
    }
    let header_len = 16 + len;
    if buf.len() < header_len {
        return Err(ProxyError::Incomplete);
    }
    if local {
        // The balancer's own connection (a health check): no client behind it.
        return Ok(Parsed {
            header_len,
            source: None,
        });
    }
    let block = &buf[16..header_len];
    let stream = family & 0x0f == 1;
    let source = match family >> 4 {
        1 if stream => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let port = u16::from_be_bytes([block[8], block[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        2 if stream => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            let port = u16::from_be_bytes([block[32], block[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC, UNIX, or a datagram transport: nothing to cap by, keep the peer.
        0..=3 => None,
        _ => return Err(ProxyError::Invalid("v2 header: unknown address family")),
    };
    Ok(Parsed { header_len, source })
}

/// A v1 header for `source` → `destination` (the two must be of one family).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` header for `source` → `destination` (one family), followed by `tlvs`
/// (raw TLV bytes, which the parser skips).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            block.extend_from_slice(&v6(s).octets());
            block.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    block.extend_from_slice(tlvs);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    out.push(family);
    let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// A v2 `LOCAL` header (what HAProxy's health checks send).
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
