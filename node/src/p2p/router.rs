//! The task that owns the libp2p `Swarm` and only routes: swarm events, commands from
//! [`super::NodeClient`], finished executions and timers go into the state machines
//! ([`Membership`], [`TaskEngine`], [`VoteBook`]) with the time; the [`Effect`]s they
//! return are carried out in [`super::apply`]. Each request-response protocol has its
//! own behaviour and its own handler here, so every answer is routed by its type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, gossipsub, identify};
use pyagent_engine::CapacityProbe;
use pyagent_protocol::advert::MAX_ADVERT_BYTES;
use pyagent_protocol::api::Event;
use pyagent_protocol::rpc::{BlobsResponse, GetBlobs, HelloRequest, HelloResponse, ResultAck, TaskResult};
use pyagent_protocol::task::{MAX_TASK_MESSAGE_BYTES, TaskId, TaskMessage};
use pyagent_protocol::vote::VoteMessage;
use pyagent_protocol::{Advert, Capacity};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::client::Command;
use super::facts::NodeFacts;
use crate::effects::Effects;
use crate::membership::Membership;
use crate::store::Store;
use crate::tasks::{Executed, TaskEngine, TaskRunner};
use crate::votes::VoteBook;

/// How often the expiry sweep (and a deferred advert, and task upkeep) runs.
const SWEEP: Duration = Duration::from_millis(250);
/// How often bootstrap addresses and lost members are redialed while disconnected.
const REDIAL: Duration = Duration::from_secs(2);
/// How often the DHT refreshes its routing table.
const KAD_BOOTSTRAP: Duration = Duration::from_secs(60);

/// The gossip topics of the node's swarm.
#[derive(Debug, Clone)]
pub struct Topics {
    pub adverts: gossipsub::IdentTopic,
    pub tasks: gossipsub::IdentTopic,
    pub votes: gossipsub::IdentTopic,
}

/// The channels the router serves.
#[derive(Debug)]
pub struct Channels {
    pub commands: mpsc::Receiver<Command>,
    pub executed: mpsc::Receiver<Executed>,
    pub events: broadcast::Sender<Event>,
    /// Bumped whenever a task this node submitted gets its outcome.
    pub results: watch::Sender<u64>,
    /// Requests and answers of the history actor, to carry out on the swarm.
    pub history: mpsc::Receiver<crate::history::ToRouter>,
}

/// The domain state machines the router feeds.
#[derive(Debug)]
pub struct Domain {
    pub membership: Membership,
    pub tasks: TaskEngine,
    pub votes: VoteBook,
    pub runner: TaskRunner,
    /// The history actor (the router forwards its peers' requests and its answers).
    pub history: crate::history::History,
}

/// The router's state.
pub struct Router {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) channels: Channels,
    pub(super) topics: Topics,
    pub(super) facts: NodeFacts,
    pub(super) store: Arc<Store>,
    pub(super) probe: CapacityProbe,
    pub(super) capacity: Capacity,
    pub(super) started: Instant,
    pub(super) domain: Domain,
    /// Outstanding blob fetches and result deliveries, by request.
    pub(super) fetches: HashMap<OutboundRequestId, TaskId>,
    pub(super) deliveries: HashMap<OutboundRequestId, TaskId>,
    /// History: outbound requests by id, inbound ones waiting for the actor's answer,
    /// and the members last told to the actor.
    pub(super) history_requests: HashMap<OutboundRequestId, u64>,
    pub(super) history_channels: HashMap<u64, request_response::ResponseChannel<pyagent_protocol::history::HistoryResponse>>,
    pub(super) next_history_channel: u64,
    pub(super) history_members: Vec<PeerId>,
    /// The IP address of the latest connection to each connected peer (the KV bulk path
    /// is reached there).
    pub(super) peer_ips: HashMap<PeerId, std::net::IpAddr>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("peer_id", self.swarm.local_peer_id()).finish_non_exhaustive()
    }
}

