//! Request bodies of `/v1/chat/completions` and `/v1/completions`, checked field by field
//! into a [`Generation`]. Never panics; each refusal names its parameter. Fields this API
//! does not act on are ignored when they are at their neutral value (`user`,
//! `frequency_penalty: 0`, ...) and refused otherwise, so that nobody gets silently less
//! than they asked for.

use serde_json::{Map, Value};

use super::ApiError;

/// Most alternatives `top_logprobs` (chat) or `logprobs` (completions) may ask for.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most stop strings, as OpenAI allows.
pub const MAX_STOPS: usize = 4;
/// Longest stop string, bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Most chat messages in one request.
pub const MAX_MESSAGES: usize = 4096;
/// Longest model name.
pub const MAX_MODEL_LEN: usize = 256;

/// A chat message (role `system`, `user` or `assistant`; `developer` is taken as
/// `system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// Rendered with the model's chat template.
    Chat(Vec<Message>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A checked request for one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub model: String,
    pub prompt: PromptInput,
    /// `None`: until the end of the sequence or of the model's context.
    pub max_tokens: Option<u32>,
    /// 0 = greedy. OpenAI's default is 1.
    pub temperature: f32,
    pub top_p: f32,
    /// `None`: a random seed.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Log-probabilities of the generated tokens, with this many alternatives.
    pub logprobs: Option<u32>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    pub include_usage: bool,
}

type Object = Map<String, Value>;

fn object(body: &[u8]) -> Result<Object, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
    }
}

/// A field that is absent or `null` is `None`.
fn field<'a>(o: &'a Object, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn number(o: &Object, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(name, format!("{name} must be between {min} and {max}, got {n}"))),
        },
        Some(other) => Err(ApiError::invalid(name, format!("{name} must be a number, got {}", kind(other)))),
    }
}

fn integer(o: &Object, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be between {min} and {max}, got {n}"))),
            None => Err(ApiError::invalid(name, format!("{name} must be an integer, got {n}"))),
        },
        Some(other) => Err(ApiError::invalid(name, format!("{name} must be an integer, got {}", kind(other)))),
    }
}

fn boolean(o: &Object, name: &str) -> Result<bool, ApiError> {
    match field(o, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(name, format!("{name} must be true or false, got {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn model(o: &Object) -> Result<String, ApiError> {
    match field(o, "model") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_MODEL_LEN => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid("model", format!("model must be 1 to {MAX_MODEL_LEN} bytes (see GET /v1/models)"))),
        Some(other) => Err(ApiError::invalid("model", format!("model must be a string, got {}", kind(other)))),
        None => Err(ApiError::invalid("model", "model is required (see GET /v1/models for the models of the swarm)")),
    }
}

fn stop(o: &Object) -> Result<Vec<String>, ApiError> {
    let stops = match field(o, "stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| ApiError::invalid("stop", format!("stop must hold strings, got {}", kind(v)))))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(ApiError::invalid("stop", format!("stop must be a string or a list of strings, got {}", kind(other)))),
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOPS} stop strings, got {}", stops.len())));
    }
    if let Some(s) = stops.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
        return Err(ApiError::invalid("stop", format!("a stop string must be 1 to {MAX_STOP_LEN} bytes, got {}", s.len())));
    }
    Ok(stops)
}

/// Refuses a field that asks for something this API does not do.
fn unsupported(o: &Object, name: &str, neutral: impl Fn(&Value) -> bool, what: &str) -> Result<(), ApiError> {
    match field(o, name) {
        Some(v) if !neutral(v) => Err(ApiError::invalid(name, format!("{name} is not supported: {what}"))),
        _ => Ok(()),
    }
}

fn is_zero(v: &Value) -> bool {
    v.as_f64() == Some(0.0)
}

fn is_one(v: &Value) -> bool {
    v.as_f64() == Some(1.0)
}

/// The parameters both endpoints share; `logprobs` is read by the caller.
fn common(o: &Object, prompt: PromptInput, logprobs: Option<u32>) -> Result<Generation, ApiError> {
    let model = model(o)?;
    unsupported(o, "n", is_one, "only n = 1 is served (send the request n times)")?;
    unsupported(o, "frequency_penalty", is_zero, "leave it 0")?;
    unsupported(o, "presence_penalty", is_zero, "leave it 0")?;
    unsupported(o, "logit_bias", |v| v.as_object().is_some_and(Map::is_empty), "leave it out")?;
    let max_tokens = match integer(o, "max_completion_tokens", 1, i64::from(u32::MAX))? {
        Some(n) => Some(n),
        None => integer(o, "max_tokens", 1, i64::from(u32::MAX))?,
    };
    let temperature = number(o, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32;
    let top_p = number(o, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32;
    if top_p <= 0.0 {
        return Err(ApiError::invalid("top_p", "top_p must be above 0"));
    }
    let seed = integer(o, "seed", i64::MIN, i64::MAX)?.map(|s| s as u64);
    let stream = boolean(o, "stream")?;
    let include_usage = match field(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) if stream => boolean(so, "include_usage").map_err(|_| ApiError::invalid("stream_options.include_usage", "include_usage must be true or false"))?,
        Some(Value::Object(_)) => return Err(ApiError::invalid("stream_options", "stream_options is only allowed when stream is true")),
        Some(other) => return Err(ApiError::invalid("stream_options", format!("stream_options must be an object, got {}", kind(other)))),
    };
    Ok(Generation { model, prompt, max_tokens: max_tokens.map(|n| n as u32), temperature, top_p, seed, stop: stop(o)?, logprobs, stream, include_usage })
}

fn messages(o: &Object) -> Result<Vec<Message>, ApiError> {
    let items = match field(o, "messages") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "messages must not be empty")),
        Some(other) => return Err(ApiError::invalid("messages", format!("messages must be a list, got {}", kind(other)))),
        None => return Err(ApiError::invalid("messages", "messages is required: a list of {\"role\", \"content\"} objects")),
    };
    if items.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", format!("at most {MAX_MESSAGES} messages, got {}", items.len())));
    }
    items.iter().enumerate().map(|(i, m)| message(i, m)).collect()
}

