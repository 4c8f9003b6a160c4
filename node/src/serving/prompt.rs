//! A model's prompts as tokens: chat messages through its chat template, text through its
//! tokenizer. Shared by the worker (which runs the request) and the placing node (which
//! needs the prompt's block hashes to credit peers that hold its prefix), so tokenizing
//! never waits for the engine.

use pyagent_engine::chat::ChatTemplate;
use pyagent_engine::infer::ModelDir;

use super::{Prompt, ServeError};

/// What turns a [`Prompt`] into the model's tokens.
#[derive(Debug)]
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// Compiled once; a model without one refuses chat requests with the reason.
    template: Result<ChatTemplate, String>,
    vocab: u32,
}

impl PromptTokenizer {
    pub fn of(model: &ModelDir) -> Self {
        Self { tokenizer: model.tokenizer.clone(), template: model.chat_template().map_err(|e| e.to_string()), vocab: model.config.vocab_size }
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, ServeError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| ServeError::BadPrompt(format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The prompt's tokens, checked against the vocabulary.
    pub fn tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, ServeError> {
        let tokens = match prompt {
            Prompt::Tokens(tokens) => tokens.clone(),
            Prompt::Text(text) => self.encode(text)?,
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().map_err(|e| ServeError::BadPrompt(format!("this model takes no chat requests: {e}")))?;
                let text = template.render(messages, true).map_err(|e| ServeError::BadPrompt(e.to_string()))?;
                self.encode(&text)?
            }
        };
        if tokens.is_empty() {
            return Err(ServeError::BadPrompt("the prompt is empty".into()));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t >= self.vocab) {
            return Err(ServeError::BadPrompt(format!("token {bad} is outside the model's vocabulary of {}", self.vocab)));
        }
        Ok(tokens)
    }
}
