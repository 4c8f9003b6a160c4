//! The task that owns the libp2p `Swarm`.
//!
//! It reacts to four sources: commands from [`super::NodeClient`], swarm events, agents'
//! finished executions, and timers (advert publication, view expiry, bootstrap redials,
//! task leases). Membership, task and vote state live here ([`crate::tasks::TaskEngine`],
//! [`crate::votes::VoteBook`]), so nothing needs a lock.
//!
//! Joining is fast because a fresh connection triggers a direct `Hello` request: the
//! view fills as soon as the Noise handshake ends, without waiting for a gossip round,
//! and the answer lists the other members, which the newcomer dials at once.
//! Gossiped adverts then keep every member fresh, including peers we are not directly
//! connected to; an advert from an unconnected peer makes us dial it (full mesh on small
//! fleets that only share a bootstrap node).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, request_response};
use pyagent_engine::CapacityProbe;
use pyagent_protocol::advert::MAX_ADVERT_BYTES;
use pyagent_protocol::api::{Event, StatusResult};
use pyagent_protocol::rpc::{MAX_HELLO_MEMBERS, MemberAddrs, RpcRequest, RpcResponse, validate_members};
use pyagent_protocol::task::{MAX_TASK_MESSAGE_BYTES, TaskMessage, TaskSpec};
use pyagent_protocol::vote::VoteMessage;
use pyagent_protocol::{Advert, Capacity, PROTOCOL_VERSION, SwarmNamespace};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::behaviour::{Behaviour, BehaviourEvent, NODE_VERSION};
use super::client::Command;
use crate::membership::{Change, LeaveReason, MembershipView, peer_info};
use crate::store::Store;
use crate::tasks::{Executed, TaskEngine};
use crate::votes::VoteBook;

/// How often bootstrap addresses and lost members are redialed while disconnected.
const BOOTSTRAP_REDIAL: Duration = Duration::from_secs(5);
/// Members lost this recently are redialed (a network blip must not split the swarm).
const LOST_MEMBER_REDIAL_FOR: Duration = Duration::from_secs(600);
/// How long to wait before dialing the same peer again on an advert or discovery.
const REDIAL_BACKOFF: Duration = Duration::from_secs(10);
/// How long a peer of another swarm namespace is not dialed again.
const FOREIGN_BAN: Duration = Duration::from_secs(300);
/// How often the expiry sweep (and a deferred advert) runs.
const SWEEP: Duration = Duration::from_millis(250);
/// Least time between two adverts triggered by new gossip neighbours.
const EAGER_ADVERT_GAP: Duration = Duration::from_millis(300);
/// Known peers older than this are not redialed at start.
const KNOWN_PEER_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most known peers redialed at start.
const KNOWN_PEER_REDIALS: usize = 64;

/// Static facts about the node that status replies and adverts carry.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub namespace: SwarmNamespace,
    pub private: bool,
    pub quic: bool,
    pub mdns: bool,
    pub agents: Vec<String>,
    pub data_dir: PathBuf,
    pub bootstrap: Vec<Multiaddr>,
    pub advert_interval: Duration,
    pub peer_ttl: Duration,
    /// Random per process run; a new value tells peers this node restarted.
    pub boot_id: u64,
}

/// The swarm task's state.
pub struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    facts: NodeFacts,
    store: Arc<Store>,
    probe: CapacityProbe,
    capacity: Capacity,
    view: MembershipView,
    topic: gossipsub::IdentTopic,
    started: Instant,
    seq: u64,
    last_publish: Option<Instant>,
    /// A new gossip neighbour arrived within [`EAGER_ADVERT_GAP`] of the last advert.
    advert_pending: bool,
    last_dial: HashMap<PeerId, Instant>,
    foreign: HashMap<PeerId, Instant>,
    /// Which peer answered at each bootstrap address without a `/p2p/` part.
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    /// Advertised addresses of members, and when each was last seen: lost members are
    /// redialed for [`LOST_MEMBER_REDIAL_FOR`].
    recent: HashMap<PeerId, (Vec<Multiaddr>, Instant)>,
    /// Tasks: submitted here, or executed here.
    tasks: TaskEngine,
    executed: mpsc::Receiver<Executed>,
    /// Proposals and ballots.
    votes: VoteBook,
}

