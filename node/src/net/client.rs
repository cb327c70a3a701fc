//! Who the client is: the address a request is attributed to (after trusted
//! proxies' `X-Forwarded-For`) and the key its per-IP cap is counted under.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::{header::HeaderName, HeaderMap};

use super::{cidr::canonical, Cidr};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address for a request that arrived from `peer` (the TCP peer, or
/// the source of its PROXY header). Only when `peer` is one of `trusted` is
/// `X-Forwarded-For` read: from the right, each hop that is itself a trusted proxy
/// is passed over, and the first one that is not is the client. A list of trusted
/// hops only gives its left-most; a hop that is not an address ends the walk at the
/// last trusted hop, since nothing further left can be believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For headers form one list, in order.
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").rsplit(','));
    for hop in hops {
        let Some(ip) = parse_hop(hop.trim()) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical(a.ip()))
}

/// What a client's connections are counted under for `SLUICE_MAX_CONNECTIONS_PER_IP`:
/// its IPv4 address, or the /64 of its IPv6 address (one subscriber line or host
/// gets a whole /64, so per-address caps would cap nothing).
pub fn cap_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["203.0.113.5"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted()),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        // A client that forged a left-most entry does not get to choose its address.
        let h = xff(&["1.1.1.1, 203.0.113.5, 10.1.2.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("203.0.113.5"));
        // Two headers are one list.
        let h = xff(&["1.1.1.1", "203.0.113.5:4711", "10.1.2.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("203.0.113.5"));
        let h = xff(&["[2001:db8::7]:80,fd00::1"]);
        assert_eq!(client_ip(ip("fd00::2"), &h, &trusted()), ip("2001:db8::7"));
        let h = xff(&["::ffff:203.0.113.9"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &h, &trusted()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn all_trusted_gives_the_left_most_and_garbage_stops_the_walk() {
        let h = xff(&["10.9.9.9, 10.1.2.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.9.9.9"));
        let h = xff(&["203.0.113.5, bogus, 10.1.2.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.1.2.3"));
        let h = xff(&[""]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv6_is_capped_per_64_and_ipv4_per_address() {
        assert_eq!(cap_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            cap_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            cap_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            cap_key(ip("2001:db8:1:3::1")),
            cap_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(cap_key(ip("203.0.113.5")), ip("203.0.113.5"));
        assert_eq!(cap_key(ip("::ffff:203.0.113.5")), ip("203.0.113.5"));
    }
}
