//! Protocol versions and swarm namespaces.
//!
//! A swarm is identified by its namespace name (`--swarm`, default `default`) and by
//! nothing else: the protocol version is not part of its identity, so a rolling upgrade
//! keeps one swarm. Peers only ever see the namespace's hash: mDNS TXT records, the
//! identify protocol string and gossip topic names all carry [`SwarmNamespace::tag`], so
//! two swarms on one LAN never mix, and the pre-shared key of a private swarm never
//! appears anywhere.
//!
//! Each node speaks a [`VersionRange`] of peer protocol versions and says so in identify
//! and in its adverts; two peers use the highest version both speak
//! ([`VersionRange::highest_common`]). A peer with no common version is reported (with
//! both ranges), not banned, and is not admitted to the membership view.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Newest peer protocol version this build speaks. Version 2: postcard frames (codec
/// version 2) and version ranges instead of one version in the swarm's names. Version 3:
/// an advert's inference capacity carries the model's KV block summary, the node's role
/// and the compute mode — new fields in the middle of a postcard frame, which a version-2
/// node cannot decode, so version 2 is no longer spoken.
pub const PROTOCOL_VERSION: u16 = 3;

/// Oldest peer protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 3;

/// An inclusive range of peer protocol versions, `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    min: u16,
    max: u16,
}

/// Why a version range was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionRangeError {
    #[error("protocol version range {min}-{max} is empty (min > max)")]
    Empty { min: u16, max: u16 },
    #[error("protocol version 0 does not exist")]
    Zero,
    #[error("{0:?} is not a protocol version range (expected N or MIN-MAX)")]
    Syntax(String),
}

impl VersionRange {
    /// What this build speaks: [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`].
    pub const SUPPORTED: Self = Self { min: MIN_PROTOCOL_VERSION, max: PROTOCOL_VERSION };

    pub fn new(min: u16, max: u16) -> Result<Self, VersionRangeError> {
        let range = Self { min, max };
        range.check()?;
        Ok(range)
    }

    /// Checks a range that came from the wire (serde bypasses [`Self::new`]).
    pub fn check(&self) -> Result<(), VersionRangeError> {
        if self.min == 0 {
            return Err(VersionRangeError::Zero);
        }
        if self.min > self.max {
            return Err(VersionRangeError::Empty { min: self.min, max: self.max });
        }
        Ok(())
    }

    pub fn min(&self) -> u16 {
        self.min
    }

    pub fn max(&self) -> u16 {
        self.max
    }

    pub fn contains(&self, version: u16) -> bool {
        (self.min..=self.max).contains(&version)
    }

    /// The version two peers use: the highest both speak, `None` when the ranges do not
    /// overlap.
    pub fn highest_common(&self, other: &Self) -> Option<u16> {
        let top = self.max.min(other.max);
        (top >= self.min.max(other.min)).then_some(top)
    }
}

impl Default for VersionRange {
    fn default() -> Self {
        Self::SUPPORTED
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}-{}", self.min, self.max) }
    }
}

impl FromStr for VersionRange {
    type Err = VersionRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || VersionRangeError::Syntax(s.chars().take(32).collect());
        let number = |t: &str| {
            if t.is_empty() || t.len() > 5 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            t.parse::<u16>().map_err(|_| syntax())
        };
        match s.split_once('-') {
            Some((min, max)) => Self::new(number(min)?, number(max)?),
            None => {
                let v = number(s)?;
                Self::new(v, v)
            }
        }
    }
}

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

    /// Identify protocol string: `/pyagent/<tag>/v<range>`, e.g. `/pyagent/0a1b…/v2-3`.
    /// [`IdentifyProtocol::parse`] reads it back; the tag alone decides membership.
    pub fn identify_protocol(&self, versions: VersionRange) -> String {
        format!("/pyagent/{}/v{versions}", self.tag)
    }

    /// Gossip topic of membership adverts.
    pub fn advert_topic(&self) -> String {
        format!("/pyagent/{}/adverts", self.tag)
    }

    /// Gossip topic of votes (proposals, ballots).
    pub fn vote_topic(&self) -> String {
        format!("/pyagent/{}/votes", self.tag)
    }

    /// Gossip topic of tasks (submit, claim, done).
    pub fn task_topic(&self) -> String {
        format!("/pyagent/{}/tasks", self.tag)
    }

    /// Kademlia protocol name of this swarm.
    pub fn kad_protocol(&self) -> String {
        format!("/pyagent/{}/kad/1", self.tag)
    }
}

