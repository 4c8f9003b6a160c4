//! The node's RocksDB database. Column families:
//! - `peers`: PeerId (bytes) → [`KnownPeer`], so known peers are redialed after a restart.
//! - `blobs`: BLAKE3 id → bytes: the files of tasks this node submitted (served to
//!   executors) or fetched to execute. Content-addressed, so a blob is written once.
//!
//! - `blob_times`: BLAKE3 id → when the blob was last stored (unix ms, big-endian), so
//!   that blobs no live task needs are swept after [`BLOB_TTL_MS`].
//! - `hist_entries`, `hist_digests`, `hist_hints`: this node's replicas of history
//!   shards, their fingerprints, and hints ([`history`]).
//!
//! The `history` column family of earlier versions (unsigned, local-only records) is
//! dropped at open: its records cannot be signed after the fact.

pub mod data_dir;
pub mod history;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use pyagent_protocol::task::BlobId;
use serde::{Deserialize, Serialize};

const CF_PEERS: &str = "peers";
const CF_BLOBS: &str = "blobs";
/// The local-only history of earlier versions, dropped at open.
const CF_LEGACY_HISTORY: &str = "history";
const CF_BLOB_TIMES: &str = "blob_times";
/// Blobs not stored again for this long, and needed by no live task, are deleted.
pub const BLOB_TTL_MS: u64 = 3600 * 1000;
/// Most history entries returned for one subject.
pub const MAX_HISTORY_PER_SUBJECT: usize = 10_000;
/// Most addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 16;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("database {op}: {source}")]
    Db { op: &'static str, source: rocksdb::Error },
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("record encoding: {0}")]
    Codec(#[from] pyagent_protocol::CodecError),
    #[error("a thread panicked while holding the history digests")]
    Poisoned,
}

/// A peer this node has been connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    pub addrs: Vec<String>,
    pub last_seen_unix_ms: u64,
}

/// The node's database.
#[derive(Debug)]
pub struct Store {
    db: DB,
    /// The fingerprint of each history shard, as on disk (see [`history`]).
    digests: std::sync::Mutex<Vec<pyagent_protocol::history::Fingerprint>>,
    /// History entries written new since start, and their encoded bytes (benchmarks:
    /// repair traffic against the size of what was missing).
    history_written: [std::sync::atomic::AtomicU64; 2],
}

/// Wall-clock time in unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Blobs are transient task inputs: no compression (it cost more CPU than it saved).
fn blob_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    opts
}

/// History entries are looked up before every write (an entry is stored once, and counted
/// once in its shard's fingerprint), and nearly every lookup is of a new entry: bloom
/// filters on the tables and on the memtable answer those without a search.
/// The memtable's bloom filter is allocated (and zeroed, so resident) whole with every
/// memtable: at 2% of the 64 MiB write buffer it is 1.3 MiB, about 10 bits per entry of a
/// full memtable (an idle node held the 6.4 MiB of a 10% one).
fn history_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_prefix_bloom_ratio(0.02);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

