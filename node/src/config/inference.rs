//! `[inference]`: the models this node serves and where they run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Inference: the models this node serves, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Model directories (model.onnx, tokenizer.json, config.json), each served by a
    /// worker of its own under its directory's name. Empty: this node serves none (it can
    /// still ask its peers).
    pub models: Vec<PathBuf>,
    /// ONNX Runtime library. Default: ORT_DYLIB_PATH, then `.venv-models`.
    pub ort_lib: Option<PathBuf>,
    /// KV block pool budget in host RAM, MiB.
    pub kv_host_mb: u64,
    /// Before prefill, fetch the prompt's prefix blocks from peers that hold them (the
    /// swarm's KV exchange). Off: compute every prefix here (blocks are still served).
    pub kv_fetch: bool,
    /// Move fetched blocks over the bulk path: a plain TCP port (any free one, on the p2p
    /// listen address) next to libp2p, its records sealed with AES-256-GCM under a key
    /// agreed inside the encrypted stream; several times less CPU per byte than the
    /// stream. Off: blocks move over libp2p streams only (a firewall that allows only
    /// the p2p port needs nothing: an unreachable bulk port falls back to the stream).
    pub kv_bulk: bool,
    /// The bulk path's TCP port on the p2p listen address; 0 (the default): any free port.
    /// Set it where a firewall must let the port through; a port in use stops the start.
    pub kv_bulk_port: u16,
    /// This node's part in serving: `both` (default) runs whole requests; `decode` runs
    /// requests and has a `prefill` peer compute their prompts' KV blocks when one is
    /// there; `prefill` computes prompts for decode peers and gets requests only when no
    /// other node serves the model.
    pub role: pyagent_protocol::InferenceRole,
    /// Where models run: `auto` (the CUDA execution provider when an NVIDIA GPU is found
    /// and the runtime has it, else the CPU), `cpu`, or `cuda` (fail rather than fall back).
    pub provider: ProviderChoice,
    /// Guesses of the next tokens per decode pass, at most (lookahead: int8 compute only;
    /// same output, fewer passes where the text repeats itself). 0: none — a request that
    /// repeats an earlier one then no longer decodes faster than one that does not.
    pub lookahead: usize,
}

/// Most guesses per decode pass a config may ask for: wider passes cost more than the
/// guesses they can save.
pub const MAX_LOOKAHEAD: usize = 16;

/// `inference.provider`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            ort_lib: None,
            kv_host_mb: 256,
            kv_fetch: true,
            kv_bulk: true,
            kv_bulk_port: 0,
            role: pyagent_protocol::InferenceRole::Both,
            provider: ProviderChoice::Auto,
            lookahead: pyagent_engine::infer::LOOKAHEAD,
        }
    }
}
