//! Real `pyagent node` processes in the network-namespace lab, finding each other by mDNS
//! only (no bootstrap). Needs root: skipped loudly elsewhere, mandatory in CI.


use crate::support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::lab::{Lab, wait_for};

/// One lab at a time: they are CPU-hungry on a 2-core machine.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

const READY: Duration = Duration::from_secs(20);
const MESH: Duration = Duration::from_secs(20);

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).clone()).collect()
}

#[test]
fn lab_mdns_mesh_survives_kill_and_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("mesh", 3) else { return };
    let mut nodes: Vec<_> = (1..=3).map(|i| lab.spawn_node(i, &[])).collect();
    let ids: Vec<String> = (1..=3).map(|i| lab.wait_ready(i, READY)).collect();
    let expect = |i: usize| -> BTreeSet<String> { ids.iter().enumerate().filter(|(j, _)| *j + 1 != i).map(|(_, id)| id.clone()).collect() };
    for i in 1..=3 {
        wait_for(&format!("node {i} sees the other two by mDNS"), MESH, || lab.view(i) == expect(i));
    }
    let status = lab.status(1).unwrap();
    assert_eq!(status["mdns"], true);
    assert_eq!(status["connected_peers"], 2);

    // kill -9: no goodbye, no FIN on QUIC; the others must still drop it within 10 s.
    nodes[2].kill9();
    let killed = Instant::now();
    wait_for("nodes 1 and 2 drop the killed node", Duration::from_secs(10), || {
        lab.view(1) == set(&[&ids[1]]) && lab.view(2) == set(&[&ids[0]])
    });
    eprintln!("killed node dropped after {:?}", killed.elapsed());

    // Restart on the same data dir: same PeerId, back in every view.
    nodes[2] = lab.spawn_node(3, &[]);
    assert_eq!(lab.wait_ready(3, READY), ids[2], "restart keeps the PeerId");
    for i in 1..=3 {
        wait_for(&format!("node {i} sees the full mesh again"), MESH, || lab.view(i) == expect(i));
    }

    // kill -9 and restart at once, before anyone noticed: the old run's connections may
    // linger (QUIC), yet the new run must be back in every view, with a full view itself.
    nodes[2].kill9();
    nodes[2] = lab.spawn_node(3, &[]);
    assert_eq!(lab.wait_ready(3, READY), ids[2]);
    for i in 1..=3 {
        wait_for(&format!("node {i} sees the full mesh after a quick restart"), MESH, || lab.view(i) == expect(i));
    }
    wait_for("the restarted node is directly connected to both others", MESH, || {
        lab.status(3).is_some_and(|s| s["connected_peers"] == 2 && s["members"] == 2)
    });

    // Graceful stop: exit 0 quickly, and the others drop it at once.
    let (exit, took) = nodes[0].terminate();
    assert!(exit.success(), "SIGTERM exit status {exit:?}");
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    wait_for("node 1 leaves the views", Duration::from_secs(10), || lab.view(2) == set(&[&ids[2]]));
}

