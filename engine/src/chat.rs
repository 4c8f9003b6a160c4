//! Chat templates: a conversation rendered into the prompt text the model was trained on,
//! with the model's own Hugging Face chat template (Jinja, `chat_template` in its config).
//!
//! Rendered the way `transformers`' `apply_chat_template` renders it: Jinja with
//! `trim_blocks` and `lstrip_blocks`, the variables `messages`, `add_generation_prompt`,
//! `bos_token` and `eos_token`, the function `raise_exception(message)` (a template's own
//! refusal, e.g. of roles out of order, becomes [`ChatError::Refused`]), Python's string
//! methods (`.strip()`, `.startswith()`, ... via `minijinja-contrib`'s pycompat), and a
//! `tojson` that writes JSON as Python's `json.dumps` does (`", "` and `": "`, no ASCII
//! escaping). Checked against Python `jinja2` in the engine's tests.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// Longest template accepted (the largest published ones are about 20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (the template decides what it accepts).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.to_owned(), content: content.to_owned() }
    }
}

/// Why a conversation could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model has no chat template (config.json has no \"chat_template\")")]
    NoTemplate,
    #[error("the chat template is {0} bytes, limit {MAX_TEMPLATE_BYTES}")]
    TooLarge(usize),
    #[error("the chat template does not parse: {0}")]
    Parse(String),
    #[error("the chat template refused the conversation: {0}")]
    Refused(String),
    #[error("the chat template failed: {0}")]
    Render(String),
}

/// A model's chat template, parsed once.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Parses `source`; `bos_token` and `eos_token` are the texts of the model's special
    /// tokens (templates write them out).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatError::TooLarge(source.len()));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> { Err(Error::new(ErrorKind::InvalidOperation, format!("{REFUSED}{message}"))) });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned()).map_err(|e| ChatError::Parse(describe(&e)))?;
        Ok(Self { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self.env.get_template(NAME).map_err(|e| ChatError::Render(describe(&e)))?;
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        template.render(context).map_err(|e| match e.detail().and_then(|d| d.strip_prefix(REFUSED)) {
            Some(message) => ChatError::Refused(message.to_owned()),
            None => ChatError::Render(describe(&e)),
        })
    }
}

/// Marks the errors `raise_exception` makes.
const REFUSED: &str = "template refused: ";

/// An error with its causes and, where known, the template line.
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `tojson` as `transformers` defines it: Python's `json.dumps` with its default
/// separators and without ASCII escaping; maps keep their order, as Python's dicts do.
fn tojson(value: Value) -> Result<Value, Error> {
    let mut out = String::new();
    write_python_json(&value, &mut out, 0)?;
    Ok(Value::from_safe_string(out))
}

/// Deepest nesting `tojson` writes.
const MAX_JSON_DEPTH: usize = 64;

fn write_python_json(value: &Value, out: &mut String, depth: usize) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    let bad = |why: String| Error::new(ErrorKind::InvalidOperation, format!("tojson: {why}"));
    if depth > MAX_JSON_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_JSON_DEPTH}")));
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&value.to_string()),
        ValueKind::String => out.push_str(&serde_json::Value::String(value.as_str().unwrap_or_default().to_owned()).to_string()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(&item, out, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::Value::String(key.to_string()).to_string());
                out.push_str(": ");
                write_python_json(&value.get_item(&key)?, out, depth + 1)?;
            }
            out.push('}');
        }
        other => return Err(bad(format!("cannot write a {other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn a_chatml_conversation_renders_with_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let text = t.render(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let text = t.render(&[ChatMessage::new("user", "Hi")], false).unwrap();
        assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn a_template_that_raises_is_a_refusal_with_its_message() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}ok";
        let t = ChatTemplate::new(source, "", "").unwrap();
        match t.render(&[ChatMessage::new("assistant", "x")], true) {
            Err(ChatError::Refused(m)) => assert_eq!(m, "Conversation must start with the user"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.render(&[ChatMessage::new("user", "x")], true).unwrap(), "ok");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(ChatError::Parse(_))));
        assert!(matches!(ChatTemplate::new(&"x".repeat(MAX_TEMPLATE_BYTES + 1), "", ""), Err(ChatError::TooLarge(_))));
    }

    #[test]
    fn tojson_writes_as_python_does() {
        let t = ChatTemplate::new("{{ messages | tojson }}", "", "").unwrap();
        let text = t.render(&[ChatMessage::new("user", "é \"q\" <b>")], false).unwrap();
        assert_eq!(text, r#"[{"role": "user", "content": "é \"q\" <b>"}]"#);
    }
}
