//! Agents of a PyAgent node. No networking lives here.
//!
//! Layout:
//! - [`agent`]: the [`Agent`] trait, [`Task`]s and their [`SourceFile`]s, [`AgentError`].
//! - [`registry`]: the agents a node hosts (built-in, narrowed by `--agents`).
//! - [`complexity`]: cyclomatic complexity with radon's rules and ranks.
//! - [`imports`]: the import graph of a package tree, its cycles.
//! - [`tokens`]: exact token counts (cl100k_base, o200k_base).
//! - [`python`]: the Python parser (current syntax) and CPython-style positions.
//! - [`review`]: how agents rank candidate rewrites of a function (review votes).
//! - [`name`]: validated agent names, as nodes advertise them.
//! - [`voting`]: proposals, ballots and deterministic tallies (plurality, approval, Borda,
//!   instant-runoff, Schulze, quadratic, trust-weighted) that every node computes alike.
//!

pub mod agent;
pub mod complexity;
pub mod functions;
pub mod imports;
pub mod name;
pub mod python;
pub mod registry;
pub mod review;
pub mod source_encoding;
pub mod tokens;
pub mod voting;

pub use agent::{Agent, AgentError, SourceFile, Task};
pub use name::{AgentName, AgentNameError};
pub use registry::{Registry, RegistryError};

/// Names of the agents built into this version of the node.
pub fn builtin() -> Vec<AgentName> {
    Registry::builtin().names()
}
