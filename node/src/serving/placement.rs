//! Where an inference request runs: the peer with the least expected time to the end of
//! the answer, among those where the model fits. Pure: the caller passes what it knows of
//! each peer (adverts, plus the requests it has itself placed there since).
//!
//! The cost of running request `r` on peer `p`, in seconds:
//!
//! ```text
//! cost(p, r) = wait(p) + (r.prompt_tokens - cached(p, r) - fetched(p, r)) / p.prefill_rate
//!                      +  fetched(p, r)                                   / p.fetch_rate
//!                      +  r.max_tokens                                    / p.decode_rate
//! wait(p)    = p.queued_prefill_tokens / p.prefill_rate
//!            + p.queued_decode_tokens  / p.decode_rate
//! ```
//!
//! `wait` is the work queued ahead (requests run one at a time per model); `cached` is
//! the prompt prefix the peer already holds (its KV blocks); `fetched` the run after it
//! that other peers hold, which it would fetch at the measured transfer rate (in tokens
//! per second) rather than compute, when that is faster. Load counts in the same unit as
//! cache, seconds, so a peer that holds the prefix wins while idle and loses once its
//! queue costs more than the prefill it saves. Peers whose model does not fit, or with no
//! measured rate, are not candidates. Ties (equal cost to the microsecond) go to the
//! higher rendezvous weight of the request id ([`crate::placement::weight`]), so every
//! node that places the same request with the same knowledge picks the same peer.

use libp2p::PeerId;

/// What the placing node knows of one peer for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub peer: PeerId,
    /// The model and its KV budget fit in the peer's memory.
    pub fits: bool,
    /// Measured tokens/s.
    pub prefill_rate: f64,
    pub decode_rate: f64,
    /// Work queued ahead on the peer, in tokens.
    pub queued_prefill_tokens: u64,
    pub queued_decode_tokens: u64,
    /// Tokens of this request's prompt prefix the peer holds cached.
    pub cached_tokens: u64,
    /// Tokens of the prefix after those that other peers hold (it could fetch them).
    pub fetchable_tokens: u64,
    /// Prefix tokens per second a fetch moves (0: fetching is not counted).
    pub fetch_rate: f64,
    /// The peer runs with `--role prefill`: it computes prompts for decode peers and
    /// ranks after every other candidate (it is chosen only when no other can run it,
    /// or when pinned).
    pub prefill_only: bool,
}

/// The request being placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Names the request (its ties are broken by it).
    pub id: [u8; 32],
    pub prompt_tokens: u64,
    pub max_tokens: u64,
}

/// Why no peer was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no peer can hold the model ({0} peers have it, none with the memory)")]
    NoneFits(usize),
    #[error("no peer serves the model")]
    NoPeer,
    #[error("peer {0} was asked for, and it does not serve the model (or it does not fit there)")]
    PinnedUnavailable(PeerId),
}

/// Expected seconds until the answer is complete on `c`; `None` when `c` cannot run it.
pub fn cost(c: &Candidate, r: &Request) -> Option<f64> {
    let usable = |rate: f64| rate.is_finite() && rate > 0.0;
    if !c.fits || !usable(c.prefill_rate) || !usable(c.decode_rate) {
        return None;
    }
    let wait = c.queued_prefill_tokens as f64 / c.prefill_rate + c.queued_decode_tokens as f64 / c.decode_rate;
    let uncached = r.prompt_tokens.saturating_sub(c.cached_tokens);
    let fetched = c.fetchable_tokens.min(uncached);
    let prefill = if usable(c.fetch_rate) && c.fetch_rate > c.prefill_rate {
        (uncached - fetched) as f64 / c.prefill_rate + fetched as f64 / c.fetch_rate
    } else {
        uncached as f64 / c.prefill_rate
    };
    let decode = r.max_tokens as f64 / c.decode_rate;
    Some(wait + prefill + decode)
}

