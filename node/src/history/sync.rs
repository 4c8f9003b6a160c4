//! Anti-entropy and hand-off. Every `sync_interval` (and at once when the view changes)
//! this node sends each peer it shares shards with its fingerprints of those shards
//! ([`HistoryRequest::Digests`], about 22 KB for all 1,024); the peer answers with its own
//! for those that differ, and each differing shard is reconciled by ranges
//! ([`super::reconcile`]). Between co-owners repair is pull-only: the side with fewer
//! entries (or as many) pulls what it lacks; the other side's own round pulls the rest.
//! A shard is reconciled with one peer at a time (at most [`MAX_SESSIONS`] shards at once,
//! the rest queued), and not again while its fetched entries are being written, so a node
//! that missed entries receives each of them once, not once per peer. Entries this
//! node's own appends are still delivering to the asking peer are left out of repairs.
//!
//! Hand-off: a shard this node holds but no longer owns (the view changed, and has been
//! stable for [`HANDOFF_STABLE`]) is offered to its owners the same way, pushing what they
//! lack; once every owner's fingerprint equals this node's, it is dropped here.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::history::{
    Entry, EntryId, EntryKey, Fingerprint, HistoryRequest, HistoryResponse, KeyRange, MAX_FETCH_KEYS, MAX_RANGES, RangeItem, ShardId,
};

use super::book::{HistoryBook, Out, Pending, WritePending};
use super::reconcile::{self, Learned, MAX_INITIATOR_RANGES, ShardKeys, Terms};
use crate::store::{Store, StoreError};

/// A shard no longer owned is handed off once the view has been stable this long.
pub const HANDOFF_STABLE: Duration = Duration::from_secs(10);
/// Most shards being reconciled at once (with all peers together).
pub const MAX_SESSIONS: usize = 256;
/// An entry sent to a peer by an append is left out of repairs to that peer this long at
/// most (the protocol's request timeout is 10 s).
pub const IN_FLIGHT_FOR: Duration = Duration::from_secs(15);
/// Most shards being reconciled at once with one peer (each holds a stream of the
/// connection; see `p2p::behaviour::HISTORY_STREAMS`).
pub const MAX_SESSIONS_PER_PEER: usize = 64;

/// One shard of this node's store, for reconciliation.
struct StoreShard<'a> {
    store: &'a Store,
    shard: ShardId,
}

impl ShardKeys for StoreShard<'_> {
    type Error = StoreError;

    fn scan(&self, range: &KeyRange, f: &mut dyn FnMut(EntryKey) -> bool) -> Result<(), StoreError> {
        self.store.scan_keys(self.shard, range, f)
    }
}

pub(super) enum SyncPending {
    Digests { peer: PeerId, shards: Vec<ShardId>, bytes: usize },
    Reconcile { peer: PeerId, shard: ShardId },
    Fetch { peer: PeerId, shard: ShardId },
    Push { peer: PeerId },
}

impl SyncPending {
    fn peer(&self) -> PeerId {
        match self {
            Self::Digests { peer, .. } | Self::Reconcile { peer, .. } | Self::Fetch { peer, .. } | Self::Push { peer } => *peer,
        }
    }
}

/// Counters of the anti-entropy traffic this node took part in (the API's type; the
/// write counters are filled in from the store when reported).
pub type SyncStats = pyagent_protocol::api::SyncCounters;

struct Session {
    /// Pull what this node lacks (co-owners), or push what the owner lacks (hand-off);
    /// and the session's tag salt.
    terms: Terms,
    queue: VecDeque<RangeItem>,
    learned: Learned,
}

#[derive(Default)]
pub(super) struct SyncState {
    last_round: Option<Instant>,
    /// Peers whose digest round is unanswered: not asked again until it is.
    digests_asked: HashSet<PeerId>,
    /// Reconciliations in progress, by shard and peer: at most one pull per shard (with
    /// any peer), pushes (hand-off) to every owner at once.
    sessions: HashMap<(ShardId, PeerId), Session>,
    /// Shards waiting for a session: (peer, shard, push).
    queued: VecDeque<(PeerId, ShardId, bool)>,
    queued_shards: HashSet<(ShardId, PeerId)>,
    /// Shards with repair entries on their way (fetches asked, writes queued), and how
    /// many such operations each has.
    fetching: HashMap<ShardId, usize>,
    /// Owners whose fingerprint of a shard this node no longer owns equals this node's.
    confirmed: HashMap<ShardId, BTreeSet<PeerId>>,
    /// Shards whose fingerprints differed at the last comparison with each peer.
    differing: HashMap<PeerId, BTreeSet<ShardId>>,
    pub(super) stats: SyncStats,
    /// Salts when the OS gives no random numbers (never seen; still distinct per session).
    fallback_salt: u64,
    /// Entries this node's appends have sent to each peer and not yet seen answered (how
    /// many stores carry each, and when the last was sent): a repair does not send them
    /// again, since under a steady write load most differing fingerprints are only such
    /// entries. Forgotten after [`IN_FLIGHT_FOR`] whatever happened, so a lost answer
    /// cannot hold a repair back.
    in_flight: HashMap<PeerId, HashMap<EntryId, (u32, Instant)>>,
}

