//! One Python function of a file: find it by name (top level, or a method one class
//! deep), its exact source lines, its signature, and the file with the function
//! replaced by a rewrite (re-indented to where it stands). What `pyagent improve` and the
//! `llm.suggest` capability work on.

use ruff_python_ast::{Stmt, StmtFunctionDef};
use ruff_text_size::Ranged;

use crate::python::{ParsedModule, with_deep_stack};

/// A function found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSource {
    /// Its lines, decorators included, dedented to column 0.
    pub text: String,
    /// 1-based first and last line in the file.
    pub first_line: usize,
    pub last_line: usize,
    /// The indentation it stands at in the file (a method's).
    pub indent: String,
}

/// Why a function could not be taken out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    #[error("the file does not parse: line {line}: {message}")]
    Syntax { line: u32, message: String },
    #[error("no function {name:?} in the file; its functions: {}", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    NotFound { name: String, known: Vec<String> },
}

fn defs(stmts: &[Stmt]) -> Vec<&StmtFunctionDef> {
    let mut out = Vec::new();
    for stmt in stmts {
        match stmt {
            Stmt::FunctionDef(f) => out.push(f),
            Stmt::ClassDef(c) => out.extend(c.body.iter().filter_map(|s| if let Stmt::FunctionDef(f) = s { Some(f) } else { None })),
            _ => {}
        }
    }
    out
}

/// Finds the function `name` in `source`.
pub fn find(source: &str, name: &str) -> Result<FunctionSource, FunctionError> {
    with_deep_stack(|| {
        let parsed = ParsedModule::parse(source).map_err(|e| FunctionError::Syntax { line: e.line, message: e.message })?;
        let all = defs(&parsed.module.body);
        let Some(def) = all.iter().find(|f| f.name.as_str() == name) else {
            return Err(FunctionError::NotFound { name: name.to_owned(), known: all.iter().map(|f| f.name.to_string()).collect() });
        };
        let start = def.decorator_list.first().map_or(def.range().start(), |d| d.range().start());
        let first_line = parsed.line(start) as usize;
        let last_line = parsed.line(def.range().end()) as usize;
        let lines: Vec<&str> = source.lines().collect();
        let body = &lines[first_line - 1..last_line.min(lines.len())];
        let indent: String = body.first().map(|l| l.chars().take_while(|c| *c == ' ' || *c == '\t').collect()).unwrap_or_default();
        let text = body.iter().map(|l| l.strip_prefix(indent.as_str()).unwrap_or(l.trim_start())).collect::<Vec<_>>().join("\n") + "\n";
        Ok(FunctionSource { text, first_line, last_line, indent })
    })
}

/// The signature of the first function `text` defines — its name, parameters and return
/// annotation, spaces removed — or `None` when `text` does not parse or defines none.
pub fn signature(text: &str) -> Option<String> {
    with_deep_stack(|| {
        let parsed = ParsedModule::parse(text).ok()?;
        let def = defs(&parsed.module.body).into_iter().next()?;
        let params = &text[def.parameters.range()];
        let returns = def.returns.as_ref().map(|r| &text[r.range()]).unwrap_or("");
        let compact = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        Some(format!("{}{}->{}", def.name, compact(params), compact(returns)))
    })
}

/// `source` with `function`'s lines replaced by `rewrite` (indented as the original).
pub fn replace(source: &str, function: &FunctionSource, rewrite: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut out: Vec<String> = lines[..function.first_line - 1].iter().map(|l| (*l).to_owned()).collect();
    out.extend(rewrite.trim_end().lines().map(|l| if l.is_empty() { String::new() } else { format!("{}{l}", function.indent) }));
    out.extend(lines[function.last_line.min(lines.len())..].iter().map(|l| (*l).to_owned()));
    let mut text = out.join("\n");
    if source.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "import os\n\n@cache\ndef total(xs, start=0):\n    s = start\n    for x in xs:\n        s += x\n    return s\n\nclass A:\n    def m(self, y: int) -> int:\n        return y\n";

    #[test]
    fn functions_and_methods_are_found_with_their_lines() {
        let f = find(FILE, "total").unwrap();
        assert_eq!((f.first_line, f.last_line, f.indent.as_str()), (3, 8, ""));
        assert!(f.text.starts_with("@cache\ndef total(xs, start=0):\n") && f.text.ends_with("return s\n"), "{:?}", f.text);
        let m = find(FILE, "m").unwrap();
        assert_eq!((m.first_line, m.last_line, m.indent.as_str()), (11, 12, "    "));
        assert_eq!(m.text, "def m(self, y: int) -> int:\n    return y\n");
        let err = find(FILE, "nope").unwrap_err().to_string();
        assert!(err.contains("total, m"), "{err}");
        assert!(matches!(find("def (:", "x"), Err(FunctionError::Syntax { .. })));
    }

    #[test]
    fn signatures_compare_names_parameters_and_returns() {
        assert_eq!(signature("def f(a, b=1) -> int:\n    pass\n").as_deref(), Some("f(a,b=1)->int"));
        assert_eq!(signature("def f( a,  b = 1 )->int: return 0\n"), signature("def f(a, b=1) -> int:\n    pass\n"));
        assert_ne!(signature("def f(a):\n    pass\n"), signature("def f(a, b):\n    pass\n"));
        assert_ne!(signature("def f(a):\n    pass\n"), signature("def g(a):\n    pass\n"));
        assert_eq!(signature("x = 1\n"), None);
        assert_eq!(signature("def f(:\n"), None);
    }

    #[test]
    fn a_rewrite_replaces_the_lines_at_the_original_indentation() {
        let m = find(FILE, "m").unwrap();
        let out = replace(FILE, &m, "def m(self, y: int) -> int:\n    return y + 0\n");
        assert!(out.ends_with("class A:\n    def m(self, y: int) -> int:\n        return y + 0\n"), "{out}");
        let t = find(FILE, "total").unwrap();
        let out = replace(FILE, &t, "def total(xs, start=0):\n    return start + sum(xs)\n");
        assert!(out.starts_with("import os\n\ndef total(xs, start=0):\n    return start + sum(xs)\n\nclass A:"), "{out}");
    }
}
