//! The swarm's history: immutable, signed entries, spread over [`SHARDS`] shards by their
//! subject, and the request-response protocol that replicates them ([`HistoryRpc`]).
//!
//! - An [`Entry`] is an [`EntryBody`] (author PeerId, the author's clock, the subject id
//!   and a [`HistoryEvent`]) and the author's ed25519 signature over
//!   [`EntryId::signed_bytes`]. Its id is BLAKE3 of the body's canonical encoding
//!   ([`crate::codec`]), so an entry is written once wherever it travels.
//! - No clock is trusted for correctness: the entries of a subject form a set; readers
//!   order them by (author time, id) for display.
//! - The shard of an entry is [`shard_of`] its subject: the first 10 bits of BLAKE3 of the
//!   subject id (big-endian), so all entries of one task or proposal share a shard.
//! - Keys: an entry is stored and reconciled under its [`EntryKey`] = subject ‖ id (64
//!   bytes), so a subject's entries sit together and ranges of keys are ranges of a shard.
//!
//! Signatures are checked by the node (it has the key types); this module checks
//! structure and bounds ([`Entry::validate`]).

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, MAX_FRAME_BYTES};
use crate::rpc::RequestResponse;
use crate::task::TaskId;
use crate::vote::{Ballot, ProposalSpec};

/// Number of history shards. Fixed: changing it moves every entry.
pub const SHARDS: u16 = 1024;
/// Largest encoded entry (a review proposal with its candidates is the largest kind).
pub const MAX_ENTRY_BYTES: usize = MAX_FRAME_BYTES - 64 * 1024;
/// Longest free text in an entry (result details, inference notes).
pub const MAX_DETAIL_LEN: usize = 4096;
/// Longest author PeerId text.
const MAX_PEER_ID_LEN: usize = 128;

/// The subject of an entry: a task, proposal or inference request id.
pub type SubjectId = TaskId;

/// The id of an entry: BLAKE3 of its body's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId(pub [u8; 32]);

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        TaskId(self.0).fmt(f)
    }
}

impl std::fmt::Debug for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryId({})", &self.to_string()[..12])
    }
}

impl EntryId {
    /// The bytes an author signs: a domain tag and the id.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"pyagent-history-entry-v1:".to_vec();
        out.extend_from_slice(&self.0);
        out
    }
}

/// A shard number, `0..SHARDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ShardId {
    /// Every shard, in order.
    pub fn all() -> impl Iterator<Item = ShardId> {
        (0..SHARDS).map(ShardId)
    }

    /// The shard numbered `n`, if there is one.
    pub fn new(n: u16) -> Option<ShardId> {
        (n < SHARDS).then_some(ShardId(n))
    }

    /// The 32-byte key that rendezvous hashing places this shard by.
    pub fn placement_key(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"pyagent-history-shard-v1:");
        hasher.update(&self.0.to_be_bytes());
        *hasher.finalize().as_bytes()
    }
}

/// The shard of a subject: the first 10 bits of BLAKE3(subject id), big-endian.
pub fn shard_of(subject: &SubjectId) -> ShardId {
    let hash = blake3::hash(&subject.0);
    let b = hash.as_bytes();
    ShardId((u16::from(b[0]) << 2) | (u16::from(b[1]) >> 6))
}

/// The kinds of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Submitted,
    Assigned,
    Result,
    Done,
    Proposal,
    Ballot,
    Tally,
    Inference,
}

/// What happened to the subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// The task was submitted (by its requester).
    Submitted { capability: String, files: usize, requester: String },
    /// A peer claimed it (first claim of each executor only; renewals are not recorded).
    Assigned { executor: String },
    /// An outcome, recorded by the executor or the requester.
    Result { executor: String, completed: bool, detail: String },
    /// The requester has its result; nobody works on the task any more.
    Done,
    /// A proposal, whole: a tally can be replayed from history alone.
    Proposal(Box<ProposalSpec>),
    /// A signed ballot, whole (its own signature is the voter's).
    Ballot(Box<Ballot>),
    /// A final tally as its author computed it.
    Tally { winner: Option<String> },
    /// An inference request served (or refused) by the author.
    Inference { model: String, detail: String },
}

