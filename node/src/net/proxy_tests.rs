//! Tests of the PROXY header parser: the formats' own examples, every refusal, and
//! proptest for round-trips and for "no input panics".

use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_tcp4_and_tcp6_give_the_source_and_the_header_length() {
    let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 8080\r\nGET / HTTP/1.1\r\n";
    let p = parse(line).unwrap();
    assert_eq!(p.source, Some(sa("192.0.2.7:56324")));
    assert_eq!(p.header_len, 42);
    assert_eq!(&line[p.header_len..p.header_len + 3], b"GET");

    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    let p = parse(line).unwrap();
    assert_eq!(p.source, Some(sa("[2001:db8::1]:1")));
    assert_eq!(p.header_len, line.len());
}

#[test]
fn v1_unknown_keeps_the_peer() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ] {
        let p = parse(line).unwrap();
        assert_eq!(p.source, None);
        assert_eq!(p.header_len, line.len());
    }
}

#[test]
fn v1_prefixes_are_incomplete() {
    let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 8080\r\n";
    for n in 0..line.len() {
        assert_eq!(parse(&line[..n]), Err(ProxyError::Incomplete), "{n}");
    }
}

#[test]
fn v1_refusals() {
    let bad: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"PROXX TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
        b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX",
        b"PROXY TCP4 \xff.2.3.4 1.2.3.4 1 2\r\n",
    ];
    for b in bad {
        assert!(
            matches!(parse(b), Err(ProxyError::Invalid(_))),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
}

#[test]
fn v1_is_bounded_at_107_bytes() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(105, b'x');
    long.extend_from_slice(b"\r\n");
    assert_eq!(long.len(), V1_MAX);
    assert_eq!(parse(&long).unwrap().header_len, V1_MAX);
    let mut longer = b"PROXY UNKNOWN ".to_vec();
    longer.resize(106, b'x');
    assert_eq!(parse(&longer), Err(ProxyError::Incomplete));
    longer.push(b'x');
    assert!(matches!(parse(&longer), Err(ProxyError::Invalid(_))));
    // CR as the 107th byte: its LF would be the 108th.
    longer[106] = b'\r';
    assert!(matches!(parse(&longer), Err(ProxyError::Invalid(_))));
}

#[test]
fn v2_inet_and_inet6_give_the_source_and_skip_tlvs() {
    let h = encode_v2(sa("198.51.100.9:4000"), sa("10.0.0.1:8080"), &[]);
    assert_eq!(h.len(), 28);
    let p = parse(&h).unwrap();
    assert_eq!(p.source, Some(sa("198.51.100.9:4000")));
    assert_eq!(p.header_len, 28);

    let tlv = [0x05, 0x00, 0x03, b'a', b'b', b'c'];
    let mut h = encode_v2(sa("[2001:db8::9]:4000"), sa("[2001:db8::1]:8080"), &tlv);
    h.extend_from_slice(b"GET /");
    let p = parse(&h).unwrap();
    assert_eq!(p.source, Some(sa("[2001:db8::9]:4000")));
    assert_eq!(p.header_len, 16 + 36 + tlv.len());
}

#[test]
fn v2_local_unspec_and_unix_keep_the_peer() {
    let p = parse(&encode_v2_local()).unwrap();
    assert_eq!((p.source, p.header_len), (None, 16));
    // PROXY command, AF_UNSPEC, with some bytes the receiver must skip.
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x00, 0x00, 0x02, 9, 9]);
    assert_eq!(
        parse(&h).unwrap(),
        Parsed {
            header_len: 18,
            source: None
        }
    );
    // AF_UNIX stream: 216 address bytes.
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
    h.resize(16 + 216, 0);
    assert_eq!(
        parse(&h).unwrap(),
        Parsed {
            header_len: 232,
            source: None
        }
    );
    // INET over UDP: valid, but nothing this node caps by.
    let mut h = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[]);
    h[13] = 0x12;
    assert_eq!(parse(&h).unwrap().source, None);
}

#[test]
fn v2_prefixes_are_incomplete() {
    let h = encode_v2(sa("198.51.100.9:4000"), sa("10.0.0.1:8080"), &[1, 0, 1, 7]);
    for n in 0..h.len() {
        assert_eq!(parse(&h[..n]), Err(ProxyError::Incomplete), "{n}");
    }
}

#[test]
fn v2_refusals() {
    let good = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &[]);
    let mut wrong_sig = good.clone();
    wrong_sig[11] = b'X';
    let mut v1_in_v2 = good.clone();
    v1_in_v2[12] = 0x11;
    let mut bad_cmd = good.clone();
    bad_cmd[12] = 0x22;
    let mut bad_family = good.clone();
    bad_family[13] = 0x41;
    let mut short = good.clone();
    short[15] = 11;
    let mut v6_short = good.clone();
    v6_short[13] = 0x21;
    let mut huge = good.clone();
    huge[14] = 0xff;
    for (name, h) in [
        ("signature", &wrong_sig),
        ("version", &v1_in_v2),
        ("command", &bad_cmd),
        ("family", &bad_family),
        ("short block", &short),
        ("inet6 with an inet block", &v6_short),
        ("over the maximum", &huge),
    ] {
        assert!(matches!(parse(h), Err(ProxyError::Invalid(_))), "{name}");
    }
    // Refused from the 16 fixed bytes alone, without waiting for the block.
    assert!(matches!(parse(&huge[..16]), Err(ProxyError::Invalid(_))));
    assert!(matches!(parse(&short[..16]), Err(ProxyError::Invalid(_))));
}

fn any_addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(a, p, b, q)| (SocketAddr::from((a, p)), SocketAddr::from((b, q)))),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(a, p, b, q)| (SocketAddr::from((a, p)), SocketAddr::from((b, q)))),
    ]
}

proptest! {
    #[test]
    fn v1_round_trips((src, dst) in any_addr_pair(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut h = encode_v1(src, dst);
        let len = h.len();
        prop_assert!(len <= V1_MAX);
        h.extend_from_slice(&tail);
        let p = parse(&h).unwrap();
        prop_assert_eq!(p.source, Some(src));
        prop_assert_eq!(p.header_len, len);
    }

    #[test]
    fn v2_round_trips((src, dst) in any_addr_pair(), tlvs in proptest::collection::vec(any::<u8>(), 0..200), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut h = encode_v2(src, dst, &tlvs);
        let len = h.len();
        h.extend_from_slice(&tail);
        let p = parse(&h).unwrap();
        prop_assert_eq!(p.source, Some(src));
        prop_assert_eq!(p.header_len, len);
    }

    #[test]
    fn no_input_panics_and_a_header_never_overruns(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(p) = parse(&buf) {
            prop_assert!(p.header_len <= buf.len());
            prop_assert!(p.header_len <= MAX_HEADER);
        }
    }

    #[test]
    fn mutated_headers_never_panic(
        (src, dst) in any_addr_pair(),
        v2 in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut h = if v2 { encode_v2(src, dst, &[]) } else { encode_v1(src, dst) };
        for (i, b) in flips {
            let i = i % h.len();
            h[i] = b;
        }
        let cut = cut % (h.len() + 1);
        if let Ok(p) = parse(&h[..cut]) {
            prop_assert!(p.header_len <= cut);
        }
    }
}
