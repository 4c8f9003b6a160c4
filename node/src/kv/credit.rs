//! What placement credits a candidate with for a prompt's KV blocks, and which prefill
//! peer a decode node hands a prompt to (pure).

use std::collections::HashMap;

use libp2p::PeerId;
use pyagent_engine::kv::BLOCK_TOKENS;
use pyagent_protocol::{InferenceCapacity, InferenceRole};

/// What placement credits one candidate with for a prompt's blocks: the run it holds
/// itself, and the run after that which it could fetch from other holders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credit {
    pub held_tokens: u64,
    pub fetchable_tokens: u64,
}

/// Credits for each candidate, from the summaries in the adverts (and this node's exact
/// run for itself). `hashes` are the prompt's full blocks that prefill could skip.
/// `recent(peer)` is the run this node has just placed there (not yet advertised).
pub fn credits(
    hashes: &[[u8; 32]],
    candidates: &[(PeerId, Option<&InferenceCapacity>)],
    local: Option<(PeerId, usize)>,
    mut recent: impl FnMut(&PeerId) -> usize,
) -> HashMap<PeerId, Credit> {
    let runs: Vec<(PeerId, usize)> = candidates
        .iter()
        .map(|(peer, c)| match (local, c) {
            (Some((me, run)), _) if me == *peer => (*peer, run),
            (_, Some(c)) => (*peer, c.kv_blocks.run(hashes).max(recent(peer))),
            (_, None) => (*peer, recent(peer)),
        })
        .collect();
    let best = |except: PeerId| runs.iter().filter(|(p, _)| *p != except).map(|(_, n)| *n).max().unwrap_or(0);
    runs.iter()
        .map(|&(peer, held)| {
            let fetchable = best(peer).saturating_sub(held);
            (peer, Credit { held_tokens: (held * BLOCK_TOKENS) as u64, fetchable_tokens: (fetchable * BLOCK_TOKENS) as u64 })
        })
        .collect()
}

