//! Keeping the view: connections, identify, adverts, hellos, dials and redials, as a pure
//! state machine. Every method takes the time and pushes [`Effect`]s; nothing here holds
//! the `Swarm`.
//!
//! Joining is fast because a fresh connection triggers a direct hello request: the view
//! fills as soon as the Noise handshake ends, without waiting for a gossip round, and the
//! answer lists the other members, which the newcomer dials at once. Gossiped adverts then
//! keep every member fresh, including peers we are not directly connected to; an advert
//! from an unconnected peer makes us dial it (full mesh on small fleets that only share a
//! bootstrap node).
//!
//! The swarm namespace alone decides membership. A peer of another namespace (or not a
//! PyAgent node) is disconnected and not dialed again for [`FOREIGN_BAN`]; a peer of this
//! swarm that speaks no common protocol version is reported with both ranges, disconnected
//! and not admitted, but never banned: once upgraded, it joins at once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use pyagent_protocol::api::Event;
use pyagent_protocol::rpc::{HelloResponse, MAX_HELLO_MEMBERS, MemberAddrs, validate_members};
use pyagent_protocol::{Advert, IdentifyProtocol, VersionRange};

use super::view::{Change, LeaveReason, MembershipView, peer_info};
use crate::effects::{Effect, Effects};
use crate::store::KnownPeer;

/// Members lost this recently are redialed (a network blip must not split the swarm).
pub const LOST_MEMBER_REDIAL_FOR: Duration = Duration::from_secs(600);
/// How long to wait before dialing the same peer again on an advert or discovery.
pub const REDIAL_BACKOFF: Duration = Duration::from_secs(4);
/// How long a peer of another swarm namespace is not dialed again.
pub const FOREIGN_BAN: Duration = Duration::from_secs(300);
/// Least time between two adverts triggered by new gossip neighbours.
pub const EAGER_ADVERT_GAP: Duration = Duration::from_millis(300);
/// Known peers older than this are not redialed at start.
const KNOWN_PEER_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most known peers redialed at start.
const KNOWN_PEER_REDIALS: usize = 64;
/// Most peers remembered as banned or incompatible (a flood of fresh PeerIds cannot grow
/// these maps without bound).
const MAX_TRACKED_PEERS: usize = 4096;

/// What membership needs to know about this node.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub me: PeerId,
    /// Tag of the swarm namespace ([`pyagent_protocol::SwarmNamespace::tag`]).
    pub namespace_tag: String,
    pub versions: VersionRange,
    pub bootstrap: Vec<Multiaddr>,
    pub peer_ttl: Duration,
}

/// The membership state machine.
#[derive(Debug)]
pub struct Membership {
    config: MembershipConfig,
    view: MembershipView,
    connected: HashSet<PeerId>,
    seq: u64,
    last_publish: Option<Instant>,
    /// A new gossip neighbour arrived within [`EAGER_ADVERT_GAP`] of the last advert.
    advert_pending: bool,
    last_dial: HashMap<PeerId, Instant>,
    foreign: HashMap<PeerId, Instant>,
    /// Peers of this swarm with no common protocol version, and their range (reported once).
    incompatible: HashMap<PeerId, VersionRange>,
    /// Which peer answered at each bootstrap address without a `/p2p/` part.
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    /// Advertised addresses of members, and when each was last seen: lost members are
    /// redialed for [`LOST_MEMBER_REDIAL_FOR`].
    recent: HashMap<PeerId, (Vec<Multiaddr>, Instant)>,
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

fn parse_addrs(addrs: &[String]) -> Vec<Multiaddr> {
    addrs.iter().filter_map(|a| a.parse().ok()).collect()
}

impl Membership {
    pub fn new(config: MembershipConfig) -> Self {
        Self {
            view: MembershipView::new(config.peer_ttl, config.versions),
            config,
            connected: HashSet::new(),
            seq: 0,
            last_publish: None,
            advert_pending: false,
            last_dial: HashMap::new(),
            foreign: HashMap::new(),
            incompatible: HashMap::new(),
            bootstrap_peers: HashMap::new(),
            recent: HashMap::new(),
        }
    }

    pub fn view(&self) -> &MembershipView {
        &self.view
    }

    pub fn versions(&self) -> VersionRange {
        self.config.versions
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.contains(peer)
    }

    pub fn connected_count(&self) -> usize {
        self.connected.len()
    }

    /// The sequence number of the next advert of this run.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The periodic advert.
    pub fn on_advert_tick(&mut self, now: Instant, fx: &mut Effects) {
        self.last_publish = Some(now);
        self.advert_pending = false;
        fx.push(Effect::PublishAdvert);
    }

    /// What this node advertises changed in a way peers place by (its KV pool's blocks):
    /// publish now, or soon if an advert just went out (at most one per
    /// [`EAGER_ADVERT_GAP`]).
    pub fn on_capacity_changed(&mut self, now: Instant, fx: &mut Effects) {
        self.on_subscribed(now, fx);
    }

