//! Range-based set reconciliation of one shard between two owners (the scheme of
//! negentropy, over our own keys and fingerprints), pure over [`ShardKeys`].
//!
//! The initiator starts one step in, since the digests already said the shard differs: it
//! lists its keys if it has few ([`LIST_BELOW`]), else it cuts the shard into [`SPLIT`]
//! parts of about equal size and sends each part's fingerprint. Each side answers a range
//! the same way: equal fingerprints end it; a side with few keys in the range lists them;
//! otherwise it splits the range again. A listing is answered with what the listing side
//! lacks, which ends the range: in a pull session (co-owners repairing) the responder
//! returns those entries themselves with its answer, so a small shard is repaired in one
//! round trip; in a push session (hand-off) it names what it lacks itself. When the
//! responder is the side that listed, the initiator fetches what it lacks by tag.
//!
//! Listings name entries by 4-byte salted tags ([`EntryKey::tag`]; the initiator draws a
//! salt per session), so a listed entry costs 4 bytes; a tag that collides with another of
//! the range hides an entry for one session only. On the wire a range bound is the
//! shortest key prefix that separates two neighbouring keys (1-3 bytes). Every message is
//! bounded ([`MAX_INITIATOR_RANGES`], [`MISSING_CAP`]); memory per round is bounded by the
//! message, not by the shard (keys are streamed from RocksDB).
//!
//! Why our own: the `negentropy` crate has no installable release on crates.io (every
//! version is yanked), and `merkle-search-tree` keeps each tree in memory, while history
//! must stay bounded whatever its size; the shard fingerprints ([`Fingerprint`]) are the
//! same sums the per-shard digests keep, so a whole-shard comparison costs nothing.

use std::collections::BTreeSet;

use pyagent_protocol::history::{EntryKey, Fingerprint, KeyRange, RangeClaim, RangeItem, Tag, bound_between};

/// A side lists its keys of a range when it has at most this many (4 bytes each, against
/// about 400 bytes for [`SPLIT`] fingerprints and another round trip).
pub const LIST_BELOW: u64 = 256;
/// A range with more keys is split into this many parts.
pub const SPLIT: u64 = 16;
/// Most entries one answer says (or sends) the other side lacks in one range; the rest of
/// the range follows as a fingerprint (another round).
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

/// One reconciliation session's terms: the tag salt, and which way entries move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub salt: u64,
    /// The initiator pulls what it lacks (co-owners); else it pushes what the responder
    /// lacks (hand-off).
    pub pull: bool,
}

/// What the initiator has learned so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Entries the peer listed and this side lacks, by the range they were found in: fetch
    /// them by tag.
    pub need: Vec<(KeyRange, Vec<Tag>)>,
    /// Keys this side has and the peer lacks: push them (hand-off).
    pub give: Vec<EntryKey>,
}

/// The responder's answer to one round: ranges for the next round, and (pull) the keys of
/// the entries the initiator lacks, to be sent with the answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ranges: Vec<RangeItem>,
    pub send: Vec<EntryKey>,
}

/// The initiator's first message. The shard is known to differ (the digests said so), so
/// it starts one step in: its keys if it has few, else its shard cut in [`SPLIT`] parts
/// with their fingerprints.
pub fn initiate<S: ShardKeys>(mine: &S, salt: u64) -> Result<Vec<RangeItem>, S::Error> {
    let mut out = Vec::new();
    answer_fingerprint(mine, salt, &KeyRange::FULL, Fingerprint { count: u64::MAX, sum: 0 }, &mut out)?;
    Ok(out)
}

/// The answer, by either side, to the other side's fingerprint of `range`.
fn answer_fingerprint<S: ShardKeys>(mine: &S, salt: u64, range: &KeyRange, theirs: Fingerprint, out: &mut Vec<RangeItem>) -> Result<(), S::Error> {
    let fp = mine.fingerprint(range)?;
    if fp == theirs {
        return Ok(());
    }
    if fp.count == 0 {
        // "I have nothing here": the other side sends or pushes everything it has.
        out.push(RangeItem { range: range.clone(), claim: RangeClaim::Fingerprint(fp) });
    } else if fp.count <= LIST_BELOW {
        let tags = mine.keys(range, LIST_BELOW as usize)?.iter().map(|k| k.tag(salt)).collect();
        out.push(RangeItem { range: range.clone(), claim: RangeClaim::Tags(tags) });
    } else {
        for part in mine.split(range, fp.count)? {
            let fp = mine.fingerprint(&part)?;
            out.push(RangeItem { range: part, claim: RangeClaim::Fingerprint(fp) });
        }
    }
    Ok(())
}

