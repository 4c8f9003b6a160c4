//! What `pyagent analyze` gathers from the swarm's results, and how it prints it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde_json::{Value, json};

/// A task that did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTask {
    pub capability: String,
    pub files: usize,
    pub reason: String,
}

/// The merged results of one analysis.
#[derive(Debug, Default)]
pub struct Analysis {
    pub root: String,
    pub files: usize,
    pub lines: usize,
    pub bytes: usize,
    /// Path → radon-style blocks, or `{"error": ...}`.
    pub complexity: BTreeMap<String, Value>,
    /// Path → `{cl100k_base, o200k_base}`.
    pub tokens: BTreeMap<String, Value>,
    pub tokens_total: [u64; 2],
    /// The `imports` agent's whole result.
    pub imports: Option<Value>,
    /// Files not sent (too large, undecodable).
    pub skipped: BTreeMap<String, String>,
    pub failed: Vec<FailedTask>,
    /// Tasks completed per executor.
    pub executors: BTreeMap<String, usize>,
    pub tasks: usize,
    /// Every task: id, capability, final state, executor (for `pyagent history`).
    pub task_list: Vec<Value>,
    pub elapsed: Duration,
}

/// One block of the complexity report, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedBlock {
    pub path: String,
    pub kind: char,
    pub name: String,
    pub lineno: u64,
    pub complexity: u64,
    pub rank: String,
}

impl Analysis {
    /// Merges one completed task's result.
    pub fn add(&mut self, capability: &str, executor: Option<&str>, mut result: Value) {
        if let Some(executor) = executor {
            *self.executors.entry(executor.to_owned()).or_default() += 1;
        }
        match capability {
            pyagent_agents::complexity::CAPABILITY => {
                if let Value::Object(files) = result["files"].take() {
                    self.complexity.extend(files);
                }
            }
            pyagent_agents::tokens::CAPABILITY => {
                for file in result["files"].as_array().into_iter().flatten() {
                    if let Some(path) = file["path"].as_str() {
                        let counts = json!({ "cl100k_base": file["cl100k_base"], "o200k_base": file["o200k_base"] });
                        self.tokens.insert(path.to_owned(), counts);
                    }
                }
                self.tokens_total[0] += result["total"]["cl100k_base"].as_u64().unwrap_or(0);
                self.tokens_total[1] += result["total"]["o200k_base"].as_u64().unwrap_or(0);
            }
            pyagent_agents::imports::CAPABILITY => self.imports = Some(result),
            _ => {}
        }
    }

    /// Every function, method and class, most complex first.
    pub fn ranked_blocks(&self) -> Vec<RankedBlock> {
        let mut out = Vec::new();
        for (path, blocks) in &self.complexity {
            for block in blocks.as_array().into_iter().flatten() {
                let kind = match block["type"].as_str() {
                    Some("method") => 'M',
                    Some("class") => 'C',
                    _ => 'F',
                };
                let name = match block["classname"].as_str() {
                    Some(class) => format!("{class}.{}", block["name"].as_str().unwrap_or("?")),
                    None => block["name"].as_str().unwrap_or("?").to_owned(),
                };
                out.push(RankedBlock {
                    path: path.clone(),
                    kind,
                    name,
                    lineno: block["lineno"].as_u64().unwrap_or(0),
                    complexity: block["complexity"].as_u64().unwrap_or(0),
                    rank: block["rank"].as_str().unwrap_or("?").to_owned(),
                });
            }
        }
        out.sort_by(|a, b| b.complexity.cmp(&a.complexity).then_with(|| a.path.cmp(&b.path)).then(a.lineno.cmp(&b.lineno)));
        out
    }

    /// Files the agents could not analyse (syntax errors and the like).
    pub fn file_errors(&self) -> BTreeMap<String, String> {
        let mut errors: BTreeMap<String, String> = self.skipped.clone();
        for (path, value) in &self.complexity {
            if let Some(error) = value["error"].as_str() {
                errors.insert(path.clone(), error.to_owned());
            }
        }
        errors
    }

    /// Whether every task completed.
    pub fn finished(&self) -> bool {
        self.failed.is_empty()
    }

