//! The Python files of a tree, as `pyagent analyze` sends them: `.py` files under the
//! root, skipping what `.gitignore`/`.ignore` files exclude (inside a Git repository or
//! not) and hidden files and directories, decoded as CPython would (PEP 263).
//!
//! Paths are `/`-separated and relative to the import root: when the analysed directory
//! is itself a package (it has an `__init__.py`), its name (and those of enclosing
//! packages) leads the paths, so `import pkg.mod` resolves inside the tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pyagent_agents::python::decode_source;
use pyagent_protocol::task::{MAX_BLOB_BYTES, check_path, is_format_char};

/// A path as it may be shown in a report: control and invisible formatting characters
/// escaped; a path of over 240 characters keeps its first and last 100 around "...".
pub fn printable(path: &str) -> String {
    let count = path.chars().count();
    let mut shown = String::new();
    for (i, c) in path.chars().enumerate() {
        if count > 240 && (100..count - 100).contains(&i) {
            if i == 100 {
                shown.push_str("...");
            }
            continue;
        }
        if c.is_control() || is_format_char(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Where a walk error happened and why, from `ignore`'s error.
fn walk_failure(error: &ignore::Error, root: &Path, prefix: &[String]) -> (String, String) {
    let mut error = error;
    let mut path = None;
    loop {
        match error {
            ignore::Error::WithPath { path: p, err } => {
                path.get_or_insert_with(|| p.clone());
                error = err;
            }
            ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => error = err,
            other => {
                let name = match path {
                    Some(p) => relative_name(prefix, p.strip_prefix(root).unwrap_or(&p)),
                    None => "(a directory)".into(),
                };
                // The OS error alone: the path it names can be thousands of bytes long.
                let reason = match other {
                    ignore::Error::Io(e) => match e.raw_os_error() {
                        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
                        None => printable(&e.to_string()),
                    },
                    other => printable(&other.to_string()),
                };
                return (printable(&name), format!("cannot walk: {reason}"));
            }
        }
    }
}

/// A file to analyse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    pub path: String,
    pub text: String,
    pub lines: usize,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct SourceTree {
    pub files: Vec<TreeFile>,
    /// Files left out, with the reason (too large, not decodable, unreadable).
    pub skipped: BTreeMap<String, String>,
}

impl SourceTree {
    pub fn lines(&self) -> usize {
        self.files.iter().map(|f| f.lines).sum()
    }

    pub fn bytes(&self) -> usize {
        self.files.iter().map(|f| f.text.len()).sum()
    }
}

/// Why the tree could not be walked at all.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a directory or a .py file")]
    NotPython { path: PathBuf },
    #[error("--exclude {glob:?}: {reason}")]
    Exclude { glob: String, reason: String },
}

/// The names of the packages that enclose `dir` (outermost first), `dir` included when it
/// is one.
fn package_prefix(dir: &Path) -> Vec<String> {
    let mut prefix = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if !d.join("__init__.py").is_file() {
            break;
        }
        match d.file_name() {
            Some(name) => prefix.push(name.to_string_lossy().into_owned()),
            None => break,
        }
        at = d.parent();
    }
    prefix.reverse();
    prefix
}

fn relative_name(prefix: &[String], rel: &Path) -> String {
    let mut parts: Vec<String> = prefix.to_vec();
    parts.extend(rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    parts.join("/")
}

fn add_file(tree: &mut SourceTree, path: &Path, name: String) {
    // Task paths are checked by every node (relative, bounded, no control or direction
    // characters): a file whose name cannot be one is left out here, with the reason,
    // instead of failing the whole run when the node refuses the batch.
    if let Err(reason) = check_path(&name) {
        tree.skipped.insert(printable(&name), format!("cannot be sent as a task path: {reason}"));
        return;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            tree.skipped.insert(name, format!("cannot read: {e}"));
            return;
        }
    };
    if bytes.len() > MAX_BLOB_BYTES {
        tree.skipped.insert(name, format!("{} bytes, over the per-file limit of {MAX_BLOB_BYTES}", bytes.len()));
        return;
    }
    match decode_source(&bytes) {
        Ok(text) => {
            let lines = text.lines().count();
            tree.files.push(TreeFile { path: name, text, lines });
        }
        Err(e) => {
            tree.skipped.insert(name, e.to_string());
        }
    }
}

/// Collects the Python files under `root` (or `root` itself when it is a `.py` file),
/// leaving out paths that match an `exclude` glob (gitignore syntax).
pub fn collect(root: &Path, exclude: &[String]) -> Result<SourceTree, WalkError> {
    let absolute = root.canonicalize().map_err(|source| WalkError::Root { path: root.to_owned(), source })?;
    let mut tree = SourceTree::default();
    if absolute.is_file() {
        if absolute.extension().is_none_or(|e| e != "py") {
            return Err(WalkError::NotPython { path: root.to_owned() });
        }
        let dir = absolute.parent().unwrap_or(Path::new("/"));
        let file_name = absolute.file_name().map(PathBuf::from).unwrap_or_default();
        add_file(&mut tree, &absolute, relative_name(&package_prefix(dir), &file_name));
        return Ok(tree);
    }
    if !absolute.is_dir() {
        return Err(WalkError::NotPython { path: root.to_owned() });
    }
    let prefix = package_prefix(&absolute);
    let mut overrides = ignore::overrides::OverrideBuilder::new(&absolute);
    for glob in exclude {
        overrides
            .add(&format!("!{glob}"))
            .map_err(|e| WalkError::Exclude { glob: glob.clone(), reason: e.to_string() })?;
    }
    let overrides = overrides.build().map_err(|e| WalkError::Exclude { glob: exclude.join(" "), reason: e.to_string() })?;
    let walker = ignore::WalkBuilder::new(&absolute).require_git(false).overrides(overrides).build();
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let (path, reason) = walk_failure(&e, &absolute, &prefix);
                tree.skipped.insert(path, reason);
                continue;
            }
        };
        let path = entry.path();
        if !entry.file_type().is_some_and(|t| t.is_file()) || path.extension().is_none_or(|e| e != "py") {
            continue;
        }
        let rel = path.strip_prefix(&absolute).unwrap_or(path);
        add_file(&mut tree, path, relative_name(&prefix, rel));
    }
    tree.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn walks_python_files_respecting_gitignore_and_package_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("proj");
        write(&root, "app/__init__.py", b"");
        write(&root, "app/core.py", b"import app\n");
        write(&root, "build/gen.py", b"x = 1\n");
        write(&root, ".hidden/secret.py", b"x = 1\n");
        write(&root, "notes.txt", b"not python");
        write(&root, "latin.py", b"# -*- coding: latin-1 -*-\ns = '\xe9'\n");
        write(&root, "broken.py", b"s = '\xe9'\n");
        write(&root, ".gitignore", b"build/\n");
        let tree = collect(&root, &[]).unwrap();
        let paths: Vec<&str> = tree.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["app/__init__.py", "app/core.py", "latin.py"]);
        assert!(tree.skipped["broken.py"].contains("UTF-8"), "{:?}", tree.skipped);
        assert_eq!(tree.lines(), 3);

        // Analysing the package itself keeps its name in the paths.
        let pkg = collect(&root.join("app"), &[]).unwrap();
        let fewer = collect(&root, &["app/core.py".into(), "latin*".into()]).unwrap();
        let paths: Vec<&str> = fewer.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["app/__init__.py"]);
        let paths: Vec<&str> = pkg.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["app/__init__.py", "app/core.py"]);
        let one = collect(&root.join("app/core.py"), &[]).unwrap();
        assert_eq!(one.files[0].path, "app/core.py");
    }

    #[test]
    fn missing_roots_and_other_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(collect(&dir.path().join("nope"), &[]), Err(WalkError::Root { .. })));
        write(dir.path(), "a.txt", b"");
        assert!(matches!(collect(&dir.path().join("a.txt"), &[]), Err(WalkError::NotPython { .. })));
    }
}
