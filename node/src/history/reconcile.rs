//! Range-based set reconciliation of one shard between two owners (the scheme of
//! negentropy, over our own keys and fingerprints), pure over [`ShardKeys`].
//!
//! The initiator starts with its shard cut in parts (or listed, if small), since the
//! digests already said the whole shard differs. Each side answers a
//! range the same way: equal fingerprints end it; a side with few keys in the range
//! ([`LIST_BELOW`]) lists them; otherwise it splits the range into [`SPLIT`] parts of
//! about equal size by its own keys and sends each part's fingerprint. A listed range is
//! answered with what each side lacks, which ends it. Rounds repeat until no range is
//! left; the initiator then has the keys it must fetch (`need`) and push (`give`), so
//! only missing entries move. Every message is bounded ([`MAX_INITIATOR_RANGES`],
//! [`MISSING_CAP`]); memory per round is bounded by the message, not by the shard (keys
//! are streamed from RocksDB). On the wire a range bound is the shortest key prefix that
//! separates two neighbouring keys (1-3 bytes), and an entry is named by the first 16
//! bytes of its id, so a listed entry costs 17 bytes, not 64.
//!
//! Why our own: the `negentropy` crate has no installable release on crates.io (every
//! version is yanked), and `merkle-search-tree` keeps each tree in memory, while history
//! must stay bounded whatever its size; the shard fingerprints ([`Fingerprint`]) are the
//! same sums the per-shard digests keep, so a whole-shard comparison costs nothing.

use std::collections::BTreeSet;

use pyagent_protocol::history::{EntryKey, Fingerprint, IdPrefix, KeyRange, RangeClaim, RangeItem, bound_between};

/// A side lists its keys of a range when it has at most this many.
pub const LIST_BELOW: u64 = 64;
/// A range with more keys is split into this many parts.
pub const SPLIT: u64 = 16;
/// Most keys one side says the other lacks in one answer; the rest of the range follows
/// as a fingerprint (another round).
pub const MISSING_CAP: usize = 2048;
/// Most ranges the initiator sends per round (the responder's answer has at most
/// `SPLIT` times as many).
pub const MAX_INITIATOR_RANGES: usize = 16;

/// The keys of one shard, in order.
pub trait ShardKeys {
    type Error;

    /// Calls `f` with each key in `range`, in order, until it returns false.
    fn scan(&self, range: &KeyRange, f: &mut dyn FnMut(EntryKey) -> bool) -> Result<(), Self::Error>;

    fn fingerprint(&self, range: &KeyRange) -> Result<Fingerprint, Self::Error> {
        let mut fp = Fingerprint::default();
        self.scan(range, &mut |k| {
            fp.add(&k.id);
            true
        })?;
        Ok(fp)
    }

    /// Up to `limit` keys of `range`.
    fn keys(&self, range: &KeyRange, limit: usize) -> Result<Vec<EntryKey>, Self::Error> {
        let mut out = Vec::new();
        self.scan(range, &mut |k| {
            if out.len() >= limit {
                return false;
            }
            out.push(k);
            true
        })?;
        Ok(out)
    }

    /// `range` cut into [`SPLIT`] parts of about `count / SPLIT` keys each.
    fn split(&self, range: &KeyRange, count: u64) -> Result<Vec<KeyRange>, Self::Error> {
        let step = count.div_ceil(SPLIT).max(1);
        let mut bounds = Vec::new();
        let mut i = 0u64;
        let mut previous = None;
        self.scan(range, &mut |k| {
            if let Some(p) = previous.filter(|_| i.is_multiple_of(step)) {
                bounds.push(bound_between(&p, &k));
            }
            previous = Some(k);
            i += 1;
            true
        })?;
        let mut out = Vec::with_capacity(bounds.len() + 1);
        let mut lower = range.lower.clone();
        for b in bounds {
            out.push(KeyRange { lower, upper: Some(b.clone()) });
            lower = Some(b);
        }
        out.push(KeyRange { lower, upper: range.upper.clone() });
        Ok(out)
    }
}

impl ShardKeys for BTreeSet<EntryKey> {
    type Error = std::convert::Infallible;

    fn scan(&self, range: &KeyRange, f: &mut dyn FnMut(EntryKey) -> bool) -> Result<(), Self::Error> {
        for k in self.iter().filter(|k| range.contains(k)) {
            if !f(*k) {
                break;
            }
        }
        Ok(())
    }
}