impl HistoryEvent {
    pub fn kind(&self) -> EntryKind {
        match self {
            Self::Submitted { .. } => EntryKind::Submitted,
            Self::Assigned { .. } => EntryKind::Assigned,
            Self::Result { .. } => EntryKind::Result,
            Self::Done => EntryKind::Done,
            Self::Proposal(_) => EntryKind::Proposal,
            Self::Ballot(_) => EntryKind::Ballot,
            Self::Tally { .. } => EntryKind::Tally,
            Self::Inference { .. } => EntryKind::Inference,
        }
    }
}

/// The signed part of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// PeerId of the author (the signer).
    pub author: String,
    /// The author's clock: for display order only.
    pub author_unix_ms: u64,
    pub subject: SubjectId,
    pub event: HistoryEvent,
}

impl EntryBody {
    /// BLAKE3 of the canonical encoding.
    pub fn id(&self) -> Result<EntryId, CodecError> {
        Ok(EntryId(*blake3::hash(&crate::encode(self)?).as_bytes()))
    }
}

/// An entry: its body and the author's signature over [`EntryId::signed_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub body: EntryBody,
    pub signature: Vec<u8>,
}

/// Where an entry is stored and reconciled: subject ‖ id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    pub subject: SubjectId,
    pub id: EntryId,
}

impl EntryKey {
    pub const LEN: usize = 64;

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.subject.0);
        out[32..].copy_from_slice(&self.id.0);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 64] = bytes.try_into().ok()?;
        let mut subject = [0u8; 32];
        let mut id = [0u8; 32];
        subject.copy_from_slice(&bytes[..32]);
        id.copy_from_slice(&bytes[32..]);
        Some(Self { subject: TaskId(subject), id: EntryId(id) })
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry of {len} bytes, limit {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("the entry is in shard {actual}, not shard {claimed}")]
    WrongShard { claimed: ShardId, actual: ShardId },
    #[error("bad signature by {author}")]
    BadSignature { author: String },
    #[error("cannot encode: {0}")]
    Codec(String),
}

impl From<CodecError> for EntryError {
    fn from(e: CodecError) -> Self {
        EntryError::Codec(e.to_string())
    }
}

fn field(field: &'static str, reason: impl Into<String>) -> EntryError {
    EntryError::Field { field, reason: reason.into() }
}

fn check_text(name: &'static str, s: &str, limit: usize) -> Result<(), EntryError> {
    if s.len() > limit {
        return Err(field(name, format!("{} bytes, limit {limit}", s.len())));
    }
    Ok(())
}

impl Entry {
    /// The id and the key of this entry.
    pub fn key(&self) -> Result<EntryKey, EntryError> {
        Ok(EntryKey { subject: self.body.subject, id: self.body.id()? })
    }

    pub fn shard(&self) -> ShardId {
        shard_of(&self.body.subject)
    }

    /// Checks structure and bounds (not the signature) and returns the entry's key.
    pub fn validate(&self) -> Result<EntryKey, EntryError> {
        let len = crate::encode(self)?.len();
        if len > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge { len, limit: MAX_ENTRY_BYTES });
        }
        let b = &self.body;
        check_text("author", &b.author, MAX_PEER_ID_LEN)?;
        if self.signature.len() != 64 {
            return Err(field("signature", format!("{} bytes, an ed25519 signature has 64", self.signature.len())));
        }
        match &b.event {
            HistoryEvent::Submitted { capability, requester, .. } => {
                check_text("capability", capability, 256)?;
                check_text("requester", requester, MAX_PEER_ID_LEN)?;
            }
            HistoryEvent::Assigned { executor } => check_text("executor", executor, MAX_PEER_ID_LEN)?,
            HistoryEvent::Result { executor, detail, .. } => {
                check_text("executor", executor, MAX_PEER_ID_LEN)?;
                check_text("detail", detail, MAX_DETAIL_LEN)?;
            }
            HistoryEvent::Done => {}
            HistoryEvent::Proposal(spec) => {
                spec.validate(&spec.proposer).map_err(|e| field("proposal", e.to_string()))?;
                if spec.id().map_err(|e| field("proposal", e.to_string()))? != b.subject {
                    return Err(field("subject", "a proposal entry's subject must be the proposal's id"));
                }
            }
            HistoryEvent::Ballot(ballot) => {
                ballot.validate(&ballot.voter).map_err(|e| field("ballot", e.to_string()))?;
                if ballot.proposal != b.subject {
                    return Err(field("subject", "a ballot entry's subject must be its proposal's id"));
                }
            }
            HistoryEvent::Tally { winner } => check_text("winner", winner.as_deref().unwrap_or(""), 256)?,
            HistoryEvent::Inference { model, detail } => {
                check_text("model", model, 256)?;
                check_text("detail", detail, MAX_DETAIL_LEN)?;
            }
        }
        self.key()
    }
}

