//! Tasks across in-process nodes (loopback, mDNS off): placement on the peers that host
//! the capability, exactly-once execution in the normal case, results back to the
//! requester, clear failures, and failover when the executor goes away.


use crate::support;

use std::time::Duration;

use pyagent_node::Node;
use pyagent_node::api::client as api_client;
use pyagent_protocol::api::StatusResult;
use serde_json::{Value, json};
use support::{Opts, analyze_cli, start_in, view, wait_until, write};

const JOIN: Duration = Duration::from_secs(15);

async fn call(node: &Node, method: &str, params: Value) -> Value {
    let request = json!({ "id": 1, "method": method, "params": params }).to_string().into_bytes();
    let reply = api_client::call_raw(node.api_endpoint(), request, Duration::from_secs(40)).await.unwrap();
    serde_json::from_slice(&reply).unwrap()
}

async fn status(node: &Node) -> StatusResult {
    node.client().status().await.unwrap()
}

/// Submits `capability` over `files` (path, text) from `node`; returns the task id.
async fn submit(node: &Node, capability: &str, files: &[(&str, &str)]) -> String {
    let files: Vec<Value> = files.iter().map(|(p, t)| json!({ "path": p, "text": t })).collect();
    let reply = call(node, "task.submit", json!({ "capability": capability, "files": files, "lease_ms": 1500 })).await;
    reply["result"]["task_id"].as_str().unwrap_or_else(|| panic!("submit refused: {reply}")).to_owned()
}

/// Waits until every task is final; returns their reports by id.
async fn wait_all(node: &Node, ids: &[String], limit: Duration) -> std::collections::HashMap<String, Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut done = std::collections::HashMap::new();
    while done.len() < ids.len() {
        assert!(tokio::time::Instant::now() < deadline, "tasks not finished in {limit:?}: {} of {}", done.len(), ids.len());
        let open: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
        let reply = call(node, "task.wait", json!({ "task_ids": open, "timeout_ms": 2000 })).await;
        for task in reply["result"]["tasks"].as_array().unwrap_or_else(|| panic!("bad wait reply: {reply}")) {
            if matches!(task["state"].as_str(), Some("completed" | "failed" | "unknown")) {
                done.insert(task["task_id"].as_str().unwrap().to_owned(), task.clone());
            }
        }
    }
    done
}