impl Router {
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        channels: Channels,
        topics: Topics,
        facts: NodeFacts,
        store: Arc<Store>,
        mut probe: CapacityProbe,
        domain: Domain,
    ) -> Result<Self, gossipsub::SubscriptionError> {
        for topic in [&topics.adverts, &topics.tasks, &topics.votes] {
            swarm.behaviour_mut().gossipsub.subscribe(topic)?;
        }
        let capacity = probe.probe();
        Ok(Self {
            swarm,
            channels,
            topics,
            facts,
            store,
            probe,
            capacity,
            started: Instant::now(),
            domain,
            fetches: HashMap::new(),
            deliveries: HashMap::new(),
            history_requests: HashMap::new(),
            history_channels: HashMap::new(),
            next_history_channel: 0,
            history_members: Vec::new(),
            peer_ips: HashMap::new(),
        })
    }

    /// The capacity summary for mDNS TXT.
    pub fn capacity_summary(&self) -> String {
        self.capacity.summary()
    }

    /// Current listen addresses.
    pub fn listen_addrs(&self) -> Vec<libp2p::Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Runs until a shutdown command or until every client is dropped.
    pub async fn run(mut self) {
        let mut fx = Effects::new();
        let known = self.store.known_peers().unwrap_or_else(|e| {
            tracing::warn!("cannot read known peers: {e}");
            Vec::new()
        });
        self.domain.membership.redial_known(known, crate::store::now_unix_ms(), Instant::now(), &mut fx);
        self.domain.membership.redial_bootstrap(&mut fx);
        self.apply(fx);
        let mut advert_tick = tokio::time::interval(self.facts.advert_interval);
        let mut sweep_tick = tokio::time::interval(SWEEP);
        let mut redial_tick = tokio::time::interval(REDIAL);
        let mut kad_tick = tokio::time::interval(KAD_BOOTSTRAP);
        for t in [&mut advert_tick, &mut sweep_tick, &mut redial_tick, &mut kad_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let shutdown_reply: Option<oneshot::Sender<()>> = loop {
            let mut fx = Effects::new();
            let now = Instant::now();
            tokio::select! {
                command = self.channels.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => break Some(reply),
                    Some(command) => self.on_command(command, &mut fx),
                    None => break None,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event, now, &mut fx),
                Some(executed) = self.channels.executed.recv() => self.domain.tasks.on_executed(executed, now, &mut fx),
                Some(out) = self.channels.history.recv() => self.on_history_out(out),
                _ = advert_tick.tick() => self.domain.membership.on_advert_tick(now, &mut fx),
                _ = sweep_tick.tick() => {
                    self.domain.membership.on_sweep(now, &mut fx);
                    self.domain.tasks.tick(self.domain.membership.view(), now, &mut fx);
                    self.tell_history_members();
                }
                _ = redial_tick.tick() => self.domain.membership.on_redial_tick(now, &mut fx),
                _ = kad_tick.tick() => {
                    if self.swarm.connected_peers().next().is_some() {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
            self.apply(fx);
        };
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        drop(self.swarm);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
        tracing::debug!("router stopped");
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>, now: Instant, fx: &mut Effects) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
                if let Some(ip) = super::addrs::ip_of(endpoint.get_remote_address()) {
                    self.peer_ips.insert(peer_id, ip);
                }
                let dialed = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => Some(address),
                    ConnectedPoint::Listener { .. } => None,
                };
                self.domain.membership.on_connected(peer_id, dialed, num_established.get() == 1, fx);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                tracing::debug!(%peer_id, ?cause, "disconnected");
                self.peer_ips.remove(&peer_id);
                self.domain.membership.on_disconnected(peer_id, fx);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => tracing::debug!(?peer_id, "dial failed: {error}"),
            // A node with another swarm key (or none) ends up here.
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(%send_back_addr, "incoming connection refused: {error}")
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, now, fx),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent, now: Instant, fx: &mut Effects) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.domain.membership.on_identify(peer_id, &info.protocol_version, info.listen_addrs, now, fx);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let verdict = self.on_gossip(&message, now, fx);
                if let Err(reason) = &verdict {
                    tracing::warn!(source = ?message.source, via = %propagation_source, "rejected gossip: {reason}");
                }
                let acceptance = if verdict.is_ok() { gossipsub::MessageAcceptance::Accept } else { gossipsub::MessageAcceptance::Reject };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. }) if topic == self.topics.adverts.hash() => {
                self.domain.membership.on_subscribed(now, fx);
            }
            BehaviourEvent::Hello(event) => self.on_hello(event, now, fx),
            BehaviourEvent::Blobs(event) => self.on_blobs(event, now, fx),
            BehaviourEvent::Results(event) => self.on_results(event, now, fx),
            BehaviourEvent::History(event) => self.on_history(event),
            _ => {}
        }
    }

    fn on_hello(&mut self, event: request_response::Event<HelloRequest, HelloResponse>, now: Instant, fx: &mut Effects) {
        match event {
            request_response::Event::Message { peer, message: request_response::Message::Request { channel, .. }, .. } => {
                let response = HelloResponse { advert: Box::new(self.advert()), members: self.domain.membership.hello_members(&peer) };
                if self.swarm.behaviour_mut().hello.send_response(channel, response).is_err() {
                    tracing::debug!(%peer, "hello response not sent: stream closed");
                }
            }
            request_response::Event::Message { peer, message: request_response::Message::Response { response, .. }, .. } => {
                self.domain.membership.on_hello(peer, response, now, fx);
            }
            request_response::Event::OutboundFailure { peer, error, .. } => tracing::debug!(%peer, "hello failed: {error}"),
            request_response::Event::InboundFailure { peer, error, .. } => tracing::debug!(%peer, "inbound hello failed: {error}"),
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_blobs(&mut self, event: request_response::Event<GetBlobs, BlobsResponse>, now: Instant, fx: &mut Effects) {
        match event {
            request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                let response = self.domain.tasks.blobs_for(&request.ids);
                if self.swarm.behaviour_mut().blobs.send_response(channel, response).is_err() {
                    tracing::debug!(%peer, "blobs not sent: stream closed");
                }
            }
            request_response::Event::Message { peer, message: request_response::Message::Response { request_id, response }, .. } => {
                if let Some(task) = self.fetches.remove(&request_id) {
                    self.domain.tasks.on_blobs(task, peer, response, now, fx);
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(task) = self.fetches.remove(&request_id) {
                    self.domain.tasks.on_fetch_failed(task, &format!("{peer}: {error}"));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => tracing::debug!(%peer, "inbound blob request failed: {error}"),
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_results(&mut self, event: request_response::Event<TaskResult, ResultAck>, now: Instant, fx: &mut Effects) {
        match event {
            request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                self.domain.tasks.accept_result(request.task, peer, request.outcome, now, fx);
                let _ = self.swarm.behaviour_mut().results.send_response(channel, ResultAck);
            }
            request_response::Event::Message { message: request_response::Message::Response { request_id, .. }, .. } => {
                self.deliveries.remove(&request_id);
            }
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(task) = self.deliveries.remove(&request_id) {
                    tracing::info!(%task, "result not delivered: {error}");
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => tracing::debug!(%peer, "inbound result failed: {error}"),
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Decodes, validates and routes a gossip message by topic.
    fn on_gossip(&mut self, message: &gossipsub::Message, now: Instant, fx: &mut Effects) -> Result<(), String> {
        let source = message.source.ok_or("unsigned message")?;
        let me = *self.swarm.local_peer_id();
        if message.topic == self.topics.votes.hash() {
            let vote: VoteMessage = pyagent_protocol::decode(&message.data, MAX_TASK_MESSAGE_BYTES).map_err(|e| format!("vote message: {e}"))?;
            vote.validate(&source.to_string()).map_err(|e| format!("vote message: {e}"))?;
            return self.domain.votes.on_message(vote, crate::store::now_unix_ms(), fx).map_err(|e| format!("vote message: {e}"));
        }
        if message.topic == self.topics.tasks.hash() {
            let task: TaskMessage = pyagent_protocol::decode(&message.data, MAX_TASK_MESSAGE_BYTES).map_err(|e| format!("task message: {e}"))?;
            task.validate(&source.to_string()).map_err(|e| format!("task message: {e}"))?;
            if source != me {
                self.domain.tasks.on_message(self.domain.membership.view(), source, task, now, fx);
            }
            return Ok(());
        }
        if message.topic != self.topics.adverts.hash() {
            return Err(format!("unexpected topic {}", message.topic));
        }
        let advert: Advert = pyagent_protocol::decode(&message.data, MAX_ADVERT_BYTES).map_err(|e| e.to_string())?;
        advert.validate(&source.to_string()).map_err(|e| e.to_string())?;
        self.domain.membership.on_advert(source, advert, now, fx);
        Ok(())
    }
}