    /// A peer subscribed to the advert topic: publish now, or soon if an advert just went
    /// out, so everyone reachable learns about a newcomer in one gossip hop.
    pub fn on_subscribed(&mut self, now: Instant, fx: &mut Effects) {
        if self.last_publish.is_some_and(|t| now.saturating_duration_since(t) < EAGER_ADVERT_GAP) {
            self.advert_pending = true;
        } else {
            self.on_advert_tick(now, fx);
        }
    }

    /// A connection opened. `dialed`: the address we dialed, when we did; `first`: it is
    /// the only connection to that peer.
    pub fn on_connected(&mut self, peer: PeerId, dialed: Option<&Multiaddr>, first: bool, fx: &mut Effects) {
        self.connected.insert(peer);
        if let Some(address) = dialed
            && let Some(bootstrap) = self.config.bootstrap.iter().find(|b| &without_peer(b) == address)
        {
            self.bootstrap_peers.insert(bootstrap.clone(), peer);
        }
        self.view.mark_connected(&peer);
        // Also when a stale connection of a dead run of this peer still lingers.
        if first || !self.view.contains(&peer) {
            fx.push(Effect::Hello(peer));
        }
    }

    /// The last connection to `peer` closed.
    pub fn on_disconnected(&mut self, peer: PeerId, fx: &mut Effects) {
        self.connected.remove(&peer);
        // The backoff throttles failing dials; reconnecting to a peer that was just
        // connected may start at once.
        self.last_dial.remove(&peer);
        if self.view.disconnected(&peer) {
            leave(peer, LeaveReason::Disconnected, fx);
        }
    }

    /// What the peer's identify said: its protocol string and listen addresses.
    pub fn on_identify(&mut self, peer: PeerId, protocol: &str, listen_addrs: Vec<Multiaddr>, now: Instant, fx: &mut Effects) {
        match IdentifyProtocol::parse(protocol) {
            IdentifyProtocol::Pyagent { tag, versions } if tag == self.config.namespace_tag => {
                if self.config.versions.highest_common(&versions).is_none() {
                    return self.incompatible(peer, versions, fx);
                }
                self.incompatible.remove(&peer);
            }
            _ => {
                tracing::info!(%peer, theirs = %protocol, "peer belongs to another swarm; disconnecting");
                if self.foreign.len() < MAX_TRACKED_PEERS {
                    self.foreign.insert(peer, now + FOREIGN_BAN);
                }
                return fx.push(Effect::Disconnect(peer));
            }
        }
        let addrs: Vec<Multiaddr> = listen_addrs
            .into_iter()
            .filter(|a| !crate::p2p::addrs::is_unspecified(a))
            .take(pyagent_protocol::advert::MAX_LISTEN_ADDRS)
            .collect();
        fx.push(Effect::AddAddresses { peer, addrs: addrs.clone() });
        fx.push(Effect::RememberPeer { peer, addrs });
    }

    fn incompatible(&mut self, peer: PeerId, theirs: VersionRange, fx: &mut Effects) {
        let ours = self.config.versions;
        if self.incompatible.get(&peer) != Some(&theirs) {
            tracing::warn!(%peer, %theirs, %ours, "peer of this swarm speaks protocol versions {theirs}, this node speaks {ours}: no common version, not admitted");
            if self.incompatible.len() >= MAX_TRACKED_PEERS {
                self.incompatible.clear();
            }
            self.incompatible.insert(peer, theirs);
        }
        fx.push(Effect::Disconnect(peer));
    }

    /// A validated advert of `peer` (gossiped, or in a hello answer).
    pub fn on_advert(&mut self, peer: PeerId, advert: Advert, now: Instant, fx: &mut Effects) {
        if peer == self.config.me {
            return;
        }
        let connected = self.is_connected(&peer);
        let dial_addrs = parse_addrs(&advert.listen_addrs);
        let change = self.view.observe(peer, advert, connected, now);
        match change {
            Change::Incompatible { theirs } => return self.incompatible(peer, theirs, fx),
            Change::Restarted if connected => {
                // We missed its death, so connections to the old run may linger, and libp2p
                // keeps per-peer state (gossip subscriptions, request routing) on them. Start
                // afresh: drop every connection; the lost-member redial reconnects.
                tracing::info!(%peer, "peer restarted behind our back; reconnecting");
                self.recent.insert(peer, (dial_addrs, now));
                return fx.push(Effect::Disconnect(peer));
            }
            Change::Joined | Change::Restarted => {
                if let Some(member) = self.view.get(&peer) {
                    let info = peer_info(member, now);
                    let restarted = change == Change::Restarted;
                    tracing::info!(%peer, restarted, agents = ?info.agents, capacity = %info.capacity.summary(), "peer joined");
                    fx.push(Effect::Emit(Event::PeerJoined { peer: info }));
                }
            }
            Change::Updated | Change::Stale => {}
        }
        self.recent.insert(peer, (dial_addrs.clone(), now));
        if !connected {
            self.dial(peer, dial_addrs, now, fx);
        }
    }

