//! Agent names: short, lowercase, safe to show in tables and put in adverts.

use std::fmt;
use std::str::FromStr;

/// Longest agent name.
pub const MAX_AGENT_NAME_LEN: usize = 32;

/// A validated agent name: `[a-z0-9][a-z0-9-]*`, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentName(String);

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentNameError {
    #[error("agent name must not be empty")]
    Empty,
    #[error("agent name {0:?} is longer than {MAX_AGENT_NAME_LEN} characters")]
    TooLong(String),
    #[error("agent name {0:?} may only use lowercase letters, digits and '-', starting with a letter or digit")]
    BadCharacter(String),
}

impl FromStr for AgentName {
    type Err = AgentNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AgentNameError::Empty);
        }
        if s.len() > MAX_AGENT_NAME_LEN {
            return Err(AgentNameError::TooLong(s.to_owned()));
        }
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if !s.chars().all(ok_char) || s.starts_with('-') {
            return Err(AgentNameError::BadCharacter(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl AgentName {
    /// A built-in name known to be valid (checked by the tests of each agent).
    pub(crate) fn from_static(name: &'static str) -> Self {
        debug_assert!(name.parse::<AgentName>().is_ok(), "invalid built-in agent name {name}");
        Self(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_names() {
        assert_eq!("complexity".parse::<AgentName>().unwrap().as_str(), "complexity");
        assert!("doc-coverage2".parse::<AgentName>().is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!("".parse::<AgentName>(), Err(AgentNameError::Empty));
        assert!(matches!("Upper".parse::<AgentName>(), Err(AgentNameError::BadCharacter(_))));
        assert!(matches!("-x".parse::<AgentName>(), Err(AgentNameError::BadCharacter(_))));
        assert!(matches!("a".repeat(33).parse::<AgentName>(), Err(AgentNameError::TooLong(_))));
    }
}
