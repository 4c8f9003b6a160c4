//! The task methods of the local API: `task.submit` stores the files as blobs and hands
//! the task to the router; `task.wait` long-polls until one of the given tasks
//! finishes (or the timeout passes) and reports them all.

use std::time::Duration;

use pyagent_protocol::api::{
    self, MAX_SUBMIT_TEXT_BYTES, MAX_WAIT_IDS, MAX_WAIT_MS, TaskSubmitParams, TaskSubmitResult, TaskWaitParams,
    TaskWaitResult,
};
use pyagent_protocol::task::{BlobId, FileRef, MAX_BLOB_BYTES, MAX_LEASE_MS, TaskId, check_path};
use serde_json::Value;

use crate::api::ApiContext;
use super::replies::{internal, invalid, unavailable};

/// Lease of a submitted task unless the request says otherwise.
pub const DEFAULT_LEASE_MS: u32 = 3_000;
const DEFAULT_WAIT_MS: u64 = 1_000;

/// Why storing a request's files failed: the client's fault, or the node's.
#[derive(Debug)]
enum StoreFailure {
    UnknownBlob(String),
    Disk(String),
}

impl StoreFailure {
    /// A blob the client named but never sent is bad params; a failing disk is the node's
    /// own failure, an internal error (it used to reach clients as "invalid params").
    fn reply(self, id: &Value) -> Vec<u8> {
        match self {
            Self::UnknownBlob(reason) => invalid(id, format!("task.submit: {reason}")),
            Self::Disk(reason) => internal(id, format!("task.submit: the node's database failed: {reason}")),
        }
    }
}

/// Files as they will be stored: text to write, or an existing blob.
enum Prepared {
    Text { path: String, bytes: Vec<u8> },
    Blob { path: String, blob: BlobId },
}

pub async fn submit(id: &Value, ctx: &ApiContext, params: TaskSubmitParams) -> Vec<u8> {
    if params.files.is_empty() {
        return invalid(id, "task.submit: files is empty");
    }
    let lease_ms = params.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
        return invalid(id, format!("task.submit: lease_ms must be 1..={MAX_LEASE_MS}"));
    }
    let mut total = 0usize;
    let mut prepared = Vec::with_capacity(params.files.len());
    for (i, file) in params.files.iter().enumerate() {
        if let Err(reason) = check_path(&file.path) {
            return invalid(id, format!("task.submit: files[{i}].path: {reason}"));
        }
    }
    for file in params.files {
        match (file.text, file.blob) {
            (Some(text), None) => {
                if text.len() > MAX_BLOB_BYTES {
                    return invalid(id, format!("task.submit: {}: {} bytes, limit {MAX_BLOB_BYTES}", file.path, text.len()));
                }
                total += text.len();
                prepared.push(Prepared::Text { path: file.path, bytes: text.into_bytes() });
            }
            (None, Some(blob)) => match blob.parse::<BlobId>() {
                Ok(blob) => prepared.push(Prepared::Blob { path: file.path, blob }),
                Err(e) => return invalid(id, format!("task.submit: {}: {e}", file.path)),
            },
            _ => return invalid(id, format!("task.submit: {}: give exactly one of \"text\" and \"blob\"", file.path)),
        }
    }
    if total > MAX_SUBMIT_TEXT_BYTES {
        return invalid(id, format!("task.submit: {total} bytes of text, limit {MAX_SUBMIT_TEXT_BYTES}; split the files into batches"));
    }
    // Storing blobs is disk work: off the async threads.
    let store = ctx.store.clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<Vec<FileRef>, StoreFailure> {
        prepared
            .into_iter()
            .map(|file| match file {
                Prepared::Text { path, bytes } => {
                    let blob = BlobId::of(&bytes);
                    store.put_blob(&blob, &bytes).map_err(|e| StoreFailure::Disk(format!("{path}: {e}")))?;
                    Ok(FileRef { path, blob, size: bytes.len() as u64 })
                }
                Prepared::Blob { path, blob } => match store.get_blob(&blob) {
                    Ok(Some(bytes)) => Ok(FileRef { path, blob, size: bytes.len() as u64 }),
                    Ok(None) => Err(StoreFailure::UnknownBlob(format!("{path}: blob {blob} is not stored on this node; send its text"))),
                    Err(e) => Err(StoreFailure::Disk(format!("{path}: {e}"))),
                },
            })
            .collect()
    })
    .await;
    let files = match stored {
        Ok(Ok(files)) => files,
        Ok(Err(failure)) => return failure.reply(id),
        Err(e) => return internal(id, format!("task.submit: {e}")),
    };
    let blobs: Vec<String> = files.iter().map(|f| f.blob.to_string()).collect();
    match ctx.client.submit_task(params.capability, files, lease_ms).await {
        Ok(Ok((task, candidates))) => api::result_reply(id, &TaskSubmitResult { task_id: task.to_string(), blobs, candidates }),
        Ok(Err(e)) if e.is_bad_input() => invalid(id, format!("task.submit: {e}")),
        Ok(Err(e)) => internal(id, format!("task.submit: {e}")),
        Err(e) => unavailable(id, e.to_string()),
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "unknown")
}

pub async fn wait(id: &Value, ctx: &ApiContext, params: TaskWaitParams) -> Vec<u8> {
    if params.task_ids.len() > MAX_WAIT_IDS {
        return invalid(id, format!("task.wait: {} ids, limit {MAX_WAIT_IDS}", params.task_ids.len()));
    }
    let ids: Result<Vec<TaskId>, _> = params.task_ids.iter().map(|t| t.parse::<TaskId>()).collect();
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => return invalid(id, format!("task.wait: {e}")),
    };
    let timeout = Duration::from_millis(params.timeout_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changed = ctx.client.results_changed();
    loop {
        changed.borrow_and_update();
        let tasks = match ctx.client.task_reports(ids.clone()).await {
            Ok(t) => t,
            Err(e) => return unavailable(id, e.to_string()),
        };
        if ids.is_empty() || tasks.iter().any(|t| is_final(&t.state)) || tokio::time::Instant::now() >= deadline {
            return api::result_reply(id, &TaskWaitResult { tasks });
        }
        tokio::select! {
            c = changed.changed() => if c.is_err() {
                return unavailable(id, "the node is stopping");
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::api::code;

    #[test]
    fn disk_failures_are_internal_errors_and_unknown_blobs_bad_params() {
        let code_of = |reply: Vec<u8>| serde_json::from_slice::<Value>(&reply).unwrap()["error"]["code"].as_i64().unwrap();
        let id = serde_json::json!(7);
        assert_eq!(code_of(StoreFailure::Disk("IO error: No space left on device".into()).reply(&id)), code::INTERNAL_ERROR);
        assert_eq!(code_of(StoreFailure::UnknownBlob("a.py: blob 00 is not stored".into()).reply(&id)), code::INVALID_PARAMS);
    }
}
