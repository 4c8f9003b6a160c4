//! JSON schema of the node's local ZeroMQ API.
//!
//! Requests arrive on a ROUTER socket as one frame of JSON:
//! `{"id": <any JSON>, "method": "status" | "peers", "params": {}}`.
//! Each gets exactly one reply frame: `{"id": .., "result": {..}}` or
//! `{"id": .., "error": {"code": .., "message": ".."}}`. Error codes follow JSON-RPC 2.0.
//! Events go out on a PUB socket as two frames: the topic (`peer`) and a JSON [`Event`].
//!
//! [`parse_request`] turns raw bytes into a typed [`Request`] or an [`ApiError`] that
//! already carries the reply to send; it never panics on any input.

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod params;
mod results;

pub use params::*;
pub use results::*;

/// Largest request accepted, in bytes.
/// Large enough for a `task.submit` batch of source files (see [`MAX_SUBMIT_TEXT_BYTES`]).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Most source text in one `task.submit` (the file limit of a task still applies).
pub const MAX_SUBMIT_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Longest `task.wait`.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most ids in one `task.wait`.
pub const MAX_WAIT_IDS: usize = 10_000;

/// JSON-RPC 2.0 error codes used by the API.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The node is shutting down or its network task stopped.
    pub const UNAVAILABLE: i64 = -32000;
    /// Too many requests of this client (or of all clients) in flight: retry later.
    /// The only code a client should retry as it is.
    pub const BUSY: i64 = -32001;
}

/// A typed API request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed back in the reply; any JSON value the client likes.
    pub id: Value,
    pub method: Method,
}

/// The methods of the API and their parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Status,
    Peers,
    /// Submit a task to the swarm.
    TaskSubmit(TaskSubmitParams),
    /// Wait until one of the tasks finishes (or the timeout passes), and report them all.
    TaskWait(TaskWaitParams),
    /// History entries of a subject, or a page of a shard, through the DHT.
    History(HistoryParams),
    /// Append inference entries.
    HistoryAppend(HistoryAppendParams),
    /// Shard owners, local counts and digests.
    Shards,
    /// An external agent announces itself and the capabilities it serves.
    AgentRegister(AgentRegisterParams),
    /// An external agent asks for its next job (long poll; also its heartbeat).
    AgentNext(AgentNextParams),
    /// An external agent returns a job's result or error.
    AgentResult(AgentResultParams),
    /// Open a proposal.
    VotePropose(VoteProposeParams),
    /// Cast this node's ballot on a proposal.
    VoteBallot(VoteBallotParams),
    /// The tally of a proposal and every ballot.
    VoteTally(VoteTallyParams),
}

/// Parameters of `status` and `peers`: none, so `{}` or absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// The error object of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
}

/// A refused request: the id to echo (null when it could not be read) and the error.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub id: Value,
    pub error: ErrorObject,
}

impl ApiError {
    pub fn new(id: Value, code: i64, message: impl Into<String>) -> Self {
        Self { id, error: ErrorObject { code, message: message.into() } }
    }

    /// The reply frame for this error.
    pub fn to_reply(&self) -> Vec<u8> {
        error_reply(&self.id, &self.error)
    }
}

/// The `id` of a request frame, or null when it has none or is not a JSON object: what a
/// reply that does not serve the request (busy) echoes. Never panics.
pub fn request_id(frame: &[u8]) -> Value {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Value,
    }
    if frame.len() > MAX_REQUEST_BYTES {
        return Value::Null;
    }
    serde_json::from_slice::<IdOnly>(frame).map(|r| r.id).unwrap_or(Value::Null)
}

/// Parses one request frame.
pub fn parse_request(frame: &[u8]) -> Result<Request, ApiError> {
    if frame.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::new(
            Value::Null,
            code::INVALID_REQUEST,
            format!("request of {} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes", frame.len()),
        ));
    }
    let value: Value = serde_json::from_slice(frame)
        .map_err(|e| ApiError::new(Value::Null, code::PARSE_ERROR, format!("request is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::new(Value::Null, code::INVALID_REQUEST, "request must be a JSON object"));
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(ApiError::new(id, code::INVALID_REQUEST, "\"method\" must be a string")),
        None => return Err(ApiError::new(id, code::INVALID_REQUEST, "missing \"method\"")),
    };
    let params = obj.remove("params").unwrap_or(Value::Object(Default::default()));
    if let Some(extra) = obj.keys().next() {
        return Err(ApiError::new(
            id,
            code::INVALID_REQUEST,
            format!("unknown field {extra:?}: a request has only \"id\", \"method\" and \"params\""),
        ));
    }
    let method = match method.as_str() {
        "status" => no_params(&id, &method, params).map(|()| Method::Status)?,
        "peers" => no_params(&id, &method, params).map(|()| Method::Peers)?,
        "task.submit" => Method::TaskSubmit(typed_params(&id, &method, params)?),
        "task.wait" => Method::TaskWait(typed_params(&id, &method, params)?),
        "history" => Method::History(typed_params(&id, &method, params)?),
        "history.append" => Method::HistoryAppend(typed_params(&id, &method, params)?),
        "shards" => no_params(&id, &method, params).map(|()| Method::Shards)?,
        "agent.register" => Method::AgentRegister(typed_params(&id, &method, params)?),
        "agent.next" => Method::AgentNext(typed_params(&id, &method, params)?),
        "agent.result" => Method::AgentResult(typed_params(&id, &method, params)?),
        "vote.propose" => Method::VotePropose(typed_params(&id, &method, params)?),
        "vote.ballot" => Method::VoteBallot(typed_params(&id, &method, params)?),
        "vote.tally" => Method::VoteTally(typed_params(&id, &method, params)?),
        other => {
            return Err(ApiError::new(
                id,
                code::METHOD_NOT_FOUND,
                format!("unknown method {other:?}; known methods: {}", METHODS.join(", ")),
            ));
        }
    };
    Ok(Request { id, method })
}

fn typed_params<T: serde::de::DeserializeOwned>(id: &Value, method: &str, params: Value) -> Result<T, ApiError> {
    serde_json::from_value::<T>(params)
        .map_err(|e| ApiError::new(id.clone(), code::INVALID_PARAMS, format!("{method}: invalid params: {e}")))
}

fn no_params(id: &Value, method: &str, params: Value) -> Result<(), ApiError> {
    serde_json::from_value::<NoParams>(params)
        .map(|_| ())
        .map_err(|e| ApiError::new(id.clone(), code::INVALID_PARAMS, format!("{method}: invalid params: {e}")))
}

/// A success reply frame.
pub fn result_reply<T: Serialize>(id: &Value, result: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        id: &'a Value,
        result: &'a T,
    }
    match serde_json::to_vec(&Reply { id, result }) {
        Ok(bytes) => bytes,
        Err(e) => error_reply(id, &ErrorObject { code: code::INTERNAL_ERROR, message: format!("cannot encode reply: {e}") }),
    }
}

