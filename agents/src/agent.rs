//! The `Agent` trait: what every agent, built-in or external, looks like to a node.
//!
//! A task names a capability (e.g. `python.tokens`) and carries the source files it is
//! about, as text: agents never read paths, because a task may come from another machine.
//! An agent answers with a JSON result or a typed error; it never panics on bad input.

use serde::{Deserialize, Serialize};

use crate::AgentName;

/// A file a task is about: its path in the analysed tree (for reports) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// A unit of work for one capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub capability: String,
    pub files: Vec<SourceFile>,
}

/// Why an agent could not handle a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("agent {agent} does not offer capability {capability:?}")]
    Unsupported { agent: String, capability: String },
    #[error("{path}: {reason}")]
    InvalidInput { path: String, reason: String },
}

/// An agent.
pub trait Agent: Send + Sync + std::fmt::Debug {
    /// Its name, as advertised and as `--agents` selects it.
    fn name(&self) -> &AgentName;
    /// The capabilities it serves, e.g. `python.tokens`.
    fn capabilities(&self) -> &[&'static str];
    /// Handles one task.
    fn handle(&self, task: &Task) -> Result<serde_json::Value, AgentError>;

    /// The error for a task of a capability this agent does not serve.
    fn unsupported(&self, task: &Task) -> AgentError {
        AgentError::Unsupported { agent: self.name().to_string(), capability: task.capability.clone() }
    }
}