    /// Writes the full machine-readable result (`--json`), without copying the results.
    pub fn write_json(&self, out: impl std::io::Write) -> serde_json::Result<()> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            root: &'a str,
            files: usize,
            lines: usize,
            bytes: usize,
            elapsed_ms: u64,
            complete: bool,
            complexity: &'a BTreeMap<String, Value>,
            imports: &'a Option<Value>,
            tokens: Value,
            errors: BTreeMap<String, String>,
            failed_tasks: Vec<Value>,
            executors: &'a BTreeMap<String, usize>,
            tasks: usize,
            task_list: &'a [Value],
        }
        let json = Json {
            root: &self.root,
            files: self.files,
            lines: self.lines,
            bytes: self.bytes,
            elapsed_ms: self.elapsed.as_millis() as u64,
            complete: self.finished(),
            complexity: &self.complexity,
            imports: &self.imports,
            tokens: json!({ "files": self.tokens, "total": { "cl100k_base": self.tokens_total[0], "o200k_base": self.tokens_total[1] } }),
            errors: self.file_errors(),
            failed_tasks: self.failed.iter().map(|f| json!({ "capability": f.capability, "files": f.files, "reason": f.reason })).collect(),
            executors: &self.executors,
            tasks: self.tasks,
            task_list: &self.task_list,
        };
        serde_json::to_writer(out, &json)
    }

    /// The full machine-readable result as a value (tests, small trees).
    pub fn to_json(&self) -> Value {
        let mut bytes = Vec::new();
        match self.write_json(&mut bytes) {
            Ok(()) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The human report: most complex blocks, every import cycle, token totals.
    pub fn render(&self, top: usize) -> String {
        let mut out = String::new();
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "{}: {} files, {} lines, analysed by {} node(s) in {secs:.2} s ({} tasks)",
            self.root,
            self.files,
            self.lines,
            self.executors.len(),
            self.tasks
        );
        let blocks = self.ranked_blocks();
        let _ = writeln!(out, "\nMost complex blocks ({} of {}):", blocks.len().min(top), blocks.len());
        for b in blocks.iter().take(top) {
            let _ = writeln!(out, "  {} {:>4}  {}  {}:{}  {}", b.rank, b.complexity, b.kind, b.path, b.lineno, b.name);
        }
        match &self.imports {
            Some(imports) => {
                let cycles = imports["cycles"].as_array().cloned().unwrap_or_default();
                let _ = writeln!(out, "\nImport cycles: {}", cycles.len());
                for (i, cycle) in cycles.iter().enumerate() {
                    let size = cycle["modules"].as_array().map_or(0, Vec::len);
                    let path: Vec<&str> = cycle["shortest"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    let _ = writeln!(out, "  {:>3}. {size} modules; shortest: {}", i + 1, path.join(" -> "));
                }
            }
            None => {
                let _ = writeln!(out, "\nImport cycles: not computed");
            }
        }
        let _ = writeln!(out, "\nTokens: cl100k_base {}, o200k_base {}", self.tokens_total[0], self.tokens_total[1]);
        let errors = self.file_errors();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nFiles not analysed: {}", errors.len());
            for (path, reason) in errors.iter().take(top) {
                let _ = writeln!(out, "  {path}: {reason}");
            }
        }
        if !self.failed.is_empty() {
            let _ = writeln!(out, "\nIncomplete: {} task(s) failed", self.failed.len());
            for f in &self.failed {
                let _ = writeln!(out, "  {} ({} files): {}", f.capability, f.files, f.reason);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_merge_and_rank() {
        let mut a = Analysis { root: "proj".into(), files: 2, ..Default::default() };
        a.add(
            "python.complexity",
            Some("p1"),
            json!({ "files": {
                "a.py": [{ "type": "function", "name": "f", "lineno": 3, "complexity": 12, "rank": "C" }],
                "b.py": [{ "type": "method", "name": "m", "classname": "K", "lineno": 9, "complexity": 30, "rank": "D" }],
                "c.py": { "error": "syntax error at line 1, column 4: x" },
            }}),
        );
        a.add("python.tokens", Some("p2"), json!({ "files": [{ "path": "a.py", "cl100k_base": 5, "o200k_base": 4 }], "total": { "cl100k_base": 5, "o200k_base": 4 } }));
        a.add("python.imports", Some("p2"), json!({ "cycles": [{ "modules": ["a", "b"], "shortest": ["a", "b", "a"] }] }));
        let ranked = a.ranked_blocks();
        assert_eq!((ranked[0].name.as_str(), ranked[0].kind, ranked[0].complexity), ("K.m", 'M', 30));
        assert_eq!(a.tokens_total, [5, 4]);
        assert_eq!(a.executors["p2"], 2);
        assert!(a.file_errors()["c.py"].contains("syntax error"));
        let text = a.render(10);
        assert!(text.contains("D   30  M  b.py:9  K.m"), "{text}");
        assert!(text.contains("a -> b -> a"), "{text}");
        assert!(text.contains("cl100k_base 5"), "{text}");
        assert_eq!(a.to_json()["complete"], true);
        a.failed.push(FailedTask { capability: "python.tokens".into(), files: 3, reason: "no peer".into() });
        assert!(!a.finished());
        assert!(a.render(10).contains("Incomplete: 1 task(s) failed"));
    }
}
