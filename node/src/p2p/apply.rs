//! Carrying out the effects the state machines return, and the router's answers that
//! need the swarm (adverts, status).

use std::time::Instant;

use libp2p::gossipsub;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use pyagent_protocol::Advert;
use pyagent_protocol::api::StatusResult;
use serde::Serialize;

use super::behaviour::NODE_VERSION;
use super::router::Router;
use crate::effects::{Effect, Effects};

impl Router {
    /// Carries out `fx` in order. Effects may produce more (a result for this node's own
    /// task, a refused execution): those run too, until none are left.
    pub(super) fn apply(&mut self, fx: Effects) {
        let mut queue = std::collections::VecDeque::from(fx);
        while let Some(effect) = queue.pop_front() {
            let mut more = Effects::new();
            self.apply_one(effect, &mut more);
            queue.extend(more);
        }
        let finished = self.domain.tasks.finished_count();
        self.channels.results.send_if_modified(|v| std::mem::replace(v, finished) != finished);
    }

    fn apply_one(&mut self, effect: Effect, more: &mut Effects) {
        match effect {
            Effect::PublishAdvert => {
                self.capacity = self.probe.probe();
                let advert = self.advert();
                self.publish(self.topics.adverts.clone(), "advert", &advert);
            }
            Effect::PublishTask(message) => self.publish(self.topics.tasks.clone(), "task message", &message),
            Effect::PublishVote(message) => self.publish(self.topics.votes.clone(), "vote message", &message),
            Effect::Dial { peer, addrs } => {
                let (addrs, at_once) = super::addrs::dial_order(addrs);
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .override_dial_concurrency_factor(at_once)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, "dial not started: {e}");
                }
            }
            Effect::DialAddress { peer, addr } => {
                let opts = match peer {
                    Some(peer) => DialOpts::peer_id(peer).addresses(vec![addr.clone()]).build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%addr, "bootstrap dial not started: {e}");
                }
            }
            Effect::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Effect::AddAddresses { peer, addrs } => {
                for addr in addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
            Effect::RememberPeer { peer, addrs } => {
                if let Err(e) = self.store.remember_peer(&peer, &addrs) {
                    tracing::warn!(%peer, "cannot remember peer: {e}");
                }
            }
            Effect::Hello(peer) => {
                self.swarm.behaviour_mut().hello.send_request(&peer, pyagent_protocol::rpc::HelloRequest);
            }
            Effect::FetchBlobs { peer, task, ids } => {
                let request = self.swarm.behaviour_mut().blobs.send_request(&peer, pyagent_protocol::rpc::GetBlobs { ids });
                self.fetches.insert(request, task);
            }
            Effect::DeliverResult { peer, task, outcome } => {
                let request = self.swarm.behaviour_mut().results.send_request(&peer, pyagent_protocol::rpc::TaskResult { task, outcome });
                self.deliveries.insert(request, task);
            }
            Effect::Execute { task, spec } => {
                if let Err(reason) = self.domain.runner.execute(task, spec) {
                    let outcome = Some(pyagent_protocol::task::TaskOutcome::Failed { reason });
                    self.domain.tasks.on_executed(crate::tasks::Executed { task, outcome }, Instant::now(), more);
                }
            }
            Effect::Emit(event) => {
                // No subscriber is fine.
                let _ = self.channels.events.send(event);
            }
            Effect::Record { subject, event } => {
                if self.domain.history.try_send(crate::history::HistoryInput::Record { subject, event }).is_err() {
                    tracing::warn!(%subject, "history entry not recorded: the history service is overloaded or stopped");
                }
            }
        }
    }

    fn publish<T: Serialize>(&mut self, topic: gossipsub::IdentTopic, what: &str, message: &T) {
        let bytes = match pyagent_protocol::encode(message) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot encode {what}: {e}"),
        };
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!("{what} not published: {e}"),
        }
    }

    /// Built-in agents, then live external ones.
    pub(super) fn hosted_agents(&self) -> Vec<String> {
        let mut agents = self.facts.agents.clone();
        agents.extend(self.domain.tasks.external_agents());
        agents.truncate(pyagent_protocol::advert::MAX_AGENTS);
        agents
    }

    /// This node's advert, with the next sequence number.
    pub(super) fn advert(&mut self) -> Advert {
        Advert {
            protocol_versions: self.facts.versions,
            peer_id: self.swarm.local_peer_id().to_string(),
            node_version: NODE_VERSION.to_owned(),
            listen_addrs: super::addrs::advertised(self.swarm.listeners()).iter().map(ToString::to_string).collect(),
            agents: self.hosted_agents(),
            capabilities: self.domain.tasks.capabilities(),
            capacity: self.capacity.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            boot_id: self.facts.boot_id,
            seq: self.domain.membership.next_seq(),
        }
    }

    pub(super) fn status(&self) -> StatusResult {
        StatusResult {
            peer_id: self.swarm.local_peer_id().to_string(),
            node_version: NODE_VERSION.to_owned(),
            protocol_version: self.facts.versions.max(),
            swarm: self.facts.namespace.name().to_owned(),
            private: self.facts.private,
            quic: self.facts.quic,
            mdns: self.facts.mdns,
            listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
            uptime_secs: self.started.elapsed().as_secs(),
            connected_peers: self.swarm.connected_peers().count(),
            members: self.domain.membership.view().len(),
            agents: self.hosted_agents(),
            capabilities: self.domain.tasks.capabilities(),
            capacity: self.capacity.clone(),
            data_dir: self.facts.data_dir.display().to_string(),
            tasks: self.domain.tasks.counters(),
            kv: self.facts.kv.snapshot(),
        }
    }
}
