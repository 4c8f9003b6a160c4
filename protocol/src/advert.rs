//! The membership advert: what every node gossips about itself every few seconds, and
//! what a peer answers when asked directly. Gossipsub signs each message with the
//! sender's key; receivers also check that [`Advert::peer_id`] is the signer.

use serde::{Deserialize, Serialize};

use crate::swarm::{VersionRange, VersionRangeError};

/// Bounds that keep a hostile advert small.
pub const MAX_LISTEN_ADDRS: usize = 32;
pub const MAX_ADDR_LEN: usize = 256;
pub const MAX_AGENTS: usize = 64;
pub const MAX_AGENT_NAME_LEN: usize = 64;
pub const MAX_GPUS: usize = 16;
pub const MAX_TEXT_LEN: usize = 128;
/// Most models one advert lists.
pub const MAX_MODELS: usize = 16;
/// Largest encoded advert accepted from the wire.
pub const MAX_ADVERT_BYTES: usize = 16 * 1024;

/// A node's self-description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// Peer protocol versions the node speaks; peers use the highest common one
    /// ([`VersionRange::highest_common`]).
    pub protocol_versions: VersionRange,
    /// Base58 PeerId of the node; must equal the gossip message's signer.
    pub peer_id: String,
    /// Software version, e.g. `pyagent/0.1.0`.
    pub node_version: String,
    /// Multiaddrs the node listens on (so that peers can dial it back).
    pub listen_addrs: Vec<String>,
    /// Names of the agents this node hosts.
    pub agents: Vec<String>,
    /// The task capabilities those agents serve (e.g. `python.complexity`): tasks are
    /// placed on the peers that advertise their capability.
    pub capabilities: Vec<String>,
    /// What the node can run.
    pub capacity: Capacity,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Random per process run: a new value means the node restarted.
    pub boot_id: u64,
    /// Increases with every advert of one run; older adverts of a run are ignored.
    pub seq: u64,
}

/// Host capacity as measured by the engine's probe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
    pub gpus: Vec<GpuInfo>,
    /// The models this node serves, with their speed and the work queued at each (what
    /// placement weighs); empty when it serves none.
    #[serde(default)]
    pub models: Vec<InferenceCapacity>,
}

/// What a node can do for inference with one model: the memory it needs, measured
/// speed, and the work waiting for it when the advert was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceCapacity {
    /// The name clients ask for (the model directory's name).
    pub name: String,
    /// BLAKE3 of the ONNX file, hex.
    pub model_id: String,
    /// Prompt plus generated tokens at most.
    pub context_length: u32,
    /// The model has a chat template (chat requests can be rendered).
    pub chat: bool,
    /// Requests queued or running, and their tokens still to prefill and to decode.
    pub queued_requests: u32,
    pub queued_prefill_tokens: u64,
    pub queued_decode_tokens: u64,
    /// KV pool memory not in use (of `kv_budget_bytes`).
    pub kv_free_bytes: u64,
    /// Where it runs: `cpu`, or `cuda:N` (then `fits` is about that GPU's VRAM).
    pub provider: String,
    pub model_bytes: u64,
    /// KV block pool budget in RAM (and VRAM when a GPU provider runs).
    pub kv_budget_bytes: u64,
    /// Whether the model and its KV budget fit in the memory available at start.
    pub fits: bool,
    /// Measured (tokens/s): by a short probe at start, then by the model's own runs (the
    /// node's `serving::rates`).
    pub prefill_tokens_per_s: u32,
    pub decode_tokens_per_s: u32,
    /// The KV blocks its pool holds (a Bloom filter of their hashes): what peers may fetch
    /// from it, and what placement credits it with.
    #[serde(default)]
    pub kv_blocks: crate::kv::KvSummary,
    /// What the node does with the model (`--role`): placement sends requests to
    /// `decode` and `both` nodes; `decode` nodes hand prompts to `prefill` nodes.
    #[serde(default)]
    pub role: InferenceRole,
    /// How its int4 weights are multiplied: `int8` or `fp32` (the engine picks by the CPU;
    /// blocks of different modes have different model ids).
    #[serde(default)]
    pub compute: String,
}

/// A node's part in serving a model (disaggregated prefill and decode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceRole {
    /// Runs whole requests: prefill and decode.
    #[default]
    Both,
    /// Computes prompts' KV blocks for decode nodes; runs requests only when no other
    /// node can.
    Prefill,
    /// Runs requests, and has a prefill node compute their prompts' blocks when one is
    /// there (else computes them itself).
    Decode,
}