impl SyncState {
    pub(super) fn stores_sent(&mut self, peer: PeerId, ids: impl Iterator<Item = EntryId>, now: Instant) {
        let map = self.in_flight.entry(peer).or_default();
        for id in ids {
            let e = map.entry(id).or_insert((0, now));
            *e = (e.0 + 1, now);
        }
    }

    pub(super) fn stores_answered(&mut self, peer: PeerId, ids: impl Iterator<Item = EntryId>) {
        let Some(map) = self.in_flight.get_mut(&peer) else { return };
        for id in ids {
            if let Some((n, _)) = map.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&id);
                }
            }
        }
        if map.is_empty() {
            self.in_flight.remove(&peer);
        }
    }

    fn on_its_way(&self, peer: &PeerId, id: &EntryId) -> bool {
        self.in_flight.get(peer).is_some_and(|m| m.contains_key(id))
    }

    fn forget_old_stores(&mut self, now: Instant) {
        for map in self.in_flight.values_mut() {
            map.retain(|_, (_, at)| now.duration_since(*at) < IN_FLIGHT_FOR);
        }
        self.in_flight.retain(|_, m| !m.is_empty());
    }

    pub(super) fn view_changed(&mut self, members: &[PeerId]) {
        // Compare with the new owners at the next tick, not a whole interval later.
        self.last_round = None;
        self.confirmed.clear();
        self.differing.retain(|p, _| members.contains(p));
    }
}

fn wire_len<T: serde::Serialize>(message: &T) -> u64 {
    pyagent_protocol::encode(message).map(|b| b.len() as u64).unwrap_or(0)
}

impl HistoryBook {
    pub fn sync_stats(&self) -> SyncStats {
        self.sync.stats.clone()
    }

    /// Shards whose fingerprint differed from a co-owner's at the last comparison.
    pub fn differing_shards(&self) -> Vec<ShardId> {
        let all: BTreeSet<ShardId> = self.sync.differing.values().flatten().copied().collect();
        all.into_iter().collect()
    }

    fn send_sync(&mut self, peer: PeerId, request: HistoryRequest, pending: SyncPending, out: &mut Vec<Out>) {
        self.sync.stats.bytes_sent += wire_len(&request);
        if matches!(pending, SyncPending::Digests { .. }) {
            self.sync.digests_asked.insert(peer);
        }
        let token = self.token();
        self.pending.insert(token, Pending::Sync(pending));
        out.push(Out::Send { token, peer, request });
    }

    /// Shards to compare with `peer`: those both own, and those this node holds but does
    /// not own while `peer` does (hand-off: pushed at once, dropped only once the view has
    /// been stable for [`HANDOFF_STABLE`]).
    fn shards_to_compare(&self, peer: &PeerId, digests: &[Fingerprint]) -> Vec<ShardId> {
        ShardId::all()
            .filter(|s| {
                let theirs = self.owners.owns(peer, *s);
                let mine = self.owners.owns(&self.me, *s);
                let held = digests.get(usize::from(s.0)).is_some_and(|fp| fp.count > 0);
                theirs && (mine || held)
            })
            .collect()
    }

    /// Shards held here but not owned whose owners have not all been seen to hold
    /// everything this node holds of them.
    pub fn handoff_pending(&self) -> usize {
        let digests = self.store.digests().unwrap_or_default();
        ShardId::all()
            .filter(|s| digests.get(usize::from(s.0)).is_some_and(|fp| fp.count > 0) && !self.owners.owns(&self.me, *s) && !self.handed_off(*s))
            .count()
    }

    fn handed_off(&self, shard: ShardId) -> bool {
        let confirmed = self.sync.confirmed.get(&shard);
        self.owners.of(shard).iter().all(|o| confirmed.is_some_and(|c| c.contains(o)))
    }

    /// This node wrote entries of `shard` that came from outside: confirmations that its
    /// owners hold everything of it are stale.
    pub(super) fn touched(&mut self, shard: ShardId) {
        self.sync.confirmed.remove(&shard);
    }

