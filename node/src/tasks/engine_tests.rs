use super::*;
use crate::tasks::SubmitError;
use pyagent_protocol::task::FileRef;
use pyagent_protocol::{Advert, Capacity, VersionRange};

const CAP: &str = "python.tokens";

struct Fixture {
    engine: TaskEngine,
    view: MembershipView,
    _dir: tempfile::TempDir,
}

fn fixture(me: PeerId, serves: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let builtin = if serves { vec![CAP.to_owned()] } else { vec![] };
    let engine = TaskEngine::new(me, store, builtin, Arc::new(ExternalAgents::default()), Instant::now());
    Fixture { engine, view: MembershipView::new(Duration::from_secs(60), VersionRange::SUPPORTED), _dir: dir }
}

fn member(view: &mut MembershipView, peer: PeerId, capabilities: &[&str], now: Instant) {
    let advert = Advert {
        protocol_versions: VersionRange::SUPPORTED,
        peer_id: peer.to_string(),
        node_version: "pyagent/test".into(),
        listen_addrs: vec![],
        agents: vec![],
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        capacity: Capacity::default(),
        uptime_secs: 0,
        boot_id: 1,
        seq: 1,
    };
    view.observe(peer, advert, true, now);
}

fn spec(requester: PeerId, text: &[u8], capability: &str) -> TaskSpec {
    TaskSpec {
        capability: capability.into(),
        files: vec![FileRef { path: "a.py".into(), blob: BlobId::of(text), size: text.len() as u64 }],
        requester: requester.to_string(),
        created_unix_ms: 1,
        nonce: 7,
        lease_ms: 3000,
    }
}

fn published(fx: &Effects) -> Vec<&'static str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::PublishTask(TaskMessage::Submit(_)) => Some("submit"),
            Effect::PublishTask(TaskMessage::Claim { .. }) => Some("claim"),
            Effect::PublishTask(TaskMessage::Done { .. }) => Some("done"),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_nobody_serves_fails_at_once_with_the_reason() {
    let me = PeerId::random();
    let mut f = fixture(me, false);
    f.engine.store.put_blob(&BlobId::of(b"x = 1\n"), b"x = 1\n").unwrap();
    let mut fx = Effects::new();
    let (id, candidates) = f.engine.submit(&f.view, spec(me, b"x = 1\n", CAP), Instant::now(), &mut fx).unwrap();
    assert_eq!(candidates, 0);
    assert!(published(&fx).is_empty(), "{fx:?}");
    let report = &f.engine.reports(&[id])[0];
    assert_eq!(report.state, "failed");
    assert!(report.reason.as_deref().unwrap().contains("no peer in the swarm offers python.tokens"), "{report:?}");
    assert_eq!(f.engine.finished_count(), 1);
}

#[test]
fn a_submission_without_its_blob_or_from_someone_else_is_refused() {
    let me = PeerId::random();
    let mut f = fixture(me, true);
    let mut fx = Effects::new();
    let err = f.engine.submit(&f.view, spec(me, b"y", CAP), Instant::now(), &mut fx).unwrap_err();
    assert!(matches!(err, SubmitError::MissingBlob { .. }) && err.is_bad_input(), "{err}");
    let err = f.engine.submit(&f.view, spec(PeerId::random(), b"y", CAP), Instant::now(), &mut fx).unwrap_err();
    assert!(matches!(err, SubmitError::Invalid(_)), "{err}");
    assert!(fx.is_empty());
}

#[test]
fn a_task_served_here_is_claimed_executed_and_finished_locally() {
    let me = PeerId::random();
    let mut f = fixture(me, true);
    let text = b"def f():\n    return 1\n";
    f.engine.store.put_blob(&BlobId::of(text), text).unwrap();
    let t0 = Instant::now();
    let mut fx = Effects::new();
    let (id, candidates) = f.engine.submit(&f.view, spec(me, text, CAP), t0, &mut fx).unwrap();
    assert_eq!(candidates, 1);
    assert_eq!(published(&fx), vec!["submit", "claim"]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Execute { task, .. } if *task == id)), "{fx:?}");
    assert_eq!(f.engine.reports(&[id])[0].state, "running");
    assert_eq!(f.engine.counters().running, 1);

    fx.clear();
    let outcome = TaskOutcome::Completed { result_json: "{\"tokens\": 5}".into() };
    f.engine.on_executed(Executed { task: id, outcome: Some(outcome) }, t0 + Duration::from_millis(10), &mut fx);
    assert_eq!(published(&fx), vec!["done"]);
    let report = &f.engine.reports(&[id])[0];
    assert_eq!((report.state.as_str(), report.executor.clone()), ("completed", Some(me.to_string())));
    assert_eq!(report.result.as_ref().unwrap().get(), "{\"tokens\": 5}");
    assert_eq!(f.engine.counters().executed, 1);
    assert_eq!(f.engine.finished_count(), 1);
    // A second (late) result does not replace the first.
    fx.clear();
    f.engine.accept_result(id, PeerId::random(), TaskOutcome::Failed { reason: "late".into() }, t0, &mut fx);
    assert!(fx.is_empty());
    assert_eq!(f.engine.reports(&[id])[0].state, "completed");
}

