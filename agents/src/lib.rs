//! Agents of a PyAgent node. No networking lives here.
//!
//! Layout:
//! - [`name`]: validated agent names, as nodes advertise them.
//! - [`voting`]: proposals, ballots and deterministic tallies (plurality, approval, Borda,
//!   instant-runoff, Schulze, quadratic, trust-weighted) that every node computes alike.
//!
//! The built-in Python analysis agents (complexity, imports, tokens) and the `Agent`
//! trait arrive with the "agents, tasks and votes" issue; until then a node hosts none.

pub mod name;
pub mod voting;

pub use name::{AgentName, AgentNameError};

/// Agents built into this version of the node. Empty until the agents issue lands.
pub fn builtin() -> Vec<AgentName> {
    Vec::new()
}
