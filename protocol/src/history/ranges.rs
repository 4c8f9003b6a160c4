//! The words of range reconciliation: key ranges with short bounds, salted tags that name
//! listed entries, and what each side claims about a range (see `HistoryRequest::Reconcile`).

use serde::{Deserialize, Serialize};

use super::{EntryKey, Fingerprint};

/// A range bound: a prefix of a key's 64 bytes (usually 1-3 bytes: the shortest that
/// separates two neighbouring keys). Keys compare with bounds byte-wise.
pub type Bound = Vec<u8>;
/// Longest bound.
pub const MAX_BOUND_LEN: usize = EntryKey::LEN;

/// How a reconciliation listing names an entry: 4 bytes of BLAKE3(salt ‖ id), with a salt
/// the initiator draws for each session. Two entries of one listed range share a tag by
/// chance about once in 2^32 / n; a salted tag cannot be aimed at, and the next session's
/// salt separates them again, so a collision only delays a repair by one round.
pub type Tag = [u8; 4];

impl EntryKey {
    pub fn tag(&self, salt: u64) -> Tag {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&salt.to_le_bytes());
        hasher.update(&self.id.0);
        let mut out = [0u8; 4];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..4]);
        out
    }
}

/// The shortest bound `b` with `before < b <= after` (for `before < after`).
pub fn bound_between(before: &EntryKey, after: &EntryKey) -> Bound {
    let (x, y) = (before.to_bytes(), after.to_bytes());
    let i = x.iter().zip(y.iter()).position(|(a, b)| a != b).unwrap_or(EntryKey::LEN - 1);
    y[..=i].to_vec()
}

/// A range of entry keys `[lower, upper)` of one shard; `None` is the start or the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub lower: Option<Bound>,
    pub upper: Option<Bound>,
}

impl KeyRange {
    pub const FULL: KeyRange = KeyRange { lower: None, upper: None };

    pub fn contains(&self, key: &EntryKey) -> bool {
        let k = key.to_bytes();
        self.lower.as_ref().is_none_or(|l| k.as_slice() >= l.as_slice()) && self.upper.as_ref().is_none_or(|u| k.as_slice() < u.as_slice())
    }

    pub(crate) fn bounds_ok(&self) -> bool {
        [&self.lower, &self.upper].iter().all(|b| b.as_ref().is_none_or(|b| b.len() <= MAX_BOUND_LEN))
    }
}

/// What one side says about a range during reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeClaim {
    /// "My entries in this range have this fingerprint."
    Fingerprint(Fingerprint),
    /// "These are all my entries in this range" (by tag).
    Tags(Vec<Tag>),
    /// The answer to a listing in a push session: the listed entries the answering side
    /// lacks. Ends the range. (In a pull session the answer carries the entries the asker
    /// lacks instead.)
    Lacks(Vec<Tag>),
}

/// One range of a reconciliation round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeItem {
    pub range: KeyRange,
    pub claim: RangeClaim,
}
