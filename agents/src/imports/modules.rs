//! Module names of the files of a tree, as Python would import them.
//!
//! A file's package is the chain of directories above it that hold an `__init__.py`; the
//! first directory above that chain is the import root (a `sys.path` entry). So
//! `src/pkg/sub/mod.py` with `src/pkg/__init__.py` and `src/pkg/sub/__init__.py` is
//! `pkg.sub.mod`, and `src/pkg/__init__.py` is the package `pkg` itself. Directories
//! without `__init__.py` (namespace packages) are treated as import roots.

use std::collections::BTreeSet;

/// A module of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Dotted name, e.g. `pkg.sub.mod`.
    pub name: String,
    /// Whether it is a package (`__init__.py`): relative imports start at itself.
    pub is_package: bool,
}

/// The module names of `paths` (`/`-separated, relative to the tree's root). Paths that
/// are not `.py` files, or that have no module name (an `__init__.py` at the root), give
/// `None`.
pub fn module_names<'a>(paths: impl IntoIterator<Item = &'a str> + Clone) -> Vec<Option<ModuleFile>> {
    let init_dirs: BTreeSet<&str> = paths
        .clone()
        .into_iter()
        .filter_map(|p| match p.rsplit_once('/') {
            Some((dir, "__init__.py")) => Some(dir),
            _ => None,
        })
        .collect();
    paths.into_iter().map(|p| module_of(p, &init_dirs)).collect()
}

fn module_of(path: &str, init_dirs: &BTreeSet<&str>) -> Option<ModuleFile> {
    let stem = path.strip_suffix(".py")?;
    let mut parts: Vec<&str> = stem.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let file = parts.pop()?;
    // How many of the enclosing directories are packages, innermost first.
    let mut packages = 0;
    while packages < parts.len() && init_dirs.contains(parts[..parts.len() - packages].join("/").as_str()) {
        packages += 1;
    }
    let mut name: Vec<&str> = parts[parts.len() - packages..].to_vec();
    let is_package = file == "__init__";
    if !is_package {
        name.push(file);
    }
    if name.is_empty() {
        return None;
    }
    Some(ModuleFile { name: name.join("."), is_package })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&str]) -> Vec<Option<(String, bool)>> {
        module_names(paths.iter().copied()).into_iter().map(|m| m.map(|m| (m.name, m.is_package))).collect()
    }

    #[test]
    fn packages_are_chains_of_init_files() {
        let got = names(&["src/pkg/__init__.py", "src/pkg/sub/__init__.py", "src/pkg/sub/mod.py", "src/tool.py", "README.md"]);
        assert_eq!(
            got,
            vec![
                Some(("pkg".into(), true)),
                Some(("pkg.sub".into(), true)),
                Some(("pkg.sub.mod".into(), false)),
                Some(("tool".into(), false)),
                None,
            ]
        );
    }

    #[test]
    fn a_directory_without_init_breaks_the_chain() {
        let got = names(&["a/__init__.py", "a/b/c.py"]);
        assert_eq!(got[1], Some(("c".into(), false)));
        assert_eq!(names(&["__init__.py"]), vec![None]);
    }
}