impl Store {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // A swarm node's database is small; keep RocksDB's memory use small too.
        opts.set_write_buffer_size(4 << 20);
        opts.set_max_background_jobs(2);
        let legacy = DB::list_cf(&opts, path).unwrap_or_default().iter().any(|n| n == CF_LEGACY_HISTORY);
        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_PEERS, Options::default()),
            ColumnFamilyDescriptor::new(CF_BLOBS, blob_options()),
            ColumnFamilyDescriptor::new(CF_BLOB_TIMES, Options::default()),
            ColumnFamilyDescriptor::new(history::CF_ENTRIES, history_options()),
            ColumnFamilyDescriptor::new(history::CF_DIGESTS, Options::default()),
            ColumnFamilyDescriptor::new(history::CF_HINTS, Options::default()),
        ];
        if legacy {
            cfs.push(ColumnFamilyDescriptor::new(CF_LEGACY_HISTORY, Options::default()));
        }
        let mut db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        if legacy {
            tracing::info!("dropping the local-only history of an earlier version");
            db.drop_cf(CF_LEGACY_HISTORY).map_err(|source| StoreError::Db { op: "drop legacy history", source })?;
        }
        let store = Self { db, digests: std::sync::Mutex::new(Vec::new()), history_written: Default::default() };
        let digests = store.load_digests()?;
        *store.digests.lock().map_err(|_| StoreError::Poisoned)? = digests;
        Ok(store)
    }

    fn blobs_cf(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(CF_BLOBS).ok_or(StoreError::MissingColumnFamily(CF_BLOBS))
    }

    /// Stores a blob under its id (the caller has computed or verified the id). Without
    /// the write-ahead log: a blob lost in a crash is sent or fetched again, and skipping
    /// the log halves the disk writes of a large submission.
    pub fn put_blob(&self, id: &BlobId, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_blob_at(id, bytes, now_unix_ms())
    }

    fn put_blob_at(&self, id: &BlobId, bytes: &[u8], at_unix_ms: u64) -> Result<(), StoreError> {
        let (blobs, times) = (self.blobs_cf()?, self.blob_times_cf()?);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(blobs, id.0, bytes);
        batch.put_cf(times, id.0, at_unix_ms.to_be_bytes());
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts).map_err(|source| StoreError::Db { op: "write blob", source })
    }

    fn blob_times_cf(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(CF_BLOB_TIMES).ok_or(StoreError::MissingColumnFamily(CF_BLOB_TIMES))
    }

    /// Deletes blobs stored before `cutoff_unix_ms` that `keep` does not name; returns
    /// how many went.
    pub fn sweep_blobs(&self, cutoff_unix_ms: u64, keep: &std::collections::HashSet<BlobId>) -> Result<usize, StoreError> {
        let (blobs, times) = (self.blobs_cf()?, self.blob_times_cf()?);
        let mut batch = rocksdb::WriteBatch::default();
        let mut swept = 0;
        for item in self.db.iterator_cf(times, rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(|source| StoreError::Db { op: "scan blob times", source })?;
            let (Ok(id), Ok(at)) = (<[u8; 32]>::try_from(&key[..]), <[u8; 8]>::try_from(&value[..])) else {
                batch.delete_cf(times, &key);
                continue;
            };
            let id = BlobId(id);
            if u64::from_be_bytes(at) < cutoff_unix_ms && !keep.contains(&id) {
                batch.delete_cf(blobs, id.0);
                batch.delete_cf(times, id.0);
                swept += 1;
            }
        }
        self.db.write(batch).map_err(|source| StoreError::Db { op: "sweep blobs", source })?;
        Ok(swept)
    }

    /// A blob's bytes, if this node has it.
    pub fn get_blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let cf = self.blobs_cf()?;
        self.db.get_cf(cf, id.0).map_err(|source| StoreError::Db { op: "read blob", source })
    }

    /// Whether this node has a blob.
    pub fn has_blob(&self, id: &BlobId) -> Result<bool, StoreError> {
        let cf = self.blobs_cf()?;
        Ok(self.db.get_pinned_cf(cf, id.0).map_err(|source| StoreError::Db { op: "read blob", source })?.is_some())
    }

    fn peers_cf(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(CF_PEERS).ok_or(StoreError::MissingColumnFamily(CF_PEERS))
    }

    /// Records that `peer` was seen at `addrs` (merged with what was known).
    pub fn remember_peer(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Result<(), StoreError> {
        let cf = self.peers_cf()?;
        let key = peer.to_bytes();
        // A missing or undecodable record starts afresh.
        let mut known: KnownPeer = self
            .db
            .get_cf(cf, &key)
            .map_err(|source| StoreError::Db { op: "read peer", source })?
            .and_then(|bytes| pyagent_protocol::decode(&bytes, 64 * 1024).ok())
            .unwrap_or_default();
        // Newest first, no duplicates, bounded.
        let mut merged: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        merged.extend(known.addrs);
        let mut seen = std::collections::HashSet::new();
        merged.retain(|a| seen.insert(a.clone()));
        merged.truncate(MAX_ADDRS_PER_PEER);
        known.addrs = merged;
        known.last_seen_unix_ms = now_unix_ms();
        let bytes = pyagent_protocol::encode(&known)?;
        self.db.put_cf(cf, key, bytes).map_err(|source| StoreError::Db { op: "write peer", source })
    }

    /// Every known peer with its addresses; undecodable records are skipped with a warning.
    pub fn known_peers(&self) -> Result<Vec<(PeerId, KnownPeer)>, StoreError> {
        let cf = self.peers_cf()?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(|source| StoreError::Db { op: "scan peers", source })?;
            let peer = match PeerId::from_bytes(&key) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("skipping a corrupt peer record key: {e}");
                    continue;
                }
            };
            match pyagent_protocol::decode::<KnownPeer>(&value, 64 * 1024) {
                Ok(known) => out.push((peer, known)),
                Err(e) => tracing::warn!(%peer, "skipping a corrupt peer record: {e}"),
            }
        }
        Ok(out)
    }

    /// Flushes memtables and the WAL to disk (at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|source| StoreError::Db { op: "flush WAL", source })?;
        self.db.flush_cf(self.peers_cf()?).map_err(|source| StoreError::Db { op: "flush", source })?;
        self.db.flush_cf(self.blobs_cf()?).map_err(|source| StoreError::Db { op: "flush", source })?;
        for cf in [history::CF_ENTRIES, history::CF_DIGESTS, history::CF_HINTS] {
            let cf = self.db.cf_handle(cf).ok_or(StoreError::MissingColumnFamily(cf))?;
            self.db.flush_cf(cf).map_err(|source| StoreError::Db { op: "flush", source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_peers_survive_reopen_and_merge_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let a1: Multiaddr = "/ip4/10.77.0.11/tcp/7760".parse().unwrap();
        let a2: Multiaddr = "/ip4/10.77.0.11/udp/7760/quic-v1".parse().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.remember_peer(&peer, std::slice::from_ref(&a1)).unwrap();
            store.remember_peer(&peer, &[a2.clone(), a1.clone()]).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let peers = store.known_peers().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].0, peer);
        assert_eq!(peers[0].1.addrs, vec![a2.to_string(), a1.to_string()]);
        assert!(peers[0].1.last_seen_unix_ms > 0);
    }

    #[test]
    fn blobs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = BlobId::of(b"def f(): pass\n");
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(!store.has_blob(&id).unwrap());
            store.put_blob(&id, b"def f(): pass\n").unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.has_blob(&id).unwrap());
        assert_eq!(store.get_blob(&id).unwrap().as_deref(), Some(&b"def f(): pass\n"[..]));
        assert_eq!(store.get_blob(&BlobId::of(b"other")).unwrap(), None);
    }

    #[test]
    fn old_blobs_no_task_needs_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (old, kept, fresh) = (BlobId::of(b"old"), BlobId::of(b"kept"), BlobId::of(b"fresh"));
        store.put_blob_at(&old, b"old", 1_000).unwrap();
        store.put_blob_at(&kept, b"kept", 1_000).unwrap();
        store.put_blob_at(&fresh, b"fresh", 9_000).unwrap();
        let keep = std::collections::HashSet::from([kept]);
        assert_eq!(store.sweep_blobs(5_000, &keep).unwrap(), 1);
        assert!(!store.has_blob(&old).unwrap());
        assert!(store.has_blob(&kept).unwrap() && store.has_blob(&fresh).unwrap());
        // Storing a blob again renews it.
        store.put_blob(&kept, b"kept").unwrap();
        assert_eq!(store.sweep_blobs(5_000, &Default::default()).unwrap(), 0);
    }

    #[test]
    fn second_open_of_the_same_database_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
    }
}
