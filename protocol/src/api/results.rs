//! Results of the API's methods (the `result` object of a reply) and the PUB socket's
//! events. Domain code fills these typed values; nothing builds JSON by hand.

use serde::{Deserialize, Serialize};

use crate::Capacity;

/// The result of `agent.register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegisterResult {
    pub agent_id: u64,
    /// Poll `agent.next` at least this often, or be dropped.
    pub poll_within_ms: u64,
}

/// A file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    pub path: String,
    pub text: String,
}

/// A job for an external agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentJob {
    pub task_id: String,
    pub capability: String,
    pub files: Vec<JobFile>,
}

/// The result of `agent.next`: a job, or none when the poll timed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNextResult {
    pub job: Option<AgentJob>,
}

/// The result of `agent.result`: whether the node still wanted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentResultResult {
    pub accepted: bool,
}

/// The result of `history`: this node's records of the task, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResult {
    pub task_id: String,
    pub events: Vec<crate::history::HistoryRecord>,
}

/// The result of `task.submit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSubmitResult {
    pub task_id: String,
    /// The blob id of each file, in order (reuse them in later submissions).
    pub blobs: Vec<String>,
    /// How many peers (this node included) offer the capability.
    pub candidates: usize,
}

/// One task as its requester sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: String,
    pub capability: String,
    /// `pending` (no claim yet), `running`, `completed` or `failed`.
    pub state: String,
    /// The peer that claimed or completed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The agent's result (`completed`), passed through as the executor wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// Why it failed (`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The result of `task.wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskWaitResult {
    pub tasks: Vec<TaskReport>,
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    pub peer_id: String,
    pub node_version: String,
    pub protocol_version: u16,
    /// Swarm namespace name.
    pub swarm: String,
    /// True when a pre-shared swarm key is in use.
    pub private: bool,
    pub quic: bool,
    pub mdns: bool,
    pub listen_addrs: Vec<String>,
    pub uptime_secs: u64,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peers in the membership view (fresh advert).
    pub members: usize,
    pub agents: Vec<String>,
    /// Task capabilities of the hosted agents.
    pub capabilities: Vec<String>,
    pub capacity: Capacity,
    pub data_dir: String,
    /// Task counters of this run.
    pub tasks: TaskCounters,
}

/// How many tasks this node submitted, is executing, and has executed (this run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounters {
    pub submitted: u64,
    pub running: u64,
    pub executed: u64,
}

/// One member of the view, as `peers` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub node_version: String,
    /// The peer protocol version spoken with this peer (the highest both speak).
    pub protocol_version: u16,
    pub connected: bool,
    pub listen_addrs: Vec<String>,
    pub agents: Vec<String>,
    pub capacity: Capacity,
    pub uptime_secs: u64,
    /// Milliseconds since the last advert from this peer.
    pub last_seen_ms: u64,
}

/// Result of `peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersResult {
    pub peers: Vec<PeerInfo>,
}

/// PUB topic of membership events.
pub const PEER_EVENT_TOPIC: &str = "peer";

/// An event on the PUB socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    PeerJoined { peer: PeerInfo },
    PeerLeft { peer_id: String, reason: String },
}

impl Event {
    pub fn topic(&self) -> &'static str {
        PEER_EVENT_TOPIC
    }
}

/// The result of `vote.propose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteProposeResult {
    pub proposal_id: String,
}

/// The result of `vote.ballot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteBallotResult {
    pub accepted: bool,
}

/// The result of `vote.tally`: the count, and every ballot with its options by label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyResult {
    pub proposal_id: String,
    pub title: String,
    /// The method's name (`crate::vote::METHOD_NAMES`).
    pub method: String,
    pub options: Vec<String>,
    pub proposer: String,
    pub deadline_unix_ms: u64,
    pub quorum: Option<u32>,
    /// The deadline passed, or the quorum is met: the result no longer changes.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The winning option, once a ballot was counted.
    pub winner: Option<String>,
    /// Every option, winner first.
    pub ranking: Vec<String>,
    /// Per option (in `options` order), in the method's unit.
    pub scores: Vec<i64>,
    /// Instant-runoff only: the count of every round.
    pub rounds: Vec<Vec<i64>>,
    pub ballots_counted: usize,
    pub ballots: Vec<BallotView>,
}

/// One ballot of a tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BallotView {
    pub voter: String,
    pub agent: Option<String>,
    pub cast_unix_ms: u64,
    pub choice: LabelledChoice,
}

/// A ballot's choice with options by label: `{"ranking": [..]}`, `{"approval": [..]}` or
/// `{"quadratic": [[label, votes], ..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelledChoice {
    Ranking(Vec<String>),
    Approval(Vec<String>),
    Quadratic(Vec<(String, u64)>),
}
