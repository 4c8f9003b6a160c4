//! The vote methods of the local API: `vote.propose`, `vote.ballot` (options by label),
//! `vote.tally`. See [`crate::votes`].

use pyagent_protocol::api::{self, VoteBallotParams, VoteBallotResult, VoteProposeParams, VoteProposeResult, VoteTallyParams};
use pyagent_protocol::vote::{ProposalId, ProposalKind, ProposalSpec, VoteChoice, VoteMethod};
use serde_json::Value;

use crate::api::ApiContext;
use crate::votes::VotesError;
use super::replies::{internal, invalid, unavailable};

/// Default voting window.
pub const DEFAULT_DEADLINE_SECS: u64 = 300;
/// Longest voting window.
pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;

/// A refusal from the vote book: bad input is invalid params, the node's own failure
/// (signing) an internal error.
fn refused(id: &Value, method: &str, e: &VotesError) -> Vec<u8> {
    if e.is_bad_input() { invalid(id, format!("{method}: {e}")) } else { internal(id, format!("{method}: {e}")) }
}

pub async fn propose(id: &Value, ctx: &ApiContext, params: VoteProposeParams) -> Vec<u8> {
    let weights = params.weights.clone().unwrap_or_default().into_iter().collect();
    let method = match VoteMethod::from_name(&params.method, params.credits, weights) {
        Ok(m) => m,
        Err(e) => return invalid(id, format!("vote.propose: {e}")),
    };
    let deadline_secs = params.deadline_secs.unwrap_or(DEFAULT_DEADLINE_SECS);
    if deadline_secs == 0 || deadline_secs > MAX_DEADLINE_SECS {
        return invalid(id, format!("vote.propose: deadline_secs must be 1..={MAX_DEADLINE_SECS}"));
    }
    let (kind, options) = match params.review {
        Some(review) => {
            let options = if params.options.is_empty() {
                (1..=review.candidates.len()).map(|i| i.to_string()).collect()
            } else {
                params.options
            };
            (ProposalKind::Review { function: review.function, candidates: review.candidates }, options)
        }
        None => (ProposalKind::General, params.options),
    };
    let created = crate::store::now_unix_ms();
    let spec = ProposalSpec {
        title: params.title,
        kind,
        options,
        method,
        proposer: String::new(),
        created_unix_ms: created,
        deadline_unix_ms: created + deadline_secs * 1000,
        quorum: params.quorum,
        nonce: crate::node::random_boot_id(),
    };
    match ctx.client.propose(spec).await {
        Ok(Ok(proposal)) => api::result_reply(id, &VoteProposeResult { proposal_id: proposal.to_string() }),
        Ok(Err(e)) => refused(id, "vote.propose", &e),
        Err(e) => unavailable(id, e.to_string()),
    }
}

fn index_of(options: &[String], label: &str) -> Result<u16, String> {
    options
        .iter()
        .position(|o| o == label)
        .and_then(|i| u16::try_from(i).ok())
        .ok_or_else(|| format!("no option {label:?}; options: {}", options.join(", ")))
}

pub async fn ballot(id: &Value, ctx: &ApiContext, params: VoteBallotParams) -> Vec<u8> {
    let proposal: ProposalId = match params.proposal_id.parse() {
        Ok(p) => p,
        Err(e) => return invalid(id, format!("vote.ballot: {e}")),
    };
    let options = match ctx.client.tally(proposal).await {
        Ok(Ok(t)) => t.options,
        Ok(Err(e)) => return refused(id, "vote.ballot", &e),
        Err(e) => return unavailable(id, e.to_string()),
    };
    let labels = |v: &[String]| v.iter().map(|l| index_of(&options, l)).collect::<Result<Vec<u16>, String>>();
    let choice = match (params.ranking, params.approval, params.quadratic) {
        (Some(r), None, None) => labels(&r).map(VoteChoice::Ranking),
        (None, Some(a), None) => labels(&a).map(VoteChoice::Approval),
        (None, None, Some(q)) => q
            .iter()
            .map(|(l, v)| index_of(&options, l).map(|i| (i, *v)))
            .collect::<Result<Vec<_>, String>>()
            .map(VoteChoice::Quadratic),
        _ => Err("give exactly one of ranking, approval, quadratic".into()),
    };
    let choice = match choice {
        Ok(c) => c,
        Err(e) => return invalid(id, format!("vote.ballot: {e}")),
    };
    match ctx.client.ballot(proposal, choice).await {
        Ok(Ok(())) => api::result_reply(id, &VoteBallotResult { accepted: true }),
        Ok(Err(e)) => refused(id, "vote.ballot", &e),
        Err(e) => unavailable(id, e.to_string()),
    }
}

pub async fn tally(id: &Value, ctx: &ApiContext, params: VoteTallyParams) -> Vec<u8> {
    let proposal: ProposalId = match params.proposal_id.parse() {
        Ok(p) => p,
        Err(e) => return invalid(id, format!("vote.tally: {e}")),
    };
    match ctx.client.tally(proposal).await {
        Ok(Ok(t)) => api::result_reply(id, &t),
        Ok(Err(e)) => refused(id, "vote.tally", &e),
        Err(e) => unavailable(id, e.to_string()),
    }
}
