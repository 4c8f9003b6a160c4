//! Votes on the wire: proposals and signed ballots, gossiped on the namespace's vote
//! topic ([`crate::SwarmNamespace::vote_topic`]).
//!
//! A proposal's id is the BLAKE3 hash of its canonical encoding. A ballot names the
//! proposal, the voting peer, and (for ballots cast by an agent) the agent; it carries the
//! voter's ed25519 signature over [`Ballot::signed_bytes`], so anyone can check it later,
//! whoever relayed it. One ballot per voter (peer, agent) per proposal: a second one is
//! rejected. A ballot counts when its own timestamp is not after the proposal's deadline,
//! so every node that has the same ballots computes the same tally.

use serde::{Deserialize, Serialize};

use crate::codec::CodecError;
use crate::task::TaskId;

/// Most options of a proposal.
pub const MAX_OPTIONS: usize = 64;
/// Longest option label or title.
pub const MAX_LABEL_LEN: usize = 256;
/// Largest candidate text of a review proposal.
pub const MAX_CANDIDATE_BYTES: usize = 256 * 1024;
/// Most trust weights of a trust-weighted proposal.
pub const MAX_WEIGHTS: usize = 1024;
/// Largest quadratic budget per voter.
pub const MAX_CREDITS: u64 = 1_000_000;
/// Quadratic budget when the proposer names none.
pub const DEFAULT_CREDITS: u64 = 100;

/// The names of the vote methods, as the API, the CLI and tallies spell them.
pub const METHOD_NAMES: [&str; 7] = ["plurality", "approval", "borda", "irv", "schulze", "quadratic", "trust"];

/// The id of a proposal (same 32-byte form as task ids).
pub type ProposalId = TaskId;

/// How ballots are counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteMethod {
    Plurality,
    Approval,
    Borda,
    InstantRunoff,
    Schulze,
    /// Each voter may spend `credits`; v votes on one option cost v².
    Quadratic { credits: u64 },
    /// Borda points times the voter's weight (voters not listed weigh 1).
    TrustWeighted { weights: Vec<(String, u64)> },
}

impl VoteMethod {
    /// The method called `name` (one of [`METHOD_NAMES`], or the long forms
    /// `instant-runoff` and `trust-weighted`), with its parameters: quadratic credits
    /// (default [`DEFAULT_CREDITS`]) and trust weights. Bounds are checked by
    /// [`ProposalSpec::validate`].
    pub fn from_name(name: &str, credits: Option<u64>, weights: Vec<(String, u64)>) -> Result<Self, VoteError> {
        let quadratic = name == "quadratic";
        let trust = matches!(name, "trust" | "trust-weighted");
        if credits.is_some() && !quadratic {
            return Err(field("method", "credits apply to the quadratic method only"));
        }
        if !weights.is_empty() && !trust {
            return Err(field("method", "weights apply to the trust method only"));
        }
        Ok(match name {
            "plurality" => Self::Plurality,
            "approval" => Self::Approval,
            "borda" => Self::Borda,
            "irv" | "instant-runoff" => Self::InstantRunoff,
            "schulze" => Self::Schulze,
            _ if quadratic => Self::Quadratic { credits: credits.unwrap_or(DEFAULT_CREDITS) },
            _ if trust => Self::TrustWeighted { weights },
            other => return Err(field("method", format!("unknown method {other:?}; one of {}", METHOD_NAMES.join(", ")))),
        })
    }

    /// The method's name ([`METHOD_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plurality => "plurality",
            Self::Approval => "approval",
            Self::Borda => "borda",
            Self::InstantRunoff => "irv",
            Self::Schulze => "schulze",
            Self::Quadratic { .. } => "quadratic",
            Self::TrustWeighted { .. } => "trust",
        }
    }

    /// Whether ballots rank the options (agents only vote on ranked methods).
    pub fn is_ranked(&self) -> bool {
        matches!(self, Self::Plurality | Self::Borda | Self::InstantRunoff | Self::Schulze | Self::TrustWeighted { .. })
    }
}

/// What a proposal is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposalKind {
    /// A question for people (and anyone) to vote on.
    General,
    /// Candidate rewrites of one Python function (option i is `candidates[i]`). `function`
    /// is the function's name, or its original source: a candidate that changes its name
    /// (or, given the source, its signature) ranks last. The agents
    /// of every node rank them by their own criterion.
    Review { function: String, candidates: Vec<String> },
}

/// A proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalSpec {
    pub title: String,
    pub kind: ProposalKind,
    pub options: Vec<String>,
    pub method: VoteMethod,
    /// PeerId of the proposer (the gossip signer).
    pub proposer: String,
    pub created_unix_ms: u64,
    /// Ballots stamped later than this do not count.
    pub deadline_unix_ms: u64,
    /// The result is final once this many ballots are in (or at the deadline).
    pub quorum: Option<u32>,
    pub nonce: u64,
}

