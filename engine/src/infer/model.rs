//! A model directory: `model.onnx` (decoder-only, Hugging Face Optimum layout) and, when
//! its weights are stored outside the graph, `model.onnx.data`; for int4 models also
//! `model.int8.onnx`, the same graph with int8 compute (`compute.rs` picks one);
//! `tokenizer.json`, and `config.json` (layers, KV heads, head size, vocabulary, special
//! tokens). The model id is BLAKE3 of the graph run followed by its external data: KV
//! blocks are only ever shared between runs of the very same weights and arithmetic.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::compute::{Compute, ComputeChoice};
use crate::kv::{DType, KvLayout, ModelId};

/// Why a model directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid model config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: invalid tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("the tokenizer has {tokenizer} tokens but the model only {model}: they do not belong together")]
    TokenizerMismatch { tokenizer: usize, model: usize },
    #[error("the tokenizer has token id {id} ({token:?}) but the model's vocabulary is {model}: they do not belong together")]
    TokenizerIdOutOfRange { id: u32, token: String, model: usize },
    #[error("config.json says {what} is {config} but the ONNX graph has {graph}: the config does not belong to this model")]
    GraphMismatch { what: &'static str, config: i64, graph: i64 },
    #[error("{path}: ONNX Runtime cannot load this model: {reason}")]
    Onnx { path: PathBuf, reason: String },
    #[error("the model misses input or output {0:?} of the decoder layout")]
    Layout(String),
    #[error("inference failed: {0}")]
    Run(String),
    #[error("execution provider {provider}: {reason}")]
    Provider { provider: String, reason: String },
    #[error("{0}")]
    Compute(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The parts of `config.json` the engine uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub hidden_size: u32,
    #[serde(default)]
    pub head_dim: Option<u32>,
    pub vocab_size: u32,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pub max_position_embeddings: Option<u32>,
    /// The graph's attention (ONNX Runtime's `GroupQueryAttention`) can take the past as a
    /// buffer with room for more positions and write the new keys/values into it in place
    /// (`present.*` bound to the `past_key_values.*` tensors): no copy of the cache per
    /// step. Plain Optimum graphs concatenate, and leave this off.
    #[serde(default)]
    pub past_present_share_buffer: bool,
    /// The model's Hugging Face chat template (Jinja), if it has one.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// Bounds of a sane decoder config (the largest models served anywhere are well inside):
/// checked before anything is sized from the config.
const MAX_LAYERS: u32 = 1024;
const MAX_HEADS: u32 = 1024;
const MAX_HEAD_DIM: u32 = 1024;
const MAX_HIDDEN: u32 = 1 << 17;
const MAX_VOCAB: u32 = 1 << 24;

impl ModelConfig {
    /// Checks the sizes: positive, within sane bounds, heads a multiple of KV heads.
    pub fn check(&self) -> Result<(), String> {
        let bounded = [
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim(), MAX_HEAD_DIM),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
        ];
        for (field, value, max) in bounded {
            if value == 0 || value > max {
                return Err(format!("{field} is {value}; it must be 1..={max}"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> u32 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Tokens that end generation.
    pub fn eos_tokens(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(OneOrMany::One(t)) => vec![*t],
            Some(OneOrMany::Many(v)) => v.clone(),
            None => vec![],
        }
    }

    /// The shape of this model's KV cache.
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout { layers: self.num_hidden_layers, kv_heads: self.num_key_value_heads, head_dim: self.head_dim(), dtype: DType::F32 }
    }
}

/// An opened model directory.
#[derive(Debug)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub onnx: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: tokenizers::Tokenizer,
    pub id: ModelId,
    /// Size of the ONNX file and its external weights (`model.onnx.data`), if any.
    pub bytes: u64,
    /// How its int4 weights are multiplied (the graph `onnx` is).
    pub compute: Compute,
}

impl ModelDir {
    /// Opens `dir` with the compute mode `PYAGENT_COMPUTE` asks for, or that suits this CPU.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        Self::open_with(dir, ComputeChoice::from_env().map_err(ModelError::Compute)?)
    }

    /// Opens `dir` with the compute mode `choice` gives.
    pub fn open_with(dir: &Path, choice: ComputeChoice) -> Result<Self, ModelError> {
        let (onnx, compute) = super::compute::resolve(dir, choice);
        // The id covers the graph and its weights, hashed as they stream by (a model is
        // hundreds of MB; reading it whole would double the process's peak memory).
        let data = dir.join("model.onnx.data");
        let mut files = vec![onnx.as_path()];
        if data.is_file() {
            files.push(&data);
        }
        let (id, bytes) = ModelId::of_files(&files).map_err(|source| ModelError::Read { path: onnx.clone(), source })?;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Read { path: config_path.clone(), source })?;
        let config: ModelConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::Config { path: config_path.clone(), reason: e.to_string() })?;
        if let Err(reason) = config.check() {
            return Err(ModelError::Config { path: config_path, reason });
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::Tokenizer { path: tokenizer_path.clone(), reason: e.to_string() })?;
        let size = tokenizer.get_vocab_size(true);
        if size > config.vocab_size as usize {
            return Err(ModelError::TokenizerMismatch { tokenizer: size, model: config.vocab_size as usize });
        }
        // Ids may be sparse: every one must have a row of logits, or generation reads
        // garbage for it.
        if let Some((token, id)) = tokenizer.get_vocab(true).into_iter().max_by_key(|(_, id)| *id)
            && id >= config.vocab_size
        {
            return Err(ModelError::TokenizerIdOutOfRange { id, token, model: config.vocab_size as usize });
        }
        Ok(Self { dir: dir.to_owned(), onnx, config, tokenizer, id, bytes, compute })
    }

    /// The model's chat template, with its BOS and first EOS token texts (empty where the
    /// model has none).
    pub fn chat_template(&self) -> Result<crate::chat::ChatTemplate, crate::chat::ChatError> {
        let source = self.config.chat_template.as_deref().ok_or(crate::chat::ChatError::NoTemplate)?;
        let text = |id: Option<u32>| id.and_then(|id| self.tokenizer.id_to_token(id)).unwrap_or_default();
        crate::chat::ChatTemplate::new(source, &text(self.config.bos_token_id), &text(self.config.eos_tokens().first().copied()))
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer { path: self.dir.join("tokenizer.json"), reason: e.to_string() })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of token ids (special tokens left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer { path: self.dir.join("tokenizer.json"), reason: e.to_string() })
    }
}
