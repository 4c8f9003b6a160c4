//! Both sides of tasks, driven by the swarm task (which owns the `Swarm` and lends it to
//! every call here).
//!
//! ```text
//!  requester                         candidates (peers advertising the capability)
//!  ─────────                         ──────────
//!  blobs in RocksDB
//!  Submit ──── gossip (task topic) ──► track; rendezvous order; first live one:
//!                                      Claim ── gossip ──► (renewed every lease/3)
//!          ◄── GetBlobs (rpc) ──────── fetch missing blobs, verify BLAKE3, store
//!          ──── Blobs ───────────────►
//!                                      run the agent (blocking pool, one per core)
//!          ◄── TaskResult (rpc) ─────
//!  first result wins; Done ── gossip ─► forget
//! ```
//!
//! The requester republishes `Submit` while nobody holds a fresh claim (gossip is best
//! effort); the scheduler passes dead or silent executors over.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, Swarm, gossipsub};
use pyagent_agents::Registry;
use pyagent_protocol::api::{TaskCounters, TaskReport};
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::rpc::{BlobData, MAX_BLOBS_PER_REQUEST, MAX_RPC_BYTES, RpcRequest, RpcResponse};
use pyagent_protocol::task::{BlobId, TaskError, TaskId, TaskMessage, TaskOutcome, TaskSpec, verify_blob};
use tokio::sync::{Semaphore, mpsc, watch};

use super::execute;
use super::rendezvous;
use super::scheduler::Scheduler;
use crate::external::{ExternalAgents, JobView};
use crate::membership::MembershipView;
use crate::p2p::behaviour::Behaviour;
use crate::store::{Store, StoreError};

fn result_event(executor: PeerId, outcome: &TaskOutcome) -> HistoryEvent {
    match outcome {
        TaskOutcome::Completed { result_json } => {
            HistoryEvent::Result { executor: executor.to_string(), completed: true, detail: format!("{} bytes of JSON", result_json.len()) }
        }
        TaskOutcome::Failed { reason } => HistoryEvent::Result { executor: executor.to_string(), completed: false, detail: reason.clone() },
    }
}