/// A voter's choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteChoice {
    /// Option indexes, most preferred first.
    Ranking(Vec<u16>),
    Approval(Vec<u16>),
    /// (option, votes)
    Quadratic(Vec<(u16, u64)>),
}

/// A signed ballot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    pub proposal: ProposalId,
    /// PeerId of the voting node.
    pub voter: String,
    /// The agent that voted, or `None` for a person voting through the node.
    pub agent: Option<String>,
    pub choice: VoteChoice,
    pub cast_unix_ms: u64,
    /// ed25519 signature by the voter's key over [`Ballot::signed_bytes`].
    pub signature: Vec<u8>,
}

/// Messages of the vote topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteMessage {
    Propose(ProposalSpec),
    Ballot(Ballot),
}

/// Why a proposal or ballot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("signed by {signer} but claims to be from {claimed}")]
    WrongSigner { signer: String, claimed: String },
    #[error("cannot encode: {0}")]
    Codec(String),
}

impl From<CodecError> for VoteError {
    fn from(e: CodecError) -> Self {
        VoteError::Codec(e.to_string())
    }
}

fn field(field: &'static str, reason: impl Into<String>) -> VoteError {
    VoteError::Field { field, reason: reason.into() }
}

fn check_label(name: &'static str, s: &str) -> Result<(), VoteError> {
    if s.is_empty() || s.len() > MAX_LABEL_LEN || s.chars().any(char::is_control) {
        return Err(field(name, format!("{:?}: 1-{MAX_LABEL_LEN} bytes, no control characters", s.chars().take(40).collect::<String>())));
    }
    Ok(())
}

impl ProposalSpec {
    pub fn id(&self) -> Result<ProposalId, VoteError> {
        let bytes = crate::encode(self)?;
        Ok(TaskId(*blake3::hash(&bytes).as_bytes()))
    }

    /// Checks bounds; `signer` is the peer that published it.
    pub fn validate(&self, signer: &str) -> Result<(), VoteError> {
        if self.proposer != signer {
            return Err(VoteError::WrongSigner { signer: signer.to_owned(), claimed: self.proposer.clone() });
        }
        check_label("title", &self.title)?;
        if self.options.len() < 2 || self.options.len() > MAX_OPTIONS {
            return Err(field("options", format!("{} options; 2 to {MAX_OPTIONS}", self.options.len())));
        }
        for (i, o) in self.options.iter().enumerate() {
            check_label("options", o)?;
            if self.options[..i].contains(o) {
                return Err(field("options", format!("{o:?} appears twice")));
            }
        }
        if let ProposalKind::Review { function, candidates } = &self.kind {
            // A name, or the original source (multi-line, as large as a candidate).
            if function.contains('\n') {
                if function.len() > MAX_CANDIDATE_BYTES || function.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
                    return Err(field("function", format!("source of at most {MAX_CANDIDATE_BYTES} bytes, no control characters but newlines and tabs")));
                }
            } else {
                check_label("function", function)?;
            }
            if candidates.len() != self.options.len() {
                return Err(field("candidates", "one candidate per option"));
            }
            if let Some(c) = candidates.iter().find(|c| c.len() > MAX_CANDIDATE_BYTES) {
                return Err(field("candidates", format!("{} bytes, limit {MAX_CANDIDATE_BYTES}", c.len())));
            }
        }
        match &self.method {
            VoteMethod::Quadratic { credits } if !(1..=MAX_CREDITS).contains(credits) => {
                return Err(field("method", format!("quadratic credits must be 1..={MAX_CREDITS}, got {credits}")));
            }
            VoteMethod::TrustWeighted { weights } if weights.len() > MAX_WEIGHTS => {
                return Err(field("method", format!("{} weights, limit {MAX_WEIGHTS}", weights.len())));
            }
            _ => {}
        }
        if self.deadline_unix_ms <= self.created_unix_ms {
            return Err(field("deadline_unix_ms", "the deadline must be after the creation time"));
        }
        if self.quorum == Some(0) {
            return Err(field("quorum", "0 would make the result final before any ballot; give at least 1, or no quorum"));
        }
        Ok(())
    }
}

impl Ballot {
    /// The bytes the voter signs: everything but the signature.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, VoteError> {
        let unsigned = (&self.proposal, &self.voter, &self.agent, &self.choice, self.cast_unix_ms);
        Ok(crate::encode(&unsigned)?)
    }

    /// The voter identity that may cast one ballot per proposal.
    pub fn voter_key(&self) -> String {
        match &self.agent {
            Some(agent) => format!("{}/{agent}", self.voter),
            None => self.voter.clone(),
        }
    }

    /// Checks bounds and that the gossip signer is the voter (the signature itself is
    /// checked by the node, which has the key types).
    pub fn validate(&self, signer: &str) -> Result<(), VoteError> {
        if self.voter != signer {
            return Err(VoteError::WrongSigner { signer: signer.to_owned(), claimed: self.voter.clone() });
        }
        if let Some(agent) = &self.agent {
            check_label("agent", agent)?;
        }
        let len = match &self.choice {
            VoteChoice::Ranking(v) | VoteChoice::Approval(v) => v.len(),
            VoteChoice::Quadratic(v) => v.len(),
        };
        if len > MAX_OPTIONS {
            return Err(field("choice", format!("{len} entries, limit {MAX_OPTIONS}")));
        }
        if self.signature.len() != 64 {
            return Err(field("signature", format!("{} bytes, an ed25519 signature has 64", self.signature.len())));
        }
        Ok(())
    }
}