    /// A hello answer: the peer's advert, and the members it knows (peer exchange).
    pub fn on_hello(&mut self, peer: PeerId, hello: HelloResponse, now: Instant, fx: &mut Effects) {
        if let Err(e) = hello.advert.validate(&peer.to_string()).and_then(|()| validate_members(&hello.members)) {
            tracing::warn!(%peer, "rejected hello: {e}");
            return;
        }
        self.on_advert(peer, *hello.advert, now, fx);
        for member in hello.members {
            let Ok(id) = member.peer_id.parse::<PeerId>() else { continue };
            if !self.view.contains(&id) {
                self.dial(id, parse_addrs(&member.listen_addrs), now, fx);
            }
        }
    }

    /// The members listed in a hello answer to `peer`.
    pub fn hello_members(&self, peer: &PeerId) -> Vec<MemberAddrs> {
        self.view.members_except(peer, MAX_HELLO_MEMBERS)
    }

    /// Dials `peer` unless it is us, connected, recently tried, or of another swarm.
    pub fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant, fx: &mut Effects) {
        if peer == self.config.me || addrs.is_empty() || self.is_connected(&peer) {
            return;
        }
        if self.foreign.get(&peer).is_some_and(|until| *until > now) {
            return;
        }
        if self.last_dial.get(&peer).is_some_and(|t| now.saturating_duration_since(*t) < REDIAL_BACKOFF) {
            return;
        }
        self.last_dial.insert(peer, now);
        fx.push(Effect::AddAddresses { peer, addrs: addrs.clone() });
        fx.push(Effect::Dial { peer, addrs });
    }

    /// Every 250 ms: members silent for the TTL leave; a deferred advert goes out.
    pub fn on_sweep(&mut self, now: Instant, fx: &mut Effects) {
        for peer in self.view.expire(now) {
            // Silent for the TTL: whatever connection remains is dead or useless.
            fx.push(Effect::Disconnect(peer));
            leave(peer, LeaveReason::Expired, fx);
        }
        if self.advert_pending {
            self.on_subscribed(now, fx);
        }
        self.foreign.retain(|_, until| *until > now);
        self.last_dial.retain(|_, t| now.saturating_duration_since(*t) < REDIAL_BACKOFF);
    }

    /// Every few seconds: bootstrap addresses and recently lost members are redialed.
    pub fn on_redial_tick(&mut self, now: Instant, fx: &mut Effects) {
        self.redial_bootstrap(fx);
        self.recent.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < LOST_MEMBER_REDIAL_FOR);
        let lost: Vec<(PeerId, Vec<Multiaddr>)> = self
            .recent
            .iter()
            .filter(|(peer, _)| !self.connected.contains(*peer))
            .map(|(peer, (addrs, _))| (*peer, addrs.clone()))
            .collect();
        for (peer, addrs) in lost {
            self.dial(peer, addrs, now, fx);
        }
    }

    /// Dials every bootstrap address whose peer is not connected.
    pub fn redial_bootstrap(&mut self, fx: &mut Effects) {
        for addr in &self.config.bootstrap {
            let known = peer_of(addr).or_else(|| self.bootstrap_peers.get(addr).copied());
            if known.is_some_and(|p| self.connected.contains(&p)) {
                continue;
            }
            fx.push(Effect::DialAddress { peer: known, addr: addr.clone() });
        }
    }

    /// At start: redial the most recently seen known peers (from the store).
    pub fn redial_known(&mut self, known: Vec<(PeerId, KnownPeer)>, now_unix_ms: u64, now: Instant, fx: &mut Effects) {
        let mut recent: Vec<_> =
            known.into_iter().filter(|(_, k)| now_unix_ms.saturating_sub(k.last_seen_unix_ms) < KNOWN_PEER_MAX_AGE_MS).collect();
        recent.sort_by_key(|(_, k)| std::cmp::Reverse(k.last_seen_unix_ms));
        recent.truncate(KNOWN_PEER_REDIALS);
        tracing::debug!(count = recent.len(), "redialing known peers");
        for (peer, k) in recent {
            self.dial(peer, parse_addrs(&k.addrs), now, fx);
        }
    }
}

fn leave(peer: PeerId, reason: LeaveReason, fx: &mut Effects) {
    tracing::info!(%peer, reason = reason.as_str(), "peer left");
    fx.push(Effect::Emit(Event::PeerLeft { peer_id: peer.to_string(), reason: reason.as_str().to_owned() }));
}

#[cfg(test)]
#[path = "upkeep_tests.rs"]
mod tests;
