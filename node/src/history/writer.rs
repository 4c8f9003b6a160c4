//! The history writer: one thread that makes entries durable. It takes every job waiting
//! in its bounded inbox at once (group commit: up to [`GROUP_ENTRIES`] entries), checks
//! the ones from peers (bounds, signature), and writes them in one RocksDB batch with the
//! WAL synced, so one fsync covers many appends. Each job's answer goes back to the
//! history actor with its token.

use std::sync::Arc;

use pyagent_protocol::history::Entry;
use tokio::sync::mpsc;

use super::book::Token;
use crate::store::Store;
use crate::store::history::EncodedEntry;

/// Jobs waiting for the writer; the actor waits when it is full (backpressure).
pub const WRITER_INBOX: usize = 1024;
/// Most entries in one group commit.
const GROUP_ENTRIES: usize = 16_384;

/// Entries to make durable.
#[derive(Debug)]
pub struct WriteJob {
    pub token: Token,
    pub entries: Vec<Entry>,
    /// From a peer: check bounds and signatures first.
    pub verify: bool,
    /// Keep them as hints instead.
    pub hints: bool,
}

/// A job's result: how many entries were new, or why it failed (bad entries are refused
/// with the first reason; the valid ones of the same job are still written).
#[derive(Debug)]
pub struct Written {
    pub token: Token,
    pub result: Result<usize, String>,
}

/// Starts the writer thread; it stops when the inbox's senders are gone, after writing
/// what was queued, and then fires `finished`.
pub fn start(store: Arc<Store>, done: mpsc::Sender<Written>, finished: tokio::sync::oneshot::Sender<()>) -> std::io::Result<mpsc::Sender<WriteJob>> {
    let (tx, mut rx) = mpsc::channel::<WriteJob>(WRITER_INBOX);
    std::thread::Builder::new().name("history-writer".into()).spawn(move || {
        let _finished = Finished(Some(finished));
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            let mut n = jobs[0].entries.len();
            while n < GROUP_ENTRIES {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.entries.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            for written in commit(&store, jobs) {
                // The actor never waits on the writer, so this wait is short; once the
                // actor is gone (shutting down) the rest is still written.
                let _ = done.blocking_send(written);
            }
        }
        tracing::debug!("history writer stopped");
    })?;
    Ok(tx)
}

/// Fires when the writer thread ends, however it ends.
struct Finished(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Checks (on every core: signature checks are most of a replica's cost) and encodes one
/// job's entries; the second value is the first refusal.
fn prepare(job: &WriteJob) -> (Vec<EncodedEntry>, Option<String>) {
    let verify = job.verify;
    let checked = super::entry::par_map(job.entries.iter().collect(), |entry| {
        let key = if verify { super::entry::verify(entry) } else { entry.key() };
        key.map_err(|e| e.to_string()).and_then(|k| EncodedEntry::new(entry, k).map_err(|e| e.to_string()))
    });
    let mut ok = Vec::with_capacity(checked.len());
    let mut refused = None;
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Ok(e) => ok.push(e),
            Err(reason) => {
                refused.get_or_insert_with(|| format!("entry {i} refused: {reason}"));
            }
        }
    }
    (ok, refused)
}

/// One group commit: all entries of all jobs in one synced batch, hints in another.
fn commit(store: &Store, jobs: Vec<WriteJob>) -> Vec<Written> {
    let prepared: Vec<(Token, bool, Vec<EncodedEntry>, Option<String>)> = jobs
        .iter()
        .map(|job| {
            let (ok, refused) = prepare(job);
            (job.token, job.hints, ok, refused)
        })
        .collect();
    let entries: Vec<EncodedEntry> = prepared.iter().filter(|p| !p.1).flat_map(|p| p.2.iter().cloned()).collect();
    let hints: Vec<EncodedEntry> = prepared.iter().filter(|p| p.1).flat_map(|p| p.2.iter().cloned()).collect();
    let entries_result = if entries.is_empty() { Ok(0) } else { store.insert_entries(&entries, true).map_err(|e| format!("the node's database failed: {e}")) };
    let hints_result = if hints.is_empty() { Ok(()) } else { store.add_hints(&hints).map_err(|e| format!("the node's database failed: {e}")) };
    if let Err(e) = &entries_result {
        tracing::error!("history entries not written: {e}");
    }
    prepared
        .into_iter()
        .map(|(token, is_hints, ok, refused)| {
            let stored = if is_hints { hints_result.clone().map(|()| ok.len()) } else { entries_result.clone().map(|_| ok.len()) };
            let result = match (stored, refused) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(reason)) => Err(reason),
                (Ok(n), None) => Ok(n),
            };
            Written { token, result }
        })
        .collect()
}
