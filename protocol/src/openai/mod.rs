//! The OpenAI-compatible HTTP API's JSON: requests parsed and checked into typed
//! [`request::Generation`]s, and the response, chunk and error bodies. Pure data; the
//! node's HTTP server (`node/src/http`) does the I/O.
//!
//! - [`request`]: `/v1/chat/completions` and `/v1/completions` bodies → [`request::Generation`];
//!   every refusal is an [`ApiError`] naming the parameter at fault.
//! - [`response`]: completions, stream chunks, model lists, usage.
//! - [`error`]: the error body, `{"error": {"message", "type", "param", "code"}}`, with
//!   its HTTP status.

pub mod error;
pub mod request;
pub mod response;

pub use error::ApiError;
pub use request::{Generation, MAX_TOP_LOGPROBS, Message, PromptInput, parse_chat, parse_completion};
