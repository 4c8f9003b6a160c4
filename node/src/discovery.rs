//! mDNS discovery (DNS-SD over `mdns-sd`).
//!
//! The node registers `<PeerId>._pyagent._udp.local.` with TXT records carrying the
//! protocol version, the swarm namespace tag (never the key), the p2p port, whether QUIC
//! is on, a capacity summary and a per-run boot id. It browses the same type; a resolved
//! service of the same namespace becomes a `Dial` command to the router.
//!
//! Interfaces: the daemon starts with every interface disabled and enables either the
//! interfaces named by `--mdns-interface`, or every non-loopback IPv4 interface that does
//! not look virtual (docker, bridges, veth, VPN tunnels) — so a node never announces
//! itself on `docker0` by default.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{IfKind, IfPredicate, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use pyagent_protocol::swarm::{MDNS_SERVICE_TYPE, txt};
use pyagent_protocol::{SwarmNamespace, VersionRange};
use tokio::task::JoinHandle;

use crate::p2p::NodeClient;

/// Interface name prefixes left out unless named explicitly.
const VIRTUAL_PREFIXES: &[&str] = &["docker", "br-", "virbr", "veth", "cni", "flannel", "vmnet", "vboxnet", "tun", "tap", "wg", "tailscale", "zt", "lxc", "podman"];

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot start the mDNS daemon: {0}")]
    Daemon(mdns_sd::Error),
    #[error("cannot register the mDNS service: {0}")]
    Register(mdns_sd::Error),
    #[error("cannot browse mDNS: {0}")]
    Browse(mdns_sd::Error),
}

/// What this node announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub peer_id: PeerId,
    pub namespace: SwarmNamespace,
    pub p2p_port: u16,
    pub quic: bool,
    pub capacity_summary: String,
    pub interfaces: Vec<String>,
    /// This run's id (the one adverts carry), to tell a restart from a copied identity.
    pub boot_id: u64,
    /// The protocol versions this node speaks (TXT `v`, e.g. `2-3`).
    pub versions: VersionRange,
}

/// Running discovery. [`MdnsDiscovery::shutdown`] sends the mDNS goodbye.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    fullname: String,
    browser: JoinHandle<()>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery").field("service", &self.fullname).finish_non_exhaustive()
    }
}

fn is_virtual(name: &str) -> bool {
    VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A service that another node announced, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub boot_id: Option<String>,
}

/// Why a resolved service is not dialed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SightingError {
    #[error("instance name is not a PeerId")]
    NotAPeer,
    #[error("protocol versions {0:?} are not a version range")]
    Version(Option<String>),
    #[error("another swarm namespace")]
    Namespace,
    #[error("no usable port")]
    Port,
    #[error("no usable address")]
    Address,
}

/// Checks a resolved service against our namespace; builds dial addresses. Any well-formed
/// version range is dialed: whether the two nodes share a version is found (and reported)
/// when they connect, so an upgrade in progress never hides a node.
pub fn sighting(
    instance: &str,
    txt_of: impl Fn(&str) -> Option<String>,
    ips: &[IpAddr],
    namespace: &SwarmNamespace,
    we_use_quic: bool,
) -> Result<Sighting, SightingError> {
    let peer: PeerId = instance.parse().map_err(|_| SightingError::NotAPeer)?;
    let version = txt_of(txt::VERSION);
    if version.as_deref().and_then(|v| v.parse::<VersionRange>().ok()).is_none() {
        return Err(SightingError::Version(version));
    }
    if txt_of(txt::NAMESPACE).as_deref() != Some(namespace.tag()) {
        return Err(SightingError::Namespace);
    }
    let port: u16 = txt_of(txt::P2P_PORT).and_then(|p| p.parse().ok()).filter(|p| *p != 0).ok_or(SightingError::Port)?;
    let quic = we_use_quic && txt_of(txt::QUIC).as_deref() == Some("1");
    let mut addrs = Vec::new();
    for ip in ips.iter().filter(|ip| ip.is_ipv4() && !ip.is_unspecified()) {
        let base = Multiaddr::from(*ip);
        addrs.push(base.clone().with(Protocol::Tcp(port)).with(Protocol::P2p(peer)));
        if quic {
            addrs.push(base.with(Protocol::Udp(port)).with(Protocol::QuicV1).with(Protocol::P2p(peer)));
        }
    }
    if addrs.is_empty() {
        return Err(SightingError::Address);
    }
    Ok(Sighting { peer, addrs, boot_id: txt_of(txt::BOOT_ID) })
}

