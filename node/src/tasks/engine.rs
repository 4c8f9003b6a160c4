//! Both sides of tasks as one pure state machine: events in (task gossip, blob answers,
//! results, finished executions, ticks, all with the time injected), effects out
//! ([`Effect`]: publish, fetch blobs, deliver a result, execute, record). The requester
//! side is in [`super::requester`].
//!
//! ```text
//!  requester                         candidates (peers advertising the capability)
//!  ─────────                         ──────────
//!  blobs in RocksDB
//!  Submit ──── gossip (task topic) ──► track; rendezvous order; first live one:
//!                                      Claim ── gossip ──► (renewed every lease/3)
//!          ◄── GetBlobs (blobs) ────── fetch missing blobs, verify BLAKE3, store
//!          ──── Blobs ───────────────►
//!                                      Execute (task runner actor)
//!          ◄── TaskResult ──────────
//!  first result wins; Done ── gossip ─► forget
//! ```
//!
//! The requester republishes `Submit` while nobody holds a fresh claim (gossip is best
//! effort); the scheduler passes dead or silent executors over.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::api::TaskCounters;
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::rpc::{BlobData, Blobs, BlobsResponse, MAX_BLOBS_PER_REQUEST, RequestResponse};
use pyagent_protocol::task::{BlobId, TaskId, TaskMessage, TaskOutcome, TaskSpec, verify_blob};

use super::requester::Requested;
use super::runner::Executed;
use super::scheduler::Scheduler;
use crate::effects::{Effect, Effects};
use crate::external::ExternalAgents;
use crate::membership::MembershipView;
use crate::placement;
use crate::store::{Store, StoreError};

/// How often unneeded blobs are swept from the store.
const BLOB_SWEEP_EVERY: Duration = Duration::from_secs(300);
/// Room left in a blobs answer for framing.
const BLOBS_FRAME_SLACK: usize = 64 * 1024;

pub(super) fn result_event(executor: PeerId, outcome: &TaskOutcome) -> HistoryEvent {
    match outcome {
        TaskOutcome::Completed { result_json } => {
            HistoryEvent::Result { executor: executor.to_string(), completed: true, detail: format!("{} bytes of JSON", result_json.len()) }
        }
        TaskOutcome::Failed { reason } => HistoryEvent::Result { executor: executor.to_string(), completed: false, detail: reason.clone() },
    }
}

/// The task engine of one node.
#[derive(Debug)]
pub struct TaskEngine {
    pub(super) me: PeerId,
    pub(super) store: Arc<Store>,
    /// Capabilities of the built-in agents hosted here.
    builtin: Vec<String>,
    external: Arc<ExternalAgents>,
    pub(super) scheduler: Scheduler,
    pub(super) requested: HashMap<TaskId, Requested>,
    last_claim: HashMap<TaskId, Instant>,
    pub(super) submitted_count: u64,
    executed_count: u64,
    /// The executor last recorded as assigned, per task (claim renewals are not history).
    assigned: HashMap<TaskId, PeerId>,
    last_blob_sweep: Instant,
    /// Bumped whenever a task this node submitted gets its outcome (for `task.wait`).
    pub(super) finished_count: u64,
}

impl TaskEngine {
    pub fn new(me: PeerId, store: Arc<Store>, builtin: Vec<String>, external: Arc<ExternalAgents>, now: Instant) -> Self {
        Self {
            me,
            store,
            builtin,
            external,
            scheduler: Scheduler::new(me),
            requested: HashMap::new(),
            last_claim: HashMap::new(),
            submitted_count: 0,
            executed_count: 0,
            assigned: HashMap::new(),
            last_blob_sweep: now,
            finished_count: 0,
        }
    }

    /// How many submitted tasks have an outcome so far (changes tell `task.wait` to look).
    pub fn finished_count(&self) -> u64 {
        self.finished_count
    }

    /// Task counters for `status`.
    pub fn counters(&self) -> TaskCounters {
        TaskCounters {
            submitted: self.submitted_count,
            running: self.scheduler.executing().count() as u64,
            executed: self.executed_count,
        }
    }

    /// The capabilities this node offers now (built-in and external agents; for its advert).
    pub fn capabilities(&self) -> Vec<String> {
        let mut all = self.builtin.clone();
        all.extend(self.external.capabilities());
        all.sort();
        all.dedup();
        all
    }

    /// Names of the live external agents (advertised with the built-in ones).
    pub fn external_agents(&self) -> Vec<String> {
        self.external.names()
    }

    fn serves(&self, capability: &str) -> bool {
        self.builtin.iter().any(|c| c == capability) || self.external.serves(capability)
    }

    pub(super) fn candidates(&self, view: &MembershipView, capability: &str) -> Vec<PeerId> {
        let mut peers = view.capable(capability);
        if self.serves(capability) {
            peers.push(self.me);
        }
        peers
    }

