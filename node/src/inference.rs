//! Inference at node start: load the configured model with ONNX Runtime, measure its
//! prefill and decode speed, and put what it needs and how fast it runs in the advert.
//! Without a model, or when the runtime or the model cannot be loaded, the node runs on
//! with inference off, says why, and advertises no inference capacity.

use std::time::Instant;

use pyagent_engine::infer::{self, Engine, GenerateOptions};
use pyagent_engine::kv::PoolConfig;
use pyagent_protocol::InferenceCapacity;

use crate::config::Settings;

/// Prompt and output sizes of the start-up measurement.
const PROBE_PROMPT_TOKENS: usize = 64;
const PROBE_DECODE_TOKENS: usize = 16;

/// Loads and measures the model (blocking: run it off the async threads).
pub fn measure(settings: &Settings, ram_available: u64) -> Option<InferenceCapacity> {
    let Some(dir) = &settings.model else {
        tracing::info!("inference off: no model configured (--model DIR)");
        return None;
    };
    let run = || -> anyhow::Result<InferenceCapacity> {
        let env = infer::environment(settings.ort_lib.as_deref())?;
        let model = infer::ModelDir::open(dir)?;
        let (id, bytes) = (model.id.to_string(), model.bytes);
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let pool = PoolConfig { host_bytes: settings.kv_host_bytes, ..Default::default() };
        let mut engine = Engine::new(model, env, threads, &pool)?;
        let vocab = engine.model.config.vocab_size.clamp(2, 256);
        let prompt: Vec<u32> = (0..PROBE_PROMPT_TOKENS as u32).map(|i| (i * 7 + 3) % vocab).collect();
        let started = Instant::now();
        let out = engine.generate(&prompt, &GenerateOptions { max_tokens: PROBE_DECODE_TOKENS, ..Default::default() }, |_| {})?;
        let rate = |n: usize, secs: f64| if secs > 0.0 { (n as f64 / secs).round() as u32 } else { 0 };
        tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "inference probe");
        Ok(InferenceCapacity {
            model_id: id,
            model_bytes: bytes,
            kv_budget_bytes: settings.kv_host_bytes,
            fits: bytes.saturating_add(settings.kv_host_bytes) <= ram_available,
            prefill_tokens_per_s: rate(out.prompt_tokens, out.prefill_secs),
            decode_tokens_per_s: rate(out.tokens.len(), out.decode_secs),
        })
    };
    match run() {
        Ok(capacity) => {
            tracing::info!(
                model = %dir.display(),
                prefill = capacity.prefill_tokens_per_s,
                decode = capacity.decode_tokens_per_s,
                fits = capacity.fits,
                "inference on (tokens/s measured at start)"
            );
            Some(capacity)
        }
        Err(e) => {
            tracing::warn!(model = %dir.display(), "inference off: {e:#}");
            None
        }
    }
}
