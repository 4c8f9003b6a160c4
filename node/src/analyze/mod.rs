//! `pyagent analyze PATH`: walk a Python tree, hand it to the swarm through the local
//! node, show progress while results come back, print a report.
//!
//! The files are split into batches (by size, [`AnalyzeArgs::batch_bytes`]); each batch
//! becomes a `python.complexity` task (which carries the text, stored by the node as
//! blobs) and a `python.tokens` task (which reuses those blobs); one `python.imports`
//! task covers the whole tree, since the import graph is global. The node places every
//! task on a peer that hosts the capability; this command only talks to the local API.
//!
//! - [`walk`]: the files (gitignore-aware, decoded per PEP 263).
//! - [`report`]: merging results, the text report and the `--json` document.

pub mod report;
pub mod walk;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use pyagent_agents::{complexity, imports, tokens};
use pyagent_protocol::api::{MAX_SUBMIT_TEXT_BYTES, TaskSubmitResult, TaskWaitResult};
use pyagent_protocol::task::RESULT_TOO_LARGE;
use serde_json::{Value, json};

use crate::api::client::{ApiClientError, ApiConnection};
use crate::cli::ApiArgs;
use report::{Analysis, FailedTask};

/// Most files in one batch.
const MAX_BATCH_FILES: usize = 64;
/// How long one `task.wait` may block.
const WAIT_SLICE_MS: u64 = 500;

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// A directory (or one .py file) to analyse.
    pub path: PathBuf,
    /// Print the whole result as JSON on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
    /// How many of the most complex blocks the report lists.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,
    /// Give up on tasks not finished after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub deadline_secs: u64,
    /// Source bytes per task (smaller batches spread better over many nodes).
    #[arg(long, default_value_t = 512 * 1024, value_name = "BYTES")]
    pub batch_bytes: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Leave out paths matching this glob (gitignore syntax, repeatable), e.g. 'tests/'.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Run only these analyses [default: all]; `imports` alone also counts tokens (those
    /// tasks carry the files to the node).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub only: Vec<Only>,
}

/// The analyses `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Complexity,
    Imports,
    Tokens,
}

impl AnalyzeArgs {
    fn wants(&self, which: Only) -> bool {
        self.only.is_empty() || self.only.contains(&which)
    }
}

/// Why the analysis could not run at all (as opposed to tasks that failed).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Walk(#[from] walk::WalkError),
    #[error(transparent)]
    Api(#[from] ApiClientError),
    #[error("{}: no Python files to analyse{}", path.display(), skipped_list(skipped))]
    Empty { path: PathBuf, skipped: std::collections::BTreeMap<String, String> },
}

/// The files left out, with their reasons, for an error message (at most 20 listed).
fn skipped_list(skipped: &std::collections::BTreeMap<String, String>) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let mut text = format!("; {} left out:", skipped.len());
    for (path, reason) in skipped.iter().take(20) {
        text.push_str(&format!("\n  {path}: {reason}"));
    }
    if skipped.len() > 20 {
        text.push_str(&format!("\n  ... and {} more", skipped.len() - 20));
    }
    text
}

struct Pending {
    capability: &'static str,
    /// The files of the task: indexes into the tree's files (and their blob references).
    files: std::ops::Range<usize>,
}

async fn submit(api: &mut ApiConnection, args: &AnalyzeArgs, capability: &str, files: Vec<Value>) -> Result<TaskSubmitResult, ApiClientError> {
    let timeout = args.api.timeout().max(Duration::from_secs(30));
    api.call("task.submit", json!({ "capability": capability, "files": files }), timeout).await
}