/// Finished requests (with their results) are kept this long for `task.wait`.
const KEEP_FINISHED: Duration = Duration::from_secs(120);
/// How often unneeded blobs are swept from the store.
const BLOB_SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Room left in a `Blobs` answer for framing.
const BLOBS_FRAME_SLACK: usize = 64 * 1024;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] TaskError),
    #[error("{path}: blob {blob} is not stored on this node")]
    MissingBlob { path: String, blob: BlobId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An execution that ended (on the blocking pool, or at an external agent). No outcome:
/// the external agent died, and this node gives the task up.
#[derive(Debug)]
pub struct Executed {
    pub task: TaskId,
    pub outcome: Option<TaskOutcome>,
}

/// A task's final state, as the requester keeps it.
#[derive(Debug)]
enum Outcome {
    /// Checked to be JSON when it arrived.
    Completed(Box<serde_json::value::RawValue>),
    Failed(String),
}

#[derive(Debug)]
struct Requested {
    spec: TaskSpec,
    last_publish: Instant,
    /// The latest claim seen.
    claim: Option<(PeerId, Instant)>,
    outcome: Option<(PeerId, Outcome)>,
    finished_at: Option<Instant>,
}

/// The task engine of one node.
#[derive(Debug)]
pub struct TaskEngine {
    me: PeerId,
    topic: gossipsub::IdentTopic,
    store: Arc<Store>,
    registry: Registry,
    /// Capabilities of the built-in agents hosted here.
    builtin: Vec<String>,
    external: Arc<ExternalAgents>,
    scheduler: Scheduler,
    requested: HashMap<TaskId, Requested>,
    fetches: HashMap<OutboundRequestId, TaskId>,
    deliveries: HashMap<OutboundRequestId, TaskId>,
    last_claim: HashMap<TaskId, Instant>,
    permits: Arc<Semaphore>,
    executed: mpsc::Sender<Executed>,
    results: watch::Sender<u64>,
    submitted_count: u64,
    executed_count: u64,
    /// The executor last recorded as assigned, per task (claim renewals are not history).
    assigned: HashMap<TaskId, PeerId>,
    last_blob_sweep: Instant,
}

impl TaskEngine {
    pub fn new(
        me: PeerId,
        topic: gossipsub::IdentTopic,
        store: Arc<Store>,
        registry: Registry,
        external: Arc<ExternalAgents>,
        executed: mpsc::Sender<Executed>,
        results: watch::Sender<u64>,
    ) -> Self {
        let builtin = registry.capabilities();
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            me,
            topic,
            store,
            registry,
            builtin,
            external,
            scheduler: Scheduler::new(me),
            requested: HashMap::new(),
            fetches: HashMap::new(),
            deliveries: HashMap::new(),
            last_claim: HashMap::new(),
            permits: Arc::new(Semaphore::new(workers)),
            executed,
            results,
            submitted_count: 0,
            executed_count: 0,
            assigned: HashMap::new(),
            last_blob_sweep: Instant::now(),
        }
    }

    /// Deletes stored blobs that no live task references and that were not stored again
    /// within [`crate::store::BLOB_TTL_MS`].
    fn sweep_blobs(&mut self, now: Instant) {
        if now.duration_since(self.last_blob_sweep) < BLOB_SWEEP_EVERY {
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

    fn record(&self, task: &TaskId, event: HistoryEvent) {
        if let Err(e) = self.store.record(task, event) {
            tracing::warn!(%task, "history not recorded: {e}");
        }
    }

    fn record_assigned(&mut self, task: TaskId, executor: PeerId) {
        if self.assigned.insert(task, executor) != Some(executor) {
            self.record(&task, HistoryEvent::Assigned { executor: executor.to_string() });
        }
    }

    /// Task counters for `status`.
    pub fn counters(&self) -> TaskCounters {
        TaskCounters {
            submitted: self.submitted_count,
            running: self.scheduler.executing().count() as u64,
            executed: self.executed_count,
        }
    }

    pub fn topic(&self) -> &gossipsub::IdentTopic {
        &self.topic
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

    fn candidates(&self, view: &MembershipView, capability: &str) -> Vec<PeerId> {
        let mut peers = view.capable(capability);
        if self.serves(capability) {
            peers.push(self.me);
        }
        peers
    }

    fn publish(&self, swarm: &mut Swarm<Behaviour>, message: &TaskMessage) {
        let bytes = match pyagent_protocol::encode(message) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode task message: {e}");
                return;
            }
        };
        match swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!("task message not published: {e}"),
        }
    }

    /// Submits a task whose blobs are in the local store. Returns its id and how many
    /// candidates offer the capability (none: the task fails at once, with the reason).
    pub fn submit(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        view: &MembershipView,
        spec: TaskSpec,
    ) -> Result<(TaskId, usize), SubmitError> {
        spec.validate(Some(&self.me.to_string()))?;
        for file in &spec.files {
            if !self.store.has_blob(&file.blob)? {
                return Err(SubmitError::MissingBlob { path: file.path.clone(), blob: file.blob });
            }
        }
        let id = spec.id().map_err(TaskError::from)?;
        self.submitted_count += 1;
        let candidates = self.candidates(view, &spec.capability);
        self.record(&id, HistoryEvent::Submitted { capability: spec.capability.clone(), files: spec.files.len(), requester: self.me.to_string() });
        let now = Instant::now();
        let mut request = Requested { spec: spec.clone(), last_publish: now, claim: None, outcome: None, finished_at: None };
        if candidates.is_empty() {
            let reason = format!("no peer in the swarm offers {}", spec.capability);
            self.record(&id, HistoryEvent::Result { executor: self.me.to_string(), completed: false, detail: reason.clone() });
            request.outcome = Some((self.me, Outcome::Failed(reason)));
            request.finished_at = Some(now);
            self.requested.insert(id, request);
            self.results.send_modify(|v| *v += 1);
            return Ok((id, 0));
        }
        tracing::debug!(task = %id, capability = %spec.capability, files = spec.files.len(), candidates = candidates.len(), "task submitted");
        self.publish(swarm, &TaskMessage::Submit(spec.clone()));
        let count = candidates.len();
        self.scheduler.track(id, spec, self.me, rendezvous::order(&id, candidates), now);
        self.requested.insert(id, request);
        self.poll(swarm, view, now);
        Ok((id, count))
    }

    /// A validated message of the task topic from `source`.
    pub fn on_message(&mut self, swarm: &mut Swarm<Behaviour>, view: &MembershipView, source: PeerId, message: TaskMessage) {
        let now = Instant::now();
        match message {
            TaskMessage::Submit(spec) => {
                let Ok(id) = spec.id() else { return };
                if self.requested.contains_key(&id) || !self.serves(&spec.capability) {
                    return;
                }
                let order = rendezvous::order(&id, self.candidates(view, &spec.capability));
                let event = HistoryEvent::Submitted { capability: spec.capability.clone(), files: spec.files.len(), requester: source.to_string() };
                if self.scheduler.track(id, spec, source, order, now) {
                    self.record(&id, event);
                    tracing::debug!(task = %id, requester = %source, "task seen");
                    self.poll(swarm, view, now);
                }
            }
            TaskMessage::Claim { task, .. } => {
                if self.requested.contains_key(&task) || self.scheduler.spec(&task).is_some() {
                    self.record_assigned(task, source);
                }
                self.scheduler.claimed(&task, source, now);
                if let Some(request) = self.requested.get_mut(&task) {
                    request.claim = Some((source, now));
                }
            }
            TaskMessage::Done { task, .. } => {
                if self.scheduler.spec(&task).is_some() {
                    self.record(&task, HistoryEvent::Done);
                }
                self.scheduler.done(&task);
                self.last_claim.remove(&task);
                self.assigned.remove(&task);
            }
        }
    }

    /// Periodic work: executor choice, claim renewals, republishing unclaimed submissions.
    pub fn tick(&mut self, swarm: &mut Swarm<Behaviour>, view: &MembershipView) {
        let now = Instant::now();
        self.external.reap(now);
        self.sweep_blobs(now);
        self.poll(swarm, view, now);
        let renew: Vec<TaskId> = self
            .scheduler
            .executing()
            .filter(|id| {
                let lease = self.scheduler.lease(id).unwrap_or(Duration::from_secs(3));
                self.last_claim.get(*id).is_none_or(|t| now.duration_since(*t) >= lease / 3)
            })
            .copied()
            .collect();
        for task in renew {
            self.last_claim.insert(task, now);
            self.publish(swarm, &TaskMessage::Claim { task, executor: self.me.to_string() });
        }
        let mut republish = Vec::new();
        for request in self.requested.values_mut() {
            let lease = Duration::from_millis(u64::from(request.spec.lease_ms));
            let claimed = request.claim.is_some_and(|(peer, at)| {
                now.duration_since(at) < lease && (peer == self.me || view.contains(&peer))
            });
            if request.outcome.is_none() && !claimed && now.duration_since(request.last_publish) >= lease {
                request.last_publish = now;
                republish.push(request.spec.clone());
            }
        }
        for spec in republish {
            tracing::debug!(capability = %spec.capability, "no fresh claim; submitting again");
            self.publish(swarm, &TaskMessage::Submit(spec));
        }
        self.requested.retain(|_, r| r.finished_at.is_none_or(|t| now.duration_since(t) < KEEP_FINISHED));
        let (requested, scheduler) = (&self.requested, &self.scheduler);
        self.assigned.retain(|task, _| requested.contains_key(task) || scheduler.spec(task).is_some());
    }

    fn poll(&mut self, swarm: &mut Swarm<Behaviour>, view: &MembershipView, now: Instant) {
        for task in self.scheduler.poll(now, |p| view.contains(p)) {
            self.start(swarm, task, now);
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

    fn start(&mut self, swarm: &mut Swarm<Behaviour>, task: TaskId, now: Instant) {
        let Some(spec) = self.scheduler.spec(&task).cloned() else { return };
        tracing::debug!(%task, capability = %spec.capability, "executing");
        self.record_assigned(task, self.me);
        self.last_claim.insert(task, now);
        self.publish(swarm, &TaskMessage::Claim { task, executor: self.me.to_string() });
        self.fetch_or_run(swarm, task, spec, true);
    }

    /// Runs the task if every blob is here, else asks the requester for the missing ones
    /// (`progress`: the last answer brought something new, so asking again makes sense).
    fn fetch_or_run(&mut self, swarm: &mut Swarm<Behaviour>, task: TaskId, spec: TaskSpec, progress: bool) {
        let missing = match self.missing_blobs(&spec) {
            Ok(m) => m,
            Err(e) => return self.finish(swarm, task, TaskOutcome::Failed { reason: e.to_string() }),
        };
        if missing.is_empty() {
            return self.run(task, spec);
        }
        let requester = spec.requester.parse::<PeerId>().ok().filter(|p| *p != self.me);
        match requester {
            Some(requester) if progress => {
                let ids: Vec<BlobId> = missing.into_iter().take(MAX_BLOBS_PER_REQUEST).collect();
                let request = swarm.behaviour_mut().rpc.send_request(&requester, RpcRequest::GetBlobs { ids });
                self.fetches.insert(request, task);
            }
            _ => {
                let reason = format!("the requester did not provide blob {}", missing[0]);
                self.finish(swarm, task, TaskOutcome::Failed { reason });
            }
        }
    }

    fn run(&self, task: TaskId, spec: TaskSpec) {
        let (store, registry, permits, executed) =
            (self.store.clone(), self.registry.clone(), self.permits.clone(), self.executed.clone());
        if registry.for_capability(&spec.capability).is_none() {
            return self.run_external(task, spec);
        }
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else { return };
            let outcome = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                execute::run(&registry, &store, &spec)
            })
            .await
            .unwrap_or_else(|e| TaskOutcome::Failed { reason: format!("the agent crashed: {e}") });
            let _ = executed.send(Executed { task, outcome: Some(outcome) }).await;
        });
    }

    /// Hands the task to a live external agent and waits for its answer.
    fn run_external(&self, task: TaskId, spec: TaskSpec) {
        let (store, external, executed) = (self.store.clone(), self.external.clone(), self.executed.clone());
        tokio::spawn(async move {
            if !external.serves(&spec.capability) {
                // The agent left between the advert and now: let another peer run it.
                let _ = executed.send(Executed { task, outcome: None }).await;
                return;
            }
            let files = tokio::task::spawn_blocking(move || execute::load_files(&store, &spec).map(|files| (spec, files))).await;
            let outcome = match files {
                Ok(Ok((spec, files))) => {
                    let answer = external.submit(JobView { task, capability: spec.capability, files });
                    answer.await.ok()
                }
                Ok(Err(reason)) => Some(TaskOutcome::Failed { reason }),
                Err(e) => Some(TaskOutcome::Failed { reason: format!("cannot load the task's files: {e}") }),
            };
            let _ = executed.send(Executed { task, outcome }).await;
        });
    }

    /// An execution ended: send the outcome to the requester.
    pub fn on_executed(&mut self, swarm: &mut Swarm<Behaviour>, done: Executed) {
        let Some(outcome) = done.outcome else {
            // The external agent died: stop claiming, so the next candidate takes over.
            tracing::info!(task = %done.task, "the external agent holding the task is gone; giving it up");
            self.last_claim.remove(&done.task);
            self.scheduler.abandon(&done.task);
            return;
        };
        self.executed_count += 1;
        self.finish(swarm, done.task, outcome);
    }

    fn finish(&mut self, swarm: &mut Swarm<Behaviour>, task: TaskId, outcome: TaskOutcome) {
        self.last_claim.remove(&task);
        let Some(requester) = self.scheduler.spec(&task).map(|s| s.requester.clone()) else {
            return; // already done elsewhere
        };
        self.scheduler.finished(&task);
        if let TaskOutcome::Failed { reason } = &outcome {
            tracing::info!(%task, "task failed here: {reason}");
        }
        self.record(&task, result_event(self.me, &outcome));
        match requester.parse::<PeerId>() {
            Ok(peer) if peer == self.me => self.accept_result(swarm, task, self.me, outcome),
            Ok(peer) => {
                let request = swarm.behaviour_mut().rpc.send_request(&peer, RpcRequest::TaskResult { task, outcome });
                self.deliveries.insert(request, task);
            }
            Err(_) => self.scheduler.abandon(&task),
        }
    }

    /// A result from an executor (or from this node). The first one wins.
    pub fn accept_result(&mut self, swarm: &mut Swarm<Behaviour>, task: TaskId, from: PeerId, outcome: TaskOutcome) {
        let Some(request) = self.requested.get_mut(&task) else {
            tracing::debug!(%task, %from, "result for a task this node did not submit (or forgot)");
            return;
        };
        if request.outcome.is_some() {
            tracing::debug!(%task, %from, "duplicate result ignored");
            return;
        }
        tracing::debug!(%task, executor = %from, "result received");
        let events = [result_event(from, &outcome), HistoryEvent::Done];
        for event in events {
            if let Err(e) = self.store.record(&task, event) {
                tracing::warn!(%task, "history not recorded: {e}");
            }
        }
        let outcome = match outcome {
            TaskOutcome::Completed { result_json } => match serde_json::value::RawValue::from_string(result_json) {
                Ok(raw) => Outcome::Completed(raw),
                Err(e) => Outcome::Failed(format!("the executor sent a result that is not JSON: {e}")),
            },
            TaskOutcome::Failed { reason } => Outcome::Failed(reason),
        };
        request.outcome = Some((from, outcome));
        request.finished_at = Some(Instant::now());
        self.scheduler.done(&task);
        self.publish(swarm, &TaskMessage::Done { task, requester: self.me.to_string() });
        self.results.send_modify(|v| *v += 1);
    }

    /// Answers a `GetBlobs` request: the blobs this node has, as many as fit in a frame.
    pub fn blobs_for(&self, ids: &[BlobId]) -> RpcResponse {
        let mut out = Vec::new();
        let mut size = 0usize;
        for id in ids.iter().take(MAX_BLOBS_PER_REQUEST) {
            match self.store.get_blob(id) {
                Ok(Some(bytes)) => {
                    if size + bytes.len() + 64 > MAX_RPC_BYTES - BLOBS_FRAME_SLACK {
                        break;
                    }
                    size += bytes.len() + 64;
                    out.push(BlobData { id: *id, bytes });
                }
                Ok(None) => {}
                Err(e) => return RpcResponse::Error(e.to_string()),
            }
        }
        RpcResponse::Blobs(out)
    }

    /// Blobs arrived for a fetch: verify, store, then run or ask for the rest.
    pub fn on_blobs(&mut self, swarm: &mut Swarm<Behaviour>, request: OutboundRequestId, from: PeerId, blobs: Vec<BlobData>) {
        let Some(task) = self.fetches.remove(&request) else { return };
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
        self.fetch_or_run(swarm, task, spec, stored > 0);
    }

    /// A request of ours failed (peer gone, timeout, refused).
    pub fn on_request_failed(&mut self, request: OutboundRequestId, reason: &str) {
        if let Some(task) = self.fetches.remove(&request) {
            // Stop renewing the claim: the next candidate takes over when it lapses.
            tracing::info!(%task, "cannot fetch blobs ({reason}); giving the task up");
            self.last_claim.remove(&task);
            self.scheduler.abandon(&task);
        }
        if let Some(task) = self.deliveries.remove(&request) {
            tracing::info!(%task, "result not delivered: {reason}");
        }
    }

    /// A response to one of our requests arrived (deliveries need no further work).
    pub fn on_response(&mut self, swarm: &mut Swarm<Behaviour>, request: OutboundRequestId, from: PeerId, response: RpcResponse) {
        if self.deliveries.remove(&request).is_some() {
            return;
        }
        match response {
            RpcResponse::Blobs(blobs) => self.on_blobs(swarm, request, from, blobs),
            RpcResponse::Error(reason) => self.on_request_failed(request, &reason),
            _ => {
                self.fetches.remove(&request);
            }
        }
    }

    /// How the tasks this node submitted stand.
    pub fn reports(&self, ids: &[TaskId]) -> Vec<TaskReport> {
        ids.iter()
            .map(|id| {
                let mut report = TaskReport {
                    task_id: id.to_string(),
                    capability: String::new(),
                    state: "unknown".into(),
                    executor: None,
                    result: None,
                    reason: Some("this node did not submit that task, or forgot it".into()),
                };
                if let Some(request) = self.requested.get(id) {
                    report.capability = request.spec.capability.clone();
                    report.reason = None;
                    match &request.outcome {
                        Some((executor, Outcome::Completed(result))) => {
                            report.executor = Some(executor.to_string());
                            report.state = "completed".into();
                            report.result = Some(result.clone());
                        }
                        Some((executor, Outcome::Failed(reason))) => {
                            report.state = "failed".into();
                            report.executor = Some(executor.to_string());
                            report.reason = Some(reason.clone());
                        }
                        None => {
                            report.state = if request.claim.is_some() { "running" } else { "pending" }.into();
                            report.executor = request.claim.map(|(p, _)| p.to_string());
                        }
                    }
                }
                report
            })
            .collect()
    }
}
