//! History records: what a node saw happen to a task. Stored locally today (RocksDB, keyed
//! by task id and time); the history DHT will replicate the same records across peers.

use serde::{Deserialize, Serialize};

/// One thing that happened to a task, as seen by the node that records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// The task was submitted (recorded by its requester) or seen submitted (by candidates).
    Submitted { capability: String, files: usize, requester: String },
    /// A peer claimed it (first claim of each executor only; renewals are not recorded).
    Assigned { executor: String },
    /// An outcome: sent by this node as executor, or received by the requester.
    Result { executor: String, completed: bool, detail: String },
    /// The requester has its result; nobody works on the task any more.
    Done,
    /// A ballot on a proposal, and a tally (recorded by the votes feature).
    Ballot { voter: String },
    Tally { winner: Option<String> },
}

/// A history record: when, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub at_unix_ms: u64,
    pub event: HistoryEvent,
}
