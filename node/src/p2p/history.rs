//! The history protocol on the swarm: peers' requests go to the history actor, and its
//! answers and requests come back here to be sent. The router never waits on the actor:
//! when its inbox is full a peer's request is refused with a reason.

use libp2p::PeerId;
use libp2p::request_response;
use pyagent_protocol::history::{HistoryRequest, HistoryResponse};

use super::router::Router;
use crate::history::{HistoryInput, ToRouter};

impl Router {
    pub(super) fn on_history(&mut self, event: request_response::Event<HistoryRequest, HistoryResponse>) {
        match event {
            request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                self.next_history_channel += 1;
                let id = self.next_history_channel;
                match self.domain.history.try_send(HistoryInput::Request { peer, channel: id, request }) {
                    Ok(()) => {
                        self.history_channels.insert(id, channel);
                    }
                    Err(_) => {
                        let busy = HistoryResponse::Error("this node's history service is busy; try again".into());
                        let _ = self.swarm.behaviour_mut().history.send_response(channel, busy);
                    }
                }
            }
            request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. } => {
                if let Some(token) = self.history_requests.remove(&request_id) {
                    self.answer_history(token, Ok(response));
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(token) = self.history_requests.remove(&request_id) {
                    self.answer_history(token, Err(format!("{peer}: {error}")));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => tracing::debug!(%peer, "inbound history request failed: {error}"),
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn answer_history(&mut self, token: u64, result: Result<HistoryResponse, String>) {
        if self.domain.history.try_send(HistoryInput::Response { token, result }).is_err() {
            // The actor times the request out.
            tracing::debug!("history answer dropped: the history service is busy");
        }
    }

    pub(super) fn on_history_out(&mut self, out: ToRouter) {
        match out {
            ToRouter::Send { token, peer, request } => {
                let id = self.swarm.behaviour_mut().history.send_request(&peer, request);
                self.history_requests.insert(id, token);
            }
            ToRouter::Respond { channel, response } => {
                if let Some(channel) = self.history_channels.remove(&channel)
                    && self.swarm.behaviour_mut().history.send_response(channel, response).is_err()
                {
                    tracing::debug!("history answer not sent: the stream closed");
                }
            }
        }
    }

    /// Tells the history actor the live members when they change.
    pub(super) fn tell_history_members(&mut self) {
        let mut members: Vec<PeerId> = self.domain.membership.view().peer_ids();
        members.sort();
        if members != self.history_members && self.domain.history.try_send(HistoryInput::Members(members.clone())).is_ok() {
            self.history_members = members;
        }
    }
}