#[test]
fn an_executor_fetches_missing_blobs_verifies_them_and_delivers_to_the_requester() {
    let (me, requester) = (PeerId::random(), PeerId::random());
    let mut f = fixture(me, true);
    let text = b"import os\n";
    let task_spec = spec(requester, text, CAP);
    let id = task_spec.id().unwrap();
    let t0 = Instant::now();
    member(&mut f.view, requester, &[], t0);
    let mut fx = Effects::new();
    f.engine.on_message(&f.view, requester, TaskMessage::Submit(task_spec), t0, &mut fx);
    assert_eq!(published(&fx), vec!["claim"], "the only candidate claims at once");
    let fetch = fx.iter().find_map(|e| if let Effect::FetchBlobs { peer, task, ids } = e { Some((*peer, *task, ids.clone())) } else { None });
    assert_eq!(fetch, Some((requester, id, vec![BlobId::of(text)])));

    // A forged blob is rejected and brings nothing new: the task fails, and says so.
    fx.clear();
    let forged = BlobsResponse::Blobs(vec![BlobData { id: BlobId::of(text), bytes: b"forged".to_vec() }]);
    let mut other = fixture(me, true);
    member(&mut other.view, requester, &[], t0);
    other.engine.on_message(&other.view, requester, TaskMessage::Submit(spec(requester, text, CAP)), t0, &mut Effects::new());
    other.engine.on_blobs(id, requester, forged, t0, &mut fx);
    let delivered = fx.iter().find_map(|e| if let Effect::DeliverResult { outcome, .. } = e { Some(outcome.clone()) } else { None });
    assert!(matches!(delivered, Some(TaskOutcome::Failed { ref reason }) if reason.contains("did not provide blob")), "{fx:?}");

    // The real blob: stored, then executed; the outcome goes to the requester.
    fx.clear();
    f.engine.on_blobs(id, requester, BlobsResponse::Blobs(vec![BlobData { id: BlobId::of(text), bytes: text.to_vec() }]), t0, &mut fx);
    assert!(matches!(&fx[..], [Effect::Execute { task, .. }] if *task == id), "{fx:?}");
    assert!(f.engine.store.has_blob(&BlobId::of(text)).unwrap());
    fx.clear();
    let outcome = TaskOutcome::Completed { result_json: "{}".into() };
    f.engine.on_executed(Executed { task: id, outcome: Some(outcome.clone()) }, t0, &mut fx);
    assert!(fx.contains(&Effect::DeliverResult { peer: requester, task: id, outcome }), "{fx:?}");
}

#[test]
fn claims_are_renewed_every_third_of_the_lease_until_a_failed_fetch_gives_the_task_up() {
    let (me, requester) = (PeerId::random(), PeerId::random());
    let mut f = fixture(me, true);
    let task_spec = spec(requester, b"z", CAP);
    let id = task_spec.id().unwrap();
    let t0 = Instant::now();
    member(&mut f.view, requester, &[], t0);
    let mut fx = Effects::new();
    f.engine.on_message(&f.view, requester, TaskMessage::Submit(task_spec), t0, &mut fx);
    fx.clear();
    f.engine.tick(&f.view, t0 + Duration::from_millis(500), &mut fx);
    assert!(published(&fx).is_empty(), "renewed at lease/3, not before");
    f.engine.tick(&f.view, t0 + Duration::from_millis(1000), &mut fx);
    assert_eq!(published(&fx), vec!["claim"]);
    fx.clear();
    f.engine.on_fetch_failed(id, "peer gone");
    f.engine.tick(&f.view, t0 + Duration::from_millis(5000), &mut fx);
    assert!(published(&fx).is_empty(), "{fx:?}");
}

#[test]
fn unclaimed_submissions_are_published_again_after_a_lease() {
    let (me, executor) = (PeerId::random(), PeerId::random());
    let mut f = fixture(me, false);
    let t0 = Instant::now();
    member(&mut f.view, executor, &[CAP], t0);
    f.engine.store.put_blob(&BlobId::of(b"w"), b"w").unwrap();
    let mut fx = Effects::new();
    let (id, candidates) = f.engine.submit(&f.view, spec(me, b"w", CAP), t0, &mut fx).unwrap();
    assert_eq!((candidates, published(&fx)), (1, vec!["submit"]));
    fx.clear();
    f.engine.tick(&f.view, t0 + Duration::from_millis(2000), &mut fx);
    assert!(published(&fx).is_empty());
    f.engine.tick(&f.view, t0 + Duration::from_millis(3000), &mut fx);
    assert_eq!(published(&fx), vec!["submit"], "nobody claimed within the lease");
    // A fresh claim holds republication off, and shows in the report.
    fx.clear();
    let claim = TaskMessage::Claim { task: id, executor: executor.to_string() };
    f.engine.on_message(&f.view, executor, claim, t0 + Duration::from_millis(3100), &mut fx);
    f.engine.tick(&f.view, t0 + Duration::from_millis(6000), &mut fx);
    assert!(published(&fx).is_empty(), "{fx:?}");
    assert_eq!(f.engine.reports(&[id])[0].executor, Some(executor.to_string()));
}
