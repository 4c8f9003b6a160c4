//! Votes across the swarm, run inside the swarm task: proposals and signed ballots on the
//! vote topic, a ballot box per proposal, and tallies every node computes alike
//! (`pyagent_agents::voting`).
//!
//! A ballot is signed with the voting node's ed25519 key over its canonical bytes and
//! checked against the voter's PeerId (which embeds the public key) wherever it arrives;
//! one ballot per voter (a peer, or a peer's agent) per proposal: a second is rejected,
//! and the first stands. Ballots stamped after the deadline do not count. On a `review`
//! proposal, each built-in agent of every node that sees it ranks the candidates by its
//! own criterion and casts its ballot.
//!
//! Proposals and ballots live in memory (and in the history column family as events);
//! a node that joins later does not see earlier ballots — the history DHT issue will
//! replicate them.

use std::collections::{BTreeMap, HashMap};

use libp2p::identity::{Keypair, PublicKey};
use libp2p::{PeerId, Swarm, gossipsub};
use pyagent_agents::voting::{self, BallotBox, Choice, Method, Proposal};
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::vote::{Ballot, ProposalId, ProposalKind, ProposalSpec, VoteChoice, VoteError, VoteMessage, VoteMethod};
use serde_json::{Value, json};

use crate::p2p::behaviour::Behaviour;
use crate::store::Store;

/// Ballots kept for proposals not seen yet (gossip can reorder).
const MAX_EARLY_BALLOTS: usize = 4096;
/// Proposals kept.
const MAX_PROPOSALS: usize = 4096;

/// Why a vote operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum VotesError {
    #[error(transparent)]
    Invalid(#[from] VoteError),
    #[error("unknown proposal {0}")]
    UnknownProposal(ProposalId),
    #[error("{0}")]
    Rejected(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

struct Entry {
    spec: ProposalSpec,
    ballot_box: BallotBox,
    /// The signed ballots, by voter key.
    ballots: BTreeMap<String, Ballot>,
}

/// All proposals this node knows.
pub struct VoteBook {
    me: PeerId,
    keypair: Keypair,
    topic: gossipsub::IdentTopic,
    agents: Vec<String>,
    store: std::sync::Arc<Store>,
    proposals: HashMap<ProposalId, Entry>,
    early: Vec<Ballot>,
}

impl std::fmt::Debug for VoteBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteBook").field("proposals", &self.proposals.len()).finish_non_exhaustive()
    }
}

fn method_of(spec: &ProposalSpec) -> Method {
    match &spec.method {
        VoteMethod::Plurality => Method::Plurality,
        VoteMethod::Approval => Method::Approval,
        VoteMethod::Borda => Method::Borda,
        VoteMethod::InstantRunoff => Method::InstantRunoff,
        VoteMethod::Schulze => Method::Schulze,
        VoteMethod::Quadratic { credits } => Method::Quadratic { credits: *credits },
        VoteMethod::TrustWeighted { .. } => Method::TrustWeighted,
    }
}

fn choice_of(choice: &VoteChoice) -> Choice {
    let idx = |v: &[u16]| v.iter().map(|&i| usize::from(i)).collect();
    match choice {
        VoteChoice::Ranking(r) => Choice::Ranking(idx(r)),
        VoteChoice::Approval(a) => Choice::Approval(idx(a)),
        VoteChoice::Quadratic(q) => Choice::Quadratic(q.iter().map(|&(o, v)| (usize::from(o), v)).collect()),
    }
}

/// The public key inside an ed25519 PeerId (identity multihash).
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(hash.digest()).ok()
}

/// Checks a ballot's signature against its voter's key.
pub fn verify(ballot: &Ballot) -> Result<(), VotesError> {
    let peer: PeerId = ballot.voter.parse().map_err(|_| VotesError::Rejected(format!("voter {:?} is not a PeerId", ballot.voter)))?;
    let key = public_key(&peer).ok_or_else(|| VotesError::Rejected("the voter's PeerId does not carry its public key".into()))?;
    let bytes = ballot.signed_bytes()?;
    if key.verify(&bytes, &ballot.signature) {
        Ok(())
    } else {
        Err(VotesError::Rejected(format!("bad signature on the ballot of {}", ballot.voter_key())))
    }
}

impl VoteBook {
    pub fn new(keypair: Keypair, topic: gossipsub::IdentTopic, agents: Vec<String>, store: std::sync::Arc<Store>) -> Self {
        Self { me: keypair.public().to_peer_id(), keypair, topic, agents, store, proposals: HashMap::new(), early: Vec::new() }
    }

    pub fn topic(&self) -> &gossipsub::IdentTopic {
        &self.topic
    }

