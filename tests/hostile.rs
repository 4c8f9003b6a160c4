//! Hostile input on every port (issue 9), one regression test per finding: each one sends
//! what an attacker on the machine or the LAN sent, and checks that the node refuses it
//! with a reason and keeps serving everyone else. Loopback only, mDNS off.


use crate::support;

use std::time::{Duration, Instant};

use pyagent_node::Node;
use pyagent_node::api::client as api_client;
use pyagent_protocol::api::{StatusResult, code};
use serde_json::{Value, json};
use support::{Opts, analyze_cli, start_in, test_config, view, wait_until, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const JOIN: Duration = Duration::from_secs(15);

fn tcp_addr(endpoint: &str) -> String {
    endpoint.trim_start_matches("tcp://").to_owned()
}

/// A ZMTP 3.0 NULL-mechanism greeting.
fn greeting() -> Vec<u8> {
    let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    g.extend(mechanism);
    g.push(0); // as-server
    g.resize(64, 0);
    g
}

/// The READY command of a socket of `socket_type`.
fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = b"\x05READY".to_vec();
    body.push(11);
    body.extend(b"Socket-Type");
    body.extend((socket_type.len() as u32).to_be_bytes());
    body.extend(socket_type.as_bytes());
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend(body);
    frame
}

/// A raw ZMTP peer past its handshake: greeting and READY sent, the server's read.
async fn raw_zmtp(endpoint: &str, socket_type: &str) -> TcpStream {
    let mut stream = TcpStream::connect(tcp_addr(endpoint)).await.unwrap();
    stream.write_all(&greeting()).await.unwrap();
    let mut theirs = [0u8; 64];
    stream.read_exact(&mut theirs).await.unwrap();
    stream.write_all(&ready(socket_type)).await.unwrap();
    // Their READY: a command frame (short or long form).
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let mut rest = vec![0u8; head[1] as usize];
    stream.read_exact(&mut rest).await.unwrap();
    stream
}

/// One ZMTP message frame (the last of its message).
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = if body.len() > 255 {
        let mut h = vec![0x02];
        h.extend((body.len() as u64).to_be_bytes());
        h
    } else {
        vec![0x00, body.len() as u8]
    };
    f.extend(body);
    f
}

/// Waits until the server closes `stream` (reads to EOF, discarding what comes).
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn status_of(node: &Node) -> Result<StatusResult, api_client::ApiClientError> {
    api_client::call(node.api_endpoint(), "status", Duration::from_secs(5)).await
}

async fn call(endpoint: &str, method: &str, params: Value) -> Value {
    let request = json!({ "id": 1, "method": method, "params": params }).to_string().into_bytes();
    serde_json::from_slice(&api_client::call_raw(endpoint, request, Duration::from_secs(10)).await.unwrap()).unwrap()
}

/// Finding 1 (the crash): a frame header announcing 2^62 bytes on the API port or the
/// events port aborted the node. Now the connection is closed at the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_2_62_bytes_closes_that_connection_and_the_node_lives() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path(), &Opts::default()).await;
    for (endpoint, socket_type) in [(node.api_endpoint().to_owned(), "DEALER"), (node.events_endpoint().to_owned(), "SUB")] {
        let mut attacker = raw_zmtp(&endpoint, socket_type).await;
        let mut header = vec![0x02];
        header.extend((1u64 << 62).to_be_bytes());
        attacker.write_all(&header).await.unwrap();
        assert!(closed_by_server(&mut attacker, Duration::from_secs(5)).await, "{endpoint}: the connection must be closed");
        let status = status_of(&node).await.expect("the node still answers");
        assert_eq!(status.peer_id, node.peer_id().to_string());
    }
    node.shutdown().await;
}

