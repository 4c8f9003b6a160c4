//! The compute side of a PyAgent node. No networking lives here.
//!
//! Layout:
//! - [`capacity`]: the host capacity probe (CPUs, RAM, NVIDIA VRAM when a GPU and its
//!   driver are present) that nodes put in their adverts.
//!
//! Later issues add the ONNX Runtime inference engine and its paged KV cache.

pub mod capacity;

pub use capacity::CapacityProbe;
