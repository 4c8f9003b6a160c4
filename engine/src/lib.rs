//! The compute side of a PyAgent node. No networking lives here.
//!
//! Layout:
//! - [`capacity`]: the host capacity probe (CPUs, RAM, NVIDIA VRAM when a GPU and its
//!   driver are present) that nodes put in their adverts.
//! - [`kv`]: the paged KV cache's blocks — chained BLAKE3 hashes of 16-token blocks, a
//!   checked byte form for moving them between peers, and a tiered pool (device / host /
//!   disk budgets, LRU or ARC eviction, demotion rather than loss).
//!
//! The ONNX Runtime decoder that fills and uses these blocks comes next (its issue).

pub mod capacity;
pub mod kv;

pub use capacity::CapacityProbe;