/// A requester hosting no agent and two workers, joined through the requester.
async fn three(dir: &std::path::Path) -> (Node, Node, Node) {
    let requester = start_in(&dir.join("r"), &Opts { agents: vec!["none".into()], ..Default::default() }).await;
    let boot = Opts { bootstrap: requester.p2p_addrs(), ..Default::default() };
    let w1 = start_in(&dir.join("w1"), &boot).await;
    let w2 = start_in(&dir.join("w2"), &boot).await;
    wait_until("the requester sees both workers", JOIN, || async { view(&requester).await.len() == 2 }).await;
    wait_until("the workers see each other", JOIN, || async { view(&w1).await.len() == 2 && view(&w2).await.len() == 2 }).await;
    (requester, w1, w2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_once_on_capable_peers_and_results_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (requester, w1, w2) = three(dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..16 {
        let text = format!("def f{i}(x):\n    return x if x else {i}\n");
        ids.push(submit(&requester, "python.complexity", &[(&format!("m{i}.py"), &text)]).await);
    }
    let done = wait_all(&requester, &ids, Duration::from_secs(30)).await;
    let (id1, id2) = (w1.peer_id().to_string(), w2.peer_id().to_string());
    for (i, id) in ids.iter().enumerate() {
        let report = &done[id];
        assert_eq!(report["state"], "completed", "{report}");
        let executor = report["executor"].as_str().unwrap();
        assert!(executor == id1 || executor == id2, "executed by {executor}, not a worker");
        let block = &report["result"]["files"][format!("m{i}.py")][0];
        assert_eq!((block["name"].as_str(), block["complexity"].as_u64()), (Some(format!("f{i}").as_str()), Some(2)));
    }
    // Exactly once: the workers' execution counters add up to the number of tasks, and
    // stay there (no late duplicate).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s1, s2) = (status(&w1).await, status(&w2).await);
    assert_eq!(s1.tasks.executed + s2.tasks.executed, 16, "w1 {:?}, w2 {:?}", s1.tasks, s2.tasks);
    // Rendezvous hashing spreads 16 tasks over both workers.
    assert!(s1.tasks.executed > 0 && s2.tasks.executed > 0, "w1 {:?}, w2 {:?}", s1.tasks, s2.tasks);
    assert_eq!(status(&requester).await.tasks.submitted, 16);
    assert_eq!(status(&requester).await.tasks.executed, 0);

    // History, through the DHT: the requester recorded the submission and that it is
    // done, the executor its claim and its result; every node reads the same four entries.
    let first = &ids[0];
    let executor_id = done[first]["executor"].as_str().unwrap().to_owned();
    let kinds_of = |history: &Value| -> Vec<String> {
        let mut kinds: Vec<String> = history["result"]["entries"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect();
        kinds.sort();
        kinds
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let history = loop {
        let history = call(&requester, "history", json!({ "task_id": first })).await;
        if history["result"]["entries"].as_array().is_some_and(|e| e.len() == 4) || std::time::Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kinds_of(&history), vec!["assigned", "done", "result", "submitted"], "{history}");
    let entries = history["result"]["entries"].as_array().unwrap();
    let by_kind = |k: &str| entries.iter().find(|r| r["kind"] == k).unwrap().clone();
    assert_eq!(by_kind("assigned")["event"]["assigned"]["executor"], executor_id.as_str());
    assert_eq!(by_kind("assigned")["author"], executor_id.as_str(), "the executor records its own claim");
    assert_eq!(by_kind("result")["event"]["result"]["completed"], true);
    assert_eq!(by_kind("submitted")["author"], requester.peer_id().to_string());
    let worker = if executor_id == id1 { &w1 } else { &w2 };
    let theirs = call(worker, "history", json!({ "task_id": first })).await;
    assert_eq!(kinds_of(&theirs), kinds_of(&history), "{theirs}");
    let unknown = call(&requester, "history", json!({ "task_id": "ab".repeat(32) })).await;
    assert_eq!(unknown["result"]["entries"], json!([]));
    let out = tokio::process::Command::new(PYAGENT)
        .args(["history", "--api", requester.api_endpoint(), first])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("submitted  python.complexity, 1 file(s)") && text.contains("completed  by"), "{text}");
    for n in [requester, w1, w2] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_reused_and_every_capability_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (requester, w1, w2) = three(dir.path()).await;
    let files = json!([
        { "path": "pkg/__init__.py", "text": "from . import a\n" },
        { "path": "pkg/a.py", "text": "from . import b\n" },
        { "path": "pkg/b.py", "text": "from .a import thing\n" },
    ]);
    let first = call(&requester, "task.submit", json!({ "capability": "python.tokens", "files": files })).await;
    let blobs = first["result"]["blobs"].as_array().unwrap().clone();
    assert_eq!(first["result"]["candidates"], 2);
    // The same files again, by blob id only: nothing is re-sent.
    let refs: Vec<Value> = ["pkg/__init__.py", "pkg/a.py", "pkg/b.py"]
        .iter()
        .zip(&blobs)
        .map(|(p, b)| json!({ "path": p, "blob": b }))
        .collect();
    let second = call(&requester, "task.submit", json!({ "capability": "python.imports", "files": refs })).await;
    let ids = vec![
        first["result"]["task_id"].as_str().unwrap().to_owned(),
        second["result"]["task_id"].as_str().unwrap().to_owned(),
    ];
    let done = wait_all(&requester, &ids, Duration::from_secs(30)).await;
    let tokens = &done[&ids[0]]["result"];
    assert!(tokens["total"]["cl100k_base"].as_u64().unwrap() > 10, "{tokens}");
    let imports = &done[&ids[1]]["result"];
    assert_eq!(imports["cycles"][0]["shortest"], json!(["pkg.a", "pkg.b", "pkg.a"]), "{imports}");
    for n in [requester, w1, w2] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_nobody_can_run_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let alone = start_in(dir.path(), &Opts { agents: vec!["none".into()], ..Default::default() }).await;
    let id = submit(&alone, "python.complexity", &[("a.py", "x = 1\n")]).await;
    let done = wait_all(&alone, std::slice::from_ref(&id), Duration::from_secs(5)).await;
    assert_eq!(done[&id]["state"], "failed");
    assert!(done[&id]["reason"].as_str().unwrap().contains("no peer in the swarm offers python.complexity"), "{}", done[&id]);
    // A node that hosts the agent runs its own tasks.
    let dir2 = tempfile::tempdir().unwrap();
    let solo = start_in(dir2.path(), &Opts::default()).await;
    let id = submit(&solo, "python.tokens", &[("a.py", "hello world")]).await;
    let done = wait_all(&solo, std::slice::from_ref(&id), Duration::from_secs(10)).await;
    assert_eq!(done[&id]["result"]["total"]["cl100k_base"], 2);
    assert_eq!(done[&id]["executor"], solo.peer_id().to_string());
    alone.shutdown().await;
    solo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_leaves_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (requester, w1, w2) = three(dir.path()).await;
    // A task big enough (1.4 MB of source) to still be running when its executor goes away.
    let body: String = (0..14000).map(|i| format!("def f{i}(x):\n    if x and x > {i} or not x:\n        return [y for y in x if y]\n    return None\n")).collect();
    let id = submit(&requester, "python.complexity", &[("big.py", &body)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let executor = loop {
        let reply = call(&requester, "task.wait", json!({ "task_ids": [id], "timeout_ms": 10 })).await;
        if let Some(executor) = reply["result"]["tasks"][0]["executor"].as_str() {
            break executor.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no worker claimed the task: {reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (gone, stays) = if executor == w1.peer_id().to_string() { (w1, w2) } else { (w2, w1) };
    let stays_id = stays.peer_id().to_string();
    gone.shutdown().await;
    let done = wait_all(&requester, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let report = &done[&id];
    // The other worker took over and completed it.
    assert_eq!(report["state"], "completed", "{}", report["reason"]);
    assert_eq!(report["result"]["files"]["big.py"].as_array().unwrap().len(), 14000);
    assert_eq!(report["executor"], stays_id, "first executor {executor}");
    assert_eq!(status(&stays).await.tasks.executed, 1);
    requester.shutdown().await;
    stays.shutdown().await;
}

const PYAGENT: &str = env!("CARGO_BIN_EXE_pyagent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyagent_analyze_reports_complexity_cycles_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("proj");
    write(&tree, "pkg/__init__.py", "");
    write(&tree, "pkg/a.py", "from . import b\n");
    write(&tree, "pkg/b.py", "from pkg import c\n");
    write(&tree, "pkg/c.py", "import pkg.a\n");
    write(&tree, "pkg/complex.py", "def busy(x):\n    if x: pass\n    if x > 1: pass\n    for i in x: pass\n    while x: pass\n    return x and x or None\n");
    write(&tree, "generated/skip.py", "def ignored(): pass\n");
    write(&tree, ".gitignore", "generated/\n");
    write(&tree, "bad.py", "def broken(:\n");
    let requester = start_in(&dir.path().join("r"), &Opts { agents: vec!["none".into()], ..Default::default() }).await;
    let worker = start_in(&dir.path().join("w"), &Opts { bootstrap: requester.p2p_addrs(), ..Default::default() }).await;
    wait_until("the requester sees the worker", JOIN, || async { view(&requester).await.len() == 1 }).await;

    let out = analyze_cli(&requester, &["--json", tree.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files"], 6, "{json}");
    assert_eq!(json["complete"], true);
    assert_eq!(json["imports"]["cycles"][0]["shortest"], json!(["pkg.a", "pkg.b", "pkg.c", "pkg.a"]));
    let busy = &json["complexity"]["pkg/complex.py"][0];
    assert_eq!((busy["name"].as_str(), busy["complexity"].as_u64(), busy["rank"].as_str()), (Some("busy"), Some(7), Some("B")));
    assert!(json["complexity"].get("generated/skip.py").is_none(), "gitignored file analysed");
    assert!(json["errors"]["bad.py"].as_str().unwrap().contains("syntax error"));
    assert!(json["tokens"]["total"]["cl100k_base"].as_u64().unwrap() > 20);
    assert_eq!(json["executors"].as_object().unwrap().keys().cloned().collect::<Vec<_>>(), vec![worker.peer_id().to_string()]);

    let out = analyze_cli(&requester, &["--quiet", tree.to_str().unwrap()]).await;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("Import cycles: 1") && report.contains("pkg.a -> pkg.b -> pkg.c -> pkg.a"), "{report}");
    assert!(report.contains("B    7  F  pkg/complex.py:1  busy"), "{report}");

    let out = analyze_cli(&requester, &[dir.path().join("missing").to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));

    // Without the worker, nobody hosts the agents: exit 1, with the reason.
    worker.shutdown().await;
    wait_until("the requester sees the worker leave", JOIN, || async { view(&requester).await.is_empty() }).await;
    let out = analyze_cli(&requester, &["--quiet", tree.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not finish"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no peer in the swarm offers python.complexity"));
    requester.shutdown().await;
}

fn has_pyzmq(test: &str) -> bool {
    let ok = std::process::Command::new("python3").args(["-c", "import zmq"]).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must have pyzmq (scripts/install-deps.sh installs it)");
        eprintln!("\n!!!!! SKIPPED {test}: python3 with pyzmq is missing (pip install pyzmq) !!!!!\n");
    }
    ok
}

/// The example external agent (Python, docstring coverage) attached to `node`'s API.
fn docstring_agent(node: &Node, hang: bool) -> tokio::process::Child {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/python/docstring_agent.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script).args(["--api", node.api_endpoint()]).kill_on_drop(true).stdout(std::process::Stdio::null());
    if hang {
        cmd.arg("--hang");
    }
    cmd.spawn().unwrap()
}

async fn advertises(observer: &Node, peer: &Node, capability: &str) -> bool {
    observer
        .client()
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer_id == peer.peer_id().to_string() && p.agents.iter().any(|a| a == "docstrings"))
        && status(peer).await.capabilities.iter().any(|c| c == capability)
}

const DOCS: &str = "\"\"\"Module.\"\"\"\n\ndef documented():\n    \"\"\"Yes.\"\"\"\n\ndef bare():\n    pass\n\nclass K:\n    def m(self):\n        \"\"\"Yes.\"\"\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_external_agent_serves_tasks_from_another_node() {
    if !has_pyzmq("external agent test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start_in(&dir.path().join("a"), &Opts { agents: vec!["none".into()], ..Default::default() }).await;
    let b = start_in(&dir.path().join("b"), &Opts { agents: vec!["none".into()], bootstrap: a.p2p_addrs(), ..Default::default() }).await;
    wait_until("A and B meet", JOIN, || async { view(&a).await.len() == 1 }).await;
    let _agent = docstring_agent(&b, false);
    wait_until("A sees B's external agent in B's advert", JOIN, || advertises(&a, &b, "python.docstrings")).await;

    let id = submit(&a, "python.docstrings", &[("m.py", DOCS), ("broken.py", "def (:\n")]).await;
    let done = wait_all(&a, std::slice::from_ref(&id), Duration::from_secs(20)).await;
    let report = &done[&id];
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["executor"], b.peer_id().to_string());
    let result = &report["result"];
    // module, documented, bare, K, m: 3 of 5 documented.
    assert_eq!((result["documented"].as_u64(), result["total"].as_u64()), (Some(3), Some(5)), "{result}");
    assert_eq!(result["files"]["m.py"]["missing"], json!(["K", "bare"]));
    assert!(result["files"]["broken.py"]["error"].as_str().unwrap().contains("syntax error"));

    // Malformed agent calls are refused with a reason; the node keeps serving.
    let bad = call(&b, "agent.register", json!({ "name": "no spaces allowed", "capabilities": ["x"] })).await;
    assert!(bad["error"]["message"].as_str().unwrap().contains("agent name"), "{bad}");
    let bad = call(&b, "agent.next", json!({ "agent_id": 424242 })).await;
    assert!(bad["error"]["message"].as_str().unwrap().contains("no registered agent"), "{bad}");
    let bad = call(&b, "agent.result", json!({ "agent_id": 1, "task_id": id, "result": 1, "error": "x" })).await;
    assert!(bad["error"]["message"].as_str().unwrap().contains("exactly one"), "{bad}");
    assert!(status(&b).await.tasks.executed >= 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_external_agents_task_fails_over_to_another_node() {
    if !has_pyzmq("external agent failover test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start_in(&dir.path().join("a"), &Opts { agents: vec!["none".into()], ..Default::default() }).await;
    let boot = Opts { agents: vec!["none".into()], bootstrap: a.p2p_addrs(), ..Default::default() };
    let b = start_in(&dir.path().join("b"), &boot).await;
    let c = start_in(&dir.path().join("c"), &boot).await;
    wait_until("all three meet", JOIN, || async { view(&a).await.len() == 2 && view(&b).await.len() == 2 && view(&c).await.len() == 2 }).await;
    // Both B and C get an agent that takes jobs and never answers; the one that gets the
    // task is killed, and the other node's agent is replaced by a working one.
    let mut hanging_b = docstring_agent(&b, true);
    let mut hanging_c = docstring_agent(&c, true);
    wait_until("A sees both agents", JOIN, || async { advertises(&a, &b, "python.docstrings").await && advertises(&a, &c, "python.docstrings").await }).await;
    let id = submit(&a, "python.docstrings", &[("m.py", DOCS)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let executor = loop {
        let reply = call(&a, "task.wait", json!({ "task_ids": [id], "timeout_ms": 10 })).await;
        if let Some(executor) = reply["result"]["tasks"][0]["executor"].as_str() {
            break executor.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody claimed the task: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (victim_agent, other_agent, other) = if executor == b.peer_id().to_string() {
        (&mut hanging_b, &mut hanging_c, &c)
    } else {
        (&mut hanging_c, &mut hanging_b, &b)
    };
    victim_agent.kill().await.unwrap();
    other_agent.kill().await.unwrap();
    let _working = docstring_agent(other, false);
    // The dead agent is dropped after 10 s without polling; its node gives the task up and
    // the other node takes it over once the lease lapses.
    let done = wait_all(&a, std::slice::from_ref(&id), Duration::from_secs(40)).await;
    let report = &done[&id];
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["executor"], other.peer_id().to_string());
    assert_eq!(report["result"]["documented"], 3);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
