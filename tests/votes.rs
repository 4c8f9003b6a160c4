//! Votes across in-process nodes: proposals and signed ballots over gossip, one ballot
//! per voter, identical tallies everywhere, agents voting on reviews, the CLI.


use crate::support;

use std::time::Duration;

use pyagent_node::Node;
use pyagent_node::api::client as api_client;
use serde_json::{Value, json};
use support::{Opts, start_in, view, wait_until};

const JOIN: Duration = Duration::from_secs(15);
const PYAGENT: &str = env!("CARGO_BIN_EXE_pyagent");

async fn call(node: &Node, method: &str, params: Value) -> Value {
    let request = json!({ "id": 1, "method": method, "params": params }).to_string().into_bytes();
    let reply = api_client::call_raw(node.api_endpoint(), request, Duration::from_secs(10)).await.unwrap();
    serde_json::from_slice(&reply).unwrap()
}

async fn mesh(dir: &std::path::Path, agents: &[&str]) -> Vec<Node> {
    let opts = |boot: Vec<libp2p::Multiaddr>| Opts { agents: agents.iter().map(|a| a.to_string()).collect(), bootstrap: boot, ..Default::default() };
    let a = start_in(&dir.join("a"), &opts(vec![])).await;
    let b = start_in(&dir.join("b"), &opts(a.p2p_addrs())).await;
    let c = start_in(&dir.join("c"), &opts(a.p2p_addrs())).await;
    let nodes = vec![a, b, c];
    for n in &nodes {
        wait_until("full mesh", JOIN, || async { view(n).await.len() == 2 }).await;
    }
    // Let gossip meshes form (vote messages are gossip only).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes
}

