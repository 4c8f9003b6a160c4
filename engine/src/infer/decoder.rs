//! One ONNX Runtime session over a decoder in the Optimum layout: a forward pass takes
//! new tokens and the past keys/values, and returns logits and the present keys/values.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

use super::model::{ModelDir, ModelError};

/// The KV cache of one sequence: per layer, keys and values `[kv_heads, len, head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvState {
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub len: usize,
}

impl KvState {
    pub fn empty(layers: usize) -> Self {
        Self { layers: vec![(Vec::new(), Vec::new()); layers], len: 0 }
    }
}

/// A loaded decoder.
pub struct Decoder {
    session: Session,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("layers", &self.layers).field("vocab", &self.vocab).finish_non_exhaustive()
    }
}

fn run_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Run(e.to_string())
}

impl Decoder {
    /// Opens `model`'s ONNX file in `env` with `threads` intra-op threads.
    pub fn load(model: &ModelDir, env: &ort::environment::Environment, threads: usize) -> Result<Self, ModelError> {
        let onnx = |e: ort::Error| ModelError::Onnx { path: model.onnx.clone(), reason: e.to_string() };
        let session = Session::builder(env)
            .map_err(onnx)?
            .with_intra_threads(threads.max(1))
            .map_err(|e| onnx(e.into()))?
            .commit_from_file(&model.onnx)
            .map_err(onnx)?;
        let layers = model.config.num_hidden_layers as usize;
        let mut wanted = vec!["input_ids".to_owned(), "attention_mask".to_owned(), "position_ids".to_owned()];
        for l in 0..layers {
            wanted.push(format!("past_key_values.{l}.key"));
            wanted.push(format!("past_key_values.{l}.value"));
        }
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if let Some(missing) = wanted.iter().find(|w| !inputs.contains(&w.as_str())) {
            return Err(ModelError::Layout(missing.clone()));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if !outputs.contains(&"logits") {
            return Err(ModelError::Layout("logits".into()));
        }
        Ok(Self {
            session,
            layers,
            kv_heads: model.config.num_key_value_heads as usize,
            head_dim: model.config.head_dim() as usize,
            vocab: model.config.vocab_size as usize,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Layers, KV heads and head size of the cache.
    pub fn cache_shape(&self) -> (usize, usize, usize) {
        (self.layers, self.kv_heads, self.head_dim)
    }

    /// Runs `tokens` after `past`; returns the logits of every new position (`[s, vocab]`,
    /// row-major) and the present cache (past + new).
    pub fn forward(&mut self, tokens: &[u32], past: &KvState) -> Result<(Vec<f32>, KvState), ModelError> {
        let s = tokens.len();
        let total = past.len + s;
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let positions: Vec<i64> = (past.len as i64..total as i64).collect();
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), Tensor::from_array(([1usize, s], ids)).map_err(run_err)?.into()),
            ("attention_mask".into(), Tensor::from_array(([1usize, total], vec![1i64; total])).map_err(run_err)?.into()),
            ("position_ids".into(), Tensor::from_array(([1usize, s], positions)).map_err(run_err)?.into()),
        ];
        for (l, (k, v)) in past.layers.iter().enumerate() {
            let shape = [1usize, self.kv_heads, past.len, self.head_dim];
            inputs.push((format!("past_key_values.{l}.key").into(), Tensor::from_array((shape, k.clone())).map_err(run_err)?.into()));
            inputs.push((format!("past_key_values.{l}.value").into(), Tensor::from_array((shape, v.clone())).map_err(run_err)?.into()));
        }
        let outputs = self.session.run(inputs).map_err(run_err)?;
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>().map_err(run_err)?;
        let logits = logits.to_vec();
        let mut present = KvState { layers: Vec::with_capacity(self.layers), len: total };
        for l in 0..self.layers {
            let (_, k) = outputs[format!("present.{l}.key").as_str()].try_extract_tensor::<f32>().map_err(run_err)?;
            let (_, v) = outputs[format!("present.{l}.value").as_str()].try_extract_tensor::<f32>().map_err(run_err)?;
            present.layers.push((k.to_vec(), v.to_vec()));
        }
        if logits.len() != s * self.vocab {
            return Err(ModelError::Run(format!("logits have {} values, expected {} x {}", logits.len(), s, self.vocab)));
        }
        Ok((logits, present))
    }
}

impl KvState {
    /// Keeps the first `len` positions (drops rejected speculative tokens).
    pub fn truncate(&mut self, len: usize, kv_heads: usize, head_dim: usize) {
        if len >= self.len {
            return;
        }
        for (keys, values) in &mut self.layers {
            for tensor in [keys, values] {
                let mut kept = Vec::with_capacity(kv_heads * len * head_dim);
                for h in 0..kv_heads {
                    let start = h * self.len * head_dim;
                    kept.extend_from_slice(&tensor[start..start + len * head_dim]);
                }
                *tensor = kept;
            }
        }
        self.len = len;
    }
}