/// What the initiator has learned so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Entries the peer has and this side lacks, by the range they were found in: fetch
    /// them.
    pub need: Vec<(KeyRange, Vec<IdPrefix>)>,
    /// Keys this side has and the peer lacks: push them.
    pub give: Vec<EntryKey>,
}

/// The initiator's first message. The shard is known to differ (the digests said so), so
/// it starts one step in: its keys if it has few, else its shard cut in [`SPLIT`] parts
/// with their fingerprints.
pub fn initiate<S: ShardKeys>(mine: &S) -> Result<Vec<RangeItem>, S::Error> {
    let mut out = Vec::new();
    answer_fingerprint(mine, &KeyRange::FULL, Fingerprint { count: u64::MAX, sum: 0 }, &mut out)?;
    Ok(out)
}

/// The answer, by either side, to the other side's fingerprint of `range`.
fn answer_fingerprint<S: ShardKeys>(mine: &S, range: &KeyRange, theirs: Fingerprint, out: &mut Vec<RangeItem>) -> Result<(), S::Error> {
    let fp = mine.fingerprint(range)?;
    if fp == theirs {
        return Ok(());
    }
    if fp.count == 0 {
        // "I have nothing here": the other side lists or gives.
        out.push(RangeItem { range: range.clone(), claim: RangeClaim::Fingerprint(fp) });
    } else if fp.count <= LIST_BELOW {
        let ids = mine.keys(range, LIST_BELOW as usize)?.iter().map(EntryKey::id_prefix).collect();
        out.push(RangeItem { range: range.clone(), claim: RangeClaim::Keys(ids) });
    } else {
        for part in mine.split(range, fp.count)? {
            let fp = mine.fingerprint(&part)?;
            out.push(RangeItem { range: part, claim: RangeClaim::Fingerprint(fp) });
        }
    }
    Ok(())
}

/// The responder's answer to one round (stateless: everything is in the message).
pub fn respond<S: ShardKeys>(mine: &S, incoming: &[RangeItem]) -> Result<Vec<RangeItem>, S::Error> {
    let mut out = Vec::new();
    for item in incoming {
        match &item.claim {
            RangeClaim::Fingerprint(theirs) if theirs.count == 0 => {
                // The initiator has nothing here: tell it everything, a capped part at a time.
                let keys = mine.keys(&item.range, MISSING_CAP + 1)?;
                missing_then_rest(mine, &item.range, keys, &[], &mut out)?;
            }
            RangeClaim::Fingerprint(theirs) => answer_fingerprint(mine, &item.range, *theirs, &mut out)?,
            RangeClaim::Keys(theirs) => {
                let keys = mine.keys(&item.range, MISSING_CAP + 1)?;
                missing_then_rest(mine, &item.range, keys, theirs, &mut out)?;
            }
            RangeClaim::Missing { .. } => {}
        }
    }
    Ok(out)
}

/// Says which entries each side lacks in `range` (given the responder's first keys and
/// the initiator's list); past [`MISSING_CAP`] keys the rest of the range goes back as a
/// fingerprint (and what the responder lacks there is found in a later round).
fn missing_then_rest<S: ShardKeys>(
    mine: &S,
    range: &KeyRange,
    mut keys: Vec<EntryKey>,
    theirs: &[IdPrefix],
    out: &mut Vec<RangeItem>,
) -> Result<(), S::Error> {
    let capped = keys.len() > MISSING_CAP;
    let rest = capped.then(|| bound_between(&keys[MISSING_CAP - 1], &keys[MISSING_CAP]));
    keys.truncate(MISSING_CAP);
    let covered = KeyRange { lower: range.lower.clone(), upper: rest.clone().or_else(|| range.upper.clone()) };
    let mine_set: BTreeSet<IdPrefix> = keys.iter().map(EntryKey::id_prefix).collect();
    let theirs_set: BTreeSet<&IdPrefix> = theirs.iter().collect();
    let you_lack: Vec<IdPrefix> = mine_set.iter().filter(|k| !theirs_set.contains(k)).copied().collect();
    let i_lack: Vec<IdPrefix> = if capped { Vec::new() } else { theirs.iter().filter(|k| !mine_set.contains(*k)).copied().collect() };
    if !you_lack.is_empty() || !i_lack.is_empty() {
        out.push(RangeItem { range: covered, claim: RangeClaim::Missing { you_lack, i_lack } });
    }
    if let Some(rest) = rest {
        let rest_range = KeyRange { lower: Some(rest), upper: range.upper.clone() };
        let fp = mine.fingerprint(&rest_range)?;
        out.push(RangeItem { range: rest_range, claim: RangeClaim::Fingerprint(fp) });
    }
    Ok(())
}

