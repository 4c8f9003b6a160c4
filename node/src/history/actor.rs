//! The history actor: a task that owns the [`HistoryBook`], signs this node's entries,
//! and carries out the book's [`Out`]s: requests and answers go to the router (which
//! owns the swarm), writes go to the writer thread. Its inbox is bounded; the router
//! never waits on it (a full inbox refuses the request with a reason), the API does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use pyagent_protocol::history::{Entry, EntryKey, HistoryEvent, HistoryRequest, HistoryResponse, ShardId, SubjectId};
use tokio::sync::{mpsc, oneshot};

use super::entry::Signer;
use super::book::{AppendReport, ChannelId, HistoryBook, HistorySettings, Out, ReadReport, Token};
use super::sync::SyncStats;
use super::writer::{self, WriteJob, Written};
use crate::store::Store;

/// Inputs waiting for the actor.
pub const HISTORY_INBOX: usize = 4096;
/// Writes held while the writer's inbox is full; beyond it the actor stops taking input.
const MAX_BACKLOG: usize = 4096;
/// How often the book's timers run.
const TICK: Duration = Duration::from_millis(100);

/// Why an append or read could not be done.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("cannot sign the entry: {0}")]
    Sign(String),
    #[error("the history service has stopped")]
    Stopped,
}

/// The history actor's inbox is full, or it has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// What the router and the API ask of the history.
#[derive(Debug)]
pub enum HistoryInput {
    /// The live members (this node aside) changed.
    Members(Vec<PeerId>),
    /// A peer's request; answer with [`ToRouter::Respond`] and the same channel.
    Request { peer: PeerId, channel: ChannelId, request: HistoryRequest },
    /// The answer to a [`ToRouter::Send`], or why it failed.
    Response { token: Token, result: Result<HistoryResponse, String> },
    /// Record an event of this node (signed here; no one waits).
    Record { subject: SubjectId, event: HistoryEvent },
    /// Append entries this node signed (the caller signs, off the actor).
    Append { entries: Vec<(Entry, EntryKey)>, reply: oneshot::Sender<AppendReport> },
    Read { subject: SubjectId, reply: oneshot::Sender<ReadReport> },
    ReadShard { shard: ShardId, after: Option<EntryKey>, limit: usize, reply: oneshot::Sender<ReadReport> },
    Shards { reply: oneshot::Sender<ShardsReport> },
    /// Hand the queued writes to the writer, wait until it has written them, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// What the actor asks of the router.
#[derive(Debug)]
pub enum ToRouter {
    Send { token: Token, peer: PeerId, request: HistoryRequest },
    Respond { channel: ChannelId, response: HistoryResponse },
}

/// This node's view of the shards.
#[derive(Debug, Clone)]
pub struct ShardsReport {
    pub settings: HistorySettings,
    pub members: Vec<PeerId>,
    /// Per shard: owners, local entries and fingerprint.
    pub shards: Vec<(ShardId, Vec<PeerId>, pyagent_protocol::history::Fingerprint)>,
    /// Shards whose fingerprint differed from a co-owner's at the last comparison.
    pub differing: Vec<ShardId>,
    pub hints_pending: usize,
    /// Shards held here, not owned, whose owners may still lack some of their entries.
    pub handoff_pending: usize,
    pub appends_in_flight: usize,
    /// Anti-entropy counters, and the entries written new since start.
    pub sync: SyncStats,
}

/// Handle to the history actor.
#[derive(Debug, Clone)]
pub struct History {
    inbox: mpsc::Sender<HistoryInput>,
    me: PeerId,
    signer: Signer,
}

impl History {
    /// Starts the actor and its writer; `to_router` carries requests and answers out.
    pub fn start(keypair: Keypair, settings: HistorySettings, store: Arc<Store>, to_router: mpsc::Sender<ToRouter>) -> std::io::Result<Self> {
        let (inbox, rx) = mpsc::channel(HISTORY_INBOX);
        let (done_tx, done_rx) = mpsc::channel(2 * writer::WRITER_INBOX + 64);
        let (finished_tx, finished_rx) = oneshot::channel();
        let writer = writer::start(store.clone(), done_tx, finished_tx)?;
        let me = keypair.public().to_peer_id();
        let signer = Signer::new(keypair.clone());
        let book = HistoryBook::new(me, settings, store.clone(), Instant::now());
        let actor = Actor { signer: signer.clone(), book, store, to_router, writer, backlog: VecDeque::new() };
        tokio::spawn(actor.run(rx, done_rx, finished_rx));
        Ok(Self { inbox, me, signer })
    }

    /// This node's PeerId.
    pub fn peer(&self) -> PeerId {
        self.me
    }

    /// For the router: never waits; `Err` when the inbox is full or the actor stopped
    /// (the input is dropped: the caller answers or times out instead).
    pub fn try_send(&self, input: HistoryInput) -> Result<(), Busy> {
        self.inbox.try_send(input).map_err(|_| Busy)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> HistoryInput) -> Result<T, HistoryError> {
        let (tx, rx) = oneshot::channel();
        self.inbox.send(make(tx)).await.map_err(|_| HistoryError::Stopped)?;
        rx.await.map_err(|_| HistoryError::Stopped)
    }