async fn tally(node: &Node, id: &str) -> Value {
    call(node, "vote.tally", json!({ "proposal_id": id })).await["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballots_travel_signed_one_per_voter_and_every_node_tallies_alike() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), &["none"]).await;
    let proposed = call(&nodes[0], "vote.propose", json!({ "title": "release name", "options": ["ant", "bee", "cat"], "method": "borda" })).await;
    let id = proposed["result"]["proposal_id"].as_str().unwrap_or_else(|| panic!("{proposed}")).to_owned();
    for n in &nodes {
        wait_until("every node has the proposal", JOIN, || async { tally(n, &id).await["options"].is_array() }).await;
    }
    let rankings = [["bee", "ant", "cat"], ["bee", "cat", "ant"], ["ant", "bee", "cat"]];
    for (n, r) in nodes.iter().zip(rankings) {
        let reply = call(n, "vote.ballot", json!({ "proposal_id": id, "ranking": r })).await;
        assert_eq!(reply["result"]["accepted"], true, "{reply}");
    }
    for n in &nodes {
        wait_until("every node has the 3 ballots", JOIN, || async { tally(n, &id).await["ballots_counted"] == 3 }).await;
    }
    let first = tally(&nodes[0], &id).await;
    // Borda with 3 options: bee 2+2+1 = 5, ant 1+0+2 = 3, cat 0+1+0 = 1.
    assert_eq!(first["winner"], "bee");
    assert_eq!(first["ranking"], json!(["bee", "ant", "cat"]));
    assert_eq!(first["scores"], json!([3, 5, 1]));
    for n in &nodes[1..] {
        let other = tally(n, &id).await;
        assert_eq!((&other["ranking"], &other["scores"], &other["ballots"]), (&first["ranking"], &first["scores"], &first["ballots"]));
    }
    // A second ballot from the same peer is rejected, and the first one stands.
    let again = call(&nodes[1], "vote.ballot", json!({ "proposal_id": id, "ranking": ["cat", "ant", "bee"] })).await;
    assert!(again["error"]["message"].as_str().unwrap().contains("already voted"), "{again}");
    // Malformed ballots and proposals are refused with a reason.
    let unknown = call(&nodes[1], "vote.ballot", json!({ "proposal_id": id, "ranking": ["dog"] })).await;
    assert!(unknown["error"]["message"].as_str().unwrap().contains("no option \"dog\""), "{unknown}");
    let one = call(&nodes[0], "vote.propose", json!({ "title": "t", "options": ["only"], "method": "borda" })).await;
    assert!(one["error"]["message"].as_str().unwrap().contains("options"), "{one}");
    let method = call(&nodes[0], "vote.propose", json!({ "title": "t", "options": ["a", "b"], "method": "dice" })).await;
    assert!(method["error"]["message"].as_str().unwrap().contains("unknown method"), "{method}");
    let missing = call(&nodes[0], "vote.tally", json!({ "proposal_id": "00".repeat(32) })).await;
    assert!(missing["error"]["message"].as_str().unwrap().contains("unknown proposal"), "{missing}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tally(&nodes[2], &id).await["ballots_counted"], 3, "the rejected ballot did not spread");

    // An instant-runoff tie (one first choice each, then all eliminated together) is
    // broken the same way on every node.
    let irv = call(&nodes[0], "vote.propose", json!({ "title": "tie", "options": ["x", "y", "z"], "method": "irv" })).await;
    let irv = irv["result"]["proposal_id"].as_str().unwrap().to_owned();
    for n in &nodes {
        wait_until("every node has the irv proposal", JOIN, || async { tally(n, &irv).await["options"].is_array() }).await;
    }
    for (n, r) in nodes.iter().zip([["x", "y", "z"], ["y", "z", "x"], ["z", "x", "y"]]) {
        assert_eq!(call(n, "vote.ballot", json!({ "proposal_id": irv, "ranking": r })).await["result"]["accepted"], true);
    }
    for n in &nodes {
        wait_until("three irv ballots everywhere", JOIN, || async { tally(n, &irv).await["ballots_counted"] == 3 }).await;
    }
    let t0 = tally(&nodes[0], &irv).await;
    assert!(t0["winner"].is_string());
    for n in &nodes[1..] {
        let t = tally(n, &irv).await;
        assert_eq!((&t["winner"], &t["ranking"], &t["rounds"]), (&t0["winner"], &t0["ranking"], &t0["rounds"]));
    }

    // The proposal and the ballots are history too, whole: read from any node.
    let history = call(&nodes[2], "history", json!({ "id": id })).await;
    let entries = history["result"]["entries"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["kind"] == "ballot").count(), 3, "{history}");
    assert_eq!(entries.iter().filter(|e| e["kind"] == "proposal").count(), 1, "{history}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_vote_on_review_proposals_and_the_cli_shows_the_tally() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), &[]).await;
    let files = dir.path().join("candidates");
    std::fs::create_dir_all(&files).unwrap();
    let candidates = [
        ("branchy.py", "import os, sys\ndef f(x):\n    if x:\n        return os.sep\n    elif x is None:\n        return sys.platform\n    return [y for y in x if y]\n"),
        ("simple.py", "def f(x):\n    return x or 0\n"),
        ("medium.py", "from math import floor\ndef f(x):\n    return floor(x) if x else 0\n"),
    ];
    let mut args = vec!["propose".to_string(), "--api".into(), nodes[0].api_endpoint().into(), "--title".into(), "rewrite f".into(), "--review".into(), "f".into()];
    for (name, text) in candidates {
        std::fs::write(files.join(name), text).unwrap();
        args.push("--candidate".into());
        args.push(files.join(name).to_string_lossy().into_owned());
    }
    let out = tokio::process::Command::new(PYAGENT).args(&args).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Three agents on each of three nodes: nine ballots.
    for n in &nodes {
        wait_until("nine agent ballots everywhere", JOIN, || async { tally(n, &id).await["ballots_counted"] == 9 }).await;
    }
    let t = tally(&nodes[1], &id).await;
    assert_eq!(t["winner"], "simple.py", "{t}");
    assert_eq!(t["ranking"], json!(["simple.py", "medium.py", "branchy.py"]));
    let agents: std::collections::BTreeSet<&str> = t["ballots"].as_array().unwrap().iter().filter_map(|b| b["agent"].as_str()).collect();
    assert_eq!(agents.into_iter().collect::<Vec<_>>(), vec!["complexity", "imports", "tokens"]);
    assert_eq!(tally(&nodes[2], &id).await["ballots"], t["ballots"]);

    let out = tokio::process::Command::new(PYAGENT).args(["tally", "--api", nodes[2].api_endpoint(), &id]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("winner: simple.py") && text.contains("9 ballot(s)") && text.contains("agent complexity"), "{text}");
    // A person's ballot through the CLI counts too.
    let out = tokio::process::Command::new(PYAGENT).args(["ballot", "--api", nodes[0].api_endpoint(), &id, "--rank", "medium.py,simple.py"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the person's ballot reaches node 3", JOIN, || async { tally(&nodes[2], &id).await["ballots_counted"] == 10 }).await;
    for n in nodes {
        n.shutdown().await;
    }
}