    fn record_assigned(&mut self, task: TaskId, executor: PeerId, fx: &mut Effects) {
        if self.assigned.insert(task, executor) != Some(executor) {
            fx.push(Effect::Record { subject: task, event: HistoryEvent::Assigned { executor: executor.to_string() } });
        }
    }

    /// A validated message of the task topic from `source` (not this node).
    pub fn on_message(&mut self, view: &MembershipView, source: PeerId, message: TaskMessage, now: Instant, fx: &mut Effects) {
        match message {
            TaskMessage::Submit(spec) => {
                let Ok(id) = spec.id() else { return };
                if self.requested.contains_key(&id) || !self.serves(&spec.capability) {
                    return;
                }
                let order = placement::order(&id.0, self.candidates(view, &spec.capability));
                // History is recorded by whoever did the thing: the requester records the
                // submission, each executor its own claim and result.
                if self.scheduler.track(id, spec, source, order, now) {
                    tracing::debug!(task = %id, requester = %source, "task seen");
                    self.poll(view, now, fx);
                }
            }
            TaskMessage::Claim { task, .. } => {
                self.scheduler.claimed(&task, source, now);
                if let Some(request) = self.requested.get_mut(&task) {
                    request.claim = Some((source, now));
                }
            }
            TaskMessage::Done { task, .. } => {
                self.scheduler.done(&task);
                self.last_claim.remove(&task);
                self.assigned.remove(&task);
            }
        }
    }

    /// Periodic work: executor choice, claim renewals, republishing unclaimed submissions,
    /// forgetting old requests, sweeping blobs.
    pub fn tick(&mut self, view: &MembershipView, now: Instant, fx: &mut Effects) {
        self.external.reap(now);
        self.sweep_blobs(now);
        self.poll(view, now, fx);
        let renew: Vec<TaskId> = self
            .scheduler
            .executing()
            .filter(|id| {
                let lease = self.scheduler.lease(id).unwrap_or(Duration::from_secs(3));
                self.last_claim.get(*id).is_none_or(|t| now.saturating_duration_since(*t) >= lease / 3)
            })
            .copied()
            .collect();
        for task in renew {
            self.publish_claim(task, now, fx);
        }
        self.requester_tick(view, now, fx);
        let (requested, scheduler) = (&self.requested, &self.scheduler);
        self.assigned.retain(|task, _| requested.contains_key(task) || scheduler.spec(task).is_some());
    }

    pub(super) fn poll(&mut self, view: &MembershipView, now: Instant, fx: &mut Effects) {
        for task in self.scheduler.poll(now, |p| view.contains(p)) {
            self.start(task, now, fx);
        }
    }