/// What a peer's identify protocol string says, as far as this build can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentifyProtocol {
    /// A PyAgent node of the swarm with this tag, speaking these versions.
    Pyagent { tag: String, versions: VersionRange },
    /// Anything else: another program, or a PyAgent build whose string this one cannot read.
    Other(String),
}

impl IdentifyProtocol {
    pub fn parse(s: &str) -> Self {
        let other = || Self::Other(s.chars().take(96).collect());
        let Some(rest) = s.strip_prefix("/pyagent/") else { return other() };
        let Some((tag, versions)) = rest.split_once("/v") else { return other() };
        if tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return other();
        }
        match versions.parse() {
            Ok(versions) => Self::Pyagent { tag: tag.to_owned(), versions },
            Err(_) => other(),
        }
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
    fn names_do_not_carry_the_protocol_version() {
        let ns = SwarmNamespace::new("lab").unwrap();
        for name in [ns.advert_topic(), ns.task_topic(), ns.vote_topic(), ns.kad_protocol()] {
            assert!(!name.contains(&format!("/{PROTOCOL_VERSION}/")), "{name}");
        }
    }

    #[test]
    fn highest_common_version() {
        let r = |a, b| VersionRange::new(a, b).unwrap();
        assert_eq!(r(2, 2).highest_common(&r(2, 3)), Some(2));
        assert_eq!(r(2, 5).highest_common(&r(3, 4)), Some(4));
        assert_eq!(r(2, 3).highest_common(&r(3, 9)), Some(3));
        assert_eq!(r(2, 2).highest_common(&r(3, 3)), None);
        assert_eq!(r(4, 6).highest_common(&r(1, 3)), None);
        assert_eq!(VersionRange::new(3, 2), Err(VersionRangeError::Empty { min: 3, max: 2 }));
        assert_eq!(VersionRange::new(0, 2), Err(VersionRangeError::Zero));
    }

    #[test]
    fn version_ranges_print_and_parse() {
        for (text, range) in [("2", (2, 2)), ("2-3", (2, 3)), ("65535", (65535, 65535))] {
            let parsed: VersionRange = text.parse().unwrap();
            assert_eq!((parsed.min(), parsed.max()), range);
            assert_eq!(parsed.to_string(), text);
        }
        for bad in ["", "-", "3-2", "0", "a", "1-", "-1", "99999", "1-2-3", "+1", " 1"] {
            assert!(bad.parse::<VersionRange>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identify_strings_round_trip_and_name_the_swarm() {
        let ns = SwarmNamespace::new("lab").unwrap();
        let versions = VersionRange::new(2, 4).unwrap();
        assert_eq!(
            IdentifyProtocol::parse(&ns.identify_protocol(versions)),
            IdentifyProtocol::Pyagent { tag: ns.tag().to_owned(), versions }
        );
        for other in ["/ipfs/0.1.0", "/pyagent/1/0123456789abcdef", "/pyagent/0123456789abcdef/v", "/pyagent/xyz/v2"] {
            assert!(matches!(IdentifyProtocol::parse(other), IdentifyProtocol::Other(_)), "{other}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(SwarmNamespace::new(""), Err(NamespaceError::Empty));
        assert!(matches!(SwarmNamespace::new(&"x".repeat(65)), Err(NamespaceError::TooLong(65))));
        assert!(matches!(SwarmNamespace::new("a b"), Err(NamespaceError::BadCharacter(_))));
        assert!(matches!(SwarmNamespace::new("é"), Err(NamespaceError::BadCharacter(_))));
    }
}