/// The peers able to run `r`, cheapest first (the first is where it runs; the rest are
/// the failover order).
pub fn rank(candidates: &[Candidate], r: &Request) -> Result<Vec<PeerId>, PlacementError> {
    if candidates.is_empty() {
        return Err(PlacementError::NoPeer);
    }
    // Microseconds: equal costs compare equal whatever the float rounding.
    let mut able: Vec<(bool, u64, std::cmp::Reverse<u64>, PeerId)> = candidates
        .iter()
        .filter_map(|c| cost(c, r).map(|s| (c.prefill_only, (s * 1e6).round() as u64, std::cmp::Reverse(crate::placement::weight(&r.id, &c.peer)), c.peer)))
        .collect();
    if able.is_empty() {
        return Err(PlacementError::NoneFits(candidates.len()));
    }
    able.sort_by_key(|a| (a.0, a.1, a.2));
    able.dedup_by(|a, b| a.3 == b.3);
    Ok(able.into_iter().map(|(_, _, _, p)| p).collect())
}

/// [`rank`], or only `pinned` when the caller named a peer (`X-Pyagent-Peer`, `--peer`):
/// people who know better override the cost, but not whether the model is there.
pub fn place(candidates: &[Candidate], r: &Request, pinned: Option<PeerId>) -> Result<Vec<PeerId>, PlacementError> {
    match pinned {
        None => rank(candidates, r),
        Some(peer) => {
            let ok = candidates.iter().any(|c| c.peer == peer && cost(c, r).is_some());
            if ok { Ok(vec![peer]) } else { Err(PlacementError::PinnedUnavailable(peer)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(prefill: f64, decode: f64) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            fits: true,
            prefill_rate: prefill,
            decode_rate: decode,
            queued_prefill_tokens: 0,
            queued_decode_tokens: 0,
            cached_tokens: 0,
            fetchable_tokens: 0,
            fetch_rate: 0.0,
            prefill_only: false,
        }
    }

    #[test]
    fn a_prefill_node_ranks_after_every_other_candidate_but_can_be_pinned() {
        let mut fast = peer(4000.0, 400.0);
        fast.prefill_only = true;
        let mut slow = peer(100.0, 10.0);
        slow.queued_prefill_tokens = 10_000;
        let r = request(3);
        assert_eq!(rank(&[fast.clone(), slow.clone()], &r).unwrap(), vec![slow.peer, fast.peer]);
        // Alone, it still serves; pinned, it runs the request.
        assert_eq!(rank(std::slice::from_ref(&fast), &r).unwrap(), vec![fast.peer]);
        assert_eq!(place(&[fast.clone(), slow], &r, Some(fast.peer)).unwrap(), vec![fast.peer]);
    }

    fn request(n: u8) -> Request {
        Request { id: [n; 32], prompt_tokens: 600, max_tokens: 64 }
    }

    #[test]
    fn the_cost_is_wait_plus_uncached_prefill_plus_decode() {
        let mut c = peer(400.0, 40.0);
        c.queued_prefill_tokens = 400;
        c.queued_decode_tokens = 80;
        c.cached_tokens = 200;
        // wait 1 + 2 = 3 s; prefill (600 - 200) / 400 = 1 s; decode 64 / 40 = 1.6 s.
        let s = cost(&c, &request(0)).unwrap();
        assert!((s - 5.6).abs() < 1e-9, "{s}");
        c.cached_tokens = 10_000;
        assert!((cost(&c, &request(0)).unwrap() - 4.6).abs() < 1e-9, "a cache longer than the prompt saves the whole prefill, no more");
        for broken in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut b = peer(broken, 40.0);
            assert_eq!(cost(&b, &request(0)), None, "prefill rate {broken}");
            b.prefill_rate = 400.0;
            b.decode_rate = broken;
            assert_eq!(cost(&b, &request(0)), None, "decode rate {broken}");
        }
        let mut full = peer(400.0, 40.0);
        full.fits = false;
        assert_eq!(cost(&full, &request(0)), None);
    }

    #[test]
    fn only_peers_where_the_model_fits_are_ranked_with_a_clear_error_otherwise() {
        let mut small = peer(10_000.0, 1000.0);
        small.fits = false;
        let slow = peer(100.0, 10.0);
        assert_eq!(rank(&[small.clone(), slow.clone()], &request(1)).unwrap(), vec![slow.peer]);
        assert_eq!(rank(&[small.clone()], &request(1)), Err(PlacementError::NoneFits(1)));
        assert_eq!(rank(&[], &request(1)), Err(PlacementError::NoPeer));
        assert!(PlacementError::NoneFits(1).to_string().contains("memory"));
    }

    #[test]
    fn a_peer_holding_the_prefix_wins_when_idle_and_loses_once_its_queue_is_long() {
        let mut warm = peer(400.0, 40.0);
        warm.cached_tokens = 592; // 37 blocks of 16 of the 600-token prompt
        let cold = peer(400.0, 40.0);
        let r = request(2);
        assert_eq!(rank(&[cold.clone(), warm.clone()], &r).unwrap()[0], warm.peer);
        // The cache saves 592 / 400 = 1.48 s; one queued answer of 64 tokens costs 1.6 s.
        warm.queued_decode_tokens = 64;
        assert_eq!(rank(&[cold.clone(), warm.clone()], &r).unwrap()[0], cold.peer);
    }

    #[test]
    fn a_prefix_others_hold_counts_at_the_fetch_rate_and_only_when_fetching_is_faster() {
        let mut c = peer(400.0, 40.0);
        c.fetchable_tokens = 400;
        c.fetch_rate = 40_000.0;
        // prefill (600 - 400) / 400 = 0.5 s; fetch 400 / 40,000 = 0.01 s; decode 1.6 s.
        assert!((cost(&c, &request(0)).unwrap() - 2.11).abs() < 1e-9);
        // A fetch slower than computing is not counted.
        c.fetch_rate = 100.0;
        assert!((cost(&c, &request(0)).unwrap() - 3.1).abs() < 1e-9);
        // An idle peer that must fetch loses to an idle one that holds the prefix, and
        // beats an idle one that must compute it.
        let mut holder = peer(400.0, 40.0);
        holder.cached_tokens = 592;
        let mut fetcher = peer(400.0, 40.0);
        fetcher.fetchable_tokens = 592;
        fetcher.fetch_rate = 40_000.0;
        let cold = peer(400.0, 40.0);
        let order = rank(&[cold.clone(), fetcher.clone(), holder.clone()], &request(4)).unwrap();
        assert_eq!(order, vec![holder.peer, fetcher.peer, cold.peer]);
    }

    #[test]
    fn sixteen_identical_requests_spread_over_two_capable_peers() {
        let mut peers = [peer(400.0, 40.0), peer(400.0, 40.0)];
        let mut placed = [0usize; 2];
        for _ in 0..16 {
            let r = Request { id: [0xaa; 32], prompt_tokens: 600, max_tokens: 64 };
            let first = rank(&peers, &r).unwrap()[0];
            let i = peers.iter().position(|p| p.peer == first).unwrap();
            placed[i] += 1;
            // The placing node counts what it placed there, and the peer now holds the
            // prompt's blocks.
            let p = &mut peers[i];
            p.queued_prefill_tokens += r.prompt_tokens.saturating_sub(p.cached_tokens);
            p.queued_decode_tokens += r.max_tokens;
            p.cached_tokens = 592;
        }
        assert_eq!(placed[0] + placed[1], 16);
        assert!(placed[0] >= 7 && placed[1] >= 7, "{placed:?}");
    }

    #[test]
    fn ties_go_the_same_way_whatever_the_order_and_follow_the_request() {
        let peers: Vec<Candidate> = (0..5).map(|_| peer(400.0, 40.0)).collect();
        let mut reversed = peers.clone();
        reversed.reverse();
        let mut firsts = std::collections::HashSet::new();
        for n in 0..40u8 {
            let a = rank(&peers, &request(n)).unwrap();
            assert_eq!(a, rank(&reversed, &request(n)).unwrap());
            assert_eq!(a.len(), 5);
            firsts.insert(a[0]);
        }
        assert!(firsts.len() >= 3, "equal peers share the requests by id: {}", firsts.len());
    }

    #[test]
    fn a_pinned_peer_overrides_the_cost_but_not_the_fit() {
        let fast = peer(4000.0, 400.0);
        let slow = peer(100.0, 10.0);
        let mut unfit = peer(4000.0, 400.0);
        unfit.fits = false;
        let all = [fast.clone(), slow.clone(), unfit.clone()];
        assert_eq!(place(&all, &request(3), None).unwrap()[0], fast.peer);
        assert_eq!(place(&all, &request(3), Some(slow.peer)).unwrap(), vec![slow.peer]);
        assert_eq!(place(&all, &request(3), Some(unfit.peer)), Err(PlacementError::PinnedUnavailable(unfit.peer)));
        let stranger = PeerId::random();
        assert_eq!(place(&all, &request(3), Some(stranger)), Err(PlacementError::PinnedUnavailable(stranger)));
    }
}
