//! The seeded tie-break. Each option gets a key = BLAKE3("pyagent vote tie-break",
//! proposal id, option index); among tied options, the smaller key ranks higher. The
//! proposal id is known to every node and fixed before any ballot is cast, so nobody can
//! steer a tie after seeing the ballots, and every node breaks it the same way.

/// The tie-break key of `option` in the proposal `proposal_id`.
pub fn key(proposal_id: &[u8], option: usize) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("pyagent vote tie-break v1");
    h.update(&(proposal_id.len() as u64).to_le_bytes());
    h.update(proposal_id);
    h.update(&(option as u64).to_le_bytes());
    *h.finalize().as_bytes()
}

/// Orders options by score (higher first), then by tie-break key.
pub fn rank_by_score(proposal_id: &[u8], scores: &[i64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].cmp(&scores[a]).then_with(|| key(proposal_id, a).cmp(&key(proposal_id, b))));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_proposal_and_option() {
        assert_ne!(key(b"p1", 0), key(b"p1", 1));
        assert_ne!(key(b"p1", 0), key(b"p2", 0));
        assert_eq!(key(b"p1", 3), key(b"p1", 3));
    }

    #[test]
    fn equal_scores_are_ordered_by_key_and_the_order_depends_on_the_seed() {
        let scores = [5, 5, 5, 5, 5, 5, 5, 5];
        let a = rank_by_score(b"seed-a", &scores);
        assert_eq!(a, rank_by_score(b"seed-a", &scores));
        // Some seed among a few orders them differently: the seed really decides.
        assert!((0..16u8).any(|s| rank_by_score(&[s], &scores) != a));
        // Scores still come first.
        assert_eq!(rank_by_score(b"seed-a", &[1, 9, 5])[0], 1);
    }
}
