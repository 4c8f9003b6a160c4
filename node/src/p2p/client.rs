//! The handle through which the rest of the node talks to the router.

use libp2p::{Multiaddr, PeerId};
use pyagent_protocol::api::{Event, PeerInfo, StatusResult, TallyResult, TaskReport};
use pyagent_protocol::task::{FileRef, TaskId};
use pyagent_protocol::vote::{ProposalId, ProposalSpec, VoteChoice};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::tasks::SubmitError;
use crate::votes::VotesError;

/// Capacity of the command channel.
pub const COMMAND_QUEUE: usize = 256;
/// Capacity of the event broadcast; a slower subscriber skips events (and is told so).
pub const EVENT_QUEUE: usize = 1024;

/// Requests to the router.
#[derive(Debug)]
pub enum Command {
    Status(oneshot::Sender<StatusResult>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Dial a peer found by discovery (no reply: failures are logged).
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Submit a task whose blobs are stored locally; the reply is its id and the number of
    /// candidate executors, or why it was refused.
    SubmitTask {
        capability: String,
        files: Vec<FileRef>,
        lease_ms: u32,
        reply: oneshot::Sender<Result<(TaskId, usize), SubmitError>>,
    },
    /// How tasks this node submitted stand.
    TaskReports { ids: Vec<TaskId>, reply: oneshot::Sender<Vec<TaskReport>> },
    /// Open a proposal (the node fills in proposer; its agents vote on reviews).
    Propose { spec: ProposalSpec, reply: oneshot::Sender<Result<ProposalId, VotesError>> },
    /// Cast this node's ballot.
    Ballot { proposal: ProposalId, choice: VoteChoice, reply: oneshot::Sender<Result<(), VotesError>> },
    /// The tally of a proposal and its ballots.
    Tally { proposal: ProposalId, reply: oneshot::Sender<Result<TallyResult, VotesError>> },
    /// What this node advertises changed (its KV pool's blocks): publish the advert now,
    /// or soon if one just went out (no reply).
    AdvertSoon,
    /// The IP address of this node's connection to a peer (none while not connected, or
    /// over a transport without one).
    PeerIp { peer: PeerId, reply: oneshot::Sender<Option<std::net::IpAddr>> },
    /// Close every connection and stop; the reply comes once the swarm is dropped.
    Shutdown(oneshot::Sender<()>),
}

/// The router is gone.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("the node's network task has stopped")]
    Stopped,
}

/// Cloneable handle to the router.
#[derive(Debug, Clone)]
pub struct NodeClient {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    /// Bumped whenever a submitted task gets its outcome.
    results: watch::Receiver<u64>,
    history: crate::history::History,
}

impl NodeClient {
    pub(crate) fn new(commands: mpsc::Sender<Command>, events: broadcast::Sender<Event>, results: watch::Receiver<u64>, history: crate::history::History) -> Self {
        Self { commands, events, results, history }
    }

    /// This node's PeerId (as the history knows it).
    pub fn history_peer(&self) -> PeerId {
        self.history.peer()
    }

    /// The history DHT (append, read, shards).
    pub fn history(&self) -> &crate::history::History {
        &self.history
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    pub async fn status(&self) -> Result<StatusResult, ClientError> {
        self.ask(Command::Status).await
    }

    /// Asks for the advert to go out soon (see [`Command::AdvertSoon`]); returns at once
    /// and may be called from any thread. When the command queue is full it is dropped:
    /// the periodic advert still goes out.
    pub fn advert_soon(&self) {
        let _ = self.commands.try_send(Command::AdvertSoon);
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.ask(Command::Peers).await
    }

    /// See [`Command::PeerIp`].
    pub async fn peer_ip(&self, peer: PeerId) -> Result<Option<std::net::IpAddr>, ClientError> {
        self.ask(|reply| Command::PeerIp { peer, reply }).await
    }

    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), ClientError> {
        self.commands.send(Command::Dial { peer, addrs }).await.map_err(|_| ClientError::Stopped)
    }

    pub async fn submit_task(&self, capability: String, files: Vec<FileRef>, lease_ms: u32) -> Result<Result<(TaskId, usize), SubmitError>, ClientError> {
        self.ask(|reply| Command::SubmitTask { capability, files, lease_ms, reply }).await
    }

    pub async fn task_reports(&self, ids: Vec<TaskId>) -> Result<Vec<TaskReport>, ClientError> {
        self.ask(|reply| Command::TaskReports { ids, reply }).await
    }

    /// A receiver that changes whenever a submitted task finishes.
    pub fn results_changed(&self) -> watch::Receiver<u64> {
        self.results.clone()
    }

    pub async fn propose(&self, spec: ProposalSpec) -> Result<Result<ProposalId, VotesError>, ClientError> {
        self.ask(|reply| Command::Propose { spec, reply }).await
    }

    pub async fn ballot(&self, proposal: ProposalId, choice: VoteChoice) -> Result<Result<(), VotesError>, ClientError> {
        self.ask(|reply| Command::Ballot { proposal, choice, reply }).await
    }

    /// The tally of the ballots this node has seen live.
    pub async fn live_tally(&self, proposal: ProposalId) -> Result<Result<TallyResult, VotesError>, ClientError> {
        self.ask(|reply| Command::Tally { proposal, reply }).await
    }

    /// The tally replayed from the history DHT (the same on every node that reads the
    /// same entries); a proposal not in history yet is tallied live. A final tally is
    /// recorded once by this node.
    pub async fn tally(&self, proposal: ProposalId) -> Result<Result<TallyResult, VotesError>, ClientError> {
        use pyagent_protocol::history::HistoryEvent;
        let report = self.history.read(proposal).await.map_err(|_| ClientError::Stopped)?;
        let result = match crate::votes::replay::tally(&proposal, &report.entries, crate::store::now_unix_ms()) {
            Err(VotesError::UnknownProposal(_)) => return self.live_tally(proposal).await,
            other => other,
        };
        if let Ok(t) = &result {
            let me = self.status().await?.peer_id;
            let recorded = report.entries.iter().any(|(_, e)| e.body.author == me && matches!(e.body.event, HistoryEvent::Tally { .. }));
            if t.is_final && !recorded {
                let tally = HistoryEvent::Tally { winner: t.winner.clone() };
                if let Err(e) = self.history.append(vec![(proposal, tally)]).await {
                    tracing::warn!(%proposal, "final tally not recorded: {e}");
                }
            }
        }
        Ok(result)
    }

    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.ask(Command::Shutdown).await
    }

    /// A new subscription to membership events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}
