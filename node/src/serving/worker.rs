//! The worker thread of one model: load it, measure it, say ready, then serve jobs in
//! order until every handle is gone.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use pyagent_engine::infer::{self, Engine, GenerateOptions, PromptCache, Provider};
use pyagent_engine::kv::{BLOCK_TOKENS, KvBlock, PoolConfig, SharedPool, block_hashes};
use pyagent_protocol::InferenceCapacity;
use tokio::sync::{mpsc, oneshot};

use super::prompt::PromptTokenizer;
use super::rates::RunSample;
use super::{BlockSource, Chunk, DEFAULT_CONTEXT, Load, ModelInfo, REST_OF_CONTEXT, ServeConfig, ServeError, SourceSlot, Work};
use crate::config::ProviderChoice;

/// Prompt and output sizes of the start-up measurement.
const PROBE_PROMPT_TOKENS: usize = 64;
const PROBE_DECODE_TOKENS: usize = 16;

/// What a loaded worker hands its handle.
pub(super) struct Loaded {
    pub capacity: InferenceCapacity,
    pub info: ModelInfo,
    pub load: Arc<Load>,
    pub pool: SharedPool,
    pub tokenizer: Arc<PromptTokenizer>,
}

type Ready = oneshot::Sender<Result<Loaded, ServeError>>;

pub(super) fn serve(config: ServeConfig, mut jobs: mpsc::Receiver<Work>, ready: Ready, source: SourceSlot) {
    let stats = Arc::new(Load::default());
    let (mut engine, tokenizer) = match load(&config) {
        Ok((engine, capacity, info)) => {
            publish_pool(&engine, &stats);
            stats.rates.prefill.probe(capacity.prefill_tokens_per_s);
            stats.rates.decode.probe(capacity.decode_tokens_per_s);
            let tokenizer = Arc::new(PromptTokenizer::of(&engine.model));
            let loaded = Loaded { capacity, info, load: stats.clone(), pool: engine.pool.clone(), tokenizer: tokenizer.clone() };
            if ready.send(Ok(loaded)).is_err() {
                return;
            }
            (engine, tokenizer)
        }
        Err(reason) => {
            let _ = ready.send(Err(ServeError::Load { model: config.model.clone(), reason }));
            return;
        }
    };
    let context = context_length(&engine);
    while let Some(work) = jobs.blocking_recv() {
        let mut job = match work {
            Work::Generate(job) => job,
            Work::Prefill(job) => {
                if !job.reply.is_closed() {
                    let result = engine.prefill_blocks(&job.tokens).map_err(|e| ServeError::Generate(e.to_string()));
                    after_job(&engine, &stats, &source);
                    let _ = job.reply.send(result);
                }
                continue;
            }
        };
        if job.reply.is_closed() || job.pieces.as_ref().is_some_and(mpsc::Sender::is_closed) {
            continue; // the caller gave up while queued
        }
        let result = tokenizer.tokens(&job.prompt).and_then(|prompt| {
            if job.options.max_tokens == REST_OF_CONTEXT {
                job.options.max_tokens = context.saturating_sub(prompt.len());
            }
            if prompt.len() + job.options.max_tokens > context || job.options.max_tokens == 0 {
                return Err(ServeError::ContextLength { prompt: prompt.len(), max_tokens: job.options.max_tokens, context });
            }
            // The fetch starts first: the cache's buffers are allocated while its first
            // blocks are on their way, and the blocks go into them as they come.
            let fetching = source.get().and_then(|source| start_fetch(&engine, source.as_ref(), &prompt));
            let mut cache = engine.prompt_cache(&prompt, job.options.max_tokens).map_err(|e| ServeError::Generate(e.to_string()))?;
            if let Some((from, incoming)) = fetching {
                take_fetched(&mut cache, from, incoming);
            }
            let pieces = job.pieces.take();
            let load = &mut job.load;
            let mut first = true;
            engine
                .generate_cached(cache, &prompt, &job.options, |piece| {
                    if std::mem::take(&mut first) {
                        load.prefilled();
                    }
                    match &pieces {
                        // Waits while the caller's buffer is full; a caller gone stops the run.
                        Some(tx) => match tx.blocking_send(Chunk { text: piece.text.to_owned(), logprobs: piece.logprobs.to_vec() }) {
                            Ok(()) => ControlFlow::Continue(()),
                            Err(_) => ControlFlow::Break(()),
                        },
                        None => ControlFlow::Continue(()),
                    }
                })
                .map_err(|e| ServeError::Generate(e.to_string()))
        });
        if let Ok(out) = &result {
            stats.lookahead_guessed.fetch_add(out.lookahead.guessed as u64, Ordering::Relaxed);
            stats.lookahead_right.fetch_add(out.lookahead.right as u64, Ordering::Relaxed);
            stats.rates.observe(&RunSample {
                prompt_tokens: out.prompt_tokens,
                cached_tokens: out.cached_tokens,
                prefill_secs: out.prefill_secs,
                generated: out.tokens.len(),
                decode_secs: out.decode_secs,
            });
        }
        after_job(&engine, &stats, &source);
        let _ = job.reply.send(result);
    }
    tracing::debug!("model-serving worker stopped");
}

