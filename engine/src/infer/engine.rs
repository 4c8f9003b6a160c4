//! The inference engine of a node: one model, its decoder, and its KV block pool. A
//! request's prompt looks up its longest cached prefix in the pool and prefills only the
//! rest; the full blocks it computes go back to the pool for the next request (or a peer).

use std::time::Instant;

use crate::kv::{BLOCK_TOKENS, BlockPool, PoolConfig, PoolError, SharedPool, block_hashes};

use super::cache;
use super::prompt_cache::{Loan, PromptCache};
use super::decoder::{Decoder, KvState, Logits};
use super::model::{ModelDir, ModelError};
use super::sampling::{Sampler, Sampling};

/// Prompt tokens per forward pass of a prefill, by default: bounds the memory of a long
/// prompt (the pass's activations, attention scores `[heads, chunk, context]` the largest,
/// stay in ONNX Runtime's arena for the session's life). 192 prefills a 1,024-token
/// SmolLM2 prompt as fast as 256 did (1.86–1.99 against 1.93–1.98 s, int4) and peaks
/// 5 MB lower; 128 is no lower and a little slower.
pub const PREFILL_CHUNK: usize = 192;

/// Guesses per decode pass at most, by default ([`Engine::lookahead`]).
pub const LOOKAHEAD: usize = 4;

/// Tokens of earlier requests that lookahead guesses from, at most (newest kept).
pub const RECENT_TOKENS: usize = 16_384;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Keep each step's logits in [`Output::step_logits`] (tests, analysis): vocabulary x 4
    /// bytes per token.
    pub keep_logits: bool,
    /// Record each generated token's log-probability and this many most likely
    /// alternatives ([`Output::logprobs`]); `None`: none.
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 64, sampling: Sampling::default(), stop: Vec::new(), keep_logits: false, logprobs: None }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// A stop string was reached (it is not part of the text).
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller stopped it (`on_piece` returned `Break`).
    Cancelled,
}

/// A generated token's log-probability and the most likely alternatives at its step
/// (softmax of the raw logits at temperature 1, as OpenAI reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// The token alone, decoded (a token inside a multi-byte character shows U+FFFD).
    pub text: String,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<Alternative>,
}

/// One of the most likely tokens at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    pub token: u32,
    pub text: String,
    pub logprob: f32,
}

/// A part of the text as it is generated, with the log-probabilities of the tokens
/// generated since the previous piece (when asked for).
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub logprobs: &'a [TokenLogprob],
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<u32>,
    /// The logits each generated token was picked from (with `keep_logits`).
    pub step_logits: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the pool or were pushed into the
    /// prompt's cache (prefill skipped them).
    pub cached_tokens: usize,
    /// From the making of the prompt's cache to the first token's logits (a wait for
    /// blocks pushed into it included).
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub finish: Finish,
    /// One per generated token, with `GenerateOptions::logprobs`.
    pub logprobs: Vec<TokenLogprob>,
    /// Guesses carried by decode passes ([`Engine::lookahead`]).
    pub lookahead: Lookahead,
}

/// How the guesses of [`Engine::lookahead`] fared: each one the sampler then picked saved
/// a forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookahead {
    pub guessed: usize,
    pub right: usize,
}

impl Output {
    /// The caller stopped it before its end.
    pub fn cancelled(&self) -> bool {
        self.finish == Finish::Cancelled
    }
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
    /// Shared with whoever serves its blocks to peers.
    pub pool: SharedPool,
    /// Prompt tokens per prefill pass (at least 1).
    pub prefill_chunk: usize,
    /// Where the forward passes run.
    pub provider: super::decoder::Provider,
    /// At most this many guesses per decode pass (0: none). Where a decode pass runs 2
    /// rows anyway (int8 compute, `decoder.rs`), the rows after its token carry guesses of
    /// the next tokens (prompt lookup, as [`super::speculative`]); each guess the sampler
    /// then picks has its logits computed already, so its pass is saved. Rows of such
    /// passes do not depend on each other, so the output is the same bits either way,
    /// greedy or sampled. One guess rides in the free row; more are carried only while
    /// every guess of the last pass was right (the width doubles, and falls back to one
    /// more than the guesses taken). Guesses come from the sequence itself, then from
    /// the engine's earlier requests (up to [`RECENT_TOKENS`]).
    pub lookahead: usize,
    /// Earlier requests' prompts and outputs, newest last.
    recent: std::collections::VecDeque<Vec<u32>>,
}

