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
    let request = serde_json::json!({ "id": 1, "method": method, "params": {} }).to_string().into_bytes();
    let raw = call_raw(endpoint, request, timeout).await?;
    let bad = |reason: String| ApiClientError::BadReply { endpoint: endpoint.to_owned(), reason };
    let reply: Reply<T> = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
    match (reply.result, reply.error) {
        (Some(result), None) => Ok(result),
        (_, Some(err)) => Err(ApiClientError::Refused { method: method.to_owned(), code: err.code, message: err.message }),
        (None, None) => Err(bad("neither result nor error".into())),
    }
}
