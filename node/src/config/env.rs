//! Overrides of the configuration file: `PYAGENT_*` environment variables and flags.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::{ConfigError, LogFormat};

/// Values that override the file: from the environment or from flags. `None` keeps the
/// value below.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub swarm: Option<String>,
    pub swarm_key: Option<PathBuf>,
    pub bootstrap: Option<Vec<String>>,
    pub agents: Option<Vec<String>>,
    pub listen_ip: Option<IpAddr>,
    pub p2p_port: Option<u16>,
    pub quic: Option<bool>,
    pub mdns: Option<bool>,
    pub mdns_interfaces: Option<Vec<String>>,
    pub api_bind: Option<SocketAddr>,
    pub events_bind: Option<SocketAddr>,
    pub allow_non_loopback_api: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub models: Option<Vec<PathBuf>>,
    pub provider: Option<super::ProviderChoice>,
    pub kv_fetch: Option<bool>,
    pub kv_bulk: Option<bool>,
    pub kv_bulk_port: Option<u16>,
    pub role: Option<pyagent_protocol::InferenceRole>,
    pub kv_host_mb: Option<u64>,
    pub lookahead: Option<usize>,
    pub ort_lib: Option<PathBuf>,
    pub http: Option<bool>,
    pub http_bind: Option<SocketAddr>,
    pub http_allow_non_loopback: Option<bool>,
    pub http_api_key_file: Option<PathBuf>,
}

/// The environment variables read by [`Overrides::from_env`], and what they set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PYAGENT_DATA_DIR", "data_dir"),
    ("PYAGENT_SWARM", "swarm"),
    ("PYAGENT_SWARM_KEY", "swarm_key"),
    ("PYAGENT_BOOTSTRAP", "bootstrap (comma-separated multiaddrs)"),
    ("PYAGENT_AGENTS", "agents (comma-separated names, or none)"),
    ("PYAGENT_LISTEN_IP", "p2p.listen_ip"),
    ("PYAGENT_P2P_PORT", "p2p.port"),
    ("PYAGENT_QUIC", "p2p.quic (true/false)"),
    ("PYAGENT_MDNS", "mdns.enabled (true/false)"),
    ("PYAGENT_MDNS_INTERFACES", "mdns.interfaces (comma-separated)"),
    ("PYAGENT_API", "api.bind"),
    ("PYAGENT_MODELS", "inference.models (comma-separated directories)"),
    ("PYAGENT_PROVIDER", "inference.provider (auto/cpu/cuda)"),
    ("PYAGENT_KV_FETCH", "inference.kv_fetch (true/false)"),
    ("PYAGENT_KV_BULK", "inference.kv_bulk (true/false)"),
    ("PYAGENT_KV_BULK_PORT", "inference.kv_bulk_port (0 = any free port)"),
    ("PYAGENT_ROLE", "inference.role (prefill, decode or both)"),
    ("PYAGENT_KV_HOST_MB", "inference.kv_host_mb"),
    ("PYAGENT_LOOKAHEAD", "inference.lookahead (0 = none)"),
    ("PYAGENT_HTTP", "http.enabled (true/false)"),
    ("PYAGENT_HTTP_BIND", "http.bind"),
    ("PYAGENT_HTTP_ALLOW_NON_LOOPBACK", "http.allow_non_loopback (true/false)"),
    ("PYAGENT_HTTP_API_KEY_FILE", "http.api_key_file"),
    ("PYAGENT_ORT_LIB", "inference.ort_lib"),
    ("PYAGENT_EVENTS", "api.events_bind"),
    ("PYAGENT_API_ALLOW_NON_LOOPBACK", "api.allow_non_loopback (true/false)"),
    ("PYAGENT_LOG_FORMAT", "log.format (pretty/json)"),
];

fn parse_env<T: std::str::FromStr>(vars: &HashMap<String, String>, var: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    vars.get(var)
        .map(|raw| raw.trim().parse::<T>().map_err(|e| ConfigError::Env { var, message: format!("{raw:?}: {e}") }))
        .transpose()
}