impl MdnsDiscovery {
    /// Starts the daemon, registers this node and browses for others.
    pub fn start(me: Announcement, client: NodeClient) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new().map_err(DiscoveryError::Daemon)?;
        daemon.disable_interface(IfKind::All).map_err(DiscoveryError::Daemon)?;
        if me.interfaces.is_empty() {
            daemon
                .enable_interface(IfKind::Predicate(IfPredicate::new(|intf| {
                    intf.ip().is_ipv4() && !intf.is_loopback() && !is_virtual(&intf.name)
                })))
                .map_err(DiscoveryError::Daemon)?;
        } else {
            let names: Vec<IfKind> = me.interfaces.iter().map(|n| IfKind::Name(n.clone())).collect();
            daemon.enable_interface(names).map_err(DiscoveryError::Daemon)?;
            // IPv6 link-local addresses need scope ids that multiaddrs cannot carry.
            daemon.disable_interface(IfKind::IPv6).map_err(DiscoveryError::Daemon)?;
        }
        let boot_id = format!("{:016x}", me.boot_id);
        let instance = me.peer_id.to_string();
        let props: HashMap<String, String> = [
            (txt::VERSION, me.versions.to_string()),
            (txt::NAMESPACE, me.namespace.tag().to_owned()),
            (txt::P2P_PORT, me.p2p_port.to_string()),
            (txt::QUIC, if me.quic { "1" } else { "0" }.to_owned()),
            (txt::CAPACITY, me.capacity_summary.clone()),
            (txt::BOOT_ID, boot_id.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // The host name only has to be unique on the link: derive it from the PeerId.
        let host = format!("pyagent-{}.local.", &instance[instance.len().saturating_sub(12)..]);
        let mut info = ServiceInfo::new(MDNS_SERVICE_TYPE, &instance, &host, "", me.p2p_port, props)
            .map_err(DiscoveryError::Register)?
            .enable_addr_auto();
        // The instance name is a PeerId, unique by construction: skip the ~750 ms of
        // conflict probing (RFC 6762 §8.1) and announce at once.
        info.set_requires_probe(false);
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(DiscoveryError::Register)?;
        let receiver = daemon.browse(MDNS_SERVICE_TYPE).map_err(DiscoveryError::Browse)?;
        let browser = tokio::spawn(async move {
            while let Ok(event) = receiver.recv_async().await {
                match event {
                    ServiceEvent::ServiceResolved(service) => on_resolved(&service, &me, &boot_id, &client).await,
                    ServiceEvent::SearchStopped(_) => break,
                    _ => {}
                }
            }
        });
        tracing::info!(service = %fullname, "mDNS discovery on");
        Ok(Self { daemon, fullname, browser })
    }

    /// Unregisters the service (mDNS goodbye) and stops the daemon, waiting at most `wait`.
    pub async fn shutdown(self, wait: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout_at(deadline, rx.recv_async()).await;
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout_at(deadline, rx.recv_async()).await;
        }
        self.browser.abort();
    }
}

