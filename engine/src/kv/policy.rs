//! Eviction policies over equal-sized blocks: LRU, and ARC (Megiddo & Modha's adaptive
//! replacement cache: recency list T1, frequency list T2, ghost lists B1/B2 that steer
//! the split), which keeps a working set that is used repeatedly when a long scan of
//! one-off blocks goes through the cache — plain LRU lets the scan flush it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Which policy a tier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    #[default]
    Lru,
    Arc,
}

/// Keys in use order, least recent first; O(log n) moves.
#[derive(Debug)]
struct UseList<K> {
    order: BTreeMap<u64, K>,
    at: HashMap<K, u64>,
    tick: u64,
}

impl<K: Copy + Eq + Hash> UseList<K> {
    fn new() -> Self {
        Self { order: BTreeMap::new(), at: HashMap::new(), tick: 0 }
    }
    fn len(&self) -> usize {
        self.at.len()
    }
    fn contains(&self, k: &K) -> bool {
        self.at.contains_key(k)
    }
    fn push_mru(&mut self, k: K) {
        self.remove(&k);
        self.tick += 1;
        self.order.insert(self.tick, k);
        self.at.insert(k, self.tick);
    }
    fn remove(&mut self, k: &K) -> bool {
        match self.at.remove(k) {
            Some(t) => {
                self.order.remove(&t);
                true
            }
            None => false,
        }
    }
    fn pop_lru(&mut self) -> Option<K> {
        let (_, k) = self.order.pop_first()?;
        self.at.remove(&k);
        Some(k)
    }
}

/// A policy: which resident keys to evict as keys are admitted and used.
#[derive(Debug)]
pub struct Policy<K> {
    kind: Kind<K>,
}

#[derive(Debug)]
enum Kind<K> {
    Lru { capacity: usize, list: UseList<K> },
    Arc(Box<ArcState<K>>),
}

#[derive(Debug)]
struct ArcState<K> {
    capacity: usize,
    /// Target size of T1.
    p: usize,
    t1: UseList<K>,
    t2: UseList<K>,
    b1: UseList<K>,
    b2: UseList<K>,
}

impl<K: Copy + Eq + Hash> ArcState<K> {
    /// Evicts one resident key to the matching ghost list.
    fn replace(&mut self, in_b2: bool, evicted: &mut Vec<K>) {
        let t1 = self.t1.len();
        if t1 >= 1 && (t1 > self.p || (in_b2 && t1 == self.p)) {
            if let Some(k) = self.t1.pop_lru() {
                self.b1.push_mru(k);
                evicted.push(k);
            }
        } else if let Some(k) = self.t2.pop_lru() {
            self.b2.push_mru(k);
            evicted.push(k);
        } else if let Some(k) = self.t1.pop_lru() {
            self.b1.push_mru(k);
            evicted.push(k);
        }
    }
}

impl<K: Copy + Eq + Hash> Policy<K> {
    pub fn new(kind: Eviction, capacity: usize) -> Self {
        match kind {
            Eviction::Lru => Self { kind: Kind::Lru { capacity, list: UseList::new() } },
            Eviction::Arc => Self { kind: Kind::Arc(Box::new(ArcState {
                capacity,
                p: 0,
                t1: UseList::new(),
                t2: UseList::new(),
                b1: UseList::new(),
                b2: UseList::new(),
            })) },
        }
    }

    /// Resident keys.
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Lru { list, .. } => list.len(),
            Kind::Arc(a) => a.t1.len() + a.t2.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resident keys, in no particular order.
    pub fn keys(&self) -> Vec<K> {
        match &self.kind {
            Kind::Lru { list, .. } => list.at.keys().copied().collect(),
            Kind::Arc(a) => a.t1.at.keys().chain(a.t2.at.keys()).copied().collect(),
        }
    }

    /// A resident key was used.
    pub fn touch(&mut self, k: K) {
        match &mut self.kind {
            Kind::Lru { list, .. } => {
                if list.contains(&k) {
                    list.push_mru(k);
                }
            }
            Kind::Arc(a) => {
                if a.t1.remove(&k) || a.t2.contains(&k) {
                    a.t2.push_mru(k);
                }
            }
        }
    }

