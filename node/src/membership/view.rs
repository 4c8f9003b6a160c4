//! The membership view: which peers are in the swarm right now, and what they advertise.
//!
//! A peer enters the view with its first valid advert (gossiped, or answered directly
//! right after a connection opens) and leaves it when its last connection closes or when
//! no advert arrived for `ttl`. A peer with no protocol version in common is not admitted.
//! Pure state with an injected clock, so it is unit-tested without a network;
//! [`super::upkeep`] feeds it and turns its changes into effects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::api::PeerInfo;
use pyagent_protocol::{Advert, VersionRange};

/// A member of the view.
#[derive(Debug, Clone)]
pub struct Member {
    pub advert: Advert,
    pub last_seen: Instant,
    pub connected: bool,
    /// The protocol version spoken with it: the highest both speak.
    pub protocol_version: u16,
}

/// What an advert did to the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    /// Same peer, new process run (it restarted without us noticing it leave).
    Restarted,
    Updated,
    /// An advert older than the one already held (gossip can reorder).
    Stale,
    /// The peer speaks no protocol version this node speaks: not admitted (a member that
    /// changed to such a range leaves the view).
    Incompatible { theirs: VersionRange },
}

/// Why a peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Disconnected,
    Expired,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Expired => "advert expired",
        }
    }
}

/// The view itself.
#[derive(Debug)]
pub struct MembershipView {
    ttl: Duration,
    /// The protocol versions this node speaks.
    versions: VersionRange,
    members: HashMap<PeerId, Member>,
}

impl MembershipView {
    pub fn new(ttl: Duration, versions: VersionRange) -> Self {
        Self { ttl, versions, members: HashMap::new() }
    }

    /// The protocol versions this node speaks.
    pub fn versions(&self) -> VersionRange {
        self.versions
    }

    /// Records a validated advert from `peer`.
    pub fn observe(&mut self, peer: PeerId, advert: Advert, connected: bool, now: Instant) -> Change {
        let Some(protocol_version) = self.versions.highest_common(&advert.protocol_versions) else {
            self.members.remove(&peer);
            return Change::Incompatible { theirs: advert.protocol_versions };
        };
        match self.members.get_mut(&peer) {
            Some(m) => {
                m.last_seen = now;
                m.connected |= connected;
                m.protocol_version = protocol_version;
                // A restart (new boot id) resets seq; within a run, seq orders adverts.
                if advert.boot_id != m.advert.boot_id {
                    m.advert = advert;
                    Change::Restarted
                } else if advert.seq >= m.advert.seq {
                    m.advert = advert;
                    Change::Updated
                } else {
                    Change::Stale
                }
            }
            None => {
                self.members.insert(peer, Member { advert, last_seen: now, connected, protocol_version });
                Change::Joined
            }
        }
    }

    /// Records a connection to `peer` (it may not have advertised yet).
    pub fn mark_connected(&mut self, peer: &PeerId) {
        if let Some(m) = self.members.get_mut(peer) {
            m.connected = true;
        }
    }

    /// The last connection to `peer` closed: it leaves the view. Returns whether it was in.
    pub fn disconnected(&mut self, peer: &PeerId) -> bool {
        self.members.remove(peer).is_some()
    }

