//! Text forms of the API's results for people: `status`, `peers`, `tally`, `history`.

use std::time::Duration;

use pyagent_protocol::api::{PeersResult, StatusResult, TallyResult};

/// Text form of a tally.
pub fn render_tally(t: &TallyResult) -> String {
    let mut out = format!(
        "{} ({})\nproposal {}\nmethod {}, {} ballot(s), {}\n",
        t.title,
        if t.is_final { "final" } else { "open" },
        t.proposal_id,
        t.method,
        t.ballots_counted,
        match &t.winner {
            Some(w) => format!("winner: {w}"),
            None => "no winner yet".into(),
        }
    );
    out.push_str("ranking:\n");
    for (place, label) in t.ranking.iter().enumerate() {
        let score = t.options.iter().position(|o| o == label).and_then(|i| t.scores.get(i)).copied().unwrap_or_default();
        out.push_str(&format!("  {}. {label}  (score {score})\n", place + 1));
    }
    out.push_str("ballots:\n");
    for b in &t.ballots {
        let who = match &b.agent {
            Some(agent) => format!("{} / agent {agent}", b.voter),
            None => b.voter.clone(),
        };
        let choice = serde_json::to_string(&b.choice).unwrap_or_default();
        out.push_str(&format!("  {who}: {choice}\n"));
    }
    out
}

/// One line per history entry: time, kind, details, author.
pub fn render_history(result: &pyagent_protocol::api::HistoryResult) -> String {
    use pyagent_protocol::history::HistoryEvent;
    let mut out = match &result.subject {
        Some(subject) => format!("{subject} (shard {})\n", result.shard),
        None => format!("shard {}\n", result.shard),
    };
    out.push_str(&format!("  owners answered: {} of {} asked (this node aside)", result.owners_answered, result.owners_asked));
    if result.rejected > 0 {
        out.push_str(&format!("; {} entries failed verification and were left out", result.rejected));
    }
    out.push('\n');
    if result.entries.is_empty() {
        out.push_str("  no entries\n");
    }
    for record in &result.entries {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(record.at_unix_ms);
        let what = match &record.event {
            HistoryEvent::Submitted { capability, files, requester } => format!("submitted  {capability}, {files} file(s), by {requester}"),
            HistoryEvent::Assigned { executor } => format!("assigned   to {executor}"),
            HistoryEvent::Result { executor, completed: true, detail } => format!("completed  by {executor} ({detail})"),
            HistoryEvent::Result { executor, completed: false, detail } => format!("failed     at {executor}: {detail}"),
            HistoryEvent::Done => "done".to_owned(),
            HistoryEvent::Proposal(spec) => format!("proposal   {:?}, {} options, {}", spec.title, spec.options.len(), spec.method.name()),
            HistoryEvent::Ballot(b) => format!("ballot     from {}", b.voter_key()),
            HistoryEvent::Tally { winner } => format!("tally      winner {}", winner.as_deref().unwrap_or("none")),
            HistoryEvent::Inference { model, detail } => format!("inference  {model} {detail}"),
        };
        let subject = if result.subject.is_none() { format!("{}… ", &record.id[..12]) } else { String::new() };
        out.push_str(&format!("  {}  {subject}{what}  [{}…]\n", humantime::format_rfc3339_millis(at), record.author.chars().take(16).collect::<String>()));
    }
    if let Some(next) = &result.next_after {
        out.push_str(&format!("  more: --after {next}\n"));
    }
    out
}