    /// Makes `k` resident; returns the resident keys evicted to make room.
    pub fn admit(&mut self, k: K) -> Vec<K> {
        let mut evicted = Vec::new();
        match &mut self.kind {
            Kind::Lru { capacity, list } => {
                list.push_mru(k);
                while list.len() > *capacity {
                    if let Some(victim) = list.pop_lru() {
                        evicted.push(victim);
                    }
                }
            }
            Kind::Arc(a) => {
                let c = a.capacity;
                if a.t1.contains(&k) || a.t2.contains(&k) {
                    a.t1.remove(&k);
                    a.t2.push_mru(k);
                } else if a.b1.contains(&k) {
                    let delta = (a.b2.len() / a.b1.len().max(1)).max(1);
                    a.p = (a.p + delta).min(c);
                    a.replace(false, &mut evicted);
                    a.b1.remove(&k);
                    a.t2.push_mru(k);
                } else if a.b2.contains(&k) {
                    let delta = (a.b1.len() / a.b2.len().max(1)).max(1);
                    a.p = a.p.saturating_sub(delta);
                    a.replace(true, &mut evicted);
                    a.b2.remove(&k);
                    a.t2.push_mru(k);
                } else {
                    let l1 = a.t1.len() + a.b1.len();
                    let total = l1 + a.t2.len() + a.b2.len();
                    if l1 >= c {
                        if a.t1.len() < c {
                            a.b1.pop_lru();
                            a.replace(false, &mut evicted);
                        } else if let Some(victim) = a.t1.pop_lru() {
                            evicted.push(victim);
                        }
                    } else if total >= c {
                        if total >= 2 * c {
                            a.b2.pop_lru();
                        }
                        if a.t1.len() + a.t2.len() >= c {
                            a.replace(false, &mut evicted);
                        }
                    }
                    a.t1.push_mru(k);
                }
                // Capacity 0, or rounding: never hold more than c.
                while a.t1.len() + a.t2.len() > c {
                    a.replace(false, &mut evicted);
                }
            }
        }
        // (With capacity 0, `k` itself comes back: it was not kept.)
        evicted
    }

    /// Forgets a resident key (taken out of the tier by the caller).
    pub fn remove(&mut self, k: &K) {
        match &mut self.kind {
            Kind::Lru { list, .. } => {
                list.remove(k);
            }
            Kind::Arc(a) => {
                a.t1.remove(k);
                a.t2.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hot set of 2 used repeatedly, then a scan of 10 one-off keys through 4 slots.
    fn survivors(kind: Eviction) -> Vec<u32> {
        let mut p = Policy::new(kind, 4);
        let mut resident = std::collections::BTreeSet::new();
        let admit = |p: &mut Policy<u32>, k: u32, resident: &mut std::collections::BTreeSet<u32>| {
            for e in p.admit(k) {
                resident.remove(&e);
            }
            resident.insert(k);
        };
        for k in [1, 2] {
            admit(&mut p, k, &mut resident);
        }
        for _ in 0..3 {
            p.touch(1);
            p.touch(2);
        }
        for k in 100..110 {
            admit(&mut p, k, &mut resident);
        }
        assert_eq!(p.len(), resident.len());
        assert!(resident.len() <= 4);
        [1, 2].into_iter().filter(|k| resident.contains(k)).collect()
    }

    #[test]
    fn arc_keeps_the_hot_set_through_a_scan_and_lru_does_not() {
        assert_eq!(survivors(Eviction::Arc), vec![1, 2]);
        assert!(survivors(Eviction::Lru).is_empty());
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut p = Policy::new(Eviction::Lru, 2);
        assert!(p.admit(1).is_empty());
        assert!(p.admit(2).is_empty());
        p.touch(1);
        assert_eq!(p.admit(3), vec![2]);
        p.remove(&1);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn arc_never_exceeds_its_capacity() {
        let mut p = Policy::new(Eviction::Arc, 3);
        let mut resident = std::collections::HashSet::new();
        for i in 0..200u32 {
            let k = (i * 7) % 11;
            if resident.contains(&k) {
                p.touch(k);
                continue;
            }
            for e in p.admit(k) {
                assert!(resident.remove(&e), "evicted a key that was not resident");
            }
            resident.insert(k);
            assert!(p.len() <= 3 && p.len() == resident.len());
        }
    }
}
