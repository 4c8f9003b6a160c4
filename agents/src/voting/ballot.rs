//! Proposals, ballots and the ballot box.

use std::collections::BTreeMap;

/// The bounds of the wire (`pyagent_protocol::vote`) are the bounds of the count: one
/// definition for both.
pub use pyagent_protocol::vote::{MAX_CREDITS, MAX_OPTIONS};

/// How ballots are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// One vote for the first choice of a ranking; most votes wins.
    Plurality,
    /// One vote for every approved option.
    Approval,
    /// Rankings; with n options, the k-th choice (from 0) gets n-1-k points, unranked 0.
    Borda,
    /// Rankings; the option with the fewest first choices is eliminated until one is
    /// left. Elimination ties: the tied option with fewer votes in the latest earlier
    /// round where they differ goes ("backwards"); if they never differ, the seeded order.
    InstantRunoff,
    /// Rankings; Schulze's strongest paths with winning strength.
    Schulze,
    /// Each voter spends at most `credits`; v votes on one option cost v² credits.
    Quadratic { credits: u64 },
    /// Borda points multiplied by the voter's trust weight (unknown voters weigh 1).
    TrustWeighted,
}

impl Method {
    /// The kind of ballot this method counts.
    pub fn ballot_kind(&self) -> &'static str {
        match self {
            Self::Approval => "approval",
            Self::Quadratic { .. } => "quadratic",
            _ => "ranking",
        }
    }
}

/// What a voter chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Options from most to least preferred; unlisted options rank below all listed ones.
    Ranking(Vec<usize>),
    /// The options approved of.
    Approval(Vec<usize>),
    /// Votes put on options.
    Quadratic(Vec<(usize, u64)>),
}

impl Choice {
    fn kind(&self) -> &'static str {
        match self {
            Self::Ranking(_) => "ranking",
            Self::Approval(_) => "approval",
            Self::Quadratic(_) => "quadratic",
        }
    }
}

/// One voter's ballot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    /// The voter (a PeerId, once ballots are signed by nodes).
    pub voter: String,
    pub choice: Choice,
}

/// A question put to a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Identifies the proposal and seeds its tie-break (BLAKE3 of its encoding, later).
    pub id: Vec<u8>,
    pub options: Vec<String>,
    pub method: Method,
}

/// Why a proposal is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("a proposal needs at least 2 options, got {0}")]
    TooFewOptions(usize),
    #[error("a proposal has at most {MAX_OPTIONS} options, got {0}")]
    TooManyOptions(usize),
    #[error("option {0:?} appears twice")]
    DuplicateOption(String),
    #[error("quadratic credits must be between 1 and {MAX_CREDITS}, got {0}")]
    Credits(u64),
}

impl Proposal {
    pub fn new(id: impl Into<Vec<u8>>, options: Vec<String>, method: Method) -> Result<Self, ProposalError> {
        if options.len() < 2 {
            return Err(ProposalError::TooFewOptions(options.len()));
        }
        if options.len() > MAX_OPTIONS {
            return Err(ProposalError::TooManyOptions(options.len()));
        }
        for (i, o) in options.iter().enumerate() {
            if options[..i].contains(o) {
                return Err(ProposalError::DuplicateOption(o.clone()));
            }
        }
        if let Method::Quadratic { credits } = method
            && !(1..=MAX_CREDITS).contains(&credits)
        {
            return Err(ProposalError::Credits(credits));
        }
        Ok(Self { id: id.into(), options, method })
    }
}

/// Why a ballot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BallotError {
    #[error("{voter} already voted on this proposal; one ballot per voter")]
    Duplicate { voter: String },
    #[error("this proposal counts {expected} ballots, not {got} ballots")]
    WrongKind { expected: &'static str, got: &'static str },
    #[error("option {option} does not exist (the proposal has {count} options)")]
    UnknownOption { option: usize, count: usize },
    #[error("option {0} is listed twice")]
    RepeatedOption(usize),
    #[error("the ballot chooses nothing")]
    Empty,
    #[error("the ballot spends {spent} credits; the budget is {credits}")]
    OverBudget { spent: u128, credits: u64 },
}

fn check_options(options: impl Iterator<Item = usize>, count: usize) -> Result<usize, BallotError> {
    let mut seen = vec![false; count];
    let mut n = 0;
    for option in options {
        let slot = seen.get_mut(option).ok_or(BallotError::UnknownOption { option, count })?;
        if *slot {
            return Err(BallotError::RepeatedOption(option));
        }
        *slot = true;
        n += 1;
    }
    if n == 0 { Err(BallotError::Empty) } else { Ok(n) }
}