fn message(i: usize, value: &Value) -> Result<Message, ApiError> {
    let param = |f: &str| format!("messages[{i}]{f}");
    let m = value.as_object().ok_or_else(|| ApiError::invalid(&param(""), format!("messages[{i}] must be an object, got {}", kind(value))))?;
    let role = match field(m, "role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => return Err(ApiError::invalid(&param(".role"), format!("messages[{i}].role {r:?}: tool calls are not supported"))),
            _ => return Err(ApiError::invalid(&param(".role"), format!("messages[{i}].role must be system, user or assistant, got {r:?}"))),
        },
        Some(other) => return Err(ApiError::invalid(&param(".role"), format!("messages[{i}].role must be a string, got {}", kind(other)))),
        None => return Err(ApiError::invalid(&param(".role"), format!("messages[{i}].role is required"))),
    };
    let content = match field(m, "content") {
        Some(Value::String(s)) => s.clone(),
        // Content parts: only text ones.
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(ApiError::invalid(&param(&format!(".content[{j}]")), format!("messages[{i}].content[{j}]: only {{\"type\": \"text\", \"text\": ...}} parts are supported"))),
                }
            }
            text
        }
        None if role == "assistant" => String::new(),
        Some(other) => return Err(ApiError::invalid(&param(".content"), format!("messages[{i}].content must be a string or a list of text parts, got {}", kind(other)))),
        None => return Err(ApiError::invalid(&param(".content"), format!("messages[{i}].content is required"))),
    };
    Ok(Message { role: role.to_owned(), content })
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<Generation, ApiError> {
    let o = object(body)?;
    let messages = messages(&o)?;
    unsupported(&o, "tools", |v| v.as_array().is_some_and(Vec::is_empty), "tool calls are not served")?;
    unsupported(&o, "response_format", |v| v.get("type").and_then(Value::as_str) == Some("text"), "only {\"type\": \"text\"}")?;
    let top = integer(&o, "top_logprobs", 0, i64::from(MAX_TOP_LOGPROBS))?;
    let logprobs = match (boolean(&o, "logprobs")?, top) {
        (true, top) => Some(top.unwrap_or(0) as u32),
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        (false, None) => None,
    };
    common(&o, PromptInput::Chat(messages), logprobs)
}

/// Parses a `/v1/completions` body: `prompt` is a string, a list of one string, a list
/// of token ids, or a list of one such list.
pub fn parse_completion(body: &[u8]) -> Result<Generation, ApiError> {
    let o = object(body)?;
    let prompt = match field(&o, "prompt") {
        Some(Value::String(s)) => PromptInput::Text(s.clone()),
        Some(Value::Array(items)) => prompt_list(items)?,
        Some(other) => return Err(ApiError::invalid("prompt", format!("prompt must be a string or a list of token ids, got {}", kind(other)))),
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
    };
    if matches!(&prompt, PromptInput::Text(s) if s.is_empty()) || matches!(&prompt, PromptInput::Tokens(t) if t.is_empty()) {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    unsupported(&o, "echo", |v| v == &Value::Bool(false), "leave it false")?;
    unsupported(&o, "suffix", |v| v.as_str() == Some(""), "insertion is not served")?;
    unsupported(&o, "best_of", is_one, "only best_of = 1")?;
    let logprobs = integer(&o, "logprobs", 0, i64::from(MAX_TOP_LOGPROBS))?.map(|n| n as u32);
    common(&o, prompt, logprobs)
}

fn prompt_list(items: &[Value]) -> Result<PromptInput, ApiError> {
    match items {
        [Value::String(s)] => Ok(PromptInput::Text(s.clone())),
        [Value::Array(inner)] => tokens(inner),
        [] => Err(ApiError::invalid("prompt", "prompt must not be empty")),
        [first, ..] if first.is_number() => tokens(items),
        _ => Err(ApiError::invalid("prompt", format!("one prompt per request, got {}", items.len()))),
    }
}

fn tokens(items: &[Value]) -> Result<PromptInput, ApiError> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| ApiError::invalid("prompt", format!("a token id must be a non-negative integer, got {v}"))))
        .collect::<Result<Vec<u32>, _>>()
        .map(PromptInput::Tokens)
}

#[cfg(test)]
mod tests;
