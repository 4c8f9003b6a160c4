//! Response bodies: completions and their stream chunks, model lists, usage,
//! log-probabilities, in the shapes OpenAI's clients parse.

use serde::Serialize;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV blocks were reused instead of computed.
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64, cached_tokens: u64) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens, prompt_tokens_details: PromptTokensDetails { cached_tokens } }
    }
}

/// A token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// A generated token's log-probability and the most likely alternatives (chat shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

/// `choices[].logprobs` of a (legacy) completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token: alternative → log-probability.
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Byte offset of each token in the generated text.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// The completion shape of chat-shaped log-probabilities; offsets start at `offset`.
    pub fn from_tokens(tokens: &[TokenLogprob], mut offset: usize) -> Self {
        let mut out = Self { tokens: Vec::new(), token_logprobs: Vec::new(), top_logprobs: Vec::new(), text_offset: Vec::new() };
        for t in tokens {
            out.tokens.push(t.token.clone());
            out.token_logprobs.push(t.logprob);
            out.top_logprobs.push(t.top_logprobs.iter().map(|a| (a.token.clone(), serde_json::json!(a.logprob))).collect());
            out.text_offset.push(offset);
            offset += t.token.len();
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

/// `object: "chat.completion"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `object: "chat.completion.chunk"`: one event of a streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    /// With `include_usage`: `null` on every chunk but the last, which has no choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `object: "text_completion"`, whole or as a stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// One model of `/v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// Beyond OpenAI: where in the swarm it runs, and its context length.
    pub pyagent: ModelPlaces,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPlaces {
    pub context_length: u64,
    /// Peer ids serving it (`local` for this node).
    pub peers: Vec<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_totals_and_cached_tokens() {
        let v = serde_json::to_value(Usage::new(10, 5, 4)).unwrap();
        assert_eq!(v, serde_json::json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}}));
    }

    #[test]
    fn chunk_usage_is_absent_null_or_set() {
        let mut c = ChatChunk { id: "x".into(), object: "chat.completion.chunk", created: 1, model: "m".into(), system_fingerprint: "f".into(), choices: vec![], usage: None };
        assert!(serde_json::to_value(&c).unwrap().get("usage").is_none());
        c.usage = Some(None);
        assert_eq!(serde_json::to_value(&c).unwrap()["usage"], serde_json::Value::Null);
        c.usage = Some(Some(Usage::new(1, 1, 0)));
        assert_eq!(serde_json::to_value(&c).unwrap()["usage"]["total_tokens"], 2);
    }

    #[test]
    fn completion_logprobs_keep_offsets() {
        let t = |s: &str| TokenLogprob { token: s.into(), logprob: -0.5, bytes: s.as_bytes().to_vec(), top_logprobs: vec![TopLogprob { token: s.into(), logprob: -0.5, bytes: vec![] }] };
        let lp = CompletionLogprobs::from_tokens(&[t("ab"), t("c")], 3);
        assert_eq!(lp.text_offset, vec![3, 5]);
        assert_eq!(lp.top_logprobs[1]["c"], serde_json::json!(-0.5));
    }
}
