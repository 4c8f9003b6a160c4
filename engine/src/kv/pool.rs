//! The block pool: tiers with byte budgets — device (used when a GPU execution provider
//! runs; budget 0 otherwise), host RAM, local disk — each with LRU or ARC eviction. A
//! block evicted from a tier is demoted to the next one rather than lost; only the last
//! tier drops blocks. A block found in a lower tier is promoted back to the top on use.
//! Disk blocks are files in their byte form ([`KvBlock::export`]), checked on the way in.
//! A sequence that starts from a cached prefix borrows its blocks ([`BlockPool::lend_prefix`])
//! instead of copying them: its cache is built from them and they come back cut from it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::block::{BlockError, KvBlock, KvLayout};
use super::hash::{BlockHash, ModelId, block_hashes};
use super::policy::{Eviction, Policy};

/// Where a block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Device,
    Host,
    Disk,
}

/// Byte budgets and eviction of a pool.
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    pub device_bytes: u64,
    pub host_bytes: u64,
    pub disk_bytes: u64,
    /// Where disk-tier blocks are written (required when `disk_bytes` > 0).
    pub disk_dir: Option<PathBuf>,
    pub eviction: Eviction,
}

/// Why the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the block is for model {block:?} / {block_layout:?}; this pool holds {pool:?} / {pool_layout:?}")]
    Mismatch { block: ModelId, pool: ModelId, block_layout: KvLayout, pool_layout: KvLayout },
    #[error("a disk budget needs a disk directory")]
    NoDiskDir,
    #[error("disk tier {path}: {source}")]
    Disk { path: PathBuf, source: std::io::Error },
    #[error("disk tier block {path}: {source}")]
    BadBlock { path: PathBuf, source: BlockError },
}

/// Counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    pub demotions: u64,
    pub promotions: u64,
    pub dropped: u64,
}

struct TierStore {
    tier: Tier,
    policy: Policy<BlockHash>,
    memory: HashMap<BlockHash, Arc<KvBlock>>,
    disk: Option<PathBuf>,
}

/// A pool shared between the engine that fills it and the node tasks that serve its
/// blocks to peers. Locks are short: lookups and inserts, never a forward pass.
#[derive(Debug, Clone)]
pub struct SharedPool(Arc<Mutex<BlockPool>>);

impl SharedPool {
    pub fn new(pool: BlockPool) -> Self {
        Self(Arc::new(Mutex::new(pool)))
    }

