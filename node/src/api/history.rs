//! The history methods of the local API: `history` (a subject's entries or a page of a
//! shard, through the DHT), `history.append` (inference entries) and `shards`. See
//! [`crate::history`].

use pyagent_protocol::api::{
    self, AppendedEntry, HistoryAppendParams, HistoryAppendResult, HistoryParams, HistoryResult, MAX_APPEND_ENTRIES, ShardInfo, ShardsResult,
};
use pyagent_protocol::history::{EntryKey, HistoryEvent, HistoryRecord, MAX_DETAIL_LEN, SHARDS, ShardId, SubjectId, shard_of};
use serde_json::Value;

use super::replies::{invalid, unavailable};
use crate::api::ApiContext;
use crate::history::ReadReport;

/// A page of a shard holds this many entries unless asked otherwise.
pub const DEFAULT_PAGE: u32 = 1000;

fn parse_key(hex: &str) -> Result<EntryKey, String> {
    let bad = || format!("after: {:?} is not an entry key (128 hex digits: subject and id)", hex.chars().take(140).collect::<String>());
    if hex.len() != 128 || !hex.is_ascii() {
        return Err(bad());
    }
    let subject: SubjectId = hex[..64].parse().map_err(|_| bad())?;
    let id: SubjectId = hex[64..].parse().map_err(|_| bad())?;
    Ok(EntryKey { subject, id: pyagent_protocol::history::EntryId(id.0) })
}

fn key_hex(key: &EntryKey) -> String {
    format!("{}{}", key.subject, key.id)
}

fn records(report: &ReadReport) -> Vec<HistoryRecord> {
    report.entries.iter().map(|(id, e)| HistoryRecord::of(e, id)).collect()
}

pub async fn history(id: &Value, ctx: &ApiContext, params: HistoryParams) -> Vec<u8> {
    let history = ctx.client.history();
    match (params.id, params.shard) {
        (Some(subject), None) => {
            if params.after.is_some() || params.limit.is_some() {
                return invalid(id, "history: after and limit page a shard; give them with shard, not id");
            }
            let subject: SubjectId = match subject.parse() {
                Ok(s) => s,
                Err(e) => return invalid(id, format!("history: {e}")),
            };
            match history.read(subject).await {
                Ok(report) => api::result_reply(
                    id,
                    &HistoryResult {
                        subject: Some(subject.to_string()),
                        shard: shard_of(&subject).0,
                        entries: records(&report),
                        owners_asked: report.owners_asked,
                        owners_answered: report.owners_answered,
                        rejected: report.rejected,
                        more: report.more,
                        next_after: None,
                    },
                ),
                Err(e) => unavailable(id, format!("history: {e}")),
            }
        }
        (None, Some(n)) => {
            let Some(shard) = ShardId::new(n) else {
                return invalid(id, format!("history: shard {n} out of range 0..{SHARDS}"));
            };
            let after = match params.after.as_deref().map(parse_key).transpose() {
                Ok(a) => a,
                Err(e) => return invalid(id, format!("history: {e}")),
            };
            let limit = params.limit.unwrap_or(DEFAULT_PAGE) as usize;
            if limit == 0 || limit > crate::history::book::MAX_READ_ENTRIES {
                return invalid(id, format!("history: limit must be 1..={}", crate::history::book::MAX_READ_ENTRIES));
            }
            match history.read_shard(shard, after, limit).await {
                Ok(report) => {
                    let next_after = report.more.then(|| report.entries.last().map(|(eid, e)| key_hex(&EntryKey { subject: e.body.subject, id: *eid }))).flatten();
                    api::result_reply(
                        id,
                        &HistoryResult {
                            subject: None,
                            shard: shard.0,
                            entries: records(&report),
                            owners_asked: report.owners_asked,
                            owners_answered: report.owners_answered,
                            rejected: report.rejected,
                            more: report.more,
                            next_after,
                        },
                    )
                }
                Err(e) => unavailable(id, format!("history: {e}")),
            }
        }
        _ => invalid(id, "history: give either id (a task, proposal or request id) or shard (0..1023)"),
    }
}

pub async fn append(id: &Value, ctx: &ApiContext, params: HistoryAppendParams) -> Vec<u8> {
    if params.entries.is_empty() || params.entries.len() > MAX_APPEND_ENTRIES {
        return invalid(id, format!("history.append: 1 to {MAX_APPEND_ENTRIES} entries, got {}", params.entries.len()));
    }
    let mut events = Vec::with_capacity(params.entries.len());
    for (i, e) in params.entries.into_iter().enumerate() {
        let subject: SubjectId = match e.subject.parse() {
            Ok(s) => s,
            Err(err) => return invalid(id, format!("history.append: entries[{i}].subject: {err}")),
        };
        if e.model.is_empty() || e.model.len() > 256 {
            return invalid(id, format!("history.append: entries[{i}].model: 1-256 bytes"));
        }
        if e.detail.len() > MAX_DETAIL_LEN {
            return invalid(id, format!("history.append: entries[{i}].detail: {} bytes, limit {MAX_DETAIL_LEN}", e.detail.len()));
        }
        events.push((subject, HistoryEvent::Inference { model: e.model, detail: e.detail }));
    }
    match ctx.client.history().append(events).await {
        Ok(report) => api::result_reply(
            id,
            &HistoryAppendResult {
                entries: report.entries.iter().map(|(eid, shard, copies)| AppendedEntry { id: eid.to_string(), shard: shard.0, copies: *copies }).collect(),
                acknowledged: report.acknowledged,
                hinted: report.hinted,
                write_quorum: report.write_quorum,
            },
        ),
        Err(e) => unavailable(id, format!("history.append: {e}")),
    }
}

pub async fn shards(id: &Value, ctx: &ApiContext) -> Vec<u8> {
    let report = match ctx.client.history().shards().await {
        Ok(r) => r,
        Err(e) => return unavailable(id, format!("shards: {e}")),
    };
    let me = ctx.client.history_peer();
    let replicas = report.settings.replicas;
    let shards: Vec<ShardInfo> = report
        .shards
        .iter()
        .map(|(s, owners, fp)| ShardInfo {
            shard: s.0,
            owners: owners.iter().map(ToString::to_string).collect(),
            owned_here: owners.contains(&me),
            count: fp.count,
            digest: fp.short(),
        })
        .collect();
    let result = ShardsResult {
        replicas,
        write_quorum: report.settings.write_quorum,
        members: report.members.len(),
        owned_here: shards.iter().filter(|s| s.owned_here).count(),
        entries_here: shards.iter().map(|s| s.count).sum(),
        under_replicated: shards.iter().filter(|s| s.owners.len() < replicas).count(),
        differing: report.differing.iter().map(|s| s.0).collect(),
        hints_pending: report.hints_pending,
        handoff_pending: report.handoff_pending,
        appends_in_flight: report.appends_in_flight,
        shards,
        sync: report.sync,
    };
    api::result_reply(id, &result)
}
