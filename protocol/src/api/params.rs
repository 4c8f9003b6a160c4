//! Parameters of the API's methods (the `params` object of a request).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A review: candidate rewrites of one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewParams {
    pub function: String,
    /// Candidate source texts; the options are their labels (`options`) or "1", "2", ...
    pub candidates: Vec<String>,
}

/// Parameters of `vote.propose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteProposeParams {
    pub title: String,
    #[serde(default)]
    pub options: Vec<String>,
    /// plurality, approval, borda, irv, schulze, quadratic, trust.
    pub method: String,
    /// Quadratic: credits per voter (default 100).
    #[serde(default)]
    pub credits: Option<u64>,
    /// Trust-weighted: weight per voter (PeerId, or PeerId/agent); others weigh 1.
    #[serde(default)]
    pub weights: Option<std::collections::BTreeMap<String, u64>>,
    /// Ballots cast later than this many seconds from now do not count (default 300).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    #[serde(default)]
    pub quorum: Option<u32>,
    #[serde(default)]
    pub review: Option<ReviewParams>,
}

/// Parameters of `vote.ballot`: exactly one of the choices, by option label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteBallotParams {
    pub proposal_id: String,
    #[serde(default)]
    pub ranking: Option<Vec<String>>,
    #[serde(default)]
    pub approval: Option<Vec<String>>,
    #[serde(default)]
    pub quadratic: Option<std::collections::BTreeMap<String, u64>>,
}

/// Parameters of `vote.tally`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteTallyParams {
    pub proposal_id: String,
}

/// Longest `agent.next` poll; an agent silent for 10 s is dropped.
pub const MAX_AGENT_POLL_MS: u64 = 5_000;

/// Parameters of `agent.register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegisterParams {
    pub name: String,
    pub capabilities: Vec<String>,
}

/// Parameters of `agent.next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentNextParams {
    pub agent_id: u64,
    /// Default and limit: [`MAX_AGENT_POLL_MS`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Parameters of `agent.result`: exactly one of `result` and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentResultParams {
    pub agent_id: u64,
    pub task_id: String,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Method names, as written on the wire.
pub const METHODS: &[&str] = &[
    "status",
    "peers",
    "task.submit",
    "task.wait",
    "history",
    "history.append",
    "shards",
    "agent.register",
    "agent.next",
    "agent.result",
    "vote.propose",
    "vote.ballot",
    "vote.tally",
];

/// Parameters of `history`: a subject's entries (`id`: a task, proposal or request id;
/// `task_id` is accepted too), or a page of one shard (`shard`, then `after` the last
/// key of the previous page, at most `limit` entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    #[serde(default, alias = "task_id", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Most entries of one `history.append`.
pub const MAX_APPEND_ENTRIES: usize = 10_000;

/// One inference entry to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendEntry {
    /// The request id (64 hex digits).
    pub subject: String,
    pub model: String,
    #[serde(default)]
    pub detail: String,
}

/// Parameters of `history.append`: inference entries recorded by this node (tasks and
/// votes record their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryAppendParams {
    pub entries: Vec<AppendEntry>,
}

/// A file of `task.submit`: its text (stored by the node as a blob), or a blob the node
/// already has (from an earlier submission).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitFile {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}

/// Parameters of `task.submit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSubmitParams {
    /// e.g. `python.complexity`.
    pub capability: String,
    pub files: Vec<SubmitFile>,
    /// Executor lease; default 3000 ms.
    #[serde(default)]
    pub lease_ms: Option<u32>,
}

/// Parameters of `task.wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskWaitParams {
    pub task_ids: Vec<String>,
    /// Return at the latest after this long, finished or not (default 1000, limit 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}