    /// Drops the shards handed off, once the view has been stable for [`HANDOFF_STABLE`].
    fn drop_handed_off(&mut self, now: Instant) {
        if now.duration_since(self.view_changed_at) < HANDOFF_STABLE {
            return;
        }
        let ready: Vec<ShardId> = self.sync.confirmed.keys().copied().filter(|s| !self.owners.owns(&self.me, *s) && self.handed_off(*s)).collect();
        for shard in ready {
            self.sync.confirmed.remove(&shard);
            if self.sync.sessions.keys().any(|(s, _)| *s == shard) || self.sync.fetching.contains_key(&shard) {
                continue;
            }
            match self.store.drop_shard(shard) {
                Ok(()) => {
                    self.sync.stats.shards_handed_off += 1;
                    tracing::info!(%shard, "shard handed off to its owners and dropped here");
                }
                Err(e) => tracing::warn!(%shard, "cannot drop a handed-off shard: {e}"),
            }
        }
    }

    pub(super) fn sync_tick(&mut self, now: Instant, out: &mut Vec<Out>) {
        if self.sync.last_round.is_some_and(|t| now.duration_since(t) < self.settings.sync_interval) {
            return;
        }
        self.sync.last_round = Some(now);
        self.sync.forget_old_stores(now);
        self.drop_handed_off(now);
        let peers: Vec<PeerId> = self.owners.members().iter().filter(|p| **p != self.me).copied().collect();
        let digests = self.store.digests().unwrap_or_default();
        for peer in peers {
            if self.sync.digests_asked.contains(&peer) {
                continue;
            }
            let shards = self.shards_to_compare(&peer, &digests);
            if shards.is_empty() {
                continue;
            }
            let list: Vec<(ShardId, Fingerprint)> = shards.iter().map(|s| (*s, digests.get(usize::from(s.0)).copied().unwrap_or_default())).collect();
            let request = HistoryRequest::Digests(list);
            let bytes = wire_len(&request) as usize;
            self.sync.stats.digest_rounds += 1;
            self.send_sync(peer, request, SyncPending::Digests { peer, shards, bytes }, out);
        }
    }

    /// A peer's fingerprints: answered with this node's for the shards that differ.
    pub(super) fn answer_digests(&mut self, _peer: &PeerId, theirs: &[(ShardId, Fingerprint)]) -> HistoryResponse {
        self.sync.stats.bytes_received += wire_len(&theirs);
        let digests = match self.store.digests() {
            Ok(d) => d,
            Err(e) => return HistoryResponse::Error(format!("cannot read digests: {e}")),
        };
        let mine = |s: &ShardId| digests.get(usize::from(s.0)).copied().unwrap_or_default();
        let differ = theirs.iter().filter(|(s, fp)| mine(s) != *fp).map(|(s, _)| (*s, mine(s))).collect();
        let response = HistoryResponse::Digests(differ);
        self.sync.stats.bytes_sent += wire_len(&response);
        response
    }

    /// One round of a peer's reconciliation of `shard`; a puller gets the entries it was
    /// found to lack with the answer.
    pub(super) fn answer_reconcile(&mut self, peer: PeerId, shard: ShardId, salt: u64, pull: bool, ranges: &[RangeItem]) -> HistoryResponse {
        self.sync.stats.bytes_received += wire_len(&ranges);
        let response = match reconcile::respond(&StoreShard { store: &self.store, shard }, Terms { salt, pull }, ranges)
            .map_err(|e| e.to_string())
            .and_then(|mut answer| {
                // Entries an append of this node is delivering to the peer are not sent twice.
                answer.send.retain(|k| !self.sync.on_its_way(&peer, &k.id));
                Ok((answer.ranges, self.store.entries_by_key(&answer.send).map_err(|e| e.to_string())?))
            })
        {
            Ok((ranges, entries)) => {
                // What does not fit in one answer is found missing again next session.
                let (entries, _) = super::book::fit(entries);
                self.sync.stats.entries_pushed += entries.len() as u64;
                HistoryResponse::Reconcile { ranges, entries }
            }
            Err(e) => HistoryResponse::Error(format!("cannot reconcile shard {shard}: {e}")),
        };
        self.sync.stats.bytes_sent += wire_len(&response);
        response
    }

