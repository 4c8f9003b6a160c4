//! The model-serving workers: one actor per hosted model owns its inference [`Engine`]
//! on a thread of its own, for as long as the node runs. Requests reach it over a bounded
//! inbox; a full inbox is an immediate [`ServeError::Overloaded`], never an unbounded wait.
//! At start a worker loads its model and measures prefill and decode speed, which the node
//! advertises — then follows what its runs measure ([`rates`]).
//!
//! Without a model, or when the runtime or a model cannot be loaded, the node runs on
//! without it, says why, and advertises no capacity for it.
//!
//! A request names its prompt as tokens, text, or chat messages ([`Prompt`]): the worker
//! renders chat messages with the model's own chat template and tokenizes on its thread,
//! so a requester needs neither the model nor its tokenizer. It is answered whole
//! ([`ModelWorker::generate`]) or streamed in [`Chunk`]s ([`ModelWorker::generate_stream`]);
//! dropping the stream cancels the generation.
//!
//! Before prefill a worker asks its [`BlockSource`] (the swarm's KV exchange, once the
//! network runs) for the prompt's prefix blocks its pool lacks; its pool is shared with
//! the node so peers can fetch its blocks while it computes.
//!
//! - [`worker`]: the thread: load, measure, fetch the prefix, serve.
//! - [`prompt`]: prompts to tokens (shared by the worker and the placing node).
//! - [`placement`]: where a request runs — the cost function over the peers' adverts (pure).
//! - [`rates`]: the prefill and decode rates advertised: the start-up probe's, then the
//!   runs' own (no I/O; unit-tested on its own).

pub mod placement;
pub mod prompt;
pub mod rates;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use pyagent_engine::chat::ChatMessage;
use pyagent_engine::infer::{GenerateOptions, Output, TokenLogprob};
use pyagent_engine::kv::{BlockHash, KvBlock, KvLayout, ModelId, SharedPool};
use pyagent_protocol::InferenceCapacity;
use pyagent_protocol::kv::{KvSummary, MAX_SUMMARIES_BYTES, MAX_SUMMARY_BYTES};
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the engine; beyond that, [`ServeError::Overloaded`].
pub const SERVE_QUEUE: usize = 64;
/// Pieces of text in flight between the worker and a streaming caller; a caller that
/// reads no further holds the engine there (backpressure) until it reads or goes.
pub const STREAM_PIECES: usize = 16;
/// `GenerateOptions::max_tokens` that asks for as many tokens as the model's context has
/// room for after the prompt.
pub const REST_OF_CONTEXT: usize = usize::MAX;
/// Context length assumed for a model whose config does not give one.
pub const DEFAULT_CONTEXT: usize = 2048;

/// Where a worker gets the prefix blocks its pool lacks.
pub trait BlockSource: Send + Sync + std::fmt::Debug {
    /// Starts fetching blocks `hashes[from..]` (the blocks of `tokens`), as many from the
    /// start of that run as peers hold or (on a decode node) a prefill peer computes,
    /// each checked against its hash, the model and `layout`. They arrive in order on the
    /// receiver, maybe none; it closes when the fetch is done or past its deadline, and
    /// dropping it stops the fetch. Returns at once.
    fn fetch(&self, model: ModelId, layout: KvLayout, tokens: &[u32], hashes: &[BlockHash], from: usize) -> Option<mpsc::Receiver<KvBlock>>;

    /// The pool's blocks changed (stored, fetched or dropped): peers should hear of it
    /// soon (returns at once).
    fn pool_changed(&self);

    /// Blocks the pool had to drop: hand them to a peer with room, if any (returns at
    /// once; may let them go).
    fn offload(&self, blocks: Vec<Arc<KvBlock>>);
}

/// The block source the workers share, set once the network runs.
pub type SourceSlot = Arc<OnceLock<Arc<dyn BlockSource>>>;