fn progress_bar(args: &AnalyzeArgs, files: usize) -> indicatif::ProgressBar {
    if args.quiet || args.json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(files as u64);
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} files  {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Runs the analysis; tasks that fail or time out are reported in the result.
pub async fn run(args: &AnalyzeArgs) -> Result<Analysis, AnalyzeError> {
    let started = Instant::now();
    let (root, exclude) = (args.path.clone(), args.exclude.clone());
    let tree = tokio::task::spawn_blocking(move || walk::collect(&root, &exclude))
        .await
        .map_err(|e| AnalyzeError::Walk(walk::WalkError::Root { path: args.path.clone(), source: std::io::Error::other(e) }))??;
    if tree.files.is_empty() {
        return Err(AnalyzeError::Empty { path: args.path.clone(), skipped: tree.skipped });
    }
    let mut analysis = Analysis {
        root: args.path.display().to_string(),
        files: tree.files.len(),
        lines: tree.lines(),
        bytes: tree.bytes(),
        skipped: tree.skipped.clone(),
        ..Default::default()
    };
    let mut api = ApiConnection::connect(&args.api.api, args.api.timeout()).await?;
    let bar = progress_bar(args, tree.files.len());
    bar.set_message("submitting");
    let batch_bytes = args.batch_bytes.clamp(1, MAX_SUBMIT_TEXT_BYTES);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut all_refs = Vec::with_capacity(tree.files.len());
    let mut start = 0;
    while start < tree.files.len() {
        let mut end = start;
        let mut size = 0;
        while end < tree.files.len() && end - start < MAX_BATCH_FILES && (end == start || size + tree.files[end].text.len() <= batch_bytes) {
            size += tree.files[end].text.len();
            end += 1;
        }
        let batch = &tree.files[start..end];
        let texts: Vec<Value> = batch.iter().map(|f| json!({ "path": f.path, "text": f.text })).collect();
        // The first task of a batch carries the text; the others reuse its blobs.
        let first = if args.wants(Only::Complexity) { complexity::CAPABILITY } else { tokens::CAPABILITY };
        let submitted = submit(&mut api, args, first, texts).await?;
        let refs: Vec<Value> = batch.iter().zip(&submitted.blobs).map(|(f, blob)| json!({ "path": f.path, "blob": blob })).collect();
        // (With `--only imports`, the token counts carry the files and come along.)
        pending.insert(submitted.task_id, Pending { capability: first, files: start..end });
        if first != tokens::CAPABILITY && args.wants(Only::Tokens) {
            let counted = submit(&mut api, args, tokens::CAPABILITY, refs.clone()).await?;
            pending.insert(counted.task_id, Pending { capability: tokens::CAPABILITY, files: start..end });
        }
        all_refs.extend(refs);
        start = end;
    }
    if args.wants(Only::Imports) {
        let graph = submit(&mut api, args, imports::CAPABILITY, all_refs.clone()).await?;
        pending.insert(graph.task_id, Pending { capability: imports::CAPABILITY, files: 0..tree.files.len() });
    }
    analysis.tasks = pending.len();

    // The progress bar counts the files of the per-batch tasks of one capability.
    let first_capability = if args.wants(Only::Complexity) {
        complexity::CAPABILITY
    } else if args.wants(Only::Tokens) {
        tokens::CAPABILITY
    } else {
        imports::CAPABILITY
    };
    let deadline = started + Duration::from_secs(args.deadline_secs);
    let call_timeout = args.api.timeout().max(Duration::from_millis(WAIT_SLICE_MS) + Duration::from_secs(5));
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            for (_, p) in pending.drain() {
                let reason = format!("not finished within {} s", args.deadline_secs);
                analysis.failed.push(FailedTask { capability: p.capability.into(), files: p.files.len(), reason });
            }
            break;
        }
        let ids: Vec<&String> = pending.keys().collect();
        let waited: TaskWaitResult = api.call("task.wait", json!({ "task_ids": ids, "timeout_ms": WAIT_SLICE_MS }), call_timeout).await?;
        let mut working = BTreeSet::new();
        for task in waited.tasks {
            match task.state.as_str() {
                "completed" | "failed" | "unknown" => {
                    let Some(p) = pending.remove(&task.task_id) else { continue };
                    analysis.task_list.push(json!({
                        "task_id": task.task_id,
                        "capability": p.capability,
                        "files": p.files.len(),
                        "state": task.state,
                        "executor": task.executor,
                    }));
                    let result = task.result.as_ref().map(|raw| serde_json::from_str::<Value>(raw.get()));
                    if let (Some(Ok(result)), "completed") = (result, task.state.as_str()) {
                        analysis.add(p.capability, task.executor.as_deref(), result);
                        if p.capability == first_capability {
                            bar.inc(p.files.len() as u64);
                        }
                        continue;
                    }
                    let reason = task.reason.unwrap_or_else(|| "no reason given".into());
                    let too_large = reason.starts_with(RESULT_TOO_LARGE) && p.capability != imports::CAPABILITY;
                    if too_large && p.files.len() > 1 {
                        // Too many blocks for one result: the same files (their blobs are
                        // stored already) in two tasks, down to one file a task.
                        let middle = p.files.start + p.files.len() / 2;
                        for half in [p.files.start..middle, middle..p.files.end] {
                            let refs = all_refs[half.clone()].to_vec();
                            let again = submit(&mut api, args, p.capability, refs).await?;
                            pending.insert(again.task_id, Pending { capability: p.capability, files: half });
                        }
                        analysis.tasks += 1;
                    } else if too_large {
                        // One file whose result alone is over the limit: left out, with why.
                        let file = &tree.files[p.files.start];
                        analysis.skipped.insert(walk::printable(&file.path), format!("{}: {reason}", p.capability));
                        if p.capability == first_capability {
                            bar.inc(1);
                        }
                    } else {
                        analysis.failed.push(FailedTask { capability: p.capability.into(), files: p.files.len(), reason });
                    }
                }
                _ => {
                    if let Some(executor) = task.executor {
                        working.insert(executor);
                    }
                }
            }
        }
        bar.set_message(format!("{} task(s) left, {} node(s) working", pending.len(), working.len()));
    }
    bar.finish_and_clear();
    analysis.elapsed = started.elapsed();
    Ok(analysis)
}