    /// Repair entries of `shard` from `peer` (with a reconciliation answer or a fetch):
    /// written, checked, unless they are of another shard.
    fn repair_entries(&mut self, peer: PeerId, shard: ShardId, entries: Vec<Entry>, out: &mut Vec<Out>) {
        let wrong = entries.iter().filter(|e| e.shard() != shard).count();
        if wrong > 0 {
            tracing::warn!(%peer, %shard, wrong, "repair: entries of another shard refused");
        }
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.shard() == shard).collect();
        if entries.is_empty() {
            return;
        }
        *self.sync.fetching.entry(shard).or_default() += 1;
        let token = self.token();
        self.writes.insert(token, WritePending::Repair { shard });
        out.push(Out::Write { token, entries, verify: true, hints: false });
    }

    pub(super) fn on_sync_response(&mut self, pending: SyncPending, response: Result<HistoryResponse, String>, now: Instant, out: &mut Vec<Out>) {
        let peer = pending.peer();
        if matches!(pending, SyncPending::Digests { .. }) {
            self.sync.digests_asked.remove(&peer);
        }
        if let Ok(r) = &response {
            self.sync.stats.bytes_received += wire_len(r);
        }
        match (pending, response) {
            (SyncPending::Digests { peer, shards, bytes }, Ok(HistoryResponse::Digests(differ))) => {
                self.on_digests(peer, &shards, bytes, differ, now, out);
            }
            (SyncPending::Reconcile { peer, shard }, Ok(HistoryResponse::Reconcile { ranges, entries })) => {
                self.sync.stats.reconcile_rounds += 1;
                let pull = self.sync.sessions.get(&(shard, peer)).is_some_and(|s| s.terms.pull);
                if pull {
                    self.repair_entries(peer, shard, entries, out);
                } else if !entries.is_empty() {
                    tracing::debug!(%peer, %shard, "entries sent to a push session ignored");
                }
                self.on_reconcile(peer, shard, &ranges, out);
            }
            (SyncPending::Fetch { shard, .. }, response) => {
                self.fetched(shard);
                match response {
                    Ok(HistoryResponse::Entries { entries, .. }) => self.repair_entries(peer, shard, entries, out),
                    other => tracing::debug!(%peer, %shard, "repair fetch failed: {other:?}"),
                }
            }
            (SyncPending::Push { .. }, Ok(HistoryResponse::Stored { .. })) => {}
            (SyncPending::Reconcile { peer, shard }, other) => {
                self.sync.sessions.remove(&(shard, peer));
                tracing::debug!(%peer, %shard, "reconciliation ended early: {other:?}");
                self.fill_sessions(out);
            }
            (_, other) => tracing::debug!(%peer, "history sync request failed: {other:?}"),
        }
    }

    fn on_digests(&mut self, peer: PeerId, asked: &[ShardId], request_bytes: usize, differ: Vec<(ShardId, Fingerprint)>, now: Instant, out: &mut Vec<Out>) {
        if differ.is_empty() {
            self.sync.stats.last_in_sync_round_bytes = (request_bytes + wire_len(&HistoryResponse::Digests(Vec::new())) as usize) as u64;
        }
        let differing: BTreeSet<ShardId> = differ.iter().map(|(s, _)| *s).collect();
        self.sync.differing.insert(peer, differing.clone());
        for shard in asked.iter().filter(|s| !differing.contains(s)) {
            if !self.owners.owns(&self.me, *shard) {
                // A shard handed off: this owner holds exactly what this node holds.
                self.sync.confirmed.entry(*shard).or_default().insert(peer);
            }
        }
        let _ = now;
        let digests = self.store.digests().unwrap_or_default();
        for (shard, theirs) in differ {
            let mine = digests.get(usize::from(shard.0)).copied().unwrap_or_default();
            let push = !self.owners.owns(&self.me, shard);
            // Co-owners pull: the side with fewer entries first (it may lack more); the
            // other side pulls in its own round once it is the smaller or equal one.
            if (push || theirs.count >= mine.count) && self.sync.queued_shards.insert((shard, peer)) {
                self.sync.queued.push_back((peer, shard, push));
            }
        }
        self.fill_sessions(out);
    }

    /// Starts queued reconciliations up to [`MAX_SESSIONS`] ([`MAX_SESSIONS_PER_PEER`] with
    /// one peer), one pull per shard.
    fn fill_sessions(&mut self, out: &mut Vec<Out>) {
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        for (_, peer) in self.sync.sessions.keys() {
            *per_peer.entry(*peer).or_default() += 1;
        }
        let mut waiting = VecDeque::new();
        while self.sync.sessions.len() < MAX_SESSIONS {
            let Some((peer, shard, push)) = self.sync.queued.pop_front() else { break };
            if per_peer.get(&peer).is_some_and(|n| *n >= MAX_SESSIONS_PER_PEER) {
                waiting.push_back((peer, shard, push));
                continue;
            }
            self.sync.queued_shards.remove(&(shard, peer));
            let busy = if push {
                self.sync.sessions.contains_key(&(shard, peer))
            } else {
                self.sync.fetching.contains_key(&shard) || self.sync.sessions.iter().any(|((s, _), session)| *s == shard && session.terms.pull)
            };
            if busy || !self.owners.members().contains(&peer) {
                continue; // compared again in a later round
            }
            // Unpredictable to the peer, so its entries cannot be made to collide with ours.
            let salt = getrandom::u64().unwrap_or_else(|_| {
                self.sync.fallback_salt = self.sync.fallback_salt.wrapping_add(0x9e37_79b9_7f4a_7c15);
                self.sync.fallback_salt
            });
            let terms = Terms { salt, pull: !push };
            let first = match reconcile::initiate(&StoreShard { store: &self.store, shard }, terms.salt) {
                Ok(first) => first,
                Err(e) => {
                    tracing::warn!(%shard, "cannot start reconciliation: {e}");
                    continue;
                }
            };
            self.sync.sessions.insert((shard, peer), Session { terms, queue: first.into(), learned: Learned::default() });
            *per_peer.entry(peer).or_default() += 1;
            self.next_round(shard, peer, out);
        }
        // Those of peers at their limit keep their place, ahead of the rest.
        while let Some(w) = waiting.pop_back() {
            self.sync.queued.push_front(w);
        }
    }

    fn next_round(&mut self, shard: ShardId, peer: PeerId, out: &mut Vec<Out>) {
        let Some(session) = self.sync.sessions.get_mut(&(shard, peer)) else { return };
        if !session.queue.is_empty() {
            let n = session.queue.len().min(MAX_INITIATOR_RANGES);
            let ranges: Vec<RangeItem> = session.queue.drain(..n).collect();
            let Terms { salt, pull } = session.terms;
            self.send_sync(peer, HistoryRequest::Reconcile { shard, salt, pull, ranges }, SyncPending::Reconcile { peer, shard }, out);
            return;
        }
        let Some(session) = self.sync.sessions.remove(&(shard, peer)) else { return };
        let Learned { need, give } = session.learned;
        let push = !session.terms.pull;
        if push && give.is_empty() {
            // The owner lacks nothing this node holds.
            self.sync.confirmed.entry(shard).or_default().insert(peer);
        } else if push {
            for keys in give.chunks(1024) {
                match self.store.entries_by_key(keys) {
                    Ok(entries) if !entries.is_empty() => {
                        let (entries, _) = super::book::fit(entries);
                        self.sync.stats.entries_pushed += entries.len() as u64;
                        self.send_sync(peer, HistoryRequest::Store(entries), SyncPending::Push { peer }, out);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%shard, "cannot read entries to push: {e}"),
                }
            }
        } else if !need.is_empty() {
            *self.sync.fetching.entry(shard).or_default() += 1;
            // Within the protocol's bounds; what does not fit is found again next round.
            let mut wants = Vec::new();
            let mut ids = 0;
            for (range, prefixes) in need {
                if wants.len() >= MAX_RANGES || ids + prefixes.len() > MAX_FETCH_KEYS {
                    break;
                }
                ids += prefixes.len();
                wants.push((range, prefixes));
            }
            let salt = session.terms.salt;
            self.send_sync(peer, HistoryRequest::Fetch { shard, salt, wants }, SyncPending::Fetch { peer, shard }, out);
        }
        self.fill_sessions(out);
    }

    fn on_reconcile(&mut self, peer: PeerId, shard: ShardId, ranges: &[RangeItem], out: &mut Vec<Out>) {
        let store = self.store.clone();
        let Some(session) = self.sync.sessions.get_mut(&(shard, peer)) else { return };
        match reconcile::on_answer(&StoreShard { store: &store, shard }, session.terms, ranges, &mut session.learned) {
            Ok(next) => session.queue.extend(next),
            Err(e) => {
                tracing::warn!(%shard, "reconciliation failed: {e}");
                self.sync.sessions.remove(&(shard, peer));
                self.fill_sessions(out);
                return;
            }
        }
        self.next_round(shard, peer, out);
    }

    /// One repair operation of `shard` (a fetch answered, entries written) is over; with
    /// none left the shard may be compared again.
    pub(super) fn fetched(&mut self, shard: ShardId) {
        if let Some(n) = self.sync.fetching.get_mut(&shard) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sync.fetching.remove(&shard);
            }
        }
    }
}
