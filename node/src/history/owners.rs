//! Who owns each shard: the first R live members in the rendezvous order of the shard's
//! placement key ([`crate::placement`]), so every node with the same view computes the
//! same owners and a join or leave moves only the replicas it must. A swarm smaller than
//! R keeps every shard on every member.

use libp2p::PeerId;
use pyagent_protocol::history::{SHARDS, ShardId};

/// The owners of every shard for one membership view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    members: Vec<PeerId>,
    by_shard: Vec<Vec<PeerId>>,
}

impl Owners {
    /// The owners of all shards among `members` (this node included), `replicas` each.
    pub fn compute(members: &[PeerId], replicas: usize) -> Self {
        let mut sorted = members.to_vec();
        sorted.sort();
        sorted.dedup();
        let by_shard = ShardId::all()
            .map(|s| {
                let mut order = crate::placement::order(&s.placement_key(), sorted.iter().copied());
                order.truncate(replicas);
                order
            })
            .collect();
        Self { members: sorted, by_shard }
    }

    /// The members this was computed for, sorted.
    pub fn members(&self) -> &[PeerId] {
        &self.members
    }

    /// The owners of `shard`, most preferred first.
    pub fn of(&self, shard: ShardId) -> &[PeerId] {
        self.by_shard.get(usize::from(shard.0)).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn owns(&self, peer: &PeerId, shard: ShardId) -> bool {
        self.of(shard).contains(peer)
    }

    /// Shards both `a` and `b` own.
    pub fn shared(&self, a: &PeerId, b: &PeerId) -> Vec<ShardId> {
        ShardId::all().filter(|s| self.owns(a, *s) && self.owns(b, *s)).collect()
    }

    /// How many (shard, owner) replicas differ between two placements.
    pub fn moved_replicas(&self, other: &Owners) -> usize {
        (0..SHARDS as usize)
            .map(|i| {
                let (a, b) = (&self.by_shard[i], &other.by_shard[i]);
                b.iter().filter(|p| !a.contains(p)).count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_computes_the_same_owners_for_the_same_view() {
        let peers: Vec<PeerId> = (0..7).map(|_| PeerId::random()).collect();
        let mut shuffled = peers.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        shuffled.push(peers[2]); // a duplicate changes nothing
        let (a, b) = (Owners::compute(&peers, 3), Owners::compute(&shuffled, 3));
        assert_eq!(a, b);
        for s in ShardId::all() {
            assert_eq!(a.of(s).len(), 3);
        }
    }

    #[test]
    fn a_swarm_smaller_than_r_keeps_every_shard_everywhere() {
        let peers: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        let owners = Owners::compute(&peers, 3);
        assert!(ShardId::all().all(|s| owners.of(s).len() == 2));
        assert_eq!(owners.shared(&peers[0], &peers[1]).len(), SHARDS as usize);
    }

    #[test]
    fn a_join_moves_about_r_over_n_plus_one_of_the_shards() {
        // Joining the (N+1)-th node: it takes each shard with probability R/(N+1), so
        // about 1,024·R/(N+1) replicas move, and nothing else does.
        for n in [3usize, 5, 9] {
            let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
            let before = Owners::compute(&peers, 3);
            let newcomer = PeerId::random();
            let mut joined = peers.clone();
            joined.push(newcomer);
            let after = Owners::compute(&joined, 3);
            let moved = before.moved_replicas(&after);
            let to_newcomer = ShardId::all().filter(|s| after.owns(&newcomer, *s)).count();
            assert_eq!(moved, to_newcomer, "only the newcomer gains replicas");
            let expected = 1024.0 * 3.0 / (n as f64 + 1.0);
            let ratio = moved as f64 / expected;
            eprintln!(
                "join {n} -> {}: {moved} of 3072 replicas moved, one in each of {:.1}% of the shards (R/(N+1) = {:.1}%)",
                n + 1,
                100.0 * moved as f64 / 1024.0,
                300.0 / (n as f64 + 1.0)
            );
            assert!((0.8..1.2).contains(&ratio), "n={n}: {moved} moved, expected about {expected:.0}");
        }
    }
}
