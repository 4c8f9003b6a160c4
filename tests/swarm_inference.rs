//! Inference across the swarm, in-process over loopback: nodes without the model get the
//! same greedy text as the node that has it, streamed or not; a pinned peer is honoured;
//! identical concurrent requests spread over two capable peers; an executor that goes
//! away before its first token is failed over, and one that goes away mid-stream ends
//! the stream with an error the client can parse.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pyagent_engine::infer::GenerateOptions;
use pyagent_node::Node;
use pyagent_node::inference::{InferRequest, Target};
use pyagent_node::serving::Prompt;

use crate::openai_api::tiny_chat_model;
use crate::support::http::{header, post};
use crate::support::{self, Opts, wait_until};

async fn node(dir: &Path, name: &str, model: Option<&PathBuf>, bootstrap: &[&Node]) -> Node {
    node_with(dir, name, model, bootstrap, |_| {}).await
}

async fn node_with(dir: &Path, name: &str, model: Option<&PathBuf>, bootstrap: &[&Node], edit: impl FnOnce(&mut pyagent_node::config::Config)) -> Node {
    let opts = Opts { bootstrap: bootstrap.iter().flat_map(|n| n.p2p_addrs()).collect(), ..Default::default() };
    let mut config = support::test_config(&dir.join(name), &opts);
    config.inference.models = model.into_iter().cloned().collect();
    edit(&mut config);
    Node::start(config.validate().unwrap()).await.unwrap()
}

/// Waits until `node` sees `n` peers serving tiny-chat.
async fn sees_servers(node: &Node, n: usize) {
    wait_until("the model's servers are in the view", Duration::from_secs(20), || async {
        node.inference().swarm_models().await.unwrap().iter().find(|m| m.name == "tiny-chat").is_some_and(|m| m.peers.iter().filter(|p| matches!(p, Target::Peer(_))).count() >= n)
    })
    .await;
}

fn content(body: &str) -> String {
    // Chunked transfer: the JSON is on one line.
    let json = body.lines().find(|l| l.starts_with('{')).unwrap_or(body);
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["choices"][0]["message"]["content"].as_str().or(v["choices"][0]["text"].as_str()).unwrap_or_else(|| panic!("{body}")).to_owned()
}

fn streamed(body: &str) -> (String, usize) {
    let mut text = String::new();
    let mut errors = 0;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if v.get("error").is_some() {
            errors += 1;
        }
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    (text, errors)
}

