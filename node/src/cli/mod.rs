//! Command-line interface: `pyagent node | keygen | status | peers | call | analyze | history |
//! shards | propose | ballot | tally | generate | infer | improve | bench-transport`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, Overrides};

pub mod bench_transport;
pub mod improve;
pub mod infer;
mod render;

pub use render::{render_history, render_peers, render_shards, render_status, render_tally};

#[derive(Debug, Parser)]
#[command(name = "pyagent", version, about = "PyAgent Swarm: a peer-to-peer swarm of agents for LAN machines and server fleets")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up; boxing buys nothing
pub enum CliCommand {
    /// Run a swarm node.
    Node(NodeArgs),
    /// Write a new pre-shared swarm key (for private swarms).
    Keygen(KeygenArgs),
    /// Show the local node's status.
    Status(QueryArgs),
    /// List the peers in the local node's membership view.
    Peers(QueryArgs),
    /// Send one raw request to the local API and print the reply (for scripts and debugging).
    Call(CallArgs),
    /// Analyse a Python tree with the swarm's agents (complexity, import cycles, tokens).
    Analyze(crate::analyze::AnalyzeArgs),
    /// Show the history of a task, proposal or request, or a page of one shard, as the
    /// swarm holds it (read from the shard's owners).
    History(HistoryArgs),
    /// Show the history shards: owners, local entries and digests, and a summary.
    Shards(ShardsArgs),
    /// Open a proposal: a question with options, or a review of candidate rewrites.
    Propose(ProposeArgs),
    /// Cast this node's ballot on a proposal.
    Ballot(BallotArgs),
    /// Show a proposal's tally and every ballot.
    Tally(TallyArgs),
    /// Generate text with a local model (ONNX Runtime), streaming it; prints tokens/s.
    Generate(GenerateArgs),
    /// A completion from the swarm through the local node (placed on the peer that fits),
    /// streamed; prints tokens/s and where it ran.
    Infer(infer::InferArgs),
    /// Improve one Python function: candidate rewrites from a node's model (llm.suggest),
    /// voted on by every node's agents; prints the winner as a unified diff.
    Improve(improve::ImproveArgs),
    /// Measure one stream's throughput over each transport stack (TCP + Noise + Yamux,
    /// with a swarm key, QUIC, the KV bulk path) on loopback, next to raw TCP.
    BenchTransport(bench_transport::BenchTransportArgs),
}

/// How the query commands reach the local node.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The node's API endpoint.
    #[arg(long, env = "PYAGENT_API_ENDPOINT", default_value = "tcp://127.0.0.1:7761", value_name = "ENDPOINT")]
    pub api: String,
    /// How long to wait for the node, in milliseconds.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    pub timeout_ms: u64,
}

impl ApiArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

