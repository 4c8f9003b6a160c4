//! The `imports` agent: the import graph of a package tree, its strongly connected
//! components, and one shortest cycle for each.
//!
//! - [`modules`]: module names from paths (`__init__.py` chains).
//! - [`extract`]: import statements from the syntax tree.
//! - [`graph`]: components and shortest cycles.
//!
//! Resolution: `import a.b.c` points at the deepest of `a.b.c`, `a.b`, `a` that is a module
//! of the tree; `from m import n` at `m.n` when that is a module of the tree (a submodule),
//! else at the deepest module of the tree along `m`. Relative imports start at the
//! importing module's package (a package's `__init__.py` is its own package) and climb one
//! package per extra dot. Imports of modules outside the tree are listed as `external`
//! (their top-level name); relative imports that climb above the tree are `unresolved`.
//!
//! A task holds the whole tree (every file whose imports matter): one task, one graph.

pub mod extract;
pub mod graph;
pub mod modules;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::agent::{Agent, AgentError, Task};
use crate::python::ParsedModule;
use crate::AgentName;
use extract::RawImport;
use modules::ModuleFile;

/// The capability this agent serves.
pub const CAPABILITY: &str = "python.imports";

/// Where one import leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A module of the tree.
    Internal(String),
    /// A module outside the tree, by its top-level name.
    External(String),
    /// A relative import that leaves the tree or has no package.
    Unresolved(String),
}

/// Resolves one import of `importer` against the modules of the tree.
pub fn resolve(importer: &ModuleFile, import: &RawImport, tree: &BTreeSet<String>) -> Target {
    match import {
        RawImport::Import { module, .. } => deepest(module, tree),
        RawImport::From { level, module, name, .. } => {
            let base = if *level == 0 {
                module.clone()
            } else {
                let mut package: Vec<&str> = importer.name.split('.').collect();
                if !importer.is_package {
                    package.pop();
                }
                let climb = (*level - 1) as usize;
                if package.is_empty() || climb >= package.len() {
                    return Target::Unresolved(format!(
                        "relative import {}{module} climbs above the top-level package",
                        ".".repeat(*level as usize)
                    ));
                }
                package.truncate(package.len() - climb);
                let mut base = package.join(".");
                if !module.is_empty() {
                    base.push('.');
                    base.push_str(module);
                }
                base
            };
            let submodule = format!("{base}.{name}");
            if name != "*" && tree.contains(&submodule) {
                Target::Internal(submodule)
            } else {
                deepest(&base, tree)
            }
        }
    }
}

fn deepest(module: &str, tree: &BTreeSet<String>) -> Target {
    let mut candidate = module;
    loop {
        if tree.contains(candidate) {
            return Target::Internal(candidate.to_owned());
        }
        match candidate.rsplit_once('.') {
            Some((parent, _)) => candidate = parent,
            None => return Target::External(module.split('.').next().unwrap_or(module).to_owned()),
        }
    }
}

#[derive(Debug, Default)]
struct ModuleReport {
    path: String,
    imports: BTreeSet<String>,
    external: BTreeSet<String>,
}

/// Builds the import graph of the task's files.
#[derive(Debug)]
pub struct ImportsAgent {
    name: AgentName,
}

impl Default for ImportsAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl ImportsAgent {
    pub fn new() -> Self {
        Self { name: AgentName::from_static("imports") }
    }
}

impl Agent for ImportsAgent {
    fn name(&self) -> &AgentName {
        &self.name
    }

    fn capabilities(&self) -> &[&'static str] {
        &[CAPABILITY]
    }

    /// `{"modules": {name: {path, imports, external}}, "cycles": [{modules, shortest}],
    /// "unresolved": [{module, line, reason}], "errors": {path: reason}}`.
    fn handle(&self, task: &Task) -> Result<Value, AgentError> {
        if task.capability != CAPABILITY {
            return Err(self.unsupported(task));
        }
        let names = modules::module_names(task.files.iter().map(|f| f.path.as_str()));
        let mut errors = BTreeMap::new();
        let mut files: Vec<(&ModuleFile, &crate::agent::SourceFile)> = Vec::new();
        let mut tree = BTreeSet::new();
        for (file, name) in task.files.iter().zip(&names) {
            let Some(name) = name else { continue };
            if !tree.insert(name.name.clone()) {
                errors.insert(file.path.clone(), format!("module {} is also defined by another file; ignored", name.name));
                continue;
            }
            files.push((name, file));
        }
        let mut reports: BTreeMap<String, ModuleReport> = BTreeMap::new();
        let mut unresolved = Vec::new();
        for (module, file) in files {
            let found = crate::python::with_deep_stack(|| {
                ParsedModule::parse(&file.text).map(|parsed| extract::imports(&parsed))
            });
            let raw = match found {
                Ok(raw) => raw,
                Err(err) => {
                    errors.insert(file.path.clone(), err.to_string());
                    continue;
                }
            };
            let report = reports.entry(module.name.clone()).or_default();
            report.path = file.path.clone();
            for import in &raw {
                match resolve(module, import, &tree) {
                    Target::Internal(target) if target != module.name => {
                        report.imports.insert(target);
                    }
                    Target::Internal(_) => {}
                    Target::External(top) => {
                        report.external.insert(top);
                    }
                    Target::Unresolved(reason) => {
                        let line = match import {
                            RawImport::Import { line, .. } | RawImport::From { line, .. } => *line,
                        };
                        unresolved.push(json!({ "module": module.name, "line": line, "reason": reason }));
                    }
                }
            }
        }
        let edges: BTreeMap<String, BTreeSet<String>> =
            reports.iter().map(|(name, r)| (name.clone(), r.imports.clone())).collect();
        let cycles: Vec<Value> = graph::cycles(&edges)
            .into_iter()
            .map(|c| json!({ "modules": c.modules, "shortest": c.shortest }))
            .collect();
        let modules: serde_json::Map<String, Value> = reports
            .into_iter()
            .map(|(name, r)| (name, json!({ "path": r.path, "imports": r.imports, "external": r.external })))
            .collect();
        Ok(json!({ "modules": modules, "cycles": cycles, "unresolved": unresolved, "errors": errors }))
    }
}

#[cfg(test)]
mod tests;
