//! The `/v1` handlers: models, chat completions, completions. A generation is started on
//! the model's worker and its first event awaited before anything is sent, so that every
//! failure before the first token (unknown model, prompt too long, queue full) is an
//! error status, never a stream that breaks; after that it is answered whole or streamed
//! ([`super::stream`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pyagent_engine::chat::ChatMessage;
use pyagent_engine::infer::{Finish, GenerateOptions, Output, Sampling};
use pyagent_protocol::openai::response::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs, Model, ModelList, ModelPlaces,
    TokenLogprob, TopLogprob, Usage,
};
use pyagent_protocol::openai::{ApiError, Generation, PromptInput, parse_chat, parse_completion};

use super::{AppState, Refusal};
use crate::serving::{Chunk, ModelWorker, Prompt, REST_OF_CONTEXT, ServeError, Stream};

/// Longest wait for a generation's first token (queue and prefill included).
pub(super) const FIRST_TOKEN_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait between two pieces of a running generation.
pub(super) const PIECE_DEADLINE: Duration = Duration::from_secs(60);

/// Which endpoint: it decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub(super) fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completion => "/v1/completions",
        }
    }
}

/// A generation that has produced its first event.
#[derive(Debug)]
pub(super) struct Started {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    pub include_usage: bool,
    pub logprobs: bool,
    pub started: Instant,
    pub first: First,
    pub stream: Stream,
}

#[derive(Debug)]
pub(super) enum First {
    Piece(Chunk),
    /// The generation ended before any text (an end-of-sequence token at once).
    Done(Output),
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // The clock is a fine fallback for a seed or an id.
    if getrandom::fill(&mut b).is_err() {
        return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

pub(super) fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        Finish::Eos | Finish::Stop | Finish::Cancelled => "stop",
    }
}

pub(super) fn serve_error(e: ServeError, param: &str) -> ApiError {
    match e {
        ServeError::Overloaded => ApiError::overloaded(e.to_string()),
        ServeError::Stopped => ApiError::unavailable(e.to_string()),
        ServeError::BadPrompt(m) => ApiError::invalid(param, m),
        ServeError::ContextLength { .. } => ApiError { param: Some(param.to_owned()), ..ApiError::context_length(e.to_string()) },
        ServeError::Generate(_) | ServeError::Load { .. } => ApiError::internal(e.to_string()),
    }
}

/// Engine log-probabilities in the API's shape.
pub(super) fn api_logprobs(lps: &[pyagent_engine::infer::TokenLogprob]) -> Vec<TokenLogprob> {
    lps.iter()
        .map(|t| TokenLogprob {
            token: t.text.clone(),
            logprob: t.logprob,
            bytes: t.text.as_bytes().to_vec(),
            top_logprobs: t.top.iter().map(|a| TopLogprob { token: a.text.clone(), logprob: a.logprob, bytes: a.text.as_bytes().to_vec() }).collect(),
        })
        .collect()
}

fn usage_of(out: &Output) -> Usage {
    Usage::new(out.prompt_tokens as u64, out.tokens.len() as u64, out.cached_tokens as u64)
}

fn model_entry(worker: &ModelWorker) -> Model {
    let info = worker.info();
    Model {
        id: info.name.clone(),
        object: "model",
        created: info.created,
        owned_by: "pyagent".into(),
        pyagent: ModelPlaces { context_length: info.context_length as u64, peers: vec!["local".into()] },
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => Refusal(ApiError::internal(format!("cannot encode the answer: {e}"))).into_response(),
    }
}

/// `GET /v1/models`.
pub(super) async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.answered("/v1/models", 200);
    json(&ModelList { object: "list", data: state.models.all().iter().map(model_entry).collect() })
}

/// `GET /v1/models/{id}`.
pub(super) async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.models.get(&id) {
        Some(worker) => {
            state.metrics.answered("/v1/models", 200);
            json(&model_entry(worker))
        }
        None => {
            state.metrics.answered("/v1/models", 404);
            Refusal(unknown_model(&state, &id)).into_response()
        }
    }
}

fn unknown_model(state: &AppState, name: &str) -> ApiError {
    let names: Vec<&str> = state.models.all().iter().map(|m| m.info().name.as_str()).collect();
    let known = if names.is_empty() { "this swarm serves no model yet (start a node with --model DIR)".to_owned() } else { format!("models served: {}", names.join(", ")) };
    ApiError::model_not_found(format!("the model {name:?} is not served here; {known}"))
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, Endpoint::Chat, body).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, Endpoint::Completion, body).await
}