impl Proposal {
    /// Checks a ballot against this proposal (kind, options, budget).
    pub fn check(&self, ballot: &Ballot) -> Result<(), BallotError> {
        let expected = self.method.ballot_kind();
        if ballot.choice.kind() != expected {
            return Err(BallotError::WrongKind { expected, got: ballot.choice.kind() });
        }
        let count = self.options.len();
        match (&ballot.choice, &self.method) {
            (Choice::Ranking(r), _) => check_options(r.iter().copied(), count).map(drop),
            (Choice::Approval(a), _) => check_options(a.iter().copied(), count).map(drop),
            (Choice::Quadratic(q), Method::Quadratic { credits }) => {
                check_options(q.iter().map(|(o, _)| *o), count)?;
                let spent: u128 = q.iter().map(|(_, v)| u128::from(*v) * u128::from(*v)).sum();
                if spent > u128::from(*credits) {
                    return Err(BallotError::OverBudget { spent, credits: *credits });
                }
                if q.iter().all(|(_, v)| *v == 0) {
                    return Err(BallotError::Empty);
                }
                Ok(())
            }
            (Choice::Quadratic(_), _) => Err(BallotError::WrongKind { expected, got: "quadratic" }),
        }
    }
}

/// Accepts valid ballots, one per voter, in any order.
#[derive(Debug, Clone)]
pub struct BallotBox {
    proposal: Proposal,
    /// Keyed by voter: iteration order is the same on every node.
    ballots: BTreeMap<String, Ballot>,
}

impl BallotBox {
    pub fn new(proposal: Proposal) -> Self {
        Self { proposal, ballots: BTreeMap::new() }
    }

    pub fn proposal(&self) -> &Proposal {
        &self.proposal
    }

    /// Adds a ballot, or says why not. A second ballot of a voter is refused, even if
    /// identical, and the first one stands.
    pub fn cast(&mut self, ballot: Ballot) -> Result<(), BallotError> {
        if self.ballots.contains_key(&ballot.voter) {
            return Err(BallotError::Duplicate { voter: ballot.voter });
        }
        self.proposal.check(&ballot)?;
        self.ballots.insert(ballot.voter.clone(), ballot);
        Ok(())
    }

    /// The accepted ballots, ordered by voter.
    pub fn ballots(&self) -> impl Iterator<Item = &Ballot> {
        self.ballots.values()
    }

    pub fn len(&self) -> usize {
        self.ballots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ballots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("option-{i}")).collect()
    }

    fn ranking(voter: &str, r: &[usize]) -> Ballot {
        Ballot { voter: voter.into(), choice: Choice::Ranking(r.to_vec()) }
    }

    #[test]
    fn duplicate_ballot_is_rejected_and_the_first_stands() {
        let mut bb = BallotBox::new(Proposal::new("p", opts(3), Method::Borda).unwrap());
        bb.cast(ranking("peer-a", &[0, 1])).unwrap();
        let err = bb.cast(ranking("peer-a", &[2, 1])).unwrap_err();
        assert_eq!(err, BallotError::Duplicate { voter: "peer-a".into() });
        assert_eq!(bb.len(), 1);
        assert_eq!(bb.ballots().next().unwrap().choice, Choice::Ranking(vec![0, 1]));
    }

    #[test]
    fn malformed_ballots_are_rejected_with_a_reason() {
        let mut bb = BallotBox::new(Proposal::new("p", opts(3), Method::Schulze).unwrap());
        assert_eq!(bb.cast(ranking("a", &[0, 3])), Err(BallotError::UnknownOption { option: 3, count: 3 }));
        assert_eq!(bb.cast(ranking("b", &[1, 1])), Err(BallotError::RepeatedOption(1)));
        assert_eq!(bb.cast(ranking("c", &[])), Err(BallotError::Empty));
        let approval = Ballot { voter: "d".into(), choice: Choice::Approval(vec![0]) };
        assert_eq!(bb.cast(approval), Err(BallotError::WrongKind { expected: "ranking", got: "approval" }));
        assert!(bb.is_empty(), "nothing invalid got in");
    }

    #[test]
    fn quadratic_budget_is_enforced() {
        let mut bb = BallotBox::new(Proposal::new("p", opts(3), Method::Quadratic { credits: 100 }).unwrap());
        // 6² + 8² = 100: exactly the budget.
        let ok = Ballot { voter: "a".into(), choice: Choice::Quadratic(vec![(0, 6), (1, 8)]) };
        assert_eq!(bb.cast(ok), Ok(()));
        let over = Ballot { voter: "b".into(), choice: Choice::Quadratic(vec![(0, 6), (1, 8), (2, 1)]) };
        assert_eq!(bb.cast(over), Err(BallotError::OverBudget { spent: 101, credits: 100 }));
        let huge = Ballot { voter: "c".into(), choice: Choice::Quadratic(vec![(0, u64::MAX)]) };
        assert!(matches!(bb.cast(huge), Err(BallotError::OverBudget { .. })), "no overflow");
    }

    #[test]
    fn invalid_proposals_are_rejected() {
        assert_eq!(Proposal::new("p", opts(1), Method::Plurality), Err(ProposalError::TooFewOptions(1)));
        assert!(matches!(Proposal::new("p", opts(65), Method::Plurality), Err(ProposalError::TooManyOptions(65))));
        assert!(matches!(Proposal::new("p", vec!["a".into(), "a".into()], Method::Plurality), Err(ProposalError::DuplicateOption(_))));
        assert_eq!(Proposal::new("p", opts(2), Method::Quadratic { credits: 0 }), Err(ProposalError::Credits(0)));
    }
}