/// After each job: the pool's counters published, the blocks it dropped offloaded.
fn after_job(engine: &Engine, stats: &Load, source: &SourceSlot) {
    let counts = |s: &Load| (s.kv_blocks.load(Ordering::Relaxed), s.kv_misses.load(Ordering::Relaxed), s.kv_evicted.load(Ordering::Relaxed));
    let before = counts(stats);
    publish_pool(engine, stats);
    // Taken whether or not there is a source: the pool keeps them until then.
    let dropped = engine.pool.lock().take_dropped();
    let Some(source) = source.get() else { return };
    if counts(stats) != before {
        source.pool_changed();
    }
    if !dropped.is_empty() {
        source.offload(dropped);
    }
}

/// The pool's counters, for `/metrics`.
fn publish_pool(engine: &Engine, load: &Load) {
    let pool = engine.pool.lock();
    let stats = pool.stats();
    load.kv_hits.store(stats.hits, Ordering::Relaxed);
    load.kv_misses.store(stats.misses, Ordering::Relaxed);
    load.kv_evicted.store(stats.dropped, Ordering::Relaxed);
    let counts = pool.counts();
    load.kv_blocks.store(counts.iter().map(|(_, n)| *n as u64).sum(), Ordering::Relaxed);
    let host_blocks = counts.iter().filter(|(t, _)| *t == pyagent_engine::kv::Tier::Host).map(|(_, n)| *n as u64).sum::<u64>();
    load.kv_host_bytes.store(host_blocks * engine.model.config.kv_layout().block_bytes() as u64, Ordering::Relaxed);
}

/// The model's context: its config's `max_position_embeddings`, or [`DEFAULT_CONTEXT`].
fn context_length(engine: &Engine) -> usize {
    engine.model.config.max_position_embeddings.map_or(DEFAULT_CONTEXT, |m| m as usize)
}

/// Starts fetching from peers the prompt's whole blocks after those the pool holds; none
/// when it holds them all or there is nothing to fetch from. Returns where the fetch
/// starts (a block number) and where its blocks arrive.
fn start_fetch(engine: &Engine, source: &dyn BlockSource, prompt: &[u32]) -> Option<(usize, mpsc::Receiver<KvBlock>)> {
    let tokens = &prompt[..prompt.len() / BLOCK_TOKENS * BLOCK_TOKENS];
    let hashes = block_hashes(&engine.model.id, tokens);
    let local = engine.pool.lock().held_run(&hashes);
    if local == hashes.len() {
        return None;
    }
    source.fetch(engine.model.id, engine.model.config.kv_layout(), tokens, &hashes, local).map(|incoming| (local, incoming))
}

/// Puts the fetched blocks (block `from` on) into the prompt's cache as they arrive, so
/// prefill skips them. Whatever is not fetched (none held, a dead peer, a bad block) is
/// computed; the fetched blocks join the pool when the run ends, cut from the cache like
/// the rest. Blocks the cache got from the pool meanwhile are skipped.
fn take_fetched(cache: &mut PromptCache, from: usize, mut incoming: mpsc::Receiver<KvBlock>) {
    let mut index = from;
    // The worker's own thread, outside the runtime: waiting here holds only this model.
    while let Some(block) = incoming.blocking_recv() {
        index += 1;
        if index <= cache.blocks() {
            continue;
        }
        if let Err(e) = cache.push(&block) {
            tracing::warn!("a fetched KV block was not used: {e}");
            return; // dropping `incoming` stops the fetch
        }
    }
}

