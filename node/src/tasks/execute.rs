//! Running one task with a hosted agent: blobs from the local store, then the agent.
//! Blocking (agents are CPU-bound): called on tokio's blocking pool.

use pyagent_agents::{Registry, SourceFile, Task};
use pyagent_protocol::task::{MAX_RESULT_BYTES, RESULT_TOO_LARGE, TaskOutcome, TaskSpec};

use crate::store::Store;

/// The task's files as text, from the local blob store.
pub fn load_files(store: &Store, spec: &TaskSpec) -> Result<Vec<SourceFile>, String> {
    let mut files = Vec::with_capacity(spec.files.len());
    for file in &spec.files {
        let bytes = match store.get_blob(&file.blob) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(format!("{}: blob {} is missing", file.path, file.blob)),
            Err(e) => return Err(format!("{}: {e}", file.path)),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Err(format!("{}: blob {} is not UTF-8 text", file.path, file.blob));
        };
        files.push(SourceFile { path: file.path.clone(), text });
    }
    Ok(files)
}

/// Executes `spec` with the agent of this node that serves its capability.
pub fn run(registry: &Registry, store: &Store, spec: &TaskSpec) -> TaskOutcome {
    let failed = |reason: String| TaskOutcome::Failed { reason };
    let Some(agent) = registry.for_capability(&spec.capability) else {
        return failed(format!("this node hosts no agent for {}", spec.capability));
    };
    let files = match load_files(store, spec) {
        Ok(files) => files,
        Err(reason) => return failed(reason),
    };
    let task = Task { capability: spec.capability.clone(), files };
    match agent.handle(&task) {
        Ok(result) => {
            let result_json = result.to_string();
            if result_json.len() > MAX_RESULT_BYTES {
                failed(format!(
                    "{RESULT_TOO_LARGE} {} bytes of result, over the limit of {MAX_RESULT_BYTES}; fewer files per task would fit",
                    result_json.len()
                ))
            } else {
                TaskOutcome::Completed { result_json }
            }
        }
        Err(e) => failed(format!("agent {}: {e}", agent.name())),
    }
}
