//! The history DHT across in-process nodes: 10,000 entries written through five nodes are
//! readable from every node and every shard's owners converge to equal digests; a node
//! that joins late (or restarts) replays a finished vote to the same tally; forged,
//! corrupted, wrong-shard and oversized entries and sync messages from a hostile peer are
//! refused with a reason while the node keeps serving.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Swarm, identity::Keypair, request_response};
use pyagent_node::Node;
use pyagent_node::api::client as api_client;
use pyagent_node::p2p::behaviour::{Behaviour, BehaviourEvent};
use pyagent_node::p2p::transport;
use pyagent_protocol::history::{
    Fingerprint, HistoryEvent, HistoryRequest, HistoryResponse, KeyRange, MAX_DETAIL_LEN, MAX_RANGES, RangeClaim, RangeItem, ShardId,
    shard_of,
};
use pyagent_protocol::task::TaskId;
use pyagent_protocol::{SwarmNamespace, VersionRange};
use serde_json::{Value, json};
use support::{Opts, start_in, view, wait_until};

const JOIN: Duration = Duration::from_secs(20);

async fn call(node: &Node, method: &str, params: Value) -> Value {
    let request = json!({ "id": 1, "method": method, "params": params }).to_string().into_bytes();
    let reply = api_client::call_raw(node.api_endpoint(), request, Duration::from_secs(15)).await.unwrap();
    serde_json::from_slice(&reply).unwrap()
}

fn subject(i: u32) -> TaskId {
    TaskId(*blake3::hash(format!("request {i}").as_bytes()).as_bytes())
}

/// Every node sees every other, and its history owners are computed for all of them.
async fn wait_members(nodes: &[Node]) {
    for n in nodes {
        wait_until("full view", JOIN, || async { view(n).await.len() == nodes.len() - 1 }).await;
        wait_until("history owners for the full view", JOIN, || async {
            n.client().history().shards().await.unwrap().members.len() == nodes.len()
        })
        .await;
    }
}

