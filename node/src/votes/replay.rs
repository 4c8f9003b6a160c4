//! A tally replayed from history alone: the proposal entry and the ballot entries of a
//! proposal, counted the same way on every node whatever order they arrived in. Ballots
//! are taken in (cast time, entry id) order: a voter's first ballot stands, later ones
//! and ballots cast after the deadline do not count, and a ballot whose voter signature
//! does not check is left out.

use std::collections::BTreeMap;

use pyagent_agents::voting::{self, BallotBox, Method, Proposal};
use pyagent_protocol::api::TallyResult;
use pyagent_protocol::history::{Entry, EntryId, HistoryEvent};
use pyagent_protocol::vote::{Ballot, ProposalId};

use super::VotesError;

/// The tally of `id` from its history entries (any order, duplicates allowed), at `now_ms`.
pub fn tally(id: &ProposalId, entries: &[(EntryId, Entry)], now_ms: u64) -> Result<TallyResult, VotesError> {
    let spec = entries
        .iter()
        .find_map(|(_, e)| match &e.body.event {
            HistoryEvent::Proposal(spec) if spec.id().ok().as_ref() == Some(id) => Some(spec.as_ref().clone()),
            _ => None,
        })
        .ok_or(VotesError::UnknownProposal(*id))?;
    let proposal = Proposal::new(id.0.to_vec(), spec.options.clone(), Method::from(&spec.method)).map_err(|e| VotesError::Rejected(e.to_string()))?;
    let mut ballot_box = BallotBox::new(proposal);
    let mut ordered: Vec<(u64, EntryId, &Ballot)> = entries
        .iter()
        .filter_map(|(eid, e)| match &e.body.event {
            HistoryEvent::Ballot(b) if b.proposal == *id => Some((b.cast_unix_ms, *eid, b.as_ref())),
            _ => None,
        })
        .collect();
    ordered.sort_by_key(|(at, id, _)| (*at, *id));
    let mut ballots: BTreeMap<String, Ballot> = BTreeMap::new();
    for (_, _, ballot) in ordered {
        let key = ballot.voter_key();
        if ballots.contains_key(&key) || ballot.cast_unix_ms > spec.deadline_unix_ms || super::signing::verify(ballot).is_err() {
            continue;
        }
        if ballot_box.cast(voting::Ballot { voter: key.clone(), choice: (&ballot.choice).into() }).is_ok() {
            ballots.insert(key, ballot.clone());
        }
    }
    Ok(super::tally::tally(id, &spec, &ballot_box, &ballots, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::entry;
    use libp2p::identity::Keypair;
    use pyagent_protocol::vote::{ProposalKind, ProposalSpec, VoteChoice, VoteMethod};

    fn spec(proposer: &Keypair) -> ProposalSpec {
        ProposalSpec {
            title: "lunch".into(),
            kind: ProposalKind::General,
            options: vec!["pizza".into(), "sushi".into(), "soup".into()],
            method: VoteMethod::Borda,
            proposer: proposer.public().to_peer_id().to_string(),
            created_unix_ms: 1_000,
            deadline_unix_ms: 10_000,
            quorum: None,
            nonce: 1,
        }
    }

    fn ballot(voter: &Keypair, id: ProposalId, ranking: Vec<u16>, at: u64) -> Ballot {
        let mut b = Ballot { proposal: id, voter: voter.public().to_peer_id().to_string(), agent: None, choice: VoteChoice::Ranking(ranking), cast_unix_ms: at, signature: Vec::new() };
        super::super::signing::sign(voter, &mut b).unwrap();
        b
    }

    #[test]
    fn the_same_entries_in_any_order_give_the_same_tally() {
        let (p, v1, v2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let spec = spec(&p);
        let id = spec.id().unwrap();
        let mut events = vec![(&p, HistoryEvent::Proposal(Box::new(spec.clone())))];
        events.push((&v1, HistoryEvent::Ballot(Box::new(ballot(&v1, id, vec![1, 0, 2], 2_000)))));
        // A second ballot of the same voter, later: the first stands.
        events.push((&v1, HistoryEvent::Ballot(Box::new(ballot(&v1, id, vec![0, 1, 2], 3_000)))));
        events.push((&v2, HistoryEvent::Ballot(Box::new(ballot(&v2, id, vec![1, 2, 0], 2_500)))));
        // After the deadline: not counted.
        let late = Keypair::generate_ed25519();
        events.push((&late, HistoryEvent::Ballot(Box::new(ballot(&late, id, vec![2, 0, 1], 11_000)))));
        let entries: Vec<(EntryId, Entry)> = events
            .into_iter()
            .map(|(kp, ev)| {
                let (e, k) = entry::sign(kp, id, ev, 5).unwrap();
                (k.id, e)
            })
            .collect();
        let forward = tally(&id, &entries, 20_000).unwrap();
        let mut reversed = entries.clone();
        reversed.reverse();
        reversed.extend(entries.iter().cloned()); // duplicates change nothing
        let backward = tally(&id, &reversed, 20_000).unwrap();
        assert_eq!(forward, backward);
        assert_eq!(forward.ballots_counted, 2);
        assert_eq!(forward.winner.as_deref(), Some("sushi"));
        assert!(forward.is_final);
        assert!(matches!(tally(&TaskIdLike::other(), &entries, 20_000), Err(VotesError::UnknownProposal(_))));
    }

    struct TaskIdLike;
    impl TaskIdLike {
        fn other() -> ProposalId {
            pyagent_protocol::task::TaskId([0xEE; 32])
        }
    }
}
