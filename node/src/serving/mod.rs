//! The model-serving worker: an actor that owns the inference [`Engine`] on a thread of
//! its own, for as long as the node runs. Requests reach it over a bounded inbox; a full
//! inbox is an immediate [`ServeError::Overloaded`], never an unbounded wait. At start it
//! loads the model and measures prefill and decode speed, which the node advertises.
//!
//! Without a model, or when the runtime or the model cannot be loaded, the node runs on
//! with inference off, says why, and advertises no inference capacity.
//!
//! A request is answered whole ([`ModelWorker::generate`]) or streamed in pieces
//! ([`ModelWorker::generate_stream`]); dropping the stream cancels the generation.
//!
//! [`placement`]: where a request runs — the cost function over the peers' adverts (pure).

pub mod placement;

use std::path::PathBuf;
use std::time::Instant;

use pyagent_engine::infer::{self, Engine, GenerateOptions, Output};
use pyagent_engine::kv::PoolConfig;
use pyagent_protocol::InferenceCapacity;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the engine; beyond that, [`ServeError::Overloaded`].
pub const SERVE_QUEUE: usize = 64;
/// Prompt and output sizes of the start-up measurement.
const PROBE_PROMPT_TOKENS: usize = 64;
const PROBE_DECODE_TOKENS: usize = 16;

/// What the worker needs to load a model.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub kv_host_bytes: u64,
    /// RAM available at start, to say whether the model and its KV budget fit.
    pub ram_available: u64,
}

/// Why the worker could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the model {model}: {reason}")]
    Load { model: PathBuf, reason: String },
    #[error("the model is busy: {SERVE_QUEUE} requests are waiting; try again later or on another node")]
    Overloaded,
    #[error("the model-serving worker has stopped")]
    Stopped,
    #[error("generation failed: {0}")]
    Generate(String),
}

struct Job {
    prompt: Vec<u32>,
    options: GenerateOptions,
    /// Streamed: each piece of text as it is generated; the generation stops when the
    /// receiver is dropped.
    pieces: Option<mpsc::Sender<String>>,
    reply: oneshot::Sender<Result<Output, ServeError>>,
}

/// Pieces of text in flight between the worker and a streaming caller; a caller that
/// reads no further holds the engine there (backpressure) until it reads or goes.
pub const STREAM_PIECES: usize = 16;

/// A streamed generation: `pieces` as they come, then the whole output.
#[derive(Debug)]
pub struct Stream {
    pub pieces: mpsc::Receiver<String>,
    pub done: oneshot::Receiver<Result<Output, ServeError>>,
}

/// Handle to a running worker. Dropping every handle stops it once its queue is empty.
#[derive(Debug, Clone)]
pub struct ModelWorker {
    inbox: mpsc::Sender<Job>,
    capacity: InferenceCapacity,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("prompt_tokens", &self.prompt.len()).finish_non_exhaustive()
    }
}

impl ModelWorker {
    /// Loads and measures the model on the worker's own thread; returns once it serves.
    pub async fn start(config: ServeConfig) -> Result<Self, ServeError> {
        let (inbox, jobs) = mpsc::channel::<Job>(SERVE_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new().name("pyagent-model".into()).spawn(move || serve(config, jobs, ready_tx));
        if let Err(e) = spawned {
            return Err(ServeError::Generate(format!("cannot start the model thread: {e}")));
        }
        let capacity = ready_rx.await.map_err(|_| ServeError::Stopped)??;
        Ok(Self { inbox, capacity })
    }

    /// What the model needs and how fast it ran at start (for the advert).
    pub fn capacity(&self) -> &InferenceCapacity {
        &self.capacity
    }

    /// Generates after `prompt`; fails at once when the queue is full.
    pub async fn generate(&self, prompt: Vec<u32>, options: GenerateOptions) -> Result<Output, ServeError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job { prompt, options, pieces: None, reply })?;
        answer.await.map_err(|_| ServeError::Stopped)?
    }

    /// Generates after `prompt`, streaming the text; fails at once when the queue is full.
    /// Dropping [`Stream::pieces`] cancels the generation (it ends within one token).
    pub fn generate_stream(&self, prompt: Vec<u32>, options: GenerateOptions) -> Result<Stream, ServeError> {
        let (reply, done) = oneshot::channel();
        let (tx, pieces) = mpsc::channel(STREAM_PIECES);
        self.submit(Job { prompt, options, pieces: Some(tx), reply })?;
        Ok(Stream { pieces, done })
    }

    fn submit(&self, job: Job) -> Result<(), ServeError> {
        self.inbox.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ServeError::Stopped,
        })
    }
}

