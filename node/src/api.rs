//! The local API over ZeroMQ: a ROUTER socket for JSON requests and a PUB socket for
//! membership events (schema in `pyagent_protocol::api` and README.md).
//!
//! Requests are served one at a time in arrival order; each is answered from the swarm
//! task through [`NodeClient`] with a timeout. A bad request gets an error reply and
//! nothing else happens: the server keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use pyagent_protocol::api::{self, ApiError, Event, Method, PeersResult, code};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::p2p::{ClientError, NodeClient};

/// How long a request may wait for the swarm task.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("cannot bind the API socket on {addr}: {source} (is another node running? pick another port with --api)")]
    Bind { addr: SocketAddr, source: zeromq::ZmqError },
    #[error("cannot bind the event socket on {addr}: {source} (pick another port with --events)")]
    BindEvents { addr: SocketAddr, source: zeromq::ZmqError },
}

/// The running API server.
#[derive(Debug)]
pub struct ApiServer {
    /// Where requests are served, e.g. `tcp://127.0.0.1:7761`.
    pub endpoint: String,
    /// Where events are published.
    pub events_endpoint: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn endpoint_of(addr: SocketAddr) -> String {
    format!("tcp://{addr}")
}

impl ApiServer {
    /// Binds both sockets and starts serving.
    pub async fn start(bind: SocketAddr, events_bind: SocketAddr, client: NodeClient) -> Result<Self, ApiStartError> {
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
        let tasks = vec![
            tokio::spawn(serve_requests(router, client, shutdown_rx.clone())),
            tokio::spawn(publish_events(publisher, events, shutdown_rx)),
        ];
        tracing::info!(api = %endpoint, events = %events_endpoint, "local API listening");
        Ok(Self { endpoint, events_endpoint, shutdown, tasks })
    }

    /// Stops serving and closes both sockets.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

async fn serve_requests(mut router: zeromq::RouterSocket, client: NodeClient, mut shutdown: watch::Receiver<bool>) {
    loop {
        let message = tokio::select! {
            _ = shutdown.changed() => break,
            m = router.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("API receive error: {e}");
                continue;
            }
        };
        let Some(reply) = handle_message(message, &client).await else { continue };
        if let Err(e) = router.send(reply).await {
            // The client went away before its reply: nothing to do.
            tracing::debug!("API reply not delivered: {e}");
        }
    }
    let _ = router.close().await;
}

/// Splits a ROUTER message into (envelope, payload frames) and builds the reply message.
async fn handle_message(message: ZmqMessage, client: &NodeClient) -> Option<ZmqMessage> {
    let mut frames = message.into_vec();
    if frames.is_empty() {
        return None;
    }
    let identity = frames.remove(0);
    // REQ sockets put an empty delimiter before the payload; DEALER sockets may not.
    let delimited = frames.first().is_some_and(|f| f.is_empty());
    if delimited {
        frames.remove(0);
    }
    let reply = match frames.as_slice() {
        [payload] => handle_request(payload, client).await,
        [] => ApiError::new(Value::Null, code::INVALID_REQUEST, "empty request").to_reply(),
        _ => ApiError::new(Value::Null, code::INVALID_REQUEST, "a request is one frame of JSON").to_reply(),
    };
    let mut out = vec![identity];
    if delimited {
        out.push(Bytes::new());
    }
    out.push(Bytes::from(reply));
    ZmqMessage::try_from(out).ok()
}

/// Answers one request frame.
pub async fn handle_request(payload: &[u8], client: &NodeClient) -> Vec<u8> {
    let request = match api::parse_request(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.error.code, "API request refused: {}", e.error.message);
            return e.to_reply();
        }
    };
    let id = &request.id;
    match request.method {
        Method::Status => answer(id, client.status()).await,
        Method::Peers => answer(id, async { client.peers().await.map(|peers| PeersResult { peers }) }).await,
    }
}

/// Awaits the swarm task's answer with a timeout and turns it into a reply frame.
async fn answer<T: serde::Serialize>(id: &Value, work: impl std::future::Future<Output = Result<T, ClientError>>) -> Vec<u8> {
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
