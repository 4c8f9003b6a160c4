//! The router's answers to [`Command`]s from the rest of the node.

use std::time::Instant;

use pyagent_protocol::task::TaskSpec;

use super::client::Command;
use super::router::Router;
use crate::effects::Effects;
use crate::store::now_unix_ms;

impl Router {
    /// Handles a command (never `Shutdown`: the loop stops on it).
    pub(super) fn on_command(&mut self, command: Command, fx: &mut Effects) {
        let now = Instant::now();
        let domain = &mut self.domain;
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(domain.membership.view().peer_infos(now));
            }
            Command::Dial { peer, addrs } => domain.membership.dial(peer, addrs, now, fx),
            Command::AdvertSoon => domain.membership.on_capacity_changed(now, fx),
            Command::SubmitTask { capability, files, lease_ms, reply } => {
                let spec = TaskSpec {
                    capability,
                    files,
                    requester: self.swarm.local_peer_id().to_string(),
                    created_unix_ms: now_unix_ms(),
                    nonce: crate::node::random_boot_id(),
                    lease_ms,
                };
                let _ = reply.send(domain.tasks.submit(domain.membership.view(), spec, now, fx));
            }
            Command::TaskReports { ids, reply } => {
                let _ = reply.send(domain.tasks.reports(&ids));
            }
            Command::Propose { spec, reply } => {
                let _ = reply.send(domain.votes.propose(spec, now_unix_ms(), fx));
            }
            Command::Ballot { proposal, choice, reply } => {
                let _ = reply.send(domain.votes.cast(proposal, choice, None, now_unix_ms(), fx));
            }
            Command::Tally { proposal, reply } => {
                let _ = reply.send(domain.votes.tally(&proposal, now_unix_ms()));
            }
            Command::PeerIp { peer, reply } => {
                let _ = reply.send(self.peer_ips.get(&peer).copied());
            }
            Command::Shutdown(reply) => {
                // The loop handles shutdown before calling here; answering is harmless.
                let _ = reply.send(());
            }
        }
    }
}
