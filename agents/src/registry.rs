//! The agents a node hosts: the built-in ones, narrowed by `--agents a,b,c`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::agent::Agent;
use crate::complexity::ComplexityAgent;
use crate::imports::ImportsAgent;
use crate::tokens::TokensAgent;
use crate::AgentName;

/// Why a selection of agents was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown agent {name:?}; built-in agents: {known}")]
    UnknownAgent { name: String, known: String },
}

/// Agents by name (sorted, so every listing is stable).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    agents: BTreeMap<AgentName, Arc<dyn Agent>>,
}

impl Registry {
    /// Every built-in agent.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.add(Arc::new(ComplexityAgent::new()));
        registry.add(Arc::new(ImportsAgent::new()));
        registry.add(Arc::new(TokensAgent::new()));
        registry
    }

    /// The built-in agents named in `names` (all of them when `names` is empty).
    pub fn select(names: &[AgentName]) -> Result<Self, RegistryError> {
        let all = Self::builtin();
        if names.is_empty() {
            return Ok(all);
        }
        let mut chosen = Self::default();
        for name in names {
            let agent = all.agents.get(name).ok_or_else(|| RegistryError::UnknownAgent {
                name: name.to_string(),
                known: all.names().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            })?;
            chosen.add(agent.clone());
        }
        Ok(chosen)
    }

    /// Adds (or replaces) an agent.
    pub fn add(&mut self, agent: Arc<dyn Agent>) {
        self.agents.insert(agent.name().clone(), agent);
    }

    pub fn names(&self) -> Vec<AgentName> {
        self.agents.keys().cloned().collect()
    }

    /// Every capability served, sorted, once each.
    pub fn capabilities(&self) -> Vec<String> {
        let all: std::collections::BTreeSet<&str> =
            self.agents.values().flat_map(|a| a.capabilities().iter().copied()).collect();
        all.into_iter().map(str::to_owned).collect()
    }

    /// The first agent (by name) serving `capability`.
    pub fn for_capability(&self, capability: &str) -> Option<Arc<dyn Agent>> {
        self.agents.values().find(|a| a.capabilities().contains(&capability)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_agents_are_found_by_name_and_capability() {
        let r = Registry::builtin();
        assert!(r.names().iter().any(|n| n.as_str() == "tokens"));
        assert_eq!(r.for_capability(crate::tokens::CAPABILITY).unwrap().name().as_str(), "tokens");
        assert!(r.for_capability("python.nothing").is_none());
    }

    #[test]
    fn selection_narrows_and_rejects_unknown_names() {
        let tokens: AgentName = "tokens".parse().unwrap();
        assert_eq!(Registry::select(std::slice::from_ref(&tokens)).unwrap().names(), vec![tokens]);
        assert_eq!(Registry::select(&[]).unwrap().names(), Registry::builtin().names());
        let err = Registry::select(&["nope".parse().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("tokens"), "{err}");
    }
}