/// Finding 2 (memory): frames over the limit were buffered whole before they were
/// refused. Now a header over the limit closes the connection before its body is sent,
/// and a request a little over 16 MiB (under the socket limit) still gets its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_at_their_header() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path(), &Opts::default()).await;
    let mut attacker = raw_zmtp(node.api_endpoint(), "DEALER").await;
    let mut header = vec![0x02];
    header.extend((1u64 << 30).to_be_bytes()); // 1 GiB, never sent
    attacker.write_all(&header).await.unwrap();
    assert!(closed_by_server(&mut attacker, Duration::from_secs(5)).await);

    // Several frames of one message count together.
    let mut attacker = raw_zmtp(node.api_endpoint(), "DEALER").await;
    let part = vec![b' '; 9 * 1024 * 1024];
    let mut more = frame(&part);
    more[0] |= 0x01; // MORE
    attacker.write_all(&more).await.unwrap();
    let mut second = vec![0x02];
    second.extend((part.len() as u64).to_be_bytes());
    attacker.write_all(&second).await.unwrap();
    assert!(closed_by_server(&mut attacker, Duration::from_secs(5)).await, "18 MiB in two frames must be refused too");

    let mut client = raw_zmtp(node.api_endpoint(), "DEALER").await;
    let big = vec![b' '; pyagent_protocol::api::MAX_REQUEST_BYTES + 10];
    client.write_all(&frame(&big)).await.unwrap();
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    let mut reply = vec![0u8; head[1] as usize];
    client.read_exact(&mut reply).await.unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["error"]["code"], code::INVALID_REQUEST, "{reply}");
    assert!(status_of(&node).await.is_ok());
    node.shutdown().await;
}

