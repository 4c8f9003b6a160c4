//! The KV cache of one sequence in ONNX Runtime tensors ([`KvState`]): built, filled,
//! grown, cut, and let go a layer at a time. The passes over it are [`super::decoder`]'s.

use ort::memory::Allocator;
use ort::value::{DynValue, Tensor};

use super::model::ModelError;

/// The KV cache of one sequence: per layer, ONNX Runtime tensors of keys and values
/// `[1, kv_heads, capacity, head_dim]`, of which the first `len` positions are valid
/// (`capacity == len` for graphs that concatenate, whenever a pass takes it:
/// [`super::Decoder::fit`]).
#[derive(Debug)]
pub struct KvState {
    pub(super) layers: Vec<(DynValue, DynValue)>,
    /// Which buffers these are (a fresh number per allocation): a decoder keeps them
    /// bound between steps while it is handed the same ones.
    pub(super) buffers: u64,
    pub(super) len: usize,
    pub(super) capacity: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
}

pub(super) fn next_buffers_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(super) fn run_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Run(e.to_string())
}

pub(super) fn f32s(value: &DynValue) -> Result<&[f32], ModelError> {
    value.try_extract_tensor::<f32>().map(|(_, data)| data).map_err(run_err)
}

impl KvState {
    /// The cache of no tokens.
    pub fn empty(layers: usize, kv_heads: usize, head_dim: usize) -> Result<Self, ModelError> {
        Self::from_host((0..layers).map(|_| (Vec::new(), Vec::new())).collect(), 0, kv_heads, head_dim)
    }

    /// A cache from host buffers, per layer keys and values `[kv_heads, len, head_dim]`.
    pub fn from_host(layers: Vec<(Vec<f32>, Vec<f32>)>, len: usize, kv_heads: usize, head_dim: usize) -> Result<Self, ModelError> {
        let shape = [1usize, kv_heads, len, head_dim];
        let want = kv_heads * len * head_dim;
        let tensor = |data: Vec<f32>| -> Result<DynValue, ModelError> {
            if data.len() != want {
                return Err(ModelError::Run(format!("a KV tensor has {} values, expected {want}", data.len())));
            }
            Ok(Tensor::from_array((shape, data)).map_err(run_err)?.into_dyn())
        };
        let layers = layers.into_iter().map(|(k, v)| Ok((tensor(k)?, tensor(v)?))).collect::<Result<_, ModelError>>()?;
        Ok(Self { layers, buffers: next_buffers_id(), len, capacity: len, kv_heads, head_dim })
    }

