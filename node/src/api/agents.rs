//! The external-agent methods of the local API: `agent.register`, `agent.next` (long poll,
//! also the heartbeat), `agent.result`. See [`crate::external`].

use std::time::Duration;

use pyagent_protocol::api::{
    self, AgentJob, AgentNextParams, AgentNextResult, AgentRegisterParams, AgentRegisterResult, AgentResultParams,
    AgentResultResult, ApiError, JobFile, MAX_AGENT_POLL_MS, code,
};
use pyagent_protocol::task::{MAX_RESULT_BYTES, RESULT_TOO_LARGE, TaskId, TaskOutcome};
use serde_json::Value;

use crate::api::ApiContext;
use crate::external::AGENT_TTL;

fn refused(id: &Value, method: &str, e: impl std::fmt::Display) -> Vec<u8> {
    ApiError::new(id.clone(), code::INVALID_PARAMS, format!("{method}: {e}")).to_reply()
}

pub fn register(id: &Value, ctx: &ApiContext, caller: &[u8], params: AgentRegisterParams) -> Vec<u8> {
    match ctx.external.register(caller, &params.name, &params.capabilities) {
        Ok(agent_id) => api::result_reply(id, &AgentRegisterResult { agent_id, poll_within_ms: AGENT_TTL.as_millis() as u64 }),
        Err(e) => refused(id, "agent.register", e),
    }
}

pub async fn next(id: &Value, ctx: &ApiContext, params: AgentNextParams) -> Vec<u8> {
    let timeout = Duration::from_millis(params.timeout_ms.unwrap_or(MAX_AGENT_POLL_MS).min(MAX_AGENT_POLL_MS));
    match ctx.external.next(params.agent_id, timeout).await {
        Ok(job) => {
            let job = job.map(|j| AgentJob {
                task_id: j.task.to_string(),
                capability: j.capability,
                files: j.files.into_iter().map(|f| JobFile { path: f.path, text: f.text }).collect(),
            });
            api::result_reply(id, &AgentNextResult { job })
        }
        Err(e) => refused(id, "agent.next", e),
    }
}

pub fn result(id: &Value, ctx: &ApiContext, params: AgentResultParams) -> Vec<u8> {
    let task = match params.task_id.parse::<TaskId>() {
        Ok(t) => t,
        Err(e) => return refused(id, "agent.result", e),
    };
    let outcome = match (params.result, params.error) {
        (Some(result), None) => {
            let result_json = result.to_string();
            if result_json.len() > MAX_RESULT_BYTES {
                TaskOutcome::Failed {
                    reason: format!("{RESULT_TOO_LARGE} the agent's result of {} bytes is over the limit of {MAX_RESULT_BYTES}", result_json.len()),
                }
            } else {
                TaskOutcome::Completed { result_json }
            }
        }
        (None, Some(reason)) => TaskOutcome::Failed { reason: reason.chars().take(4096).collect() },
        _ => return refused(id, "agent.result", "give exactly one of \"result\" and \"error\""),
    };
    match ctx.external.result(params.agent_id, &task, outcome) {
        Ok(accepted) => api::result_reply(id, &AgentResultResult { accepted }),
        Err(e) => refused(id, "agent.result", e),
    }
}
