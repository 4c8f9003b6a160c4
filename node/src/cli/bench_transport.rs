//! `pyagent bench-transport`: one stream's throughput over each transport stack the node
//! runs, on loopback in this process, next to raw TCP (see `p2p::throughput`); or, with
//! `--send-from` / `--receive-from`, raw TCP or the KV bulk path between two hosts (see
//! `p2p::throughput_between`).

use std::io::Write;
use std::net::IpAddr;

use anyhow::{Context, bail};
use clap::Args;

use crate::p2p::throughput::{self, Stack};
use crate::p2p::throughput_between::{self as between, Ticket, TicketStack};

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
    /// Between two hosts, the sending end: listen on IP, print a ticket (one JSON line) for
    /// the receiving end, send `--mib` to the one connection that shows it, and exit. One
    /// stack: raw-tcp or bulk.
    #[arg(long, value_name = "IP", conflicts_with = "receive_from")]
    pub send_from: Option<IpAddr>,
    /// Between two hosts, the receiving end: connect to the sender at IP with the ticket it
    /// printed (`--ticket`) and print the rate (one JSON line).
    #[arg(long, value_name = "IP", requires = "ticket")]
    pub receive_from: Option<IpAddr>,
    /// The sender's ticket line (for `--receive-from`). It holds the bulk offer's key: hand
    /// it over only to the receiving end.
    #[arg(long, value_name = "JSON")]
    pub ticket: Option<String>,
}

fn frame_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (1..=throughput::MAX_FRAME_BYTES).contains(&n) { Ok(n) } else { Err(format!("between 1 and {} bytes", throughput::MAX_FRAME_BYTES)) }
}

/// Measures and prints one JSON line per stack (between hosts: the sender prints its
/// ticket, the receiver the rate).
pub async fn run(args: BenchTransportArgs) -> anyhow::Result<()> {
    if let Some(ip) = args.send_from {
        return send(&args, ip).await;
    }
    if let Some(ip) = args.receive_from {
        return receive(&args, ip).await;
    }
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

fn one_stack(args: &BenchTransportArgs) -> anyhow::Result<TicketStack> {
    match args.stacks.as_slice() {
        [stack] => TicketStack::of(*stack).with_context(|| format!("between hosts only raw-tcp and bulk can be measured, not {}", stack.name())),
        _ => bail!("between hosts name exactly one --stack: raw-tcp or bulk"),
    }
}

async fn send(args: &BenchTransportArgs, ip: IpAddr) -> anyhow::Result<()> {
    let stack = one_stack(args)?;
    let sending = between::listen(stack, ip).await.with_context(|| format!("listening on {ip}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(sending.ticket())?)?;
    out.flush()?;
    drop(out);
    sending.send(args.mib << 20, args.frame_bytes).await.context("sending to the receiver")
}

async fn receive(args: &BenchTransportArgs, ip: IpAddr) -> anyhow::Result<()> {
    let line = args.ticket.as_deref().context("--receive-from needs --ticket")?;
    let ticket: Ticket = serde_json::from_str(line.trim()).context("--ticket: not a ticket line that --send-from printed")?;
    let m = between::receive(ip, &ticket).await.with_context(|| format!("receiving from {ip}:{}", ticket.port))?;
    let line = serde_json::json!({
        "stack": m.stack,
        "from": ip.to_string(),
        "bytes": m.bytes,
        "seconds": m.seconds,
        "gbytes_per_s": milli(m.gbytes_per_s),
    });
    println!("{line}");
    Ok(())
}

/// `x` to three decimals, for printing.
fn milli(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