fn parse_env_bool(vars: &HashMap<String, String>, var: &'static str) -> Result<Option<bool>, ConfigError> {
    vars.get(var)
        .map(|raw| match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::Env { var, message: format!("{raw:?} is not a boolean (true/false)") }),
        })
        .transpose()
}

fn parse_env_list(vars: &HashMap<String, String>, var: &'static str) -> Option<Vec<String>> {
    vars.get(var).map(|raw| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
}

/// `PYAGENT_*` variables that configure nothing (typos, most likely).
pub fn unknown_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    const OTHERS: &[&str] = &["PYAGENT_CONFIG", "PYAGENT_API_ENDPOINT"];
    let mut unknown: Vec<String> = vars
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("PYAGENT_") && !OTHERS.contains(&k.as_str()) && !ENV_VARS.iter().any(|(v, _)| v == k))
        .collect();
    unknown.sort();
    unknown
}

impl Overrides {
    /// Reads the `PYAGENT_*` variables of `vars` (pass `std::env::vars()`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("PYAGENT_")).collect();
        Ok(Self {
            data_dir: vars.get("PYAGENT_DATA_DIR").map(PathBuf::from),
            swarm: vars.get("PYAGENT_SWARM").cloned(),
            swarm_key: vars.get("PYAGENT_SWARM_KEY").map(PathBuf::from),
            bootstrap: parse_env_list(&vars, "PYAGENT_BOOTSTRAP"),
            agents: parse_env_list(&vars, "PYAGENT_AGENTS"),
            listen_ip: parse_env(&vars, "PYAGENT_LISTEN_IP")?,
            p2p_port: parse_env(&vars, "PYAGENT_P2P_PORT")?,
            quic: parse_env_bool(&vars, "PYAGENT_QUIC")?,
            mdns: parse_env_bool(&vars, "PYAGENT_MDNS")?,
            mdns_interfaces: parse_env_list(&vars, "PYAGENT_MDNS_INTERFACES"),
            api_bind: parse_env(&vars, "PYAGENT_API")?,
            events_bind: parse_env(&vars, "PYAGENT_EVENTS")?,
            allow_non_loopback_api: parse_env_bool(&vars, "PYAGENT_API_ALLOW_NON_LOOPBACK")?,
            models: parse_env_list(&vars, "PYAGENT_MODELS").map(|l| l.into_iter().map(PathBuf::from).collect()),
            provider: vars
                .get("PYAGENT_PROVIDER")
                .map(|raw| match raw.trim() {
                    "auto" => Ok(super::ProviderChoice::Auto),
                    "cpu" => Ok(super::ProviderChoice::Cpu),
                    "cuda" => Ok(super::ProviderChoice::Cuda),
                    _ => Err(ConfigError::Env { var: "PYAGENT_PROVIDER", message: format!("{raw:?}: expected auto, cpu or cuda") }),
                })
                .transpose()?,
            kv_fetch: parse_env_bool(&vars, "PYAGENT_KV_FETCH")?,
            kv_bulk: parse_env_bool(&vars, "PYAGENT_KV_BULK")?,
            kv_bulk_port: parse_env(&vars, "PYAGENT_KV_BULK_PORT")?,
            role: parse_env(&vars, "PYAGENT_ROLE")?,
            kv_host_mb: parse_env(&vars, "PYAGENT_KV_HOST_MB")?,
            lookahead: parse_env(&vars, "PYAGENT_LOOKAHEAD")?,
            http: parse_env_bool(&vars, "PYAGENT_HTTP")?,
            http_bind: parse_env(&vars, "PYAGENT_HTTP_BIND")?,
            http_allow_non_loopback: parse_env_bool(&vars, "PYAGENT_HTTP_ALLOW_NON_LOOPBACK")?,
            http_api_key_file: vars.get("PYAGENT_HTTP_API_KEY_FILE").map(PathBuf::from),
            ort_lib: vars.get("PYAGENT_ORT_LIB").map(PathBuf::from),
            log_format: vars
                .get("PYAGENT_LOG_FORMAT")
                .map(|raw| match raw.trim() {
                    "pretty" => Ok(LogFormat::Pretty),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(ConfigError::Env { var: "PYAGENT_LOG_FORMAT", message: format!("{raw:?}: expected pretty or json") }),
                })
                .transpose()?,
        })
    }
}
