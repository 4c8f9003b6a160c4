//! The history state machine: appends (W acknowledgements, hints), reads (ask the owners,
//! merge; in [`super::reads`]), and the answers to peers' requests. Anti-entropy and
//! hand-off are in [`super::sync`]. Events go in with the time injected; [`Out`]s come back for the actor
//! to carry out (send a request, answer one, write through the writer). The store is
//! injected for reads; every write goes through the writer, so it is synced and grouped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::history::{
    Entry, EntryId, EntryKey, HistoryRequest, HistoryResponse, MAX_ENTRY_BYTES, ShardId, shard_of,
};
use tokio::sync::oneshot;

use super::owners::Owners;
use super::sync::SyncState;
use crate::store::Store;

/// An outbound request, matched with its answer.
pub type Token = u64;
/// An inbound request waiting for its answer.
pub type ChannelId = u64;

pub use crate::config::HistorySettings;

/// An append waits this long for its owners' acknowledgements; the entries short of W
/// become hints then.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A read waits this long for the owners.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How often pending hints are offered to their owners again.
const HINT_INTERVAL: Duration = Duration::from_secs(1);
/// Most hints offered per attempt.
const HINT_BATCH: usize = 1024;
/// A Store request carries at most about this many bytes of entries.
const STORE_CHUNK_BYTES: usize = 3 * 1024 * 1024;
/// Most entries returned by a read of one subject, or one page of a shard.
pub const MAX_READ_ENTRIES: usize = crate::store::MAX_HISTORY_PER_SUBJECT;

/// What the actor must do.
#[derive(Debug)]
pub enum Out {
    Send { token: Token, peer: PeerId, request: HistoryRequest },
    Respond { channel: ChannelId, response: HistoryResponse },
    /// Write entries (or hints) through the writer; its answer comes back as
    /// [`HistoryBook::on_written`] with the token.
    Write { token: Token, entries: Vec<Entry>, verify: bool, hints: bool },
}

/// What an append achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// Each entry: id, shard, and the owners that hold it durably.
    pub entries: Vec<(EntryId, ShardId, usize)>,
    /// Entries on at least W owners (or on every owner of a swarm smaller than W).
    pub acknowledged: usize,
    /// Entries short of that: kept here as durable hints until their owners take them.
    pub hinted: usize,
    pub write_quorum: usize,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// Deduplicated and verified, ordered by (author time, id).
    pub entries: Vec<(EntryId, Entry)>,
    pub owners_asked: usize,
    pub owners_answered: usize,
    /// Entries a peer sent that failed verification (left out).
    pub rejected: usize,
    /// A shard page was cut short: ask again after the last key.
    pub more: bool,
}

/// A reader of a history.
pub(super) type ReadWaiter = oneshot::Sender<ReadReport>;

pub(super) struct AppendOp {
    entries: Vec<Entry>,
    keys: Vec<EntryKey>,
    required: Vec<usize>,
    acked: Vec<usize>,
    outstanding: usize,
    waiter: Option<oneshot::Sender<AppendReport>>,
    /// From the hint queue: satisfied entries leave it.
    from_hints: bool,
    deadline: Instant,
    /// Hints being written; the waiter is answered after.
    finishing: bool,
}

pub(super) struct ReadOp {
    pub(super) found: BTreeMap<EntryId, Entry>,
    pub(super) outstanding: usize,
    pub(super) asked: usize,
    pub(super) answered: usize,
    pub(super) rejected: usize,
    pub(super) more: bool,
    /// A shard page: keep the first `limit` keys.
    pub(super) page: Option<usize>,
    pub(super) waiter: Option<ReadWaiter>,
    pub(super) deadline: Instant,
}

pub(super) enum Pending {
    /// A store sent to `peer` for the entries `idx` of append `op` (their ids in `ids`).
    Append { op: u64, idx: Vec<usize>, peer: PeerId, ids: Vec<EntryId> },
    Read { op: u64 },
    Sync(super::sync::SyncPending),
}

pub(super) enum WritePending {
    Append { op: u64, idx: Vec<usize> },
    Hints { op: u64 },
    Inbound { channel: ChannelId },
    Repair { shard: ShardId },
}

/// The history of the swarm as this node takes part in it.
pub struct HistoryBook {
    pub(super) me: PeerId,
    pub(super) settings: HistorySettings,
    pub(super) store: Arc<Store>,
    pub(super) owners: Owners,
    pub(super) view_changed_at: Instant,
    next: u64,
    pub(super) pending: HashMap<Token, Pending>,
    pub(super) writes: HashMap<Token, WritePending>,
    appends: HashMap<u64, AppendOp>,
    pub(super) reads: HashMap<u64, ReadOp>,
    hint_op: Option<u64>,
    last_hints: Option<Instant>,
    pub(super) sync: SyncState,
}

