//! Who the client is, and whether it may connect: the socket peer, or the
//! address a trusted proxy names in `X-Forwarded-For`; then allow and deny
//! lists in CIDR.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Allow and deny lists. An empty allow list allows everyone not denied.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        IpFilter {
            allow: allow.to_vec(),
            deny: deny.to_vec(),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer_ip)
}

/// Whether the socket peer is one of the `trusted` proxies (an IPv4 peer
/// seen as IPv4-mapped IPv6 included).
pub fn trusted_peer(peer: SocketAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(peer.ip());
    trusted.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_mapped_ipv4_peer_is_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert!(trusted_peer(
            "[::ffff:10.1.2.3]:443".parse().unwrap(),
            &trusted
        ));
        assert!(trusted_peer("10.1.2.3:443".parse().unwrap(), &trusted));
        assert!(!trusted_peer("192.0.2.1:443".parse().unwrap(), &trusted));
    }

    #[test]
    fn allow_and_deny() {
        let f = IpFilter::new(&nets(&["10.0.0.0/8"]), &nets(&["10.1.0.0/16"]));
        assert!(f.permits("10.2.3.4".parse().unwrap()));
        assert!(!f.permits("10.1.3.4".parse().unwrap()));
        assert!(!f.permits("192.0.2.1".parse().unwrap()));
        assert!(
            f.permits("::ffff:10.2.3.4".parse().unwrap()),
            "mapped addresses count as IPv4"
        );
        assert!(IpFilter::default().permits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.7, 10.0.0.2".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let trusted = nets(&["10.0.0.0/24"]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            stranger.ip(),
            "spoofed header ignored"
        );
        assert_eq!(
            client_ip(proxy, &h, &[]),
            proxy.ip(),
            "no trusted proxies: the peer"
        );
    }
}
