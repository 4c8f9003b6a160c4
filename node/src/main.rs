//! `pyagent`: parse the command line, load the configuration, run, and shut down
//! gracefully on SIGINT/SIGTERM. All logic lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pyagent_node::api::client as api_client;
use pyagent_node::cli::{self, CallArgs, Cli, CliCommand, NodeArgs, QueryArgs};
use pyagent_protocol::api::{PeersResult, StatusResult};

// Agents allocate many small syntax-tree nodes: mimalloc handles that far better than
// glibc's allocator (about a third of the analysis time went to malloc/free).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a configuration error (as for a usage error).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        CliCommand::Node(args) => return runtime.block_on(run_node(args)),
        CliCommand::Keygen(args) => cli::keygen(&args).map(|key| {
            println!("wrote swarm key {} (fingerprint {})", args.swarm_key.display(), key.fingerprint());
            println!("copy it to every node of the swarm and start them with --swarm-key {}", args.swarm_key.display());
        }).map_err(anyhow::Error::from),
        CliCommand::Status(args) => runtime.block_on(query::<StatusResult>(args, "status", cli::render_status)),
        CliCommand::Peers(args) => runtime.block_on(query::<PeersResult>(args, "peers", cli::render_peers)),
        CliCommand::Call(args) => return runtime.block_on(call(args)),
        CliCommand::Analyze(args) => return runtime.block_on(analyze(args)),
        CliCommand::History(args) => runtime.block_on(history(args)),
        CliCommand::Shards(args) => runtime.block_on(shards(args)),
        CliCommand::Propose(args) => runtime.block_on(propose(args)),
        CliCommand::Ballot(args) => runtime.block_on(ballot(args)),
        CliCommand::Tally(args) => runtime.block_on(tally(args)),
        CliCommand::Generate(args) => return generate(&args),
        CliCommand::Infer(args) => runtime.block_on(cli::infer::run(args)),
        CliCommand::Improve(args) => runtime.block_on(cli::improve::run(args)),
        CliCommand::BenchTransport(args) => runtime.block_on(cli::bench_transport::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(args: NodeArgs) -> ExitCode {
    let config = match args.effective_config(std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Validated first, so that --print-config never shows a configuration the start refuses.
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    pyagent_node::logging::init(settings.log_format);
    for var in pyagent_node::config::unknown_env_vars(std::env::vars()) {
        tracing::warn!("ignoring unknown environment variable {var} (known: pyagent node --help, README)");
    }
    // Before the node starts: a signal that arrives while it starts (right after its
    // "node started" line, say) must stop it gracefully, not kill it.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let node = match pyagent_node::Node::start(settings).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: cannot start the node: {e}");
            return ExitCode::FAILURE;
        }
    };
    signals.wait().await;
    node.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

/// `status` and `peers`: one API call, printed as JSON or as a table.
async fn query<T: serde::de::DeserializeOwned + serde::Serialize>(
    args: QueryArgs,
    method: &str,
    render: fn(&T) -> String,
) -> anyhow::Result<()> {
    let result: T = api_client::call(&args.api.api, method, args.api.timeout()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", render(&result));
    }
    Ok(())
}

/// This process's peak resident memory so far (Linux: `VmHWM` of /proc/self/status).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Local generation: exit 0, or 1 with the reason (no runtime, bad model, ...).
fn generate(args: &cli::GenerateArgs) -> ExitCode {
    use pyagent_engine::infer::{self, Engine, GenerateOptions, Sampling};
    use std::io::Write;
    // The engine's own timings (RUST_LOG=pyagent_engine=debug); quiet otherwise.
    if std::env::var_os("RUST_LOG").is_some() {
        pyagent_node::logging::init(pyagent_node::config::LogFormat::Pretty);
    }
    let run = || -> anyhow::Result<()> {
        let env = infer::environment(args.ort_lib.as_deref()).context("inference is off")?;
        let model = match args.compute {
            Some(choice) => infer::ModelDir::open_with(&args.model, choice)?,
            None => infer::ModelDir::open(&args.model)?,
        };
        eprintln!("{}: {}", args.model.display(), model.compute);
        let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let pool = pyagent_engine::kv::PoolConfig { host_bytes: 256 << 20, ..Default::default() };
        let mut engine = Engine::new(model, env, threads, &pool)?;
        engine.prefill_chunk = args.prefill_chunk.max(1);
        engine.lookahead = args.lookahead;
        let text = if args.chat {
            use pyagent_engine::chat::ChatMessage;
            let template = engine.model.chat_template().with_context(|| format!("--chat with {}", args.model.display()))?;
            let mut messages: Vec<ChatMessage> = args.system.iter().map(|s| ChatMessage::new("system", s)).collect();
            messages.push(ChatMessage::new("user", &args.prompt));
            template.render(&messages, true).context("--chat")?
        } else {
            args.prompt.clone()
        };
        let mut prompt = engine.model.encode(&text)?;
        if args.max_prompt_tokens > 0 && prompt.len() > args.max_prompt_tokens {
            prompt.drain(..prompt.len() - args.max_prompt_tokens);
        }
        let options = GenerateOptions {
            max_tokens: args.max_tokens,
            sampling: Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed },
            stop: args.stop.clone(),
            keep_logits: false,
            logprobs: None,
        };
        let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        for _ in 0..args.repeat.max(1) {
            if let Some(k) = args.speculative {
                let started = std::time::Instant::now();
                let out = engine.speculative(&prompt, args.max_tokens, k)?;
                let secs = started.elapsed().as_secs_f64();
                println!("{}", engine.model.decode(&out.tokens)?);
                if args.stats_json {
                    eprintln!("{}", serde_json::json!({ "mode": "speculative", "compute": engine.model.compute.mode, "k": k, "tokens": out.tokens.len(), "passes": out.passes, "accepted": out.accepted, "secs": secs, "peak_rss_bytes": peak_rss_bytes() }));
                } else {
                    eprintln!("{} tokens in {} passes ({} drafted tokens accepted): {:.1} tokens/s", out.tokens.len(), out.passes, out.accepted, rate(out.tokens.len(), secs));
                }
                continue;
            }
            let mut stdout = std::io::stdout().lock();
            let out = engine.generate(&prompt, &options, |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })?;
            let _ = writeln!(stdout);
            if args.stats_json {
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "mode": "generate", "compute": engine.model.compute.mode, "prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens,
                        "prefill_secs": out.prefill_secs, "tokens": out.tokens.len(), "decode_secs": out.decode_secs,
                        "lookahead_guessed": out.lookahead.guessed, "lookahead_right": out.lookahead.right,
                        "peak_rss_bytes": peak_rss_bytes(),
                    })
                );
            } else {
                eprintln!(
                    "{} prompt tokens ({} cached): prefill {:.1} tokens/s, first token after {:.1} ms; {} generated: decode {:.1} tokens/s ({} passes saved by lookahead)",
                    out.prompt_tokens,
                    out.cached_tokens,
                    rate(out.prompt_tokens - out.cached_tokens, out.prefill_secs),
                    out.prefill_secs * 1000.0,
                    out.tokens.len(),
                    rate(out.tokens.len(), out.decode_secs),
                    out.lookahead.right
                );
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn propose(args: cli::ProposeArgs) -> anyhow::Result<()> {
    let params = cli::propose_params(&args).map_err(anyhow::Error::msg)?;
    let result: pyagent_protocol::api::VoteProposeResult = api_client::call_with(&args.api.api, "vote.propose", params, args.api.timeout()).await?;
    println!("{}", result.proposal_id);
    Ok(())
}

async fn ballot(args: cli::BallotArgs) -> anyhow::Result<()> {
    let params = cli::ballot_params(&args).map_err(anyhow::Error::msg)?;
    let _: pyagent_protocol::api::VoteBallotResult = api_client::call_with(&args.api.api, "vote.ballot", params, args.api.timeout()).await?;
    println!("ballot cast on {}", args.proposal_id);
    Ok(())
}

async fn tally(args: cli::TallyArgs) -> anyhow::Result<()> {
    let params = serde_json::json!({ "proposal_id": args.proposal_id });
    let result: pyagent_protocol::api::TallyResult = api_client::call_with(&args.api.api, "vote.tally", params, args.api.timeout()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", cli::render_tally(&result));
    }
    Ok(())
}

async fn history(args: cli::HistoryArgs) -> anyhow::Result<()> {
    let params = pyagent_protocol::api::HistoryParams { id: args.id, shard: args.shard, after: args.after, limit: args.limit };
    let params = serde_json::to_value(params)?;
    let result: pyagent_protocol::api::HistoryResult =
        api_client::call_with(&args.api.api, "history", params, args.api.timeout()).await.context("history")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", cli::render_history(&result));
    }
    Ok(())
}

