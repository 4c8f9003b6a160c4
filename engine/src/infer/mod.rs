//! LLM inference with ONNX Runtime (in progress: see the inference issue).
//!
//! - [`runtime`]: finding and loading ONNX Runtime 1.31.1 (from the PyPI wheel).
//! - [`model`]: a model directory (ONNX file, tokenizer, config; id = BLAKE3 of the file).
//! - [`decoder`]: forward passes with past/present keys and values.
//! - [`generate`]: plain greedy generation (no pool), the reference loop.
//! - [`sampling`]: greedy, temperature, top-k, top-p, seeded.
//! - [`cache`]: a sequence's KV cache to and from 16-token blocks.
//! - [`engine`]: model + decoder + block pool: prefix reuse, stop strings, streaming.
//! - [`speculative`]: prompt-lookup speculative decoding, exactly greedy.

pub mod cache;
pub mod decoder;
pub mod engine;
pub mod generate;
pub mod model;
pub mod runtime;
pub mod sampling;
pub mod speculative;

pub use decoder::{Decoder, KvState, Logits};
pub use engine::{Engine, EngineError, GenerateOptions, Output, PREFILL_CHUNK};
pub use sampling::{Sampler, Sampling};
pub use model::{ModelConfig, ModelDir, ModelError};
pub use runtime::{RuntimeError, environment, find_library};