impl std::fmt::Debug for HistoryBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryBook").field("appends", &self.appends.len()).field("reads", &self.reads.len()).finish_non_exhaustive()
    }
}

/// Entries sorted for display: (author time, id).
pub fn display_order(entries: &mut [(EntryId, Entry)]) {
    entries.sort_by_key(|(id, e)| (e.body.author_unix_ms, *id));
}

impl HistoryBook {
    pub fn new(me: PeerId, settings: HistorySettings, store: Arc<Store>, now: Instant) -> Self {
        Self {
            me,
            settings,
            store,
            owners: Owners::compute(&[me], settings.replicas),
            view_changed_at: now,
            next: 1,
            pending: HashMap::new(),
            writes: HashMap::new(),
            appends: HashMap::new(),
            reads: HashMap::new(),
            hint_op: None,
            last_hints: None,
            sync: SyncState::default(),
        }
    }

    pub(super) fn token(&mut self) -> Token {
        self.next += 1;
        self.next
    }

    /// The live members changed (this node is added if missing).
    pub fn set_members(&mut self, mut members: Vec<PeerId>, now: Instant) {
        members.push(self.me);
        let owners = Owners::compute(&members, self.settings.replicas);
        if owners.members() != self.owners.members() {
            tracing::debug!(members = owners.members().len(), "history owners recomputed");
            self.owners = owners;
            self.view_changed_at = now;
            self.sync.view_changed(self.owners.members());
        }
    }

    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    /// Entries short of W after this long: how many appends wait.
    pub fn appends_in_flight(&self) -> usize {
        self.appends.len()
    }

