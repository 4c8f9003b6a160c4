//! The task runner: an actor that executes tasks outside the event loop. Built-in agents
//! run on tokio's blocking pool, at most one per core; tasks for external agents go to
//! [`ExternalAgents`] and wait for their answer. Its inbox is bounded: when it is full the
//! task fails at once with a reason (the requester then hears it), never an unbounded queue.

use std::sync::Arc;

use pyagent_agents::Registry;
use pyagent_protocol::task::{TaskId, TaskOutcome, TaskSpec};
use tokio::sync::{Semaphore, mpsc};

use super::{execute, suggest};
use crate::serving::Models;
use crate::external::{ExternalAgents, JobView};
use crate::store::Store;

/// Tasks waiting for a worker; beyond that, new ones are refused.
pub const RUNNER_INBOX: usize = 1024;

/// An execution that ended (on the blocking pool, or at an external agent). No outcome:
/// the external agent died, and this node gives the task up.
#[derive(Debug)]
pub struct Executed {
    pub task: TaskId,
    pub outcome: Option<TaskOutcome>,
}

#[derive(Debug)]
struct Job {
    task: TaskId,
    spec: TaskSpec,
}

/// Handle to the runner actor.
#[derive(Debug, Clone)]
pub struct TaskRunner {
    inbox: mpsc::Sender<Job>,
}

impl TaskRunner {
    /// Starts the actor; finished executions come back on `executed`. It stops when every
    /// handle is dropped.
    pub fn start(registry: Registry, store: Arc<Store>, external: Arc<ExternalAgents>, models: Models, executed: mpsc::Sender<Executed>) -> Self {
        let (inbox, mut jobs) = mpsc::channel::<Job>(RUNNER_INBOX);
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let permits = Arc::new(Semaphore::new(workers));
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let worker = Worker { registry: registry.clone(), store: store.clone(), external: external.clone(), models: models.clone(), executed: executed.clone() };
                if job.spec.capability == suggest::SUGGEST && !worker.models.is_empty() {
                    // Waits in the model worker's own bounded queue.
                    tokio::spawn(worker.run_suggest(job));
                } else if worker.registry.for_capability(&job.spec.capability).is_some() {
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    tokio::spawn(async move {
                        let _permit = permit;
                        worker.run_builtin(job).await;
                    });
                } else {
                    tokio::spawn(worker.run_external(job));
                }
            }
            tracing::debug!("task runner stopped");
        });
        Self { inbox }
    }

    /// Queues a task. Fails when the inbox is full or the runner stopped; the reason is
    /// the task's failure.
    pub fn execute(&self, task: TaskId, spec: TaskSpec) -> Result<(), String> {
        self.inbox.try_send(Job { task, spec }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => format!("this node has {RUNNER_INBOX} tasks waiting for a worker; try another node"),
            mpsc::error::TrySendError::Closed(_) => "this node is shutting down".to_owned(),
        })
    }
}

struct Worker {
    registry: Registry,
    store: Arc<Store>,
    external: Arc<ExternalAgents>,
    models: Models,
    executed: mpsc::Sender<Executed>,
}

impl Worker {
    async fn run_builtin(self, job: Job) {
        let Self { registry, store, executed, .. } = self;
        let spec = job.spec;
        let outcome = tokio::task::spawn_blocking(move || execute::run(&registry, &store, &spec))
            .await
            .unwrap_or_else(|e| TaskOutcome::Failed { reason: format!("the agent crashed: {e}") });
        let _ = executed.send(Executed { task: job.task, outcome: Some(outcome) }).await;
    }

    /// Runs an `llm.suggest` task on this node's model.
    async fn run_suggest(self, job: Job) {
        let Self { store, models, executed, .. } = self;
        let Job { task, spec } = job;
        let files = tokio::task::spawn_blocking(move || execute::load_files(&store, &spec)).await;
        let outcome = match files {
            Ok(Ok(files)) => suggest::run(&models, files).await,
            Ok(Err(reason)) => TaskOutcome::Failed { reason },
            Err(e) => TaskOutcome::Failed { reason: format!("cannot load the task's files: {e}") },
        };
        let _ = executed.send(Executed { task, outcome: Some(outcome) }).await;
    }

    /// Hands the task to a live external agent and waits for its answer.
    async fn run_external(self, job: Job) {
        let Self { store, external, executed, .. } = self;
        let Job { task, spec } = job;
        if !external.serves(&spec.capability) {
            // The agent left between the advert and now: let another peer run it.
            let _ = executed.send(Executed { task, outcome: None }).await;
            return;
        }
        let files = tokio::task::spawn_blocking(move || execute::load_files(&store, &spec).map(|files| (spec, files))).await;
        let outcome = match files {
            Ok(Ok((spec, files))) => external.submit(JobView { task, capability: spec.capability, files }).await.ok(),
            Ok(Err(reason)) => Some(TaskOutcome::Failed { reason }),
            Err(e) => Some(TaskOutcome::Failed { reason: format!("cannot load the task's files: {e}") }),
        };
        let _ = executed.send(Executed { task, outcome }).await;
    }
}
