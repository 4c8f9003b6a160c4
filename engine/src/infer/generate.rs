//! Greedy generation: prefill the prompt, then one token at a time with the KV cache.

use super::decoder::Decoder;
use super::model::ModelError;
use super::sampling::argmax;

/// The outcome of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// The logits each generated token was chosen from (`[vocab]` per step).
    pub step_logits: Vec<Vec<f32>>,
}

/// Greedy decoding of up to `max_tokens` after `prompt`, stopping after any `stop` token;
/// `on_token` sees each token as it is chosen.
pub fn greedy(
    decoder: &mut Decoder,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Generation, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Run("the prompt has no tokens".into()));
    }
    let empty = decoder.reserve(decoder.empty_cache()?, prompt.len() + max_tokens)?;
    let (logits, mut cache) = decoder.forward_rows(prompt, empty, 1)?;
    let mut last = logits.last().to_vec();
    let mut out = Generation { tokens: Vec::new(), step_logits: Vec::new() };
    while out.tokens.len() < max_tokens {
        let token = argmax(&last);
        out.tokens.push(token);
        out.step_logits.push(std::mem::take(&mut last));
        on_token(token);
        if stop.contains(&token) || out.tokens.len() == max_tokens {
            break;
        }
        let (logits, present) = decoder.forward(&[token], cache)?;
        cache = present;
        last = logits.last().to_vec();
    }
    decoder.release();
    Ok(out)
}
