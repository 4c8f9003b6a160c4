//! LLM inference with ONNX Runtime (in progress: see the inference issue).
//!
//! - [`runtime`]: finding and loading ONNX Runtime 1.31.1 (from the PyPI wheel).
//! - [`model`]: a model directory (ONNX file, tokenizer, config; id = BLAKE3 of the file).
//! - [`decoder`]: forward passes with past/present keys and values.
//! - [`generate`]: greedy generation.

pub mod decoder;
pub mod generate;
pub mod model;
pub mod runtime;

pub use decoder::{Decoder, KvState};
pub use model::{ModelConfig, ModelDir, ModelError};
pub use runtime::{RuntimeError, environment, find_library};
