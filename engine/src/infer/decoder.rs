//! One ONNX Runtime session over a decoder in the Optimum layout: a forward pass takes
//! new tokens and the past keys/values, and returns logits and the present keys/values.
//!
//! The cache stays in ONNX Runtime tensors and is never copied per step:
//! - plain graphs (attention by `Concat`): a step's `present.*` outputs are the next step's
//!   `past_key_values.*` inputs as they are;
//! - graphs whose attention writes in place (`past_present_share_buffer` in the config,
//!   ONNX Runtime's `GroupQueryAttention`): each layer's keys and values live in one buffer
//!   with room for more positions, bound as both `past_key_values.*` and `present.*`; the
//!   attention mask says how many positions are valid. The buffer grows (one copy) when a
//!   sequence outgrows it; [`Decoder::reserve`] sizes it up front.
//!
//! Logits are read where ONNX Runtime wrote them. Only the KV-block boundary (`cache.rs`)
//! copies.
//!
//! No pass of an in-place graph with int8 compute has one row. On SmolLM2, ONNX Runtime's
//! kernels (`MatMulNBits` in both compute modes, `GroupQueryAttention`) give a row the same
//! bits in every pass of 2 rows or more, whatever the other rows and however a prompt is
//! chunked, but a 1-row pass takes other kernels that round differently (measured: up to
//! 5e-5 in fp32 compute, up to 0.72 in int8 compute, which amplifies it;
//! `scripts/row_invariance.py`). So a 1-token pass runs its token twice and keeps the first
//! row: plain decoding, speculative verification, chunked and cached prefills all see the
//! same numbers, bit for bit (asserted on SmolLM2 int4; the tiny test model's attention,
//! head size 8, still rounds by up to 4e-6 with a row's place in its pass). The second row
//! costs up to ~15% of int8 decode speed at a 600-token context (44–53 against 51 tokens/s
//! on a noisy 2-core machine) and ~30% at 1,024; its keys and values land past the
//! sequence's end and are overwritten by the next pass. The engine puts a guess of the
//! next token in that row ([`Decoder::guess_room`]; `Engine::lookahead`). With fp32
//! compute the second row would cost as much again (`MatMulNBits` dequantizes its weights for passes of more than
//! one row: decode 18 against 42 tokens/s measured), so fp32 compute keeps 1-row decode
//! passes, exact up to that rounding (5e-5), as before.

use std::borrow::Cow;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor};

pub use super::kv_state::KvState;
use super::kv_state::{f32s, next_buffers_id, run_err};
pub use super::logits::Logits;
use super::logits::Rows;
use super::model::{ModelDir, ModelError};
pub use super::runtime::Provider;

/// Positions a shared cache buffer grows by at least (amortizes the copies).
const GROWTH_STEP: usize = 256;

/// Rows of the smallest pass an in-place graph runs (see the module docs).
pub const MIN_ROWS: usize = 2;


/// A loaded decoder.
pub struct Decoder {
    session: Session,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    max_positions: Option<usize>,
    share_buffer: bool,
    /// The graph takes `logits_rows` (logits of the last positions only).
    logits_rows: bool,
    /// 1-token passes run as 2 rows (module docs): in-place graphs with int8 compute.
    pad_single: bool,
    past_names: Vec<(String, String)>,
    present_names: Vec<(String, String)>,
    cpu: MemoryInfo<'static>,
    /// In-place graphs: the binding of the last cache run, and which buffers it binds.
    binding: Option<(u64, IoBinding)>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("layers", &self.layers)
            .field("vocab", &self.vocab)
            .field("share_buffer", &self.share_buffer)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// Opens `model`'s ONNX file in `env` with `threads` intra-op threads, on the CPU.
    pub fn load(model: &ModelDir, env: &ort::environment::Environment, threads: usize) -> Result<Self, ModelError> {
        Self::load_on(model, env, threads, Provider::Cpu)
    }