/// What a worker needs to load a model.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub kv_host_bytes: u64,
    /// RAM available at start, to say whether the model and its KV budget fit.
    pub ram_available: u64,
    /// Where to run it.
    pub provider: crate::config::ProviderChoice,
    /// Free VRAM of GPU 0, when NVML found one (auto then tries CUDA).
    pub vram_free: Option<u64>,
    /// The node's part in serving (`--role`), advertised with the model.
    pub role: pyagent_protocol::InferenceRole,
    /// Guesses per decode pass at most (`Engine::lookahead`).
    pub lookahead: usize,
}

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the model {model}: {reason}")]
    Load { model: PathBuf, reason: String },
    #[error("the model is busy: {SERVE_QUEUE} requests are waiting; try again later or on another node")]
    Overloaded,
    #[error("the model-serving worker has stopped")]
    Stopped,
    /// The prompt cannot be made into tokens (bad chat messages, no template, empty).
    #[error("{0}")]
    BadPrompt(String),
    #[error("the prompt has {prompt} tokens and {max_tokens} more were asked for, but the model's context is {context} tokens; shorten the prompt or lower max_tokens")]
    ContextLength { prompt: usize, max_tokens: usize, context: usize },
    /// The prompt and `max_tokens` do not fit the context (as a peer said it).
    #[error("{0}")]
    TooLong(String),
    #[error("generation failed: {0}")]
    Generate(String),
    /// The peer asked does not serve the model (any more).
    #[error("{0}")]
    NotServed(String),
    /// The executing peer could not be reached, or went away before the end.
    #[error("the peer running the request went away: {0}")]
    PeerGone(String),
}

impl ServeError {
    /// Another peer may serve what this one could not (before any token was sent).
    pub fn try_elsewhere(&self) -> bool {
        matches!(self, Self::Overloaded | Self::Stopped | Self::NotServed(_) | Self::PeerGone(_))
    }
}

/// A prompt as the requester has it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Tokens(Vec<u32>),
    /// Tokenized by the model's tokenizer.
    Text(String),
    /// Rendered with the model's chat template (with the generation prompt), then
    /// tokenized.
    Chat(Vec<ChatMessage>),
}

impl From<Vec<u32>> for Prompt {
    fn from(tokens: Vec<u32>) -> Self {
        Self::Tokens(tokens)
    }
}

/// A piece of a streamed generation: its text, and the log-probabilities of the tokens
/// generated since the previous piece (when asked for).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// A streamed generation: `pieces` as they come, then the whole output.
#[derive(Debug)]
pub struct Stream {
    pub pieces: mpsc::Receiver<Chunk>,
    pub done: oneshot::Receiver<Result<Output, ServeError>>,
}

/// What a hosted model is, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients ask for: the model directory's name (e.g. `smollm2-int4`).
    pub name: String,
    /// Prompt plus generated tokens at most.
    pub context_length: usize,
    /// Whether chat requests can be rendered (the model ships a chat template).
    pub chat: bool,
    /// Created time for `/v1/models`: the model file's modification time, Unix seconds.
    pub created: u64,
}

/// Work waiting at or running in a worker: what placement and `/metrics` read.
#[derive(Debug, Default)]
pub struct Load {
    /// Requests queued or running.
    pub requests: AtomicU64,
    /// Prompt tokens of those requests not yet prefilled, plus tokens still to decode
    /// (at most their `max_tokens`).
    pub prompt_tokens: AtomicU64,
    pub decode_tokens: AtomicU64,
    /// The KV block pool, after the last request: prefix lookups that found a block and
    /// that did not, blocks held, blocks evicted.
    pub kv_hits: AtomicU64,
    pub kv_misses: AtomicU64,
    pub kv_blocks: AtomicU64,
    pub kv_evicted: AtomicU64,
    /// Bytes of KV blocks held in host memory.
    pub kv_host_bytes: AtomicU64,
    /// Lookahead (this run): tokens guessed in decode passes, and those the sampler took.
    pub lookahead_guessed: AtomicU64,
    pub lookahead_right: AtomicU64,
    /// The prefill and decode rates to advertise (tokens/s).
    pub rates: rates::Rates,
}