    fn publish(&self, swarm: &mut Swarm<Behaviour>, message: &VoteMessage) {
        let bytes = match pyagent_protocol::encode(message) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot encode vote message: {e}"),
        };
        match swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!("vote message not published: {e}"),
        }
    }

    fn record(&self, id: &ProposalId, event: HistoryEvent) {
        if let Err(e) = self.store.record(id, event) {
            tracing::warn!(proposal = %id, "history not recorded: {e}");
        }
    }

    /// Opens a proposal from this node.
    pub fn propose(&mut self, swarm: &mut Swarm<Behaviour>, mut spec: ProposalSpec) -> Result<ProposalId, VotesError> {
        spec.proposer = self.me.to_string();
        spec.validate(&spec.proposer.clone())?;
        let id = self.add_proposal(spec.clone())?;
        self.publish(swarm, &VoteMessage::Propose(spec));
        self.agents_vote(swarm, id);
        Ok(id)
    }

    fn add_proposal(&mut self, spec: ProposalSpec) -> Result<ProposalId, VotesError> {
        let id = spec.id()?;
        if self.proposals.contains_key(&id) {
            return Ok(id);
        }
        // Proposals whose deadline passed a day ago make room for new ones.
        let horizon = crate::store::now_unix_ms().saturating_sub(24 * 3600 * 1000);
        self.proposals.retain(|_, e| e.spec.deadline_unix_ms >= horizon);
        if self.proposals.len() >= MAX_PROPOSALS {
            return Err(VotesError::Rejected(format!("this node holds {MAX_PROPOSALS} proposals already")));
        }
        let proposal = Proposal::new(id.0.to_vec(), spec.options.clone(), method_of(&spec)).map_err(|e| VotesError::Rejected(e.to_string()))?;
        self.proposals.insert(id, Entry { spec, ballot_box: BallotBox::new(proposal), ballots: BTreeMap::new() });
        // Ballots that arrived before their proposal.
        let (mine, rest): (Vec<Ballot>, Vec<Ballot>) = std::mem::take(&mut self.early).into_iter().partition(|b| b.proposal == id);
        self.early = rest;
        for ballot in mine {
            if let Err(e) = self.accept(ballot) {
                tracing::info!(proposal = %id, "early ballot rejected: {e}");
            }
        }
        Ok(id)
    }

    /// Each built-in agent of this node ranks a review proposal's candidates and votes.
    fn agents_vote(&mut self, swarm: &mut Swarm<Behaviour>, id: ProposalId) {
        let Some(entry) = self.proposals.get(&id) else { return };
        let ProposalKind::Review { candidates, .. } = &entry.spec.kind else { return };
        if !matches!(entry.spec.method, VoteMethod::Borda | VoteMethod::Schulze | VoteMethod::InstantRunoff | VoteMethod::Plurality | VoteMethod::TrustWeighted { .. }) {
            return; // agents rank; approval and quadratic ballots are for people
        }
        let candidates = candidates.clone();
        for agent in self.agents.clone() {
            let Some(order) = pyagent_agents::review::rank(&agent, &candidates) else { continue };
            let ranking: Vec<u16> = order.into_iter().filter_map(|i| u16::try_from(i).ok()).collect();
            if let Err(e) = self.cast(swarm, id, VoteChoice::Ranking(ranking), Some(agent.clone())) {
                tracing::warn!(proposal = %id, %agent, "agent ballot not cast: {e}");
            }
        }
    }

    /// Casts this node's ballot (a person's, or an agent's).
    pub fn cast(&mut self, swarm: &mut Swarm<Behaviour>, proposal: ProposalId, choice: VoteChoice, agent: Option<String>) -> Result<(), VotesError> {
        if !self.proposals.contains_key(&proposal) {
            return Err(VotesError::UnknownProposal(proposal));
        }
        let mut ballot =
            Ballot { proposal, voter: self.me.to_string(), agent, choice, cast_unix_ms: crate::store::now_unix_ms(), signature: Vec::new() };
        let bytes = ballot.signed_bytes()?;
        ballot.signature = self.keypair.sign(&bytes).map_err(|e| VotesError::Sign(e.to_string()))?;
        self.accept(ballot.clone())?;
        self.publish(swarm, &VoteMessage::Ballot(ballot));
        Ok(())
    }

    /// Puts a verified-signer ballot into its box (signature, deadline, one per voter).
    fn accept(&mut self, ballot: Ballot) -> Result<(), VotesError> {
        verify(&ballot)?;
        let id = ballot.proposal;
        let Some(entry) = self.proposals.get_mut(&id) else {
            if self.early.len() < MAX_EARLY_BALLOTS {
                self.early.push(ballot);
            }
            return Ok(());
        };
        if ballot.cast_unix_ms > entry.spec.deadline_unix_ms {
            return Err(VotesError::Rejected(format!("the ballot of {} was cast after the deadline", ballot.voter_key())));
        }
        let key = ballot.voter_key();
        entry
            .ballot_box
            .cast(voting::Ballot { voter: key.clone(), choice: choice_of(&ballot.choice) })
            .map_err(|e| VotesError::Rejected(e.to_string()))?;
        entry.ballots.insert(key.clone(), ballot);
        self.record(&id, HistoryEvent::Ballot { voter: key });
        Ok(())
    }

    /// A validated message from the vote topic.
    pub fn on_message(&mut self, swarm: &mut Swarm<Behaviour>, message: VoteMessage) -> Result<(), VotesError> {
        match message {
            VoteMessage::Propose(spec) => {
                let id = self.add_proposal(spec)?;
                self.agents_vote(swarm, id);
                Ok(())
            }
            VoteMessage::Ballot(ballot) => self.accept(ballot),
        }
    }

    /// The tally and every ballot, as JSON.
    pub fn tally(&self, id: &ProposalId) -> Result<Value, VotesError> {
        let entry = self.proposals.get(id).ok_or(VotesError::UnknownProposal(*id))?;
        let mut trust = BTreeMap::new();
        if let VoteMethod::TrustWeighted { weights } = &entry.spec.method {
            let weights: BTreeMap<&str, u64> = weights.iter().map(|(p, w)| (p.as_str(), *w)).collect();
            for (key, ballot) in &entry.ballots {
                let w = weights.get(key.as_str()).or_else(|| weights.get(ballot.voter.as_str())).copied().unwrap_or(1);
                trust.insert(key.clone(), w);
            }
        }
        let tally = voting::tally(&entry.ballot_box, &trust);
        let label = |i: usize| entry.spec.options.get(i).cloned().unwrap_or_default();
        let now = crate::store::now_unix_ms();
        let quorum_met = entry.spec.quorum.is_some_and(|q| entry.ballots.len() >= q as usize);
        let winner = tally.winner().map(label);
        let ballots: Vec<Value> = entry
            .ballots
            .values()
            .map(|b| {
                let choice = match &b.choice {
                    VoteChoice::Ranking(r) => json!({ "ranking": r.iter().map(|&i| label(usize::from(i))).collect::<Vec<_>>() }),
                    VoteChoice::Approval(a) => json!({ "approval": a.iter().map(|&i| label(usize::from(i))).collect::<Vec<_>>() }),
                    VoteChoice::Quadratic(q) => json!({ "quadratic": q.iter().map(|&(i, v)| json!([label(usize::from(i)), v])).collect::<Vec<_>>() }),
                };
                json!({ "voter": b.voter, "agent": b.agent, "cast_unix_ms": b.cast_unix_ms, "choice": choice })
            })
            .collect();
        Ok(json!({
            "proposal_id": id.to_string(),
            "title": entry.spec.title,
            "method": format!("{:?}", method_of(&entry.spec)),
            "options": entry.spec.options,
            "proposer": entry.spec.proposer,
            "deadline_unix_ms": entry.spec.deadline_unix_ms,
            "quorum": entry.spec.quorum,
            "final": now >= entry.spec.deadline_unix_ms || quorum_met,
            "winner": winner,
            "ranking": tally.ranking.iter().map(|&i| label(i)).collect::<Vec<_>>(),
            "scores": tally.scores,
            "rounds": tally.rounds,
            "ballots_counted": tally.ballots_counted,
            "ballots": ballots,
        }))
    }

    /// Records the tally in the history (when someone asks for a final one).
    pub fn record_tally(&self, id: &ProposalId, winner: Option<String>) {
        self.record(id, HistoryEvent::Tally { winner });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(keypair: &Keypair, choice: VoteChoice) -> Ballot {
        let mut b = Ballot {
            proposal: pyagent_protocol::task::TaskId([9; 32]),
            voter: keypair.public().to_peer_id().to_string(),
            agent: None,
            choice,
            cast_unix_ms: 5,
            signature: Vec::new(),
        };
        b.signature = keypair.sign(&b.signed_bytes().unwrap()).unwrap();
        b
    }

    #[test]
    fn signatures_are_checked_against_the_voters_peer_id() {
        let keypair = Keypair::generate_ed25519();
        let ballot = signed(&keypair, VoteChoice::Ranking(vec![0, 1]));
        assert!(verify(&ballot).is_ok());
        // Tampered choice.
        let mut tampered = ballot.clone();
        tampered.choice = VoteChoice::Ranking(vec![1, 0]);
        assert!(verify(&tampered).unwrap_err().to_string().contains("bad signature"));
        // Someone else's name on my signature.
        let mut stolen = ballot.clone();
        stolen.voter = Keypair::generate_ed25519().public().to_peer_id().to_string();
        assert!(verify(&stolen).is_err());
        // An agent label cannot be added afterwards.
        let mut relabelled = ballot;
        relabelled.agent = Some("complexity".into());
        assert!(verify(&relabelled).is_err());
    }
}
