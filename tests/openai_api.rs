//! The OpenAI-compatible HTTP API of a node serving the tiny model (with a ChatML chat
//! template added): the official `openai` Python client and raw HTTP against it
//! (`tests/openai_client.py`), a client that goes away mid-stream, and a node without
//! the model.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{self, Opts, wait_until};

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The tiny model with a chat template, in `dir/tiny-chat`; `None` when the tiny model is
/// not prepared (outside CI).
pub fn tiny_chat_model(dir: &Path) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tiny = root.join("target/models/tiny");
    if !tiny.join("model.onnx").exists() || !root.join(".venv-models").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must prepare the tiny model (scripts/test.sh does)");
        eprintln!("\n!!!!! SKIPPED OpenAI API test: run scripts/prepare-model.sh tiny target/models/tiny !!!!!\n");
        return None;
    }
    let model = dir.join("tiny-chat");
    std::fs::create_dir_all(&model).unwrap();
    for file in ["model.onnx", "tokenizer.json"] {
        std::fs::copy(tiny.join(file), model.join(file)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(tiny.join("config.json")).unwrap()).unwrap();
    config["chat_template"] = CHATML.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    Some(model)
}

async fn node_serving(dir: &Path, model: PathBuf, key: Option<&Path>) -> pyagent_node::Node {
    let mut config = support::test_config(&dir.join("node"), &Opts::default());
    config.inference.models = vec![model];
    config.http.api_key_file = key.map(Path::to_owned);
    pyagent_node::Node::start(config.validate().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_gets_what_openai_would_answer() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let key = dir.path().join("api.key");
    std::fs::write(&key, "test-key-0123456789abcdef\n").unwrap();
    let node = node_serving(dir.path(), model, Some(&key)).await;
    let base = format!("http://{}", node.http_addr().expect("HTTP API on"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/openai_client.py");
    let out = tokio::process::Command::new("python3").arg(script).args([&base, "tiny-chat", "test-key-0123456789abcdef"]).output().await.expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai_client.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"), "{stdout}");
    eprintln!("{stdout}");
    node.shutdown().await;
}

/// A raw HTTP/1.1 request; returns the stream positioned after the response headers, and
/// the status line.
fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (BufReader<std::net::TcpStream>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (reader, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_stream_stops_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_chat_model(dir.path()) else { return };
    let node = node_serving(dir.path(), model, None).await;
    let addr = node.http_addr().unwrap();
    let worker = node.model().unwrap().clone();
    let body = r#"{"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0, "stream": true}"#;
    let reader = tokio::task::spawn_blocking(move || {
        let (mut reader, status) = request(addr, "POST", "/v1/completions", body);
        assert!(status.contains("200"), "{status}");
        let mut first = String::new();
        while !first.starts_with("data: ") {
            first.clear();
            reader.read_line(&mut first).unwrap();
        }
        reader
    })
    .await
    .unwrap();
    assert_eq!(worker.load().requests.load(Ordering::Relaxed), 1, "the generation runs");
    drop(reader); // the client goes away
    wait_until("the worker is idle again", Duration::from_secs(10), || async { worker.load().requests.load(Ordering::Relaxed) == 0 }).await;
    // A whole (non-streamed) request that is dropped before its answer stops too.
    let body = r#"{"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0}"#;
    let blocking = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        s
    });
    let s = blocking.await.unwrap();
    wait_until("the request runs", Duration::from_secs(10), || async { worker.load().requests.load(Ordering::Relaxed) == 1 }).await;
    drop(s);
    wait_until("the worker is idle again", Duration::from_secs(10), || async { worker.load().requests.load(Ordering::Relaxed) == 0 }).await;
    // The server serves on.
    let (mut reader, status) = tokio::task::spawn_blocking(move || request(addr, "GET", "/v1/models", "")).await.unwrap();
    assert!(status.contains("200"), "{status}");
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert!(text.contains("tiny-chat"), "{text}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_models_says_so_and_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_in(dir.path(), &Opts::default()).await;
    let addr = node.http_addr().unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        ["/v1/models", "/readyz", "/healthz"]
            .into_iter()
            .map(|path| {
                let (mut r, status) = request(addr, "GET", path, "");
                let mut body = String::new();
                r.read_to_string(&mut body).unwrap();
                (status, body)
            })
            .chain(std::iter::once({
                let (mut r, status) = request(addr, "POST", "/v1/chat/completions", r#"{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}"#);
                let mut body = String::new();
                r.read_to_string(&mut body).unwrap();
                (status, body)
            }))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(answers[0].0.contains("200") && answers[0].1.contains(r#""data":[]"#), "{answers:?}");
    assert!(answers[1].0.contains("200") && answers[1].1.contains(r#""ready":true"#), "{answers:?}");
    assert!(answers[2].0.contains("200"), "{answers:?}");
    assert!(answers[3].0.contains("404") && answers[3].1.contains("model_not_found") && answers[3].1.contains("serves no model"), "{answers:?}");
    node.shutdown().await;
}
