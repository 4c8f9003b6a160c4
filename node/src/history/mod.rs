//! The history DHT: every interaction (tasks, results, proposals, ballots, tallies,
//! inference) recorded once for the whole swarm, in [`SHARDS`] shards replicated on R
//! owners each, so it stays readable when machines leave, crash or are cut off.
//!
//! - [`entry`]: signing and checking entries (ed25519 by the author's node key).
//! - [`owners`]: which R live members own each shard (rendezvous hashing, the shared
//!   [`crate::placement`] order).
//! - [`book`]: the state machine of appends (acknowledged once W owners have an entry
//!   durable; short of W, kept here as a durable hint until they do), reads (ask the
//!   owners, merge, deduplicate by id, verify; in `reads.rs`) and the answers to peers.
//! - [`sync`]: anti-entropy (per-shard fingerprints compared every `sync_interval`) and
//!   hand-off; [`reconcile`]: range-based set reconciliation of one shard.
//! - [`writer`]: the thread that makes entries durable (WAL synced, group commit).
//! - [`actor`]: the task that owns the book; the router sends it requests and carries
//!   its requests out on the `/pyagent/history/1` protocol.
//!
//! ```text
//!  router ──Request/Response/Members──▶ actor (HistoryBook) ──Write──▶ writer ─▶ RocksDB
//!    ▲                                    │   ▲                          │
//!    └───────────Send/Respond─────────────┘   └──────────Written─────────┘
//!  API / votes / tasks ──Append/Read/Shards/Record──▶ actor
//! ```
//!
//! [`SHARDS`]: pyagent_protocol::history::SHARDS

pub mod actor;
pub mod book;
pub mod entry;
pub mod owners;
mod reads;
pub mod reconcile;
pub mod sync;
pub mod writer;

pub use actor::{History, HistoryError, HistoryInput, ShardsReport, ToRouter};
pub use book::{AppendReport, HistoryBook, HistorySettings, ReadReport};