/// The responder's answer to one round (stateless: everything is in the message).
pub fn respond<S: ShardKeys>(mine: &S, terms: Terms, incoming: &[RangeItem]) -> Result<Answer, S::Error> {
    let mut answer = Answer::default();
    for item in incoming {
        match &item.claim {
            RangeClaim::Fingerprint(theirs) if theirs.count == 0 => {
                // The initiator has nothing here: a puller gets everything, a capped part
                // at a time; a pusher has nothing to give here.
                if terms.pull {
                    let keys = mine.keys(&item.range, MISSING_CAP + 1)?;
                    missing_then_rest(mine, terms, &item.range, keys, &[], &mut answer)?;
                }
            }
            RangeClaim::Fingerprint(theirs) => answer_fingerprint(mine, terms.salt, &item.range, *theirs, &mut answer.ranges)?,
            RangeClaim::Tags(theirs) => {
                let keys = mine.keys(&item.range, MISSING_CAP + 1)?;
                missing_then_rest(mine, terms, &item.range, keys, theirs, &mut answer)?;
            }
            RangeClaim::Lacks(_) => {}
        }
    }
    Ok(answer)
}

/// Answers the initiator's listing of `range` (given the responder's first keys there):
/// what the initiator lacks is sent (pull), or what the responder lacks is named (push).
/// Past [`MISSING_CAP`] keys the rest of the range goes back as a fingerprint (another
/// round).
fn missing_then_rest<S: ShardKeys>(mine: &S, terms: Terms, range: &KeyRange, mut keys: Vec<EntryKey>, theirs: &[Tag], answer: &mut Answer) -> Result<(), S::Error> {
    let capped = keys.len() > MISSING_CAP;
    let rest = capped.then(|| bound_between(&keys[MISSING_CAP - 1], &keys[MISSING_CAP]));
    keys.truncate(MISSING_CAP);
    let theirs_set: BTreeSet<&Tag> = theirs.iter().collect();
    if terms.pull {
        answer.send.extend(keys.iter().filter(|k| !theirs_set.contains(&k.tag(terms.salt))));
    } else if !capped {
        let mine_set: BTreeSet<Tag> = keys.iter().map(|k| k.tag(terms.salt)).collect();
        let i_lack: Vec<Tag> = theirs.iter().filter(|t| !mine_set.contains(*t)).copied().collect();
        if !i_lack.is_empty() {
            answer.ranges.push(RangeItem { range: range.clone(), claim: RangeClaim::Lacks(i_lack) });
        }
    }
    if let Some(rest) = rest {
        let rest_range = KeyRange { lower: Some(rest), upper: range.upper.clone() };
        let fp = mine.fingerprint(&rest_range)?;
        answer.ranges.push(RangeItem { range: rest_range, claim: RangeClaim::Fingerprint(fp) });
    }
    Ok(())
}