    /// [`Self::load`] on `provider`; a provider this runtime or machine lacks is an error
    /// that says so (the caller may fall back to the CPU).
    pub fn load_on(model: &ModelDir, env: &ort::environment::Environment, threads: usize, provider: Provider) -> Result<Self, ModelError> {
        use ort::ep::ExecutionProvider;
        let onnx = |e: ort::Error| ModelError::Onnx { path: model.onnx.clone(), reason: e.to_string() };
        let refused = |reason: String| ModelError::Provider { provider: provider.to_string(), reason };
        let mut builder = Session::builder(env).map_err(onnx)?.with_intra_threads(threads.max(1)).map_err(|e| onnx(e.into()))?;
        if let Provider::Cuda { device } = provider {
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(refused("this ONNX Runtime has no CUDA execution provider (use the library of the onnxruntime-gpu wheel: --ort-lib)".into()));
            }
            let cuda = ort::ep::CUDA::default().with_device_id(device).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| refused(e.to_string()))?;
        }
        let session = builder.commit_from_file(&model.onnx).map_err(onnx)?;
        let layers = model.config.num_hidden_layers as usize;
        let past_names: Vec<(String, String)> =
            (0..layers).map(|l| (format!("past_key_values.{l}.key"), format!("past_key_values.{l}.value"))).collect();
        let present_names: Vec<(String, String)> = (0..layers).map(|l| (format!("present.{l}.key"), format!("present.{l}.value"))).collect();
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let logits_rows = inputs.contains(&"logits_rows");
        let wanted = ["input_ids", "attention_mask", "position_ids"].into_iter().chain(past_names.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
        if let Some(missing) = wanted.into_iter().find(|w| !inputs.contains(w)) {
            return Err(ModelError::Layout(missing.to_owned()));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let wanted = std::iter::once("logits").chain(present_names.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
        if let Some(missing) = wanted.into_iter().find(|w| !outputs.contains(w)) {
            return Err(ModelError::Layout(missing.to_owned()));
        }
        check_graph(&session, &model.config)?;
        let cpu = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default).map_err(onnx)?;
        Ok(Self {
            cpu,
            session,
            layers,
            kv_heads: model.config.num_key_value_heads as usize,
            head_dim: model.config.head_dim() as usize,
            vocab: model.config.vocab_size as usize,
            max_positions: model.config.max_position_embeddings.map(|m| m as usize),
            share_buffer: model.config.past_present_share_buffer,
            logits_rows,
            pad_single: model.config.past_present_share_buffer && model.compute.mode == super::compute::ComputeMode::Int8,
            past_names,
            present_names,
            binding: None,
        })
    }

    /// Lets go of the cache buffers kept bound between steps (in-place graphs): call when
    /// a sequence is done, before its cache is let go.
    pub fn release(&mut self) {
        self.binding = None;
    }

    /// How many guesses of the next tokens a 1-token pass after `len` positions may carry
    /// (0: none): where such a pass runs 2 rows anyway (module docs), the first costs
    /// nothing; the model's last position bounds them all.
    pub fn guess_room(&self, len: usize) -> usize {
        if !self.pad_single {
            return 0;
        }
        self.max_positions.map_or(usize::MAX, |m| m.saturating_sub(len + 1))
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Layers, KV heads and head size of the cache.
    pub fn cache_shape(&self) -> (usize, usize, usize) {
        (self.layers, self.kv_heads, self.head_dim)
    }

    /// The cache of no tokens, shaped for this model.
    pub fn empty_cache(&self) -> Result<KvState, ModelError> {
        KvState::empty(self.layers, self.kv_heads, self.head_dim)
    }

    /// The buffer size for a cache that will hold `total` positions: `total` itself where
    /// the graph writes in place, otherwise `len` (buffers are exactly the sequence).
    pub fn capacity_for(&self, len: usize, total: usize) -> usize {
        if self.share_buffer {
            // Room for the padding row of the last pass too.
            let total = total.max(len) + if self.pad_single { MIN_ROWS - 1 } else { 0 };
            self.max_positions.map_or(total, |m| total.min(m).max(len))
        } else {
            len
        }
    }

    /// `state` with room for `total` positions (a no-op for graphs that concatenate).
    pub fn reserve(&self, state: KvState, total: usize) -> Result<KvState, ModelError> {
        let capacity = self.capacity_for(state.len, total);
        if capacity <= state.capacity { Ok(state) } else { state.resized(capacity) }
    }

    /// `state` cut to its first `len` positions, in buffers a pass takes: the same ones
    /// for graphs that append in place, buffers of exactly `len` positions for graphs
    /// that concatenate (a cache filled with room for blocks that did not come).
    pub fn fit(&self, mut state: KvState, len: usize) -> Result<KvState, ModelError> {
        state.truncate(len)?;
        let len = state.len;
        if self.share_buffer || state.capacity == len { Ok(state) } else { state.resized(len) }
    }

    /// Runs `tokens` after `past`; returns the logits of every new position and the
    /// present cache (past + new). The past is consumed: with in-place attention, the
    /// present is the same buffers.
    pub fn forward(&mut self, tokens: &[u32], past: KvState) -> Result<(Logits, KvState), ModelError> {
        self.forward_rows(tokens, past, tokens.len())
    }

    /// [`Self::forward`], with logits for (at least) the last `want` new positions only
    /// where the graph can leave the others out (a prefill chunk needs its last).
    pub fn forward_rows(&mut self, tokens: &[u32], past: KvState, want: usize) -> Result<(Logits, KvState), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Run("a forward pass needs at least one token".into()));
        }
        if past.layers.len() != self.layers || past.kv_heads != self.kv_heads || past.head_dim != self.head_dim {
            return Err(ModelError::Run(format!(
                "the cache is shaped {} layers x {} heads x {}, the model {} x {} x {}",
                past.layers.len(),
                past.kv_heads,
                past.head_dim,
                self.layers,
                self.kv_heads,
                self.head_dim
            )));
        }
        let total = past.len + tokens.len();
        if let Some(max) = self.max_positions.filter(|&m| total > m) {
            return Err(ModelError::Run(format!("the sequence would hold {total} positions; the model takes at most {max}")));
        }
        // A 1-token pass of an in-place graph runs the token twice (module docs), unless
        // the second row would be past the model's last position.
        let padded: [u32; MIN_ROWS];
        let (tokens, shown) = match tokens {
            &[token] if self.guess_room(past.len) > 0 => {
                padded = [token; MIN_ROWS];
                (&padded[..], 1)
            }
            _ => (tokens, tokens.len()),
        };
        let s = tokens.len();
        let total = past.len + s;
        // Rows of logits the graph computes: the last `kept` of the pass, which covers the
        // `want` last shown ones, and never one row alone where there are more (the same
        // rule as for the whole pass).
        let kept = if self.logits_rows { (s - shown + want.clamp(1, shown)).max(MIN_ROWS).min(s) } else { s };
        let shape = Rows { shown, first: s - kept, kept };
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let positions: Vec<i64> = (past.len as i64..total as i64).collect();
        let ids = Tensor::from_array(([1usize, s], ids)).map_err(run_err)?;
        let mask = Tensor::from_array(([1usize, total], vec![1i64; total])).map_err(run_err)?;
        let positions = Tensor::from_array(([1usize, s], positions)).map_err(run_err)?;
        let kept_input = Tensor::from_array(([1usize], vec![kept as i64])).map_err(run_err)?;
        if self.share_buffer {
            let grown = total.max(past.capacity + GROWTH_STEP);
            let past = if past.capacity < total { self.reserve(past, grown)? } else { past };
            return self.forward_in_place(shape, [ids, mask, positions, kept_input], past);
        }
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(4 + 2 * self.layers);
        inputs.push(("input_ids".into(), ids.into()));
        inputs.push(("attention_mask".into(), mask.into()));
        inputs.push(("position_ids".into(), positions.into()));
        if self.logits_rows {
            inputs.push(("logits_rows".into(), kept_input.into()));
        }
        for ((k, v), (k_name, v_name)) in past.layers.iter().zip(&self.past_names) {
            inputs.push((k_name.as_str().into(), k.into()));
            inputs.push((v_name.as_str().into(), v.into()));
        }
        let vocab = self.vocab;
        let mut outputs = self.session.run(inputs).map_err(run_err)?;
        let logits = logits_of(&mut outputs, shape, vocab)?;
        let mut layers = Vec::with_capacity(self.layers);
        for (k_name, v_name) in &self.present_names {
            let (k, v) = (take_output(&mut outputs, k_name)?, take_output(&mut outputs, v_name)?);
            let want = self.kv_heads * total * self.head_dim;
            for t in [&k, &v] {
                let got = f32s(t)?.len();
                if got != want {
                    return Err(ModelError::Run(format!("{k_name} has {got} values, expected {want}")));
                }
            }
            layers.push((k, v));
        }
        let buffers = next_buffers_id();
        Ok((logits, KvState { layers, buffers, len: total, capacity: total, kv_heads: self.kv_heads, head_dim: self.head_dim }))
    }

    /// A pass whose attention appends to the past buffers in place. The cache stays bound
    /// from step to step; only the new tokens, the mask and the logits are bound anew.
    /// Of the pass's rows, the first `rows.shown` are its tokens; the rest are padding,
    /// neither shown in the logits nor kept in the cache.
    fn forward_in_place(&mut self, rows: Rows, [ids, mask, positions, kept]: [Tensor<i64>; 4], mut past: KvState) -> Result<(Logits, KvState), ModelError> {
        let binding = match self.binding.take() {
            Some((bound, binding)) if bound == past.buffers => binding,
            _ => {
                let mut binding = self.session.create_binding().map_err(run_err)?;
                for ((k, v), ((past_k, past_v), (present_k, present_v))) in past.layers.iter_mut().zip(self.past_names.iter().zip(&self.present_names)) {
                    binding.bind_input(past_k.as_str(), &*k).map_err(run_err)?;
                    binding.bind_input(past_v.as_str(), &*v).map_err(run_err)?;
                    binding.bind_output(present_k.as_str(), &mut *k).map_err(run_err)?;
                    binding.bind_output(present_v.as_str(), &mut *v).map_err(run_err)?;
                }
                binding
            }
        };
        let mut binding = binding;
        binding.bind_input("input_ids", &ids).map_err(run_err)?;
        binding.bind_input("attention_mask", &mask).map_err(run_err)?;
        binding.bind_input("position_ids", &positions).map_err(run_err)?;
        if self.logits_rows {
            binding.bind_input("logits_rows", &kept).map_err(run_err)?;
        }
        // The logits' shape follows the number of new tokens.
        binding.bind_output_to_device("logits", &self.cpu).map_err(run_err)?;
        let vocab = self.vocab;
        let logits = {
            let mut outputs = self.session.run_binding(&binding).map_err(run_err)?;
            logits_of(&mut outputs, rows, vocab)?
        };
        self.binding = Some((past.buffers, binding));
        past.len += rows.shown;
        Ok((logits, past))
    }
}

