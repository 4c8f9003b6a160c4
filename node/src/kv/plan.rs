//! Which peer to fetch which blocks from (pure): the prompt's prefix hashes, the peers'
//! summaries of what they hold, and the peers not to ask for a while.
//!
//! From the first block this node lacks, the peer whose summary holds the longest run
//! serves that run; from the end of it the next peer, and so on until no peer holds the
//! next block. A long run that several peers hold is split between them in contiguous
//! parts of at least [`MIN_PART_BLOCKS`], fetched in parallel. Summaries can be stale or
//! false positives: a part answered short only shortens the prefix used.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::kv::KvSummary;

/// Blocks a part has at least when a run is split between peers (a part of fewer costs
/// more in round trips than it saves).
pub const MIN_PART_BLOCKS: usize = 16;
/// Peers one run is split between at most.
pub const MAX_PARALLEL: usize = 3;
/// How long a peer that served a bad block, or failed, is not asked again.
pub const COOLDOWN: Duration = Duration::from_secs(60);

/// Blocks `range` (indices into the prompt's hashes) from `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub peer: PeerId,
    pub range: Range<usize>,
}

/// The parts to fetch, in prompt order, for `hashes[from..]`.
pub fn plan(holders: &[(PeerId, &KvSummary)], hashes: &[[u8; 32]], from: usize) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut at = from;
    while at < hashes.len() {
        let runs: Vec<(PeerId, usize)> = holders.iter().map(|(p, s)| (*p, s.run(&hashes[at..]))).filter(|(_, n)| *n > 0).collect();
        let Some(&(best, longest)) = runs.iter().max_by_key(|(p, n)| (*n, std::cmp::Reverse(*p))) else { break };
        // Peers that hold the whole run share it.
        let mut sharing: Vec<PeerId> = runs.iter().filter(|(p, n)| *n >= longest && *p != best).map(|(p, _)| *p).collect();
        sharing.sort();
        sharing.insert(0, best);
        let ways = sharing.len().min(MAX_PARALLEL).min((longest / MIN_PART_BLOCKS).max(1));
        let (each, extra) = (longest / ways, longest % ways);
        let mut start = at;
        for (i, peer) in sharing.into_iter().take(ways).enumerate() {
            let len = each + usize::from(i < extra);
            parts.push(Part { peer, range: start..start + len });
            start += len;
        }
        at += longest;
    }
    parts
}

/// Where this node has just placed prompts: the blocks each peer is about to hold, before
/// its advert says so (an advert interval later). Placement counts them like advertised
/// ones, so a burst of requests with one prefix follows the first to the same peer
/// instead of each finding a stale summary. Entries last [`RECENT_FOR`]; at most
/// [`RECENT_BLOCKS`] are kept (the oldest go first).
#[derive(Debug, Default)]
pub struct Recent {
    at: HashMap<[u8; 32], (PeerId, Instant)>,
    order: std::collections::VecDeque<([u8; 32], Instant)>,
}

/// How long a placement counts before the adverts take over.
pub const RECENT_FOR: Duration = Duration::from_secs(10);
/// Blocks remembered at most.
pub const RECENT_BLOCKS: usize = 16_384;

impl Recent {
    /// `peer` will hold `hashes` (a prompt placed there).
    pub fn note(&mut self, peer: PeerId, hashes: &[[u8; 32]], now: Instant) {
        for h in hashes {
            self.at.insert(*h, (peer, now));
            self.order.push_back((*h, now));
        }
        self.expire(now);
    }

    /// How many of `hashes`, from the first, `peer` was recently given.
    pub fn run(&mut self, peer: &PeerId, hashes: &[[u8; 32]], now: Instant) -> usize {
        self.expire(now);
        hashes.iter().take_while(|h| self.at.get(*h).is_some_and(|(p, _)| p == peer)).count()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(h, t)) = self.order.front() {
            if now.duration_since(t) < RECENT_FOR && self.order.len() <= RECENT_BLOCKS {
                break;
            }
            self.order.pop_front();
            if self.at.get(&h).is_some_and(|(_, at)| *at == t) {
                self.at.remove(&h);
            }
        }
    }
}

/// Peers not to ask for a while (they failed or served a bad block), with an injected
/// clock.
#[derive(Debug, Default)]
pub struct Cooldowns {
    until: HashMap<PeerId, Instant>,
}

impl Cooldowns {
    pub fn punish(&mut self, peer: PeerId, now: Instant) {
        self.until.insert(peer, now + COOLDOWN);
    }

    pub fn is_cooling(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.until.retain(|_, until| *until > now);
        self.until.contains_key(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<[u8; 32]> {
        (0..n as u32).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect()
    }

    #[test]
    fn the_longest_runs_are_fetched_in_order_and_long_shared_runs_split() {
        let h = hashes(64);
        let a = PeerId::random();
        let b = PeerId::random();
        let c = PeerId::random();
        let first_half = KvSummary::of(&h[..32], 4096);
        let all = KvSummary::of(&h, 4096);
        let tail = KvSummary::of(&h[32..40], 4096);
        // Only a holds the first half; c holds blocks 32..40: two parts in order.
        let parts = plan(&[(a, &first_half), (c, &tail)], &h, 4);
        assert_eq!(parts, vec![Part { peer: a, range: 4..32 }, Part { peer: c, range: 32..40 }]);
        // b and a hold everything from block 0: the run is split in two.
        let parts = plan(&[(a, &all), (b, &all)], &h, 0);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].range, 0..32);
        assert_eq!(parts[1].range, 32..64);
        assert_ne!(parts[0].peer, parts[1].peer);
        // A short run is not split.
        let parts = plan(&[(a, &all), (b, &all)], &h, 50);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].range, 50..64);
        // Nobody holds block 0: nothing to fetch.
        assert!(plan(&[(c, &tail)], &h, 0).is_empty());
        assert!(plan(&[], &h, 0).is_empty());
    }

    #[test]
    fn recent_placements_count_until_the_adverts_take_over() {
        let h = hashes(8);
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut recent = Recent::default();
        let t0 = Instant::now();
        recent.note(a, &h[..5], t0);
        assert_eq!(recent.run(&a, &h, t0), 5);
        assert_eq!(recent.run(&b, &h, t0), 0);
        // The same prefix placed on b later: b's now.
        recent.note(b, &h[..3], t0 + Duration::from_secs(1));
        assert_eq!(recent.run(&b, &h, t0 + Duration::from_secs(1)), 3);
        assert_eq!(recent.run(&a, &h, t0 + Duration::from_secs(1)), 0);
        assert_eq!(recent.run(&b, &h, t0 + RECENT_FOR + Duration::from_secs(2)), 0, "expired");
        assert!(recent.at.is_empty() && recent.order.is_empty());
    }

    #[test]
    fn a_punished_peer_cools_down_then_is_asked_again() {
        let mut cool = Cooldowns::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        assert!(!cool.is_cooling(&peer, t0));
        cool.punish(peer, t0);
        assert!(cool.is_cooling(&peer, t0 + Duration::from_secs(59)));
        assert!(!cool.is_cooling(&peer, t0 + COOLDOWN + Duration::from_millis(1)));
    }
}
