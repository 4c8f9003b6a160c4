//! The import statements of a module, wherever they are (top level, functions, classes,
//! `if TYPE_CHECKING:` blocks, `try` fallbacks).

use ruff_python_ast::statement_visitor::{self, StatementVisitor};
use ruff_python_ast::Stmt;
use ruff_text_size::Ranged;

use crate::python::ParsedModule;

/// One imported name, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawImport {
    /// `import a.b.c`
    Import { module: String, line: u32 },
    /// `from ..a import b` (`module` empty for `from . import b`, `name` `*` for a star).
    From { level: u32, module: String, name: String, line: u32 },
}

/// Every import of a parsed module, in source order.
pub fn imports(parsed: &ParsedModule<'_>) -> Vec<RawImport> {
    let mut collector = Collector { parsed, found: Vec::new() };
    collector.visit_body(&parsed.module.body);
    collector.found
}

struct Collector<'p, 'src> {
    parsed: &'p ParsedModule<'src>,
    found: Vec<RawImport>,
}

impl<'a> StatementVisitor<'a> for Collector<'_, '_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::Import(import) => {
                let line = self.parsed.line(import.start());
                for alias in &import.names {
                    self.found.push(RawImport::Import { module: alias.name.to_string(), line });
                }
            }
            Stmt::ImportFrom(from) => {
                let line = self.parsed.line(from.start());
                let module = from.module.as_ref().map(ToString::to_string).unwrap_or_default();
                for alias in &from.names {
                    self.found.push(RawImport::From {
                        level: from.level,
                        module: module.clone(),
                        name: alias.name.to_string(),
                        line,
                    });
                }
            }
            _ => statement_visitor::walk_stmt(self, stmt),
        }
    }
}
