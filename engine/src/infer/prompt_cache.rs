//! A prompt's KV cache assembled before its run: the prefix the pool holds (lent, not
//! copied), then blocks from elsewhere — a peer's, as they arrive — in the prompt's order.
//! Filling the cache while the blocks arrive takes its allocation and copies off the way
//! to the first token: a fetched prefix needs no second pass over it once it is here.

use std::time::Instant;

use crate::kv::{BLOCK_TOKENS, BlockHash, KvBlock, KvLayout, SharedPool};

use super::cache;
use super::decoder::KvState;
use super::model::ModelError;

/// The cache a prompt's run starts from ([`super::Engine::prompt_cache`]); blocks the
/// pool did not hold may be added in order ([`Self::push`]), then
/// [`super::Engine::generate_cached`] runs the rest of the prompt.
pub struct PromptCache {
    pub(super) state: KvState,
    pub(super) loan: Loan,
    pub(super) tokens: Vec<u32>,
    layout: KvLayout,
    /// The hashes of the prompt's whole blocks: what may be pushed, in this order.
    hashes: Vec<BlockHash>,
    /// Blocks in the cache: the first `blocks` of `hashes`.
    pub(super) blocks: usize,
    /// When its making began: a run's time to its first token counts from here.
    pub(super) started: Instant,
}

impl std::fmt::Debug for PromptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptCache").field("blocks", &self.blocks).field("of", &self.hashes.len()).finish_non_exhaustive()
    }
}

impl PromptCache {
    pub(super) fn new(state: KvState, loan: Loan, tokens: &[u32], layout: KvLayout, hashes: Vec<BlockHash>, started: Instant) -> Self {
        let blocks = state.len() / BLOCK_TOKENS;
        Self { state, loan, tokens: tokens.to_vec(), layout, hashes, blocks, started }
    }

    /// Blocks the cache holds: the prompt's first ones.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The hashes of the prompt's whole blocks.
    pub fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    /// Adds the prompt's next block (its hash names it: the model, the tokens, the prefix
    /// before it), copied into the cache. A block that is not the next one, or of another
    /// layout, is refused and the cache is left as it was.
    pub fn push(&mut self, block: &KvBlock) -> Result<(), ModelError> {
        let b = self.blocks;
        let Some(&want) = self.hashes.get(b) else {
            return Err(ModelError::Run(format!("the prompt has {b} whole blocks; block {} is not one of them", block.hash)));
        };
        if block.hash != want || block.layout != self.layout {
            return Err(ModelError::Run(format!("block {} ({:?}) is not the prompt's block {b}, {want} ({:?})", block.hash, block.layout, self.layout)));
        }
        if self.state.capacity() < (b + 1) * BLOCK_TOKENS {
            // Graphs that concatenate get buffers of exactly their tokens: room for every
            // block of the prompt now (cut to what came before the run).
            let empty = KvState::empty(0, 0, 0)?;
            let state = std::mem::replace(&mut self.state, empty);
            self.state = state.resized(self.hashes.len() * BLOCK_TOKENS)?;
        }
        cache::put_block(&mut self.state, b, block)?;
        self.state.set_len((b + 1) * BLOCK_TOKENS)?;
        self.blocks += 1;
        Ok(())
    }
}

/// The blocks a pool lent to the running sequence ([`crate::kv::BlockPool::lend_prefix`]):
/// those not given back by the time this is dropped (the sequence failed) are let go.
pub(super) struct Loan {
    pub(super) pool: SharedPool,
    pub(super) hashes: Vec<BlockHash>,
}

impl Loan {
    pub(super) fn blocks(&self) -> usize {
        self.hashes.len()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if !self.hashes.is_empty() {
            self.pool.lock().end_loan(&self.hashes);
        }
    }
}