/// The shard summary for people, and the shards that need attention.
pub fn render_shards(result: &pyagent_protocol::api::ShardsResult) -> String {
    let mut out = format!(
        "{} members, R = {}, W = {}\nthis node: owns {} of {} shards, holds {} entries\n",
        result.members,
        result.replicas,
        result.write_quorum,
        result.owned_here,
        result.shards.len(),
        result.entries_here
    );
    out.push_str(&format!(
        "under-replicated shards: {}{}\n",
        result.under_replicated,
        if result.under_replicated > 0 { " (fewer live members than R)" } else { "" }
    ));
    out.push_str(&format!("shards differing from a co-owner at the last comparison: {}\n", result.differing.len()));
    out.push_str(&format!("hints pending: {}\n", result.hints_pending));
    out.push_str(&format!("shards being handed off (held here, not owned): {}\n", result.handoff_pending));
    let s = &result.sync;
    out.push_str(&format!(
        "anti-entropy: {} digest rounds, {} reconcile rounds, {} entries fetched, {} pushed, {} B sent, {} B received; last in-sync round {} B\n",
        s.digest_rounds, s.reconcile_rounds, s.entries_fetched, s.entries_pushed, s.bytes_sent, s.bytes_received, s.last_in_sync_round_bytes
    ));
    out
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `pyagent status` as a table.
pub fn render_status(s: &StatusResult) -> String {
    let rows = [
        ("peer id", s.peer_id.clone()),
        ("swarm", format!("{}{}", s.swarm, if s.private { " (private: swarm key)" } else { "" })),
        ("version", format!("{} (protocol {})", s.node_version, s.protocol_version)),
        ("uptime", duration(s.uptime_secs)),
        ("transports", if s.quic { "tcp, quic".into() } else { "tcp".into() }),
        ("mdns", if s.mdns { "on".into() } else { "off".into() }),
        ("peers", format!("{} members, {} connected", s.members, s.connected_peers)),
        ("capacity", s.capacity.summary()),
        (
            "inference",
            if s.capacity.models.is_empty() {
                "no model served".into()
            } else {
                s.capacity
                    .models
                    .iter()
                    .map(|i| {
                        format!(
                            "{} ({} MB, {}, {} compute), prefill {} / decode {} tokens/s, {} queued{}",
                            i.name,
                            i.model_bytes >> 20,
                            i.model_id.get(..12).unwrap_or(&i.model_id),
                            if i.compute.is_empty() { "?" } else { &i.compute },
                            i.prefill_tokens_per_s,
                            i.decode_tokens_per_s,
                            i.queued_requests,
                            if i.fits { "" } else { ", does NOT fit in free RAM" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
        ("agents", if s.agents.is_empty() { "-".into() } else { s.agents.join(", ") }),
        ("tasks", format!("{} submitted, {} running, {} executed", s.tasks.submitted, s.tasks.running, s.tasks.executed)),
        (
            "kv blocks",
            format!(
                "{} fetched ({} over the bulk path), {} served, {} fetch failures ({} bad blocks), {} prefixes partly computed instead, {} offloaded, {} kept for peers, {} prefilled by peers, {} prompts prefilled for peers",
                s.kv.blocks_fetched,
                s.kv.blocks_fetched_bulk,
                s.kv.blocks_served,
                s.kv.fetch_failures,
                s.kv.bad_blocks,
                s.kv.fallbacks,
                s.kv.blocks_offloaded,
                s.kv.blocks_kept_for_peers,
                s.kv.blocks_prefilled_by_peers,
                s.kv.prefills_served
            ),
        ),
        ("data dir", s.data_dir.clone()),
        ("listening", s.listen_addrs.join("\n            ")),
    ];
    rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect()
}

/// `pyagent peers` as a table.
pub fn render_peers(p: &PeersResult) -> String {
    if p.peers.is_empty() {
        return "no peers in view\n".into();
    }
    let agents = |a: &[String]| if a.is_empty() { "-".to_owned() } else { a.join(",") };
    let width = p.peers.iter().map(|peer| agents(&peer.agents).len()).max().unwrap_or(0).max("AGENTS".len());
    let mut out = format!(
        "{:<52}  {:<4}  {:>5}  {:>8}  {:>9}  {:<26}  {:<width$}  {}\n",
        "PEER ID", "CONN", "PROTO", "UPTIME", "LAST SEEN", "CAPACITY", "AGENTS", "ADDRESS"
    );
    for peer in &p.peers {
        out.push_str(&format!(
            "{:<52}  {:<4}  {:>5}  {:>8}  {:>8}s  {:<26}  {:<width$}  {}\n",
            peer.peer_id,
            if peer.connected { "yes" } else { "no" },
            peer.protocol_version,
            duration(peer.uptime_secs),
            peer.last_seen_ms / 1000,
            peer.capacity.summary(),
            agents(&peer.agents),
            peer.listen_addrs.first().map(String::as_str).unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_table_shows_agents() {
        let peer = pyagent_protocol::api::PeerInfo {
            peer_id: "12D3KooWTest".into(),
            node_version: "pyagent/0".into(),
            protocol_version: 7,
            connected: true,
            listen_addrs: vec!["/ip4/10.77.0.11/tcp/7760".into()],
            agents: vec!["tokens".into()],
            capacity: Default::default(),
            uptime_secs: 5,
            last_seen_ms: 1200,
        };
        let table = render_peers(&PeersResult { peers: vec![peer] });
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("AGENTS") && lines[0].contains("PROTO"), "{table}");
        assert!(lines[1].contains("tokens") && lines[1].contains("/ip4/10.77.0.11/tcp/7760"), "{table}");
        let proto_at = lines[0].find("PROTO").unwrap();
        assert_eq!(lines[1][proto_at..proto_at + 5].trim(), "7", "{table}");
    }

    #[test]
    fn duration_is_compact() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m05s");
        assert_eq!(duration(7300), "2h01m");
    }
}
