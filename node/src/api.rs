//! The local API over ZeroMQ: a ROUTER socket for JSON requests and a PUB socket for
//! membership events (schema in `pyagent_protocol::api` and README.md).
//!
//! Each request is served on its own tokio task (at most [`MAX_IN_FLIGHT`] at once; more
//! get a "busy" error), so a long `task.wait` does not hold up anyone else; replies go
//! back through the router loop. A bad request gets an error reply and nothing else
//! happens: the server keeps serving. Task methods live in [`api_tasks`](crate::api_tasks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pyagent_protocol::api::{self, ApiError, Event, Method, PeersResult, code};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::p2p::{ClientError, NodeClient};
use crate::store::Store;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once.
pub const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("cannot bind the API socket on {addr}: {source} (is another node running? pick another port with --api)")]
    Bind { addr: SocketAddr, source: zeromq::ZmqError },
    #[error("cannot bind the event socket on {addr}: {source} (pick another port with --events)")]
    BindEvents { addr: SocketAddr, source: zeromq::ZmqError },
}

#[derive(Debug)]
pub struct ApiServer {
    pub endpoint: String,
    pub events_endpoint: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn endpoint_of(addr: SocketAddr) -> String {
    format!("tcp://{addr}")
}

/// What request handlers need.
#[derive(Debug, Clone)]
pub struct ApiContext {
    pub client: NodeClient,
    pub store: Arc<Store>,
    pub external: Arc<crate::external::ExternalAgents>,
}

impl ApiServer {
    pub async fn start(
        bind: SocketAddr,
        events_bind: SocketAddr,
        client: NodeClient,
        store: Arc<Store>,
        external: Arc<crate::external::ExternalAgents>,
    ) -> Result<Self, ApiStartError> {
        let mut router = zeromq::RouterSocket::new();
        let endpoint = router
            .bind(&endpoint_of(bind))
            .await
            .map_err(|source| ApiStartError::Bind { addr: bind, source })?
            .to_string();
        let mut publisher = zeromq::PubSocket::new();
        let events_endpoint = publisher
            .bind(&endpoint_of(events_bind))
            .await
            .map_err(|source| ApiStartError::BindEvents { addr: events_bind, source })?
            .to_string();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let events = client.subscribe();
        let ctx = ApiContext { client, store, external };
        let tasks = vec![
            tokio::spawn(serve_requests(router, ctx, shutdown_rx.clone())),
            tokio::spawn(publish_events(publisher, events, shutdown_rx)),
        ];
        tracing::info!(api = %endpoint, events = %events_endpoint, "local API listening");
        Ok(Self { endpoint, events_endpoint, shutdown, tasks })
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

async fn serve_requests(mut router: zeromq::RouterSocket, ctx: ApiContext, mut shutdown: watch::Receiver<bool>) {
    let (replies, mut pending) = mpsc::channel::<ZmqMessage>(MAX_IN_FLIGHT);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(reply) = pending.recv() => {
                if let Err(e) = router.send(reply).await {
                    tracing::debug!("API reply not delivered: {e}");
                }
            }
            message = router.recv() => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!("API receive error: {e}");
                        continue;
                    }
                };
                let Some(envelope) = Envelope::split(message) else { continue };
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (ctx, replies) = (ctx.clone(), replies.clone());
                        tokio::spawn(async move {
                            let reply = envelope.answer(&ctx).await;
                            drop(permit);
                            let _ = replies.send(reply).await;
                        });
                    }
                    Err(_) => {
                        let busy = ApiError::new(Value::Null, code::UNAVAILABLE, format!("busy: {MAX_IN_FLIGHT} requests in flight; retry"));
                        if let Some(reply) = envelope.wrap(busy.to_reply()) {
                            let _ = router.send(reply).await;
                        }
                    }
                }
            }
        }
    }
    let _ = router.close().await;
}

/// A request's routing frames and its payload frames.
struct Envelope {
    identity: Bytes,
    delimited: bool,
    frames: Vec<Bytes>,
}

impl Envelope {
    fn split(message: ZmqMessage) -> Option<Self> {
        let mut frames = message.into_vec();
        if frames.is_empty() {
            return None;
        }
        let identity = frames.remove(0);
        let delimited = frames.first().is_some_and(|f| f.is_empty());
        if delimited {
            frames.remove(0);
        }
        Some(Self { identity, delimited, frames })
    }

    fn wrap(&self, payload: Vec<u8>) -> Option<ZmqMessage> {
        let mut out = vec![self.identity.clone()];
        if self.delimited {
            out.push(Bytes::new());
        }
        out.push(Bytes::from(payload));
        ZmqMessage::try_from(out).ok()
    }

    async fn answer(self, ctx: &ApiContext) -> ZmqMessage {
        let reply = match self.frames.as_slice() {
            [payload] => handle_request(payload, ctx).await,
            [] => ApiError::new(Value::Null, code::INVALID_REQUEST, "empty request").to_reply(),
            _ => ApiError::new(Value::Null, code::INVALID_REQUEST, "a request is one frame of JSON").to_reply(),
        };
        // A reply always has at least the identity frame, so this cannot fail.
        self.wrap(reply).unwrap_or_else(|| ZmqMessage::from(Vec::<u8>::new()))
    }
}

pub async fn handle_request(payload: &[u8], ctx: &ApiContext) -> Vec<u8> {
    let request = match api::parse_request(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.error.code, "API request refused: {}", e.error.message);
            return e.to_reply();
        }
    };
    let id = &request.id;
    let client = &ctx.client;
    match request.method {
        Method::Status => answer(id, client.status()).await,
        Method::Peers => answer(id, async { client.peers().await.map(|peers| PeersResult { peers }) }).await,
        Method::TaskSubmit(params) => crate::api_tasks::submit(id, ctx, params).await,
        Method::TaskWait(params) => crate::api_tasks::wait(id, ctx, params).await,
        Method::History(params) => crate::api_tasks::history(id, ctx, params).await,
        Method::AgentRegister(params) => crate::api_agents::register(id, ctx, params),
        Method::AgentNext(params) => crate::api_agents::next(id, ctx, params).await,
        Method::AgentResult(params) => crate::api_agents::result(id, ctx, params),
        Method::VotePropose(params) => crate::api_votes::propose(id, ctx, params).await,
        Method::VoteBallot(params) => crate::api_votes::ballot(id, ctx, params).await,
        Method::VoteTally(params) => crate::api_votes::tally(id, ctx, params).await,
    }
}

pub(crate) async fn answer<T: serde::Serialize>(id: &Value, work: impl std::future::Future<Output = Result<T, ClientError>>) -> Vec<u8> {
    let unavailable = |why: String| ApiError::new(id.clone(), code::UNAVAILABLE, why).to_reply();
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(Ok(result)) => api::result_reply(id, &result),
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(_) => unavailable("the node did not answer in time".into()),
    }
}

async fn publish_events(mut publisher: zeromq::PubSocket, mut events: broadcast::Receiver<Event>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            e = events.recv() => e,
        };
        let event = match event {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("event publisher fell behind; {n} events skipped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let json = match serde_json::to_vec(&event) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("cannot encode event: {e}");
                continue;
            }
        };
        let Ok(message) = ZmqMessage::try_from(vec![Bytes::from_static(event.topic().as_bytes()), Bytes::from(json)]) else {
            continue;
        };
        if let Err(e) = publisher.send(message).await {
            tracing::debug!("event not published: {e}");
        }
    }
    let _ = publisher.close().await;
}