    /// Appends signed entries: each goes to its shard's owners (this node's share through
    /// the writer); the report comes once each entry is on W owners, or, past
    /// [`WRITE_TIMEOUT`] or once every owner answered, with the rest kept as hints.
    pub fn append(&mut self, entries: Vec<(Entry, EntryKey)>, waiter: Option<oneshot::Sender<AppendReport>>, from_hints: bool, now: Instant, out: &mut Vec<Out>) {
        let op = self.token();
        let (entries, keys): (Vec<Entry>, Vec<EntryKey>) = entries.into_iter().unzip();
        let mut per_peer: BTreeMap<PeerId, Vec<usize>> = BTreeMap::new();
        let mut required = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let owners = self.owners.of(shard_of(&key.subject));
            required.push(self.settings.write_quorum.min(owners.len()).max(1));
            for owner in owners {
                per_peer.entry(*owner).or_default().push(i);
            }
        }
        let mut outstanding = 0;
        for (peer, idx) in per_peer {
            if peer == self.me {
                let token = self.token();
                let batch = idx.iter().map(|&i| entries[i].clone()).collect();
                self.writes.insert(token, WritePending::Append { op, idx });
                out.push(Out::Write { token, entries: batch, verify: false, hints: false });
                outstanding += 1;
                continue;
            }
            for chunk in chunks(&entries, &idx) {
                let token = self.token();
                let batch = chunk.iter().map(|&i| entries[i].clone()).collect();
                let ids: Vec<EntryId> = chunk.iter().map(|&i| keys[i].id).collect();
                self.sync.stores_sent(peer, ids.iter().copied(), now);
                self.pending.insert(token, Pending::Append { op, idx: chunk, peer, ids });
                out.push(Out::Send { token, peer, request: HistoryRequest::Store(batch) });
                outstanding += 1;
            }
        }
        let n = keys.len();
        self.appends.insert(
            op,
            AppendOp { entries, keys, required, acked: vec![0; n], outstanding, waiter, from_hints, deadline: now + WRITE_TIMEOUT, finishing: false },
        );
        if from_hints {
            self.hint_op = Some(op);
        }
        self.check_append(op, now, out);
    }

    /// An owner (or this node's writer) answered for entries `idx` of append `op`.
    fn append_answered(&mut self, op: u64, idx: &[usize], ok: bool, now: Instant, out: &mut Vec<Out>) {
        if let Some(a) = self.appends.get_mut(&op) {
            a.outstanding = a.outstanding.saturating_sub(1);
            if ok {
                for &i in idx {
                    if let Some(n) = a.acked.get_mut(i) {
                        *n += 1;
                    }
                }
            }
        }
        self.check_append(op, now, out);
    }

    fn check_append(&mut self, op: u64, now: Instant, out: &mut Vec<Out>) {
        let Some(a) = self.appends.get(&op) else { return };
        if a.finishing {
            return;
        }
        let satisfied = a.acked.iter().zip(&a.required).all(|(got, need)| got >= need);
        if !satisfied && a.outstanding > 0 && now < a.deadline {
            return;
        }
        let Some(mut a) = self.appends.remove(&op) else { return };
        let short: Vec<usize> = (0..a.keys.len()).filter(|&i| a.acked[i] < a.required[i]).collect();
        if a.from_hints {
            self.hint_op = None;
            for (i, key) in a.keys.iter().enumerate() {
                if a.acked[i] >= a.required[i]
                    && let Err(e) = self.store.remove_hint(key)
                {
                    tracing::warn!("cannot remove a delivered hint: {e}");
                }
            }
            if !short.is_empty() {
                tracing::debug!(left = short.len(), "hints not yet delivered");
            }
            return;
        }
        if short.is_empty() {
            reply_append(&mut a, 0);
            return;
        }
        // Fewer than W owners have these: keep them here, durably, until they do.
        let token = self.token();
        let hints = short.iter().map(|&i| a.entries[i].clone()).collect();
        a.finishing = true;
        self.writes.insert(token, WritePending::Hints { op });
        self.appends.insert(op, a);
        out.push(Out::Write { token, entries: hints, verify: false, hints: true });
    }

    /// A write through the writer ended.
    pub fn on_written(&mut self, token: Token, result: Result<usize, String>, now: Instant, out: &mut Vec<Out>) {
        let Some(pending) = self.writes.remove(&token) else { return };
        match pending {
            WritePending::Append { op, idx } => {
                if let Err(e) = &result {
                    tracing::warn!("history not written locally: {e}");
                }
                self.append_answered(op, &idx, result.is_ok(), now, out);
            }
            WritePending::Hints { op } => {
                if let Some(mut a) = self.appends.remove(&op) {
                    let short = a.acked.iter().zip(&a.required).filter(|(g, n)| g < n).count();
                    if let Err(e) = &result {
                        tracing::error!("hints not written: {e}");
                    }
                    reply_append(&mut a, if result.is_ok() { short } else { 0 });
                }
            }
            WritePending::Inbound { channel } => {
                let response = match result {
                    Ok(new) => HistoryResponse::Stored { new: u32::try_from(new).unwrap_or(u32::MAX) },
                    Err(e) => HistoryResponse::Error(e),
                };
                out.push(Out::Respond { channel, response });
            }
            WritePending::Repair { shard } => {
                self.fetched(shard);
                if let Ok(new) = result {
                    self.sync.stats.entries_fetched += new as u64;
                }
            }
        }
    }

    /// The answer to one of this node's requests (`Err`: it failed, with the reason).
    pub fn on_response(&mut self, token: Token, response: Result<HistoryResponse, String>, now: Instant, out: &mut Vec<Out>) {
        let Some(pending) = self.pending.remove(&token) else { return };
        match pending {
            Pending::Append { op, idx, peer, ids } => {
                self.sync.stores_answered(peer, ids.into_iter());
                let ok = matches!(response, Ok(HistoryResponse::Stored { .. }));
                if let Ok(HistoryResponse::Error(e)) | Err(e) = &response {
                    tracing::debug!("history store refused or failed: {e}");
                }
                self.append_answered(op, &idx, ok, now, out);
            }
            Pending::Read { op } => {
                if let Some(r) = self.reads.get_mut(&op) {
                    r.outstanding = r.outstanding.saturating_sub(1);
                    if let Ok(HistoryResponse::Entries { entries, more }) = response {
                        r.answered += 1;
                        r.more |= more;
                        for e in entries {
                            match super::entry::verify(&e) {
                                Ok(key) => {
                                    r.found.entry(key.id).or_insert(e);
                                }
                                Err(reason) => {
                                    tracing::warn!("history read: an owner sent a bad entry: {reason}");
                                    r.rejected += 1;
                                }
                            }
                        }
                    }
                }
                self.check_read(op, now);
            }
            Pending::Sync(sync) => self.on_sync_response(sync, response, now, out),
        }
    }

    /// A peer's request (already decoded within the protocol's size limit).
    pub fn on_request(&mut self, peer: PeerId, channel: ChannelId, request: HistoryRequest, out: &mut Vec<Out>) {
        if let Err(reason) = request.validate() {
            tracing::warn!(%peer, "history request refused: {reason}");
            out.push(Out::Respond { channel, response: HistoryResponse::Error(reason) });
            return;
        }
        let response = match request {
            HistoryRequest::Store(entries) => {
                for e in &entries {
                    if !self.owners.owns(&self.me, e.shard()) {
                        self.touched(e.shard());
                    }
                }
                let token = self.token();
                self.writes.insert(token, WritePending::Inbound { channel });
                out.push(Out::Write { token, entries, verify: true, hints: false });
                return;
            }
            HistoryRequest::Read(subject) => {
                let mut entries = self.store.subject_entries(&subject, MAX_READ_ENTRIES).unwrap_or_default();
                entries.extend(self.store.subject_hints(&subject).unwrap_or_default());
                let (entries, cut) = fit(dedup(entries));
                HistoryResponse::Entries { entries, more: cut }
            }
            HistoryRequest::ReadShard { shard, after, limit } => match self.store.shard_page(shard, after, (limit as usize).clamp(1, MAX_READ_ENTRIES)) {
                Ok((entries, more)) => {
                    let (entries, cut) = fit(entries);
                    HistoryResponse::Entries { entries, more: more || cut }
                }
                Err(e) => HistoryResponse::Error(format!("cannot read shard {shard}: {e}")),
            },
            HistoryRequest::Fetch { shard, salt, wants } => match self.store.entries_in_ranges(shard, salt, &wants) {
                Ok(entries) => {
                    let (entries, cut) = fit(entries);
                    HistoryResponse::Entries { entries, more: cut }
                }
                Err(e) => HistoryResponse::Error(format!("cannot read entries: {e}")),
            },
            HistoryRequest::Digests(theirs) => self.answer_digests(&peer, &theirs),
            HistoryRequest::Reconcile { shard, salt, pull, ranges } => self.answer_reconcile(peer, shard, salt, pull, &ranges),
        };
        out.push(Out::Respond { channel, response });
    }

    /// Time passes: late appends and reads end, hints are offered again, and
    /// anti-entropy runs.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Out>) {
        let late: Vec<u64> = self.appends.iter().filter(|(_, a)| now >= a.deadline && !a.finishing).map(|(op, _)| *op).collect();
        for op in late {
            self.check_append(op, now, out);
        }
        let late: Vec<u64> = self.reads.iter().filter(|(_, r)| now >= r.deadline).map(|(op, _)| *op).collect();
        for op in late {
            self.check_read(op, now);
        }
        if self.hint_op.is_none() && self.last_hints.is_none_or(|t| now.duration_since(t) >= HINT_INTERVAL) {
            self.last_hints = Some(now);
            match self.store.hints(HINT_BATCH) {
                Ok(hints) if !hints.is_empty() => {
                    let keyed: Vec<(Entry, EntryKey)> = hints.into_iter().filter_map(|e| e.key().ok().map(|k| (e, k))).collect();
                    self.append(keyed, None, true, now, out);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot read hints: {e}"),
            }
        }
        self.sync_tick(now, out);
    }
}