/// Each shard's digest on each of its owners.
async fn digests_by_owner(nodes: &[Node]) -> Vec<BTreeMap<String, Fingerprint>> {
    let mut per_shard = vec![BTreeMap::new(); 1024];
    for n in nodes {
        let report = n.client().history().shards().await.unwrap();
        let me = n.peer_id();
        for (shard, owners, fp) in report.shards {
            if owners.contains(&me) {
                per_shard[usize::from(shard.0)].insert(me.to_string(), fp);
            }
        }
    }
    per_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_entries_through_five_nodes_are_readable_from_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_in(&dir.path().join("n0"), &Opts::default()).await;
    let boot = Opts { bootstrap: first.p2p_addrs(), ..Default::default() };
    let mut nodes = vec![first];
    for i in 1..5 {
        nodes.push(start_in(&dir.path().join(format!("n{i}")), &boot).await);
    }
    wait_members(&nodes).await;

    // 20 batches of 500, each through the next node.
    let mut written = BTreeSet::new();
    let mut hinted = 0;
    for batch in 0..20u32 {
        let events: Vec<(TaskId, HistoryEvent)> = (0..500)
            .map(|i| (subject(batch * 500 + i), HistoryEvent::Inference { model: "smollm2".into(), detail: format!("#{}", batch * 500 + i) }))
            .collect();
        let report = nodes[batch as usize % 5].client().history().append(events).await.unwrap();
        // On a loaded machine an owner can miss the 5 s write timeout: those entries are
        // kept as hints by the writing node and delivered after; none is lost.
        assert_eq!((report.acknowledged + report.hinted, report.write_quorum), (500, 2), "batch {batch}");
        let acked = report.entries.iter().filter(|(_, _, copies)| *copies >= 2).count();
        assert_eq!(acked, report.acknowledged);
        hinted += report.hinted;
        written.extend(report.entries.iter().map(|(id, _, _)| *id));
    }
    assert_eq!(written.len(), 10_000);
    if hinted > 0 {
        eprintln!("{hinted} entries were hinted; waiting for their delivery");
    }
    for n in &nodes {
        wait_until("hints delivered", JOIN, || async { n.client().history().shards().await.unwrap().hints_pending == 0 }).await;
    }

    // Every entry, from every node: all 1,024 shards read through the DHT.
    for n in &nodes {
        let mut seen = BTreeSet::new();
        for shard in ShardId::all() {
            let page = n.client().history().read_shard(shard, None, 10_000).await.unwrap();
            assert!(!page.more && page.rejected == 0);
            for (id, e) in &page.entries {
                assert_eq!(shard_of(&e.body.subject), shard);
                seen.insert(*id);
            }
        }
        assert_eq!(seen, written, "node {}", n.peer_id());
    }
    // And by subject, through the API, from a node that may own none of them.
    for i in (0..10_000).step_by(997) {
        let reply = call(&nodes[(i as usize) % 5], "history", json!({ "id": subject(i).to_string() })).await;
        let entries = reply["result"]["entries"].as_array().unwrap_or_else(|| panic!("{reply}"));
        assert_eq!(entries.len(), 1, "{reply}");
        assert_eq!(entries[0]["event"]["inference"]["detail"], format!("#{i}"));
        assert_eq!(entries[0]["kind"], "inference");
    }

    // Each shard is on exactly R = 3 owners, whose digests are equal.
    let mut digests = Vec::new();
    for _ in 0..100 {
        digests = digests_by_owner(&nodes).await;
        if digests.iter().all(|owners| owners.len() == 3 && owners.values().collect::<BTreeSet<_>>().len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (shard, owners) in digests.iter().enumerate() {
        assert_eq!(owners.len(), 3, "shard {shard}");
        assert_eq!(owners.values().collect::<BTreeSet<_>>().len(), 1, "shard {shard} digests differ: {owners:?}");
    }
    let total: u64 = digests.iter().map(|o| o.values().next().map_or(0, |fp| fp.count)).sum();
    assert_eq!(total, 10_000);

    // The CLI's summary and JSON.
    let shards = call(&nodes[0], "shards", json!({})).await["result"].clone();
    assert_eq!(shards["shards"].as_array().unwrap().len(), 1024);
    assert_eq!((shards["members"].as_u64(), shards["replicas"].as_u64(), shards["under_replicated"].as_u64()), (Some(5), Some(3), Some(0)));
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_and_a_restarted_node_replay_a_finished_vote_to_the_same_tally() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_in(&dir.path().join("a"), &Opts::default()).await;
    let boot = Opts { bootstrap: a.p2p_addrs(), ..Default::default() };
    let b = start_in(&dir.path().join("b"), &boot).await;
    let c = start_in(&dir.path().join("c"), &boot).await;
    let mut nodes = vec![a, b, c];
    wait_members(&nodes).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // gossip meshes

    let proposal = call(&nodes[0], "vote.propose", json!({ "title": "lunch", "options": ["ant", "bee", "cat"], "method": "schulze", "deadline_secs": 2 })).await;
    let id = proposal["result"]["proposal_id"].as_str().unwrap_or_else(|| panic!("{proposal}")).to_owned();
    for n in &nodes {
        wait_until("every node knows the proposal", JOIN, || async {
            call(n, "vote.tally", json!({ "proposal_id": id })).await["result"]["options"].is_array()
        })
        .await;
    }
    for (n, r) in nodes.iter().zip([["bee", "ant", "cat"], ["bee", "cat", "ant"], ["ant", "bee", "cat"]]) {
        let ballot = call(n, "vote.ballot", json!({ "proposal_id": id, "ranking": r })).await;
        assert_eq!(ballot["result"]["accepted"], true, "{ballot}");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the deadline
    let tally = |n: &Node| {
        let id = id.clone();
        let endpoint = n.api_endpoint().to_owned();
        async move {
            let request = json!({ "id": 1, "method": "vote.tally", "params": { "proposal_id": id } }).to_string().into_bytes();
            let reply: Value = serde_json::from_slice(&api_client::call_raw(&endpoint, request, Duration::from_secs(15)).await.unwrap()).unwrap();
            reply["result"].clone()
        }
    };
    let done = tally(&nodes[0]).await;
    assert_eq!((done["final"].as_bool(), done["ballots_counted"].as_u64(), done["winner"].as_str()), (Some(true), Some(3), Some("bee")), "{done}");
    let same = |t: &Value| (t["winner"].clone(), t["ranking"].clone(), t["scores"].clone(), t["ballots"].clone());

    // A node that joins after the vote: it never saw the gossip, only the history.
    let late = start_in(&dir.path().join("late"), &boot).await;
    nodes.push(late);
    wait_members(&nodes).await;
    let replayed = tally(&nodes[3]).await;
    assert_eq!(same(&replayed), same(&done), "late joiner: {replayed}");
    assert_eq!(replayed["final"], true);

    // A restarted node (its vote book is empty after the restart).
    let b = nodes.remove(1);
    b.shutdown().await;
    let b = start_in(&dir.path().join("b"), &boot).await;
    nodes.insert(1, b);
    wait_members(&nodes).await;
    assert_eq!(same(&tally(&nodes[1]).await), same(&done), "restarted node");

    // `pyagent history` shows the proposal, the ballots and the tallies.
    let history = call(&nodes[3], "history", json!({ "id": id })).await;
    let kinds: Vec<&str> = history["result"]["entries"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "ballot").count(), 3, "{history}");
    assert!(kinds.contains(&"proposal") && kinds.contains(&"tally"), "{history}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_history_traffic_is_refused_with_a_reason_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path(), &Opts::default()).await;
    let keypair = Keypair::generate_ed25519();
    let namespace = SwarmNamespace::default();
    let mut swarm = Swarm::new(
        transport::build(&keypair, None, false).unwrap(),
        Behaviour::new(&keypair, &namespace, VersionRange::SUPPORTED, 64).unwrap(),
        keypair.public().to_peer_id(),
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(60)),
    );
    swarm.dial(node.p2p_addrs()[0].clone()).unwrap();
    let target = node.peer_id();
    let (ask_tx, mut ask) = tokio::sync::mpsc::channel::<(HistoryRequest, tokio::sync::oneshot::Sender<Result<HistoryResponse, String>>)>(4);
    tokio::spawn(async move {
        let mut waiting = std::collections::HashMap::new();
        let mut connected = false;
        let mut queued = Vec::new();
        loop {
            tokio::select! {
                Some((request, reply)) = ask.recv() => {
                    if connected {
                        let id = swarm.behaviour_mut().history.send_request(&target, request);
                        waiting.insert(id, reply);
                    } else {
                        queued.push((request, reply));
                    }
                }
                event = swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        connected = true;
                        for (request, reply) in queued.drain(..) {
                            let id = swarm.behaviour_mut().history.send_request(&target, request);
                            waiting.insert(id, reply);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::History(request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. })) => {
                        if let Some(reply) = waiting.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::History(request_response::Event::OutboundFailure { request_id, error, .. })) => {
                        if let Some(reply) = waiting.remove(&request_id) {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    _ => {}
                },
            }
        }
    });
    let ask = |request: HistoryRequest| {
        let ask_tx = ask_tx.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ask_tx.send((request, tx)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(15), rx).await.expect("an answer").unwrap()
        }
    };
    let refused = |r: Result<HistoryResponse, String>| match r {
        Ok(HistoryResponse::Error(reason)) => reason,
        other => panic!("not refused: {other:?}"),
    };

    let s = subject(7);
    let (good, good_key) = pyagent_node::history::entry::sign(&keypair, s, HistoryEvent::Inference { model: "m".into(), detail: "ok".into() }, 1).unwrap();
    // Forged: the body changed after signing.
    let mut forged = good.clone();
    forged.body.event = HistoryEvent::Inference { model: "m".into(), detail: "changed".into() };
    assert!(refused(ask(HistoryRequest::Store(vec![forged.clone()])).await).contains("bad signature"));
    // Corrupted: a truncated signature.
    let mut corrupted = good.clone();
    corrupted.signature.truncate(3);
    assert!(refused(ask(HistoryRequest::Store(vec![corrupted])).await).contains("signature"));
    // Oversized detail.
    let (big, _) = pyagent_node::history::entry::sign(&keypair, s, HistoryEvent::Inference { model: "m".into(), detail: "x".repeat(MAX_DETAIL_LEN + 1) }, 1).unwrap();
    assert!(refused(ask(HistoryRequest::Store(vec![big])).await).contains("detail"));
    // Sync messages out of bounds: a shard that does not exist, keys of another shard,
    // too many ranges.
    assert!(refused(ask(HistoryRequest::Digests(vec![(ShardId(4096), Fingerprint::default())])).await).contains("out of range"));
    assert!(refused(ask(HistoryRequest::Fetch { shard: ShardId(1024), salt: 0, wants: vec![] }).await).contains("out of range"));
    assert!(refused(ask(HistoryRequest::ReadShard { shard: ShardId(60_000), after: None, limit: 10 }).await).contains("out of range"));
    let long_bound = KeyRange { lower: Some(vec![0; 65]), upper: None };
    assert!(refused(ask(HistoryRequest::Fetch { shard: ShardId(0), salt: 0, wants: vec![(long_bound, vec![[0; 4]])] }).await).contains("bounds"));
    let ranges = vec![RangeItem { range: KeyRange::FULL, claim: RangeClaim::Fingerprint(Fingerprint::default()) }; MAX_RANGES + 1];
    assert!(refused(ask(HistoryRequest::Reconcile { shard: ShardId(0), salt: 0, pull: true, ranges }).await).contains("ranges"));
    // Nothing of it was stored: the forged entry is not readable.
    let read = node.client().history().read(s).await.unwrap();
    assert!(read.entries.is_empty(), "{:?}", read.entries);

    // The node keeps serving: a valid entry is stored, readable, and reconciled by range.
    assert!(matches!(ask(HistoryRequest::Store(vec![good.clone()])).await, Ok(HistoryResponse::Stored { new: 1 })));
    let read = node.client().history().read(s).await.unwrap();
    assert_eq!(read.entries.len(), 1);
    assert_eq!(read.entries[0].1, good);
    // A puller that lists nothing is sent the entry with the answer; a pusher that lists
    // the entry's tag is told nothing is lacking.
    let pull = ask(HistoryRequest::Reconcile { shard: shard_of(&s), salt: 9, pull: true, ranges: vec![RangeItem { range: KeyRange::FULL, claim: RangeClaim::Tags(vec![]) }] }).await;
    match pull {
        Ok(HistoryResponse::Reconcile { ranges, entries }) => {
            assert!(ranges.is_empty(), "{ranges:?}");
            assert_eq!(entries, vec![good.clone()]);
        }
        other => panic!("{other:?}"),
    }
    let claim = RangeClaim::Tags(vec![good_key.tag(9), [1, 2, 3, 4]]);
    let push = ask(HistoryRequest::Reconcile { shard: shard_of(&s), salt: 9, pull: false, ranges: vec![RangeItem { range: KeyRange::FULL, claim }] }).await;
    match push {
        Ok(HistoryResponse::Reconcile { ranges, entries }) => {
            assert!(entries.is_empty());
            assert!(matches!(&ranges[..], [RangeItem { claim: RangeClaim::Lacks(tags), .. }] if tags == &vec![[1, 2, 3, 4]]), "{ranges:?}");
        }
        other => panic!("{other:?}"),
    }
    let fetched = ask(HistoryRequest::Fetch { shard: shard_of(&s), salt: 9, wants: vec![(KeyRange::FULL, vec![good_key.tag(9)])] }).await;
    assert!(matches!(fetched, Ok(HistoryResponse::Entries { entries, .. }) if entries == vec![good.clone()]));
    assert!(node.client().status().await.is_ok());
    node.shutdown().await;
}