/// The initiator's handling of an answer: what it learns goes into `learned`; the ranges
/// it returns are the next round (none: the shard is reconciled).
pub fn on_answer<S: ShardKeys>(mine: &S, terms: Terms, incoming: &[RangeItem], learned: &mut Learned) -> Result<Vec<RangeItem>, S::Error> {
    let mut out = Vec::new();
    for item in incoming {
        match &item.claim {
            RangeClaim::Fingerprint(theirs) if theirs.count == 0 => {
                // The responder has nothing here: a pusher gives it all of ours.
                if !terms.pull {
                    mine.scan(&item.range, &mut |k| {
                        learned.give.push(k);
                        true
                    })?;
                }
            }
            RangeClaim::Fingerprint(theirs) => answer_fingerprint(mine, terms.salt, &item.range, *theirs, &mut out)?,
            RangeClaim::Tags(theirs) => {
                let theirs_set: BTreeSet<&Tag> = theirs.iter().collect();
                let mut mine_set = BTreeSet::new();
                mine.scan(&item.range, &mut |k| {
                    let tag = k.tag(terms.salt);
                    if !terms.pull && !theirs_set.contains(&tag) {
                        learned.give.push(k);
                    }
                    mine_set.insert(tag);
                    true
                })?;
                let need: Vec<Tag> = theirs.iter().filter(|t| !mine_set.contains(*t)).copied().collect();
                if terms.pull && !need.is_empty() {
                    learned.need.push((item.range.clone(), need));
                }
            }
            RangeClaim::Lacks(tags) => {
                let wanted: BTreeSet<&Tag> = tags.iter().collect();
                mine.scan(&item.range, &mut |k| {
                    if wanted.contains(&k.tag(terms.salt)) {
                        learned.give.push(k);
                    }
                    true
                })?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::history::{EntryId, HistoryRequest, HistoryResponse, ShardId};
    use pyagent_protocol::task::TaskId;

    /// Keys in few subjects (bounds fall inside a subject) or, `spread`, four per subject.
    pub fn key(i: u32, spread: bool) -> EntryKey {
        let h = blake3::hash(&i.to_le_bytes());
        let subject = if spread { TaskId(*blake3::hash(&(i / 4).to_le_bytes()).as_bytes()) } else { TaskId([(i % 3) as u8; 32]) };
        EntryKey { subject, id: EntryId(*h.as_bytes()) }
    }

    /// The outcome of a whole session run by `a` against `b`.
    #[derive(Debug)]
    pub struct Outcome {
        /// Pull: the keys `a` received (with answers, then by fetch), sorted, deduplicated.
        pub received: Vec<EntryKey>,
        /// Entries sent twice.
        pub duplicates: usize,
        /// Push: what `a` would give, sorted.
        pub give: Vec<EntryKey>,
        pub rounds: usize,
        /// Encoded bytes of every message but the entries themselves.
        pub bytes: usize,
    }

    /// Runs a whole session, answers and the final fetch included.
    pub fn run(a: &BTreeSet<EntryKey>, b: &BTreeSet<EntryKey>, pull: bool, salt: u64) -> Outcome {
        let terms = Terms { salt, pull };
        let shard = ShardId(0);
        let mut learned = Learned::default();
        let mut queue: std::collections::VecDeque<RangeItem> = initiate(a, salt).unwrap().into();
        let (mut rounds, mut bytes) = (0, 0);
        let mut received = Vec::new();
        while !queue.is_empty() {
            let n = queue.len().min(MAX_INITIATOR_RANGES);
            let round: Vec<RangeItem> = queue.drain(..n).collect();
            let request = HistoryRequest::Reconcile { shard, salt, pull, ranges: round.clone() };
            request.validate().unwrap();
            bytes += pyagent_protocol::encode(&request).unwrap().len();
            let answer = respond(b, terms, &round).unwrap();
            assert!(pull || answer.send.is_empty(), "a push session is sent no entries");
            bytes += pyagent_protocol::encode(&HistoryResponse::Reconcile { ranges: answer.ranges.clone(), entries: vec![] }).unwrap().len();
            received.extend(answer.send.iter().copied());
            queue.extend(on_answer(a, terms, &answer.ranges, &mut learned).unwrap());
            rounds += 1;
            assert!(rounds < 1000, "no convergence");
        }
        if !learned.need.is_empty() {
            let fetch = HistoryRequest::Fetch { shard, salt, wants: learned.need.clone() };
            fetch.validate().unwrap();
            bytes += pyagent_protocol::encode(&fetch).unwrap().len();
            received.extend(learned.need.iter().flat_map(|(r, tags)| b.iter().filter(move |k| r.contains(k) && tags.contains(&k.tag(salt))).copied()));
        }
        let all = received.len();
        received.sort();
        received.dedup();
        learned.give.sort();
        Outcome { duplicates: all - received.len(), received, give: learned.give, rounds, bytes }
    }

    fn diff(x: &BTreeSet<EntryKey>, y: &BTreeSet<EntryKey>) -> Vec<EntryKey> {
        x.difference(y).copied().collect()
    }

    fn set(range: std::ops::Range<u32>, spread: bool) -> BTreeSet<EntryKey> {
        range.map(|i| key(i, spread)).collect()
    }

    #[test]
    fn equal_sets_take_one_round_and_learn_nothing() {
        let a = set(0..5000, false);
        for pull in [true, false] {
            let o = run(&a, &a.clone(), pull, 7);
            assert!(o.received.is_empty() && o.give.is_empty());
            assert_eq!(o.rounds, 1);
            // 16 fingerprints; with 3 subjects the bounds fall inside a subject (33 bytes).
            assert!(o.bytes < 2000, "{}", o.bytes);
        }
    }

    #[test]
    fn a_pull_gets_exactly_what_it_lacks_and_a_push_gives_exactly_what_the_peer_lacks() {
        for (na, nb, common) in [(0, 0, 5000), (1, 0, 5000), (0, 1, 5000), (3, 7, 10_000), (5000, 0, 0), (0, 5000, 0), (40, 40, 20), (0, 3000, 3000), (300, 300, 300), (0, 5000, 10)] {
            let mut a = set(0..common, false);
            let mut b = a.clone();
            a.extend((0..na).map(|i| key(1_000_000 + i, false)));
            b.extend((0..nb).map(|i| key(2_000_000 + i, false)));
            let pulled = run(&a, &b, true, 11);
            assert_eq!(pulled.received, diff(&b, &a), "pull ({na},{nb},{common})");
            assert_eq!(pulled.duplicates, 0, "no entry sent twice ({na},{nb},{common})");
            let pushed = run(&a, &b, false, 11);
            assert_eq!(pushed.give, diff(&a, &b), "push ({na},{nb},{common})");
            assert!(pushed.received.is_empty());
        }
    }

    #[test]
    fn one_difference_in_a_large_shard_moves_few_bytes() {
        let a = set(0..100_000, false);
        let mut b = a.clone();
        b.remove(&key(4242, false));
        let o = run(&a, &b, false, 3);
        assert_eq!(o.give, vec![key(4242, false)]);
        // log16(100000 / 256) ≈ 2 splits, then a listing.
        assert!(o.rounds <= 5, "{} rounds", o.rounds);
        assert!(o.bytes < 16 * 1024, "{} bytes", o.bytes);
        let o = run(&b, &a, true, 3);
        assert_eq!(o.received, vec![key(4242, false)]);
    }

    #[test]
    fn a_tag_collision_hides_an_entry_for_one_session_only() {
        // Two keys whose tags collide under salt 5 (birthday search over 4-byte tags).
        let salt = 5;
        let mut seen = std::collections::HashMap::new();
        let (x, y) = (0..400_000u32)
            .map(|i| key(i, true))
            .find_map(|k| seen.insert(k.tag(salt), k).map(|other| (k, other)))
            .expect("a 4-byte collision among 400,000 keys");
        let mut a = set(1_000_000..1_000_050, true);
        a.insert(y);
        let mut b = a.clone();
        b.insert(x);
        assert!(run(&a, &b, true, salt).received.is_empty(), "the collision hides x under this salt");
        assert_eq!(run(&a, &b, true, salt + 1).received, vec![x], "the next session's salt finds it");
    }
}

#[cfg(test)]
mod traffic {
    use super::tests::*;

    #[test]
    fn repair_costs_little_next_to_the_missing_entries() {
        // (entries both have, entries the initiator lacks, most bytes per missing entry
        // beside the entry itself, most rounds); an inference entry is about 174 bytes
        // encoded. A small shard is repaired in one round trip for a few bytes per missing
        // entry; in a large one a few missing entries cost one listing of each part they
        // fall in (4 bytes per entry of the part) and a fetch.
        for (common, missing, limit, most_rounds) in [(100u32, 10u32, 50.0, 1), (250, 10, 110.0, 1), (1000, 10, 270.0, 1), (10, 10, 10.0, 1), (100, 100, 5.0, 1), (5000, 100, 210.0, 3)] {
            let a: std::collections::BTreeSet<_> = (0..common).map(|i| key(i, true)).collect();
            let b: std::collections::BTreeSet<_> = (0..common + missing).map(|i| key(i, true)).collect();
            let o = run(&a, &b, true, 42);
            let per = o.bytes as f64 / missing as f64;
            eprintln!("common {common} missing {missing}: {} rounds, {} bytes ({per:.1} B per missing entry)", o.rounds, o.bytes);
            assert_eq!(o.received.len(), missing as usize);
            assert!(per <= limit, "{per:.1} B per missing entry, limit {limit}");
            assert!(o.rounds <= most_rounds, "{} rounds, at most {most_rounds}", o.rounds);
        }
    }
}