    /// The pool, locked. A panic while it was locked left it consistent (every change is
    /// one map and one policy update), so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, BlockPool> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Bytes of dropped blocks kept for [`BlockPool::take_dropped`] (older ones beyond it are
/// let go): what a node can hand a peer instead of losing.
pub const DROPPED_KEPT_BYTES: usize = 32 << 20;

/// A pool of blocks of one model.
pub struct BlockPool {
    model: ModelId,
    layout: KvLayout,
    tiers: Vec<TierStore>,
    stats: PoolStats,
    /// Blocks the last tier dropped, newest last, until taken.
    dropped: std::collections::VecDeque<Arc<KvBlock>>,
    /// Blocks on loan to a running sequence ([`Self::lend_prefix`]): out of every tier
    /// until they come back, so that their keys and values are in memory once.
    lent: std::collections::HashSet<BlockHash>,
}

impl std::fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockPool").field("model", &self.model).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl BlockPool {
    pub fn new(model: ModelId, layout: KvLayout, config: &PoolConfig) -> Result<Self, PoolError> {
        let block = layout.block_bytes().max(1) as u64;
        let mut tiers = Vec::new();
        for (tier, budget) in [(Tier::Device, config.device_bytes), (Tier::Host, config.host_bytes), (Tier::Disk, config.disk_bytes)] {
            let capacity = (budget / block) as usize;
            if capacity == 0 {
                continue;
            }
            let disk = if tier == Tier::Disk {
                let dir = config.disk_dir.clone().ok_or(PoolError::NoDiskDir)?;
                std::fs::create_dir_all(&dir).map_err(|source| PoolError::Disk { path: dir.clone(), source })?;
                Some(dir)
            } else {
                None
            };
            tiers.push(TierStore { tier, policy: Policy::new(config.eviction, capacity), memory: HashMap::new(), disk });
        }
        Ok(Self { model, layout, tiers, stats: PoolStats::default(), dropped: Default::default(), lent: Default::default() })
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    pub fn model(&self) -> ModelId {
        self.model
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Every block held, in any tier or on loan (for a summary of what this pool can
    /// serve: lent blocks come back when their sequence ends).
    pub fn hashes(&self) -> Vec<BlockHash> {
        let mut out: Vec<BlockHash> = self.lent.iter().copied().collect();
        for tier in &self.tiers {
            out.extend(tier.policy.keys());
        }
        out
    }

    /// The blocks dropped since the last call (at most [`DROPPED_KEPT_BYTES`] of the
    /// newest): a node short of memory offloads them to a peer.
    pub fn take_dropped(&mut self) -> Vec<Arc<KvBlock>> {
        self.dropped.drain(..).collect()
    }

    /// How many of `hashes`, from the first on, the pool holds or has lent (no promotion,
    /// no counting): what a request placed here will find once the running one is done.
    pub fn held_run(&self, hashes: &[BlockHash]) -> usize {
        hashes.iter().take_while(|h| self.lent.contains(h) || self.tier_of(h).is_some()).count()
    }

    /// The block with `hash`, if held, without promoting it or counting a hit: for
    /// serving it to a peer, which should not reorder this node's own working set.
    pub fn peek(&self, hash: &BlockHash) -> Result<Option<Arc<KvBlock>>, PoolError> {
        match self.tiers.iter().find(|t| t.holds(hash)) {
            Some(tier) => tier.read(hash, &self.model),
            None => Ok(None),
        }
    }

    /// Which tier holds a block, if any.
    pub fn tier_of(&self, hash: &BlockHash) -> Option<Tier> {
        self.tiers.iter().find(|t| t.holds(hash)).map(|t| t.tier)
    }

    /// Blocks per tier.
    pub fn counts(&self) -> Vec<(Tier, usize)> {
        self.tiers.iter().map(|t| (t.tier, t.policy.len())).collect()
    }

    /// Adds a block at the top tier (demoting what it displaces); a lent block comes back.
    pub fn insert(&mut self, block: impl Into<Arc<KvBlock>>) -> Result<(), PoolError> {
        let block = block.into();
        if block.model != self.model || block.layout != self.layout {
            return Err(PoolError::Mismatch { block: block.model, pool: self.model, block_layout: block.layout, pool_layout: self.layout });
        }
        self.lent.remove(&block.hash);
        if self.tier_of(&block.hash).is_some() {
            return Ok(());
        }
        self.place(0, block)
    }

    fn place(&mut self, level: usize, block: Arc<KvBlock>) -> Result<(), PoolError> {
        let Some(tier) = self.tiers.get_mut(level) else {
            self.stats.dropped += 1;
            self.dropped.push_back(block);
            while self.dropped.len() * self.layout.block_bytes() > DROPPED_KEPT_BYTES {
                self.dropped.pop_front();
            }
            return Ok(());
        };
        let hash = block.hash;
        tier.put(block)?;
        let evicted = tier.policy.admit(hash);
        let model = self.model;
        for victim in evicted {
            let Some(tier) = self.tiers.get_mut(level) else { break };
            if let Some(block) = tier.take(&victim, &model)? {
                self.stats.demotions += 1;
                self.place(level + 1, block)?;
            }
        }
        Ok(())
    }

    /// The block with `hash` (promoted to the top tier), if the pool has it. Blocks in
    /// memory are shared, not copied.
    pub fn get(&mut self, hash: &BlockHash) -> Result<Option<Arc<KvBlock>>, PoolError> {
        let Some(level) = self.tiers.iter().position(|t| t.holds(hash)) else {
            self.stats.misses += 1;
            return Ok(None);
        };
        self.stats.hits += 1;
        if level == 0 {
            let tier = &mut self.tiers[0];
            tier.policy.touch(*hash);
            return tier.read(hash, &self.model);
        }
        let model = self.model;
        let block = self.tiers[level].take(hash, &model)?;
        if let Some(block) = &block {
            self.stats.promotions += 1;
            self.place(0, block.clone())?;
        }
        Ok(block)
    }
}

impl BlockPool {
    /// The longest run (at most `max` blocks) of cached blocks at the start of `tokens`,
    /// taken out of the pool and lent to the sequence that runs them: it builds its cache
    /// from them (the only copy, if nobody else holds them) and gives them back cut from
    /// that cache when it ends ([`Self::insert`]), or ends the loan ([`Self::end_loan`]).
    /// While lent they are not served to peers ([`Self::peek`] finds nothing), but still
    /// summarized and counted by [`Self::held_run`].
    pub fn lend_prefix(&mut self, tokens: &[u32], max: usize) -> Result<Vec<Arc<KvBlock>>, PoolError> {
        let hashes = block_hashes(&self.model, tokens);
        let wanted = hashes.len().min(max);
        let mut lent = Vec::new();
        for hash in hashes.into_iter().take(wanted) {
            let Some(level) = self.tiers.iter().position(|t| t.holds(&hash)) else { break };
            let model = self.model;
            let Some(block) = self.tiers[level].take(&hash, &model)? else { break };
            self.stats.hits += 1;
            self.lent.insert(hash);
            lent.push(block);
        }
        if lent.len() < wanted {
            self.stats.misses += 1;
        }
        Ok(lent)
    }

    /// Ends the loan of those of `hashes` that did not come back (their sequence failed):
    /// they are no longer held.
    pub fn end_loan(&mut self, hashes: &[BlockHash]) {
        for hash in hashes {
            self.lent.remove(hash);
        }
    }
}

impl TierStore {
    fn path(&self, hash: &BlockHash) -> Option<PathBuf> {
        self.disk.as_ref().map(|d| d.join(format!("{hash}.kv")))
    }

    fn holds(&self, hash: &BlockHash) -> bool {
        match self.path(hash) {
            Some(path) => self.memory.contains_key(hash) || path.exists(),
            None => self.memory.contains_key(hash),
        }
    }

    fn put(&mut self, block: Arc<KvBlock>) -> Result<(), PoolError> {
        match self.path(&block.hash) {
            Some(path) => std::fs::write(&path, block.export()).map_err(|source| PoolError::Disk { path, source }),
            None => {
                self.memory.insert(block.hash, block);
                Ok(())
            }
        }
    }

    fn read(&self, hash: &BlockHash, model: &ModelId) -> Result<Option<Arc<KvBlock>>, PoolError> {
        match self.path(hash) {
            Some(path) => match std::fs::read(&path) {
                Ok(bytes) => KvBlock::import(&bytes, model).map(|b| Some(Arc::new(b))).map_err(|source| PoolError::BadBlock { path, source }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(PoolError::Disk { path, source }),
            },
            None => Ok(self.memory.get(hash).cloned()),
        }
    }

    /// Removes a block from this tier and returns it.
    fn take(&mut self, hash: &BlockHash, model: &ModelId) -> Result<Option<Arc<KvBlock>>, PoolError> {
        self.policy.remove(hash);
        match self.path(hash) {
            Some(path) => {
                let block = self.read(hash, model);
                let _ = std::fs::remove_file(&path);
                block
            }
            None => Ok(self.memory.remove(hash)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::block::DType;
    use crate::kv::hash::{BLOCK_TOKENS, ROOT};

    fn layout() -> KvLayout {
        KvLayout { layers: 2, kv_heads: 2, head_dim: 8, dtype: DType::F32 }
    }

    /// The blocks of a token sequence, with data derived from the tokens (a stand-in for
    /// what prefill would compute).
    fn blocks(model: ModelId, tokens: &[u32]) -> Vec<KvBlock> {
        let mut parent = ROOT;
        tokens
            .chunks_exact(BLOCK_TOKENS)
            .map(|chunk| {
                let toks: [u32; BLOCK_TOKENS] = std::array::from_fn(|i| chunk[i]);
                let data: Vec<u8> = (0..layout().block_bytes()).map(|i| (i as u32 ^ toks[i % BLOCK_TOKENS]) as u8).collect();
                let b = KvBlock::new(model, parent, toks, layout(), data).unwrap();
                parent = b.hash;
                b
            })
            .collect()
    }

    fn pool(eviction: Eviction, host_blocks: u64, disk_blocks: u64, dir: &std::path::Path) -> BlockPool {
        let size = layout().block_bytes() as u64;
        let config = PoolConfig {
            device_bytes: 0,
            host_bytes: host_blocks * size,
            disk_bytes: disk_blocks * size,
            disk_dir: Some(dir.to_owned()),
            eviction,
        };
        BlockPool::new(ModelId::of(b"m"), layout(), &config).unwrap()
    }

    #[test]
    fn a_tiny_budget_demotes_to_disk_and_blocks_come_back_unchanged() {
        for eviction in [Eviction::Lru, Eviction::Arc] {
            let dir = tempfile::tempdir().unwrap();
            let mut p = pool(eviction, 2, 3, dir.path());
            let tokens: Vec<u32> = (0..6 * BLOCK_TOKENS as u32).collect();
            let all = blocks(ModelId::of(b"m"), &tokens);
            for b in &all {
                p.insert(b.clone()).unwrap();
            }
            assert_eq!(p.counts(), vec![(Tier::Host, 2), (Tier::Disk, 3)], "{eviction:?}");
            assert_eq!(p.stats().dropped, 1);
            assert_eq!(p.take_dropped().iter().map(|b| b.hash).collect::<Vec<_>>(), vec![all[0].hash], "the dropped block is kept for offload");
            assert!(p.take_dropped().is_empty());
            // The newest five are still there, byte for byte, whichever tier they were in.
            for b in &all[1..] {
                assert_eq!(p.get(&b.hash).unwrap().as_deref(), Some(b), "{eviction:?}");
            }
            assert_eq!(p.get(&all[0].hash).unwrap(), None);
            assert!(p.stats().promotions > 0);
            assert_eq!(p.counts().iter().map(|(_, n)| n).sum::<usize>(), 5, "nothing lost while promoting");
        }
    }

    #[test]
    fn the_longest_cached_prefix_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pool(Eviction::Lru, 8, 0, dir.path());
        let model = ModelId::of(b"m");
        let prompt: Vec<u32> = (0..3 * BLOCK_TOKENS as u32).collect();
        for b in blocks(model, &prompt) {
            p.insert(b).unwrap();
        }
        // Same first two blocks, then different tokens: two blocks reusable.
        let mut next: Vec<u32> = prompt[..2 * BLOCK_TOKENS].to_vec();
        next.extend(500..530);
        let lent = p.lend_prefix(&next, usize::MAX).unwrap();
        assert_eq!(lent.len(), 2);
        for block in lent {
            p.insert(block).unwrap();
        }
        // A different first token: nothing.
        let mut other = prompt.clone();
        other[0] = 77;
        assert!(p.lend_prefix(&other, usize::MAX).unwrap().is_empty());
        assert_eq!(p.lend_prefix(&prompt, usize::MAX).unwrap().len(), 3);
        assert_eq!(p.lend_prefix(&prompt, 1).unwrap().len(), 0, "all three are on loan now");
    }

    #[test]
    fn a_lent_prefix_is_out_of_the_tiers_until_it_comes_back() {
        for disk in [0, 4] {
            let dir = tempfile::tempdir().unwrap();
            // With a disk tier, two of the four blocks are lent from disk.
            let mut p = pool(Eviction::Lru, if disk > 0 { 2 } else { 8 }, disk, dir.path());
            let model = ModelId::of(b"m");
            let prompt: Vec<u32> = (0..4 * BLOCK_TOKENS as u32 + 5).collect();
            let all = blocks(model, &prompt);
            for b in &all {
                p.insert(b.clone()).unwrap();
            }
            let hashes: Vec<BlockHash> = all.iter().map(|b| b.hash).collect();
            // At most three: the fourth stays.
            let lent = p.lend_prefix(&prompt, 3).unwrap();
            assert_eq!(lent.iter().map(|b| (**b).clone()).collect::<Vec<_>>(), all[..3], "disk {disk}");
            assert!(lent.iter().all(|b| Arc::strong_count(b) == 1), "the pool keeps no copy of a lent block");
            assert_eq!(p.counts().iter().map(|(_, n)| n).sum::<usize>(), 1);
            assert!(p.peek(&hashes[0]).unwrap().is_none(), "lent blocks are not served");
            assert_eq!(p.held_run(&hashes), 4, "but they count as held");
            assert_eq!(p.hashes().len(), 4, "and are summarized");
            assert!(p.lend_prefix(&prompt, 3).unwrap().is_empty(), "nor lent twice");
            // Two come back; the sequence fails before the third does.
            p.insert(all[0].clone()).unwrap();
            p.insert(all[1].clone()).unwrap();
            p.end_loan(&hashes[..3]);
            assert_eq!(p.held_run(&hashes), 2);
            assert_eq!(p.hashes().len(), 3);
            assert_eq!(p.peek(&hashes[1]).unwrap().as_deref(), Some(&all[1]));
            assert_eq!(p.lend_prefix(&prompt, 9).unwrap().len(), 2, "the run stops at the missing block");
        }
    }

    #[test]
    fn blocks_of_another_model_or_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pool(Eviction::Lru, 4, 0, dir.path());
        let foreign = blocks(ModelId::of(b"other"), &(0..16).collect::<Vec<u32>>());
        assert!(matches!(p.insert(foreign[0].clone()), Err(PoolError::Mismatch { .. })));
        assert!(matches!(
            BlockPool::new(ModelId::of(b"m"), layout(), &PoolConfig { disk_bytes: 1 << 20, ..Default::default() }),
            Err(PoolError::NoDiskDir)
        ));
    }

    #[test]
    fn a_corrupt_disk_block_is_an_error_not_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pool(Eviction::Lru, 1, 4, dir.path());
        let all = blocks(ModelId::of(b"m"), &(0..32).collect::<Vec<u32>>());
        p.insert(all[0].clone()).unwrap();
        p.insert(all[1].clone()).unwrap(); // demotes all[0] to disk
        let file = dir.path().join(format!("{}.kv", all[0].hash));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[200] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        assert!(matches!(p.get(&all[0].hash), Err(PoolError::BadBlock { .. })));
    }
}
