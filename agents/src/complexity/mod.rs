//! The `complexity` agent: cyclomatic complexity of every function, method and class,
//! with radon's rules ([`visitor`]) and rank letters A–F ([`rank`]).
//!
//! Each file's result is shaped like one file of `radon cc -j`: a list of blocks sorted by
//! complexity (highest first), each with `type`, `name`, `lineno`, `col_offset`,
//! `endline`, `complexity`, `rank`, and `classname`/`closures` (functions and methods) or
//! `methods` (classes); a file that cannot be analysed gets `{"error": "..."}` instead.

pub mod visitor;

use serde_json::{Value, json};

use crate::agent::{Agent, AgentError, Task};
use crate::python::ParsedModule;
use crate::AgentName;
pub use visitor::{Class, Function, ModuleBlocks};

/// The capability this agent serves.
pub const CAPABILITY: &str = "python.complexity";

/// Radon's rank of a complexity score: A 1–5, B 6–10, C 11–20, D 21–30, E 31–40, F 41+.
pub fn rank(complexity: u32) -> char {
    match complexity {
        0..=5 => 'A',
        6..=10 => 'B',
        11..=20 => 'C',
        21..=30 => 'D',
        31..=40 => 'E',
        _ => 'F',
    }
}

/// Why one file could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Syntax(#[from] crate::python::SyntaxError),
    #[error(transparent)]
    TooDeep(#[from] visitor::TooDeep),
}

/// Scores one file's source.
pub fn analyze(text: &str) -> Result<ModuleBlocks, FileError> {
    crate::python::with_deep_stack(|| {
        let parsed = ParsedModule::parse(text)?;
        Ok(visitor::module_blocks(&parsed)?)
    })
}

fn function_json(f: &Function) -> Value {
    let mut block = json!({
        "type": if f.classname.is_some() { "method" } else { "function" },
        "name": f.name,
        "lineno": f.lineno,
        "col_offset": f.col_offset,
        "endline": f.endline,
        "complexity": f.complexity,
        "rank": rank(f.complexity).to_string(),
        "closures": f.closures.iter().map(function_json).collect::<Vec<_>>(),
    });
    if let (Some(classname), Some(map)) = (&f.classname, block.as_object_mut()) {
        map.insert("classname".into(), json!(classname));
    }
    block
}

fn class_json(c: &Class) -> Value {
    json!({
        "type": "class",
        "name": c.name,
        "lineno": c.lineno,
        "col_offset": c.col_offset,
        "endline": c.endline,
        "complexity": c.complexity(),
        "rank": rank(c.complexity()).to_string(),
        "methods": c.methods.iter().map(function_json).collect::<Vec<_>>(),
    })
}

/// The blocks of a module as `radon cc -j` lists them: functions, then each class followed
/// by its methods, sorted by complexity (highest first, ties in that order).
pub fn blocks_json(blocks: &ModuleBlocks) -> Vec<Value> {
    let mut scored: Vec<(u32, Value)> = blocks.functions.iter().map(|f| (f.complexity, function_json(f))).collect();
    for class in &blocks.classes {
        scored.push((class.complexity(), class_json(class)));
        scored.extend(class.methods.iter().map(|m| (m.complexity, function_json(m))));
    }
    scored.sort_by_key(|(complexity, _)| std::cmp::Reverse(*complexity));
    scored.into_iter().map(|(_, block)| block).collect()
}

/// Scores Python files.
#[derive(Debug)]
pub struct ComplexityAgent {
    name: AgentName,
}

impl Default for ComplexityAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl ComplexityAgent {
    pub fn new() -> Self {
        Self { name: AgentName::from_static("complexity") }
    }
}

impl Agent for ComplexityAgent {
    fn name(&self) -> &AgentName {
        &self.name
    }

    fn capabilities(&self) -> &[&'static str] {
        &[CAPABILITY]
    }

    /// `{"files": {path: [blocks] | {"error": reason}}}`: a file with a syntax error does
    /// not fail the task, it is reported.
    fn handle(&self, task: &Task) -> Result<Value, AgentError> {
        if task.capability != CAPABILITY {
            return Err(self.unsupported(task));
        }
        let mut files = serde_json::Map::new();
        for file in &task.files {
            let result = match analyze(&file.text) {
                Ok(blocks) => Value::Array(blocks_json(&blocks)),
                Err(err) => json!({ "error": err.to_string() }),
            };
            files.insert(file.path.clone(), result);
        }
        Ok(json!({ "files": files }))
    }
}

#[cfg(test)]
mod tests;