/// A request's share of [`Load`], given back when it is done (or dropped).
struct LoadGuard {
    load: Arc<Load>,
    prompt: u64,
    decode: u64,
}

impl LoadGuard {
    fn new(load: &Arc<Load>, prompt: u64, decode: u64) -> Self {
        load.requests.fetch_add(1, Ordering::Relaxed);
        load.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        load.decode_tokens.fetch_add(decode, Ordering::Relaxed);
        Self { load: load.clone(), prompt, decode }
    }

    /// The prompt is prefilled: only decoding is left.
    fn prefilled(&mut self) {
        self.load.prompt_tokens.fetch_sub(std::mem::take(&mut self.prompt), Ordering::Relaxed);
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.requests.fetch_sub(1, Ordering::Relaxed);
        self.load.prompt_tokens.fetch_sub(self.prompt, Ordering::Relaxed);
        self.load.decode_tokens.fetch_sub(self.decode, Ordering::Relaxed);
    }
}

struct Job {
    prompt: Prompt,
    options: GenerateOptions,
    /// Streamed: each piece as it is generated; the generation stops when the receiver
    /// is dropped.
    pieces: Option<mpsc::Sender<Chunk>>,
    reply: oneshot::Sender<Result<Output, ServeError>>,
    load: LoadGuard,
}

/// The prefill half of a request a decode node hands over: compute the blocks of
/// `tokens` into the pool; the reply says how many were computed.
struct PrefillJob {
    tokens: Vec<u32>,
    reply: oneshot::Sender<Result<usize, ServeError>>,
    _load: LoadGuard,
}

/// What a worker's inbox carries.
enum Work {
    Generate(Job),
    Prefill(PrefillJob),
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Generate(job) => job.fmt(f),
            Self::Prefill(job) => f.debug_struct("PrefillJob").field("tokens", &job.tokens.len()).finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("max_tokens", &self.options.max_tokens).finish_non_exhaustive()
    }
}

/// Handle to a running worker. Dropping every handle stops it once its queue is empty.
#[derive(Debug, Clone)]
pub struct ModelWorker {
    inbox: mpsc::Sender<Work>,
    capacity: InferenceCapacity,
    info: ModelInfo,
    load: Arc<Load>,
    pool: SharedPool,
    model_id: ModelId,
    tokenizer: Arc<prompt::PromptTokenizer>,
}

impl ModelWorker {
    /// Loads and measures the model on the worker's own thread; returns once it serves.
    pub async fn start(config: ServeConfig) -> Result<Self, ServeError> {
        Self::start_with(config, SourceSlot::default()).await
    }