/// The prefill peer to hand a prompt of whole blocks `hashes` to, and the seconds it is
/// expected to take (its queue ahead plus the blocks it does not hold by its advert's
/// summary, at its measured rate): among `peers` (members serving the model, this node
/// and cooling peers left out), those advertising `--role prefill` whose model fits, the
/// soonest done.
pub fn prefill_peer(peers: &[(PeerId, &InferenceCapacity)], hashes: &[[u8; 32]]) -> Option<(PeerId, f64)> {
    peers
        .iter()
        .filter(|(_, c)| c.role == InferenceRole::Prefill && c.fits && c.prefill_tokens_per_s > 0)
        .map(|(peer, c)| {
            let to_compute = (hashes.len() - c.kv_blocks.run(hashes)) * BLOCK_TOKENS;
            (*peer, (c.queued_prefill_tokens as f64 + to_compute as f64) / f64::from(c.prefill_tokens_per_s))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
}

/// The prefill rate placement counts for `candidate`: a decode node's prompts are
/// computed by the fastest prefill peer among `able` whose model fits, when that one is
/// faster than the node itself (its queue is not counted: an estimate).
pub fn prefill_rate(candidate: &InferenceCapacity, able: &[&InferenceCapacity]) -> u32 {
    let own = candidate.prefill_tokens_per_s;
    if candidate.role != InferenceRole::Decode {
        return own;
    }
    able.iter().filter(|c| c.role == InferenceRole::Prefill && c.fits).map(|c| c.prefill_tokens_per_s).fold(own, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::kv::KvSummary;

    #[test]
    fn a_candidate_is_credited_with_its_run_and_what_others_hold_beyond_it() {
        let hashes: Vec<[u8; 32]> = (0..10u32).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
        let (a, b, me) = (PeerId::random(), PeerId::random(), PeerId::random());
        let holds = |n: usize| InferenceCapacity { kv_blocks: KvSummary::of(&hashes[..n], 4096), ..Default::default() };
        let (ca, cb) = (holds(8), holds(2));
        let credit = credits(&hashes, &[(a, Some(&ca)), (b, Some(&cb)), (me, None)], Some((me, 4)), |_| 0);
        assert_eq!(credit[&a], Credit { held_tokens: 128, fetchable_tokens: 0 });
        assert_eq!(credit[&b], Credit { held_tokens: 32, fetchable_tokens: 96 });
        assert_eq!(credit[&me], Credit { held_tokens: 64, fetchable_tokens: 64 });
        // What this node just placed on b counts before b's advert says so.
        let credit = credits(&hashes, &[(a, Some(&ca)), (b, Some(&cb))], None, |p| if *p == b { 10 } else { 0 });
        assert_eq!(credit[&b], Credit { held_tokens: 160, fetchable_tokens: 0 });
        assert_eq!(credit[&a], Credit { held_tokens: 128, fetchable_tokens: 32 });
    }

    #[test]
    fn a_decode_node_hands_its_prompt_to_the_prefill_peer_done_soonest() {
        let (fast, busy, both, unfit) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        let cap = |role, rate, queued, fits| InferenceCapacity { role, prefill_tokens_per_s: rate, queued_prefill_tokens: queued, fits, ..Default::default() };
        let (f, b, o, u) = (cap(InferenceRole::Prefill, 1000, 0, true), cap(InferenceRole::Prefill, 4000, 20_000, true), cap(InferenceRole::Both, 9000, 0, true), cap(InferenceRole::Prefill, 9000, 0, false));
        let peers = [(fast, &f), (busy, &b), (both, &o), (unfit, &u)];
        let blocks = |n: u32| -> Vec<[u8; 32]> { (0..n).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect() };
        let (peer, secs) = prefill_peer(&peers, &blocks(64)).unwrap();
        assert_eq!(peer, fast);
        assert!((secs - 1.024).abs() < 1e-9, "{secs}");
        // A long enough prompt makes the busy but faster peer the sooner one.
        assert_eq!(prefill_peer(&peers, &blocks(6400)).unwrap().0, busy);
        // Nodes serving both roles, or whose model does not fit, are not asked.
        assert_eq!(prefill_peer(&peers[2..], &blocks(64)), None);
        // A slower peer that holds most of the prompt computes only the rest: it wins.
        let long = blocks(640);
        let slow = PeerId::random();
        let s = InferenceCapacity { kv_blocks: pyagent_protocol::kv::KvSummary::of(&long[..600], 4096), ..cap(InferenceRole::Prefill, 500, 0, true) };
        let (peer, secs) = prefill_peer(&[(fast, &f), (slow, &s)], &long).unwrap();
        assert_eq!(peer, slow);
        assert!((secs - 40.0 * 16.0 / 500.0).abs() < 1e-9, "{secs}");
        let other: Vec<[u8; 32]> = (0..64u32).map(|i| *blake3::hash(&(i + 100_000).to_le_bytes()).as_bytes()).collect();
        assert_eq!(prefill_peer(&[(fast, &f), (slow, &s)], &other).unwrap().0, fast, "none of this prompt held");
    }

    #[test]
    fn a_decode_node_is_credited_with_the_fastest_prefill_peers_rate() {
        let cap = |role, rate, fits| InferenceCapacity { role, prefill_tokens_per_s: rate, fits, ..Default::default() };
        let (decode, both) = (cap(InferenceRole::Decode, 300, true), cap(InferenceRole::Both, 300, true));
        let (fast, unfit, other) = (cap(InferenceRole::Prefill, 2000, true), cap(InferenceRole::Prefill, 9000, false), cap(InferenceRole::Both, 5000, true));
        let able = [&decode, &both, &fast, &unfit, &other];
        assert_eq!(prefill_rate(&decode, &able), 2000);
        assert_eq!(prefill_rate(&both, &able), 300, "only decode nodes hand prompts over");
        assert_eq!(prefill_rate(&fast, &able), 2000);
        assert_eq!(prefill_rate(&decode, &[&decode, &unfit, &other]), 300);
    }
}