/// An order-independent summary of a set of entries: how many, and the sum (mod 2^128)
/// of the first 16 bytes of their ids (little-endian). Adding or removing one entry
/// updates it in O(1); two sets with equal fingerprints are equal but for a 2^-128 chance
/// (ids are BLAKE3 hashes an author cannot aim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint {
    pub count: u64,
    pub sum: u128,
}

impl Fingerprint {
    fn term(id: &EntryId) -> u128 {
        let mut first = [0u8; 16];
        first.copy_from_slice(&id.0[..16]);
        u128::from_le_bytes(first)
    }

    pub fn add(&mut self, id: &EntryId) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(Self::term(id));
    }

    pub fn remove(&mut self, id: &EntryId) {
        self.count = self.count.saturating_sub(1);
        self.sum = self.sum.wrapping_sub(Self::term(id));
    }

    /// A short hex form for people (count and the first 8 hex digits of the sum).
    pub fn short(&self) -> String {
        format!("{}:{:016x}", self.count, (self.sum >> 64) as u64)
    }
}

mod ranges;
pub use ranges::{Bound, KeyRange, MAX_BOUND_LEN, RangeClaim, RangeItem, Tag, bound_between};

/// Most shard fingerprints in one [`HistoryRequest::Digests`] (all of them).
pub const MAX_DIGESTS: usize = SHARDS as usize;
/// Most ranges in one reconciliation message.
pub const MAX_RANGES: usize = 256;
/// Most keys in one reconciliation message, all ranges together.
pub const MAX_KEYS_PER_MESSAGE: usize = 8192;
/// Most entries asked for in one [`HistoryRequest::Fetch`], all ranges together.
pub const MAX_FETCH_KEYS: usize = 4096;

/// Requests of the history protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryRequest {
    /// "Store these entries durably" (a write, a hint delivered, or a repair push).
    /// Answered once they are synced to disk.
    Store(Vec<Entry>),
    /// "Every entry of this subject you hold."
    Read(SubjectId),
    /// "Entries of this shard after this key" (a page, in key order).
    ReadShard { shard: ShardId, after: Option<EntryKey>, limit: u32 },
    /// "My fingerprints of these shards": answered with those that differ.
    Digests(Vec<(ShardId, Fingerprint)>),
    /// A round of range-based set reconciliation of one shard. `salt` keys the session's
    /// tags; `pull`: the asker wants the entries it lacks (sent with the answer), else it
    /// wants to know what the responder lacks (a hand-off push).
    Reconcile { shard: ShardId, salt: u64, pull: bool, ranges: Vec<RangeItem> },
    /// "Send me these entries": tags found missing by reconciliation, with the range
    /// each was found in.
    Fetch { shard: ShardId, salt: u64, wants: Vec<(KeyRange, Vec<Tag>)> },
}

/// Responses of the history protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryResponse {
    /// How many of the entries sent were new to the responder (all are durable now).
    Stored { new: u32 },
    /// Entries (of a read, a page or a fetch); `more` when a page was cut short.
    Entries { entries: Vec<Entry>, more: bool },
    /// The responder's fingerprints of the shards whose fingerprints differ from the
    /// asker's.
    Digests(Vec<(ShardId, Fingerprint)>),
    /// The responder's ranges for the next round (none: the shard is reconciled), and in a
    /// pull session the entries the asker was found to lack.
    Reconcile { ranges: Vec<RangeItem>, entries: Vec<Entry> },
    /// Refused; the text says why.
    Error(String),
}