async fn shards(args: cli::ShardsArgs) -> anyhow::Result<()> {
    let result: pyagent_protocol::api::ShardsResult =
        api_client::call_with(&args.api.api, "shards", serde_json::json!({}), args.api.timeout()).await.context("shards")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", cli::render_shards(&result));
    }
    Ok(())
}

/// Exit 0 when every task completed, 1 when the swarm could not finish (the partial
/// report is still printed), 2 when there was nothing to analyse.
async fn analyze(args: pyagent_node::analyze::AnalyzeArgs) -> ExitCode {
    use pyagent_node::analyze::{self, AnalyzeError};
    match analyze::run(&args).await {
        Ok(analysis) => {
            if args.json {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let written = analysis.write_json(&mut out).map_err(std::io::Error::from).and_then(|()| {
                    use std::io::Write;
                    writeln!(out)?;
                    out.flush()
                });
                if let Err(e) = written {
                    eprintln!("error: cannot write the result: {e}");
                    return ExitCode::FAILURE;
                }
            } else {
                print!("{}", analysis.render(args.top));
            }
            if analysis.finished() {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the swarm could not finish {} task(s)", analysis.failed.len());
                ExitCode::FAILURE
            }
        }
        Err(e @ (AnalyzeError::Walk(_) | AnalyzeError::Empty { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the reply; exit 0 for a result, 1 for an error reply or no reply.
async fn call(args: CallArgs) -> ExitCode {
    match api_client::call_raw(&args.api.api, args.request.into_bytes(), args.api.timeout()).await {
        Ok(reply) => {
            println!("{}", String::from_utf8_lossy(&reply));
            let is_result = serde_json::from_slice::<serde_json::Value>(&reply).is_ok_and(|v| v.get("result").is_some());
            if is_result { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

