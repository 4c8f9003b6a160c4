//! `pyagent improve FILE --function NAME`: the loop the swarm exists for. A node with the
//! `llm` agent proposes candidate rewrites of the function (`llm.suggest`, placed like any
//! task); the candidates and the original go into a `review` proposal the built-in agents
//! of every node vote on (one that does not parse, or changes the signature, ranks last);
//! the winner is printed as a unified diff of the file, or the original won.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use pyagent_protocol::api::{PeersResult, StatusResult, TallyResult, TaskSubmitResult, TaskWaitResult};
use serde_json::json;

use super::ApiArgs;
use crate::api::client::call_with;
use crate::tasks::suggest::{REQUEST_FILE, SUGGEST, SuggestRequest};

/// The agents that vote on reviews.
const REVIEWERS: [&str; 3] = ["complexity", "imports", "tokens"];

#[derive(Debug, Args)]
pub struct ImproveArgs {
    /// The Python file.
    pub file: PathBuf,
    /// The function (or method) to improve.
    #[arg(long)]
    pub function: String,
    /// Candidate rewrites to ask for.
    #[arg(long, default_value_t = 3)]
    pub candidates: u32,
    /// Seed of the sampled candidates: the same seed, the same candidates.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// The model [default: the executing node's first].
    #[arg(long)]
    pub model: Option<String>,
    /// Longest wait for the agents' ballots, seconds.
    #[arg(long, default_value_t = 20)]
    pub vote_secs: u64,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(args: ImproveArgs) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let function = pyagent_agents::functions::find(&source, &args.function).with_context(|| args.file.display().to_string())?;
    let name = args.file.file_name().map_or_else(|| "file.py".to_owned(), |n| n.to_string_lossy().into_owned());
    let request = SuggestRequest { file: name.clone(), function: args.function.clone(), candidates: args.candidates, seed: args.seed, max_tokens: args.max_tokens, model: args.model.clone() };
    let api = &args.api.api;
    let timeout = args.api.timeout();
    let files = json!([{ "path": name, "text": source }, { "path": REQUEST_FILE, "text": serde_json::to_string(&request)? }]);
    let submitted: TaskSubmitResult = call_with(api, "task.submit", json!({ "capability": SUGGEST, "files": files }), timeout).await.context("asking for candidates")?;
    if submitted.candidates == 0 {
        bail!("no node of the swarm serves {SUGGEST}: start one with --model DIR");
    }
    eprintln!("asking for {} candidate rewrites of {} (task {})", args.candidates, args.function, submitted.task_id);
    let report = wait_task(api, &submitted.task_id, timeout).await?;
    let result: serde_json::Value = match (report.state.as_str(), &report.result) {
        ("completed", Some(raw)) => serde_json::from_str(raw.get()).context("the suggest result")?,
        _ => bail!("{SUGGEST} failed on {}: {}", report.executor.as_deref().unwrap_or("?"), report.reason.as_deref().unwrap_or("no reason given")),
    };
    let candidates: Vec<String> = result["candidates"].as_array().map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()).unwrap_or_default();
    eprintln!("{} candidates from {} ({})", candidates.len(), report.executor.as_deref().unwrap_or("?"), result["model"].as_str().unwrap_or("?"));

    // The original is option 0: a rewrite must beat it.
    let mut texts = vec![function.text.clone()];
    texts.extend(candidates.iter().cloned());
    let options: Vec<String> = std::iter::once("original".to_owned()).chain((1..texts.len()).map(|i| format!("candidate {i}"))).collect();
    let voters = reviewers(api, timeout).await?;
    let params = json!({
        "title": format!("improve {} in {name}", args.function),
        "options": options,
        "method": "schulze",
        "deadline_secs": args.vote_secs,
        "quorum": voters,
        "review": { "function": function.text, "candidates": texts },
    });
    let proposed: pyagent_protocol::api::VoteProposeResult = call_with(api, "vote.propose", params, timeout).await.context("opening the review")?;
    let tally = wait_tally(api, &proposed.proposal_id, Duration::from_secs(args.vote_secs + 5), timeout).await?;
    eprintln!("{} ballots of {voters} expected; ranking: {}", tally.ballots.len(), tally.ranking.join(" > "));
    match tally.winner.as_deref() {
        None => bail!("no ballot was cast on the review {} within {} s", proposed.proposal_id, args.vote_secs),
        Some("original") => println!("none of the {} candidates beat the original {}", candidates.len(), args.function),
        Some(winner) => {
            let index: usize = winner.trim_start_matches("candidate ").parse().context("the winner")?;
            let improved = pyagent_agents::functions::replace(&source, &function, &texts[index]);
            let path = args.file.display().to_string();
            print!("{}", similar::TextDiff::from_lines(&source, &improved).unified_diff().context_radius(3).header(&format!("a/{path}"), &format!("b/{path}")));
        }
    }
    Ok(())
}

/// Ballots to expect: one per review agent of every node.
async fn reviewers(api: &str, timeout: Duration) -> anyhow::Result<u32> {
    let status: StatusResult = call_with(api, "status", json!({}), timeout).await?;
    let peers: PeersResult = call_with(api, "peers", json!({}), timeout).await?;
    let count = |agents: &[String]| agents.iter().filter(|a| REVIEWERS.contains(&a.as_str())).count() as u32;
    Ok(count(&status.agents) + peers.peers.iter().map(|p| count(&p.agents)).sum::<u32>())
}

async fn wait_task(api: &str, id: &str, timeout: Duration) -> anyhow::Result<pyagent_protocol::api::TaskReport> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let waited: TaskWaitResult = call_with(api, "task.wait", json!({ "task_ids": [id], "timeout_ms": 2000 }), timeout + Duration::from_secs(3)).await?;
        if let Some(report) = waited.tasks.into_iter().next()
            && matches!(report.state.as_str(), "completed" | "failed")
        {
            return Ok(report);
        }
        if Instant::now() > deadline {
            bail!("the candidates did not come within 15 minutes");
        }
    }
}

async fn wait_tally(api: &str, id: &str, limit: Duration, timeout: Duration) -> anyhow::Result<TallyResult> {
    let deadline = Instant::now() + limit;
    loop {
        let tally: TallyResult = call_with(api, "vote.tally", json!({ "proposal_id": id }), timeout).await?;
        if tally.is_final || Instant::now() > deadline {
            return Ok(tally);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
