//! Static facts about the node that status replies and adverts carry.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
use pyagent_protocol::{SwarmNamespace, VersionRange};

#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub namespace: SwarmNamespace,
    pub private: bool,
    pub quic: bool,
    pub mdns: bool,
    pub agents: Vec<String>,
    pub data_dir: PathBuf,
    pub bootstrap: Vec<Multiaddr>,
    pub advert_interval: Duration,
    pub peer_ttl: Duration,
    /// Random per process run; a new value tells peers this node restarted.
    pub boot_id: u64,
    /// The peer protocol versions this node speaks.
    pub versions: VersionRange,
    /// The KV exchange's counters (for status replies).
    pub kv: std::sync::Arc<crate::kv::Counters>,
}