    /// [`Self::start`], fetching prefixes from what `source` will be set to.
    pub async fn start_with(config: ServeConfig, source: SourceSlot) -> Result<Self, ServeError> {
        let (inbox, jobs) = mpsc::channel::<Work>(SERVE_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new().name("pyagent-model".into()).spawn(move || worker::serve(config, jobs, ready_tx, source));
        if let Err(e) = spawned {
            return Err(ServeError::Generate(format!("cannot start the model thread: {e}")));
        }
        let loaded = ready_rx.await.map_err(|_| ServeError::Stopped)??;
        let model_id = loaded.pool.lock().model();
        Ok(Self { inbox, capacity: loaded.capacity, info: loaded.info, load: loaded.load, pool: loaded.pool, model_id, tokenizer: loaded.tokenizer })
    }

    /// The model's KV block pool (shared with the worker).
    pub fn pool(&self) -> &SharedPool {
        &self.pool
    }

    /// Turns prompts into this model's tokens.
    pub fn tokenizer(&self) -> &prompt::PromptTokenizer {
        &self.tokenizer
    }

    /// The model's id (BLAKE3 of its files).
    pub fn model_id(&self) -> ModelId {
        self.model_id
    }

    /// What the model needs and how fast it ran at start (the advert's rates follow the
    /// runs since: [`Self::advert`]).
    pub fn capacity(&self) -> &InferenceCapacity {
        &self.capacity
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The advert of this model: its capacity with the work queued now, and a summary of
    /// its KV blocks of at most `summary_bytes`.
    pub fn advert_with(&self, summary_bytes: usize) -> InferenceCapacity {
        let hashes: Vec<[u8; 32]> = self.pool.lock().hashes().into_iter().map(|h| h.0).collect();
        InferenceCapacity { kv_blocks: KvSummary::of(&hashes, summary_bytes), ..self.advert() }
    }

    /// The advert of this model: its capacity with the work queued now.
    pub fn advert(&self) -> InferenceCapacity {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        InferenceCapacity {
            queued_requests: u32::try_from(get(&self.load.requests)).unwrap_or(u32::MAX),
            queued_prefill_tokens: get(&self.load.prompt_tokens),
            queued_decode_tokens: get(&self.load.decode_tokens),
            kv_free_bytes: self.capacity.kv_budget_bytes.saturating_sub(get(&self.load.kv_host_bytes)),
            prefill_tokens_per_s: self.load.rates.prefill.get(),
            decode_tokens_per_s: self.load.rates.decode.get(),
            ..self.capacity.clone()
        }
    }

    /// Work queued at or running in this worker now.
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Generates after `prompt`; fails at once when the queue is full.
    pub async fn generate(&self, prompt: impl Into<Prompt>, options: GenerateOptions) -> Result<Output, ServeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(prompt.into(), options, None, reply)?;
        answer.await.map_err(|_| ServeError::Stopped)?
    }

    /// Generates after `prompt`, streaming the text; fails at once when the queue is full.
    /// Dropping [`Stream::pieces`] cancels the generation (it ends within one token).
    pub fn generate_stream(&self, prompt: impl Into<Prompt>, options: GenerateOptions) -> Result<Stream, ServeError> {
        let (reply, done) = oneshot::channel();
        let (tx, pieces) = mpsc::channel(STREAM_PIECES);
        self.submit(prompt.into(), options, Some(tx), reply)?;
        Ok(Stream { pieces, done })
    }

    fn submit(&self, prompt: Prompt, options: GenerateOptions, pieces: Option<mpsc::Sender<Chunk>>, reply: oneshot::Sender<Result<Output, ServeError>>) -> Result<(), ServeError> {
        let prompt_estimate = match &prompt {
            Prompt::Tokens(t) => t.len() as u64,
            // About four bytes a token: good enough to weigh a queue.
            Prompt::Text(s) => s.len() as u64 / 4 + 1,
            Prompt::Chat(m) => m.iter().map(|m| m.content.len() as u64 / 4 + 4).sum(),
        };
        let decode_estimate = options.max_tokens.min(self.info.context_length) as u64;
        let load = LoadGuard::new(&self.load, prompt_estimate, decode_estimate);
        self.send(Work::Generate(Job { prompt, options, pieces, reply, load }))
    }

    /// Computes the KV blocks of `tokens` (whole blocks) into the pool, in turn with the
    /// other requests; returns how many were computed (0: all were held). Fails at once
    /// when the queue is full.
    pub async fn prefill(&self, tokens: Vec<u32>) -> Result<usize, ServeError> {
        let (reply, answer) = oneshot::channel();
        let load = LoadGuard::new(&self.load, tokens.len() as u64, 0);
        self.send(Work::Prefill(PrefillJob { tokens, reply, _load: load }))?;
        answer.await.map_err(|_| ServeError::Stopped)?
    }

    fn send(&self, work: Work) -> Result<(), ServeError> {
        self.inbox.try_send(work).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ServeError::Stopped,
        })
    }
}

