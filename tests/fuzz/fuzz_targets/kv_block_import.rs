//! KV blocks from peers or disk: arbitrary bytes are refused with a reason or give a block
//! that exports to the same bytes; a block kept in its byte form (`import_owned`, the
//! fetch path) is refused or accepted exactly as a copied one, and is the same block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyagent_engine::kv::{Integrity, KvBlock, ModelId};

fuzz_target!(|data: &[u8]| {
    // The model id the importer expects: the first 32 bytes, so that the fuzzer can reach
    // past the model check.
    let mut id = [0u8; 32];
    let n = data.len().min(32);
    id[..n].copy_from_slice(&data[..n]);
    let model = ModelId(id);
    for candidate in [data, data.get(32..).unwrap_or_default()] {
        if let Ok(block) = KvBlock::import(candidate, &model) {
            assert_eq!(block.export(), candidate, "an imported block exports to the same bytes");
        }
        for integrity in [Integrity::Checksum, Integrity::Authenticated] {
            let copied = KvBlock::import_with(candidate, &model, integrity);
            let owned = KvBlock::import_owned(candidate.to_vec(), &model, integrity);
            assert_eq!(copied, owned, "kept whole or copied, the same answer");
        }
    }
});
