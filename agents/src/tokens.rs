//! The `tokens` agent: exact token counts per file for the `cl100k_base` (GPT-4,
//! GPT-3.5) and `o200k_base` (GPT-4o) encodings. The encodings ship inside the
//! `tiktoken-rs` crate; nothing is downloaded. Text is encoded as ordinary text: a
//! special-token string such as `<|endoftext|>` inside a file counts as the characters
//! it is made of, as when the file is pasted into a prompt.

use serde::Serialize;
use tiktoken_rs::CoreBPE;

use crate::agent::{Agent, AgentError, Task};
use crate::AgentName;

/// The capability this agent serves.
pub const CAPABILITY: &str = "python.tokens";

/// Token counts of one file, or of a whole task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub cl100k_base: u64,
    pub o200k_base: u64,
}

#[derive(Debug, Serialize)]
struct FileCounts<'a> {
    path: &'a str,
    #[serde(flatten)]
    counts: Counts,
}

/// Counts tokens. The encodings load on the first count (they are large), so merely
/// listing the agent costs nothing.
pub struct TokensAgent {
    name: AgentName,
}

fn cl100k() -> &'static CoreBPE {
    tiktoken_rs::cl100k_base_singleton()
}

fn o200k() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

impl std::fmt::Debug for TokensAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokensAgent").finish_non_exhaustive()
    }
}

impl Default for TokensAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl TokensAgent {
    pub fn new() -> Self {
        Self { name: AgentName::from_static("tokens") }
    }

    /// Counts the tokens of `text` in both encodings.
    pub fn count(&self, text: &str) -> Counts {
        Counts {
            cl100k_base: cl100k().encode_ordinary(text).len() as u64,
            o200k_base: o200k().encode_ordinary(text).len() as u64,
        }
    }
}

impl Agent for TokensAgent {
    fn name(&self) -> &AgentName {
        &self.name
    }

    fn capabilities(&self) -> &[&'static str] {
        &[CAPABILITY]
    }

    fn handle(&self, task: &Task) -> Result<serde_json::Value, AgentError> {
        if task.capability != CAPABILITY {
            return Err(self.unsupported(task));
        }
        let mut total = Counts::default();
        let files: Vec<FileCounts<'_>> = task
            .files
            .iter()
            .map(|f| {
                let counts = self.count(&f.text);
                total.cl100k_base += counts.cl100k_base;
                total.o200k_base += counts.o200k_base;
                FileCounts { path: &f.path, counts }
            })
            .collect();
        Ok(serde_json::json!({ "files": files, "total": total }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::SourceFile;

    #[test]
    fn known_token_ids_and_counts() {
        let agent = TokensAgent::new();
        // Reference ids published with OpenAI's tiktoken.
        assert_eq!(cl100k().encode_ordinary("hello world"), vec![15339, 1917]);
        assert_eq!(cl100k().encode_ordinary("tiktoken is great!"), vec![83, 1609, 5963, 374, 2294, 0]);
        assert_eq!(agent.count("hello world"), Counts { cl100k_base: 2, o200k_base: 2 });
        assert_eq!(agent.count(""), Counts::default());
    }

    #[test]
    fn special_token_text_counts_as_ordinary_text() {
        let agent = TokensAgent::new();
        assert!(agent.count("<|endoftext|>").cl100k_base > 1);
    }

    #[test]
    fn handles_a_task_per_file_and_in_total() {
        let agent = TokensAgent::new();
        let task = Task {
            capability: CAPABILITY.into(),
            files: vec![
                SourceFile { path: "a.py".into(), text: "hello world".into() },
                SourceFile { path: "b.py".into(), text: "def f(x):\n    return x + 1\n".into() },
            ],
        };
        let out = agent.handle(&task).unwrap();
        assert_eq!(out["files"][0]["path"], "a.py");
        assert_eq!(out["files"][0]["cl100k_base"], 2);
        let b = agent.count("def f(x):\n    return x + 1\n");
        assert_eq!(out["total"]["cl100k_base"], 2 + b.cl100k_base);
        assert_eq!(out["total"]["o200k_base"], 2 + b.o200k_base);
    }

    #[test]
    fn other_capabilities_are_refused() {
        let agent = TokensAgent::new();
        let task = Task { capability: "python.complexity".into(), files: vec![] };
        assert!(matches!(agent.handle(&task), Err(AgentError::Unsupported { .. })));
    }
}
