//! History entries in RocksDB, with per-shard fingerprints kept up to date in the same
//! write. Column families:
//! - `hist_entries`: shard (u16 BE) ‖ subject ‖ entry id → the encoded [`Entry`].
//! - `hist_digests`: shard (u16 BE) → count (u64 BE) ‖ sum (u128 BE): the shard's
//!   [`Fingerprint`], written in the same batch as the entries it covers, and mirrored in
//!   memory (1,024 × 24 bytes).
//! - `hist_hints`: entry id → the encoded entry: entries acknowledged by fewer than W
//!   owners, kept until enough owners hold them.
//!
//! Every scan is streamed with a bound (pages, ranges), so memory does not grow with the
//! size of the history.

use pyagent_protocol::history::{Entry, EntryKey, Fingerprint, KeyRange, MAX_ENTRY_BYTES, SHARDS, ShardId, SubjectId, Tag, shard_of};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{Store, StoreError};

pub(super) const CF_ENTRIES: &str = "hist_entries";
pub(super) const CF_DIGESTS: &str = "hist_digests";
pub(super) const CF_HINTS: &str = "hist_hints";

/// The RocksDB key of an entry: shard ‖ subject ‖ id (66 bytes).
pub fn db_key(key: &EntryKey) -> [u8; 66] {
    let mut out = [0u8; 66];
    out[..2].copy_from_slice(&shard_of(&key.subject).0.to_be_bytes());
    out[2..].copy_from_slice(&key.to_bytes());
    out
}

fn shard_prefix(shard: ShardId) -> [u8; 2] {
    shard.0.to_be_bytes()
}

fn encode_fp(fp: &Fingerprint) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&fp.count.to_be_bytes());
    out[8..].copy_from_slice(&fp.sum.to_be_bytes());
    out
}

fn decode_fp(bytes: &[u8]) -> Option<Fingerprint> {
    let bytes: &[u8; 24] = bytes.try_into().ok()?;
    let mut count = [0u8; 8];
    let mut sum = [0u8; 16];
    count.copy_from_slice(&bytes[..8]);
    sum.copy_from_slice(&bytes[8..]);
    Some(Fingerprint { count: u64::from_be_bytes(count), sum: u128::from_be_bytes(sum) })
}

/// Most keys one repair fetch scans (its ranges come from a peer).
pub const MAX_FETCH_SCAN: usize = 1 << 18;

/// An entry ready to be written: its key and encoding (validated by the caller).
#[derive(Debug, Clone)]
pub struct EncodedEntry {
    pub key: EntryKey,
    pub bytes: Vec<u8>,
}

impl EncodedEntry {
    pub fn new(entry: &Entry, key: EntryKey) -> Result<Self, StoreError> {
        Ok(Self { key, bytes: pyagent_protocol::encode(entry)? })
    }
}