impl Engine {
    /// An engine on the CPU.
    pub fn new(model: ModelDir, env: &ort::environment::Environment, threads: usize, pool: &PoolConfig) -> Result<Self, EngineError> {
        Self::new_on(model, env, threads, pool, super::decoder::Provider::Cpu)
    }

    /// An engine whose forward passes run on `provider`.
    pub fn new_on(model: ModelDir, env: &ort::environment::Environment, threads: usize, pool: &PoolConfig, provider: super::decoder::Provider) -> Result<Self, EngineError> {
        let decoder = Decoder::load_on(&model, env, threads, provider)?;
        let pool = SharedPool::new(BlockPool::new(model.id, model.config.kv_layout(), pool)?);
        Ok(Self { model, decoder, pool, prefill_chunk: PREFILL_CHUNK, provider, lookahead: LOOKAHEAD, recent: Default::default() })
    }

    /// Greedy output by prompt-lookup speculative decoding (no pool, no streaming): for
    /// comparing with plain decoding.
    pub fn speculative(&mut self, prompt: &[u32], max_tokens: usize, k: usize) -> Result<super::speculative::Speculated, EngineError> {
        let eos = self.model.config.eos_tokens();
        Ok(super::speculative::generate(&mut self.decoder, prompt, max_tokens, k, &eos)?)
    }

    /// Computes the KV blocks of `tokens` (whole blocks) into the pool, reusing those it
    /// holds, without generating: the prefill half of a disaggregated request. Returns how
    /// many of them were computed (0: all were held).
    pub fn prefill_blocks(&mut self, tokens: &[u32]) -> Result<usize, EngineError> {
        if tokens.is_empty() || !tokens.len().is_multiple_of(BLOCK_TOKENS) {
            return Err(ModelError::Run(format!("{} tokens are not whole blocks of {BLOCK_TOKENS}", tokens.len())).into());
        }
        let hashes = block_hashes(&self.model.id, tokens);
        if self.pool.lock().held_run(&hashes) == hashes.len() {
            return Ok(0);
        }
        let cache = self.prompt_cache(tokens, 0)?;
        let (_, state, loan, _) = self.prefill(cache, tokens)?;
        self.decoder.release();
        // The lent blocks come back cut from the cache, with the new ones.
        let stored = self.store(state, tokens)?;
        Ok(stored.saturating_sub(loan.blocks()))
    }

