//! Multiaddr helpers.

use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

pub fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

pub fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => IpAddr::V4(ip).is_unspecified(),
        Protocol::Ip6(ip) => IpAddr::V6(ip).is_unspecified(),
        _ => false,
    })
}

/// Addresses worth giving to peers: loopback only when there is nothing else.
pub fn advertised<'a>(listeners: impl Iterator<Item = &'a Multiaddr>) -> Vec<Multiaddr> {
    let all: Vec<Multiaddr> = listeners.filter(|a| !is_unspecified(a)).cloned().collect();
    let routable: Vec<Multiaddr> = all.iter().filter(|a| !is_loopback(a)).cloned().collect();
    if routable.is_empty() { all } else { routable }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_advertised_only_when_alone() {
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let lan: Multiaddr = "/ip4/10.0.0.2/tcp/1".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/1".parse().unwrap();
        assert_eq!(advertised([&lo, &lan, &any].into_iter()), vec![lan.clone()]);
        assert_eq!(advertised([&lo, &any].into_iter()), vec![lo]);
    }
}