/// The workers of the models this node hosts, by name.
#[derive(Debug, Clone, Default)]
pub struct Models {
    workers: Vec<ModelWorker>,
    source: SourceSlot,
}

impl Models {
    /// Starts a worker per configured model; a model that cannot be loaded is left out,
    /// with the reason in the log, and so is a second model of the same name.
    pub async fn start(configs: Vec<ServeConfig>) -> Self {
        if configs.is_empty() {
            tracing::info!("inference off: no model configured (--model DIR)");
        }
        let mut workers: Vec<ModelWorker> = Vec::new();
        let source = SourceSlot::default();
        for config in configs {
            let model = config.model.clone();
            match ModelWorker::start_with(config, source.clone()).await {
                Ok(worker) if workers.iter().any(|w| w.info.name == worker.info.name) => {
                    tracing::warn!(model = %model.display(), "not serving: another model is already served as {:?}; give the directory another name", worker.info.name);
                }
                Ok(worker) => {
                    let c = worker.capacity();
                    tracing::info!(model = %model.display(), name = %worker.info.name, compute = %c.compute, prefill = c.prefill_tokens_per_s, decode = c.decode_tokens_per_s, fits = c.fits, "model served (tokens/s measured at start)");
                    workers.push(worker);
                }
                Err(e) => tracing::warn!("model not served: {e}"),
            }
        }
        Self { workers, source }
    }

    /// Where every worker fetches prefix blocks from (the KV exchange); set once.
    pub fn set_block_source(&self, source: Arc<dyn BlockSource>) {
        if self.source.set(source).is_err() {
            tracing::debug!("the KV block source was already set");
        }
    }

    /// The worker of the model with this id.
    pub fn by_id(&self, id: &ModelId) -> Option<&ModelWorker> {
        self.workers.iter().find(|w| w.model_id() == *id)
    }

    pub fn all(&self) -> &[ModelWorker] {
        &self.workers
    }

    pub fn get(&self, name: &str) -> Option<&ModelWorker> {
        self.workers.iter().find(|w| w.info.name == name)
    }

    /// Every model's advert, with the work queued now and the summary of its KV blocks
    /// (the advert's summary bytes shared out between the models).
    pub fn adverts(&self) -> Vec<InferenceCapacity> {
        let share = (MAX_SUMMARIES_BYTES / self.workers.len().max(1)).min(MAX_SUMMARY_BYTES);
        self.workers.iter().map(|w| w.advert_with(share)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_model_that_cannot_be_loaded_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig { model: dir.path().join("nope"), ort_lib: None, kv_host_bytes: 1 << 20, ram_available: 1 << 30, provider: crate::config::ProviderChoice::Auto, vram_free: None, role: Default::default(), lookahead: 4 };
        let err = ModelWorker::start(config.clone()).await.unwrap_err();
        assert!(matches!(err, ServeError::Load { ref model, .. } if model.ends_with("nope")), "{err}");
        assert!(Models::start(vec![config]).await.is_empty());
        assert!(Models::start(Vec::new()).await.is_empty());
    }

    #[test]
    fn load_is_given_back_when_a_request_ends() {
        let load = Arc::new(Load::default());
        let mut a = LoadGuard::new(&load, 100, 16);
        let b = LoadGuard::new(&load, 10, 4);
        assert_eq!((load.requests.load(Ordering::Relaxed), load.prompt_tokens.load(Ordering::Relaxed)), (2, 110));
        a.prefilled();
        assert_eq!(load.prompt_tokens.load(Ordering::Relaxed), 10);
        drop(a);
        drop(b);
        assert_eq!((load.requests.load(Ordering::Relaxed), load.prompt_tokens.load(Ordering::Relaxed), load.decode_tokens.load(Ordering::Relaxed)), (0, 0, 0));
    }
}