    /// The cache `prompt`'s run starts from (with room for `max_tokens` more where the
    /// graph appends in place): the longest run of its whole blocks the pool holds, lent
    /// rather than copied (they come back cut from the cache when the run ends). More of
    /// the prompt's blocks may be pushed into it before [`Self::generate_cached`].
    pub fn prompt_cache(&mut self, prompt: &[u32], max_tokens: usize) -> Result<PromptCache, EngineError> {
        let started = Instant::now();
        let layout = self.model.config.kv_layout();
        // Refused before anything is lent: a request that fails later loses the blocks it
        // was lent (its cache goes with it).
        let vocab = self.model.config.vocab_size;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab as usize) {
            return Err(ModelError::Run(format!("token {bad} is outside the vocabulary of {vocab}")).into());
        }
        let whole = prompt.len() / BLOCK_TOKENS;
        let cached = self.pool.lock().lend_prefix(prompt, whole)?;
        let loan = Loan { pool: self.pool.clone(), hashes: cached.iter().map(|b| b.hash).collect() };
        let reused = cached.len();
        // Room for the whole generation up front where the graph appends in place.
        let total = prompt.len() + max_tokens;
        let state = if cached.is_empty() {
            self.decoder.reserve(self.decoder.empty_cache()?, total)?
        } else {
            let capacity = self.decoder.capacity_for(reused * BLOCK_TOKENS, total);
            cache::state_of(layout, cached, capacity)?
        };
        tracing::debug!(blocks = reused, ms = started.elapsed().as_secs_f64() * 1e3, "prompt cache built");
        Ok(PromptCache::new(state, loan, prompt, layout, block_hashes(&self.model.id, &prompt[..whole * BLOCK_TOKENS]), started))
    }

    /// Prefills `prompt` from `cache` in chunks of `prefill_chunk` tokens and returns the
    /// last position's logits, the cache, the loan of the prompt blocks that came from
    /// the pool, and how many of the prompt's positions were reused. Storing the new
    /// blocks waits until the generation is over: it is not on the way to the first token.
    ///
    /// Every whole block of the prompt may be reused. When they cover the whole prompt
    /// (a prompt run before, or fetched whole from a peer) the last position is run again
    /// over its cached keys and values, for its logits (what vLLM does on a full hit):
    /// one position instead of a block of 16. Its keys and values come out the same as
    /// the block's with int8 compute (rows of passes of 2 or more are bit-identical however
    /// they are chunked, and a 1-token pass runs as 2 rows); with fp32 compute a 1-row
    /// pass rounds them within 1e-4, as every fp32 decode step does.
    fn prefill(&mut self, cache: PromptCache, prompt: &[u32]) -> Result<(Logits, KvState, Loan, usize), EngineError> {
        if cache.tokens != prompt {
            return Err(ModelError::Run("the prompt cache was made for another prompt".into()).into());
        }
        let started = Instant::now();
        // At least one token runs, for the logits.
        let start = (cache.blocks * BLOCK_TOKENS).min(prompt.len().saturating_sub(1));
        let PromptCache { state, loan, .. } = cache;
        let mut state = self.decoder.fit(state, start)?;
        let mut last = None;
        // Chunks bound the memory of a long prompt (logits are [chunk, vocab]) without
        // changing its result.
        for chunk in prompt[start..].chunks(self.prefill_chunk.max(1)) {
            let (logits, present) = self.decoder.forward_rows(chunk, state, 1)?;
            state = present;
            last = Some(logits);
        }
        let last = last.ok_or_else(|| ModelError::Run("nothing of the prompt was left to run".into()))?;
        tracing::debug!(reused = start, ms = started.elapsed().as_secs_f64() * 1e3, "prompt prefilled");
        Ok((last, state, loan, start))
    }

    fn token_logprob(&self, logits: &[f32], token: u32, top: usize) -> Result<TokenLogprob, ModelError> {
        let lp = super::sampling::logprobs(logits, token, top);
        let mut alternatives = Vec::with_capacity(lp.top.len());
        for (id, logprob) in lp.top {
            alternatives.push(Alternative { token: id, text: self.model.decode(&[id])?, logprob });
        }
        Ok(TokenLogprob { token, text: self.model.decode(&[token])?, logprob: lp.logprob, top: alternatives })
    }

    /// Generates after `prompt`; `on_text` receives the text as it grows.
    pub fn generate(&mut self, prompt: &[u32], options: &GenerateOptions, mut on_text: impl FnMut(&str)) -> Result<Output, EngineError> {
        self.generate_until(prompt, options, |piece| {
            on_text(piece.text);
            std::ops::ControlFlow::Continue(())
        })
    }

    /// [`Self::generate`], piece by piece (text and, when asked, log-probabilities),
    /// stopped early when `on_piece` returns `Break` (a client that went away): the output
    /// so far comes back as [`Finish::Cancelled`], and its blocks are kept.
    pub fn generate_until(&mut self, prompt: &[u32], options: &GenerateOptions, on_piece: impl FnMut(Piece<'_>) -> std::ops::ControlFlow<()>) -> Result<Output, EngineError> {
        // An empty prompt makes an empty cache; `generate_cached` refuses it.
        let cache = self.prompt_cache(prompt, options.max_tokens)?;
        self.generate_cached(cache, prompt, options, on_piece)
    }

    /// [`Self::generate_until`] from `cache`, the one [`Self::prompt_cache`] made for
    /// `prompt` (with the blocks pushed into it since).
    pub fn generate_cached(
        &mut self,
        cache: PromptCache,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_piece: impl FnMut(Piece<'_>) -> std::ops::ControlFlow<()>,
    ) -> Result<Output, EngineError> {
        if prompt.is_empty() {
            return Err(ModelError::Run("the prompt has no tokens".into()).into());
        }
        // From the cache's making on: its build, and any wait for blocks pushed into it.
        let started = cache.started;
        let (mut last, mut state, loan, cached_tokens) = self.prefill(cache, prompt)?;
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
            finish: Finish::Length,
            logprobs: Vec::new(),
            lookahead: Lookahead::default(),
        };
        let mut text = TextStream::default();
        let longest_stop = options.stop.iter().map(String::len).max().unwrap_or(0);
        // Bytes of `out.text` handed to `on_text`: never a part of a stop string.
        let mut emitted = 0usize;
        // Log-probabilities handed to `on_piece`.
        let mut emitted_logprobs = 0usize;
        // The row of `last` this step picks from; the guesses its pass carried (row i + 1
        // follows guess i); the guesses the next pass may carry.
        let (mut row, mut guesses, mut width) = (last.rows() - 1, Vec::new(), 1usize);
        let mut sequence = prompt.to_vec();
        while out.tokens.len() < options.max_tokens {
            let logits = last.row(row);
            let token = sampler.pick(logits);
            if options.keep_logits {
                out.step_logits.push(logits.to_vec());
            }
            if eos.contains(&token) {
                out.finish = Finish::Eos;
                break;
            }
            out.tokens.push(token);
            sequence.push(token);
            if let Some(top) = options.logprobs {
                out.logprobs.push(self.token_logprob(logits, token, top)?);
            }
            if let Some(piece) = text.next(&self.model, &out.tokens)? {
                if push_text(&mut out.text, &piece, &options.stop, longest_stop) {
                    out.finish = Finish::Stop;
                    break;
                }
                // Hold back what could be the start of a stop string.
                let safe = floor_char_boundary(&out.text, out.text.len().saturating_sub(longest_stop.saturating_sub(1)));
                if safe > emitted {
                    let flow = on_piece(Piece { text: &out.text[emitted..safe], logprobs: &out.logprobs[emitted_logprobs..] });
                    emitted = safe;
                    emitted_logprobs = out.logprobs.len();
                    if flow.is_break() {
                        out.finish = Finish::Cancelled;
                        break;
                    }
                }
            }
            if out.tokens.len() == options.max_tokens {
                break;
            }
            if guesses.get(row) == Some(&token) {
                // The next row already follows this token.
                out.lookahead.right += 1;
                row += 1;
                continue;
            }
            if !guesses.is_empty() {
                // The guesses from this row on were wrong: their keys and values are past
                // the sequence's end now.
                let wrong = guesses.len() - row;
                state.truncate(state.len() - wrong)?;
                width = if wrong == 0 { (width * 2).min(self.lookahead) } else { row + 1 };
            }
            // At most one guess more than picks are left (the first is free), and no more
            // than the decoder has rows for.
            let room = options.max_tokens - out.tokens.len() - 1;
            let fits = self.decoder.guess_room(state.len());
            guesses = if self.lookahead > 0 && fits > 0 {
                let recent = self.recent.iter().rev().map(Vec::as_slice);
                super::speculative::draft_among(&sequence, recent, width.min(room.max(1)).min(fits).min(self.lookahead))
            } else {
                Vec::new()
            };
            out.lookahead.guessed += guesses.len();
            let (logits, present) = self.decoder.forward(&[&[token][..], &guesses].concat(), state)?;
            (state, last, row) = (present, logits, 0);
        }
        if !guesses.is_empty() {
            // Guesses not taken: their positions are not part of the sequence.
            state.truncate(state.len() - (guesses.len() - row))?;
        }
        if matches!(out.finish, Finish::Eos | Finish::Length) {
            // A tail held back as an incomplete character.
            let rest = text.rest(&self.model, &out.tokens)?;
            if push_text(&mut out.text, &rest, &options.stop, longest_stop) {
                out.finish = Finish::Stop;
            }
        }
        if (out.text.len() > emitted || out.logprobs.len() > emitted_logprobs) && !out.cancelled() {
            let _ = on_piece(Piece { text: &out.text[emitted..], logprobs: &out.logprobs[emitted_logprobs..] });
        }
        out.decode_secs = decode_started.elapsed().as_secs_f64();
        self.decoder.release();
        // The new full blocks of the prompt, and of the generated text (multi-turn prompts
        // come back with it), go to the pool.
        let all = sequence;
        // Lent blocks come back cut from the cache.
        self.store(state, &all)?;
        drop(loan);
        self.remember(all);
        Ok(out)
    }

    /// Cuts the full blocks of `state` (which holds `tokens`) that the pool does not hold —
    /// new ones and lent ones — into the pool, and says how many. Blocks it holds already
    /// (a repeated request's) are not cut again.
    fn store(&self, state: KvState, tokens: &[u32]) -> Result<usize, EngineError> {
        let layout = self.model.config.kv_layout();
        let blocks = cache::blocks_of(self.model.id, layout, state, tokens, |hash| self.pool.lock().tier_of(hash).is_none())?;
        let stored = blocks.len();
        let mut pool = self.pool.lock();
        for block in blocks {
            pool.insert(block)?;
        }
        Ok(stored)
    }

    /// Keeps `sequence` for later requests' guesses, within [`RECENT_TOKENS`].
    fn remember(&mut self, mut sequence: Vec<u32>) {
        if sequence.len() > RECENT_TOKENS {
            sequence.drain(..sequence.len() - RECENT_TOKENS);
        }
        let mut held: usize = self.recent.iter().map(Vec::len).sum::<usize>() + sequence.len();
        while held > RECENT_TOKENS {
            match self.recent.pop_front() {
                Some(old) => held -= old.len(),
                None => break,
            }
        }
        self.recent.push_back(sequence);
    }
}

