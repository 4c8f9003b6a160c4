//! The `/v1` handlers: models, chat completions, completions. A generation is started on
//! the model's worker and its first event awaited before anything is sent, so that every
//! failure before the first token (unknown model, prompt too long, queue full) is an
//! error status, never a stream that breaks; after that it is answered whole or streamed
//! ([`super::stream`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use pyagent_engine::chat::ChatMessage;
use pyagent_engine::infer::{Finish, GenerateOptions, Output, Sampling};
use pyagent_protocol::openai::response::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs, Model, ModelList, ModelPlaces,
    TokenLogprob, TopLogprob, Usage,
};
use pyagent_protocol::openai::{ApiError, Generation, PromptInput, parse_chat, parse_completion};

use super::{AppState, Refusal};
use crate::inference::{First, InferError, InferRequest, SwarmModel, Target};
use crate::serving::{Prompt, REST_OF_CONTEXT, ServeError, Stream};

pub(super) use crate::inference::{FIRST_TOKEN_DEADLINE, PIECE_DEADLINE};

/// Pins a request to a peer (`local` or a PeerId): placement is skipped.
pub const PEER_HEADER: &str = "x-pyagent-peer";

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
    /// Where it runs: sent back in the `x-pyagent-peer` header.
    pub ran_on: Target,
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
        ServeError::TooLong(m) => ApiError { param: Some(param.to_owned()), ..ApiError::context_length(m) },
        ServeError::NotServed(_) | ServeError::PeerGone(_) => ApiError::unavailable(e.to_string()),
        ServeError::Generate(_) | ServeError::Load { .. } => ApiError::internal(e.to_string()),
    }
}

fn infer_error(e: InferError, param: &str) -> ApiError {
    match e {
        InferError::UnknownModel { .. } => ApiError::model_not_found(e.to_string()),
        InferError::Placement(crate::serving::placement::PlacementError::PinnedUnavailable(_)) => {
            ApiError { param: Some(PEER_HEADER.into()), ..ApiError::unavailable(e.to_string()) }
        }
        InferError::Placement(_) | InferError::Stopped => ApiError::unavailable(e.to_string()),
        InferError::AllFailed { ref last, .. } if matches!(last, ServeError::Overloaded) => ApiError::overloaded(e.to_string()),
        InferError::AllFailed { .. } => ApiError::unavailable(e.to_string()),
        InferError::Serve(e) => serve_error(e, param),
    }
}

/// The `x-pyagent-peer` header: `local`, or a PeerId.
fn pinned(headers: &HeaderMap) -> Result<Option<Target>, ApiError> {
    let Some(value) = headers.get(PEER_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::invalid(PEER_HEADER, "x-pyagent-peer must be text: local or a PeerId"))?.trim();
    if text.eq_ignore_ascii_case("local") {
        return Ok(Some(Target::Local));
    }
    text.parse::<libp2p::PeerId>()
        .map(|p| Some(Target::Peer(p)))
        .map_err(|e| ApiError::invalid(PEER_HEADER, format!("x-pyagent-peer {text:?} is neither local nor a PeerId: {e}")))
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

/// The history subject of a completion: BLAKE3 of its id (`chatcmpl-...`).
pub fn history_subject(completion_id: &str) -> pyagent_protocol::history::SubjectId {
    pyagent_protocol::task::TaskId(*blake3::hash(completion_id.as_bytes()).as_bytes())
}

/// What [`record`] writes about a request besides its output.
#[derive(Debug, Clone, Copy)]
pub(super) struct Served<'a> {
    pub id: &'a str,
    pub endpoint: Endpoint,
    pub model: &'a str,
    pub ran_on: Target,
    pub ttft_secs: f64,
}

/// Records a served request and where it ran as a history entry (in the background: the
/// answer does not wait for the write).
pub(super) fn record(state: &AppState, served: Served<'_>, out: Option<&Output>, error: Option<&str>) {
    let Served { id, endpoint, model, ran_on, ttft_secs } = served;
    let detail = serde_json::json!({
        "id": id,
        "endpoint": endpoint.path(),
        "ran_on": ran_on.to_string(),
        "ttft_ms": (ttft_secs * 1000.0).round(),
        "prompt_tokens": out.map(|o| o.prompt_tokens),
        "completion_tokens": out.map(|o| o.tokens.len()),
        "cached_tokens": out.map(|o| o.cached_tokens),
        "finish": out.map(|o| finish_reason(o.finish)),
        "error": error,
    })
    .to_string();
    let event = pyagent_protocol::history::HistoryEvent::Inference { model: model.to_owned(), detail };
    let history = state.client.history().clone();
    let subject = history_subject(id);
    tokio::spawn(async move {
        if let Err(e) = history.append(vec![(subject, event)]).await {
            tracing::debug!("inference not recorded in the history: {e}");
        }
    });
}

