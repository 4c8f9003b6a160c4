//! Agents of a PyAgent node. No networking lives here.
//!
//! Layout:
//! - [`agent`]: the [`Agent`] trait, [`Task`]s and their [`SourceFile`]s, [`AgentError`].
//! - [`registry`]: the agents a node hosts (built-in, narrowed by `--agents`).
//! - [`tokens`]: exact token counts (cl100k_base, o200k_base).
//! - [`name`]: validated agent names, as nodes advertise them.
//! - [`voting`]: proposals, ballots and deterministic tallies (plurality, approval, Borda,
//!   instant-runoff, Schulze, quadratic, trust-weighted) that every node computes alike.
//!
//! Still to come with the "agents, tasks and votes" issue: the `complexity` and
//! `imports` agents, and routing tasks to agents across the swarm.

pub mod agent;
pub mod name;
pub mod registry;
pub mod tokens;
pub mod voting;

pub use agent::{Agent, AgentError, SourceFile, Task};
pub use name::{AgentName, AgentNameError};
pub use registry::{Registry, RegistryError};

/// Names of the agents built into this version of the node.
pub fn builtin() -> Vec<AgentName> {
    Registry::builtin().names()
}
