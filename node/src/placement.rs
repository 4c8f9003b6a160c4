//! Placement by rendezvous (highest-random-weight) hashing: every node orders the
//! candidates for a key the same way, from the key and the candidates' PeerIds alone, so
//! no coordination is needed to agree on who holds or runs it, and who takes over if that
//! one dies. Tasks use it for their executors, the history for its shard owners
//! (`history::owners`), and inference placement breaks its cost ties by it
//! (`serving::placement`); a key is any 32-byte id.

use libp2p::PeerId;

/// A candidate's weight for a key: the first 8 bytes of BLAKE3(key ‖ PeerId).
pub fn weight(key: &[u8; 32], peer: &PeerId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key);
    hasher.update(&peer.to_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Candidates from the highest weight down (ties, which need a hash collision, by PeerId);
/// duplicates are removed.
pub fn order(key: &[u8; 32], candidates: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
    let mut weighted: Vec<(u64, Vec<u8>, PeerId)> =
        candidates.into_iter().map(|p| (weight(key, &p), p.to_bytes(), p)).collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    weighted.dedup_by(|a, b| a.2 == b.2);
    weighted.into_iter().map(|(_, _, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_does_not_depend_on_the_input_order() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let task = [7; 32];
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(order(&task, peers.clone()), order(&task, reversed));
        let mut doubled = peers.clone();
        doubled.extend(peers.iter().copied());
        assert_eq!(order(&task, doubled).len(), peers.len());
    }

    #[test]
    fn removing_a_candidate_keeps_the_others_in_order() {
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let task = [1; 32];
        let full = order(&task, peers.clone());
        let without_first: Vec<PeerId> = peers.iter().copied().filter(|p| *p != full[0]).collect();
        assert_eq!(order(&task, without_first), full[1..].to_vec());
    }

    #[test]
    fn tasks_spread_over_candidates() {
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let mut firsts = std::collections::HashMap::new();
        for i in 0..400u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            *firsts.entry(order(&id, peers.clone())[0]).or_insert(0) += 1;
        }
        // Each of 4 peers gets about 100 of 400 tasks; far from it means a broken weight.
        assert_eq!(firsts.len(), 4);
        assert!(firsts.values().all(|&n| (50..=150).contains(&n)), "{firsts:?}");
    }
}
