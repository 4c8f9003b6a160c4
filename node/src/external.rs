//! External agents: processes in any language that serve task capabilities through the
//! local API (`agent.register`, then `agent.next` / `agent.result` in a loop).
//!
//! The node advertises their capabilities like those of its built-in agents, so the swarm
//! places tasks on it; when it executes one, the job waits here until a live agent that
//! serves the capability takes it. An agent that has not polled for [`AGENT_TTL`] is
//! dead: it is removed (its capabilities leave the advert) and the jobs it held are
//! dropped, which makes the node give the task up; the next candidate takes it over when
//! the lease lapses, as for a dead node.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyagent_agents::SourceFile;
use pyagent_protocol::task::{TaskId, TaskOutcome};
use tokio::sync::{Notify, oneshot};

/// An agent silent (no `agent.next`) for this long is considered dead.
pub const AGENT_TTL: Duration = Duration::from_secs(10);
/// Most external agents on one node.
pub const MAX_EXTERNAL_AGENTS: usize = 256;
/// Most external agents registered through one API connection: one client cannot take
/// every place.
pub const MAX_AGENTS_PER_CLIENT: usize = 8;
/// Agent ids are random below 2^53, so they survive JSON numbers in any language and
/// cannot be guessed from another agent's id.
const AGENT_ID_LIMIT: u64 = 1 << 53;
/// Most capabilities per external agent.
pub const MAX_CAPABILITIES: usize = 16;

/// Why an external-agent call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    #[error("{0}")]
    Invalid(String),
    #[error("no registered agent with id {0} (it may have been dropped after {AGENT_TTL:?} without polling; register again)")]
    UnknownAgent(u64),
    #[error("too many external agents (limit {MAX_EXTERNAL_AGENTS})")]
    Full,
    #[error("this API connection already registered {MAX_AGENTS_PER_CLIENT} agents (the limit per connection)")]
    ClientFull,
}

/// A job handed to an agent.
#[derive(Debug, Clone)]
pub struct JobView {
    pub task: TaskId,
    pub capability: String,
    pub files: Vec<SourceFile>,
}

#[derive(Debug)]
struct Job {
    view: JobView,
    reply: oneshot::Sender<TaskOutcome>,
}

#[derive(Debug)]
struct Agent {
    /// The API connection that registered it (its ZeroMQ routing identity).
    owner: Vec<u8>,
    name: String,
    capabilities: Vec<String>,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    agents: HashMap<u64, Agent>,
    queue: VecDeque<Job>,
    /// Jobs taken by an agent: task → (agent, reply).
    taken: HashMap<TaskId, (u64, oneshot::Sender<TaskOutcome>)>,
}

/// The external agents of one node.
#[derive(Debug, Default)]
pub struct ExternalAgents {
    inner: Mutex<Inner>,
    work: Notify,
}

fn valid_name(kind: &str, s: &str) -> Result<(), ExternalError> {
    let ok = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(ExternalError::Invalid(format!("{kind} {s:?}: 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-'"))) }
}

fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS generator does not fail on Linux once booted; if it ever does, the
        // clock's nanoseconds still give distinct (if guessable) ids.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
        bytes = (blake3::hash(&nanos.to_le_bytes()).as_bytes()[..8]).try_into().unwrap_or([1; 8]);
    }
    u64::from_le_bytes(bytes) % AGENT_ID_LIMIT
}

