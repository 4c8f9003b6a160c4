//! The requester side of [`TaskEngine`]: submitting, republishing while nobody holds a
//! fresh claim, taking the first result, and reporting how submitted tasks stand.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::api::TaskReport;
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::task::{BlobId, TaskError, TaskId, TaskMessage, TaskOutcome, TaskSpec};

use super::engine::TaskEngine;
use crate::effects::{Effect, Effects};
use crate::membership::MembershipView;
use crate::placement;
use crate::store::StoreError;

/// Finished requests (with their results) are kept this long for `task.wait`.
const KEEP_FINISHED: Duration = Duration::from_secs(120);

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

impl SubmitError {
    /// Whether the caller's input is at fault (else this node is).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Store(_))
    }
}

/// A task's final state, as the requester keeps it.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Checked to be JSON when it arrived.
    Completed(Box<serde_json::value::RawValue>),
    Failed(String),
}

#[derive(Debug)]
pub(super) struct Requested {
    pub(super) spec: TaskSpec,
    last_publish: Instant,
    /// The latest claim seen.
    pub(super) claim: Option<(PeerId, Instant)>,
    outcome: Option<(PeerId, Outcome)>,
    finished_at: Option<Instant>,
}

impl TaskEngine {
    /// Submits a task whose blobs are in the local store. Returns its id and how many
    /// candidates offer the capability (none: the task fails at once, with the reason).
    pub fn submit(&mut self, view: &MembershipView, spec: TaskSpec, now: Instant, fx: &mut Effects) -> Result<(TaskId, usize), SubmitError> {
        spec.validate(Some(&self.me.to_string()))?;
        for file in &spec.files {
            if !self.store.has_blob(&file.blob)? {
                return Err(SubmitError::MissingBlob { path: file.path.clone(), blob: file.blob });
            }
        }
        let id = spec.id().map_err(TaskError::from)?;
        self.submitted_count += 1;
        let candidates = self.candidates(view, &spec.capability);
        let submitted = HistoryEvent::Submitted { capability: spec.capability.clone(), files: spec.files.len(), requester: self.me.to_string() };
        fx.push(Effect::Record { subject: id, event: submitted });
        let mut request = Requested { spec: spec.clone(), last_publish: now, claim: None, outcome: None, finished_at: None };
        if candidates.is_empty() {
            let reason = format!("no peer in the swarm offers {}", spec.capability);
            let event = HistoryEvent::Result { executor: self.me.to_string(), completed: false, detail: reason.clone() };
            fx.push(Effect::Record { subject: id, event });
            request.outcome = Some((self.me, Outcome::Failed(reason)));
            request.finished_at = Some(now);
            self.requested.insert(id, request);
            self.finished_count += 1;
            return Ok((id, 0));
        }
        tracing::debug!(task = %id, capability = %spec.capability, files = spec.files.len(), candidates = candidates.len(), "task submitted");
        fx.push(Effect::PublishTask(TaskMessage::Submit(spec.clone())));
        let count = candidates.len();
        self.scheduler.track(id, spec, self.me, placement::order(&id.0, candidates), now);
        self.requested.insert(id, request);
        self.poll(view, now, fx);
        Ok((id, count))
    }

    /// A result from an executor (or from this node). The first one wins.
    pub fn accept_result(&mut self, task: TaskId, from: PeerId, outcome: TaskOutcome, now: Instant, fx: &mut Effects) {
        let Some(request) = self.requested.get_mut(&task) else {
            tracing::debug!(%task, %from, "result for a task this node did not submit (or forgot)");
            return;
        };
        if request.outcome.is_some() {
            tracing::debug!(%task, %from, "duplicate result ignored");
            return;
        }
        tracing::debug!(%task, executor = %from, "result received");
        // The executor recorded its result; the requester records that the task is done.
        fx.push(Effect::Record { subject: task, event: HistoryEvent::Done });
        let outcome = match outcome {
            TaskOutcome::Completed { result_json } => match serde_json::value::RawValue::from_string(result_json) {
                Ok(raw) => Outcome::Completed(raw),
                Err(e) => Outcome::Failed(format!("the executor sent a result that is not JSON: {e}")),
            },
            TaskOutcome::Failed { reason } => Outcome::Failed(reason),
        };
        request.outcome = Some((from, outcome));
        request.finished_at = Some(now);
        self.scheduler.done(&task);
        fx.push(Effect::PublishTask(TaskMessage::Done { task, requester: self.me.to_string() }));
        self.finished_count += 1;
    }

    /// Republishes submissions nobody holds a fresh claim on; forgets old finished ones.
    pub(super) fn requester_tick(&mut self, view: &MembershipView, now: Instant, fx: &mut Effects) {
        for request in self.requested.values_mut() {
            let lease = Duration::from_millis(u64::from(request.spec.lease_ms));
            let claimed = request
                .claim
                .is_some_and(|(peer, at)| now.saturating_duration_since(at) < lease && (peer == self.me || view.contains(&peer)));
            if request.outcome.is_none() && !claimed && now.saturating_duration_since(request.last_publish) >= lease {
                request.last_publish = now;
                tracing::debug!(capability = %request.spec.capability, "no fresh claim; submitting again");
                fx.push(Effect::PublishTask(TaskMessage::Submit(request.spec.clone())));
            }
        }
        self.requested.retain(|_, r| r.finished_at.is_none_or(|t| now.saturating_duration_since(t) < KEEP_FINISHED));
    }

    /// How the tasks this node submitted stand.
    pub fn reports(&self, ids: &[TaskId]) -> Vec<TaskReport> {
        ids.iter().map(|id| self.report(id)).collect()
    }

    fn report(&self, id: &TaskId) -> TaskReport {
        let mut report = TaskReport {
            task_id: id.to_string(),
            capability: String::new(),
            state: "unknown".into(),
            executor: None,
            result: None,
            reason: Some("this node did not submit that task, or forgot it".into()),
        };
        let Some(request) = self.requested.get(id) else { return report };
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
        report
    }
}