async fn handle(state: Arc<AppState>, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let body = body.map_err(|e| match e.status().as_u16() {
            413 => ApiError::too_large(format!("the request body is larger than {} bytes", super::MAX_BODY_BYTES)),
            _ => ApiError::bad_request(format!("cannot read the request body: {e}")),
        })?;
        let request = match endpoint {
            Endpoint::Chat => parse_chat(&body)?,
            Endpoint::Completion => parse_completion(&body)?,
        };
        let stream = request.stream;
        let started = start(&state, endpoint, request).await?;
        Ok::<_, ApiError>((stream, started))
    }
    .await;
    match result {
        Err(e) => {
            state.metrics.answered(endpoint.path(), e.status);
            Refusal(e).into_response()
        }
        Ok((true, started)) => {
            state.metrics.answered(endpoint.path(), 200);
            super::stream::respond(state, started)
        }
        Ok((false, started)) => match whole(&state, started).await {
            Ok(response) => {
                state.metrics.answered(endpoint.path(), 200);
                response
            }
            Err(e) => {
                state.metrics.answered(endpoint.path(), e.status);
                Refusal(e).into_response()
            }
        },
    }
}

/// Picks the worker, starts the generation, waits for its first event.
async fn start(state: &AppState, endpoint: Endpoint, g: Generation) -> Result<Started, ApiError> {
    let worker = state.models.get(&g.model).ok_or_else(|| unknown_model(state, &g.model))?;
    let param = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    let prompt = match g.prompt {
        PromptInput::Chat(messages) => Prompt::Chat(messages.iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect()),
        PromptInput::Text(text) => Prompt::Text(text),
        PromptInput::Tokens(tokens) => Prompt::Tokens(tokens),
    };
    let options = GenerateOptions {
        max_tokens: g.max_tokens.map_or(REST_OF_CONTEXT, |n| n as usize),
        sampling: Sampling { temperature: g.temperature, top_k: 0, top_p: g.top_p, seed: g.seed.unwrap_or_else(random_u64) },
        stop: g.stop,
        keep_logits: false,
        logprobs: g.logprobs.map(|n| n as usize),
    };
    let began = Instant::now();
    let mut stream = worker.generate_stream(prompt, options).map_err(|e| serve_error(e, param))?;
    let first = tokio::time::timeout(FIRST_TOKEN_DEADLINE, async {
        match stream.pieces.recv().await {
            Some(piece) => Ok(First::Piece(piece)),
            None => match (&mut stream.done).await {
                Ok(Ok(out)) => Ok(First::Done(out)),
                Ok(Err(e)) => Err(serve_error(e, param)),
                Err(_) => Err(serve_error(ServeError::Stopped, param)),
            },
        }
    })
    .await
    .map_err(|_| ApiError::unavailable(format!("no first token within {} s: the model is too busy; try again later", FIRST_TOKEN_DEADLINE.as_secs())))??;
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    Ok(Started {
        endpoint,
        id: format!("{prefix}-{:016x}{:08x}", random_u64(), random_u64() as u32),
        created: unix_now(),
        model: worker.info().name.clone(),
        fingerprint: format!("fp_{}", worker.capacity().model_id.get(..12).unwrap_or("unknown")),
        include_usage: g.include_usage,
        logprobs: g.logprobs.is_some(),
        started: began,
        first,
        stream,
    })
}

/// Waits for the whole generation (reading the pieces so the worker never waits on us).
async fn whole(state: &AppState, started: Started) -> Result<Response, ApiError> {
    let Started { endpoint, id, created, model, fingerprint, logprobs, started: began, first, mut stream, .. } = started;
    let ttft = began.elapsed().as_secs_f64();
    let out = match first {
        First::Done(out) => out,
        First::Piece(_) => {
            loop {
                match tokio::time::timeout(PIECE_DEADLINE, stream.pieces.recv()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return Err(ApiError::internal(format!("the generation stalled: no token for {} s", PIECE_DEADLINE.as_secs()))),
                }
            }
            match tokio::time::timeout(PIECE_DEADLINE, stream.done).await {
                Ok(Ok(Ok(out))) => out,
                Ok(Ok(Err(e))) => return Err(serve_error(e, "messages")),
                Ok(Err(_)) | Err(_) => return Err(serve_error(ServeError::Stopped, "messages")),
            }
        }
    };
    state.metrics.generated(&model, out.prompt_tokens, out.cached_tokens, out.tokens.len(), ttft, out.decode_secs);
    let lps = logprobs.then(|| api_logprobs(&out.logprobs));
    let finish = finish_reason(out.finish);
    Ok(match endpoint {
        Endpoint::Chat => json(&ChatCompletion {
            id,
            object: "chat.completion",
            created,
            model,
            system_fingerprint: fingerprint,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: out.text.clone() },
                logprobs: lps.map(|content| ChatLogprobs { content }),
                finish_reason: finish,
            }],
            usage: usage_of(&out),
        }),
        Endpoint::Completion => json(&Completion {
            id,
            object: "text_completion",
            created,
            model,
            system_fingerprint: fingerprint,
            choices: vec![CompletionChoice {
                index: 0,
                text: out.text.clone(),
                logprobs: lps.map(|t| CompletionLogprobs::from_tokens(&t, 0)),
                finish_reason: Some(finish),
            }],
            usage: Some(Some(usage_of(&out))),
        }),
    })
}

pub(super) fn usage(out: &Output) -> Usage {
    usage_of(out)
}
