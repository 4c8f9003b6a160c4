//! The OpenAI-compatible HTTP API (axum), on `127.0.0.1:7763` by default:
//!
//! | path | what |
//! | --- | --- |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the models this node serves |
//! | `POST /v1/chat/completions` | chat through the model's own template, whole or streamed |
//! | `POST /v1/completions` | text (or token ids) continued, whole or streamed |
//! | `GET /healthz` | live: the process answers |
//! | `GET /readyz` | ready: models loaded, swarm joined; 503 with the reason otherwise |
//! | `GET /metrics` | Prometheus text: requests, tokens, latency histograms, queues, KV blocks, peers, tasks |
//!
//! With a bearer key (`--http-api-key FILE`, required off loopback) every path but
//! `/healthz` and `/readyz` asks for `Authorization: Bearer KEY`. Requests are checked by
//! `pyagent_protocol::openai`; every refusal is a JSON error in OpenAI's shape with the
//! right status, and the server keeps serving. At most [`MAX_IN_FLIGHT`] requests run at
//! once (503 beyond), bodies are at most [`MAX_BODY_BYTES`] (413), and streams end with an
//! error event when the node shuts down.
//!
//! - [`openai`]: the `/v1` handlers; [`stream`]: server-sent events of a generation;
//!   [`metrics`]: the Prometheus registry.

mod metrics;
mod openai;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pyagent_protocol::openai::ApiError;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::HttpSettings;
use crate::p2p::NodeClient;
use crate::inference::Inference;

pub use metrics::Metrics;
pub use openai::{PEER_HEADER, history_subject};

/// Largest request body (a long conversation fits; a flood does not).
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Requests handled at once; beyond that, 503 at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Why the HTTP API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpStartError {
    #[error("cannot bind the HTTP API to {addr}: {source}{hint}", hint = if source.kind() == std::io::ErrorKind::AddrInUse { "; is another pyagent node running? pick another address with --http or turn it off with --no-http" } else { "" })]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub client: NodeClient,
    pub inference: Inference,
    pub configured_models: usize,
    pub api_key: Option<String>,
    pub ready: AtomicBool,
    /// Whether readiness waits for a first peer (bootstrap peers were given).
    pub expects_peers: bool,
    pub metrics: Metrics,
    pub in_flight: Semaphore,
    /// Becomes true when the node shuts down: open streams end.
    pub shutdown: watch::Receiver<bool>,
}

/// A running HTTP API.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Where the HTTP server takes its parts from.
#[derive(Debug)]
pub struct HttpParts {
    pub settings: HttpSettings,
    pub client: NodeClient,
    pub inference: Inference,
    /// Models the configuration names (readiness waits for all of them).
    pub configured_models: usize,
    pub expects_peers: bool,
}

impl HttpServer {
    /// Binds and serves; not ready until [`Self::set_ready`].
    pub async fn start(parts: HttpParts) -> Result<Self, HttpStartError> {
        let addr = parts.settings.bind;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| HttpStartError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| HttpStartError::Bind { addr, source })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = Arc::new(AppState {
            client: parts.client,
            inference: parts.inference,
            configured_models: parts.configured_models,
            api_key: parts.settings.api_key,
            ready: AtomicBool::new(false),
            expects_peers: parts.expects_peers,
            metrics: Metrics::default(),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            shutdown: shutdown_rx.clone(),
        });
        let app = router(state.clone());
        let mut stop = shutdown_rx;
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
                tracing::error!("HTTP API stopped: {e}");
            }
        });
        tracing::info!(%addr, key = state.api_key.is_some(), "HTTP API (OpenAI-compatible) listening");
        Ok(Self { addr, state, shutdown, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node has started: `/readyz` may say ready.
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Relaxed);
    }

    /// Stops accepting, ends open streams with an error event, waits up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.state.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("HTTP API did not stop in time; closing its connections");
            task.abort();
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*id}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/metrics", get(metrics::render))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(v1)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], e.body()).into_response();
        if e.status == 401 {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// An [`ApiError`] as a response.
#[derive(Debug)]
pub(crate) struct Refusal(pub ApiError);

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

async fn not_found(request: Request) -> Refusal {
    Refusal(ApiError::not_found(format!("no such path: {} {} (see /v1/models, /v1/chat/completions, /v1/completions)", request.method(), request.uri().path())))
}

/// Bearer key and the in-flight cap, before any handler runs.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key
        && !authorized(request.headers(), key)
    {
        state.metrics.refused(request.uri().path(), 401);
        return Refusal(ApiError::unauthorized("missing or wrong API key: send Authorization: Bearer KEY")).into_response();
    }
    let Ok(_permit) = state.in_flight.try_acquire() else {
        state.metrics.refused(request.uri().path(), 503);
        return Refusal(ApiError::overloaded(format!("{MAX_IN_FLIGHT} requests are in flight; try again shortly"))).into_response();
    };
    next.run(request).await
}

/// Whether the request carries the key; compared in constant time.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 200 when the node has started, every configured model serves, and (with bootstrap
/// peers) a peer is connected; 503 with the reason otherwise.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let status = state.client.status().await;
    let peers = status.as_ref().map_or(0, |s| s.connected_peers);
    let mut waiting = Vec::new();
    if !state.ready.load(Ordering::Relaxed) {
        waiting.push("the node is starting or stopping".to_owned());
    }
    if status.is_err() {
        waiting.push("the network task does not answer".to_owned());
    }
    if state.expects_peers && peers == 0 {
        waiting.push("no peer connected yet (bootstrap peers are configured)".to_owned());
    }
    let models: Vec<&str> = state.inference.local().all().iter().map(|m| m.info().name.as_str()).collect();
    if models.len() < state.configured_models {
        waiting.push(format!("{} of {} configured models did not load (see the log)", state.configured_models - models.len(), state.configured_models));
    }
    let body = serde_json::json!({ "ready": waiting.is_empty(), "waiting_for": waiting, "models": models, "connected_peers": peers });
    let code = if waiting.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "0123456789abcdef"));
        h.insert(header::AUTHORIZATION, "Bearer 0123456789abcdef".parse().unwrap());
        assert!(authorized(&h, "0123456789abcdef"));
        assert!(!authorized(&h, "0123456789abcdeX"));
        assert!(!authorized(&h, "0123456789abcdef0"));
        h.insert(header::AUTHORIZATION, "Basic 0123456789abcdef".parse().unwrap());
        assert!(!authorized(&h, "0123456789abcdef"));
    }
}