/// The history protocol `/pyagent/history/1`.
#[derive(Debug)]
pub struct HistoryRpc;

impl RequestResponse for HistoryRpc {
    const NAME: &'static str = "/pyagent/history/1";
    const MAX_REQUEST_BYTES: usize = MAX_FRAME_BYTES;
    const MAX_RESPONSE_BYTES: usize = MAX_FRAME_BYTES;
    type Request = HistoryRequest;
    type Response = HistoryResponse;
}

impl HistoryRequest {
    /// Checks the bounds of a request (entries are validated one by one by the node).
    pub fn validate(&self) -> Result<(), String> {
        let ranges_ok = |ranges: &[RangeItem]| -> Result<(), String> {
            if ranges.len() > MAX_RANGES {
                return Err(format!("{} ranges, limit {MAX_RANGES}", ranges.len()));
            }
            if ranges.iter().any(|r| !r.range.bounds_ok()) {
                return Err(format!("a range bound over {MAX_BOUND_LEN} bytes"));
            }
            let keys: usize = ranges
                .iter()
                .map(|r| match &r.claim {
                    RangeClaim::Tags(k) | RangeClaim::Lacks(k) => k.len(),
                    RangeClaim::Fingerprint(_) => 0,
                })
                .sum();
            if keys > MAX_KEYS_PER_MESSAGE {
                return Err(format!("{keys} keys, limit {MAX_KEYS_PER_MESSAGE}"));
            }
            Ok(())
        };
        let shard_ok = |s: &ShardId| if s.0 < SHARDS { Ok(()) } else { Err(format!("shard {} out of range 0..{SHARDS}", s.0)) };
        match self {
            Self::Store(_) | Self::Read(_) => Ok(()),
            Self::ReadShard { shard, .. } => shard_ok(shard),
            Self::Digests(d) => {
                if d.len() > MAX_DIGESTS {
                    return Err(format!("{} digests, limit {MAX_DIGESTS}", d.len()));
                }
                d.iter().try_for_each(|(s, _)| shard_ok(s))
            }
            Self::Reconcile { shard, ranges, .. } => {
                shard_ok(shard)?;
                ranges_ok(ranges)
            }
            Self::Fetch { shard, wants, .. } => {
                shard_ok(shard)?;
                if wants.len() > MAX_RANGES || wants.iter().any(|(r, _)| !r.bounds_ok()) {
                    return Err(format!("{} ranges (limit {MAX_RANGES}), bounds up to {MAX_BOUND_LEN} bytes", wants.len()));
                }
                let ids: usize = wants.iter().map(|(_, ids)| ids.len()).sum();
                if ids > MAX_FETCH_KEYS {
                    return Err(format!("{ids} ids, limit {MAX_FETCH_KEYS}"));
                }
                Ok(())
            }
        }
    }
}

/// A history entry as the API shows it (with its id, kind and shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub id: String,
    pub shard: u16,
    pub author: String,
    pub at_unix_ms: u64,
    pub kind: EntryKind,
    pub event: HistoryEvent,
}

