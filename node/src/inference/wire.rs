//! Between the worker's types and the inference stream's wire types.

use pyagent_engine::chat::ChatMessage;
use pyagent_engine::infer::{Alternative, Finish, GenerateOptions, Output, Sampling, TokenLogprob};
use pyagent_protocol::inference::{InferErrorKind, InferFrame, InferPrompt, InferRequest, WireFinish, WireLogprob};

use crate::serving::{Chunk, Prompt, REST_OF_CONTEXT, ServeError};

pub fn request(model: &str, prompt: &Prompt, options: &GenerateOptions) -> InferRequest {
    InferRequest {
        model: model.to_owned(),
        prompt: match prompt {
            Prompt::Tokens(t) => InferPrompt::Tokens(t.clone()),
            Prompt::Text(t) => InferPrompt::Text(t.clone()),
            Prompt::Chat(m) => InferPrompt::Chat(m.iter().map(|m| (m.role.clone(), m.content.clone())).collect()),
        },
        max_tokens: if options.max_tokens == REST_OF_CONTEXT { 0 } else { u32::try_from(options.max_tokens).unwrap_or(u32::MAX) },
        temperature: options.sampling.temperature,
        top_p: options.sampling.top_p,
        seed: options.sampling.seed,
        stop: options.stop.clone(),
        logprobs: options.logprobs.map(|n| u8::try_from(n).unwrap_or(u8::MAX)),
    }
}

/// The executor's view of a (validated) request.
pub fn from_request(r: InferRequest) -> (String, Prompt, GenerateOptions) {
    let prompt = match r.prompt {
        InferPrompt::Tokens(t) => Prompt::Tokens(t),
        InferPrompt::Text(t) => Prompt::Text(t),
        InferPrompt::Chat(m) => Prompt::Chat(m.iter().map(|(role, content)| ChatMessage::new(role, content)).collect()),
    };
    let options = GenerateOptions {
        max_tokens: if r.max_tokens == 0 { REST_OF_CONTEXT } else { r.max_tokens as usize },
        sampling: Sampling { temperature: r.temperature, top_k: 0, top_p: r.top_p, seed: r.seed },
        stop: r.stop,
        keep_logits: false,
        logprobs: r.logprobs.map(usize::from),
    };
    (r.model, prompt, options)
}

pub fn piece(chunk: &Chunk) -> InferFrame {
    InferFrame::Piece {
        text: chunk.text.clone(),
        logprobs: chunk
            .logprobs
            .iter()
            .map(|t| WireLogprob { token: t.token, text: t.text.clone(), logprob: t.logprob, top: t.top.iter().map(|a| (a.token, a.text.clone(), a.logprob)).collect() })
            .collect(),
    }
}

pub fn chunk(text: String, logprobs: Vec<WireLogprob>) -> Chunk {
    Chunk {
        text,
        logprobs: logprobs
            .into_iter()
            .map(|w| TokenLogprob { token: w.token, text: w.text, logprob: w.logprob, top: w.top.into_iter().map(|(token, text, logprob)| Alternative { token, text, logprob }).collect() })
            .collect(),
    }
}

pub fn done(out: &Output) -> InferFrame {
    InferFrame::Done {
        tokens: out.tokens.clone(),
        prompt_tokens: u32::try_from(out.prompt_tokens).unwrap_or(u32::MAX),
        cached_tokens: u32::try_from(out.cached_tokens).unwrap_or(u32::MAX),
        finish: match out.finish {
            Finish::Eos => WireFinish::Eos,
            Finish::Stop | Finish::Cancelled => WireFinish::Stop,
            Finish::Length => WireFinish::Length,
        },
        prefill_secs: out.prefill_secs,
        decode_secs: out.decode_secs,
    }
}

/// The output a `Done` frame describes; `text` and `logprobs` are what the pieces carried.
pub fn output(frame: InferFrame, text: String, logprobs: Vec<TokenLogprob>) -> Option<Output> {
    let InferFrame::Done { tokens, prompt_tokens, cached_tokens, finish, prefill_secs, decode_secs } = frame else { return None };
    Some(Output {
        text,
        tokens,
        step_logits: Vec::new(),
        prompt_tokens: prompt_tokens as usize,
        cached_tokens: cached_tokens as usize,
        prefill_secs,
        decode_secs,
        finish: match finish {
            WireFinish::Eos => Finish::Eos,
            WireFinish::Stop => Finish::Stop,
            WireFinish::Length => Finish::Length,
        },
        logprobs,
        // Counted where the generation ran.
        lookahead: Default::default(),
    })
}

pub fn error_frame(e: &ServeError) -> InferFrame {
    let kind = match e {
        ServeError::Overloaded => InferErrorKind::Overloaded,
        ServeError::NotServed(_) | ServeError::Stopped => InferErrorKind::NotServed,
        ServeError::BadPrompt(_) => InferErrorKind::BadRequest,
        ServeError::ContextLength { .. } | ServeError::TooLong(_) => InferErrorKind::ContextLength,
        ServeError::Generate(_) | ServeError::Load { .. } | ServeError::PeerGone(_) => InferErrorKind::Failed,
    };
    let message = match e {
        ServeError::BadPrompt(m) | ServeError::TooLong(m) | ServeError::NotServed(m) => m.clone(),
        other => other.to_string(),
    };
    InferFrame::Error { kind, message }
}

pub fn error_of(kind: InferErrorKind, message: String) -> ServeError {
    match kind {
        InferErrorKind::Overloaded => ServeError::Overloaded,
        InferErrorKind::NotServed => ServeError::NotServed(message),
        InferErrorKind::BadRequest => ServeError::BadPrompt(message),
        InferErrorKind::ContextLength => ServeError::TooLong(message),
        InferErrorKind::Failed => ServeError::Generate(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors_cross_the_wire_unchanged() {
        let options = GenerateOptions { max_tokens: REST_OF_CONTEXT, stop: vec!["x".into()], logprobs: Some(3), ..Default::default() };
        let prompt = Prompt::Chat(vec![ChatMessage::new("user", "hi")]);
        let (model, p, o) = from_request(request("m", &prompt, &options));
        assert_eq!((model.as_str(), &p, o.max_tokens, o.stop.clone(), o.logprobs), ("m", &prompt, REST_OF_CONTEXT, options.stop.clone(), Some(3)));
        for e in [ServeError::Overloaded, ServeError::NotServed("gone".into()), ServeError::BadPrompt("bad".into()), ServeError::TooLong("long".into())] {
            let InferFrame::Error { kind, message } = error_frame(&e) else { panic!() };
            assert_eq!(error_of(kind, message).to_string(), e.to_string());
        }
    }
}