fn reply_append(a: &mut AppendOp, hinted: usize) {
    let Some(waiter) = a.waiter.take() else { return };
    let report = AppendReport {
        entries: a.keys.iter().zip(&a.acked).map(|(k, n)| (k.id, shard_of(&k.subject), *n)).collect(),
        acknowledged: a.acked.iter().zip(&a.required).filter(|(g, n)| g >= n).count(),
        hinted,
        write_quorum: a.required.iter().copied().max().unwrap_or(0),
    };
    let _ = waiter.send(report);
}

/// Splits the entries `idx` into Store requests of at most [`STORE_CHUNK_BYTES`].
fn chunks(entries: &[Entry], idx: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &i in idx {
        let len = approx_len(&entries[i]);
        if !current.is_empty() && bytes + len > STORE_CHUNK_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// An entry's encoded size (at most [`MAX_ENTRY_BYTES`]).
pub(super) fn approx_len(entry: &Entry) -> usize {
    pyagent_protocol::encode(entry).map(|b| b.len()).unwrap_or(MAX_ENTRY_BYTES)
}

/// Keeps as many entries as fit in one answer; `true` when some were left out.
pub(super) fn fit(mut entries: Vec<Entry>) -> (Vec<Entry>, bool) {
    let mut bytes = 0;
    let mut keep = entries.len();
    for (i, e) in entries.iter().enumerate() {
        bytes += approx_len(e);
        if bytes > STORE_CHUNK_BYTES {
            keep = i.max(1);
            break;
        }
    }
    let cut = keep < entries.len();
    entries.truncate(keep);
    (entries, cut)
}

/// Entries deduplicated (a set: the same id from several owners is one entry).
pub(super) fn dedup(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = HashSet::new();
    entries.into_iter().filter(|e| e.body.id().map(|id| seen.insert(id)).unwrap_or(false)).collect()
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
