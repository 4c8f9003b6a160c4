//! Radon's cyclomatic-complexity rules (`radon/visitors.py`, radon 6), on Ruff's AST.
//!
//! Every scope starts at 1 and adds:
//! - `if`, each `elif`, and each conditional expression: +1;
//! - `for`/`async for`/`while`: +1, and +1 more with an `else`;
//! - `try`: +1 per `except` handler (also `except*`), +1 for a `try … else`;
//! - boolean operators: operands − 1 per `and`/`or` chain;
//! - comprehensions and generator expressions: +1 per `for`, +1 per `if`;
//! - `match`: +1 per case, −1 when a case is irrefutable (`case _`, `case x`);
//! - `assert`: +1 (its expression is not looked into);
//! - `with`, `lambda`, walrus: 0 (a lambda's body counts for the enclosing scope).
//!
//! Nested functions are scored separately (radon's "closures") and add nothing to the
//! function around them; a class scores 1 + its body + its methods; classes defined
//! inside a function are not reported, as in radon.
//!
//! Line numbers follow radon too: a block's `endline` is the largest *start* line of the
//! nodes of its last statement (radon's `max_line`), not the line its text ends on.
//!
//! One deliberate difference: radon 6.0.1 scores `try … except*` (Python 3.11 `TryStar`
//! nodes) as 0 because it only looks for `Try` nodes; here `except*` handlers count like
//! `except` handlers, as the rules above say.

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{
    Alias, Comprehension, ElifElseClause, ExceptHandler, Expr, Keyword, Parameter, Pattern,
    PatternMatchAs, Stmt, StmtClassDef, StmtFunctionDef, TypeParam,
};
use ruff_text_size::{Ranged, TextSize};

use crate::python::ParsedModule;

/// Deepest expression/statement nesting looked into; deeper files are refused (CPython
/// itself refuses far shallower nesting).
pub const MAX_NESTING: u32 = 1_000;

/// A function or method, with the functions defined inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub lineno: u32,
    pub col_offset: u32,
    pub endline: u32,
    /// The class it is a method of (`None` for functions and closures).
    pub classname: Option<String>,
    pub complexity: u32,
    pub closures: Vec<Function>,
}

/// A class, with its methods and the classes defined in its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub name: String,
    pub lineno: u32,
    pub col_offset: u32,
    pub endline: u32,
    pub methods: Vec<Function>,
    pub inner_classes: Vec<Class>,
    /// 1 + the body's decision points + the methods' complexities.
    pub real_complexity: u32,
}

impl Class {
    /// Radon's class complexity: the mean method complexity (truncated), plus one when
    /// there are several methods; the real complexity when there are none.
    pub fn complexity(&self) -> u32 {
        let methods = u32::try_from(self.methods.len()).unwrap_or(u32::MAX);
        match self.real_complexity.checked_div(methods) {
            None => self.real_complexity,
            Some(mean) => mean + u32::from(methods > 1),
        }
    }
}

/// What a module contains, as radon reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleBlocks {
    pub functions: Vec<Function>,
    pub classes: Vec<Class>,
}

/// A file nested deeper than [`MAX_NESTING`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: nesting deeper than {MAX_NESTING} levels")]
pub struct TooDeep {
    pub line: u32,
}

/// Scores every function, method and class of a parsed module.
pub fn module_blocks(parsed: &ParsedModule<'_>) -> Result<ModuleBlocks, TooDeep> {
    let mut scope = Scope::new(parsed, None, 0);
    for stmt in &parsed.module.body {
        scope.visit_stmt(stmt);
    }
    scope.finish()?;
    Ok(ModuleBlocks { functions: scope.functions, classes: scope.classes })
}

/// One radon `ComplexityVisitor`: the decision points of the statements it is given,
/// and the functions and classes defined among them.
struct Scope<'p, 'src> {
    parsed: &'p ParsedModule<'src>,
    /// Set while visiting a class body: functions found are its methods.
    classname: Option<&'p str>,
    complexity: u32,
    /// Largest start offset of the nodes visited; its line is radon's `max_line` (lines
    /// grow with offsets, so one lookup at the end is enough).
    max_start: Option<TextSize>,
    functions: Vec<Function>,
    classes: Vec<Class>,
    depth: u32,
    too_deep: Option<TooDeep>,
}

impl<'p, 'src> Scope<'p, 'src> {
    fn new(parsed: &'p ParsedModule<'src>, classname: Option<&'p str>, depth: u32) -> Self {
        Self {
            parsed,
            classname,
            complexity: 0,
            max_start: None,
            functions: Vec::new(),
            classes: Vec::new(),
            depth,
            too_deep: None,
        }
    }