impl InferenceRole {
    pub const ALL: [Self; 3] = [Self::Both, Self::Prefill, Self::Decode];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

impl std::fmt::Display for InferenceRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InferenceRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| format!("unknown role {s:?}: prefill, decode or both"))
    }
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
}

impl Capacity {
    /// Total VRAM over all GPUs.
    pub fn vram_total_bytes(&self) -> u64 {
        self.gpus.iter().map(|g| g.vram_total_bytes).sum()
    }

    /// Short human form for mDNS TXT and tables: `cpu=8;ram=31.2G;vram=24.0G`.
    pub fn summary(&self) -> String {
        format!(
            "cpu={};ram={};vram={}",
            self.cpus,
            gib(self.ram_total_bytes),
            gib(self.vram_total_bytes())
        )
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

/// Why an advert was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdvertError {
    #[error("protocol versions: {0}")]
    Versions(#[from] VersionRangeError),
    #[error("advert is signed by {signer} but claims to be from {claimed}")]
    WrongSigner { signer: String, claimed: String },
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), AdvertError> {
    if value.len() > max {
        return Err(AdvertError::Field { field, reason: format!("{} bytes, limit {max}", value.len()) });
    }
    if value.chars().any(char::is_control) {
        return Err(AdvertError::Field { field, reason: "contains control characters".into() });
    }
    Ok(())
}

fn check_list(field: &'static str, values: &[String], max_items: usize, max_len: usize) -> Result<(), AdvertError> {
    if values.len() > max_items {
        return Err(AdvertError::Field { field, reason: format!("{} entries, limit {max_items}", values.len()) });
    }
    values.iter().try_for_each(|v| check_text(field, v, max_len))
}

impl Advert {
    /// Checks bounds, and that the advert was signed by the peer it names. Whether the two
    /// nodes share a protocol version is the membership view's call, not a validity check.
    pub fn validate(&self, signer: &str) -> Result<(), AdvertError> {
        self.protocol_versions.check()?;
        if self.peer_id != signer {
            return Err(AdvertError::WrongSigner { signer: signer.to_owned(), claimed: self.peer_id.clone() });
        }
        check_text("node_version", &self.node_version, MAX_TEXT_LEN)?;
        check_list("listen_addrs", &self.listen_addrs, MAX_LISTEN_ADDRS, MAX_ADDR_LEN)?;
        check_list("agents", &self.agents, MAX_AGENTS, MAX_AGENT_NAME_LEN)?;
        check_list("capabilities", &self.capabilities, MAX_AGENTS, MAX_AGENT_NAME_LEN)?;
        if self.capacity.gpus.len() > MAX_GPUS {
            return Err(AdvertError::Field {
                field: "capacity.gpus",
                reason: format!("{} entries, limit {MAX_GPUS}", self.capacity.gpus.len()),
            });
        }
        self.capacity.gpus.iter().try_for_each(|g| check_text("capacity.gpus.name", &g.name, MAX_TEXT_LEN))?;
        if self.capacity.models.len() > MAX_MODELS {
            return Err(AdvertError::Field { field: "capacity.models", reason: format!("{} entries, limit {MAX_MODELS}", self.capacity.models.len()) });
        }
        for m in &self.capacity.models {
            check_text("capacity.models.name", &m.name, MAX_TEXT_LEN)?;
            check_text("capacity.models.model_id", &m.model_id, MAX_TEXT_LEN)?;
            check_text("capacity.models.provider", &m.provider, MAX_TEXT_LEN)?;
            check_text("capacity.models.compute", &m.compute, MAX_TEXT_LEN)?;
            if m.name.is_empty() {
                return Err(AdvertError::Field { field: "capacity.models.name", reason: "empty".into() });
            }
            m.kv_blocks.validate().map_err(|e| AdvertError::Field { field: "capacity.models.kv_blocks", reason: e.to_string() })?;
        }
        let summaries: usize = self.capacity.models.iter().map(|m| m.kv_blocks.bits.len()).sum();
        if summaries > crate::kv::MAX_SUMMARIES_BYTES {
            return Err(AdvertError::Field { field: "capacity.models.kv_blocks", reason: format!("{summaries} bytes of summaries, limit {}", crate::kv::MAX_SUMMARIES_BYTES) });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec;

    pub(crate) fn sample() -> Advert {
        Advert {
            protocol_versions: VersionRange::SUPPORTED,
            peer_id: "12D3KooWExample".into(),
            node_version: "pyagent/0.1.0".into(),
            listen_addrs: vec!["/ip4/10.77.0.11/tcp/7760".into()],
            agents: vec![],
            capabilities: vec![],
            capacity: Capacity {
                cpus: 8,
                ram_total_bytes: 32 << 30,
                ram_available_bytes: 20 << 30,
                gpus: vec![GpuInfo { name: "H100".into(), vram_total_bytes: 80 << 30, vram_free_bytes: 79 << 30 }],
                models: vec![],
            },
            uptime_secs: 12,
            boot_id: 42,
            seq: 3,
        }
    }

    #[test]
    fn advert_round_trips_through_the_codec() {
        let frame = codec::encode(&sample()).unwrap();
        let back: Advert = codec::decode(&frame, MAX_ADVERT_BYTES).unwrap();
        assert_eq!(back, sample());
        assert!(back.validate("12D3KooWExample").is_ok());
    }

    #[test]
    fn rejects_advert_from_another_signer() {
        let err = sample().validate("12D3KooWOther").unwrap_err();
        assert!(matches!(err, AdvertError::WrongSigner { .. }));
    }

    #[test]
    fn accepts_other_protocol_versions_but_not_an_empty_range() {
        let mut a = sample();
        a.protocol_versions = VersionRange::new(7, 9).unwrap();
        assert_eq!(a.validate("12D3KooWExample"), Ok(()));
        // serde bypasses the constructor: a forged empty range is caught here.
        let mut frame = codec::encode(&sample()).unwrap();
        let max = crate::PROTOCOL_VERSION;
        frame[1] = 5; // min (varint), max stays
        let forged: Advert = codec::decode(&frame, MAX_ADVERT_BYTES).unwrap();
        assert!(matches!(forged.validate("12D3KooWExample"), Err(AdvertError::Versions(VersionRangeError::Empty { min: 5, max: m })) if m == max));
    }

    #[test]
    fn rejects_oversized_lists_and_control_characters() {
        let mut a = sample();
        a.listen_addrs = vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_LISTEN_ADDRS + 1];
        assert!(matches!(a.validate("12D3KooWExample"), Err(AdvertError::Field { field: "listen_addrs", .. })));
        let mut b = sample();
        b.agents = vec!["bad\nname".into()];
        assert!(matches!(b.validate("12D3KooWExample"), Err(AdvertError::Field { field: "agents", .. })));
    }

    #[test]
    fn model_lists_are_bounded_and_named() {
        let model = InferenceCapacity { name: "smollm2".into(), model_id: "ab".into(), ..Default::default() };
        let mut a = sample();
        a.capacity.models = vec![model.clone(); MAX_MODELS];
        assert_eq!(a.validate("12D3KooWExample"), Ok(()));
        a.capacity.models.push(model.clone());
        assert!(matches!(a.validate("12D3KooWExample"), Err(AdvertError::Field { field: "capacity.models", .. })));
        a.capacity.models = vec![InferenceCapacity { name: String::new(), ..model.clone() }];
        assert!(matches!(a.validate("12D3KooWExample"), Err(AdvertError::Field { field: "capacity.models.name", .. })));
        a.capacity.models = vec![InferenceCapacity { name: "x\u{7}".into(), ..model.clone() }];
        assert!(a.validate("12D3KooWExample").is_err());
        // KV summaries: each bounded, and all of them together.
        let held: Vec<[u8; 32]> = (0..3000u32).map(|n| *blake3::hash(&n.to_le_bytes()).as_bytes()).collect();
        let full = InferenceCapacity { kv_blocks: crate::kv::KvSummary::of(&held, crate::kv::MAX_SUMMARY_BYTES), ..model.clone() };
        a.capacity.models = vec![full.clone(), full.clone()];
        assert_eq!(a.validate("12D3KooWExample"), Ok(()));
        let frame = codec::encode(&a).unwrap();
        assert!(frame.len() < MAX_ADVERT_BYTES, "{} bytes", frame.len());
        a.capacity.models.push(full);
        assert!(matches!(a.validate("12D3KooWExample"), Err(AdvertError::Field { field: "capacity.models.kv_blocks", .. })));
        let mut bad = model;
        bad.kv_blocks.bits = vec![0; 3];
        a.capacity.models = vec![bad];
        assert!(matches!(a.validate("12D3KooWExample"), Err(AdvertError::Field { field: "capacity.models.kv_blocks", .. })));
    }

    #[test]
    fn capacity_summary_is_short_and_readable() {
        let s = sample().capacity.summary();
        assert_eq!(s, "cpu=8;ram=32.0G;vram=80.0G");
    }
}