fn usage_of(out: &Output) -> Usage {
    Usage::new(out.prompt_tokens as u64, out.tokens.len() as u64, out.cached_tokens as u64)
}

fn model_entry(state: &AppState, m: &SwarmModel) -> Model {
    let created = state.inference.local().get(&m.name).map_or(0, |w| w.info().created);
    Model {
        id: m.name.clone(),
        object: "model",
        created,
        owned_by: "pyagent".into(),
        pyagent: ModelPlaces { context_length: u64::from(m.context_length), peers: m.peers.iter().map(ToString::to_string).collect() },
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
    match state.inference.swarm_models().await {
        Ok(models) => {
            state.metrics.answered("/v1/models", 200);
            json(&ModelList { object: "list", data: models.iter().map(|m| model_entry(&state, m)).collect() })
        }
        Err(e) => {
            state.metrics.answered("/v1/models", 503);
            Refusal(infer_error(e, "model")).into_response()
        }
    }
}

/// `GET /v1/models/{id}`.
pub(super) async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let models = match state.inference.swarm_models().await {
        Ok(models) => models,
        Err(e) => return Refusal(infer_error(e, "model")).into_response(),
    };
    match models.iter().find(|m| m.name == id) {
        Some(m) => {
            state.metrics.answered("/v1/models", 200);
            json(&model_entry(&state, m))
        }
        None => {
            state.metrics.answered("/v1/models", 404);
            let served: Vec<String> = models.into_iter().map(|m| m.name).collect();
            Refusal(infer_error(InferError::UnknownModel { model: id, served }, "model")).into_response()
        }
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, Endpoint::Chat, headers, body).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, Endpoint::Completion, headers, body).await
}

async fn handle(state: Arc<AppState>, endpoint: Endpoint, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
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
        let pin = pinned(&headers)?;
        let started = start(&state, endpoint, request, pin).await?;
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
            let ran_on = started.ran_on;
            with_peer(super::stream::respond(state, started), ran_on)
        }
        Ok((false, started)) => match whole(&state, started).await {
            Ok((response, ran_on)) => {
                state.metrics.answered(endpoint.path(), 200);
                with_peer(response, ran_on)
            }
            Err(e) => {
                state.metrics.answered(endpoint.path(), e.status);
                Refusal(e).into_response()
            }
        },
    }
}

fn with_peer(mut response: Response, ran_on: Target) -> Response {
    if let Ok(v) = HeaderValue::from_str(&ran_on.to_string()) {
        response.headers_mut().insert(PEER_HEADER, v);
    }
    response
}

/// Places the request, starts it, waits for its first event (failing over meanwhile).
async fn start(state: &AppState, endpoint: Endpoint, g: Generation, pinned: Option<Target>) -> Result<Started, ApiError> {
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
    let model = g.model.clone();
    let started = state.inference.start(InferRequest { model: g.model, prompt, options, pinned }).await.map_err(|e| infer_error(e, param))?;
    state.metrics.placed(started.placement.as_secs_f64());
    let fingerprint = match state.inference.local().get(&model) {
        Some(w) => format!("fp_{}", w.capacity().model_id.get(..12).unwrap_or("unknown")),
        None => format!("fp_{}", started.ran_on.to_string().get(..12).unwrap_or("peer")),
    };
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    Ok(Started {
        endpoint,
        id: format!("{prefix}-{:016x}{:08x}", random_u64(), random_u64() as u32),
        created: unix_now(),
        model,
        fingerprint,
        include_usage: g.include_usage,
        logprobs: g.logprobs.is_some(),
        started: began,
        first: started.first,
        stream: started.stream,
        ran_on: started.ran_on,
    })
}

/// Waits for the whole generation (reading the pieces so the worker never waits on us).
async fn whole(state: &AppState, started: Started) -> Result<(Response, Target), ApiError> {
    let Started { endpoint, id, created, model, fingerprint, logprobs, started: began, first, mut stream, ran_on, .. } = started;
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
    record(state, Served { id: &id, endpoint, model: &model, ran_on, ttft_secs: ttft }, Some(&out), None);
    let lps = logprobs.then(|| api_logprobs(&out.logprobs));
    let finish = finish_reason(out.finish);
    let response = match endpoint {
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
    };
    Ok((response, ran_on))
}

pub(super) fn usage(out: &Output) -> Usage {
    usage_of(out)
}