    fn finish(&mut self) -> Result<(), TooDeep> {
        match self.too_deep.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn note(&mut self, start: TextSize) {
        self.max_start = Some(self.max_start.map_or(start, |m| m.max(start)));
    }

    fn max_line(&self) -> Option<u32> {
        self.max_start.map(|offset| self.parsed.line(offset))
    }

    fn add(&mut self, n: usize) {
        self.complexity = self.complexity.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Runs `f` one level deeper, unless the nesting limit is reached.
    fn nested(&mut self, at: TextSize, f: impl FnOnce(&mut Self)) {
        if self.too_deep.is_some() {
            return;
        }
        if self.depth >= MAX_NESTING {
            self.too_deep = Some(TooDeep { line: self.parsed.line(at) });
            return;
        }
        self.depth += 1;
        f(self);
        self.depth -= 1;
    }

    /// Adopts the outcome of a child scope's nesting check.
    fn adopt(&mut self, child: &mut Scope<'_, '_>) {
        if self.too_deep.is_none() {
            self.too_deep = child.too_deep.take();
        }
    }

    /// Where the `def`/`async`/`class` keyword starts (after any decorators).
    fn keyword_start(&self, range_start: TextSize, decorators: &[ruff_python_ast::Decorator]) -> TextSize {
        match decorators.last() {
            Some(last) => self.parsed.next_token_start(last.end()),
            None => range_start,
        }
    }

    fn function(&mut self, def: &StmtFunctionDef) -> Function {
        let start = self.keyword_start(def.start(), &def.decorator_list);
        let lineno = self.parsed.line(start);
        let mut complexity = 1u32;
        let mut closures = Vec::new();
        let mut last_max_line = None;
        for child in &def.body {
            let mut scope = Scope::new(self.parsed, None, self.depth + 1);
            scope.visit_stmt(child);
            self.adopt(&mut scope);
            closures.append(&mut scope.functions);
            complexity = complexity.saturating_add(scope.complexity);
            last_max_line = scope.max_line();
        }
        Function {
            name: def.name.to_string(),
            lineno,
            col_offset: self.parsed.column(start),
            endline: last_max_line.map_or(lineno, |m| m.max(lineno)),
            classname: self.classname.map(str::to_owned),
            complexity,
            closures,
        }
    }

    fn class(&mut self, def: &StmtClassDef) -> Class {
        let start = self.keyword_start(def.start(), &def.decorator_list);
        let lineno = self.parsed.line(start);
        let mut real_complexity = 1u32;
        let mut endline = lineno;
        let mut methods = Vec::new();
        let mut inner_classes = Vec::new();
        for child in &def.body {
            let mut scope = Scope::new(self.parsed, Some(def.name.as_str()), self.depth + 1);
            scope.visit_stmt(child);
            self.adopt(&mut scope);
            let methods_complexity = scope.functions.iter().map(|f| f.complexity).fold(0u32, u32::saturating_add);
            real_complexity = real_complexity.saturating_add(scope.complexity).saturating_add(methods_complexity);
            endline = endline.max(scope.max_line().unwrap_or(0));
            endline = scope.functions.iter().map(|f| f.endline).fold(endline, u32::max);
            methods.append(&mut scope.functions);
            inner_classes.append(&mut scope.classes);
        }
        Class {
            name: def.name.to_string(),
            lineno,
            col_offset: self.parsed.column(start),
            endline,
            methods,
            inner_classes,
            real_complexity,
        }
    }
}

/// A `case` that matches anything (`case _:` or a bare capture `case x:`), which radon
/// treats as the match's `else`.
fn is_catch_all(pattern: &Pattern) -> bool {
    matches!(pattern, Pattern::MatchAs(PatternMatchAs { pattern: None, .. }))
}

impl<'a> Visitor<'a> for Scope<'_, '_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(def) => {
                let function = self.function(def);
                self.functions.push(function);
                return;
            }
            Stmt::ClassDef(def) => {
                let class = self.class(def);
                self.classes.push(class);
                return;
            }
            Stmt::Assert(_) => {
                self.add(1);
                return;
            }
            Stmt::If(_) => self.add(1),
            Stmt::For(s) => self.add(1 + usize::from(!s.orelse.is_empty())),
            Stmt::While(s) => self.add(1 + usize::from(!s.orelse.is_empty())),
            Stmt::Try(s) => self.add(s.handlers.len() + usize::from(!s.orelse.is_empty())),
            Stmt::Match(s) => {
                let catch_all = s.cases.iter().any(|case| is_catch_all(&case.pattern));
                self.add(s.cases.len().saturating_sub(usize::from(catch_all)));
            }
            _ => {}
        }
        self.note(stmt.start());
        self.nested(stmt.start(), |s| visitor::walk_stmt(s, stmt));
    }

    fn visit_elif_else_clause(&mut self, clause: &'a ElifElseClause) {
        if clause.test.is_some() {
            // An `elif` is a nested `if` in CPython's tree.
            self.add(1);
            self.note(clause.start());
        }
        visitor::walk_elif_else_clause(self, clause);
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::BoolOp(op) => self.add(op.values.len().saturating_sub(1)),
            Expr::If(_) => self.add(1),
            _ => {}
        }
        self.note(expr.start());
        self.nested(expr.start(), |s| visitor::walk_expr(s, expr));
    }

    fn visit_comprehension(&mut self, comprehension: &'a Comprehension) {
        self.add(1 + comprehension.ifs.len());
        visitor::walk_comprehension(self, comprehension);
    }

    fn visit_except_handler(&mut self, handler: &'a ExceptHandler) {
        self.note(handler.start());
        visitor::walk_except_handler(self, handler);
    }

    fn visit_parameter(&mut self, parameter: &'a Parameter) {
        self.note(parameter.start());
        visitor::walk_parameter(self, parameter);
    }

    fn visit_keyword(&mut self, keyword: &'a Keyword) {
        self.note(keyword.start());
        visitor::walk_keyword(self, keyword);
    }

    fn visit_alias(&mut self, alias: &'a Alias) {
        self.note(alias.start());
    }

    fn visit_pattern(&mut self, pattern: &'a Pattern) {
        self.note(pattern.start());
        self.nested(pattern.start(), |s| visitor::walk_pattern(s, pattern));
    }

    fn visit_type_param(&mut self, type_param: &'a TypeParam) {
        self.note(type_param.start());
        visitor::walk_type_param(self, type_param);
    }
}
