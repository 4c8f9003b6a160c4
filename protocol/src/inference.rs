//! The inference stream protocol (`/pyagent/infer/1`): a requester opens a libp2p stream
//! to the executor, writes one [`InferRequest`] frame, and reads [`InferFrame`]s as the
//! tokens are generated — [`InferFrame::Piece`]s, then one [`InferFrame::Done`] or
//! [`InferFrame::Error`]. Either side closing the stream ends it: a requester that goes
//! away cancels the generation. Each frame is a 4-byte big-endian length and a
//! [`crate::codec`] frame, bounded by [`MAX_REQUEST_BYTES`] / [`MAX_FRAME_BYTES`].
//!
//! The executor answers [`InferFrame::Queued`] as soon as the request is in its model's
//! queue, and again every [`QUEUED_EVERY_SECS`] until the first piece, so a requester
//! tells a peer that is busy from one that is gone within seconds, not at the first-token
//! deadline.
//!
//! A stream rather than request-response: the tokens flow as they come with the
//! transport's own flow control (a slow reader holds the executor back instead of
//! filling a buffer), and closing it is the cancellation, with no extra message.

use serde::{Deserialize, Serialize};

/// The stream protocol's name.
pub const INFER_PROTOCOL: &str = "/pyagent/infer/1";
/// Largest request frame (a long conversation fits).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest response frame: a piece with its log-probabilities, or the final token list.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// How often an executor says a request is still queued (before its first piece).
pub const QUEUED_EVERY_SECS: u64 = 5;
/// Bounds that keep a hostile request small.
pub const MAX_STOPS: usize = 4;
pub const MAX_STOP_LEN: usize = 256;
pub const MAX_TOP_LOGPROBS: u8 = 20;
pub const MAX_MESSAGES: usize = 4096;

/// What to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InferPrompt {
    Tokens(Vec<u32>),
    Text(String),
    /// (role, content) pairs, rendered by the executor with its model's chat template.
    Chat(Vec<(String, String)>),
}

/// One generation asked of a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// The model's name as the executor advertises it.
    pub model: String,
    pub prompt: InferPrompt,
    /// 0: to the end of the model's context.
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    pub logprobs: Option<u8>,
}

/// Why an [`InferRequest`] is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InferRequestError {
    pub field: &'static str,
    pub reason: String,
}

impl InferRequest {
    /// Checks the bounds a decoded request must keep.
    pub fn validate(&self) -> Result<(), InferRequestError> {
        let bad = |field, reason: String| Err(InferRequestError { field, reason });
        if self.model.is_empty() || self.model.len() > 256 {
            return bad("model", format!("{} bytes, want 1 to 256", self.model.len()));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", format!("{} is outside 0 to 2", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if self.stop.len() > MAX_STOPS || self.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return bad("stop", format!("at most {MAX_STOPS} strings of 1 to {MAX_STOP_LEN} bytes"));
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return bad("logprobs", format!("at most {MAX_TOP_LOGPROBS} alternatives"));
        }
        match &self.prompt {
            InferPrompt::Tokens(t) if t.is_empty() => bad("prompt", "no tokens".into()),
            InferPrompt::Text(t) if t.is_empty() => bad("prompt", "empty text".into()),
            InferPrompt::Chat(m) if m.is_empty() || m.len() > MAX_MESSAGES => bad("prompt", format!("{} messages, want 1 to {MAX_MESSAGES}", m.len())),
            _ => Ok(()),
        }
    }
}

/// A generated token's log-probability and its alternatives: (text, log-probability).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireLogprob {
    pub token: u32,
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(u32, String, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireFinish {
    Eos,
    Stop,
    Length,
}

/// Why the executor did not (or could no longer) serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InferErrorKind {
    /// Its queue is full: another peer may serve it.
    Overloaded,
    /// It does not serve this model (any more).
    NotServed,
    /// The request itself is wrong (bad prompt, over the context): no peer will serve it.
    BadRequest,
    ContextLength,
    /// Anything else on the executor.
    Failed,
}

/// What the executor sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InferFrame {
    Piece { text: String, logprobs: Vec<WireLogprob> },
    Done {
        tokens: Vec<u32>,
        prompt_tokens: u32,
        cached_tokens: u32,
        finish: WireFinish,
        prefill_secs: f64,
        decode_secs: f64,
    },
    Error { kind: InferErrorKind, message: String },
    /// The request waits in the executor's queue (at once, then every
    /// [`QUEUED_EVERY_SECS`] until the first piece); `ahead`: requests before it.
    Queued { ahead: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn request() -> InferRequest {
        InferRequest {
            model: "smollm2".into(),
            prompt: InferPrompt::Chat(vec![("user".into(), "hi".into())]),
            max_tokens: 8,
            temperature: 0.0,
            top_p: 1.0,
            seed: 1,
            stop: vec!["\n".into()],
            logprobs: Some(3),
        }
    }

    #[test]
    fn frames_round_trip_and_requests_are_bounded() {
        let frame = codec::encode(&request()).unwrap();
        assert_eq!(codec::decode::<InferRequest>(&frame, MAX_REQUEST_BYTES).unwrap(), request());
        assert!(request().validate().is_ok());
        let piece = InferFrame::Piece { text: "a".into(), logprobs: vec![WireLogprob { token: 3, text: "a".into(), logprob: -0.1, top: vec![(3, "a".into(), -0.1)] }] };
        assert_eq!(codec::decode::<InferFrame>(&codec::encode(&piece).unwrap(), MAX_FRAME_BYTES).unwrap(), piece);
        for (field, broken) in [
            ("model", InferRequest { model: String::new(), ..request() }),
            ("temperature", InferRequest { temperature: f32::NAN, ..request() }),
            ("top_p", InferRequest { top_p: 0.0, ..request() }),
            ("stop", InferRequest { stop: vec![String::new()], ..request() }),
            ("logprobs", InferRequest { logprobs: Some(21), ..request() }),
            ("prompt", InferRequest { prompt: InferPrompt::Tokens(vec![]), ..request() }),
            ("prompt", InferRequest { prompt: InferPrompt::Chat(vec![]), ..request() }),
        ] {
            assert_eq!(broken.validate().unwrap_err().field, field);
        }
    }
}