const CHAT: &str = r#"{"model": "tiny-chat", "messages": [{"role": "user", "content": "Tell me about the swarm and its peers."}], "max_tokens": 40, "temperature": 0"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_without_the_model_get_the_same_greedy_text_from_the_peer_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let a = node(dir.path(), "a", Some(&model), &[]).await;
    let b = node(dir.path(), "b", None, &[&a]).await;
    let c = node(dir.path(), "c", None, &[&a]).await;
    sees_servers(&b, 1).await;
    sees_servers(&c, 1).await;
    let local_addr = a.http_addr().unwrap();
    let (status, head, body) = tokio::task::spawn_blocking(move || post(local_addr, "/v1/chat/completions", &format!("{CHAT}}}"), &[])).await.unwrap();
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(header(&head, "x-pyagent-peer"), Some("local"));
    let local = content(&body);
    assert!(!local.is_empty());
    let a_id = a.peer_id().to_string().to_ascii_lowercase();
    for n in [&b, &c] {
        let addr = n.http_addr().unwrap();
        let (status, head, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", &format!("{CHAT}}}"), &[])).await.unwrap();
        assert!(status.contains("200"), "{status} {body}");
        assert_eq!(header(&head, "x-pyagent-peer"), Some(a_id.as_str()), "ran on the node with the model");
        assert_eq!(content(&body), local, "the same greedy text as a local run");
        // Recorded in the history DHT: the request and where it ran.
        let id = serde_json::from_str::<serde_json::Value>(body.lines().find(|l| l.starts_with('{')).unwrap()).unwrap()["id"].as_str().unwrap().to_owned();
        let subject = pyagent_node::http::history_subject(&id);
        wait_until("the request is in the history", Duration::from_secs(10), || async {
            n.client().history().read(subject).await.is_ok_and(|r| {
                r.entries.iter().any(|(_, e)| match &e.body.event {
                    pyagent_protocol::history::HistoryEvent::Inference { model, detail } => model == "tiny-chat" && detail.contains(&a.peer_id().to_string()),
                    _ => false,
                })
            })
        })
        .await;
        let (status, _, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", &format!(r#"{CHAT}, "stream": true}}"#), &[])).await.unwrap();
        assert!(status.contains("200"), "{status}");
        assert_eq!(streamed(&body), (local.clone(), 0), "streamed from the peer == non-streamed");
        // The same through the placement API: the same tokens.
        let prompt = Prompt::Tokens((1..40).collect());
        let options = GenerateOptions { max_tokens: 12, ..Default::default() };
        let remote = n.inference().start(InferRequest { model: "tiny-chat".into(), prompt: prompt.clone(), options: options.clone(), pinned: None }).await.unwrap();
        assert_eq!(remote.ran_on, Target::Peer(a.peer_id()));
        let mut stream = remote.stream;
        while stream.pieces.recv().await.is_some() {}
        let remote_out = stream.done.await.unwrap().unwrap();
        let local_out = a.model().unwrap().generate(prompt, options).await.unwrap();
        assert_eq!(remote_out.tokens, local_out.tokens, "the same greedy tokens");
    }
    // The same from the shell: `pyagent infer` through b.
    let http = b.http_addr().unwrap().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyagent"))
        .args(["infer", "--http", &http, "--chat", "--max-tokens", "40", "Tell me about the swarm and its peers."])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.strip_suffix('\n').unwrap(), local, "pyagent infer streams the same text");
    assert!(stderr.contains(&format!("tiny-chat on {}", a.peer_id())) && stderr.contains("tokens/s"), "{stderr}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyagent")).args(["infer", "--http", &http, "--model", "gpt-9", "hi"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("gpt-9") && stderr.contains("tiny-chat"), "{stderr}");
    // Pinned: to a peer without the model, a 503 that names the header; to the model's peer, served there.
    let addr = b.http_addr().unwrap();
    let c_id = c.peer_id().to_string();
    let (status, _, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", &format!("{CHAT}}}"), &[("X-Pyagent-Peer", &c_id)])).await.unwrap();
    assert!(status.contains("503") && body.contains("x-pyagent-peer"), "{status} {body}");
    let (status, _, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", &format!("{CHAT}}}"), &[("X-Pyagent-Peer", "local")])).await.unwrap();
    assert!(status.contains("503"), "b serves nothing itself: {status} {body}");
    let (status, _, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", &format!("{CHAT}}}"), &[("X-Pyagent-Peer", "not-a-peer")])).await.unwrap();
    assert!(status.contains("400"), "{status} {body}");
    let a_pin = a.peer_id().to_string();
    let (status, _, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", &format!("{CHAT}}}"), &[("X-Pyagent-Peer", &a_pin)])).await.unwrap();
    assert!(status.contains("200") && content(&body) == local, "{status} {body}");
    // A model nobody serves: 404 that lists what the swarm has.
    let (status, _, body) = tokio::task::spawn_blocking(move || post(addr, "/v1/chat/completions", r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#, &[])).await.unwrap();
    assert!(status.contains("404") && body.contains("tiny-chat") && body.contains("model_not_found"), "{status} {body}");
    for n in [c, b, a] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_identical_concurrent_requests_spread_over_two_capable_peers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    // 16 long generations at once saturate a 2-core machine, adverts included, and in a
    // full test run the other tests' nodes share it too: a peer TTL of 30 s (the tests'
    // usual 2 s and even the default 7 s each cut both busy peers off once in a full run
    // here), so that what this test checks — the spread and the output — is all it checks.
    let ttl = |c: &mut pyagent_node::config::Config| c.membership.peer_ttl_ms = 30_000;
    let a = node_with(dir.path(), "a", Some(&model), &[], ttl).await;
    let d = node_with(dir.path(), "d", Some(&model), &[&a], ttl).await;
    let b = node_with(dir.path(), "b", None, &[&a, &d], ttl).await;
    sees_servers(&b, 2).await;
    let addr = b.http_addr().unwrap();
    // Long enough (a few hundred ms each) that the requests overlap.
    let body = r#"{"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0}"#;
    let runs: Vec<_> = (0..16).map(|_| tokio::task::spawn_blocking(move || post(addr, "/v1/completions", body, &[]))).collect();
    let mut by_peer = std::collections::BTreeMap::<String, usize>::new();
    let mut texts = std::collections::BTreeSet::new();
    for run in runs {
        let (status, head, body) = run.await.unwrap();
        assert!(status.contains("200"), "{status} {body}");
        *by_peer.entry(header(&head, "x-pyagent-peer").unwrap().to_owned()).or_default() += 1;
        texts.insert(content(&body));
    }
    assert_eq!(by_peer.len(), 2, "both capable peers serve: {by_peer:?}");
    assert_eq!(texts.len(), 1, "the same greedy text wherever it ran");
    for n in [b, d, a] {
        n.shutdown().await;
    }
}

/// Holds `node`'s worker with a generation of `max_tokens` that waits for a reader
/// (nobody reads: it stops after the stream's buffer); returns its stream (drop it to stop).
fn occupy(node: &Node, max_tokens: usize) -> pyagent_node::serving::Stream {
    let options = GenerateOptions { max_tokens, ..Default::default() };
    node.model().unwrap().generate_stream(Prompt::Tokens((1..20).collect()), options).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_executor_gone_before_the_first_token_is_failed_over_and_mid_stream_is_a_parseable_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let x = node(dir.path(), "x", Some(&model), &[]).await;
    let y = node(dir.path(), "y", Some(&model), &[&x]).await;
    let b = node(dir.path(), "b", None, &[&x, &y]).await;
    sees_servers(&b, 2).await;
    // y is far busier than x (four long generations against one): b places on x, where the
    // request waits behind x's long one; then x goes away before its first token.
    let busy_y: Vec<_> = (0..4).map(|_| occupy(&y, 3500)).collect();
    let _x1 = occupy(&x, 3500);
    let (xid, yid) = (x.peer_id(), y.peer_id());
    wait_until("b sees the queues in the adverts", Duration::from_secs(10), || async {
        let peers = b.client().peers().await.unwrap();
        let queued = |id: libp2p::PeerId| peers.iter().find(|p| p.peer_id == id.to_string()).and_then(|p| p.capacity.models.first().map(|m| m.queued_requests)).unwrap_or(0);
        queued(xid) == 1 && queued(yid) == 4
    })
    .await;
    let request = InferRequest { model: "tiny-chat".into(), prompt: Prompt::Text("Once upon a time".into()), options: GenerateOptions { max_tokens: 8, ..Default::default() }, pinned: None };
    let placed = tokio::spawn({
        let inference = b.inference().clone();
        async move { inference.start(request).await }
    });
    wait_until("x has the request queued", Duration::from_secs(10), || async { x.model().unwrap().load().requests.load(std::sync::atomic::Ordering::Relaxed) == 2 }).await;
    x.shutdown().await;
    drop(busy_y); // y frees up: the failed-over request runs there
    let started = tokio::time::timeout(Duration::from_secs(30), placed).await.expect("no hang").unwrap().expect("served elsewhere");
    assert_eq!(started.ran_on, Target::Peer(yid), "failed over to y");
    assert!(started.skipped.iter().any(|(t, _)| *t == Target::Peer(xid)), "x was tried first: {:?}", started.skipped);
    let mut stream = started.stream;
    while stream.pieces.recv().await.is_some() {}
    assert!(stream.done.await.unwrap().is_ok());

    // Mid-stream: y goes away while streaming to b's HTTP client → an error event, then [DONE].
    let addr = b.http_addr().unwrap();
    let body = r#"{"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 3500, "temperature": 0, "stream": true}"#;
    let reader = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        r
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    y.shutdown().await;
    let rest = tokio::task::spawn_blocking(move || {
        let mut r = reader;
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        rest
    })
    .await
    .unwrap();
    let (_, errors) = streamed(&rest);
    assert_eq!(errors, 1, "one error event: {}", rest.lines().rev().take(6).collect::<Vec<_>>().join("\n"));
    assert!(rest.contains("data: [DONE]"), "then [DONE]");
    assert!(started.elapsed() < Duration::from_secs(10), "promptly: {:?}", started.elapsed());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyagent_improve_runs_the_loop_end_to_end_and_is_deterministic_under_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let a = node(dir.path(), "a", Some(&model), &[]).await;
    let b = node(dir.path(), "b", None, &[&a]).await;
    wait_until("b sees a's llm.suggest", Duration::from_secs(20), || async {
        b.client().peers().await.unwrap().iter().any(|p| p.agents.iter().any(|x| x == "llm"))
    })
    .await;
    let file = dir.path().join("calc.py");
    std::fs::write(&file, "def total(xs):\n    s = 0\n    for x in xs:\n        if x:\n            s = s + x\n    return s\n").unwrap();
    let run = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pyagent"))
            .args(["improve", file.to_str().unwrap(), "--function", "total", "--candidates", "2", "--seed", "7", "--max-tokens", "24", "--vote-secs", "15", "--api", b.api_endpoint()])
            .output()
    };
    let first = run().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&first.stdout).into_owned(), String::from_utf8_lossy(&first.stderr).into_owned());
    assert!(first.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("2 candidates from {}", a.peer_id())), "the node with the model suggested: {stderr}");
    assert!(stderr.contains("6 ballots of 6 expected"), "every agent of both nodes voted: {stderr}");
    assert!(stdout.contains("beat the original") || stdout.contains("@@"), "a decided result: {stdout}");
    let second = run().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&second.stdout), stdout, "the same seed, the same result");
    // Bad input: an unknown function names the ones there are.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyagent")).args(["improve", file.to_str().unwrap(), "--function", "nope", "--api", b.api_endpoint()]).output().await.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("total"), "{}", String::from_utf8_lossy(&out.stderr));
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_outside_the_swarm_gets_no_time_on_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let a = node(dir.path(), "a", Some(&model), &[]).await;
    // Another namespace: it can reach a, but is not in a's view.
    let opts = Opts { swarm: Some("elsewhere".into()), bootstrap: a.p2p_addrs(), ..Default::default() };
    let outsider = support::start_in(&dir.path().join("outsider"), &opts).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let request = pyagent_node::inference::wire::request("tiny-chat", &Prompt::Tokens((1..20).collect()), &GenerateOptions { max_tokens: 4, ..Default::default() });
    let opened = pyagent_node::inference::requester::open(&mut outsider.inference().control(), a.peer_id(), &request, || {}).await;
    let refused = match opened {
        Err(e) => e.to_string(),
        Ok(mut stream) => {
            while stream.pieces.recv().await.is_some() {}
            // Refused within seconds (the first frame comes at once), never at the first-token deadline.
            tokio::time::timeout(Duration::from_secs(15), stream.done).await.expect("no hang").unwrap().expect_err("an outsider must not be served").to_string()
        }
    };
    assert!(refused.contains("only members") || refused.contains("went away"), "{refused}");
    assert_eq!(a.model().unwrap().load().requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    outsider.shutdown().await;
    a.shutdown().await;
}