    /// Deletes stored blobs that no live task references and that were not stored again
    /// within [`crate::store::BLOB_TTL_MS`].
    fn sweep_blobs(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_blob_sweep) < BLOB_SWEEP_EVERY {
            return;
        }
        self.last_blob_sweep = now;
        let mut keep = std::collections::HashSet::new();
        for request in self.requested.values() {
            keep.extend(request.spec.files.iter().map(|f| f.blob));
        }
        keep.extend(self.scheduler.blobs());
        let cutoff = crate::store::now_unix_ms().saturating_sub(crate::store::BLOB_TTL_MS);
        match self.store.sweep_blobs(cutoff, &keep) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(swept = n, "old blobs deleted"),
            Err(e) => tracing::warn!("blob sweep failed: {e}"),
        }
    }

    fn missing_blobs(&self, spec: &TaskSpec) -> Result<Vec<BlobId>, StoreError> {
        let mut missing = BTreeSet::new();
        for file in &spec.files {
            if !self.store.has_blob(&file.blob)? {
                missing.insert(file.blob);
            }
        }
        Ok(missing.into_iter().collect())
    }

    fn start(&mut self, task: TaskId, now: Instant, fx: &mut Effects) {
        let Some(spec) = self.scheduler.spec(&task).cloned() else { return };
        tracing::debug!(%task, capability = %spec.capability, "executing");
        self.record_assigned(task, self.me, fx);
        self.publish_claim(task, now, fx);
        self.fetch_or_run(task, spec, true, now, fx);
    }

    /// Claims (or renews the claim on) a task this node executes. Gossip does not bring a
    /// node its own messages, so when this node is also the task's requester the claim is
    /// noted on the request here: it reports "running", and is not submitted again.
    fn publish_claim(&mut self, task: TaskId, now: Instant, fx: &mut Effects) {
        self.last_claim.insert(task, now);
        if let Some(request) = self.requested.get_mut(&task) {
            request.claim = Some((self.me, now));
        }
        fx.push(Effect::PublishTask(TaskMessage::Claim { task, executor: self.me.to_string() }));
    }

    /// Runs the task if every blob is here, else asks the requester for the missing ones
    /// (`progress`: the last answer brought something new, so asking again makes sense).
    fn fetch_or_run(&mut self, task: TaskId, spec: TaskSpec, progress: bool, now: Instant, fx: &mut Effects) {
        let missing = match self.missing_blobs(&spec) {
            Ok(m) => m,
            Err(e) => return self.finish(task, TaskOutcome::Failed { reason: e.to_string() }, now, fx),
        };
        if missing.is_empty() {
            return fx.push(Effect::Execute { task, spec });
        }
        match spec.requester.parse::<PeerId>().ok().filter(|p| *p != self.me) {
            Some(requester) if progress => {
                let ids: Vec<BlobId> = missing.into_iter().take(MAX_BLOBS_PER_REQUEST).collect();
                fx.push(Effect::FetchBlobs { peer: requester, task, ids });
            }
            _ => {
                let reason = format!("the requester did not provide blob {}", missing[0]);
                self.finish(task, TaskOutcome::Failed { reason }, now, fx);
            }
        }
    }

    /// Answers a blobs request: the blobs this node has, as many as fit in a frame.
    pub fn blobs_for(&self, ids: &[BlobId]) -> BlobsResponse {
        let mut out = Vec::new();
        let mut size = 0usize;
        for id in ids.iter().take(MAX_BLOBS_PER_REQUEST) {
            match self.store.get_blob(id) {
                Ok(Some(bytes)) => {
                    if size + bytes.len() + 64 > Blobs::MAX_RESPONSE_BYTES - BLOBS_FRAME_SLACK {
                        break;
                    }
                    size += bytes.len() + 64;
                    out.push(BlobData { id: *id, bytes });
                }
                Ok(None) => {}
                Err(e) => return BlobsResponse::Error(e.to_string()),
            }
        }
        BlobsResponse::Blobs(out)
    }

    /// The requester answered a blob fetch: verify, store, then run or ask for the rest.
    pub fn on_blobs(&mut self, task: TaskId, from: PeerId, response: BlobsResponse, now: Instant, fx: &mut Effects) {
        let blobs = match response {
            BlobsResponse::Blobs(blobs) => blobs,
            BlobsResponse::Error(reason) => return self.on_fetch_failed(task, &reason),
        };
        let mut stored = 0usize;
        for blob in blobs {
            match verify_blob(&blob.id, &blob.bytes) {
                Ok(()) => match self.store.put_blob(&blob.id, &blob.bytes) {
                    Ok(()) => stored += 1,
                    Err(e) => tracing::warn!(%task, "cannot store blob: {e}"),
                },
                Err(e) => tracing::warn!(%task, %from, "rejected blob: {e}"),
            }
        }
        let Some(spec) = self.scheduler.spec(&task).cloned() else { return };
        self.fetch_or_run(task, spec, stored > 0, now, fx);
    }

    /// A blob fetch failed (peer gone, timeout, refused): stop renewing the claim, so the
    /// next candidate takes over when it lapses.
    pub fn on_fetch_failed(&mut self, task: TaskId, reason: &str) {
        tracing::info!(%task, "cannot fetch blobs ({reason}); giving the task up");
        self.last_claim.remove(&task);
        self.scheduler.abandon(&task);
    }

    /// An execution ended: send the outcome to the requester.
    pub fn on_executed(&mut self, done: Executed, now: Instant, fx: &mut Effects) {
        let Some(outcome) = done.outcome else {
            // The external agent died: stop claiming, so the next candidate takes over.
            tracing::info!(task = %done.task, "the external agent holding the task is gone; giving it up");
            self.last_claim.remove(&done.task);
            self.scheduler.abandon(&done.task);
            return;
        };
        self.executed_count += 1;
        self.finish(done.task, outcome, now, fx);
    }

    fn finish(&mut self, task: TaskId, outcome: TaskOutcome, now: Instant, fx: &mut Effects) {
        self.last_claim.remove(&task);
        let Some(requester) = self.scheduler.spec(&task).map(|s| s.requester.clone()) else {
            return; // already done elsewhere
        };
        self.scheduler.finished(&task);
        if let TaskOutcome::Failed { reason } = &outcome {
            tracing::info!(%task, "task failed here: {reason}");
        }
        fx.push(Effect::Record { subject: task, event: result_event(self.me, &outcome) });
        match requester.parse::<PeerId>() {
            Ok(peer) if peer == self.me => self.accept_result(task, self.me, outcome, now, fx),
            Ok(peer) => fx.push(Effect::DeliverResult { peer, task, outcome }),
            Err(_) => self.scheduler.abandon(&task),
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