impl Store {
    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or(StoreError::MissingColumnFamily(name))
    }

    /// Loads the shard fingerprints, rebuilding them by a scan when the stored ones are
    /// missing or unreadable (e.g. the first open after an upgrade).
    pub(super) fn load_digests(&self) -> Result<Vec<Fingerprint>, StoreError> {
        let cf = self.cf(CF_DIGESTS)?;
        let mut digests = vec![Fingerprint::default(); SHARDS as usize];
        let mut complete = true;
        for shard in ShardId::all() {
            if let Some(bytes) = self.db.get_cf(cf, shard_prefix(shard)).map_err(|source| StoreError::Db { op: "read digest", source })? {
                match decode_fp(&bytes) {
                    Some(fp) => digests[usize::from(shard.0)] = fp,
                    None => complete = false,
                }
            }
        }
        if complete {
            return Ok(digests);
        }
        tracing::warn!("history digests unreadable: rebuilding them from the entries");
        let mut rebuilt = vec![Fingerprint::default(); SHARDS as usize];
        for item in self.db.iterator_cf(self.cf(CF_ENTRIES)?, IteratorMode::Start) {
            let (key, _) = item.map_err(|source| StoreError::Db { op: "scan history", source })?;
            if let Some(k) = key.get(2..).and_then(EntryKey::from_bytes) {
                rebuilt[usize::from(shard_of(&k.subject).0)].add(&k.id);
            }
        }
        let mut batch = WriteBatch::default();
        for shard in ShardId::all() {
            batch.put_cf(cf, shard_prefix(shard), encode_fp(&rebuilt[usize::from(shard.0)]));
        }
        self.db.write(batch).map_err(|source| StoreError::Db { op: "write digests", source })?;
        Ok(rebuilt)
    }

    /// Writes the entries this node does not hold yet, with their shards' fingerprints,
    /// in one batch; `sync`: the WAL is synced before this returns (an acknowledged write).
    /// Returns how many were new. One writer at a time (the history writer).
    pub fn insert_entries(&self, entries: &[EncodedEntry], sync: bool) -> Result<usize, StoreError> {
        let cf = self.cf(CF_ENTRIES)?;
        let digests_cf = self.cf(CF_DIGESTS)?;
        let mut digests = self.digests.lock().map_err(|_| StoreError::Poisoned)?;
        let keys: Vec<[u8; 66]> = entries.iter().map(|e| db_key(&e.key)).collect();
        let present = self.db.multi_get_cf(keys.iter().map(|k| (cf, &k[..])));
        let mut batch = WriteBatch::default();
        let mut touched = std::collections::BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut new_bytes = 0u64;
        for ((entry, key), present) in entries.iter().zip(&keys).zip(present) {
            let present = present.map_err(|source| StoreError::Db { op: "read history", source })?;
            if present.is_some() || !seen.insert(*key) {
                continue;
            }
            batch.put_cf(cf, key, &entry.bytes);
            new_bytes += entry.bytes.len() as u64;
            let shard = shard_of(&entry.key.subject);
            let fp = touched.entry(shard).or_insert(digests[usize::from(shard.0)]);
            fp.add(&entry.key.id);
        }
        let new = seen.len();
        for (shard, fp) in &touched {
            batch.put_cf(digests_cf, shard_prefix(*shard), encode_fp(fp));
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(|source| StoreError::Db { op: "write history", source })?;
        for (shard, fp) in touched {
            digests[usize::from(shard.0)] = fp;
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.history_written[0].fetch_add(new as u64, Relaxed);
        self.history_written[1].fetch_add(new_bytes, Relaxed);
        Ok(new)
    }

    /// History entries written new since this node started, and their encoded bytes.
    pub fn history_written(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.history_written[0].load(Relaxed), self.history_written[1].load(Relaxed))
    }

    /// The fingerprint of every shard, as held now.
    pub fn digests(&self) -> Result<Vec<Fingerprint>, StoreError> {
        Ok(self.digests.lock().map_err(|_| StoreError::Poisoned)?.clone())
    }

    pub fn digest(&self, shard: ShardId) -> Result<Fingerprint, StoreError> {
        Ok(self.digests.lock().map_err(|_| StoreError::Poisoned)?.get(usize::from(shard.0)).copied().unwrap_or_default())
    }

    /// Every entry of `subject` this node holds (at most `limit`), undecodable ones
    /// skipped with a warning.
    pub fn subject_entries(&self, subject: &SubjectId, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut prefix = Vec::with_capacity(34);
        prefix.extend_from_slice(&shard_prefix(shard_of(subject)));
        prefix.extend_from_slice(&subject.0);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_ENTRIES)?, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = item.map_err(|source| StoreError::Db { op: "scan history", source })?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            match pyagent_protocol::decode::<Entry>(&value, MAX_ENTRY_BYTES) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(%subject, "skipping a corrupt history entry: {e}"),
            }
        }
        Ok(out)
    }

    /// Calls `f` with each key of `shard` in `range`, in order, until it returns false.
    pub fn scan_keys(&self, shard: ShardId, range: &KeyRange, mut f: impl FnMut(EntryKey) -> bool) -> Result<(), StoreError> {
        let mut start: Vec<u8> = shard_prefix(shard).to_vec();
        if let Some(l) = &range.lower {
            start.extend_from_slice(l);
        }
        let prefix = shard_prefix(shard);
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_ENTRIES)?);
        iter.seek(&start);
        while iter.valid() {
            let Some(raw) = iter.key() else { break };
            if !raw.starts_with(&prefix) {
                break;
            }
            if let Some(key) = EntryKey::from_bytes(&raw[2..])
                && (range.upper.as_ref().is_some_and(|u| &raw[2..] >= u.as_slice()) || !f(key))
            {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(|source| StoreError::Db { op: "scan history", source })
    }

    /// The encoded entries under `keys` this node holds (others left out).
    pub fn entries_by_key(&self, keys: &[EntryKey]) -> Result<Vec<Entry>, StoreError> {
        let cf = self.cf(CF_ENTRIES)?;
        let db_keys: Vec<[u8; 66]> = keys.iter().map(db_key).collect();
        let mut out = Vec::new();
        for got in self.db.multi_get_cf(db_keys.iter().map(|k| (cf, &k[..]))) {
            if let Some(bytes) = got.map_err(|source| StoreError::Db { op: "read history", source })? {
                match pyagent_protocol::decode::<Entry>(&bytes, MAX_ENTRY_BYTES) {
                    Ok(e) => out.push(e),
                    Err(e) => tracing::warn!("skipping a corrupt history entry: {e}"),
                }
            }
        }
        Ok(out)
    }

    /// The entries of `shard` named by salted tag within their ranges (a repair fetch).
    /// A range is scanned until as many entries as tags were found; all ranges together
    /// scan at most [`MAX_FETCH_SCAN`] keys, whatever a peer asks.
    pub fn entries_in_ranges(&self, shard: ShardId, salt: u64, wants: &[(KeyRange, Vec<Tag>)]) -> Result<Vec<Entry>, StoreError> {
        let mut keys = Vec::new();
        let mut budget = MAX_FETCH_SCAN;
        for (range, tags) in wants {
            let wanted: std::collections::HashSet<&Tag> = tags.iter().collect();
            let mut left = tags.len();
            self.scan_keys(shard, range, |k| {
                budget = budget.saturating_sub(1);
                if wanted.contains(&k.tag(salt)) {
                    keys.push(k);
                    left = left.saturating_sub(1);
                }
                left > 0 && budget > 0
            })?;
            if budget == 0 {
                break;
            }
        }
        self.entries_by_key(&keys)
    }

    /// A page of `shard`'s entries after `after`, in key order; `true` when more follow.
    pub fn shard_page(&self, shard: ShardId, after: Option<EntryKey>, limit: usize) -> Result<(Vec<Entry>, bool), StoreError> {
        let mut keys = Vec::new();
        let mut more = false;
        self.scan_keys(shard, &KeyRange { lower: after.map(|a| a.to_bytes().to_vec()), upper: None }, |k| {
            if Some(k) == after {
                return true;
            }
            if keys.len() >= limit {
                more = true;
                return false;
            }
            keys.push(k);
            true
        })?;
        Ok((self.entries_by_key(&keys)?, more))
    }

    /// Deletes every entry of `shard` and resets its fingerprint (after a hand-off).
    pub fn drop_shard(&self, shard: ShardId) -> Result<(), StoreError> {
        let cf = self.cf(CF_ENTRIES)?;
        let mut digests = self.digests.lock().map_err(|_| StoreError::Poisoned)?;
        let mut batch = WriteBatch::default();
        let from = shard_prefix(shard);
        // Shards are below 1024, so shard + 1 fits the same two bytes.
        batch.delete_range_cf(cf, from, (shard.0 + 1).to_be_bytes());
        batch.put_cf(self.cf(CF_DIGESTS)?, shard_prefix(shard), encode_fp(&Fingerprint::default()));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(|source| StoreError::Db { op: "drop shard", source })?;
        digests[usize::from(shard.0)] = Fingerprint::default();
        Ok(())
    }

    /// Keeps entries as durable hints (synced).
    pub fn add_hints(&self, entries: &[EncodedEntry]) -> Result<(), StoreError> {
        let cf = self.cf(CF_HINTS)?;
        let mut batch = WriteBatch::default();
        for e in entries {
            batch.put_cf(cf, e.key.to_bytes(), &e.bytes);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(|source| StoreError::Db { op: "write hints", source })
    }

    /// Up to `limit` hints, oldest key first.
    pub fn hints(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_HINTS)?, IteratorMode::Start) {
            let (_, value) = item.map_err(|source| StoreError::Db { op: "scan hints", source })?;
            if out.len() >= limit {
                break;
            }
            match pyagent_protocol::decode::<Entry>(&value, MAX_ENTRY_BYTES) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!("skipping a corrupt hint: {e}"),
            }
        }
        Ok(out)
    }

    /// Hints of `subject` (a read includes them: they may be on no owner yet).
    pub fn subject_hints(&self, subject: &SubjectId) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_HINTS)?, IteratorMode::From(&subject.0, Direction::Forward)) {
            let (key, value) = item.map_err(|source| StoreError::Db { op: "scan hints", source })?;
            if !key.starts_with(&subject.0) {
                break;
            }
            if let Ok(e) = pyagent_protocol::decode::<Entry>(&value, MAX_ENTRY_BYTES) {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn remove_hint(&self, key: &EntryKey) -> Result<(), StoreError> {
        self.db.delete_cf(self.cf(CF_HINTS)?, key.to_bytes()).map_err(|source| StoreError::Db { op: "delete hint", source })
    }

    /// How many hints wait for delivery (an estimate from RocksDB, exact for small sets).
    pub fn hint_count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_HINTS)?, IteratorMode::Start) {
            item.map_err(|source| StoreError::Db { op: "scan hints", source })?;
            n += 1;
            if n >= 1_000_000 {
                break;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::history::{EntryBody, EntryId, HistoryEvent};
    use pyagent_protocol::task::TaskId;

    fn entry(subject: u8, n: u64) -> (Entry, EncodedEntry) {
        let entry = Entry {
            body: EntryBody { author: "a".into(), author_unix_ms: n, subject: TaskId([subject; 32]), event: HistoryEvent::Done },
            signature: vec![0; 64],
        };
        let key = entry.key().unwrap();
        let encoded = EncodedEntry::new(&entry, key).unwrap();
        (entry, encoded)
    }

    #[test]
    fn inserts_are_idempotent_and_digests_follow_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (e1, x1) = entry(1, 1);
        let (_, x2) = entry(1, 2);
        let (_, x3) = entry(2, 3);
        let shard = e1.shard();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.insert_entries(&[x1.clone(), x2.clone(), x1.clone()], true).unwrap(), 2);
            assert_eq!(store.insert_entries(&[x1.clone(), x3.clone()], true).unwrap(), 1);
            let mut expected = Fingerprint::default();
            expected.add(&x1.key.id);
            expected.add(&x2.key.id);
            assert_eq!(store.digest(shard).unwrap(), expected);
            assert_eq!(store.subject_entries(&TaskId([1; 32]), 100).unwrap().len(), 2);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.digest(shard).unwrap().count, 2);
        let mut keys = Vec::new();
        store.scan_keys(shard, &KeyRange::FULL, |k| { keys.push(k); true }).unwrap();
        let mut want = vec![x1.key, x2.key];
        want.sort();
        assert_eq!(keys, want);
        let (page, more) = store.shard_page(shard, None, 1).unwrap();
        assert!(more && page.len() == 1);
        store.drop_shard(shard).unwrap();
        assert_eq!(store.digest(shard).unwrap(), Fingerprint::default());
        assert!(store.subject_entries(&TaskId([1; 32]), 100).unwrap().is_empty());
        assert_eq!(store.subject_entries(&TaskId([2; 32]), 100).unwrap().len(), 1, "other shards stay");
        let _ = EntryId([0; 32]);
    }

    #[test]
    fn hints_are_kept_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, x) = entry(7, 1);
        store.add_hints(std::slice::from_ref(&x)).unwrap();
        assert_eq!(store.hints(10).unwrap().len(), 1);
        assert_eq!(store.subject_hints(&TaskId([7; 32])).unwrap().len(), 1);
        assert_eq!(store.hint_count().unwrap(), 1);
        store.remove_hint(&x.key).unwrap();
        assert_eq!(store.hint_count().unwrap(), 0);
    }
}
