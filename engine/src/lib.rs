//! The compute side of a PyAgent node. No networking lives here.
//!
//! Layout:
//! - [`capacity`]: the host capacity probe (CPUs, RAM, NVIDIA VRAM when a GPU and its
//!   driver are present) that nodes put in their adverts.
//! - [`kv`]: the paged KV cache's blocks — chained BLAKE3 hashes of 16-token blocks, a
//!   checked byte form for moving them between peers, and a tiered pool (device / host /
//!   disk budgets, LRU or ARC eviction, demotion rather than loss).
//!
//! - [`infer`]: ONNX Runtime (loaded at run time from the PyPI wheel), model directories
//!   (fp32 or int4 graphs in the Optimum layout; int4 with int8 or fp32 compute, chosen
//!   from the CPU), the decoder's forward pass (int8: never one row, bit-exact across
//!   passes) with the KV
//!   cache kept in ONNX Runtime tensors (appended in place where the graph allows), the
//!   engine (prefix reuse from the pool, chunked prefill, sampling, stop strings,
//!   streaming, lookahead guesses in decode passes) and prompt-lookup speculative
//!   decoding.
//! - [`chat`]: a conversation rendered with the model's own Hugging Face chat template
//!   (Jinja, as `transformers` renders it).

pub mod capacity;
pub mod chat;
pub mod infer;
pub mod kv;

pub use capacity::CapacityProbe;
