//! A small client of the local API, used by `pyagent status` and `pyagent peers` (and by
//! tests). One DEALER socket per call; every failure is an error that says what to do.

use std::time::Duration;

use pyagent_protocol::api::Reply;
use serde::de::DeserializeOwned;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("no node answering at {endpoint} within {timeout:?}; is `pyagent node` running (and is --api right)?")]
    NoAnswer { endpoint: String, timeout: Duration },
    #[error("cannot reach {endpoint}: {source}")]
    Connect { endpoint: String, source: zeromq::ZmqError },
    #[error("the node at {endpoint} sent an unreadable reply: {reason}")]
    BadReply { endpoint: String, reason: String },
    #[error("the node refused {method}: {message} (code {code})")]
    Refused { method: String, code: i64, message: String },
}

impl ApiClientError {
    /// The node was too busy to serve the call (worth retrying as it is).
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if *code == pyagent_protocol::api::code::BUSY)
    }
}

/// Sends raw request bytes and returns the raw reply frame.
pub async fn call_raw(endpoint: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, ApiClientError> {
    let work = async {
        let mut socket = zeromq::DealerSocket::new();
        socket
            .connect(endpoint)
            .await
            .map_err(|source| ApiClientError::Connect { endpoint: endpoint.to_owned(), source })?;
        socket
            .send(ZmqMessage::from(request))
            .await
            .map_err(|source| ApiClientError::Connect { endpoint: endpoint.to_owned(), source })?;
        let reply = socket
            .recv()
            .await
            .map_err(|source| ApiClientError::Connect { endpoint: endpoint.to_owned(), source })?;
        let _ = socket.close().await;
        // The payload is the last frame (a delimiter may precede it).
        reply
            .into_vec()
            .pop()
            .map(|b| b.to_vec())
            .ok_or_else(|| ApiClientError::BadReply { endpoint: endpoint.to_owned(), reason: "empty reply".into() })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ApiClientError::NoAnswer { endpoint: endpoint.to_owned(), timeout })?
}

/// Calls `method` (no params) and decodes its result.
pub async fn call<T: DeserializeOwned>(endpoint: &str, method: &str, timeout: Duration) -> Result<T, ApiClientError> {
    call_with(endpoint, method, serde_json::json!({}), timeout).await
}

/// Calls `method` with `params` and decodes its result. A `busy` reply is retried with
/// backoff until `timeout` has passed in all.
pub async fn call_with<T: DeserializeOwned>(
    endpoint: &str,
    method: &str,
    params: serde_json::Value,
    timeout: Duration,
) -> Result<T, ApiClientError> {
    let request = serde_json::json!({ "id": 1, "method": method, "params": params }).to_string().into_bytes();
    let mut backoff = Backoff::new(timeout);
    loop {
        let raw = call_raw(endpoint, request.clone(), backoff.left()).await?;
        match decode_reply(endpoint, method, &raw).map(|(_, result)| result) {
            Err(e) if e.is_busy() && backoff.wait().await => continue,
            other => return other,
        }
    }
}

/// Retry pacing for `busy` replies: 25 ms doubling to 1 s, until a deadline.
#[derive(Debug)]
struct Backoff {
    deadline: tokio::time::Instant,
    delay: Duration,
}

impl Backoff {
    fn new(timeout: Duration) -> Self {
        Self { deadline: tokio::time::Instant::now() + timeout, delay: Duration::from_millis(25) }
    }

    /// Time left before the deadline.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(tokio::time::Instant::now())
    }

    /// Sleeps before the next try; false when the deadline leaves no room for one.
    async fn wait(&mut self) -> bool {
        if self.left() <= self.delay {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        true
    }
}

fn decode_reply<T: DeserializeOwned>(endpoint: &str, method: &str, raw: &[u8]) -> Result<(serde_json::Value, T), ApiClientError> {
    let bad = |reason: String| ApiClientError::BadReply { endpoint: endpoint.to_owned(), reason };
    let reply: Reply<T> = serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
    match (reply.result, reply.error) {
        (Some(result), None) => Ok((reply.id, result)),
        (_, Some(err)) => Err(ApiClientError::Refused { method: method.to_owned(), code: err.code, message: err.message }),
        (None, None) => Err(bad("neither result nor error".into())),
    }
}

/// One connection for many calls (`pyagent analyze` makes hundreds): requests carry
/// increasing ids, and a late reply to an earlier, timed-out call is skipped.
pub struct ApiConnection {
    endpoint: String,
    socket: zeromq::DealerSocket,
    next_id: u64,
}

impl std::fmt::Debug for ApiConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConnection").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl ApiConnection {
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, ApiClientError> {
        let mut socket = zeromq::DealerSocket::new();
        tokio::time::timeout(timeout, socket.connect(endpoint))
            .await
            .map_err(|_| ApiClientError::NoAnswer { endpoint: endpoint.to_owned(), timeout })?
            .map_err(|source| ApiClientError::Connect { endpoint: endpoint.to_owned(), source })?;
        Ok(Self { endpoint: endpoint.to_owned(), socket, next_id: 1 })
    }

    /// Calls `method` with `params` and decodes its result; a `busy` reply is retried
    /// with backoff until `timeout` has passed in all.
    pub async fn call<T: DeserializeOwned>(&mut self, method: &str, params: serde_json::Value, timeout: Duration) -> Result<T, ApiClientError> {
        let mut backoff = Backoff::new(timeout);
        loop {
            match self.call_once(method, params.clone(), backoff.left()).await {
                Err(e) if e.is_busy() && backoff.wait().await => continue,
                other => return other,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(&mut self, method: &str, params: serde_json::Value, timeout: Duration) -> Result<T, ApiClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({ "id": id, "method": method, "params": params }).to_string().into_bytes();
        let endpoint = self.endpoint.clone();
        let connect_error = |source| ApiClientError::Connect { endpoint: endpoint.clone(), source };
        let work = async {
            self.socket.send(ZmqMessage::from(request)).await.map_err(connect_error)?;
            loop {
                let reply = self.socket.recv().await.map_err(connect_error)?;
                let Some(payload) = reply.into_vec().pop() else { continue };
                let ours = |answered: &serde_json::Value| answered.is_null() || *answered == serde_json::json!(id);
                match decode_reply::<T>(&endpoint, method, &payload) {
                    Ok((answered, result)) if ours(&answered) => return Ok(result),
                    Ok(_) => continue,
                    Err(e) => {
                        // A reply to an older call that timed out is not ours: skip it.
                        let answered = serde_json::from_slice::<Reply<serde::de::IgnoredAny>>(&payload).map(|r| r.id);
                        if answered.is_ok_and(|a| !ours(&a)) {
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| ApiClientError::NoAnswer { endpoint: self.endpoint.clone(), timeout })?
    }
}
