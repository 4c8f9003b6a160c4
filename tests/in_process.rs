//! Multi-node scenarios inside one process, over loopback, with mDNS off: nodes find each
//! other through `--bootstrap` addresses only.


use crate::support;

use std::time::Duration;

use pyagent_node::api::client as api_client;
use pyagent_protocol::api::{Event, StatusResult, code};
use support::{Opts, ids, start_in, swarm_key, view, wait_until};
use zeromq::{Socket, SocketRecv, SocketSend};

const JOIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_through_one_bootstrap_and_leave_on_shutdown() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_in(dirs[0].path(), &Opts::default()).await;
    let mut a_events = a.client().subscribe();
    let boot = Opts { bootstrap: a.p2p_addrs(), ..Default::default() };
    let b = start_in(dirs[1].path(), &boot).await;
    let c = start_in(dirs[2].path(), &boot).await;

    // B and C only know A; they learn each other from gossiped adverts.
    for (node, others) in [(&a, ids([&b, &c])), (&b, ids([&a, &c])), (&c, ids([&a, &b]))] {
        wait_until("full view on every node", JOIN, || async { view(node).await == others }).await;
    }
    let status = b.client().status().await.unwrap();
    assert_eq!(status.members, 2);
    // Adverts carry the hosted agents.
    let builtin: Vec<String> = pyagent_agents::builtin().iter().map(ToString::to_string).collect();
    assert!(builtin.contains(&"tokens".to_string()));
    assert_eq!(status.agents, builtin);
    for peer in b.client().peers().await.unwrap() {
        assert_eq!(peer.agents, builtin, "{}", peer.peer_id);
    }
    assert_eq!(status.connected_peers, 2, "B dialed C (peer exchange or advert): full mesh");

    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), a_events.recv()).await {
            Ok(Ok(Event::PeerJoined { peer })) => {
                joined.insert(peer.peer_id);
            }
            Ok(Ok(other)) => panic!("unexpected event {other:?}"),
            other => panic!("no join event: {other:?}"),
        }
    }
    assert_eq!(joined, ids([&b, &c]));

    let c_id = c.peer_id().to_string();
    c.shutdown().await;
    for node in [&a, &b] {
        wait_until("C leaves the views", Duration::from_secs(5), || async { !view(node).await.contains(&c_id) }).await;
    }
    let left = tokio::time::timeout(Duration::from_secs(5), a_events.recv()).await.unwrap().unwrap();
    assert!(matches!(left, Event::PeerLeft { ref peer_id, .. } if *peer_id == c_id), "{left:?}");
    assert_eq!(view(&a).await, ids([&b]));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_swarm_never_admits_nodes_without_its_key() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = swarm_key(keys.path(), "k1");
    let k2 = swarm_key(keys.path(), "k2");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_in(dirs[0].path(), &Opts { swarm_key: Some(k1.clone()), ..Default::default() }).await;
    let boot = a.p2p_addrs();
    let other_key = start_in(dirs[1].path(), &Opts { swarm_key: Some(k2), bootstrap: boot.clone(), ..Default::default() }).await;
    let no_key = start_in(dirs[2].path(), &Opts { bootstrap: boot.clone(), ..Default::default() }).await;
    // Positive control: the same key joins, so the others had every chance to.
    let same_key = start_in(dirs[3].path(), &Opts { swarm_key: Some(k1), bootstrap: boot, ..Default::default() }).await;
    wait_until("same-key node joins", JOIN, || async { view(&a).await == ids([&same_key]) }).await;
    // Give the outsiders a few more bootstrap redials.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let s = a.client().status().await.unwrap();
    assert!(s.private && !s.quic, "a swarm key turns QUIC off: {s:?}");
    assert_eq!(view(&a).await, ids([&same_key]));
    assert_eq!(s.connected_peers, 1, "only the node with the key is connected");
    for outsider in [&other_key, &no_key] {
        let s = outsider.client().status().await.unwrap();
        assert_eq!((s.members, s.connected_peers), (0, 0), "outsider got in: {s:?}");
    }
    for n in [a, other_key, no_key, same_key] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_namespace_is_never_joined() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ns = |s: &str| Opts { swarm: Some(s.into()), ..Default::default() };
    let a = start_in(dirs[0].path(), &ns("team-a")).await;
    let boot = a.p2p_addrs();
    let b = start_in(dirs[1].path(), &Opts { bootstrap: boot.clone(), ..ns("team-b") }).await;
    let c = start_in(dirs[2].path(), &Opts { bootstrap: boot, ..ns("team-a") }).await;
    wait_until("same-namespace node joins", JOIN, || async { view(&a).await == ids([&c]) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(view(&a).await, ids([&c]));
    assert!(view(&b).await.is_empty());
    assert_eq!(b.client().status().await.unwrap().connected_peers, 0, "identify disconnects the other namespace");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_id_and_redials_known_peers() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path(), &Opts::default()).await;
    let b = start_in(db.path(), &Opts { bootstrap: a.p2p_addrs(), ..Default::default() }).await;
    let b_id = b.peer_id();
    wait_until("B joins", JOIN, || async { view(&a).await == ids([&b]) }).await;
    b.shutdown().await;
    wait_until("B leaves", Duration::from_secs(5), || async { view(&a).await.is_empty() }).await;

    // No bootstrap this time: B must find A from its database of known peers.
    let b = start_in(db.path(), &Opts::default()).await;
    assert_eq!(b.peer_id(), b_id, "same data dir, same identity");
    wait_until("B rejoins from known peers", JOIN, || async { view(&a).await == ids([&b]) && view(&b).await == ids([&a]) }).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_node_on_one_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_in(dir.path(), &Opts::default()).await;
    let settings = support::test_config(dir.path(), &Opts::default()).validate().unwrap();
    let err = pyagent_node::Node::start(settings).await.unwrap_err();
    assert!(err.to_string().contains("in use by another pyagent node"), "{err}");
    // The first node is unharmed.
    assert_eq!(a.client().status().await.unwrap().peer_id, a.peer_id().to_string());
    a.shutdown().await;
}