impl VoteMessage {
    pub fn validate(&self, signer: &str) -> Result<(), VoteError> {
        match self {
            VoteMessage::Propose(p) => p.validate(signer),
            VoteMessage::Ballot(b) => b.validate(signer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip_and_parameters_belong_to_their_method() {
        for name in METHOD_NAMES {
            let weights = if name == "trust" { vec![("p".to_owned(), 3)] } else { vec![] };
            let credits = (name == "quadratic").then_some(5);
            assert_eq!(VoteMethod::from_name(name, credits, weights).unwrap().name(), name);
        }
        assert_eq!(VoteMethod::from_name("instant-runoff", None, vec![]).unwrap(), VoteMethod::InstantRunoff);
        assert_eq!(VoteMethod::from_name("quadratic", None, vec![]).unwrap(), VoteMethod::Quadratic { credits: DEFAULT_CREDITS });
        let err = VoteMethod::from_name("condorcet", None, vec![]).unwrap_err().to_string();
        assert!(err.contains("unknown method") && err.contains("schulze"), "{err}");
        assert!(VoteMethod::from_name("borda", Some(3), vec![]).is_err());
        assert!(VoteMethod::from_name("borda", None, vec![("p".into(), 1)]).is_err());
    }

    fn proposal() -> ProposalSpec {
        ProposalSpec {
            title: "lunch".into(),
            kind: ProposalKind::General,
            options: vec!["pizza".into(), "sushi".into()],
            method: VoteMethod::Schulze,
            proposer: "P".into(),
            created_unix_ms: 1,
            deadline_unix_ms: 2,
            quorum: None,
            nonce: 3,
        }
    }

    #[test]
    fn proposals_are_validated_and_identified_by_content() {
        let p = proposal();
        assert!(p.validate("P").is_ok());
        assert!(matches!(p.validate("Q"), Err(VoteError::WrongSigner { .. })));
        let mut q = proposal();
        q.options.push("pizza".into());
        assert!(q.validate("P").unwrap_err().to_string().contains("twice"));
        let mut r = proposal();
        r.options.truncate(1);
        assert!(r.validate("P").is_err());
        let mut s = proposal();
        s.deadline_unix_ms = 0;
        assert!(s.validate("P").is_err());
        let mut t = proposal();
        t.kind = ProposalKind::Review { function: "f".into(), candidates: vec!["def f(): pass".into()] };
        assert!(t.validate("P").unwrap_err().to_string().contains("one candidate per option"));
        let n = t.options.len();
        t.kind = ProposalKind::Review { function: "def f(x):\n\treturn x\n".into(), candidates: vec!["def f(x): return x".into(); n] };
        assert!(t.validate("P").is_ok(), "the original source may stand for the function");
        t.kind = ProposalKind::Review { function: "def f(x):\n\u{7}\n".into(), candidates: vec!["x".into(); n] };
        assert!(t.validate("P").unwrap_err().to_string().contains("function"));
        let mut zero = proposal();
        zero.quorum = Some(0);
        assert!(zero.validate("P").unwrap_err().to_string().contains("quorum"));
        zero.quorum = Some(1);
        assert!(zero.validate("P").is_ok());
        let mut u = proposal();
        u.nonce = 4;
        assert_ne!(p.id().unwrap(), u.id().unwrap());
        assert_eq!(p.id().unwrap(), proposal().id().unwrap());
    }

    #[test]
    fn ballots_name_their_signer_and_carry_a_signature() {
        let b = Ballot {
            proposal: proposal().id().unwrap(),
            voter: "V".into(),
            agent: Some("complexity".into()),
            choice: VoteChoice::Ranking(vec![1, 0]),
            cast_unix_ms: 1,
            signature: vec![0; 64],
        };
        assert!(b.validate("V").is_ok());
        assert!(b.validate("W").is_err());
        assert_eq!(b.voter_key(), "V/complexity");
        let mut short = b.clone();
        short.signature = vec![0; 10];
        assert!(short.validate("V").unwrap_err().to_string().contains("signature"));
        let mut other = b.clone();
        other.choice = VoteChoice::Ranking(vec![0, 1]);
        assert_ne!(b.signed_bytes().unwrap(), other.signed_bytes().unwrap());
    }
}