#[test]
fn lab_swarm_key_and_namespace_keep_swarms_apart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("priv", 4) else { return };
    let key = |name: &str| {
        let path = lab.dir.path().join(name);
        let out = lab.pyagent(1, &["keygen", "--swarm-key", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        path.to_str().unwrap().to_owned()
    };
    let (k, other) = (key("k.key"), key("other.key"));
    let _n1 = lab.spawn_node(1, &["--swarm-key", &k]);
    let _n2 = lab.spawn_node(2, &["--swarm-key", &k]);
    let _n3 = lab.spawn_node(3, &["--swarm-key", &other]);
    let _n4 = lab.spawn_node(4, &["--swarm-key", &k, "--swarm", "elsewhere"]);
    let ids: Vec<String> = (1..=4).map(|i| lab.wait_ready(i, READY)).collect();
    wait_for("nodes 1 and 2 (same key) find each other", MESH, || lab.view(1) == set(&[&ids[1]]) && lab.view(2) == set(&[&ids[0]]));
    // A few more mDNS rounds and redials for the outsiders to (fail to) get in.
    std::thread::sleep(Duration::from_secs(5));
    for i in 1..=2 {
        let s = lab.status(i).unwrap();
        assert_eq!(s["connected_peers"], 1, "node {i}: {s}");
        assert_eq!((s["private"].as_bool(), s["quic"].as_bool()), (Some(true), Some(false)));
    }
    for i in 3..=4 {
        let s = lab.status(i).unwrap();
        assert_eq!((s["members"].as_u64(), s["connected_peers"].as_u64()), (Some(0), Some(0)), "node {i} got in: {s}");
    }
    assert_eq!(lab.view(1), set(&[&ids[1]]));
}

#[test]
fn lab_malformed_api_requests_leave_the_node_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("api", 1) else { return };
    let _n1 = lab.spawn_node(1, &[]);
    let id = lab.wait_ready(1, READY);
    for (request, code) in [("garbage", -32700), ("{\"id\":1,\"method\":\"shutdown\"}", -32601), ("{\"id\":2,\"method\":\"peers\",\"params\":[1]}", -32602)] {
        let out = lab.pyagent(1, &["call", request]);
        assert!(!out.status.success(), "an error reply exits non-zero");
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["error"]["code"], code, "{request}: {reply}");
    }
    assert_eq!(lab.status(1).unwrap()["peer_id"], id.as_str(), "still serving after bad requests");
}

#[test]
fn lab_mdns_interface_selection_is_honoured() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("ifsel", 3) else { return };
    let _n1 = lab.spawn_node(1, &[]);
    // Named explicitly: announces and browses on eth0.
    let _n2 = lab.spawn_node(2, &["--mdns-interface", "eth0"]);
    // Loopback only: nobody on the LAN hears it, and it hears nobody.
    let _n3 = lab.spawn_node(3, &["--mdns-interface", "lo"]);
    let ids: Vec<String> = (1..=3).map(|i| lab.wait_ready(i, READY)).collect();
    wait_for("nodes 1 and 2 find each other", MESH, || lab.view(1) == set(&[&ids[1]]) && lab.view(2) == set(&[&ids[0]]));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.view(1), set(&[&ids[1]]), "node 3 announced on loopback only");
    assert!(lab.view(3).is_empty());
    assert_eq!(lab.status(3).unwrap()["connected_peers"], 0);
}

/// `pyagent analyze` from a node hosting no agent, with two workers; one worker is
/// killed with SIGKILL while it executes: the analysis still completes, on the survivor.
#[test]
fn lab_analyze_completes_when_an_executor_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("tasks", 3) else { return };
    let _requester = lab.spawn_node(1, &["--agents", "none"]);
    let mut workers = [lab.spawn_node(2, &[]), lab.spawn_node(3, &[])];
    let ids: Vec<String> = (1..=3).map(|i| lab.wait_ready(i, READY)).collect();
    for i in 1..=3 {
        wait_for(&format!("node {i} sees the other two"), MESH, || lab.view(i).len() == 2);
    }
    // 24 files of about 250 kB: 24 complexity and 24 token tasks, and one import graph.
    let tree = lab.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let body: String = (0..2000)
        .map(|i| format!("def f{i}(x, y):\n    if x and y or not x:\n        return [v for v in y if v > {i}]\n    return x if y else None\n"))
        .collect();
    for f in 0..24 {
        std::fs::write(tree.join(format!("m{f:02}.py")), format!("import m{:02}\n{body}", (f + 1) % 24)).unwrap();
    }
    let analysis = lab.spawn_pyagent(1, &["analyze", "--json", "--quiet", "--batch-bytes", "262144", tree.to_str().unwrap()]);

    let mut victim = None;
    wait_for("a worker is executing a task", Duration::from_secs(60), || {
        victim = (0..2).find(|w| lab.status(w + 2).is_some_and(|s| s["tasks"]["running"].as_u64().unwrap_or(0) > 0));
        victim.is_some()
    });
    let victim = victim.unwrap();
    workers[victim].kill9();
    let survivor = ids[2 - victim].clone();

    let out = analysis.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "analyze failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["complete"], true);
    assert_eq!(json["files"], 24);
    assert_eq!(json["complexity"].as_object().unwrap().len(), 24);
    assert_eq!(json["complexity"]["m07.py"].as_array().unwrap().len(), 2000);
    assert_eq!(json["tokens"]["files"].as_object().unwrap().len(), 24);
    assert_eq!(json["imports"]["cycles"][0]["modules"].as_array().unwrap().len(), 24);
    assert!(json["executors"].get(&survivor).is_some(), "the survivor completed nothing: {}", json["executors"]);
    let survivor_status = lab.status(3 - victim).unwrap();
    assert!(survivor_status["tasks"]["executed"].as_u64().unwrap() > 0);
}

