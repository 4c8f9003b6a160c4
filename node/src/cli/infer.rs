//! `pyagent infer`: a completion from the swarm through the local node's HTTP API,
//! streamed to stdout as it is generated; tokens/s, time to first token and the peer it
//! ran on go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

#[derive(Debug, Args)]
pub struct InferArgs {
    /// The prompt (a user message with --chat).
    pub prompt: String,
    /// Model name as `/v1/models` lists it [default: the first the swarm serves].
    #[arg(long)]
    pub model: Option<String>,
    /// Run on this peer (a PeerId, or `local`) instead of where placement would.
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Render the prompt with the model's chat template (chat completion).
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message first.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// The local node's HTTP API.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7763")]
    pub http: SocketAddr,
    /// File with the node's HTTP bearer key.
    #[arg(long, value_name = "FILE")]
    pub http_api_key: Option<PathBuf>,
}

struct Client {
    addr: SocketAddr,
    key: Option<String>,
}

impl Client {
    async fn send(&self, method: &str, path: &str, body: Option<String>, peer: Option<&str>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.with_context(|| format!("cannot reach the node's HTTP API at {} (is `pyagent node` running? --http)", self.addr))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", self.addr.to_string()).header("content-type", "application/json");
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if let Some(peer) = peer {
            request = request.header("x-pyagent-peer", peer);
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).context("request")?;
        sender.send_request(request).await.context("HTTP request")
    }
}

/// The error message of an OpenAI-shaped error body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

async fn first_model(client: &Client) -> anyhow::Result<String> {
    let response = client.send("GET", "/v1/models", None, None).await?;
    let status = response.status();
    let body = response.into_body().collect().await.context("reading /v1/models")?.to_bytes();
    if !status.is_success() {
        bail!("{}", error_message(&body));
    }
    let models: serde_json::Value = serde_json::from_slice(&body).context("/v1/models")?;
    models["data"][0]["id"].as_str().map(str::to_owned).context("the swarm serves no model yet: start a node with --model DIR")
}

pub async fn run(args: InferArgs) -> anyhow::Result<()> {
    let key = match &args.http_api_key {
        Some(path) => Some(crate::config::read_api_key(path)?),
        None => None,
    };
    let client = Client { addr: args.http, key };
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&client).await?,
    };
    let mut body = serde_json::json!({
        "model": model, "max_tokens": args.max_tokens, "temperature": args.temperature,
        "stream": true, "stream_options": {"include_usage": true},
    });
    if let Some(seed) = args.seed {
        body["seed"] = seed.into();
    }
    let path = if args.chat {
        let mut messages: Vec<serde_json::Value> = args.system.iter().map(|s| serde_json::json!({"role": "system", "content": s})).collect();
        messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
        body["messages"] = messages.into();
        "/v1/chat/completions"
    } else {
        body["prompt"] = args.prompt.clone().into();
        "/v1/completions"
    };
    let started = Instant::now();
    let response = client.send("POST", path, Some(body.to_string()), args.peer.as_deref()).await?;
    let ran_on = response.headers().get("x-pyagent-peer").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body.collect().await.context("reading the error")?.to_bytes();
        bail!("{} ({status})", error_message(&bytes));
    }
    let mut stdout = std::io::stdout().lock();
    let mut pending = Vec::new();
    let mut first_token = None;
    let mut usage = serde_json::Value::Null;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the stream broke")?;
        let Some(data) = frame.data_ref() else { continue };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                continue;
            }
            let event: serde_json::Value = serde_json::from_str(data).context("a stream event")?;
            if let Some(message) = event["error"]["message"].as_str() {
                let _ = writeln!(stdout);
                bail!("the generation failed on {ran_on}: {message}");
            }
            let choice = &event["choices"][0];
            let text = choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or("");
            if !text.is_empty() {
                first_token.get_or_insert_with(|| started.elapsed());
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            if !event["usage"].is_null() {
                usage = event["usage"].clone();
            }
        }
    }
    let _ = writeln!(stdout);
    let secs = started.elapsed().as_secs_f64();
    let tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    let ttft = first_token.map_or(secs, |d| d.as_secs_f64());
    let decode = secs - ttft;
    eprintln!(
        "{model} on {ran_on}: {} prompt tokens ({} cached), {tokens} generated; first token after {:.0} ms, {:.1} tokens/s",
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        ttft * 1000.0,
        if decode > 0.0 && tokens > 1 { (tokens - 1) as f64 / decode } else { 0.0 },
    );
    Ok(())
}
