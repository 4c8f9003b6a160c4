//! `pyagent bench-transport`: one stream's throughput over each transport stack the node
//! runs, on loopback in this process, next to raw TCP (see `p2p::throughput`).

use anyhow::Context;
use clap::Args;

use crate::p2p::throughput::{self, Stack};

/// Bytes of one SmolLM2 KV block as a fetch sends it (fp32, 16 tokens, 30 layers).
const KV_BLOCK_BYTES: usize = 737_280;

#[derive(Debug, Args)]
pub struct BenchTransportArgs {
    /// Mebibytes to move over each stack.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub mib: u64,
    /// Bytes per write (default: one SmolLM2 KV block).
    #[arg(long, default_value_t = KV_BLOCK_BYTES, value_parser = frame_bytes)]
    pub frame_bytes: usize,
    /// The stacks to measure [default: all]; repeat for several.
    #[arg(long = "stack", value_enum)]
    pub stacks: Vec<Stack>,
    /// Streams of one connection to spread the bytes over (raw TCP: always one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// Runs of each stack (the best and every run are printed).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
}

fn frame_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (1..=64 << 20).contains(&n) { Ok(n) } else { Err("between 1 and 67108864 bytes".into()) }
}

/// Measures and prints one JSON line per stack.
pub async fn run(args: BenchTransportArgs) -> anyhow::Result<()> {
    let stacks = if args.stacks.is_empty() { Stack::ALL.to_vec() } else { args.stacks.clone() };
    let mut raw = None;
    for stack in stacks {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let m = throughput::measure(stack, args.mib << 20, args.frame_bytes, args.streams as usize).await.with_context(|| format!("measuring {}", stack.name()))?;
            runs.push(m.gbytes_per_s);
        }
        let best = runs.iter().copied().fold(0.0, f64::max);
        if stack == Stack::RawTcp {
            raw = Some(best);
        }
        let over_raw = raw.filter(|_| stack != Stack::RawTcp).map(|r| milli(best / r));
        let line = serde_json::json!({
            "stack": stack.name(),
            "mib": args.mib,
            "frame_bytes": args.frame_bytes,
            "streams": if matches!(stack, Stack::RawTcp | Stack::Bulk) { 1 } else { args.streams },
            "best_gbytes_per_s": milli(best),
            "runs_gbytes_per_s": runs.iter().copied().map(milli).collect::<Vec<_>>(),
            "over_raw_tcp": over_raw,
        });
        println!("{line}");
    }
    Ok(())
}

/// `x` to three decimals, for printing.
fn milli(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