    /// Removes members whose last advert is older than the TTL; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let ttl = self.ttl;
        let gone: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > ttl)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.members.remove(p);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's PeerId (any order).
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.members.keys().copied().collect()
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer)
    }

    /// Members whose advert offers `capability`.
    pub fn capable(&self, capability: &str) -> Vec<PeerId> {
        self.members.iter().filter(|(_, m)| m.advert.capabilities.iter().any(|c| c == capability)).map(|(p, _)| *p).collect()
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Member> {
        self.members.get(peer)
    }

    /// Up to `limit` members other than `peer`, with their addresses (peer exchange).
    pub fn members_except(&self, peer: &PeerId, limit: usize) -> Vec<pyagent_protocol::rpc::MemberAddrs> {
        self.members
            .iter()
            .filter(|(p, _)| *p != peer)
            .take(limit)
            .map(|(_, m)| pyagent_protocol::rpc::MemberAddrs {
                peer_id: m.advert.peer_id.clone(),
                listen_addrs: m.advert.listen_addrs.clone(),
            })
            .collect()
    }

    /// The view as the API shows it, sorted by PeerId.
    pub fn peer_infos(&self, now: Instant) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self.members.values().map(|m| peer_info(m, now)).collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

/// One member in API form.
pub fn peer_info(m: &Member, now: Instant) -> PeerInfo {
    PeerInfo {
        peer_id: m.advert.peer_id.clone(),
        node_version: m.advert.node_version.clone(),
        protocol_version: m.protocol_version,
        connected: m.connected,
        listen_addrs: m.advert.listen_addrs.clone(),
        agents: m.advert.agents.clone(),
        capacity: m.advert.capacity.clone(),
        uptime_secs: m.advert.uptime_secs,
        last_seen_ms: now.saturating_duration_since(m.last_seen).as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::Capacity;

    fn advert(peer: &PeerId, seq: u64, boot_id: u64) -> Advert {
        Advert {
            protocol_versions: VersionRange::SUPPORTED,
            peer_id: peer.to_string(),
            node_version: "pyagent/test".into(),
            listen_addrs: vec![],
            agents: vec![],
            capabilities: vec![],
            capacity: Capacity::default(),
            uptime_secs: seq,
            boot_id,
            seq,
        }
    }

    #[test]
    fn join_update_and_stale() {
        let mut view = MembershipView::new(Duration::from_secs(7), VersionRange::SUPPORTED);
        let p = PeerId::random();
        let t0 = Instant::now();
        assert_eq!(view.observe(p, advert(&p, 1, 10), true, t0), Change::Joined);
        assert_eq!(view.observe(p, advert(&p, 2, 10), false, t0), Change::Updated);
        assert_eq!(view.observe(p, advert(&p, 1, 10), false, t0), Change::Stale);
        assert_eq!(view.get(&p).unwrap().advert.seq, 2);
        assert!(view.get(&p).unwrap().connected);
        // A restarted peer (new boot id, seq reset) is accepted.
        assert_eq!(view.observe(p, advert(&p, 1, 11), false, t0), Change::Restarted);
        assert_eq!(view.get(&p).unwrap().advert.boot_id, 11);
        assert_eq!(view.len(), 1);
    }

    #[test]
    fn expires_after_ttl_only() {
        let mut view = MembershipView::new(Duration::from_secs(7), VersionRange::SUPPORTED);
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        view.observe(a, advert(&a, 1, 1), true, t0);
        view.observe(b, advert(&b, 1, 1), true, t0 + Duration::from_secs(5));
        assert!(view.expire(t0 + Duration::from_secs(7)).is_empty());
        assert_eq!(view.expire(t0 + Duration::from_secs(8)), vec![a]);
        assert!(view.contains(&b) && !view.contains(&a));
    }

    #[test]
    fn members_except_leaves_out_the_asker_and_is_bounded() {
        let mut view = MembershipView::new(Duration::from_secs(7), VersionRange::SUPPORTED);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for p in &peers {
            view.observe(*p, advert(p, 1, 1), true, Instant::now());
        }
        let listed = view.members_except(&peers[0], 10);
        assert_eq!(listed.len(), 4);
        assert!(listed.iter().all(|m| m.peer_id != peers[0].to_string()));
        assert_eq!(view.members_except(&peers[0], 2).len(), 2);
    }

    #[test]
    fn peers_of_other_versions_join_when_a_version_is_shared() {
        let ours = VersionRange::new(2, 3).unwrap();
        let mut view = MembershipView::new(Duration::from_secs(7), ours);
        let (ahead, behind, apart) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let with = |peer: &PeerId, min, max| Advert { protocol_versions: VersionRange::new(min, max).unwrap(), ..advert(peer, 1, 1) };
        assert_eq!(view.observe(ahead, with(&ahead, 3, 5), true, t0), Change::Joined);
        assert_eq!(view.observe(behind, with(&behind, 1, 2), true, t0), Change::Joined);
        assert_eq!(view.get(&ahead).unwrap().protocol_version, 3);
        assert_eq!(view.get(&behind).unwrap().protocol_version, 2);
        let theirs = VersionRange::new(4, 4).unwrap();
        assert_eq!(view.observe(apart, with(&apart, 4, 4), true, t0), Change::Incompatible { theirs });
        assert!(!view.contains(&apart));
        // A member that moves to a range with nothing in common leaves the view.
        let mut moved = with(&ahead, 4, 4);
        moved.seq = 2;
        assert_eq!(view.observe(ahead, moved, true, t0), Change::Incompatible { theirs });
        assert!(!view.contains(&ahead));
        assert_eq!(view.peer_infos(t0).iter().map(|p| p.protocol_version).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn disconnect_removes_at_once() {
        let mut view = MembershipView::new(Duration::from_secs(7), VersionRange::SUPPORTED);
        let p = PeerId::random();
        view.observe(p, advert(&p, 1, 1), true, Instant::now());
        assert!(view.disconnected(&p));
        assert!(!view.disconnected(&p));
        assert!(view.is_empty());
    }
}
