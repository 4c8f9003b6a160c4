//! The local API over ZeroMQ: a ROUTER socket for JSON requests and a PUB socket for
//! membership events (schema in `pyagent_protocol::api` and README.md).
//!
//! Each request is served on its own tokio task, within a per-client and a per-node
//! budget ([`admission`]): over it, a `busy` reply with the
//! request's id. Each task sends its own reply and waits at most [`REPLY_SEND_TIMEOUT`]
//! for its client to read, so a client that does not read hurts only itself. Messages
//! over [`MAX_API_MESSAGE_BYTES`] close their connection before they are buffered. A bad
//! request gets an error reply and nothing else happens: the server keeps serving. Task
//! methods live in [`tasks`], vote methods in [`votes`], external agents' in [`agents`];
//! [`client`] is the client side, used by the CLI and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pyagent_protocol::api::{self, ApiError, Event, Method, PeersResult, code};
use serde_json::Value;
use std::sync::Mutex;

use pyagent_protocol::api::MAX_REQUEST_BYTES;
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

pub mod admission;
pub mod agents;
pub mod client;
pub mod history;
mod replies;
pub mod tasks;
pub mod votes;

use crate::api::admission::{Admission, Limits, Verdict};
use crate::p2p::{ClientError, NodeClient};
use crate::store::Store;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply may wait for its client to read earlier ones before it is dropped.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies queued for one client (ZMQ_SNDHWM) before sends to it wait.
const REPLY_QUEUE_MESSAGES: usize = 64;
/// The largest message the API socket reads. Requests a little over
/// [`MAX_REQUEST_BYTES`] still get a readable "too large" reply; anything larger closes
/// the sender's connection before it is buffered (patched zeromq, see node/vendor/zeromq).
pub const MAX_API_MESSAGE_BYTES: usize = MAX_REQUEST_BYTES + 64 * 1024;
/// What the event socket reads: subscriptions only.
const MAX_EVENTS_MESSAGE_BYTES: usize = 4096;
/// Events queued for one subscriber before newer ones are dropped for it, and in the
/// socket's fan-out ahead of the subscribers.
const EVENT_QUEUE_MESSAGES: usize = 1024;
// The fan-out queue's slots (40 bytes each) are allocated and written when the socket is
// made, in every node: keep it small.
const _: () = assert!(EVENT_QUEUE_MESSAGES <= 4096, "the events fan-out queue is allocated whole in every node");

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

fn socket_options(max_message_bytes: usize, queue_messages: usize) -> zeromq::SocketOptions {
    let mut options = zeromq::SocketOptions::default();
    options.max_message_size(max_message_bytes).send_queue_capacity(queue_messages);
    options
}

/// The events socket (PUB): small messages, at most `EVENT_QUEUE_MESSAGES` queued in its
/// fan-out and for each subscriber (a queue's slots are allocated when it is made).
fn events_socket() -> zeromq::PubSocket {
    zeromq::PubSocket::with_options(socket_options(MAX_EVENTS_MESSAGE_BYTES, EVENT_QUEUE_MESSAGES))
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
        let mut router = zeromq::RouterSocket::with_options(socket_options(MAX_API_MESSAGE_BYTES, REPLY_QUEUE_MESSAGES));
        let endpoint = router
            .bind(&endpoint_of(bind))
            .await
            .map_err(|source| ApiStartError::Bind { addr: bind, source })?
            .to_string();
        let mut publisher = events_socket();
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

async fn serve_requests(router: zeromq::RouterSocket, ctx: ApiContext, mut shutdown: watch::Receiver<bool>) {
    let (sender, mut receiver) = router.split();
    let admission = Arc::new(Mutex::new(Admission::new(Limits::default())));
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            message = receiver.recv() => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!("API receive error: {e}");
                        continue;
                    }
                };
                let Some(envelope) = Envelope::split(message) else { continue };
                let client = envelope.identity.clone();
                let verdict = lock(&admission).admit(&client);
                let (ctx, mut sender, admission) = (ctx.clone(), sender.clone(), admission.clone());
                match verdict {
                    Verdict::Serve => {
                        handlers.spawn(async move {
                            let reply = envelope.answer(&ctx).await;
                            send_reply(&mut sender, reply).await;
                            lock(&admission).finished(&client);
                        });
                    }
                    Verdict::Busy => {
                        let limits = lock(&admission).limits();
                        handlers.spawn(async move {
                            // Off the receive loop: reading the id parses the request.
                            let id = envelope.frames.first().map(|f| api::request_id(f)).unwrap_or(Value::Null);
                            let busy = ApiError::new(
                                id,
                                code::BUSY,
                                format!(
                                    "busy: this client has {} requests in flight (or the node {}); retry later",
                                    limits.per_client, limits.total
                                ),
                            );
                            if let Some(reply) = envelope.wrap(busy.to_reply()) {
                                send_reply(&mut sender, reply).await;
                            }
                            lock(&admission).busy_sent(&client);
                        });
                    }
                    Verdict::Drop => tracing::debug!("API request dropped: its client does not read its replies"),
                }
            }
        }
    }
    handlers.shutdown().await;
}