impl ExternalAgents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (no multi-step updates).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an agent for the API connection `owner`; returns its (random) id.
    pub fn register(&self, owner: &[u8], name: &str, capabilities: &[String]) -> Result<u64, ExternalError> {
        valid_name("agent name", name)?;
        if capabilities.is_empty() || capabilities.len() > MAX_CAPABILITIES {
            return Err(ExternalError::Invalid(format!("an agent serves 1 to {MAX_CAPABILITIES} capabilities")));
        }
        for c in capabilities {
            valid_name("capability", c)?;
        }
        let mut inner = self.lock();
        if inner.agents.len() >= MAX_EXTERNAL_AGENTS {
            return Err(ExternalError::Full);
        }
        if inner.agents.values().filter(|a| a.owner == owner).count() >= MAX_AGENTS_PER_CLIENT {
            return Err(ExternalError::ClientFull);
        }
        let id = loop {
            let id = random_id();
            if id != 0 && !inner.agents.contains_key(&id) {
                break id;
            }
        };
        inner.agents.insert(
            id,
            Agent { owner: owner.to_vec(), name: name.to_owned(), capabilities: capabilities.to_vec(), last_seen: Instant::now() },
        );
        tracing::info!(agent = name, id, ?capabilities, "external agent registered");
        Ok(id)
    }

    /// Capabilities served by live external agents, sorted, once each.
    pub fn capabilities(&self) -> Vec<String> {
        let inner = self.lock();
        let all: std::collections::BTreeSet<&String> = inner.agents.values().flat_map(|a| &a.capabilities).collect();
        all.into_iter().cloned().collect()
    }

    /// Names of the live external agents, sorted.
    pub fn names(&self) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner.agents.values().map(|a| a.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn serves(&self, capability: &str) -> bool {
        self.lock().agents.values().any(|a| a.capabilities.iter().any(|c| c == capability))
    }

    /// Queues a job; the receiver gets the agent's outcome, or an error if no live agent
    /// finishes it (then the node gives the task up).
    pub fn submit(&self, view: JobView) -> oneshot::Receiver<TaskOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.lock().queue.push_back(Job { view, reply });
        self.work.notify_waiters();
        outcome
    }

    /// The next job for agent `id` (long poll up to `timeout`); also its heartbeat.
    pub async fn next(&self, id: u64, timeout: Duration) -> Result<Option<JobView>, ExternalError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            // Registered before looking at the queue, so a job queued in between wakes us.
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                let agent = inner.agents.get_mut(&id).ok_or(ExternalError::UnknownAgent(id))?;
                agent.last_seen = Instant::now();
                let capabilities = agent.capabilities.clone();
                // Drop jobs whose task was given up meanwhile.
                inner.queue.retain(|job| !job.reply.is_closed());
                if let Some(at) = inner.queue.iter().position(|job| capabilities.contains(&job.view.capability))
                    && let Some(job) = inner.queue.remove(at)
                {
                    let view = job.view.clone();
                    inner.taken.insert(view.task, (id, job.reply));
                    return Ok(Some(view));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Still alive: the poll itself is the heartbeat.
                if let Some(agent) = self.lock().agents.get_mut(&id) {
                    agent.last_seen = Instant::now();
                }
                return Ok(None);
            }
        }
    }

    /// Agent `id`'s outcome for a job it took. `false` when the job is not (or no longer)
    /// its own, e.g. the task was given up.
    pub fn result(&self, id: u64, task: &TaskId, outcome: TaskOutcome) -> Result<bool, ExternalError> {
        let mut inner = self.lock();
        let agent = inner.agents.get_mut(&id).ok_or(ExternalError::UnknownAgent(id))?;
        agent.last_seen = Instant::now();
        match inner.taken.remove(task) {
            Some((holder, reply)) if holder == id => Ok(reply.send(outcome).is_ok()),
            Some(other) => {
                inner.taken.insert(*task, other);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Removes agents silent for [`AGENT_TTL`]: their taken jobs are dropped, and queued
    /// jobs nobody can serve any more too. Returns the removed agents' names.
    pub fn reap(&self, now: Instant) -> Vec<String> {
        let mut inner = self.lock();
        let dead: Vec<u64> = inner.agents.iter().filter(|(_, a)| now.duration_since(a.last_seen) >= AGENT_TTL).map(|(id, _)| *id).collect();
        let mut names = Vec::new();
        for id in &dead {
            if let Some(agent) = inner.agents.remove(id) {
                tracing::warn!(agent = %agent.name, id, "external agent stopped polling; dropped");
                names.push(agent.name);
            }
        }
        inner.taken.retain(|_, (holder, _)| !dead.contains(holder));
        // Jobs nobody serves any more (or whose task was given up) are dropped.
        let served: std::collections::BTreeSet<String> = inner.agents.values().flat_map(|a| a.capabilities.clone()).collect();
        inner.queue.retain(|job| served.contains(&job.view.capability) && !job.reply.is_closed());
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8, capability: &str) -> JobView {
        JobView { task: TaskId([n; 32]), capability: capability.into(), files: vec![] }
    }

    #[tokio::test]
    async fn jobs_go_to_agents_serving_their_capability() {
        let ext = ExternalAgents::default();
        assert!(ext.register(b"c", "bad name", &["x".into()]).is_err());
        assert!(ext.register(b"c", "a", &[]).is_err());
        let docs = ext.register(b"c", "docs", &["python.docstrings".into()]).unwrap();
        let other = ext.register(b"c", "other", &["python.other".into()]).unwrap();
        assert_eq!(ext.capabilities(), vec!["python.docstrings".to_string(), "python.other".to_string()]);
        let outcome = ext.submit(job(1, "python.docstrings"));
        assert!(ext.next(other, Duration::from_millis(10)).await.unwrap().is_none());
        let taken = ext.next(docs, Duration::from_millis(10)).await.unwrap().unwrap();
        assert_eq!(taken.task, TaskId([1; 32]));
        // Only the holder may answer.
        assert!(!ext.result(other, &taken.task, TaskOutcome::Failed { reason: "x".into() }).unwrap());
        assert!(ext.result(docs, &taken.task, TaskOutcome::Completed { result_json: "{}".into() }).unwrap());
        assert_eq!(outcome.await.unwrap(), TaskOutcome::Completed { result_json: "{}".into() });
        assert!(matches!(ext.next(99, Duration::from_millis(1)).await, Err(ExternalError::UnknownAgent(99))));
    }

    #[test]
    fn ids_are_random_and_one_connection_cannot_take_every_place() {
        let ext = ExternalAgents::default();
        let caps = ["python.x".to_string()];
        let ids: Vec<u64> = (0..MAX_AGENTS_PER_CLIENT).map(|_| ext.register(b"hog", "a", &caps).unwrap()).collect();
        assert!(ids.iter().all(|&id| id > 0 && id < AGENT_ID_LIMIT));
        let consecutive = ids.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(consecutive < 2, "ids must not be sequential: {ids:?}");
        assert_eq!(ext.register(b"hog", "a", &caps), Err(ExternalError::ClientFull));
        assert!(ext.register(b"legit", "b", &caps).is_ok(), "another connection still registers");
    }

    #[tokio::test]
    async fn a_waiting_agent_wakes_up_for_new_work() {
        let ext = std::sync::Arc::new(ExternalAgents::default());
        let id = ext.register(b"c", "docs", &["python.docstrings".into()]).unwrap();
        let waiter = {
            let ext = ext.clone();
            tokio::spawn(async move { ext.next(id, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _outcome = ext.submit(job(2, "python.docstrings"));
        let got = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(got.unwrap().task, TaskId([2; 32]));
    }

    #[tokio::test]
    async fn silent_agents_are_reaped_and_their_jobs_given_up() {
        let ext = ExternalAgents::default();
        let id = ext.register(b"c", "docs", &["python.docstrings".into()]).unwrap();
        let taken_outcome = ext.submit(job(3, "python.docstrings"));
        ext.next(id, Duration::from_millis(1)).await.unwrap().unwrap();
        let queued_outcome = ext.submit(job(4, "python.docstrings"));
        assert!(ext.reap(Instant::now()).is_empty());
        assert_eq!(ext.reap(Instant::now() + AGENT_TTL), vec!["docs".to_string()]);
        assert!(ext.capabilities().is_empty());
        assert!(taken_outcome.await.is_err(), "a dead agent's job must be given up");
        assert!(queued_outcome.await.is_err(), "nobody serves the queued job any more");
    }
}