async fn raw(endpoint: &str, request: &[u8]) -> serde_json::Value {
    let reply = api_client::call_raw(endpoint, request.to_vec(), Duration::from_secs(3)).await.unwrap();
    serde_json::from_slice(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_api_requests_get_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_in(dir.path(), &Opts::default()).await;
    let ep = a.api_endpoint().to_owned();
    let cases: Vec<(Vec<u8>, i64)> = vec![
        (b"not json".to_vec(), code::PARSE_ERROR),
        (vec![0xff, 0xfe, 0x00], code::PARSE_ERROR),
        (b"[1, 2]".to_vec(), code::INVALID_REQUEST),
        (br#"{"id": 1}"#.to_vec(), code::INVALID_REQUEST),
        (br#"{"id": 2, "method": "reboot"}"#.to_vec(), code::METHOD_NOT_FOUND),
        (br#"{"id": 3, "method": "status", "params": {"verbose": true}}"#.to_vec(), code::INVALID_PARAMS),
        (br#"{"id": 4, "method": "peers", "params": 7}"#.to_vec(), code::INVALID_PARAMS),
        (vec![b' '; pyagent_protocol::api::MAX_REQUEST_BYTES + 1], code::INVALID_REQUEST),
        (br#"{"id": 5, "method": "task.submit", "params": {"capability": "python.tokens", "files": []}}"#.to_vec(), code::INVALID_PARAMS),
        (br#"{"id": 6, "method": "task.submit", "params": {"capability": "python.tokens", "files": [{"path": "a.py"}]}}"#.to_vec(), code::INVALID_PARAMS),
        (br#"{"id": 7, "method": "task.submit", "params": {"capability": "python.tokens", "files": [{"path": "a.py", "blob": "00"}]}}"#.to_vec(), code::INVALID_PARAMS),
        (format!(r#"{{"id": 8, "method": "task.submit", "params": {{"capability": "python.tokens", "files": [{{"path": "a.py", "blob": "{}"}}]}}}}"#, "ab".repeat(32)).into_bytes(), code::INVALID_PARAMS),
        (br#"{"id": 9, "method": "task.submit", "params": {"capability": "no such thing!", "files": [{"path": "a.py", "text": "x = 1"}]}}"#.to_vec(), code::INVALID_PARAMS),
        (br#"{"id": 10, "method": "task.submit", "params": {"capability": "python.tokens", "files": [{"path": "a.py", "text": "x"}], "lease_ms": 0}}"#.to_vec(), code::INVALID_PARAMS),
        (br#"{"id": 11, "method": "task.wait", "params": {"task_ids": ["nope"]}}"#.to_vec(), code::INVALID_PARAMS),
    ];
    for (request, expected) in cases {
        let reply = raw(&ep, &request).await;
        assert_eq!(reply["error"]["code"], expected, "request {:?} → {reply}", String::from_utf8_lossy(&request[..request.len().min(40)]));
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The id is echoed even on errors it can read.
    assert_eq!(raw(&ep, br#"{"id": "x-7", "method": "nope"}"#).await["id"], "x-7");

    // A REQ socket (empty delimiter frame) is served too.
    let mut req = zeromq::ReqSocket::new();
    req.connect(&ep).await.unwrap();
    req.send(r#"{"id": 9, "method": "status"}"#.into()).await.unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&req.recv().await.unwrap().into_vec()[0]).unwrap();
    assert_eq!(reply["id"], 9);
    assert_eq!(reply["result"]["peer_id"], a.peer_id().to_string());

    let status: StatusResult = api_client::call(&ep, "status", Duration::from_secs(3)).await.unwrap();
    assert_eq!(status.peer_id, a.peer_id().to_string());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_events_are_published_on_the_pub_socket() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path(), &Opts::default()).await;
    let mut sub = zeromq::SubSocket::new();
    sub.connect(a.events_endpoint()).await.unwrap();
    sub.subscribe("peer").await.unwrap();
    // Let the subscription reach the publisher before anything happens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = start_in(db.path(), &Opts { bootstrap: a.p2p_addrs(), ..Default::default() }).await;
    let message = tokio::time::timeout(JOIN, sub.recv()).await.expect("an event").unwrap().into_vec();
    assert_eq!(&message[0][..], b"peer");
    let event: serde_json::Value = serde_json::from_slice(&message[1]).unwrap();
    assert_eq!(event["event"], "peer_joined");
    assert_eq!(event["peer"]["peer_id"], b.peer_id().to_string());
    let b_id = b.peer_id().to_string();
    b.shutdown().await;
    let message = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await.expect("an event").unwrap().into_vec();
    let event: serde_json::Value = serde_json::from_slice(&message[1]).unwrap();
    assert_eq!((event["event"].as_str(), event["peer_id"].as_str()), (Some("peer_left"), Some(b_id.as_str())));
    a.shutdown().await;
}

/// The Python example of README (pyzmq) reads status and peers from a real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pyzmq_client_reads_status_and_peers() {
    let has_pyzmq = std::process::Command::new("python3").args(["-c", "import zmq"]).status().is_ok_and(|s| s.success());
    if !has_pyzmq {
        assert!(std::env::var_os("CI").is_none(), "CI must have pyzmq (scripts/install-deps.sh installs it)");
        eprintln!("\n!!!!! SKIPPED python_pyzmq_client test: python3 with pyzmq is missing (pip install pyzmq) !!!!!\n");
        return;
    }
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_in(da.path(), &Opts::default()).await;
    let b = start_in(db.path(), &Opts { bootstrap: a.p2p_addrs(), ..Default::default() }).await;
    wait_until("B joins", JOIN, || async { view(&a).await == ids([&b]) }).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/api_example.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--api", a.api_endpoint(), "--events", a.events_endpoint()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["peer_id"], a.peer_id().to_string());
    assert_eq!(v["peers"]["peers"][0]["peer_id"], b.peer_id().to_string());
    a.shutdown().await;
    b.shutdown().await;
}

/// `--agents` decides what a node hosts, and peers see it in the advert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_agents_follow_the_agents_option() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = start_in(da.path(), &Opts { agents: vec!["none".into()], ..Default::default() }).await;
    let worker = start_in(db.path(), &Opts { agents: vec!["tokens".into()], bootstrap: relay.p2p_addrs(), ..Default::default() }).await;
    wait_until("both join", JOIN, || async { view(&relay).await == ids([&worker]) && view(&worker).await == ids([&relay]) }).await;
    assert!(relay.client().status().await.unwrap().agents.is_empty());
    let seen_by_relay = relay.client().peers().await.unwrap();
    assert_eq!(seen_by_relay[0].agents, vec!["tokens".to_string()]);
    let seen_by_worker = worker.client().peers().await.unwrap();
    assert!(seen_by_worker[0].agents.is_empty());
    relay.shutdown().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_model_advertises_measured_inference_and_without_runtime_runs_on() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("target/models/tiny");
    let dir = tempfile::tempdir().unwrap();
    // A broken runtime path: the node starts anyway, with inference off.
    let mut config = support::test_config(&dir.path().join("a"), &Opts::default());
    config.inference.models = vec![model.clone()];
    config.inference.ort_lib = Some("/nonexistent/libonnxruntime.so".into());
    let off = pyagent_node::Node::start(config.validate().unwrap()).await.unwrap();
    assert!(off.client().status().await.unwrap().capacity.models.is_empty());
    off.shutdown().await;
    if !model.join("model.onnx").exists() || !root.join(".venv-models").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must prepare the tiny model (scripts/test.sh does)");
        eprintln!("\n!!!!! SKIPPED inference advert test: run scripts/prepare-model.sh tiny target/models/tiny !!!!!\n");
        return;
    }
    let mut config = support::test_config(&dir.path().join("b"), &Opts::default());
    config.inference.models = vec![model.clone()];
    let on = pyagent_node::Node::start(config.validate().unwrap()).await.unwrap();
    let peer = start_in(&dir.path().join("c"), &Opts { bootstrap: on.p2p_addrs(), ..Default::default() }).await;
    let inference = on.client().status().await.unwrap().capacity.models.first().cloned().expect("inference on");
    let file = std::fs::read(model.join("model.onnx")).unwrap();
    assert_eq!(inference.model_id, blake3::hash(&file).to_hex().to_string());
    assert!(inference.prefill_tokens_per_s > 0 && inference.decode_tokens_per_s > 0 && inference.fits);
    // Peers see it in the advert.
    wait_until("the peer sees the inference capacity", JOIN, || async {
        peer.client().peers().await.unwrap().iter().any(|p| p.capacity.models.iter().any(|i| i.model_id == inference.model_id && i.name == "tiny"))
    })
    .await;
    on.shutdown().await;
    peer.shutdown().await;
}

/// Protocol versions are not part of the swarm's identity: a node one version ahead (that
/// still speaks ours) is a member like any other, and `peers` shows the version used; a
/// node with no common version is kept out, and the others stay one swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_two_protocol_versions_stay_one_swarm() {
    use pyagent_protocol::{PROTOCOL_VERSION, VersionRange};
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_in(dirs[0].path(), &Opts::default()).await;
    let boot = Opts { bootstrap: a.p2p_addrs(), ..Default::default() };
    let start_speaking = |dir: &std::path::Path, min: u16, max: u16| {
        let mut settings = support::test_config(dir, &boot).validate().unwrap();
        settings.protocol_versions = VersionRange::new(min, max).unwrap();
        pyagent_node::Node::start(settings)
    };
    let ahead = start_speaking(dirs[1].path(), PROTOCOL_VERSION, PROTOCOL_VERSION + 1).await.unwrap();
    for (node, others) in [(&a, ids([&ahead])), (&ahead, ids([&a]))] {
        wait_until("one swarm across versions", JOIN, || async { view(node).await == others }).await;
    }
    for node in [&a, &ahead] {
        let peers = node.client().peers().await.unwrap();
        assert_eq!(peers[0].protocol_version, PROTOCOL_VERSION, "the highest common version");
    }
    assert_eq!(ahead.client().status().await.unwrap().protocol_version, PROTOCOL_VERSION + 1);

    let apart = start_speaking(dirs[2].path(), PROTOCOL_VERSION + 2, PROTOCOL_VERSION + 2).await.unwrap();
    // It dials A (its bootstrap) again and again; it never joins, and A and B stay together.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(view(&a).await, ids([&ahead]));
    assert_eq!(view(&ahead).await, ids([&a]));
    assert!(view(&apart).await.is_empty());
    for node in [apart, ahead, a] {
        node.shutdown().await;
    }
}
