//! Who executes a task, decided the same way on every candidate, without a coordinator.
//!
//! A candidate tracks each task it could run, with the rendezvous order of the candidates
//! seen at submission. The first live candidate in that order is expected to execute:
//! it claims the task and renews its claim every third of the lease. The others wait; they
//! pass over the expected executor when
//! - it leaves the membership view (killed, disconnected, expired), or
//! - its claim is not renewed within the lease, or
//! - it has not claimed within one lease of its turn starting (it may not host the agent
//!   any more, or be stuck),
//!
//! and then the next candidate's turn starts. A claim from any peer holds the others off
//! while it is fresh, so two nodes that disagree about the order still do not both run a
//! task that someone is running. Duplicates that still happen (a partition, a claim lost
//! in gossip) are harmless: the requester keeps the first result.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pyagent_protocol::task::{TaskId, TaskSpec};

/// Tasks nobody touched for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Executing,
    /// This node executed it; waiting for the requester's `Done`.
    Finished,
}

#[derive(Debug)]
struct Tracked {
    spec: TaskSpec,
    requester: PeerId,
    lease: Duration,
    order: Vec<PeerId>,
    claim: Option<(PeerId, Instant)>,
    passed: HashSet<PeerId>,
    turn_since: Instant,
    state: State,
    touched: Instant,
}

/// The executor-side view of the tasks this node is a candidate for.
#[derive(Debug)]
pub struct Scheduler {
    me: PeerId,
    tasks: HashMap<TaskId, Tracked>,
}

impl Scheduler {
    pub fn new(me: PeerId) -> Self {
        Self { me, tasks: HashMap::new() }
    }

    /// Starts tracking a task, given the rendezvous order of its candidates. Tasks this
    /// node is not a candidate for, and tasks already known, are ignored.
    pub fn track(&mut self, id: TaskId, spec: TaskSpec, requester: PeerId, order: Vec<PeerId>, now: Instant) -> bool {
        if !order.contains(&self.me) || self.tasks.contains_key(&id) {
            return false;
        }
        let lease = Duration::from_millis(u64::from(spec.lease_ms));
        self.tasks.insert(
            id,
            Tracked {
                spec,
                requester,
                lease,
                order,
                claim: None,
                passed: HashSet::new(),
                turn_since: now,
                state: State::Waiting,
                touched: now,
            },
        );
        true
    }

    /// A claim (or claim renewal) by `executor`.
    pub fn claimed(&mut self, id: &TaskId, executor: PeerId, now: Instant) {
        if let Some(task) = self.tasks.get_mut(id) {
            task.touched = now;
            if executor != self.me {
                task.claim = Some((executor, now));
            }
        }
    }

    /// The requester has its result: forget the task.
    pub fn done(&mut self, id: &TaskId) {
        self.tasks.remove(id);
    }

    /// This node's execution ended (its outcome went to the requester).
    pub fn finished(&mut self, id: &TaskId) {
        if let Some(task) = self.tasks.get_mut(id) {
            task.state = State::Finished;
        }
    }

    /// This node gives up executing (e.g. the requester is unreachable): forget the task.
    pub fn abandon(&mut self, id: &TaskId) {
        self.tasks.remove(id);
    }

    pub fn spec(&self, id: &TaskId) -> Option<&TaskSpec> {
        self.tasks.get(id).map(|t| &t.spec)
    }

    pub fn lease(&self, id: &TaskId) -> Option<Duration> {
        self.tasks.get(id).map(|t| t.lease)
    }

