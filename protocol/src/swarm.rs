//! Protocol version and swarm namespaces.
//!
//! A swarm is identified by its namespace name (`--swarm`, default `default`). Peers only
//! ever see its hash: mDNS TXT records, the identify protocol string and gossip topic
//! names all carry [`SwarmNamespace::tag`], so two swarms on one LAN never mix, and the
//! pre-shared key of a private swarm never appears anywhere.

/// Version of the PyAgent peer protocol. Peers with another version are not dialed.
pub const PROTOCOL_VERSION: u16 = 1;

/// DNS-SD service type every node registers and browses.
pub const MDNS_SERVICE_TYPE: &str = "_pyagent._udp.local.";

/// mDNS TXT keys (short: a TXT record is small).
pub mod txt {
    /// Protocol version, decimal.
    pub const VERSION: &str = "v";
    /// Swarm namespace tag ([`super::SwarmNamespace::tag`]).
    pub const NAMESPACE: &str = "ns";
    /// TCP (and QUIC, when `quic` is `1`) port of the libp2p listener.
    pub const P2P_PORT: &str = "port";
    /// `1` when the node also listens on QUIC (same port, UDP).
    pub const QUIC: &str = "quic";
    /// Short capacity summary, e.g. `cpu=8;ram=31.2G;vram=24.0G`.
    pub const CAPACITY: &str = "cap";
    /// Random id of this process run: tells a restart from a copied identity.
    pub const BOOT_ID: &str = "boot";
}

/// Longest accepted namespace name.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// A validated swarm namespace name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SwarmNamespace {
    name: String,
    tag: String,
}

/// Why a namespace name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamespaceError {
    #[error("swarm namespace must not be empty")]
    Empty,
    #[error("swarm namespace is {0} characters long; the limit is {MAX_NAMESPACE_LEN}")]
    TooLong(usize),
    #[error("swarm namespace {0:?} may only contain ASCII letters, digits, '-', '_' and '.'")]
    BadCharacter(String),
}

impl SwarmNamespace {
    /// Validates `name` and derives its tag.
    pub fn new(name: &str) -> Result<Self, NamespaceError> {
        if name.is_empty() {
            return Err(NamespaceError::Empty);
        }
        if name.len() > MAX_NAMESPACE_LEN {
            return Err(NamespaceError::TooLong(name.len()));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(NamespaceError::BadCharacter(name.to_owned()));
        }
        let mut hasher = blake3::Hasher::new_derive_key("pyagent swarm namespace v1");
        hasher.update(name.as_bytes());
        let hex = hasher.finalize().to_hex();
        Ok(Self { name: name.to_owned(), tag: hex[..16].to_owned() })
    }

    /// The name as the user gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 16 hex characters of BLAKE3(name): what peers see.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Identify protocol string; a peer announcing another one is disconnected.
    pub fn identify_protocol(&self) -> String {
        format!("/pyagent/{PROTOCOL_VERSION}/{}", self.tag)
    }

    /// Gossip topic of membership adverts.
    pub fn advert_topic(&self) -> String {
        format!("/pyagent/{PROTOCOL_VERSION}/{}/adverts", self.tag)
    }

    /// Gossip topic of votes (proposals, ballots).
    pub fn vote_topic(&self) -> String {
        format!("/pyagent/{PROTOCOL_VERSION}/{}/votes", self.tag)
    }

    /// Gossip topic of tasks (submit, claim, done).
    pub fn task_topic(&self) -> String {
        format!("/pyagent/{PROTOCOL_VERSION}/{}/tasks", self.tag)
    }
}

impl Default for SwarmNamespace {
    fn default() -> Self {
        match Self::new("default") {
            Ok(ns) => ns,
            // "default" is a constant that passes validation.
            Err(_) => unreachable!("the default namespace name is valid"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_per_name_and_are_stable() {
        let a = SwarmNamespace::new("lab-a").unwrap();
        let b = SwarmNamespace::new("lab-b").unwrap();
        assert_ne!(a.tag(), b.tag());
        assert_eq!(a.tag(), SwarmNamespace::new("lab-a").unwrap().tag());
        assert_eq!(a.tag().len(), 16);
        assert!(a.advert_topic().contains(a.tag()));
        assert!(!a.advert_topic().contains("lab-a"));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(SwarmNamespace::new(""), Err(NamespaceError::Empty));
        assert!(matches!(SwarmNamespace::new(&"x".repeat(65)), Err(NamespaceError::TooLong(65))));
        assert!(matches!(SwarmNamespace::new("a b"), Err(NamespaceError::BadCharacter(_))));
        assert!(matches!(SwarmNamespace::new("é"), Err(NamespaceError::BadCharacter(_))));
    }
}