    /// A cache of `len` valid positions in buffers of `capacity` (≥ `len`) positions, per
    /// layer keys and values `[kv_heads, capacity, head_dim]`, filled layer by layer by
    /// `fill(layer, keys, values)`. The buffers come from ONNX Runtime's plain CPU
    /// allocator, not from a session's arena (which never gives memory back): a cache can
    /// be let go a layer at a time ([`Self::consume_layers`]) as its blocks are made, and
    /// the memory serves them, so that the two are never whole at once.
    pub fn build(
        shape: (usize, usize, usize),
        len: usize,
        capacity: usize,
        mut fill: impl FnMut(usize, &mut [f32], &mut [f32]) -> Result<(), ModelError>,
    ) -> Result<Self, ModelError> {
        let (layers, kv_heads, head_dim) = shape;
        let capacity = capacity.max(len);
        if capacity == 0 {
            return Self::empty(layers, kv_heads, head_dim);
        }
        let allocator = Allocator::default();
        let mut out = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut keys = Tensor::<f32>::new(&allocator, [1usize, kv_heads, capacity, head_dim]).map_err(run_err)?;
            let mut values = Tensor::<f32>::new(&allocator, [1usize, kv_heads, capacity, head_dim]).map_err(run_err)?;
            fill(l, keys.extract_tensor_mut().1, values.extract_tensor_mut().1)?;
            out.push((keys.into_dyn(), values.into_dyn()));
        }
        Ok(Self { layers: out, buffers: next_buffers_id(), len, capacity, kv_heads, head_dim })
    }

    /// Hands `each` every layer's keys and values (`[kv_heads, capacity, head_dim]`), in
    /// order, and lets go of each layer's buffers as soon as `each` is done with it.
    pub fn consume_layers(self, mut each: impl FnMut(usize, &[f32], &[f32]) -> Result<(), ModelError>) -> Result<(), ModelError> {
        for (l, (k, v)) in self.layers.into_iter().enumerate() {
            each(l, f32s(&k)?, f32s(&v)?)?;
        }
        Ok(())
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers have room for: the stride between heads in [`Self::layer`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Layer `l`'s keys and values, `[kv_heads, capacity, head_dim]` row-major (positions
    /// from `len` on are not part of the sequence).
    pub fn layer(&self, l: usize) -> Result<(&[f32], &[f32]), ModelError> {
        let (k, v) = self.layers.get(l).ok_or_else(|| ModelError::Run(format!("no layer {l} in the cache")))?;
        Ok((f32s(k)?, f32s(v)?))
    }

    /// Layer `l`'s keys and values, writable (a cache filled block by block).
    pub fn layer_mut(&mut self, l: usize) -> Result<(&mut [f32], &mut [f32]), ModelError> {
        let (k, v) = self.layers.get_mut(l).ok_or_else(|| ModelError::Run(format!("no layer {l} in the cache")))?;
        Ok((k.try_extract_tensor_mut::<f32>().map_err(run_err)?.1, v.try_extract_tensor_mut::<f32>().map_err(run_err)?.1))
    }

    /// Counts the first `len` positions as held: written through [`Self::layer_mut`].
    pub fn set_len(&mut self, len: usize) -> Result<(), ModelError> {
        if len > self.capacity {
            return Err(ModelError::Run(format!("{len} positions in a cache with room for {}", self.capacity)));
        }
        self.len = len;
        Ok(())
    }

    /// The same positions in new buffers of `capacity` (at least `len`) positions; the
    /// old buffers go a layer at a time as the new ones are filled.
    pub fn resized(self, capacity: usize) -> Result<Self, ModelError> {
        let (old, len, heads, dim) = (self.capacity, self.len, self.kv_heads, self.head_dim);
        let shape = (self.layers.len(), heads, dim);
        let mut layers = self.layers.into_iter();
        Self::build(shape, len, capacity, |l, keys, values| {
            let (k, v) = layers.next().ok_or_else(|| ModelError::Run(format!("no layer {l} in the cache")))?;
            for (src, out) in [(f32s(&k)?, keys), (f32s(&v)?, values)] {
                for h in 0..heads {
                    out[h * capacity * dim..(h * capacity + len) * dim].copy_from_slice(&src[h * old * dim..(h * old + len) * dim]);
                }
            }
            Ok(())
        })
    }

    /// Keeps the first `len` positions (drops rejected speculative tokens).
    pub fn truncate(&mut self, len: usize) -> Result<(), ModelError> {
        if len >= self.len {
            return Ok(());
        }
        if self.capacity != self.len {
            // In-place buffers: the positions past `len` are simply overwritten later.
            self.len = len;
            return Ok(());
        }
        let (heads, dim, old) = (self.kv_heads, self.head_dim, self.len);
        let keep = |tensor: &[f32]| -> Vec<f32> {
            let mut kept = Vec::with_capacity(heads * len * dim);
            for h in 0..heads {
                let start = h * old * dim;
                kept.extend_from_slice(&tensor[start..start + len * dim]);
            }
            kept
        };
        let mut host = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let (k, v) = self.layer(l)?;
            host.push((keep(k), keep(v)));
        }
        *self = Self::from_host(host, len, heads, dim)?;
        Ok(())
    }
}