/// The initiator's handling of an answer: what it learns goes into `learned`; the ranges
/// it returns are the next round (none: the shard is reconciled).
pub fn on_answer<S: ShardKeys>(mine: &S, incoming: &[RangeItem], learned: &mut Learned) -> Result<Vec<RangeItem>, S::Error> {
    let mut out = Vec::new();
    for item in incoming {
        match &item.claim {
            RangeClaim::Fingerprint(theirs) if theirs.count == 0 => {
                // The responder has nothing here: give it all of ours.
                mine.scan(&item.range, &mut |k| {
                    learned.give.push(k);
                    true
                })?;
            }
            RangeClaim::Fingerprint(theirs) => answer_fingerprint(mine, &item.range, *theirs, &mut out)?,
            RangeClaim::Keys(theirs) => {
                let theirs_set: BTreeSet<&IdPrefix> = theirs.iter().collect();
                let mut mine_set = BTreeSet::new();
                mine.scan(&item.range, &mut |k| {
                    if !theirs_set.contains(&k.id_prefix()) {
                        learned.give.push(k);
                    }
                    mine_set.insert(k.id_prefix());
                    true
                })?;
                let need: Vec<IdPrefix> = theirs.iter().filter(|k| !mine_set.contains(*k)).copied().collect();
                if !need.is_empty() {
                    learned.need.push((item.range.clone(), need));
                }
            }
            RangeClaim::Missing { you_lack, i_lack } => {
                if !you_lack.is_empty() {
                    learned.need.push((item.range.clone(), you_lack.clone()));
                }
                if !i_lack.is_empty() {
                    let wanted: BTreeSet<&IdPrefix> = i_lack.iter().collect();
                    mine.scan(&item.range, &mut |k| {
                        if wanted.contains(&k.id_prefix()) {
                            learned.give.push(k);
                        }
                        true
                    })?;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::history::{EntryId, HistoryRequest, ShardId};
    use pyagent_protocol::task::TaskId;

    fn key(i: u32) -> EntryKey {
        let h = blake3::hash(&i.to_le_bytes());
        EntryKey { subject: TaskId([(i % 3) as u8; 32]), id: EntryId(*h.as_bytes()) }
    }

    /// Runs a whole reconciliation; returns what the initiator learned, the rounds and
    /// the bytes of every message.
    fn run(a: &BTreeSet<EntryKey>, b: &BTreeSet<EntryKey>) -> (Learned, usize, usize) {
        let mut learned = Learned::default();
        let mut queue: std::collections::VecDeque<RangeItem> = initiate(a).unwrap().into();
        let (mut rounds, mut bytes) = (0, 0);
        while !queue.is_empty() {
            let n = queue.len().min(MAX_INITIATOR_RANGES);
            let round: Vec<RangeItem> = queue.drain(..n).collect();
            let request = HistoryRequest::Reconcile { shard: ShardId(0), ranges: round.clone() };
            request.validate().unwrap();
            bytes += pyagent_protocol::encode(&request).unwrap().len();
            let answer = respond(b, &round).unwrap();
            bytes += pyagent_protocol::encode(&answer).unwrap().len();
            queue.extend(on_answer(a, &answer, &mut learned).unwrap());
            rounds += 1;
            assert!(rounds < 1000, "no convergence");
        }
        learned.give.sort();
        (learned, rounds, bytes)
    }

    /// The keys of `b` that `need` names (by range and id prefix), sorted.
    fn resolve(b: &BTreeSet<EntryKey>, need: &[(KeyRange, Vec<IdPrefix>)]) -> Vec<EntryKey> {
        let mut out: Vec<EntryKey> =
            need.iter().flat_map(|(r, ids)| b.iter().filter(move |k| r.contains(k) && ids.contains(&k.id_prefix())).copied()).collect();
        out.sort();
        out.dedup();
        out
    }

    fn diff(x: &BTreeSet<EntryKey>, y: &BTreeSet<EntryKey>) -> Vec<EntryKey> {
        x.difference(y).copied().collect()
    }

    #[test]
    fn equal_sets_take_one_round_and_learn_nothing() {
        let a: BTreeSet<EntryKey> = (0..5000).map(key).collect();
        let (learned, rounds, bytes) = run(&a, &a.clone());
        assert_eq!(learned, Learned::default());
        assert_eq!(rounds, 1);
        // 16 fingerprints; with 3 subjects the bounds fall inside a subject (33 bytes).
        assert!(bytes < 2000, "{bytes}");
    }

    #[test]
    fn finds_exactly_what_each_side_lacks() {
        for (na, nb, common) in [(0, 0, 5000), (1, 0, 5000), (0, 1, 5000), (3, 7, 10_000), (5000, 0, 0), (0, 5000, 0), (40, 40, 20), (0, 3000, 3000)] {
            let base: Vec<EntryKey> = (0..common).map(key).collect();
            let mut a: BTreeSet<EntryKey> = base.iter().copied().collect();
            let mut b = a.clone();
            a.extend((0..na).map(|i| key(1_000_000 + i)));
            b.extend((0..nb).map(|i| key(2_000_000 + i)));
            let (learned, _, _) = run(&a, &b);
            let ids: usize = learned.need.iter().map(|(_, ids)| ids.len()).sum();
            assert_eq!(ids, diff(&b, &a).len(), "no id asked twice ({na},{nb},{common})");
            assert_eq!(resolve(&b, &learned.need), diff(&b, &a), "need ({na},{nb},{common})");
            assert_eq!(learned.give, diff(&a, &b), "give ({na},{nb},{common})");
        }
    }

    #[test]
    fn one_difference_in_a_large_shard_moves_few_bytes() {
        let a: BTreeSet<EntryKey> = (0..100_000).map(key).collect();
        let mut b = a.clone();
        b.remove(&key(4242));
        let (learned, rounds, bytes) = run(&a, &b);
        assert_eq!(learned.give, vec![key(4242)]);
        assert!(learned.need.is_empty());
        // log16(100000 / 32) ≈ 3 splits, then a listing.
        assert!(rounds <= 6, "{rounds} rounds");
        assert!(bytes < 16 * 1024, "{bytes} bytes");
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use pyagent_protocol::history::{EntryId, HistoryRequest, ShardId};
    use pyagent_protocol::task::TaskId;
    pub fn key(i: u32) -> EntryKey {
        let h = blake3::hash(&i.to_le_bytes());
        EntryKey { subject: TaskId(*blake3::hash(&(i / 4).to_le_bytes()).as_bytes()), id: EntryId(*h.as_bytes()) }
    }
    /// b lacks `missing` of a's entries; b initiates (pulls).
    pub fn run_sets(common: u32, missing: u32) -> (Learned, usize, usize) {
        let a: BTreeSet<EntryKey> = (0..common + missing).map(key).collect();
        let b: BTreeSet<EntryKey> = (0..common).map(key).collect();
        let mut learned = Learned::default();
        let mut queue: std::collections::VecDeque<RangeItem> = initiate(&b).unwrap().into();
        let (mut rounds, mut bytes) = (0, 0);
        while !queue.is_empty() {
            let n = queue.len().min(MAX_INITIATOR_RANGES);
            let round: Vec<RangeItem> = queue.drain(..n).collect();
            bytes += pyagent_protocol::encode(&HistoryRequest::Reconcile { shard: ShardId(0), ranges: round.clone() }).unwrap().len();
            let answer = respond(&a, &round).unwrap();
            bytes += pyagent_protocol::encode(&answer).unwrap().len();
            queue.extend(on_answer(&b, &answer, &mut learned).unwrap());
            rounds += 1;
        }
        (learned, rounds, bytes)
    }
}

#[cfg(test)]
mod traffic {
    use super::tests_support::*;

    #[test]
    fn repair_rounds_cost_little_next_to_the_missing_entries() {
        // (entries both have, entries the initiator lacks, most bytes per missing entry);
        // an inference entry is about 174 bytes encoded.
        for (common, missing, limit) in [(100u32, 10u32, 200.0), (1000, 10, 600.0), (10, 10, 60.0), (100, 100, 80.0)] {
            let (learned, rounds, bytes) = run_sets(common, missing);
            let per = bytes as f64 / missing as f64;
            eprintln!("common {common} missing {missing}: {rounds} rounds, {bytes} bytes ({per:.1} B per missing entry)");
            let ids: usize = learned.need.iter().map(|(_, ids)| ids.len()).sum();
            assert_eq!(ids, missing as usize);
            assert!(per <= limit, "{per:.1} B per missing entry, limit {limit}");
        }
    }
}