    /// The blobs of every tracked task.
    pub fn blobs(&self) -> impl Iterator<Item = pyagent_protocol::task::BlobId> + '_ {
        self.tasks.values().flat_map(|t| t.spec.files.iter().map(|f| f.blob))
    }

    /// Tasks this node is executing now.
    pub fn executing(&self) -> impl Iterator<Item = &TaskId> {
        self.tasks.iter().filter(|(_, t)| t.state == State::Executing).map(|(id, _)| id)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Applies the rules above; returns the tasks this node must start executing now (they
    /// are marked executing). `alive` says whether a peer is a live member.
    pub fn poll(&mut self, now: Instant, alive: impl Fn(&PeerId) -> bool) -> Vec<TaskId> {
        let me = self.me;
        let is_alive = |p: &PeerId| *p == me || alive(p);
        self.tasks.retain(|_, t| {
            now.duration_since(t.touched) < FORGET_AFTER && (t.state == State::Executing || is_alive(&t.requester))
        });
        let mut start = Vec::new();
        for (id, task) in &mut self.tasks {
            if task.state != State::Waiting {
                continue;
            }
            loop {
                if let Some((holder, at)) = task.claim {
                    if is_alive(&holder) && now.duration_since(at) < task.lease {
                        break;
                    }
                    task.passed.insert(holder);
                    task.claim = None;
                    task.turn_since = now;
                }
                let expected = task.order.iter().find(|p| !task.passed.contains(p) && is_alive(p)).copied();
                match expected {
                    Some(p) if p == me => {
                        task.state = State::Executing;
                        task.touched = now;
                        start.push(*id);
                        break;
                    }
                    Some(p) if now.duration_since(task.turn_since) >= task.lease => {
                        task.passed.insert(p);
                        task.turn_since = now;
                    }
                    _ => break,
                }
            }
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::task::{BlobId, FileRef};

    fn spec(lease_ms: u32) -> TaskSpec {
        TaskSpec {
            capability: "python.tokens".into(),
            files: vec![FileRef { path: "a.py".into(), blob: BlobId::of(b""), size: 0 }],
            requester: "r".into(),
            created_unix_ms: 0,
            nonce: 0,
            lease_ms,
        }
    }

    struct World {
        requester: PeerId,
        order: Vec<PeerId>,
        id: TaskId,
        t0: Instant,
    }

    fn world() -> World {
        World { requester: PeerId::random(), order: (0..3).map(|_| PeerId::random()).collect(), id: TaskId([3; 32]), t0: Instant::now() }
    }

    fn scheduler_for(w: &World, me: usize) -> Scheduler {
        let mut s = Scheduler::new(w.order[me]);
        assert!(s.track(w.id, spec(1000), w.requester, w.order.clone(), w.t0));
        s
    }

    #[test]
    fn the_first_candidate_executes_and_the_others_wait() {
        let w = world();
        let all_alive = |_: &PeerId| true;
        let mut first = scheduler_for(&w, 0);
        let mut second = scheduler_for(&w, 1);
        assert_eq!(first.poll(w.t0, all_alive), vec![w.id]);
        assert!(second.poll(w.t0, all_alive).is_empty());
        second.claimed(&w.id, w.order[0], w.t0);
        // Renewed claims keep it waiting well past one lease.
        for ms in [400, 800, 1200, 1600] {
            let t = w.t0 + Duration::from_millis(ms);
            second.claimed(&w.id, w.order[0], t);
            assert!(second.poll(t, all_alive).is_empty());
        }
        // Polling again does not start it twice.
        assert!(first.poll(w.t0 + Duration::from_millis(10), all_alive).is_empty());
    }

    #[test]
    fn a_dead_executor_is_passed_over_at_once() {
        let w = world();
        let mut second = scheduler_for(&w, 1);
        second.claimed(&w.id, w.order[0], w.t0);
        let dead = w.order[0];
        let t = w.t0 + Duration::from_millis(50);
        assert_eq!(second.poll(t, |p| *p != dead), vec![w.id]);
    }

    #[test]
    fn an_expired_lease_passes_the_turn_on() {
        let w = world();
        let mut second = scheduler_for(&w, 1);
        second.claimed(&w.id, w.order[0], w.t0);
        assert!(second.poll(w.t0 + Duration::from_millis(999), |_| true).is_empty());
        assert_eq!(second.poll(w.t0 + Duration::from_millis(1000), |_| true), vec![w.id]);
    }

    #[test]
    fn a_candidate_that_never_claims_loses_its_turn() {
        let w = world();
        let mut third = scheduler_for(&w, 2);
        assert!(third.poll(w.t0, |_| true).is_empty());
        // First's turn ends after one lease, second's after another.
        assert!(third.poll(w.t0 + Duration::from_millis(1000), |_| true).is_empty());
        assert_eq!(third.poll(w.t0 + Duration::from_millis(2000), |_| true), vec![w.id]);
    }

    #[test]
    fn tasks_of_a_dead_requester_and_non_candidates_are_dropped() {
        let w = world();
        let mut second = scheduler_for(&w, 1);
        let requester = w.requester;
        assert!(second.poll(w.t0, |p| *p != requester && *p != w.order[0]).is_empty());
        assert!(second.is_empty());
        let mut outsider = Scheduler::new(PeerId::random());
        assert!(!outsider.track(w.id, spec(1000), w.requester, w.order.clone(), w.t0));
    }

    #[test]
    fn done_and_finished_stop_execution() {
        let w = world();
        let mut first = scheduler_for(&w, 0);
        assert_eq!(first.poll(w.t0, |_| true), vec![w.id]);
        assert_eq!(first.executing().count(), 1);
        first.finished(&w.id);
        assert_eq!(first.executing().count(), 0);
        assert!(first.poll(w.t0 + Duration::from_secs(5), |_| true).is_empty());
        first.done(&w.id);
        assert!(first.is_empty());
    }
}