    /// Appends events of this node (signed here, on the blocking pool and every core);
    /// the report says how many owners hold each.
    pub async fn append(&self, events: Vec<(SubjectId, HistoryEvent)>) -> Result<AppendReport, HistoryError> {
        let signer = self.signer.clone();
        let now_ms = crate::store::now_unix_ms();
        let entries = tokio::task::spawn_blocking(move || signer.sign_all(events, now_ms))
            .await
            .map_err(|e| HistoryError::Sign(e.to_string()))?
            .map_err(|e| HistoryError::Sign(e.to_string()))?;
        self.ask(|reply| HistoryInput::Append { entries, reply }).await
    }

    pub async fn read(&self, subject: SubjectId) -> Result<ReadReport, HistoryError> {
        self.ask(|reply| HistoryInput::Read { subject, reply }).await
    }

    pub async fn read_shard(&self, shard: ShardId, after: Option<EntryKey>, limit: usize) -> Result<ReadReport, HistoryError> {
        self.ask(|reply| HistoryInput::ReadShard { shard, after, limit, reply }).await
    }

    pub async fn shards(&self) -> Result<ShardsReport, HistoryError> {
        self.ask(|reply| HistoryInput::Shards { reply }).await
    }

    /// Stops the actor once its queued writes are durable (at node shutdown).
    pub async fn shutdown(&self) -> Result<(), HistoryError> {
        self.ask(HistoryInput::Shutdown).await
    }
}

struct Actor {
    signer: Signer,
    book: HistoryBook,
    store: Arc<Store>,
    to_router: mpsc::Sender<ToRouter>,
    writer: mpsc::Sender<WriteJob>,
    backlog: VecDeque<WriteJob>,
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<HistoryInput>, mut done: mpsc::Receiver<Written>, finished: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_reply = None;
        loop {
            let mut out = Vec::new();
            let now = Instant::now();
            let writer = self.writer.clone();
            tokio::select! {
                input = inbox.recv(), if self.backlog.len() < MAX_BACKLOG => match input {
                    Some(HistoryInput::Shutdown(reply)) => {
                        stop_reply = Some(reply);
                        break;
                    }
                    Some(input) => self.on_input(input, now, &mut out),
                    None => break,
                },
                Some(written) = done.recv() => self.book.on_written(written.token, written.result, now, &mut out),
                permit = writer.reserve(), if !self.backlog.is_empty() => match (permit, self.backlog.pop_front()) {
                    (Ok(permit), Some(job)) => permit.send(job),
                    _ => break,
                },
                _ = tick.tick() => self.book.tick(now, &mut out),
            }
            if !self.carry_out(out).await {
                break;
            }
        }
        // The writes still queued here go to the writer; it writes them and ends once the
        // last sender (this one) is dropped.
        let Self { writer, backlog, book, .. } = self;
        drop(book);
        for job in backlog {
            if writer.send(job).await.is_err() {
                break;
            }
        }
        drop(writer);
        drop(inbox);
        drop(done);
        let _ = finished.await;
        tracing::debug!("history actor stopped");
        if let Some(reply) = stop_reply {
            let _ = reply.send(());
        }
    }


    fn on_input(&mut self, input: HistoryInput, now: Instant, out: &mut Vec<Out>) {
        match input {
            HistoryInput::Members(members) => self.book.set_members(members, now),
            HistoryInput::Request { peer, channel, request } => self.book.on_request(peer, channel, request, out),
            HistoryInput::Response { token, result } => self.book.on_response(token, result, now, out),
            HistoryInput::Record { subject, event } => match self.signer.sign(subject, event, crate::store::now_unix_ms()) {
                Ok(entry) => self.book.append(vec![entry], None, false, now, out),
                Err(e) => tracing::error!(%subject, "history not recorded: {e}"),
            },
            HistoryInput::Append { entries, reply } => self.book.append(entries, Some(reply), false, now, out),
            HistoryInput::Read { subject, reply } => self.book.read(subject, reply, now, out),
            HistoryInput::ReadShard { shard, after, limit, reply } => self.book.read_shard(shard, after, limit, reply, now, out),
            HistoryInput::Shards { reply } => {
                let _ = reply.send(self.report());
            }
            HistoryInput::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn report(&self) -> ShardsReport {
        let digests = self.store.digests().unwrap_or_default();
        let owners = self.book.owners();
        ShardsReport {
            settings: self.book.settings,
            members: owners.members().to_vec(),
            shards: ShardId::all().map(|s| (s, owners.of(s).to_vec(), digests.get(usize::from(s.0)).copied().unwrap_or_default())).collect(),
            differing: self.book.differing_shards(),
            hints_pending: self.store.hint_count().unwrap_or(0),
            handoff_pending: self.book.handoff_pending(),
            appends_in_flight: self.book.appends_in_flight(),
            sync: {
                let mut sync = self.book.sync_stats();
                (sync.entries_written, sync.entry_bytes_written) = self.store.history_written();
                sync
            },
        }
    }

    /// Carries out the book's outputs; false when the router is gone.
    async fn carry_out(&mut self, out: Vec<Out>) -> bool {
        for o in out {
            match o {
                Out::Send { token, peer, request } => {
                    if self.to_router.send(ToRouter::Send { token, peer, request }).await.is_err() {
                        return false;
                    }
                }
                Out::Respond { channel, response } => {
                    if self.to_router.send(ToRouter::Respond { channel, response }).await.is_err() {
                        return false;
                    }
                }
                Out::Write { token, entries, verify, hints } => {
                    let job = WriteJob { token, entries, verify, hints };
                    if !self.backlog.is_empty() {
                        self.backlog.push_back(job);
                        continue;
                    }
                    match self.writer.try_send(job) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(job)) => self.backlog.push_back(job),
                        Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    }
                }
            }
        }
        true
    }
}