impl std::fmt::Debug for SwarmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmTask").field("peer_id", self.swarm.local_peer_id()).finish_non_exhaustive()
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => IpAddr::V4(ip).is_unspecified(),
        Protocol::Ip6(ip) => IpAddr::V6(ip).is_unspecified(),
        _ => false,
    })
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

impl SwarmTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<Event>,
        facts: NodeFacts,
        store: Arc<Store>,
        mut probe: CapacityProbe,
        tasks: TaskEngine,
        executed: mpsc::Receiver<Executed>,
        votes: VoteBook,
    ) -> Result<Self, gossipsub::SubscriptionError> {
        let mut swarm = swarm;
        let topic = gossipsub::IdentTopic::new(facts.namespace.advert_topic());
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        swarm.behaviour_mut().gossipsub.subscribe(tasks.topic())?;
        swarm.behaviour_mut().gossipsub.subscribe(votes.topic())?;
        let capacity = probe.probe();
        Ok(Self {
            swarm,
            commands,
            events,
            view: MembershipView::new(facts.peer_ttl),
            facts,
            store,
            probe,
            capacity,
            topic,
            started: Instant::now(),
            seq: 0,
            last_publish: None,
            advert_pending: false,
            last_dial: HashMap::new(),
            foreign: HashMap::new(),
            bootstrap_peers: HashMap::new(),
            recent: HashMap::new(),
            tasks,
            executed,
            votes,
        })
    }

    /// The capacity summary for mDNS TXT.
    pub fn capacity_summary(&self) -> String {
        self.capacity.summary()
    }

    /// Current listen addresses.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Addresses worth giving to peers: loopback only when there is nothing else.
    fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let all: Vec<Multiaddr> = self.swarm.listeners().filter(|a| !is_unspecified(a)).cloned().collect();
        let routable: Vec<Multiaddr> = all.iter().filter(|a| !is_loopback(a)).cloned().collect();
        if routable.is_empty() { all } else { routable }
    }

    fn advert(&mut self) -> Advert {
        self.seq += 1;
        Advert {
            protocol_version: PROTOCOL_VERSION,
            peer_id: self.swarm.local_peer_id().to_string(),
            node_version: NODE_VERSION.to_owned(),
            listen_addrs: self.advertised_addrs().iter().map(ToString::to_string).collect(),
            agents: self.hosted_agents(),
            capabilities: self.tasks.capabilities(),
            capacity: self.capacity.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            boot_id: self.facts.boot_id,
            seq: self.seq,
        }
    }

    /// Built-in agents, then live external ones.
    fn hosted_agents(&self) -> Vec<String> {
        let mut agents = self.facts.agents.clone();
        agents.extend(self.tasks.external_agents());
        agents.truncate(pyagent_protocol::advert::MAX_AGENTS);
        agents
    }

    /// Publishes now, or soon if an advert just went out: called when a peer subscribes to
    /// the advert topic, so everyone reachable learns about a newcomer in one gossip hop
    /// instead of waiting for the next periodic advert.
    fn publish_advert_soon(&mut self) {
        if self.last_publish.is_some_and(|t| t.elapsed() < EAGER_ADVERT_GAP) {
            self.advert_pending = true;
        } else {
            self.publish_advert();
        }
    }

    fn publish_advert(&mut self) {
        self.last_publish = Some(Instant::now());
        self.advert_pending = false;
        self.capacity = self.probe.probe();
        let advert = self.advert();
        let bytes = match pyagent_protocol::encode(&advert) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode own advert: {e}");
                return;
            }
        };
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!("advert not published: {e}"),
        }
    }

    fn status(&self) -> StatusResult {
        StatusResult {
            peer_id: self.swarm.local_peer_id().to_string(),
            node_version: NODE_VERSION.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            swarm: self.facts.namespace.name().to_owned(),
            private: self.facts.private,
            quic: self.facts.quic,
            mdns: self.facts.mdns,
            listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
            uptime_secs: self.started.elapsed().as_secs(),
            connected_peers: self.swarm.connected_peers().count(),
            members: self.view.len(),
            agents: self.hosted_agents(),
            capabilities: self.tasks.capabilities(),
            capacity: self.capacity.clone(),
            data_dir: self.facts.data_dir.display().to_string(),
            tasks: self.tasks.counters(),
        }
    }

    fn emit(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn leave(&mut self, peer: PeerId, reason: LeaveReason) {
        tracing::info!(%peer, reason = reason.as_str(), "peer left");
        self.emit(Event::PeerLeft { peer_id: peer.to_string(), reason: reason.as_str().to_owned() });
    }

    fn observe(&mut self, peer: PeerId, advert: Advert) {
        let connected = self.swarm.is_connected(&peer);
        let dial_addrs: Vec<Multiaddr> = advert.listen_addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.recent.insert(peer, (dial_addrs.clone(), Instant::now()));
        let change = self.view.observe(peer, advert, connected, Instant::now());
        if change == Change::Restarted && connected {
            // We missed its death, so connections to the old run may linger, and libp2p
            // keeps per-peer state (gossip subscriptions, request routing) on them. Start
            // afresh: drop every connection; the lost-member redial reconnects.
            tracing::info!(%peer, "peer restarted behind our back; reconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if matches!(change, Change::Joined | Change::Restarted)
            && let Some(member) = self.view.get(&peer)
        {
            let info = peer_info(member, Instant::now());
            let restarted = change == Change::Restarted;
            tracing::info!(%peer, restarted, agents = ?info.agents, capacity = %info.capacity.summary(), "peer joined");
            self.emit(Event::PeerJoined { peer: info });
        }
        if !connected {
            self.dial(peer, dial_addrs);
        }
    }

    /// Dials `peer` unless connected, recently tried, or of another swarm.
    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id() || addrs.is_empty() || self.swarm.is_connected(&peer) {
            return;
        }
        let now = Instant::now();
        if self.foreign.get(&peer).is_some_and(|until| *until > now) {
            return;
        }
        if self.last_dial.get(&peer).is_some_and(|t| now.duration_since(*t) < REDIAL_BACKOFF) {
            return;
        }
        self.last_dial.insert(peer, now);
        for addr in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "dial not started: {e}");
        }
    }

    fn redial_bootstrap(&mut self) {
        for addr in self.facts.bootstrap.clone() {
            let known = peer_of(&addr).or_else(|| self.bootstrap_peers.get(&addr).copied());
            if known.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            let opts = match known {
                Some(peer) => DialOpts::peer_id(peer).addresses(vec![addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%addr, "bootstrap dial not started: {e}");
            }
        }
    }

    /// Redials members lost within [`LOST_MEMBER_REDIAL_FOR`] that are not connected.
    fn redial_lost_members(&mut self) {
        let now = Instant::now();
        self.recent.retain(|_, (_, seen)| now.duration_since(*seen) < LOST_MEMBER_REDIAL_FOR);
        let lost: Vec<(PeerId, Vec<Multiaddr>)> = self
            .recent
            .iter()
            .filter(|(peer, _)| !self.swarm.is_connected(peer))
            .map(|(peer, (addrs, _))| (*peer, addrs.clone()))
            .collect();
        for (peer, addrs) in lost {
            self.dial(peer, addrs);
        }
    }

    fn redial_known_peers(&mut self) {
        let known = match self.store.known_peers() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("cannot read known peers: {e}");
                return;
            }
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut recent: Vec<_> = known
            .into_iter()
            .filter(|(_, k)| now_ms.saturating_sub(k.last_seen_unix_ms) < KNOWN_PEER_MAX_AGE_MS)
            .collect();
        recent.sort_by_key(|(_, k)| std::cmp::Reverse(k.last_seen_unix_ms));
        recent.truncate(KNOWN_PEER_REDIALS);
        tracing::debug!(count = recent.len(), "redialing known peers");
        for (peer, k) in recent {
            let addrs = k.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            self.dial(peer, addrs);
        }
    }

    /// Runs until a shutdown command or until every client is dropped.
    pub async fn run(mut self) {
        self.redial_known_peers();
        self.redial_bootstrap();
        let mut advert_tick = tokio::time::interval(self.facts.advert_interval);
        let mut sweep_tick = tokio::time::interval(SWEEP);
        let mut bootstrap_tick = tokio::time::interval(BOOTSTRAP_REDIAL);
        let mut kad_tick = tokio::time::interval(Duration::from_secs(60));
        for t in [&mut advert_tick, &mut sweep_tick, &mut bootstrap_tick, &mut kad_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let shutdown_reply: Option<oneshot::Sender<()>> = loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => if let Some(reply) = self.on_command(command) {
                        break Some(reply);
                    },
                    None => break None,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(executed) = self.executed.recv() => self.tasks.on_executed(&mut self.swarm, executed),
                _ = advert_tick.tick() => self.publish_advert(),
                _ = sweep_tick.tick() => {
                    for peer in self.view.expire(Instant::now()) {
                        // Silent for the TTL: whatever connection remains is dead or useless.
                        let _ = self.swarm.disconnect_peer_id(peer);
                        self.leave(peer, LeaveReason::Expired);
                    }
                    if self.advert_pending {
                        self.publish_advert_soon();
                    }
                    self.tasks.tick(&mut self.swarm, &self.view);
                    let now = Instant::now();
                    self.foreign.retain(|_, until| *until > now);
                    self.last_dial.retain(|_, t| now.duration_since(*t) < REDIAL_BACKOFF);
                }
                _ = bootstrap_tick.tick() => {
                    self.redial_bootstrap();
                    self.redial_lost_members();
                }
                _ = kad_tick.tick() => {
                    if self.swarm.connected_peers().next().is_some() {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
        };
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        drop(self.swarm);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
        tracing::debug!("swarm task stopped");
    }

    /// Handles a command; a shutdown hands its reply back to the loop, which stops.
    fn on_command(&mut self, command: Command) -> Option<oneshot::Sender<()>> {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.view.peer_infos(Instant::now()));
            }
            Command::Dial { peer, addrs } => self.dial(peer, addrs),
            Command::SubmitTask { capability, files, lease_ms, reply } => {
                let spec = TaskSpec {
                    capability,
                    files,
                    requester: self.swarm.local_peer_id().to_string(),
                    created_unix_ms: crate::store::now_unix_ms(),
                    nonce: crate::node::random_boot_id(),
                    lease_ms,
                };
                let outcome = self.tasks.submit(&mut self.swarm, &self.view, spec).map_err(|e| e.to_string());
                let _ = reply.send(outcome);
            }
            Command::TaskReports { ids, reply } => {
                let _ = reply.send(self.tasks.reports(&ids));
            }
            Command::Propose { spec, reply } => {
                let _ = reply.send(self.votes.propose(&mut self.swarm, spec).map_err(|e| e.to_string()));
            }
            Command::Ballot { proposal, choice, reply } => {
                let _ = reply.send(self.votes.cast(&mut self.swarm, proposal, choice, None).map_err(|e| e.to_string()));
            }
            Command::Tally { proposal, reply } => {
                let tally = self.votes.tally(&proposal).map_err(|e| e.to_string());
                if let Ok(t) = &tally
                    && t["final"] == true
                {
                    self.votes.record_tally(&proposal, t["winner"].as_str().map(str::to_owned));
                }
                let _ = reply.send(tally);
            }
            Command::Shutdown(reply) => return Some(reply),
        }
        None
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
                if let ConnectedPoint::Dialer { address, .. } = &endpoint
                    && let Some(bootstrap) = self.facts.bootstrap.iter().find(|b| {
                        let mut b = (*b).clone();
                        if matches!(b.iter().last(), Some(Protocol::P2p(_))) {
                            b.pop();
                        }
                        &b == address
                    })
                {
                    self.bootstrap_peers.insert(bootstrap.clone(), peer_id);
                }
                self.view.mark_connected(&peer_id);
                // Also when a stale connection of a dead run of this peer still lingers.
                if num_established.get() == 1 || !self.view.contains(&peer_id) {
                    self.swarm.behaviour_mut().rpc.send_request(&peer_id, RpcRequest::Hello);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                tracing::debug!(%peer_id, ?cause, "disconnected");
                // The backoff throttles failing dials; reconnecting to a peer that was just
                // connected may start at once.
                self.last_dial.remove(&peer_id);
                if self.view.disconnected(&peer_id) {
                    self.leave(peer_id, LeaveReason::Disconnected);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                // A node with another swarm key (or none) ends up here.
                tracing::debug!(%send_back_addr, "incoming connection refused: {error}");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => self.on_identify(peer_id, info),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let verdict = self.on_gossip(&message);
                if let Err(reason) = &verdict {
                    tracing::warn!(source = ?message.source, via = %propagation_source, "rejected gossip: {reason}");
                }
                let acceptance = if verdict.is_ok() {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request: RpcRequest::GetBlobs { ids }, channel, .. } => {
                    let response = self.tasks.blobs_for(&ids);
                    if self.swarm.behaviour_mut().rpc.send_response(channel, response).is_err() {
                        tracing::debug!(%peer, "blobs not sent: stream closed");
                    }
                }
                request_response::Message::Request { request: RpcRequest::TaskResult { task, outcome }, channel, .. } => {
                    self.tasks.accept_result(&mut self.swarm, task, peer, outcome);
                    let _ = self.swarm.behaviour_mut().rpc.send_response(channel, RpcResponse::Ack);
                }
                request_response::Message::Request { request: RpcRequest::Hello, channel, .. } => {
                    let advert = Box::new(self.advert());
                    let members = self.view.members_except(&peer, MAX_HELLO_MEMBERS);
                    if self.swarm.behaviour_mut().rpc.send_response(channel, RpcResponse::Hello { advert, members }).is_err() {
                        tracing::debug!(%peer, "hello response not sent: stream closed");
                    }
                }
                request_response::Message::Response { response, request_id } => match response {
                    RpcResponse::Hello { advert, members } => self.on_hello(peer, *advert, members),
                    other => self.tasks.on_response(&mut self.swarm, request_id, peer, other),
                },
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. }) if topic == self.topic.hash() => {
                self.publish_advert_soon();
            }
            BehaviourEvent::Rpc(request_response::Event::OutboundFailure { peer, error, request_id, .. }) => {
                tracing::debug!(%peer, "request failed: {error}");
                self.tasks.on_request_failed(request_id, &error.to_string());
            }
            BehaviourEvent::Rpc(request_response::Event::InboundFailure { peer, error, .. }) => {
                tracing::debug!(%peer, "inbound request failed: {error}");
            }
            _ => {}
        }
    }

    /// A hello answer: the peer's advert, and the members it knows (peer exchange).
    fn on_hello(&mut self, peer: PeerId, advert: Advert, members: Vec<MemberAddrs>) {
        if let Err(e) = advert.validate(&peer.to_string()).and_then(|()| validate_members(&members)) {
            tracing::warn!(%peer, "rejected hello: {e}");
            return;
        }
        self.observe(peer, advert);
        for member in members {
            let Ok(id) = member.peer_id.parse::<PeerId>() else { continue };
            if self.view.contains(&id) {
                continue;
            }
            let addrs = member.listen_addrs.iter().filter_map(|a| a.parse().ok()).collect();
            self.dial(id, addrs);
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        let expected = self.facts.namespace.identify_protocol();
        if info.protocol_version != expected {
            tracing::info!(%peer, theirs = %info.protocol_version, ours = %expected, "peer belongs to another swarm; disconnecting");
            self.foreign.insert(peer, Instant::now() + FOREIGN_BAN);
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        let addrs: Vec<Multiaddr> =
            info.listen_addrs.into_iter().filter(|a| !is_unspecified(a)).take(pyagent_protocol::advert::MAX_LISTEN_ADDRS).collect();
        for addr in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = self.store.remember_peer(&peer, &addrs) {
            tracing::warn!(%peer, "cannot remember peer: {e}");
        }
    }

    fn on_gossip(&mut self, message: &gossipsub::Message) -> Result<(), String> {
        let source = message.source.ok_or("unsigned message")?;
        if message.topic == self.votes.topic().hash() {
            let vote: VoteMessage =
                pyagent_protocol::decode(&message.data, MAX_TASK_MESSAGE_BYTES).map_err(|e| format!("vote message: {e}"))?;
            vote.validate(&source.to_string()).map_err(|e| format!("vote message: {e}"))?;
            return self.votes.on_message(&mut self.swarm, vote).map_err(|e| format!("vote message: {e}"));
        }
        if message.topic == self.tasks.topic().hash() {
            let task: TaskMessage =
                pyagent_protocol::decode(&message.data, MAX_TASK_MESSAGE_BYTES).map_err(|e| format!("task message: {e}"))?;
            task.validate(&source.to_string()).map_err(|e| format!("task message: {e}"))?;
            if source != *self.swarm.local_peer_id() {
                self.tasks.on_message(&mut self.swarm, &self.view, source, task);
            }
            return Ok(());
        }
        if message.topic != self.topic.hash() {
            return Err(format!("unexpected topic {}", message.topic));
        }
        let advert: Advert = pyagent_protocol::decode(&message.data, MAX_ADVERT_BYTES).map_err(|e| e.to_string())?;
        advert.validate(&source.to_string()).map_err(|e| e.to_string())?;
        if source != *self.swarm.local_peer_id() {
            self.observe(source, advert);
        }
        Ok(())
    }
}