/// Finding 3 (fairness): 64 long polls of one client made everyone else `busy`, and a
/// client that flooded requests without reading blocked `status` for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_greedy_client_cannot_starve_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path(), &Opts::default()).await;

    // A client that holds 64 long polls on one connection.
    let mut hog = api_client::ApiConnection::connect(node.api_endpoint(), Duration::from_secs(5)).await.unwrap();
    let registered: Value = hog.call("agent.register", json!({ "name": "hog", "capabilities": ["x.y"] }), Duration::from_secs(5)).await.unwrap();
    let agent_id = registered["agent_id"].as_u64().unwrap();
    let mut raw = zeromq::DealerSocket::new();
    use zeromq::{Socket, SocketRecv, SocketSend};
    raw.connect(node.api_endpoint()).await.unwrap();
    for id in 0..64 {
        let request = json!({ "id": format!("poll-{id}"), "method": "agent.next", "params": { "agent_id": agent_id, "timeout_ms": 20000 } });
        raw.send(zeromq::ZmqMessage::from(request.to_string())).await.unwrap();
    }
    // Everything over its budget is answered busy at once, echoing the request's id.
    let mut busy_ids = Vec::new();
    for _ in 0..64 {
        let reply = tokio::time::timeout(Duration::from_secs(25), raw.recv()).await.expect("every poll is answered").unwrap();
        let reply: Value = serde_json::from_slice(&reply.into_vec().pop().unwrap()).unwrap();
        if reply.get("error").is_some() {
            assert_eq!(reply["error"]["code"], code::BUSY, "{reply}");
            busy_ids.push(reply["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(busy_ids.len(), 64 - 16, "{busy_ids:?}");
    assert!(busy_ids.iter().all(|id| id.starts_with("poll-")), "{busy_ids:?}");
    // Meanwhile everyone else is served, the CLI included.
    for _ in 0..3 {
        status_of(&node).await.expect("status while another client holds long polls");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyagent"))
        .args(["status", "--api", node.api_endpoint()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A client that sends 300k requests and never reads a reply.
    let mut flood = raw_zmtp(node.api_endpoint(), "DEALER").await;
    let flooding = tokio::spawn(async move {
        let mut batch = Vec::new();
        for i in 0..300_000u32 {
            batch.extend(frame(format!("{{\"id\":{i},\"method\":\"status\"}}").as_bytes()));
            if batch.len() > 256 * 1024 {
                if flood.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        }
        let _ = flood.write_all(&batch).await;
        // Stay connected, never read.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for _ in 0..5 {
        status_of(&node).await.expect("status while a client floods without reading");
    }
    eprintln!("5 status calls during the flood took {:?}", started.elapsed());
    flooding.abort();
    drop(raw);
    node.shutdown().await;
}

/// The CLI's client retries `busy` with backoff until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_retry_busy_with_backoff_until_their_deadline() {
    use zeromq::{Socket, SocketRecv, SocketSend};
    let mut fake = zeromq::RouterSocket::new();
    let endpoint = fake.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let Ok(request) = fake.recv().await else { return seen };
            seen += 1;
            let mut frames = request.into_vec();
            let payload: Value = serde_json::from_slice(&frames.pop().unwrap()).unwrap();
            let reply = if seen <= 2 {
                json!({ "id": payload["id"], "error": { "code": code::BUSY, "message": "busy" } })
            } else {
                json!({ "id": payload["id"], "result": { "ok": seen } })
            };
            frames.push(reply.to_string().into_bytes().into());
            fake.send(zeromq::ZmqMessage::try_from(frames).unwrap()).await.unwrap();
        }
    });
    let got: Value = api_client::call(&endpoint, "status", Duration::from_secs(5)).await.unwrap();
    assert_eq!(got["ok"], 3, "two busy replies, then the answer");
    let mut conn = api_client::ApiConnection::connect(&endpoint, Duration::from_secs(5)).await.unwrap();
    let got: Value = conn.call("status", json!({}), Duration::from_secs(5)).await.unwrap();
    assert_eq!(got["ok"], 4);
    server.abort();

    // A server that is always busy: the call gives up at its deadline, saying busy.
    let mut always = zeromq::RouterSocket::new();
    let endpoint = always.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let server = tokio::spawn(async move {
        while let Ok(request) = always.recv().await {
            let mut frames = request.into_vec();
            let payload: Value = serde_json::from_slice(&frames.pop().unwrap()).unwrap();
            frames.push(json!({ "id": payload["id"], "error": { "code": code::BUSY, "message": "busy" } }).to_string().into_bytes().into());
            let _ = always.send(zeromq::ZmqMessage::try_from(frames).unwrap()).await;
        }
    });
    let err = api_client::call::<Value>(&endpoint, "status", Duration::from_millis(600)).await.unwrap_err();
    assert!(err.is_busy(), "{err}");
    server.abort();
}

/// Finding 4 (handshake flood): connections that stall in their handshakes kept a new
/// peer out. Now each source address gets a small share of the pending handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_does_not_keep_a_peer_out() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_in(&dir.path().join("a"), &Opts { quic: Some(false), ..Default::default() }).await;
    let target = a.p2p_addrs()[0].clone();
    let port = target
        .iter()
        .find_map(|p| if let libp2p::multiaddr::Protocol::Tcp(port) = p { Some(port) } else { None })
        .unwrap();
    // 200 connections a second from 127.0.0.2 that send the multistream header and stall.
    let flooding = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_millis(200), socket.connect(([127, 0, 0, 1], port).into())).await {
                let _ = stream.write_all(b"\x13/multistream/1.0.0\n").await;
                held.push(stream);
                if held.len() > 2000 {
                    held.remove(0);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let b = start_in(&dir.path().join("b"), &Opts { quic: Some(false), bootstrap: vec![target], ..Default::default() }).await;
    let b_id = b.peer_id().to_string();
    wait_until("B joins A under the flood", JOIN, || async { view(&a).await.contains(&b_id) }).await;
    let joined = started.elapsed();
    eprintln!("a new peer joined under a 200/s handshake flood in {joined:?}");
    assert!(joined < Duration::from_secs(10), "joined only after {joined:?}");
    flooding.abort();
    b.shutdown().await;
    a.shutdown().await;
}

/// Finding 5 (port sharing): a second node started on a TCP port another holds (libp2p
/// binds with SO_REUSEPORT) and captured dials meant for the first, silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_p2p_port_that_another_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for quic in [false, true] {
        let mut first = test_config(&dir.path().join(format!("first-{quic}")), &Opts { quic: Some(quic), ..Default::default() });
        first.p2p.port = port;
        let first = Node::start(first.validate().unwrap()).await.unwrap();
        let mut second = test_config(&dir.path().join(format!("second-{quic}")), &Opts { quic: Some(quic), ..Default::default() });
        second.p2p.port = port;
        let err = Node::start(second.validate().unwrap()).await.unwrap_err().to_string();
        assert!(err.contains(&format!("TCP port {port}")) && err.contains("already in use"), "{err}");
        first.shutdown().await;
    }
}

/// Finding 6 (analyze): a long path or a tab in a name aborted the whole run, a file
/// 10,000 directories deep was skipped silently, and one file with ~45k functions could
/// never be analysed. Now each is left out with its reason and the rest completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_leaves_out_what_it_cannot_take_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("proj");
    write(&tree, "good.py", "def ok(x):\n    return x\n");
    write(&tree, "tab\there.py", "x = 1\n");
    let long: Vec<String> = (0..6).map(|i| format!("{i}{}", "d".repeat(199))).collect();
    write(&tree, &format!("{}/long.py", long.join("/")), "x = 1\n");
    // Many small functions: ~2 MB of source whose complexity result is over 4 MiB.
    let many: String = (0..45_000).map(|i| format!("def f{i}(a):\n    return a\n")).collect();
    write(&tree, "many.py", &many);
    write(&tree, "small.py", "def g(y):\n    return y\n");
    // A leaf 10,000 directories deep (made by a process that walks down with chdir).
    let deep = std::process::Command::new("python3")
        .arg("-c")
        .arg("import os,sys\nos.chdir(sys.argv[1])\nfor _ in range(10000):\n    os.mkdir('d'); os.chdir('d')\nopen('leaf.py','w').write('x = 1\\n')\n")
        .arg(&tree)
        .status()
        .unwrap();
    assert!(deep.success());
    let node = start_in(&dir.path().join("n"), &Opts::default()).await;
    let out = analyze_cli(&node, &["--json", tree.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["complete"], true, "{json}");
    let errors = json["errors"].as_object().unwrap();
    let reason = |needle: &str| {
        errors.iter().find(|(path, _)| path.contains(needle)).map(|(_, r)| r.as_str().unwrap().to_owned()).unwrap_or_else(|| panic!("{needle} not reported: {errors:?}"))
    };
    assert!(reason("tab").contains("U+0009"), "{}", reason("tab"));
    assert!(reason("long.py").contains("over the limit of 1024"), "{}", reason("long.py"));
    assert!(reason("d/d/d").contains("cannot walk"), "{}", reason("d/d/d"));
    assert!(reason("many.py").contains("result too large"), "{}", reason("many.py"));
    for analysed in ["good.py", "small.py"] {
        assert!(json["complexity"].get(analysed).is_some(), "{analysed} must be analysed: {json}");
    }

    // Nothing analysable: exit 2, and the reasons are said.
    let only_deep = dir.path().join("only-deep");
    std::fs::create_dir_all(&only_deep).unwrap();
    write(&only_deep, "tab\tonly.py", "x = 1\n");
    let out = analyze_cli(&node, &[only_deep.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Python files") && stderr.contains("U+0009"), "{stderr}");
    node.shutdown().await;
}

/// Finding 8 (smaller): hostile task paths, guessable agent ids and one client taking
/// every agent place, `quorum: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_paths_agent_places_and_quorum_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path(), &Opts::default()).await;
    let api = node.api_endpoint().to_owned();
    for path in ["../../../etc/passwd", "/etc/passwd", "evil\u{202E}yp.py", "a\tb.py"] {
        let reply = call(&api, "task.submit", json!({ "capability": "python.tokens", "files": [{ "path": path, "text": "x = 1\n" }] })).await;
        assert_eq!(reply["error"]["code"], code::INVALID_PARAMS, "{path}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("files[0].path"), "{message}");
        assert!(!message.contains('\u{202E}') && !message.contains("/etc/passwd"), "the path is not echoed raw: {message}");
    }

    let mut hog = api_client::ApiConnection::connect(&api, Duration::from_secs(5)).await.unwrap();
    let mut ids = Vec::new();
    let refused = loop {
        match hog.call::<Value>("agent.register", json!({ "name": "hog", "capabilities": ["x.y"] }), Duration::from_secs(5)).await {
            Ok(r) => ids.push(r["agent_id"].as_u64().unwrap()),
            Err(e) => break e.to_string(),
        }
        assert!(ids.len() <= 64, "one connection registered {} agents", ids.len());
    };
    assert!(refused.contains("per connection"), "{refused}");
    assert!(ids.windows(2).all(|w| w[1] != w[0] + 1), "ids are not sequential: {ids:?}");
    let other = call(&api, "agent.register", json!({ "name": "legit", "capabilities": ["x.y"] })).await;
    assert!(other["result"]["agent_id"].is_u64(), "another client still registers: {other}");

    let reply = call(&api, "vote.propose", json!({ "title": "t", "options": ["a", "b"], "method": "plurality", "quorum": 0 })).await;
    assert_eq!(reply["error"]["code"], code::INVALID_PARAMS, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("quorum"), "{reply}");
    node.shutdown().await;
}
