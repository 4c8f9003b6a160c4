//! LLM inference with ONNX Runtime.
//!
//! - [`runtime`]: finding and loading ONNX Runtime 1.31.1 (from the PyPI wheel).
//! - [`compute`]: int8 or fp32 compute for int4 weights, chosen from the CPU's features.
//! - [`model`]: a model directory (ONNX file and its external weights, tokenizer, config;
//!   id = BLAKE3 of the files).
//! - [`decoder`]: forward passes; the KV cache stays in ONNX Runtime tensors, appended in
//!   place (I/O binding) when the graph's attention allows it; logits read in place.
//! - `kv_state`: those tensors ([`KvState`]): built, filled, grown, cut.
//! - [`generate`]: plain greedy generation (no pool), the reference loop.
//! - [`sampling`]: greedy, temperature, top-k, top-p, seeded.
//! - [`cache`]: a sequence's KV cache to and from 16-token blocks.
//! - [`prompt_cache`]: a prompt's cache before its run: the pool's prefix, then blocks
//!   pushed as they arrive (a peer's).
//! - [`engine`]: model + decoder + block pool: prefix reuse, chunked prefill, stop strings,
//!   incremental detokenization and streaming; lookahead (guessed tokens in the rows an
//!   int8-compute decode pass runs anyway).
//! - [`speculative`]: prompt-lookup speculative decoding, exactly greedy.

pub mod cache;
pub mod compute;
pub mod decoder;
pub mod engine;
mod kv_state;
pub mod generate;
mod logits;
pub mod model;
pub mod prompt_cache;
pub mod runtime;
pub mod sampling;
pub mod speculative;

pub use decoder::{Decoder, KvState, Logits, Provider};
pub use prompt_cache::PromptCache;
pub use engine::{Alternative, Engine, EngineError, Finish, GenerateOptions, LOOKAHEAD, Lookahead, Output, PREFILL_CHUNK, Piece, RECENT_TOKENS, TokenLogprob};
pub use sampling::{Logprobs, Sampler, Sampling, logprobs};
pub use compute::{Compute, ComputeChoice, ComputeMode};
pub use model::{ModelConfig, ModelDir, ModelError};
pub use runtime::{RuntimeError, environment, find_library};
