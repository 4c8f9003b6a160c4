//! The typed tally of one proposal: counted by `pyagent_agents::voting`, with options by
//! label, as the API returns it and the CLI renders it.

use std::collections::BTreeMap;

use pyagent_agents::voting::{self, BallotBox};
use pyagent_protocol::api::{BallotView, LabelledChoice, TallyResult};
use pyagent_protocol::vote::{Ballot, ProposalId, ProposalSpec, VoteChoice, VoteMethod};

/// Counts `ballots` (already in `ballot_box`) of the proposal `spec` at `now_ms`.
pub fn tally(id: &ProposalId, spec: &ProposalSpec, ballot_box: &BallotBox, ballots: &BTreeMap<String, Ballot>, now_ms: u64) -> TallyResult {
    let mut trust = BTreeMap::new();
    if let VoteMethod::TrustWeighted { weights } = &spec.method {
        let weights: BTreeMap<&str, u64> = weights.iter().map(|(p, w)| (p.as_str(), *w)).collect();
        for (key, ballot) in ballots {
            let w = weights.get(key.as_str()).or_else(|| weights.get(ballot.voter.as_str())).copied().unwrap_or(1);
            trust.insert(key.clone(), w);
        }
    }
    let counted = voting::tally(ballot_box, &trust);
    let label = |i: usize| spec.options.get(i).cloned().unwrap_or_default();
    let labels = |v: &[u16]| v.iter().map(|&i| label(usize::from(i))).collect();
    let quorum_met = spec.quorum.is_some_and(|q| ballots.len() >= q as usize);
    TallyResult {
        proposal_id: id.to_string(),
        title: spec.title.clone(),
        method: spec.method.name().to_owned(),
        options: spec.options.clone(),
        proposer: spec.proposer.clone(),
        deadline_unix_ms: spec.deadline_unix_ms,
        quorum: spec.quorum,
        is_final: now_ms >= spec.deadline_unix_ms || quorum_met,
        winner: counted.winner().map(label),
        ranking: counted.ranking.iter().map(|&i| label(i)).collect(),
        scores: counted.scores.clone(),
        rounds: counted.rounds.clone(),
        ballots_counted: counted.ballots_counted,
        ballots: ballots
            .values()
            .map(|b| BallotView {
                voter: b.voter.clone(),
                agent: b.agent.clone(),
                cast_unix_ms: b.cast_unix_ms,
                choice: match &b.choice {
                    VoteChoice::Ranking(r) => LabelledChoice::Ranking(labels(r)),
                    VoteChoice::Approval(a) => LabelledChoice::Approval(labels(a)),
                    VoteChoice::Quadratic(q) => LabelledChoice::Quadratic(q.iter().map(|&(i, v)| (label(usize::from(i)), v)).collect()),
                },
            })
            .collect(),
    }
}
