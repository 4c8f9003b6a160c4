//! The paged KV cache's blocks: identifiable (chained BLAKE3 hashes), movable (a checked
//! byte form), and pooled in tiers with byte budgets and LRU or ARC eviction.
//!
//! - [`hash`]: [`ModelId`], [`BlockHash`], chained hashing of full 16-token blocks.
//! - [`block`]: [`KvBlock`], [`KvLayout`], export/import.
//! - [`policy`]: LRU and ARC.
//! - [`pool`]: [`BlockPool`]: device / host / disk tiers, demotion, longest cached prefix.

pub mod block;
pub mod hash;
pub mod policy;
pub mod pool;

pub use block::{BlockError, DType, Integrity, KvBlock, KvLayout};
pub use hash::{BLOCK_TOKENS, BlockHash, ModelId, block_hashes};
pub use policy::Eviction;
pub use pool::{BlockPool, PoolConfig, PoolError, PoolStats, SharedPool, Tier};