#[derive(Debug, Args)]
pub struct ProposeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// What the vote is about.
    #[arg(long)]
    pub title: String,
    /// An option (repeatable); with --candidate, labels for the candidates.
    #[arg(long = "option", value_name = "LABEL")]
    pub options: Vec<String>,
    /// plurality, approval, borda, irv, schulze, quadratic, trust.
    #[arg(long, default_value = "schulze")]
    pub method: String,
    /// Quadratic: credits per voter.
    #[arg(long)]
    pub credits: Option<u64>,
    /// Trust-weighted: PEER=WEIGHT (repeatable; PEER may be PeerId/agent).
    #[arg(long = "weight", value_name = "PEER=WEIGHT")]
    pub weights: Vec<String>,
    /// Ballots cast later than this do not count.
    #[arg(long, default_value_t = 300)]
    pub deadline_secs: u64,
    /// The result is final once this many ballots are in.
    #[arg(long)]
    pub quorum: Option<u32>,
    /// Review: the function the candidates rewrite (the agents of every node vote).
    #[arg(long, value_name = "FUNCTION", requires = "candidates")]
    pub review: Option<String>,
    /// Review: a file holding one candidate rewrite (repeatable); options default to the
    /// file names.
    #[arg(long = "candidate", value_name = "FILE")]
    pub candidates: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BallotArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    pub proposal_id: String,
    /// Ranking, most preferred first: A,B,C.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["approve", "votes"])]
    pub rank: Vec<String>,
    /// Approved options: A,C.
    #[arg(long, value_delimiter = ',', conflicts_with = "votes")]
    pub approve: Vec<String>,
    /// Quadratic votes: A=3,B=1.
    #[arg(long, value_delimiter = ',')]
    pub votes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model directory: model.onnx, tokenizer.json, config.json (scripts/prepare-model.sh).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Intra-op threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// The ONNX Runtime library [default: ORT_DYLIB_PATH, then .venv-models].
    #[arg(long, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// Run the prompt this many times in one process (later runs reuse cached blocks).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// How int4 weights are multiplied: int8, fp32, or auto (int8 where the CPU has AVX2 or
    /// Arm dot product) [default: PYAGENT_COMPUTE, then auto].
    #[arg(long, value_name = "MODE")]
    pub compute: Option<pyagent_engine::infer::ComputeChoice>,
    /// Greedy decoding by prompt lookup with drafts of K tokens (same output, fewer passes).
    #[arg(long, value_name = "K")]
    pub speculative: Option<usize>,
    /// Print each run's measurements as one JSON line on stderr.
    #[arg(long)]
    pub stats_json: bool,
    /// Guesses of the next tokens per int8-compute decode pass, at most (prompt lookup; the
    /// first rides in a row the pass runs anyway): same output, fewer passes. 0 = none.
    #[arg(long, default_value_t = pyagent_engine::infer::LOOKAHEAD, value_name = "N")]
    pub lookahead: usize,
    /// Prompt tokens per prefill pass: more can be faster, and costs memory (logits are
    /// N x vocabulary floats).
    #[arg(long, default_value_t = pyagent_engine::infer::PREFILL_CHUNK, value_name = "N")]
    pub prefill_chunk: usize,
    /// Keep only the last N tokens of the prompt (0 = all): fits a long text to a context.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_prompt_tokens: usize,
    /// The prompt is a user message: render it with the model's own chat template.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before it.
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,
    pub prompt: String,
}

