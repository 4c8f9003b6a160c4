//! Votes across the swarm as a pure state machine: proposals and signed ballots from the
//! vote topic (or this node's API) go in with the time injected; effects (publish, record)
//! and typed tallies come out. Counting is `pyagent_agents::voting`, the same on every
//! node; the wire ↔ counting mapping is `pyagent_agents::voting::wire`.
//!
//! - [`signing`]: ballot signatures (ed25519, checked against the voter's PeerId).
//! - [`tally`]: the typed tally of a proposal ([`pyagent_protocol::api::TallyResult`]).
//!
//! One ballot per voter (a peer, or a peer's agent) per proposal: a second is rejected,
//! and the first stands. Ballots stamped after the deadline do not count. On a `review`
//! proposal, each built-in agent of every node that sees it ranks the candidates by its
//! own criterion and casts its ballot.
//!
//! Proposals and ballots live in memory for the live vote, and in the history DHT: the
//! proposer records the proposal and each voter its signed ballot, so a node that joins
//! later, or restarts, replays the same tally from history alone ([`replay`]).

pub mod replay;
pub mod signing;
pub mod tally;

use std::collections::{BTreeMap, HashMap};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use pyagent_agents::voting::{self, BallotBox, Method, Proposal};
use pyagent_protocol::api::TallyResult;
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::vote::{Ballot, ProposalId, ProposalKind, ProposalSpec, VoteChoice, VoteError, VoteMessage};

use crate::effects::{Effect, Effects};

/// Ballots kept for proposals not seen yet (gossip can reorder).
const MAX_EARLY_BALLOTS: usize = 4096;
/// Proposals kept.
const MAX_PROPOSALS: usize = 4096;
/// Proposals whose deadline passed this long ago make room for new ones.
const KEEP_CLOSED_MS: u64 = 24 * 3600 * 1000;

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

impl VotesError {
    /// Whether the caller's input is at fault (else this node is).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Sign(_))
    }
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
    agents: Vec<String>,
    proposals: HashMap<ProposalId, Entry>,
    early: Vec<Ballot>,
}

impl std::fmt::Debug for VoteBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteBook").field("proposals", &self.proposals.len()).finish_non_exhaustive()
    }
}

impl VoteBook {
    /// `agents`: the built-in agents of this node, which vote on review proposals.
    pub fn new(keypair: Keypair, agents: Vec<String>) -> Self {
        Self { me: keypair.public().to_peer_id(), keypair, agents, proposals: HashMap::new(), early: Vec::new() }
    }

    /// Opens a proposal from this node (it fills in the proposer).
    pub fn propose(&mut self, mut spec: ProposalSpec, now_ms: u64, fx: &mut Effects) -> Result<ProposalId, VotesError> {
        spec.proposer = self.me.to_string();
        spec.validate(&spec.proposer.clone())?;
        let id = self.add_proposal(spec.clone(), now_ms)?;
        fx.push(Effect::PublishVote(VoteMessage::Propose(spec.clone())));
        fx.push(Effect::Record { subject: id, event: HistoryEvent::Proposal(Box::new(spec)) });
        self.agents_vote(id, now_ms, fx);
        Ok(id)
    }

    /// A validated message from the vote topic.
    pub fn on_message(&mut self, message: VoteMessage, now_ms: u64, fx: &mut Effects) -> Result<(), VotesError> {
        match message {
            VoteMessage::Propose(spec) => {
                let id = self.add_proposal(spec, now_ms)?;
                self.agents_vote(id, now_ms, fx);
                Ok(())
            }
            VoteMessage::Ballot(ballot) => self.accept(ballot),
        }
    }

    /// Casts this node's ballot (a person's, or an agent's).
    pub fn cast(&mut self, proposal: ProposalId, choice: VoteChoice, agent: Option<String>, now_ms: u64, fx: &mut Effects) -> Result<(), VotesError> {
        if !self.proposals.contains_key(&proposal) {
            return Err(VotesError::UnknownProposal(proposal));
        }
        let mut ballot = Ballot { proposal, voter: self.me.to_string(), agent, choice, cast_unix_ms: now_ms, signature: Vec::new() };
        signing::sign(&self.keypair, &mut ballot)?;
        self.accept(ballot.clone())?;
        fx.push(Effect::Record { subject: proposal, event: HistoryEvent::Ballot(Box::new(ballot.clone())) });
        fx.push(Effect::PublishVote(VoteMessage::Ballot(ballot)));
        Ok(())
    }

    /// The options of a proposal, by label (to turn a ballot by labels into indexes).
    pub fn options(&self, id: &ProposalId) -> Result<Vec<String>, VotesError> {
        Ok(self.proposals.get(id).ok_or(VotesError::UnknownProposal(*id))?.spec.options.clone())
    }

    /// The tally of the ballots this node has seen (the API prefers the replay of the
    /// history, [`replay`], which every node computes the same).
    pub fn tally(&self, id: &ProposalId, now_ms: u64) -> Result<TallyResult, VotesError> {
        let entry = self.proposals.get(id).ok_or(VotesError::UnknownProposal(*id))?;
        Ok(tally::tally(id, &entry.spec, &entry.ballot_box, &entry.ballots, now_ms))
    }

    fn add_proposal(&mut self, spec: ProposalSpec, now_ms: u64) -> Result<ProposalId, VotesError> {
        let id = spec.id()?;
        if self.proposals.contains_key(&id) {
            return Ok(id);
        }
        let horizon = now_ms.saturating_sub(KEEP_CLOSED_MS);
        self.proposals.retain(|_, e| e.spec.deadline_unix_ms >= horizon);
        if self.proposals.len() >= MAX_PROPOSALS {
            return Err(VotesError::Rejected(format!("this node holds {MAX_PROPOSALS} proposals already")));
        }
        let proposal = Proposal::new(id.0.to_vec(), spec.options.clone(), Method::from(&spec.method)).map_err(|e| VotesError::Rejected(e.to_string()))?;
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
    fn agents_vote(&mut self, id: ProposalId, now_ms: u64, fx: &mut Effects) {
        let Some(entry) = self.proposals.get(&id) else { return };
        let ProposalKind::Review { function, candidates } = &entry.spec.kind else { return };
        if !entry.spec.method.is_ranked() {
            return; // agents rank; approval and quadratic ballots are for people
        }
        let (function, candidates) = (function.clone(), candidates.clone());
        for agent in self.agents.clone() {
            let Some(order) = pyagent_agents::review::rank(&agent, &function, &candidates) else { continue };
            let ranking: Vec<u16> = order.into_iter().filter_map(|i| u16::try_from(i).ok()).collect();
            if let Err(e) = self.cast(id, VoteChoice::Ranking(ranking), Some(agent.clone()), now_ms, fx) {
                tracing::warn!(proposal = %id, %agent, "agent ballot not cast: {e}");
            }
        }
    }

    /// Puts a ballot into its box (signature, deadline, one per voter).
    fn accept(&mut self, ballot: Ballot) -> Result<(), VotesError> {
        signing::verify(&ballot)?;
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
            .cast(voting::Ballot { voter: key.clone(), choice: (&ballot.choice).into() })
            .map_err(|e| VotesError::Rejected(e.to_string()))?;
        entry.ballots.insert(key, ballot);
        Ok(())
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
