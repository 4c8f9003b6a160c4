//! Error replies the API's methods share: the caller's fault (invalid params), a capability
//! this node does not have right now (unavailable), or this node's own failure (internal).

use pyagent_protocol::api::{ApiError, code};
use serde_json::Value;

pub(super) fn invalid(id: &Value, message: impl Into<String>) -> Vec<u8> {
    ApiError::new(id.clone(), code::INVALID_PARAMS, message).to_reply()
}

pub(super) fn unavailable(id: &Value, message: impl Into<String>) -> Vec<u8> {
    ApiError::new(id.clone(), code::UNAVAILABLE, message).to_reply()
}

pub(super) fn internal(id: &Value, message: impl Into<String>) -> Vec<u8> {
    ApiError::new(id.clone(), code::INTERNAL_ERROR, message).to_reply()
}