/// Incremental detokenization: each step decodes only the last few tokens (a byte-level
/// token can end inside a character, so a window starts at the last emitted piece).
#[derive(Debug, Default)]
struct TextStream {
    /// Tokens before this one are done with.
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

impl TextStream {
    /// The new text after `tokens` grew by one, unless it ends inside a character.
    fn next(&mut self, model: &ModelDir, tokens: &[u32]) -> Result<Option<String>, ModelError> {
        let before = model.decode(&tokens[self.prefix..self.read])?;
        let now = model.decode(&tokens[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prefix = self.read;
            self.read = tokens.len();
            return Ok(Some(now[before.len()..].to_owned()));
        }
        Ok(None)
    }

    /// Whatever was held back, at the end.
    fn rest(&self, model: &ModelDir, tokens: &[u32]) -> Result<String, ModelError> {
        let before = model.decode(&tokens[self.prefix..self.read.min(tokens.len())])?;
        let now = model.decode(&tokens[self.prefix..])?;
        Ok(if now.len() > before.len() && now.is_char_boundary(before.len()) { now[before.len()..].to_owned() } else { String::new() })
    }
}

/// Appends `piece` to `text`; if that completes a stop string, cuts `text` where the
/// first one starts and says so. Only the tail a new stop string can lie in is searched.
fn push_text(text: &mut String, piece: &str, stops: &[String], longest_stop: usize) -> bool {
    let from = floor_char_boundary(text, text.len().saturating_sub(longest_stop));
    text.push_str(piece);
    let first = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text[from..].find(s.as_str()).map(|at| from + at)).min();
    if let Some(at) = first {
        text.truncate(at);
    }
    first.is_some()
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}