/// The worker thread: load, measure, say ready, then serve until every handle is gone.
fn serve(config: ServeConfig, mut jobs: mpsc::Receiver<Job>, ready: oneshot::Sender<Result<InferenceCapacity, ServeError>>) {
    let loaded = load(&config);
    let mut engine = match loaded {
        Ok((engine, capacity)) => {
            if ready.send(Ok(capacity)).is_err() {
                return;
            }
            engine
        }
        Err(reason) => {
            let _ = ready.send(Err(ServeError::Load { model: config.model.clone(), reason }));
            return;
        }
    };
    while let Some(job) = jobs.blocking_recv() {
        if job.reply.is_closed() || job.pieces.as_ref().is_some_and(mpsc::Sender::is_closed) {
            continue; // the caller gave up while queued
        }
        let pieces = job.pieces;
        let result = engine
            .generate_until(&job.prompt, &job.options, |piece| match &pieces {
                // Waits while the caller's buffer is full; a caller gone stops the run.
                Some(tx) if tx.blocking_send(piece.to_owned()).is_err() => std::ops::ControlFlow::Break(()),
                _ => std::ops::ControlFlow::Continue(()),
            })
            .map_err(|e| ServeError::Generate(e.to_string()));
        let _ = job.reply.send(result);
    }
    tracing::debug!("model-serving worker stopped");
}

fn load(config: &ServeConfig) -> Result<(Engine, InferenceCapacity), String> {
    let env = infer::environment(config.ort_lib.as_deref()).map_err(|e| e.to_string())?;
    let model = infer::ModelDir::open(&config.model).map_err(|e| e.to_string())?;
    let (id, bytes) = (model.id.to_string(), model.bytes);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pool = PoolConfig { host_bytes: config.kv_host_bytes, ..Default::default() };
    let mut engine = Engine::new(model, env, threads, &pool).map_err(|e| e.to_string())?;
    let vocab = engine.model.config.vocab_size.clamp(2, 256);
    let prompt: Vec<u32> = (0..PROBE_PROMPT_TOKENS as u32).map(|i| (i * 7 + 3) % vocab).collect();
    let started = Instant::now();
    let options = GenerateOptions { max_tokens: PROBE_DECODE_TOKENS, ..Default::default() };
    let out = engine.generate(&prompt, &options, |_| {}).map_err(|e| e.to_string())?;
    let rate = |n: usize, secs: f64| if secs > 0.0 { (n as f64 / secs).round() as u32 } else { 0 };
    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "inference probe");
    let capacity = InferenceCapacity {
        model_id: id,
        model_bytes: bytes,
        kv_budget_bytes: config.kv_host_bytes,
        fits: bytes.saturating_add(config.kv_host_bytes) <= config.ram_available,
        prefill_tokens_per_s: rate(out.prompt_tokens, out.prefill_secs),
        decode_tokens_per_s: rate(out.tokens.len(), out.decode_secs),
    };
    Ok((engine, capacity))
}

/// Starts the worker when a model is configured; logs why inference is off otherwise.
pub async fn start_if_configured(config: Option<ServeConfig>) -> Option<ModelWorker> {
    let Some(config) = config else {
        tracing::info!("inference off: no model configured (--model DIR)");
        return None;
    };
    let model = config.model.clone();
    match ModelWorker::start(config).await {
        Ok(worker) => {
            let c = worker.capacity();
            tracing::info!(model = %model.display(), prefill = c.prefill_tokens_per_s, decode = c.decode_tokens_per_s, fits = c.fits, "inference on (tokens/s measured at start)");
            Some(worker)
        }
        Err(e) => {
            tracing::warn!("inference off: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_model_that_cannot_be_loaded_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig { model: dir.path().join("nope"), ort_lib: None, kv_host_bytes: 1 << 20, ram_available: 1 << 30 };
        let err = ModelWorker::start(config.clone()).await.unwrap_err();
        assert!(matches!(err, ServeError::Load { ref model, .. } if model.ends_with("nope")), "{err}");
        assert!(start_if_configured(Some(config)).await.is_none());
        assert!(start_if_configured(None).await.is_none());
    }
}