/// Real processes: machines 1 and 2 serve the tiny model, machine 3 none. Machine 3 gets
/// machine 1's own greedy text through it; kill -9 of the
/// executor mid-stream ends `pyagent infer` on machine 3 promptly with the error; an
/// executor frozen (SIGSTOP) before it answers is failed over to the other.
#[test]
fn lab_inference_survives_an_executor_killed_or_frozen() {
    use std::io::Read;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("infer", 3) else { return };
    let Some(model) = crate::openai_api::tiny_chat_model(lab.dir.path()) else { return };
    let model = model.to_str().unwrap().to_owned();
    let mut servers = [lab.spawn_node(1, &["--model", &model]), lab.spawn_node(2, &["--model", &model])];
    let _asker = lab.spawn_node(3, &[]);
    let ids: Vec<String> = (1..=3).map(|i| lab.wait_ready(i, READY)).collect();
    let serving = || {
        let out = lab.pyagent(3, &["peers", "--json", "--timeout-ms", "1500"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["peers"].as_array().map_or(0, |a| a.iter().filter(|p| p["capacity"]["models"].as_array().is_some_and(|m| !m.is_empty())).count())
    };
    wait_for("machine 3 sees both servers' models", MESH, || serving() == 2);

    // Through a peer, the same greedy text as on the peer itself.
    let local = lab.pyagent(1, &["infer", "--peer", "local", "--max-tokens", "24", "Once upon a time"]);
    let remote = lab.pyagent(3, &["infer", "--peer", &ids[0], "--max-tokens", "24", "Once upon a time"]);
    assert!(local.status.success() && remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert_eq!(remote.stdout, local.stdout, "machine 3 gets machine 1's own greedy text");
    assert!(String::from_utf8_lossy(&remote.stderr).contains(&format!("on {}", ids[0])));

    // Mid-stream: the executor dies with -9 while streaming to machine 3's client.
    let mut infer = lab.spawn_pyagent(3, &["infer", "--peer", &ids[0], "--max-tokens", "3500", "Once upon a time"]);
    let mut stdout = infer.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("a first piece");
    let killed = Instant::now();
    servers[0].kill9();
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let out = infer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the client sees the failure: {stderr}");
    assert!(stderr.contains("the generation failed on") && stderr.contains(&ids[0]), "{stderr}");
    assert!(killed.elapsed() < Duration::from_secs(10), "promptly: {:?}", killed.elapsed());

    // Before the first token: machine 2 frozen; requests from machine 3 still complete (on
    // machine 1 again, restarted, or after machine 2's stream times out).
    servers[0] = lab.spawn_node(1, &["--model", &model]);
    let restarted = lab.wait_ready(1, READY);
    wait_for("machine 3 sees both servers again", MESH, || serving() == 2);
    servers[1].signal("STOP");
    let started = Instant::now();
    for _ in 0..3 {
        let out = lab.pyagent(3, &["infer", "--max-tokens", "8", "Once upon a time"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "served despite the frozen peer: {stderr}");
        assert!(stderr.contains(&format!("tiny-chat on {restarted}")), "ran on the live peer: {stderr}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "failover within the deadlines: {:?}", started.elapsed());
    servers[1].signal("CONT");
}