#[derive(Debug, Args)]
pub struct TallyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    pub proposal_id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The `vote.propose` params of `pyagent propose`.
pub fn propose_params(args: &ProposeArgs) -> Result<serde_json::Value, String> {
    let mut weights = serde_json::Map::new();
    for w in &args.weights {
        let (peer, weight) = w.split_once('=').ok_or_else(|| format!("--weight {w:?}: expected PEER=WEIGHT"))?;
        let weight: u64 = weight.parse().map_err(|_| format!("--weight {w:?}: the weight is not a number"))?;
        weights.insert(peer.to_owned(), weight.into());
    }
    let mut params = serde_json::json!({
        "title": args.title,
        "options": args.options,
        "method": args.method,
        "deadline_secs": args.deadline_secs,
    });
    if let Some(c) = args.credits {
        params["credits"] = c.into();
    }
    if !weights.is_empty() {
        params["weights"] = weights.into();
    }
    if let Some(q) = args.quorum {
        params["quorum"] = q.into();
    }
    if let Some(function) = &args.review {
        let mut candidates = Vec::new();
        for path in &args.candidates {
            candidates.push(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if args.options.is_empty() {
            let names: Vec<String> = args.candidates.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
            params["options"] = names.into();
        }
        params["review"] = serde_json::json!({ "function": function, "candidates": candidates });
    }
    Ok(params)
}

/// The `vote.ballot` params of `pyagent ballot`.
pub fn ballot_params(args: &BallotArgs) -> Result<serde_json::Value, String> {
    let mut params = serde_json::json!({ "proposal_id": args.proposal_id });
    match (args.rank.is_empty(), args.approve.is_empty(), args.votes.is_empty()) {
        (false, true, true) => params["ranking"] = args.rank.clone().into(),
        (true, false, true) => params["approval"] = args.approve.clone().into(),
        (true, true, false) => {
            let mut votes = serde_json::Map::new();
            for v in &args.votes {
                let (option, n) = v.split_once('=').ok_or_else(|| format!("--votes {v:?}: expected OPTION=N"))?;
                let n: u64 = n.parse().map_err(|_| format!("--votes {v:?}: N is not a number"))?;
                votes.insert(option.to_owned(), n.into());
            }
            params["quadratic"] = votes.into();
        }
        _ => return Err("give one of --rank, --approve, --votes".into()),
    }
    Ok(params)
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// A task, proposal or request id (64 hex digits, as `task.submit`, `pyagent analyze
    /// --json` and `pyagent propose` give it).
    #[arg(required_unless_present = "shard", conflicts_with = "shard")]
    pub id: Option<String>,
    /// A shard (0..1023) instead: its entries in key order, a page at a time.
    #[arg(long)]
    pub shard: Option<u16>,
    /// With --shard: continue after this key (printed at the end of a page).
    #[arg(long, requires = "shard")]
    pub after: Option<String>,
    /// With --shard: entries per page.
    #[arg(long, requires = "shard")]
    pub limit: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShardsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON (every shard: owners, local count, digest) instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The request, sent as is, e.g. '{"id":1,"method":"status"}'.
    pub request: String,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// TOML configuration file (then PYAGENT_* variables, then flags, override it).
    #[arg(long, env = "PYAGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: $XDG_DATA_HOME/pyagent].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Swarm namespace: only nodes of the same namespace join [default: default].
    #[arg(long, value_name = "NAME")]
    pub swarm: Option<String>,
    /// Pre-shared key file: makes the swarm private (TCP only).
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// Peer to dial at start and whenever disconnected (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Agents to host, comma-separated, or `none` [default: all built-in].
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Address of the p2p listener [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub listen_ip: Option<IpAddr>,
    /// TCP (and QUIC) port of the p2p listener [default: 7760].
    #[arg(long, value_name = "PORT")]
    pub p2p_port: Option<u16>,
    /// Do not use QUIC.
    #[arg(long)]
    pub no_quic: bool,
    /// Do not use mDNS (use --bootstrap).
    #[arg(long)]
    pub no_mdns: bool,
    /// Restrict mDNS to this interface (repeatable).
    #[arg(long, value_name = "NAME")]
    pub mdns_interface: Vec<String>,
    /// API request socket [default: 127.0.0.1:7761].
    #[arg(long, value_name = "IP:PORT")]
    pub api: Option<SocketAddr>,
    /// API event socket [default: 127.0.0.1:7762].
    #[arg(long, value_name = "IP:PORT")]
    pub events: Option<SocketAddr>,
    /// Allow binding the API off loopback (it has no authentication).
    #[arg(long)]
    pub api_allow_non_loopback: bool,
    /// Model directory to serve (ONNX; scripts/prepare-model.sh), repeatable; served under
    /// the directory's name [default: none; the node can still ask its peers].
    #[arg(long, value_name = "DIR")]
    pub model: Vec<PathBuf>,
    /// Where models run [default: auto: CUDA when a GPU and onnxruntime-gpu are there].
    #[arg(long, value_enum)]
    pub provider: Option<crate::config::ProviderChoice>,
    /// KV block pool budget in host RAM, MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub kv_host_mb: Option<u64>,
    /// Guesses of the next tokens per int8-compute decode pass, at most; 0 = none
    /// [default: 4].
    #[arg(long, value_name = "N")]
    pub lookahead: Option<usize>,
    /// Compute every prompt prefix here instead of fetching the KV blocks peers hold.
    #[arg(long)]
    pub no_kv_fetch: bool,
    /// Move KV blocks over libp2p streams only, not over the bulk path (a TCP port
    /// beside libp2p, records sealed with AES-256-GCM).
    #[arg(long)]
    pub no_kv_bulk: bool,
    /// TCP port of the KV bulk path on the p2p listen address [default: 0, any free port].
    #[arg(long, value_name = "PORT")]
    pub kv_bulk_port: Option<u16>,
    /// This node's part in serving: prefill (computes prompts' KV blocks for decode
    /// nodes), decode (runs requests, prompts prefilled by a prefill node when there is
    /// one) or both [default: both].
    #[arg(long, value_name = "ROLE")]
    pub role: Option<pyagent_protocol::InferenceRole>,
    /// OpenAI-compatible HTTP API [default: 127.0.0.1:7763].
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<SocketAddr>,
    /// No HTTP API.
    #[arg(long, conflicts_with = "http")]
    pub no_http: bool,
    /// Allow binding the HTTP API off loopback (needs --http-api-key too).
    #[arg(long)]
    pub http_allow_non_loopback: bool,
    /// File with the bearer key HTTP clients must send (`Authorization: Bearer KEY`).
    #[arg(long, value_name = "FILE")]
    pub http_api_key: Option<PathBuf>,
    /// The ONNX Runtime library [default: ORT_DYLIB_PATH, then .venv-models].
    #[arg(long, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// Log format [default: pretty].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl NodeArgs {
    /// The flags as overrides (unset flags override nothing).
    pub fn overrides(&self) -> Overrides {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Overrides {
            data_dir: self.data_dir.clone(),
            swarm: self.swarm.clone(),
            swarm_key: self.swarm_key.clone(),
            bootstrap: list(&self.bootstrap),
            agents: list(&self.agents),
            listen_ip: self.listen_ip,
            p2p_port: self.p2p_port,
            quic: self.no_quic.then_some(false),
            mdns: self.no_mdns.then_some(false),
            mdns_interfaces: list(&self.mdns_interface),
            api_bind: self.api,
            events_bind: self.events,
            allow_non_loopback_api: self.api_allow_non_loopback.then_some(true),
            log_format: self.log_format,
            models: (!self.model.is_empty()).then(|| self.model.clone()),
            provider: self.provider,
            kv_fetch: self.no_kv_fetch.then_some(false),
            kv_bulk: self.no_kv_bulk.then_some(false),
            kv_bulk_port: self.kv_bulk_port,
            role: self.role,
            kv_host_mb: self.kv_host_mb,
            lookahead: self.lookahead,
            ort_lib: self.ort_lib.clone(),
            http: self.no_http.then_some(false),
            http_bind: self.http,
            http_allow_non_loopback: self.http_allow_non_loopback.then_some(true),
            http_api_key_file: self.http_api_key.clone(),
        }
    }

    /// Defaults, file, environment, flags: the effective configuration.
    pub fn effective_config(&self, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(Overrides::from_env(env)?);
        config.apply(self.overrides());
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub swarm_key: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why keygen failed.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("{0} already exists; pass --force to overwrite it (every node of the swarm needs the same key)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the operating system gave no randomness: {0}")]
    Random(String),
}

/// Writes a new random swarm key in the libp2p key-file format, mode 0600.
pub fn keygen(args: &KeygenArgs) -> Result<libp2p::pnet::PreSharedKey, KeygenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| KeygenError::Random(e.to_string()))?;
    let key = libp2p::pnet::PreSharedKey::new(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let write_err = |source| KeygenError::Write { path: args.swarm_key.clone(), source };
    let mut file = options.open(&args.swarm_key).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists { KeygenError::Exists(args.swarm_key.clone()) } else { write_err(e) }
    })?;
    writeln!(file, "{key}").and_then(|()| file.sync_all()).map_err(write_err)?;
    Ok(key)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_readable_private_key_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let args = KeygenArgs { swarm_key: path.clone(), force: false };
        let key = keygen(&args).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let read = crate::config::read_swarm_key(&path).unwrap();
        assert_eq!(read.fingerprint().to_string(), key.fingerprint().to_string());
        assert!(matches!(keygen(&args), Err(KeygenError::Exists(_))));
        let again = keygen(&KeygenArgs { swarm_key: path.clone(), force: true }).unwrap();
        assert_ne!(again.fingerprint().to_string(), key.fingerprint().to_string());
    }

    #[test]
    fn flags_override_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "swarm = \"file\"\n[p2p]\nport = 1000\n[mdns]\nenabled = true\n").unwrap();
        let cli = Cli::try_parse_from(["pyagent", "node", "--config", file.to_str().unwrap(), "--p2p-port", "3000", "--no-mdns"]).unwrap();
        let CliCommand::Node(args) = cli.command else { panic!("not node") };
        let env = [("PYAGENT_P2P_PORT".to_string(), "2000".to_string()), ("PYAGENT_SWARM".to_string(), "env".to_string())];
        let c = args.effective_config(env).unwrap();
        assert_eq!((c.swarm.as_str(), c.p2p.port, c.mdns.enabled), ("env", 3000, false));
    }

    #[test]
    fn agents_flag_splits_on_commas() {
        let cli = Cli::try_parse_from(["pyagent", "node", "--agents", "tokens,complexity"]).unwrap();
        let CliCommand::Node(args) = cli.command else { panic!("not node") };
        assert_eq!(args.overrides().agents, Some(vec!["tokens".to_string(), "complexity".to_string()]));
    }

}
