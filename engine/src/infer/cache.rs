//! Between a sequence's KV cache (`KvState`, per layer `[kv_heads, len, head_dim]`) and
//! KV blocks of 16 tokens: cut the full blocks out of a cache, and rebuild a cache from
//! a chain of blocks (a cached prefix).

use crate::kv::{BLOCK_TOKENS, BlockHash, KvBlock, KvLayout, ModelId};

use super::decoder::KvState;

fn f32s_to_bytes(values: impl Iterator<Item = f32>, out: &mut Vec<u8>) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The full blocks of `state` (which holds `tokens`), from block `skip` on, chained from
/// `parent` (the hash of block `skip - 1`, or the root).
pub fn blocks_of(model: ModelId, layout: KvLayout, state: &KvState, tokens: &[u32], skip: usize, mut parent: BlockHash) -> Vec<KvBlock> {
    let (heads, dim) = (layout.kv_heads as usize, layout.head_dim as usize);
    let full = state.len.min(tokens.len()) / BLOCK_TOKENS;
    let mut out = Vec::new();
    for b in skip..full {
        let mut data = Vec::with_capacity(layout.block_bytes());
        for (keys, values) in &state.layers {
            for tensor in [keys, values] {
                for h in 0..heads {
                    let start = (h * state.len + b * BLOCK_TOKENS) * dim;
                    f32s_to_bytes(tensor[start..start + BLOCK_TOKENS * dim].iter().copied(), &mut data);
                }
            }
        }
        let ids: [u32; BLOCK_TOKENS] = std::array::from_fn(|i| tokens[b * BLOCK_TOKENS + i]);
        match KvBlock::new(model, parent, ids, layout, data) {
            Ok(block) => {
                parent = block.hash;
                out.push(block);
            }
            Err(_) => break, // cannot happen: the size follows from the layout
        }
    }
    out
}

/// The cache of the tokens of a chain of blocks.
pub fn state_of(layout: KvLayout, blocks: &[KvBlock]) -> KvState {
    let (heads, dim, layers) = (layout.kv_heads as usize, layout.head_dim as usize, layout.layers as usize);
    let len = blocks.len() * BLOCK_TOKENS;
    let per_tensor = heads * BLOCK_TOKENS * dim;
    let mut state = KvState { layers: vec![(vec![0f32; heads * len * dim], vec![0f32; heads * len * dim]); layers], len };
    for (b, block) in blocks.iter().enumerate() {
        let floats: Vec<f32> = block.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        for (l, (keys, values)) in state.layers.iter_mut().enumerate() {
            for (t, tensor) in [keys, values].into_iter().enumerate() {
                let src = &floats[(l * 2 + t) * per_tensor..(l * 2 + t + 1) * per_tensor];
                for h in 0..heads {
                    let from = h * BLOCK_TOKENS * dim;
                    let to = (h * len + b * BLOCK_TOKENS) * dim;
                    tensor[to..to + BLOCK_TOKENS * dim].copy_from_slice(&src[from..from + BLOCK_TOKENS * dim]);
                }
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{DType, block_hashes, hash::ROOT};

    #[test]
    fn blocks_and_state_round_trip() {
        let layout = KvLayout { layers: 2, kv_heads: 3, head_dim: 4, dtype: DType::F32 };
        let len = 2 * BLOCK_TOKENS + 5;
        let n = 3 * len * 4;
        let state = KvState {
            layers: (0..2).map(|l| ((0..n).map(|i| (l * 1000 + i) as f32).collect(), (0..n).map(|i| -((l * 1000 + i) as f32)).collect())).collect(),
            len,
        };
        let tokens: Vec<u32> = (0..len as u32).collect();
        let model = ModelId::of(b"m");
        let blocks = blocks_of(model, layout, &state, &tokens, 0, ROOT);
        assert_eq!(blocks.len(), 2, "the partial block is left out");
        assert_eq!(blocks.iter().map(|b| b.hash).collect::<Vec<_>>(), block_hashes(&model, &tokens));
        let rebuilt = state_of(layout, &blocks);
        assert_eq!(rebuilt.len, 2 * BLOCK_TOKENS);
        for (l, (k, v)) in rebuilt.layers.iter().enumerate() {
            for h in 0..3 {
                for t in 0..2 * BLOCK_TOKENS {
                    for d in 0..4 {
                        let ours = (h * rebuilt.len + t) * 4 + d;
                        let theirs = (h * len + t) * 4 + d;
                        assert_eq!(k[ours], state.layers[l].0[theirs]);
                        assert_eq!(v[ours], state.layers[l].1[theirs]);
                    }
                }
            }
        }
        // Blocks from the second on chain onto the first.
        let tail = blocks_of(model, layout, &state, &tokens, 1, blocks[0].hash);
        assert_eq!(tail[0], blocks[1]);
    }
}
