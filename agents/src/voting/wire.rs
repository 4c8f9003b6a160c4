//! The one mapping between the vote types on the wire (`pyagent_protocol::vote`, what
//! proposals and signed ballots carry) and the counting types of this module. Option
//! indexes are `u16` on the wire (at most [`super::ballot::MAX_OPTIONS`]) and `usize` here.

use pyagent_protocol::vote::{VoteChoice, VoteMethod};

use super::ballot::{Choice, Method};

impl From<&VoteMethod> for Method {
    fn from(method: &VoteMethod) -> Self {
        match method {
            VoteMethod::Plurality => Method::Plurality,
            VoteMethod::Approval => Method::Approval,
            VoteMethod::Borda => Method::Borda,
            VoteMethod::InstantRunoff => Method::InstantRunoff,
            VoteMethod::Schulze => Method::Schulze,
            VoteMethod::Quadratic { credits } => Method::Quadratic { credits: *credits },
            // The weights are applied at tally time, per voter.
            VoteMethod::TrustWeighted { .. } => Method::TrustWeighted,
        }
    }
}

impl From<&VoteChoice> for Choice {
    fn from(choice: &VoteChoice) -> Self {
        let idx = |v: &[u16]| v.iter().map(|&i| usize::from(i)).collect();
        match choice {
            VoteChoice::Ranking(r) => Choice::Ranking(idx(r)),
            VoteChoice::Approval(a) => Choice::Approval(idx(a)),
            VoteChoice::Quadratic(q) => Choice::Quadratic(q.iter().map(|&(o, v)| (usize::from(o), v)).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_method_maps_to_the_counting_method_of_the_same_kind() {
        for name in pyagent_protocol::vote::METHOD_NAMES {
            let wire = VoteMethod::from_name(name, None, vec![]).unwrap();
            let counting = Method::from(&wire);
            assert_eq!(counting.ballot_kind() == "ranking", wire.is_ranked(), "{name}");
        }
        assert_eq!(Method::from(&VoteMethod::Quadratic { credits: 9 }), Method::Quadratic { credits: 9 });
    }

    #[test]
    fn choices_keep_their_option_indexes() {
        assert_eq!(Choice::from(&VoteChoice::Ranking(vec![2, 0, 1])), Choice::Ranking(vec![2, 0, 1]));
        assert_eq!(Choice::from(&VoteChoice::Approval(vec![63])), Choice::Approval(vec![63]));
        assert_eq!(Choice::from(&VoteChoice::Quadratic(vec![(1, 4)])), Choice::Quadratic(vec![(1, 4)]));
    }
}