fn load(config: &ServeConfig) -> Result<(Engine, InferenceCapacity, ModelInfo), String> {
    let env = infer::environment(config.ort_lib.as_deref()).map_err(|e| e.to_string())?;
    let model = infer::ModelDir::open(&config.model).map_err(|e| e.to_string())?;
    let (id, bytes) = (model.id.to_string(), model.bytes);
    let name = model_name(&config.model);
    let created = std::fs::metadata(&model.onnx)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let chat = model.chat_template().is_ok();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pool = PoolConfig { host_bytes: config.kv_host_bytes, ..Default::default() };
    let mut engine = match choose_provider(config.provider, config.vram_free.is_some()) {
        Provider::Cpu => Engine::new(model, env, threads, &pool).map_err(|e| e.to_string())?,
        cuda => match Engine::new_on(model, env, threads, &pool, cuda) {
            Ok(engine) => engine,
            Err(e) if config.provider == ProviderChoice::Auto => {
                tracing::warn!(model = %config.model.display(), "running on the CPU: {e}");
                let model = infer::ModelDir::open(&config.model).map_err(|e| e.to_string())?;
                Engine::new(model, env, threads, &pool).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(format!("{e} (inference.provider = cuda; use auto to fall back to the CPU)")),
        },
    };
    engine.lookahead = config.lookahead;
    let vocab = engine.model.config.vocab_size.clamp(2, 256);
    let prompt: Vec<u32> = (0..PROBE_PROMPT_TOKENS as u32).map(|i| (i * 7 + 3) % vocab).collect();
    let started = Instant::now();
    let options = GenerateOptions { max_tokens: PROBE_DECODE_TOKENS, ..Default::default() };
    // The rate of the passes themselves: lookahead would guess the probe's periodic
    // prompt right and advertise a rate that ordinary text does not get.
    let lookahead = std::mem::replace(&mut engine.lookahead, 0);
    let out = engine.generate(&prompt, &options, |_| {});
    engine.lookahead = lookahead;
    let out = out.map_err(|e| e.to_string())?;
    let rate = |n: usize, secs: f64| if secs > 0.0 { (n as f64 / secs).round() as u32 } else { 0 };
    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "inference probe");
    let context = context_length(&engine);
    let capacity = InferenceCapacity {
        name: name.clone(),
        model_id: id,
        context_length: u32::try_from(context).unwrap_or(u32::MAX),
        chat,
        queued_requests: 0,
        queued_prefill_tokens: 0,
        queued_decode_tokens: 0,
        kv_free_bytes: config.kv_host_bytes,
        model_bytes: bytes,
        kv_budget_bytes: config.kv_host_bytes,
        fits: match (engine.provider, config.vram_free) {
            // On a GPU the weights live in its memory; the KV pool stays in RAM.
            (Provider::Cuda { .. }, Some(vram)) => bytes <= vram && config.kv_host_bytes <= config.ram_available,
            _ => bytes.saturating_add(config.kv_host_bytes) <= config.ram_available,
        },
        provider: engine.provider.to_string(),
        prefill_tokens_per_s: rate(out.prompt_tokens, out.prefill_secs),
        decode_tokens_per_s: rate(out.tokens.len(), out.decode_secs),
        kv_blocks: Default::default(),
        role: config.role,
        compute: engine.model.compute.mode.to_string(),
    };
    let info = ModelInfo { name, context_length: context, chat, created };
    Ok((engine, capacity, info))
}

/// The provider to try first: CUDA when asked for, or (auto) when a GPU was found.
fn choose_provider(choice: ProviderChoice, gpu: bool) -> Provider {
    match choice {
        ProviderChoice::Cuda => Provider::Cuda { device: 0 },
        ProviderChoice::Auto if gpu => Provider::Cuda { device: 0 },
        ProviderChoice::Auto | ProviderChoice::Cpu => Provider::Cpu,
    }
}

/// A model's name: its directory's name (`target/models/smollm2-int4` → `smollm2-int4`).
pub(crate) fn model_name(dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    dir.file_name().map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned())
}
