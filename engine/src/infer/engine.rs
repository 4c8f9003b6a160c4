//! The inference engine of a node: one model, its decoder, and its KV block pool. A
//! request's prompt looks up its longest cached prefix in the pool and prefills only the
//! rest; the full blocks it computes go back to the pool for the next request (or a peer).

use std::time::Instant;

use crate::kv::{BLOCK_TOKENS, BlockPool, PoolConfig, PoolError, block_hashes, hash::ROOT};

use super::cache;
use super::decoder::{Decoder, KvState};
use super::model::{ModelDir, ModelError};
use super::sampling::{Sampler, Sampling};

/// Prompt tokens per forward pass of a prefill.
pub const PREFILL_CHUNK: usize = 128;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 64, sampling: Sampling::default(), stop: Vec::new() }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<u32>,
    /// The logits each generated token was picked from.
    pub step_logits: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the pool (prefill skipped them).
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A model ready to generate.
#[derive(Debug)]
pub struct Engine {
    pub model: ModelDir,
    decoder: Decoder,
    pub pool: BlockPool,
}

impl Engine {
    pub fn new(model: ModelDir, env: &ort::environment::Environment, threads: usize, pool: &PoolConfig) -> Result<Self, EngineError> {
        let decoder = Decoder::load(&model, env, threads)?;
        let pool = BlockPool::new(model.id, model.config.kv_layout(), pool)?;
        Ok(Self { model, decoder, pool })
    }

    /// Greedy output by prompt-lookup speculative decoding (no pool, no streaming): for
    /// comparing with plain decoding.
    pub fn speculative(&mut self, prompt: &[u32], max_tokens: usize, k: usize) -> Result<super::speculative::Speculated, EngineError> {
        let eos = self.model.config.eos_tokens();
        Ok(super::speculative::generate(&mut self.decoder, prompt, max_tokens, k, &eos)?)
    }

    /// Prefills `prompt` (reusing cached blocks) in chunks of [`PREFILL_CHUNK`] tokens and
    /// returns the last position's logits, the cache, and how many prompt blocks came from
    /// the pool. Storing the new blocks waits until the generation is over: it is not on
    /// the way to the first token.
    fn prefill(&mut self, prompt: &[u32], max_tokens: usize) -> Result<(Vec<f32>, KvState, usize), EngineError> {
        let layout = self.model.config.kv_layout();
        let mut cached = self.pool.longest_prefix(prompt)?;
        // At least one token must run to get logits.
        while !cached.is_empty() && cached.len() * BLOCK_TOKENS >= prompt.len() {
            cached.pop();
        }
        let reused = cached.len();
        // Room for the whole generation up front where the graph appends in place.
        let total = prompt.len() + max_tokens;
        let mut state = if cached.is_empty() {
            self.decoder.reserve(self.decoder.empty_cache()?, total)?
        } else {
            let capacity = self.decoder.capacity_for(reused * BLOCK_TOKENS, total);
            cache::state_of(self.decoder.arena(), layout, &cached, capacity)?
        };
        drop(cached);
        let mut last = Vec::new();
        // Chunks bound the memory of a long prompt (logits are [chunk, vocab]) without
        // changing its result.
        for chunk in prompt[reused * BLOCK_TOKENS..].chunks(PREFILL_CHUNK) {
            let (logits, present) = self.decoder.forward(chunk, state)?;
            state = present;
            last = logits.last().to_vec();
        }
        Ok((last, state, reused))
    }

    /// Generates after `prompt`; `on_text` receives the text as it grows.
    pub fn generate(&mut self, prompt: &[u32], options: &GenerateOptions, mut on_text: impl FnMut(&str)) -> Result<Output, EngineError> {
        if prompt.is_empty() {
            return Err(ModelError::Run("the prompt has no tokens".into()).into());
        }
        let started = Instant::now();
        let (mut last, mut state, reused_blocks) = self.prefill(prompt, options.max_tokens)?;
        let cached_tokens = reused_blocks * BLOCK_TOKENS;
        let prefill_secs = started.elapsed().as_secs_f64();
        let decode_started = Instant::now();
        let eos = self.model.config.eos_tokens();
        let mut sampler = Sampler::new(options.sampling);
        let mut out = Output {
            text: String::new(),
            tokens: Vec::new(),
            step_logits: Vec::new(),
            prompt_tokens: prompt.len(),
            cached_tokens,
            prefill_secs,
            decode_secs: 0.0,
        };
        let mut shown = 0usize;
        while out.tokens.len() < options.max_tokens {
            let token = sampler.pick(&last);
            out.step_logits.push(std::mem::take(&mut last));
            if eos.contains(&token) {
                break;
            }
            out.tokens.push(token);
            let text = self.model.decode(&out.tokens)?;
            if let Some(at) = options.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                out.text = text[..at].to_owned();
                if at > shown {
                    on_text(&out.text[shown..]);
                }
                shown = out.text.len();
                break;
            }
            // Hold back an incomplete UTF-8 sequence (shown as U+FFFD) until it completes.
            let stable = text.trim_end_matches('\u{FFFD}');
            if stable.len() > shown && stable.is_char_boundary(shown) {
                on_text(&stable[shown..]);
                shown = stable.len();
            }
            out.text = text;
            if out.tokens.len() == options.max_tokens {
                break;
            }
            let (logits, present) = self.decoder.forward(&[token], state)?;
            state = present;
            last = logits.last().to_vec();
        }
        if out.text.len() > shown && out.text.is_char_boundary(shown) {
            on_text(&out.text[shown..]);
        }
        out.decode_secs = decode_started.elapsed().as_secs_f64();
        self.decoder.release();
        // The new full blocks of the prompt, and of the generated text (multi-turn prompts
        // come back with it), go to the pool.
        let mut all = prompt.to_vec();
        all.extend(&out.tokens);
        let parent = if reused_blocks == 0 { ROOT } else { block_hashes(&self.model.id, &prompt[..reused_blocks * BLOCK_TOKENS])[reused_blocks - 1] };
        for block in cache::blocks_of(self.model.id, self.model.config.kv_layout(), &state, &all, reused_blocks, parent)? {
            self.pool.insert(block)?;
        }
        Ok(out)
    }
}
