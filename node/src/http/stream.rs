//! A generation as server-sent events (`text/event-stream`), as OpenAI streams it: the
//! first chat chunk carries the role `assistant`; every chunk has the same `id`; exactly
//! one chunk carries `finish_reason`; with `stream_options.include_usage` every chunk has
//! `usage: null` and a last chunk with no choices carries the usage; then `data: [DONE]`.
//! A failure after the first token (a stalled or stopped worker, the node shutting down)
//! is an event `{"error": {...}}` that OpenAI's clients raise, then `[DONE]`. A client
//! that goes away drops the stream, which cancels the generation on its worker.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use pyagent_engine::infer::Output;
use pyagent_protocol::openai::ApiError;
use pyagent_protocol::openai::response::{ChatChunk, ChatLogprobs, ChunkChoice, Completion, CompletionChoice, CompletionLogprobs, Delta};
use tokio::sync::mpsc;

use super::AppState;
use super::openai::{Endpoint, FIRST_TOKEN_DEADLINE, PIECE_DEADLINE, Started, api_logprobs, finish_reason, serve_error, usage};
use crate::inference::First;
use crate::serving::{Chunk, ServeError};

/// Events buffered between the generation and the client's connection.
const EVENTS: usize = 16;

/// The response: events from a task that follows the generation.
pub(super) fn respond(state: Arc<AppState>, started: Started) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(EVENTS);
    tokio::spawn(produce(state, started, tx));
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// Builds the chunks of one stream.
struct Chunks {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
    logprobs: bool,
    /// Bytes of text sent so far (completion log-probabilities give offsets).
    offset: usize,
}

impl Chunks {
    fn usage_field(&self) -> Option<Option<pyagent_protocol::openai::response::Usage>> {
        self.include_usage.then_some(None)
    }

    fn chat(&self, delta: Delta, logprobs: Option<ChatLogprobs>, finish: Option<&'static str>) -> String {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices: vec![ChunkChoice { index: 0, delta, logprobs, finish_reason: finish }],
            usage: self.usage_field(),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn completion(&self, text: String, logprobs: Option<CompletionLogprobs>, finish: Option<&'static str>) -> String {
        let chunk = Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices: vec![CompletionChoice { index: 0, text, logprobs, finish_reason: finish }],
            usage: self.usage_field(),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn role(&self) -> Option<String> {
        (self.endpoint == Endpoint::Chat).then(|| self.chat(Delta { role: Some("assistant"), content: Some(String::new()) }, None, None))
    }

    fn piece(&mut self, piece: &Chunk) -> String {
        let lps = self.logprobs.then(|| api_logprobs(&piece.logprobs));
        let event = match self.endpoint {
            Endpoint::Chat => self.chat(Delta { role: None, content: Some(piece.text.clone()) }, lps.map(|content| ChatLogprobs { content }), None),
            Endpoint::Completion => self.completion(piece.text.clone(), lps.map(|t| CompletionLogprobs::from_tokens(&t, self.offset)), None),
        };
        self.offset += piece.text.len();
        event
    }

    fn finish(&self, out: &Output) -> String {
        let reason = Some(finish_reason(out.finish));
        match self.endpoint {
            Endpoint::Chat => self.chat(Delta::default(), None, reason),
            Endpoint::Completion => self.completion(String::new(), None, reason),
        }
    }

    fn usage(&self, out: &Output) -> String {
        let usage = Some(Some(usage(out)));
        match self.endpoint {
            Endpoint::Chat => serde_json::to_string(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: Vec::new(),
                usage,
            }),
            Endpoint::Completion => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: Vec::new(),
                usage,
            }),
        }
        .unwrap_or_default()
    }
}

/// The client went away: stop (dropping the stream cancels the generation).
struct Gone;

async fn send(tx: &mpsc::Sender<Event>, data: String) -> Result<(), Gone> {
    tx.send(Event::default().data(data)).await.map_err(|_| Gone)
}

async fn fail(tx: &mpsc::Sender<Event>, error: ApiError) -> String {
    tracing::warn!("stream ended early: {error}");
    if send(tx, error.body()).await.is_ok() {
        let _ = send(tx, "[DONE]".into()).await;
    }
    error.message
}

async fn produce(state: Arc<AppState>, started: Started, tx: mpsc::Sender<Event>) {
    let Started { endpoint, id, created, model, fingerprint, include_usage, logprobs, started: began, first, mut stream, ran_on } = started;
    let ttft = began.elapsed().as_secs_f64();
    let (chunks_id, chunks_model) = (id.clone(), model.clone());
    let mut chunks = Chunks { endpoint, id, created, model, fingerprint, include_usage, logprobs, offset: 0 };
    let mut shutdown = state.shutdown.clone();
    let served = super::openai::Served { id: &chunks_id, endpoint, model: &chunks_model, ran_on, ttft_secs: ttft };
    let record = |out: Option<&Output>, error: Option<&str>| super::openai::record(&state, served, out, error);
    let result: Result<(), Gone> = async {
        if let Some(role) = chunks.role() {
            send(&tx, role).await?;
        }
        let out = match first {
            First::Done(out) => out,
            First::Piece(piece) => {
                send(&tx, chunks.piece(&piece)).await?;
                loop {
                    tokio::select! {
                        next = tokio::time::timeout(PIECE_DEADLINE, stream.pieces.recv()) => match next {
                            Ok(Some(piece)) => send(&tx, chunks.piece(&piece)).await?,
                            Ok(None) => break,
                            Err(_) => {
                                let message = fail(&tx, ApiError::internal(format!("the generation stalled: no token for {} s", PIECE_DEADLINE.as_secs()))).await;
                                record(None, Some(&message));
                                return Ok(());
                            }
                        },
                        _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => {
                            let message = fail(&tx, ApiError::unavailable("the node is shutting down; the generation was stopped")).await;
                            record(None, Some(&message));
                            return Ok(());
                        }
                    }
                }
                match tokio::time::timeout(FIRST_TOKEN_DEADLINE, &mut stream.done).await {
                    Ok(Ok(Ok(out))) => out,
                    Ok(Ok(Err(e))) => {
                        let message = fail(&tx, serve_error(e, "messages")).await;
                        record(None, Some(&message));
                        return Ok(());
                    }
                    Ok(Err(_)) | Err(_) => {
                        let message = fail(&tx, serve_error(ServeError::Stopped, "messages")).await;
                        record(None, Some(&message));
                        return Ok(());
                    }
                }
            }
        };
        state.metrics.generated(&chunks.model, out.prompt_tokens, out.cached_tokens, out.tokens.len(), ttft, out.decode_secs);
        record(Some(&out), None);
        send(&tx, chunks.finish(&out)).await?;
        if include_usage {
            send(&tx, chunks.usage(&out)).await?;
        }
        send(&tx, "[DONE]".into()).await
    }
    .await;
    if result.is_err() {
        tracing::debug!(id = %chunks.id, "client went away; generation cancelled");
    }
}
