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

/// The result of `history`: entries gathered from the shard's owners, deduplicated and
/// verified; by (author time, id) for a subject, in key order for a shard page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub shard: u16,
    pub entries: Vec<crate::history::HistoryRecord>,
    /// Owners asked (this node aside) and how many answered.
    pub owners_asked: usize,
    pub owners_answered: usize,
    /// Entries an owner sent that failed verification (left out).
    pub rejected: usize,
    /// A shard page was cut short: pass `next_after` as `after`.
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One appended entry: its id, shard, and how many owners hold it durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEntry {
    pub id: String,
    pub shard: u16,
    pub copies: usize,
}

/// The result of `history.append`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAppendResult {
    pub entries: Vec<AppendedEntry>,
    /// Entries durable on W owners (W as configured, or every owner of a smaller swarm).
    pub acknowledged: usize,
    /// Entries durable on fewer: kept by this node as hints until their owners take them.
    pub hinted: usize,
    pub write_quorum: usize,
}

/// One shard as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard: u16,
    pub owners: Vec<String>,
    pub owned_here: bool,
    /// Entries this node holds, and their fingerprint (`count:first 16 hex digits`).
    pub count: u64,
    pub digest: String,
}

/// Anti-entropy counters of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounters {
    pub digest_rounds: u64,
    pub reconcile_rounds: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub entries_pushed: u64,
    pub entries_fetched: u64,
    pub last_in_sync_round_bytes: u64,
    pub shards_handed_off: u64,
    /// Entries this node wrote new since it started (its own, replicas, repairs), and
    /// their encoded bytes.
    pub entries_written: u64,
    pub entry_bytes_written: u64,
}

/// The result of `shards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsResult {
    pub replicas: usize,
    pub write_quorum: usize,
    /// Live members, this node included.
    pub members: usize,
    pub shards: Vec<ShardInfo>,
    pub owned_here: usize,
    pub entries_here: u64,
    /// Shards with fewer live owners than `replicas` (a swarm smaller than R).
    pub under_replicated: usize,
    /// Shards whose fingerprint differed from a co-owner's at the last comparison.
    pub differing: Vec<u16>,
    pub hints_pending: usize,
    /// Shards held here but not owned whose owners may still lack some of their entries
    /// (being handed off).
    pub handoff_pending: usize,
    pub appends_in_flight: usize,
    pub sync: SyncCounters,
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
    /// KV blocks exchanged with peers (this run).
    #[serde(default)]
    pub kv: KvExchangeCounters,
}

/// What the KV-block exchange has done this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KvExchangeCounters {
    pub blocks_fetched: u64,
    pub bytes_fetched: u64,
    /// Of the blocks fetched, those that came over the bulk path.
    #[serde(default)]
    pub blocks_fetched_bulk: u64,
    pub blocks_served: u64,
    pub bytes_served: u64,
    /// Parts of fetches that ended in an error (peer gone, slow, refused, bad block).
    pub fetch_failures: u64,
    /// Blocks that failed their checks (each part of the prefix computed instead).
    pub bad_blocks: u64,
    /// Prefix fetches that got fewer blocks than planned: the rest was computed.
    pub fallbacks: u64,
    /// Blocks this node's pool dropped and pushed to a peer instead.
    pub blocks_offloaded: u64,
    /// Blocks peers pushed here and this node kept.
    pub blocks_kept_for_peers: u64,
    /// Prompts this node prefilled for decode peers (`--role prefill`).
    #[serde(default)]
    pub prefills_served: u64,
    /// Blocks a prefill peer computed for this node (`--role decode`).
    #[serde(default)]
    pub blocks_prefilled_by_peers: u64,
    /// Moving average of fetches (0 until one was measured).
    pub fetch_bytes_per_s: f64,
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