fn lock(admission: &Mutex<Admission>) -> std::sync::MutexGuard<'_, Admission> {
    // Admission's updates are single steps: a panic elsewhere cannot leave it half-done.
    admission.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one reply; a client that has not read its earlier replies for
/// [`REPLY_SEND_TIMEOUT`] loses this one (only it waits; others are served meanwhile).
async fn send_reply(sender: &mut zeromq::RouterSendHalf, reply: ZmqMessage) {
    match tokio::time::timeout(REPLY_SEND_TIMEOUT, sender.send(reply)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("API reply not delivered: {e}"),
        Err(_) => tracing::debug!("API reply dropped: the client has not read its replies for {REPLY_SEND_TIMEOUT:?}"),
    }
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
            [payload] => handle_request(payload, ctx, &self.identity).await,
            [] => ApiError::new(Value::Null, code::INVALID_REQUEST, "empty request").to_reply(),
            _ => ApiError::new(Value::Null, code::INVALID_REQUEST, "a request is one frame of JSON").to_reply(),
        };
        // A reply always has at least the identity frame, so this cannot fail.
        self.wrap(reply).unwrap_or_else(|| ZmqMessage::from(Vec::<u8>::new()))
    }
}

/// Answers one request of the API connection `caller` (its routing identity).
pub async fn handle_request(payload: &[u8], ctx: &ApiContext, caller: &[u8]) -> Vec<u8> {
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
        Method::TaskSubmit(params) => crate::api::tasks::submit(id, ctx, params).await,
        Method::TaskWait(params) => crate::api::tasks::wait(id, ctx, params).await,
        Method::History(params) => crate::api::history::history(id, ctx, params).await,
        Method::HistoryAppend(params) => crate::api::history::append(id, ctx, params).await,
        Method::Shards => crate::api::history::shards(id, ctx).await,
        Method::AgentRegister(params) => crate::api::agents::register(id, ctx, caller, params),
        Method::AgentNext(params) => crate::api::agents::next(id, ctx, params).await,
        Method::AgentResult(params) => crate::api::agents::result(id, ctx, params),
        Method::VotePropose(params) => crate::api::votes::propose(id, ctx, params).await,
        Method::VoteBallot(params) => crate::api::votes::ballot(id, ctx, params).await,
        Method::VoteTally(params) => crate::api::votes::tally(id, ctx, params).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node makes the events socket at start, subscriber or not: its fan-out queue
    /// must take the events bound, not the library's 100,000 slots (4 MB, all written when
    /// the queue is made).
    #[tokio::test]
    async fn the_events_socket_queues_at_most_the_events_bound() {
        let socket = events_socket();
        assert_eq!(socket.fanout_capacity(), EVENT_QUEUE_MESSAGES);
    }
}