/// Compares the graph's fixed dimensions with `config.json` before anything is sized from
/// the config: the KV inputs are [batch, kv_heads, past, head_dim] and the logits
/// [batch, sequence, vocab]. Dynamic dimensions (-1) are not checked.
fn check_graph(session: &Session, config: &crate::infer::ModelConfig) -> Result<(), ModelError> {
    let fixed = |dims: Option<&ort::value::Shape>, at: usize| dims.and_then(|d| d.get(at).copied()).filter(|&d| d > 0);
    let compare = |what: &'static str, config: i64, graph: Option<i64>| match graph {
        Some(graph) if graph != config => Err(ModelError::GraphMismatch { what, config, graph }),
        _ => Ok(()),
    };
    for input in session.inputs().iter().filter(|i| i.name().starts_with("past_key_values.")) {
        let shape = input.dtype().tensor_shape();
        compare("num_key_value_heads", i64::from(config.num_key_value_heads), fixed(shape, 1))?;
        compare("head_dim", i64::from(config.head_dim()), fixed(shape, 3))?;
    }
    if let Some(logits) = session.outputs().iter().find(|o| o.name() == "logits") {
        compare("vocab_size", i64::from(config.vocab_size), fixed(logits.dtype().tensor_shape(), 2))?;
    }
    Ok(())
}

fn logits_of(outputs: &mut SessionOutputs<'_>, rows: Rows, vocab: usize) -> Result<Logits, ModelError> {
    let value = take_output(outputs, "logits")?;
    let got = f32s(&value)?.len();
    if got != rows.kept * vocab {
        return Err(ModelError::Run(format!("logits have {got} values, expected {} x {vocab}", rows.kept)));
    }
    Ok(Logits::new(value, rows, vocab))
}

fn take_output(outputs: &mut SessionOutputs<'_>, name: &str) -> Result<DynValue, ModelError> {
    outputs.remove(name).ok_or_else(|| ModelError::Layout(name.to_owned()))
}