async fn on_resolved(service: &ResolvedService, me: &Announcement, my_boot: &str, client: &NodeClient) {
    let instance = service.fullname.strip_suffix(&format!(".{MDNS_SERVICE_TYPE}")).unwrap_or(&service.fullname);
    let ips: Vec<IpAddr> = service.addresses.iter().map(|a| a.to_ip_addr()).collect();
    let txt_of = |key: &str| service.txt_properties.get_property_val_str(key).map(str::to_owned);
    match sighting(instance, txt_of, &ips, &me.namespace, me.quic) {
        Ok(s) if s.peer == me.peer_id => {
            if s.boot_id.as_deref().is_some_and(|b| b != my_boot) {
                tracing::error!(
                    peer_id = %me.peer_id,
                    "another node on this network uses this node's identity (was the data directory copied?); \
                     give each node its own data directory"
                );
            }
        }
        Ok(s) => {
            tracing::debug!(peer = %s.peer, addrs = ?s.addrs, "mDNS: found peer");
            if client.dial(s.peer, s.addrs).await.is_err() {
                tracing::debug!("mDNS: router stopped");
            }
        }
        Err(e) => tracing::debug!(instance, "mDNS: ignoring service: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = map.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn accepts_same_namespace_and_builds_addresses() {
        let ns = SwarmNamespace::new("lab").unwrap();
        let peer = PeerId::random();
        let ips = ["10.77.0.11".parse().unwrap(), "fe80::1".parse().unwrap()];
        let s = sighting(&peer.to_string(), txt(&[("v", "1"), ("ns", ns.tag()), ("port", "7760"), ("quic", "1")]), &ips, &ns, true).unwrap();
        assert_eq!(s.peer, peer);
        assert_eq!(
            s.addrs,
            vec![
                format!("/ip4/10.77.0.11/tcp/7760/p2p/{peer}").parse::<Multiaddr>().unwrap(),
                format!("/ip4/10.77.0.11/udp/7760/quic-v1/p2p/{peer}").parse::<Multiaddr>().unwrap(),
            ]
        );
        // Without QUIC on our side, TCP only.
        let s = sighting(&peer.to_string(), txt(&[("v", "1"), ("ns", ns.tag()), ("port", "7760"), ("quic", "1")]), &ips, &ns, false).unwrap();
        assert_eq!(s.addrs.len(), 1);
    }

    #[test]
    fn rejects_other_namespace_and_junk() {
        let ns = SwarmNamespace::new("lab").unwrap();
        let other = SwarmNamespace::new("other").unwrap();
        let peer = PeerId::random().to_string();
        let ips = ["10.77.0.11".parse().unwrap()];
        let ok = [("v", "1"), ("ns", ns.tag()), ("port", "7760")];
        assert!(sighting(&peer, txt(&ok), &ips, &ns, true).is_ok());
        assert_eq!(sighting(&peer, txt(&ok), &ips, &other, true), Err(SightingError::Namespace));
        // Another version range is still dialed (identify reports a mismatch); junk is not.
        assert!(sighting(&peer, txt(&[("v", "3-7"), ("ns", ns.tag()), ("port", "7760")]), &ips, &ns, true).is_ok());
        for junk in ["", "x", "3-2", "0"] {
            let s = sighting(&peer, txt(&[("v", junk), ("ns", ns.tag()), ("port", "7760")]), &ips, &ns, true);
            assert!(matches!(s, Err(SightingError::Version(_))), "{junk:?}");
        }
        assert!(matches!(sighting(&peer, txt(&[("ns", ns.tag()), ("port", "7760")]), &ips, &ns, true), Err(SightingError::Version(None))));
        assert_eq!(sighting("not-a-peer", txt(&ok), &ips, &ns, true), Err(SightingError::NotAPeer));
        assert_eq!(sighting(&peer, txt(&[("v", "1"), ("ns", ns.tag()), ("port", "x")]), &ips, &ns, true), Err(SightingError::Port));
        assert_eq!(sighting(&peer, txt(&ok), &[], &ns, true), Err(SightingError::Address));
    }

    #[test]
    fn virtual_interfaces_are_recognised() {
        assert!(is_virtual("docker0") && is_virtual("veth12ab") && is_virtual("br-3f2a"));
        assert!(!is_virtual("eth0") && !is_virtual("enp3s0") && !is_virtual("wlan0"));
    }
}