impl HistoryRecord {
    pub fn of(entry: &Entry, id: &EntryId) -> Self {
        Self {
            id: id.to_string(),
            shard: entry.shard().0,
            author: entry.body.author.clone(),
            at_unix_ms: entry.body.author_unix_ms,
            kind: entry.body.event.kind(),
            event: entry.body.event.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_formula_test_vector() {
        // BLAKE3 of 32 zero bytes starts 2a da 83 c1 ...: 0x2a << 2 | 0xda >> 6 = 168 | 3.
        let zero = TaskId([0; 32]);
        assert_eq!(&blake3::hash(&zero.0).as_bytes()[..2], &[0x2a, 0xda]);
        assert_eq!(shard_of(&zero), ShardId(171));
        // Every shard is reachable and none is out of range.
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let s = shard_of(&TaskId(id));
            assert!(s.0 < SHARDS);
            seen.insert(s);
        }
        assert_eq!(seen.len(), SHARDS as usize);
    }

    #[test]
    fn fingerprints_do_not_depend_on_order_and_undo() {
        let ids: Vec<EntryId> = (0..50u8).map(|i| EntryId(*blake3::hash(&[i]).as_bytes())).collect();
        let (mut a, mut b) = (Fingerprint::default(), Fingerprint::default());
        ids.iter().for_each(|i| a.add(i));
        ids.iter().rev().for_each(|i| b.add(i));
        assert_eq!(a, b);
        b.remove(&ids[3]);
        assert_ne!(a, b);
        b.add(&ids[3]);
        assert_eq!(a, b);
    }

    #[test]
    fn key_bytes_round_trip_and_order_like_the_keys() {
        let k1 = EntryKey { subject: TaskId([1; 32]), id: EntryId([9; 32]) };
        let k2 = EntryKey { subject: TaskId([2; 32]), id: EntryId([0; 32]) };
        assert_eq!(EntryKey::from_bytes(&k1.to_bytes()), Some(k1));
        assert!(k1 < k2 && k1.to_bytes() < k2.to_bytes());
        assert_eq!(EntryKey::from_bytes(&[0; 63]), None);
        let b = bound_between(&k1, &k2);
        assert_eq!(b, vec![2], "one byte separates them");
        let r = KeyRange { lower: Some(k1.to_bytes().to_vec()), upper: Some(b) };
        assert!(r.contains(&k1) && !r.contains(&k2));
        let k3 = EntryKey { subject: TaskId([1; 32]), id: EntryId([10; 32]) };
        let b = bound_between(&k1, &k3);
        assert_eq!(b.len(), 33, "the first differing byte is the id's first");
        assert!(KeyRange { lower: None, upper: Some(b.clone()) }.contains(&k1));
        assert!(KeyRange { lower: Some(b), upper: None }.contains(&k3));
    }

    #[test]
    fn a_round_of_digests_for_every_shard_fits_in_32_kb() {
        let digests: Vec<(ShardId, Fingerprint)> =
            ShardId::all().map(|s| (s, Fingerprint { count: 1 << 40, sum: u128::MAX - u128::from(s.0) })).collect();
        let bytes = crate::encode(&HistoryRequest::Digests(digests)).unwrap().len();
        assert!(bytes <= 32 * 1024, "{bytes} bytes");
    }

    #[test]
    fn requests_out_of_bounds_are_refused_with_a_reason() {
        assert!(HistoryRequest::Digests(vec![(ShardId(SHARDS), Fingerprint::default())]).validate().unwrap_err().contains("out of range"));
        let ids = vec![[0u8; 4]; MAX_FETCH_KEYS + 1];
        let many_ids = HistoryRequest::Fetch { shard: ShardId(5), salt: 1, wants: vec![(KeyRange::FULL, ids)] };
        assert!(many_ids.validate().unwrap_err().contains("ids"));
        let long = KeyRange { lower: Some(vec![0; MAX_BOUND_LEN + 1]), upper: None };
        assert!(HistoryRequest::Fetch { shard: ShardId(5), salt: 1, wants: vec![(long, vec![])] }.validate().is_err());
        assert!(HistoryRequest::Fetch { shard: ShardId(5), salt: 1, wants: vec![(KeyRange::FULL, vec![[1; 4]])] }.validate().is_ok());
        let many = HistoryRequest::Reconcile {
            shard: ShardId(0),
            salt: 1,
            pull: true,
            ranges: vec![RangeItem { range: KeyRange::FULL, claim: RangeClaim::Tags(vec![[0; 4]; MAX_KEYS_PER_MESSAGE + 1]) }],
        };
        assert!(many.validate().unwrap_err().contains("keys"));
        assert!(HistoryRequest::Reconcile { shard: ShardId(SHARDS), salt: 1, pull: true, ranges: vec![] }.validate().is_err());
    }
}