/// An error reply frame.
pub fn error_reply(id: &Value, error: &ErrorObject) -> Vec<u8> {
    serde_json::json!({ "id": id, "error": error }).to_string().into_bytes()
}

/// A reply as a client reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Reply<T> {
    pub id: Value,
    pub result: Option<T>,
    pub error: Option<ErrorObject>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(frame: &[u8]) -> ApiError {
        parse_request(frame).unwrap_err()
    }

    #[test]
    fn parses_valid_requests() {
        let r = parse_request(br#"{"id": 7, "method": "status", "params": {}}"#).unwrap();
        assert_eq!(r, Request { id: json!(7), method: Method::Status });
        let r = parse_request(br#"{"id": "a", "method": "peers"}"#).unwrap();
        assert_eq!(r.method, Method::Peers);
        assert_eq!(r.id, json!("a"));
    }

    #[test]
    fn rejects_non_json() {
        let e = err(b"hello");
        assert_eq!(e.error.code, code::PARSE_ERROR);
        assert_eq!(e.id, Value::Null);
    }

    #[test]
    fn rejects_non_object_and_missing_method() {
        assert_eq!(err(b"[1,2]").error.code, code::INVALID_REQUEST);
        let e = err(br#"{"id": 3}"#);
        assert_eq!((e.error.code, e.id), (code::INVALID_REQUEST, json!(3)));
        assert_eq!(err(br#"{"id": 3, "method": 5}"#).error.code, code::INVALID_REQUEST);
        assert_eq!(err(br#"{"id": 3, "method": "status", "extra": 1}"#).error.code, code::INVALID_REQUEST);
    }

    #[test]
    fn rejects_unknown_method_with_the_list_of_known_ones() {
        let e = err(br#"{"id": 1, "method": "reboot"}"#);
        assert_eq!(e.error.code, code::METHOD_NOT_FOUND);
        assert!(e.error.message.contains("status"), "{}", e.error.message);
    }

    #[test]
    fn rejects_wrong_params() {
        let e = err(br#"{"id": 1, "method": "status", "params": {"verbose": true}}"#);
        assert_eq!(e.error.code, code::INVALID_PARAMS);
        assert!(e.error.message.contains("verbose"), "{}", e.error.message);
        assert_eq!(err(br#"{"id": 1, "method": "peers", "params": [1]}"#).error.code, code::INVALID_PARAMS);
    }

    #[test]
    fn rejects_oversized_request() {
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(err(&big).error.code, code::INVALID_REQUEST);
    }

    #[test]
    fn request_id_is_read_without_the_rest() {
        assert_eq!(request_id(br#"{"id": 7, "method": "status", "params": {"x": [1, 2]}}"#), serde_json::json!(7));
        assert_eq!(request_id(br#"{"method": "status", "id": "a"}"#), serde_json::json!("a"));
        assert_eq!(request_id(br#"{"method": "status"}"#), Value::Null);
        assert_eq!(request_id(b"[1, 2]"), Value::Null);
        assert_eq!(request_id(b"{\"id\": 1"), Value::Null);
    }

    #[test]
    fn error_reply_echoes_the_id() {
        let e = err(br#"{"id": {"n": 1}, "method": "nope"}"#);
        let reply: Value = serde_json::from_slice(&e.to_reply()).unwrap();
        assert_eq!(reply["id"], json!({"n": 1}));
        assert_eq!(reply["error"]["code"], json!(code::METHOD_NOT_FOUND));
    }

    #[test]
    fn events_are_tagged() {
        let e = Event::PeerLeft { peer_id: "p".into(), reason: "disconnected".into() };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v, json!({"event": "peer_left", "peer_id": "p", "reason": "disconnected"}));
    }
}
