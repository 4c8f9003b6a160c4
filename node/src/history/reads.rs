//! Reads of the history book: a subject's entries or a page of a shard, from this node's
//! store and hints merged with what each owner answers (within [`READ_TIMEOUT`]).

use std::collections::BTreeMap;
use std::time::Instant;

use libp2p::PeerId;
use pyagent_protocol::history::{Entry, EntryId, EntryKey, HistoryRequest, ShardId, SubjectId, shard_of};

use super::book::{HistoryBook, MAX_READ_ENTRIES, Out, Pending, READ_TIMEOUT, ReadOp, ReadReport, ReadWaiter, display_order};

impl HistoryBook {
    /// Reads every entry of `subject`: this node's, its hints, and each owner's.
    pub fn read(&mut self, subject: SubjectId, waiter: ReadWaiter, now: Instant, out: &mut Vec<Out>) {
        let mut local = self.store.subject_entries(&subject, MAX_READ_ENTRIES).unwrap_or_else(|e| {
            tracing::warn!("history read: {e}");
            Vec::new()
        });
        local.extend(self.store.subject_hints(&subject).unwrap_or_default());
        let owners: Vec<PeerId> = self.owners.of(shard_of(&subject)).iter().filter(|p| **p != self.me).copied().collect();
        self.start_read(local, owners, HistoryRequest::Read(subject), None, waiter, now, out);
    }

    /// A page of `shard` after `after` (in key order), merged from this node and the owners.
    pub fn read_shard(&mut self, shard: ShardId, after: Option<EntryKey>, limit: usize, waiter: ReadWaiter, now: Instant, out: &mut Vec<Out>) {
        let limit = limit.clamp(1, MAX_READ_ENTRIES);
        let (local, more) = self.store.shard_page(shard, after, limit).unwrap_or_else(|e| {
            tracing::warn!("history read: {e}");
            (Vec::new(), false)
        });
        let owners: Vec<PeerId> = self.owners.of(shard).iter().filter(|p| **p != self.me).copied().collect();
        let request = HistoryRequest::ReadShard { shard, after, limit: u32::try_from(limit).unwrap_or(u32::MAX) };
        let op = self.start_read(local, owners, request, Some(limit), waiter, now, out);
        if let Some(r) = self.reads.get_mut(&op) {
            r.more |= more;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_read(&mut self, local: Vec<Entry>, owners: Vec<PeerId>, request: HistoryRequest, page: Option<usize>, waiter: ReadWaiter, now: Instant, out: &mut Vec<Out>) -> u64 {
        let op = self.token();
        let mut found = BTreeMap::new();
        for e in local {
            if let Ok(id) = e.body.id() {
                found.insert(id, e);
            }
        }
        for peer in &owners {
            let token = self.token();
            self.pending.insert(token, Pending::Read { op });
            out.push(Out::Send { token, peer: *peer, request: request.clone() });
        }
        let n = owners.len();
        self.reads.insert(
            op,
            ReadOp { found, outstanding: n, asked: n, answered: 0, rejected: 0, more: false, page, waiter: Some(waiter), deadline: now + READ_TIMEOUT },
        );
        self.check_read(op, now);
        op
    }

    pub(super) fn check_read(&mut self, op: u64, now: Instant) {
        let Some(r) = self.reads.get(&op) else { return };
        if r.outstanding > 0 && now < r.deadline {
            return;
        }
        let Some(mut r) = self.reads.remove(&op) else { return };
        let mut entries: Vec<(EntryId, Entry)> = std::mem::take(&mut r.found).into_iter().collect();
        if let Some(limit) = r.page {
            // A shard page is in key order, cut at the limit.
            entries.sort_by_key(|(id, e)| EntryKey { subject: e.body.subject, id: *id });
            if entries.len() > limit {
                entries.truncate(limit);
                r.more = true;
            }
        } else {
            display_order(&mut entries);
        }
        if let Some(waiter) = r.waiter.take() {
            let _ = waiter.send(ReadReport { entries, owners_asked: r.asked, owners_answered: r.answered, rejected: r.rejected, more: r.more });
        }
    }
}
