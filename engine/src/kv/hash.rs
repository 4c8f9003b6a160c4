//! Block hashes, chained as in vLLM's prefix caching: a block's hash covers the model, its
//! parent block's hash and its own token ids, so equal hashes mean an equal whole prefix.
//! Only full blocks of [`BLOCK_TOKENS`] tokens are hashed (and cached, and shared).

/// Tokens per KV block.
pub const BLOCK_TOKENS: usize = 16;

/// BLAKE3 of a model's ONNX file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(pub [u8; 32]);

/// BLAKE3(domain, model id, parent hash, token ids).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

/// The parent of a sequence's first block.
pub const ROOT: BlockHash = BlockHash([0; 32]);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelId({})", &hex(&self.0)[..12])
    }
}

impl std::fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockHash({})", &hex(&self.0)[..12])
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::fmt::Display for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl ModelId {
    /// The id of a model file's bytes.
    pub fn of(onnx: &[u8]) -> Self {
        Self(*blake3::hash(onnx).as_bytes())
    }

    /// The id of files read one after another (the ONNX file, then its external weights),
    /// in constant memory; also returns how many bytes were read.
    pub fn of_files(paths: &[&std::path::Path]) -> std::io::Result<(Self, u64)> {
        let mut h = blake3::Hasher::new();
        let mut bytes = 0u64;
        for path in paths {
            let before = h.count();
            h.update_reader(std::fs::File::open(path)?)?;
            bytes += h.count() - before;
        }
        Ok((Self(*h.finalize().as_bytes()), bytes))
    }
}

/// The hash of one full block.
pub fn block_hash(model: &ModelId, parent: &BlockHash, tokens: &[u32; BLOCK_TOKENS]) -> BlockHash {
    let mut h = blake3::Hasher::new();
    h.update(b"pyagent-kv-block-v1");
    h.update(&model.0);
    h.update(&parent.0);
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    BlockHash(*h.finalize().as_bytes())
}

/// The hashes of every full block of `tokens`, in order (a trailing partial block has none).
pub fn block_hashes(model: &ModelId, tokens: &[u32]) -> Vec<BlockHash> {
    let mut parent = ROOT;
    tokens
        .chunks_exact(BLOCK_TOKENS)
        .map(|chunk| {
            let mut block = [0u32; BLOCK_TOKENS];
            block.copy_from_slice(chunk);
            parent = block_hash(model, &parent, &block);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_over_the_whole_prefix() {
        let model = ModelId::of(b"model");
        let tokens: Vec<u32> = (0..50).collect();
        let hashes = block_hashes(&model, &tokens);
        assert_eq!(hashes.len(), 3, "only full blocks");
        // The same prefix gives the same hashes, whatever follows.
        let mut longer = tokens.clone();
        longer.extend(100..140);
        assert_eq!(block_hashes(&model, &longer)[..3], hashes[..]);
        // Changing one token of the first block changes every later hash too.
        let mut changed = tokens.clone();
        changed[3] = 999;
        let other = block_hashes(&model, &changed);
        assert!(hashes.iter().zip(&other).all(|(a, b)| a != b));
        // Changing a token of the third block leaves the first two alone.
        let mut late = tokens.clone();
        late[40] = 7;
        let late = block_hashes(&model, &late);
        assert_eq!(late[..2], hashes[..2]);
        assert_ne!(late[2], hashes[2]);
        // Another model never shares blocks.
        assert_ne!(block_hashes(&ModelId::of(b"other"), &tokens)[0], hashes[0]);
    }
}
